"""The patient_visits builder and reader: determinism, records = generator, GSP targets, a learnable label."""
import numpy as np

from fintrans.data import storage
from fintrans.data.builders import DATASETS
from fintrans.data.builders import patient_visits as pv


def test_generation_is_deterministic_given_the_seed():
    a, b = (pv.generate_patient(pv.patient_rng("train", 5)) for _ in range(2))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    c = pv.generate_patient(pv.patient_rng("train", 6))
    assert not np.array_equal(c["gap_days"], a["gap_days"])
    d = pv.generate_patient(pv.patient_rng("validation", 5))
    assert not np.array_equal(d["gap_days"], a["gap_days"])


def test_records_match_the_generator_and_are_well_formed(data_dir):
    recs = storage.read_records(storage.open_builder(DATASETS.get("patient_visits").builder, data_dir, prepare=False))
    assert {s: len(r) for s, r in recs.items()} == pv.SPLIT_SIZES
    for split in recs:
        by_index = {int(r["index"]): r for r in recs[split]}  # file order is tfds' (hashed) order
        assert sorted(by_index) == list(range(pv.SPLIT_SIZES[split]))
        r, g = by_index[7], pv.generate_patient(pv.patient_rng(split, 7))
        for key in ("diagnoses", "procedures", "age", "gap_days"):
            np.testing.assert_array_equal(r[key], g[key])
        assert r["label"] == g["label"] and r["future_visits"] == g["future_visits"]
    train = recs["train"]
    gaps = np.stack([r["gap_days"] for r in train])
    ages = np.stack([r["age"] for r in train])
    assert np.all(gaps[:, 0] == 0) and np.all(gaps[:, 1:] > 0)
    np.testing.assert_allclose(np.diff(ages, axis=1), gaps[:, 1:] / 365.25, rtol=1e-4, atol=1e-5)
    labels = np.asarray([r["label"] for r in train])
    future = np.asarray([r["future_visits"] for r in train])
    np.testing.assert_array_equal(labels, np.searchsorted(pv.LABEL_EDGES, future, side="right"))
    assert np.bincount(labels, minlength=pv.NUM_CLASSES).min() > 0.15 * len(train)  # no degenerate class
    # The label depends on the history: patients with shorter gaps visit more in the next year.
    rho = np.corrcoef(np.log(gaps[:, 1:]).mean(1), np.log1p(future))[0, 1]
    assert rho < -0.5, rho


def test_gsp_targets_are_the_next_visit_features(load):
    ds_gsp, ds_cls = load("patient_visits", gsp=1), load("patient_visits", gsp=0)
    src_gsp, src_cls = ds_gsp.source("validation"), ds_cls.source("validation")
    for i in (0, 13):
        ex = src_gsp[i]
        assert ex["inputs"].shape == (pv.HISTORY_LEN, pv.NUM_FEATURES)
        assert ex["targets"].shape == (pv.HISTORY_LEN - 1, pv.NUM_FEATURES)
        for t in range(pv.HISTORY_LEN - 1):
            np.testing.assert_array_equal(ex["targets"][t], ex["inputs"][t + 1])
        np.testing.assert_array_equal(src_cls[i]["inputs"], ex["inputs"])
        assert set(src_cls[i]) == {"inputs", "label"}
    x = src_gsp[0]["inputs"]
    nd, np_ = pv.NUM_DIAGNOSES, pv.NUM_PROCEDURES
    assert set(np.unique(x[:, :nd + np_])) <= {0.0, 1.0}
    assert ds_gsp.info["num_features"] == pv.NUM_FEATURES
