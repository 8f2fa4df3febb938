"""The patient_visits builder and reader: determinism, records = generator, the GSP summaries on a hand-made
history, the readers' targets, a learnable label."""
import pytest
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
        np.testing.assert_array_equal(r["gsp_summaries"], g["gsp_summaries"])
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


def test_gsp_summaries_of_a_hand_made_history():
    """Three history visits (days 0, 200, 500) and two follow-up visits (days 600, 900); window 365 days."""
    nd = pv.NUM_DIAGNOSES
    dx = np.zeros((3, nd), np.uint8)
    dx[0, [0, 5]] = 1   # chapters 0, 1
    dx[1, [1, 2, 9]] = 1  # chapters 0, 0, 2
    dx[2, [23]] = 1     # chapter 5
    follow = np.zeros((2, nd), np.uint8)
    follow[0, [4, 6]] = 1  # chapters 1, 1
    follow[1, [0]] = 1     # chapter 0
    out = pv.window_summaries(np.array([0.0, 200.0, 500.0]), dx, np.array([600.0, 900.0]), follow)
    # visit 0 (0, 365]: visit on day 200 -> 1 visit; chapter 0: 2, chapter 2: 1.
    # visit 1 (200, 565]: day 500 -> 1 visit; chapter 5: 1.
    # visit 2 (500, 865]: day 600 -> 1 visit; chapter 1: 2 (day 900 is outside).
    expected = np.array([[1, 2, 0, 1, 0, 0, 0],
                         [1, 0, 0, 0, 0, 0, 1],
                         [1, 0, 2, 0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(out, expected)
    # A window ending on a visit's day includes it: day 900 is in (535, 900].
    np.testing.assert_array_equal(pv.window_summaries(np.array([535.0]), dx[:1], np.array([600.0, 900.0]), follow),
                                  [[2, 1, 2, 0, 0, 0, 0]])


def test_readers_targets(load):
    ds_gsp, ds_reg, ds_cls = (load("patient_visits", gsp=g, buckets=b) for g, b in ((1, 0), (0, 0), (0, 1)))
    src_gsp, src_reg, src_cls = (d.source("validation") for d in (ds_gsp, ds_reg, ds_cls))
    for i in (0, 13):
        ex = src_gsp[i]
        assert ex["inputs"].shape == (pv.HISTORY_LEN, pv.NUM_FEATURES)
        assert ex["targets"].shape == (pv.HISTORY_LEN, pv.NUM_SUMMARIES)
        # The last visit's window is the follow-up year: its visit count is the regression target.
        assert ex["targets"][-1, 0] == src_reg[i]["targets"] and src_reg[i]["targets"].dtype == np.float32
        np.testing.assert_array_equal(src_cls[i]["inputs"], ex["inputs"])
        assert set(src_cls[i]) == {"inputs", "label"} and set(src_reg[i]) == {"inputs", "targets"}
        assert src_cls[i]["label"] == np.searchsorted(pv.LABEL_EDGES, src_reg[i]["targets"], side="right")
    x = src_gsp[0]["inputs"]
    nd, np_ = pv.NUM_DIAGNOSES, pv.NUM_PROCEDURES
    assert set(np.unique(x[:, :nd + np_])) <= {0.0, 1.0}
    assert ds_gsp.info["num_summaries"] == pv.NUM_SUMMARIES
    part = load("patient_visits", gsp=0, train_start=10, train_size=5).source("train")
    assert len(part) == 5 and [int(part.records[j]["index"]) for j in range(5)] == list(range(10, 15))
    with pytest.raises(ValueError, match="cannot go with gsp=1"):
        load("patient_visits", gsp=1, buckets=1)
