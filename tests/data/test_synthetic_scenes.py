"""The synthetic_scenes builder and reader: counts, labels, coordinates, determinism, padding."""
import numpy as np
import pytest

import fintrans.data as fd
from fintrans.data import storage
from fintrans.data.builders import DATASETS
from fintrans.data.builders import synthetic_scenes as ss


@pytest.fixture(scope="module")
def scene_records(data_dir):
    return storage.read_records(storage.open_builder(DATASETS.get("synthetic_scenes").builder, data_dir, prepare=False))


@pytest.fixture(scope="module")
def load_scenes(data_dir):
    def _load(max_points):
        return fd.load({"name": "synthetic_scenes", "max_points": max_points, "data_dir": str(data_dir),
                        "prepare": False})
    return _load


def test_generation_is_deterministic_given_the_seed():
    a, b = (ss.generate_scene(np.random.default_rng([7, 1, 3])) for _ in range(2))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    c = ss.generate_scene(np.random.default_rng([7, 1, 4]))
    assert len(c["label"]) != len(a["label"]) or not np.array_equal(c["xyz"], a["xyz"])


def test_records_match_the_generator(scene_records):
    for split in ("validation", "test"):
        r = scene_records[split][3]
        s = ss.generate_scene(ss.scene_rng(split, 3))
        np.testing.assert_array_equal(r["label"], s["label"])
        np.testing.assert_array_equal(r["coords"], s["coords"])
        np.testing.assert_allclose(r["xyz_mm"] / 1000.0, s["xyz"], atol=1e-9)


def test_counts_labels_and_coords(scene_records):
    assert {s: len(r) for s, r in scene_records.items()} == ss.SPLIT_SIZES
    nx, ny = ss.GRID_SHAPE
    counts = []
    for split, recs in scene_records.items():
        for r in recs:
            n = len(r["label"])
            counts.append(n)
            assert ss.MIN_POINTS <= n <= ss.MAX_POINTS
            assert r["xyz_mm"].shape == (n, 3) and r["coords"].shape == (n, 2) and r["intensity"].shape == (n,)
            assert set(np.unique(r["label"])) == set(range(len(ss.CLASSES))), f"{split} scene {r['index']}"
            c = r["coords"]
            assert c.min() >= 0 and c[:, 0].max() < nx and c[:, 1].max() < ny
            np.testing.assert_array_equal(c, ss.voxelize(r["xyz_mm"] / 1000.0))
            ground_z = r["xyz_mm"][r["label"] == ss.GROUND, 2] / 1000.0
            assert np.abs(ground_z).max() < 0.15  # ground at z = 0 up to the 2 cm noise
    assert max(counts) - min(counts) > 10_000  # counts vary across scenes


def test_padded_batches(load_scenes, scene_records):
    ds = load_scenes(ss.MAX_POINTS)
    assert ds.info["num_classes"] == 5 and ds.info["in_features"] == 6
    assert tuple(ds.info["grid_shape"]) == ss.GRID_SHAPE
    batch = next(ds.iterator("validation", 4, shuffle=False, num_epochs=1, process_index=0, process_count=1))
    m = ss.MAX_POINTS
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "points": ((4, m, 6), np.float32), "coords": ((4, m, 2), np.int32), "label": ((4, m), np.int32),
        "mask": ((4, m), np.bool_), "valid": ((4,), np.bool_)}
    for i in range(4):
        r = scene_records["validation"][i]
        n = len(r["label"])
        np.testing.assert_array_equal(batch["mask"][i], np.arange(m) < n)
        np.testing.assert_array_equal(batch["label"][i, :n], r["label"])
        np.testing.assert_array_equal(batch["coords"][i, :n], r["coords"])
        assert not batch["points"][i, n:].any() and not batch["label"][i, n:].any()
        f = batch["points"][i, :n]
        assert np.abs(f[:, :2]).max() <= 0.5 + 1e-6  # offsets from the pillar centre, in pillars
        assert f[:, 4].min() >= 0 and np.all((f[:, 5] >= 0) & (f[:, 5] <= 1))
        np.testing.assert_allclose(f[:, 2], r["xyz_mm"][:, 2] / 1000.0, atol=1e-6)


def test_subsampling_keeps_a_fixed_subset(load_scenes):
    full, small = load_scenes(ss.MAX_POINTS).source("test"), load_scenes(4096).source("test")
    again = load_scenes(4096).source("test")
    for i in (0, 5):
        a, b, f = small[i], again[i], full[i]
        assert a["mask"].all() and a["points"].shape == (4096, 6)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        rows = {tuple(r) for r in np.c_[f["points"], f["coords"], f["label"]][f["mask"]]}
        assert all(tuple(r) in rows for r in np.c_[a["points"], a["coords"], a["label"]])


def test_max_points_is_required(data_dir):
    with pytest.raises(fd.DataConfigError, match="max_points"):
        fd.load({"name": "synthetic_scenes", "data_dir": str(data_dir), "prepare": False})
