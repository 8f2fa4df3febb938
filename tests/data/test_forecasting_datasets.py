"""stocks, seattle_weather (chronological forecasting series) and the UEA/UCR sets basic_motions,
japanese_vowels, arrow_head and osu_leaf: splits, train-only statistics, windows, feature selection, labels, padding."""
import numpy as np
import pytest

import fintrans.data as fd
from fintrans.data import feature_selection, storage
from fintrans.data.fitted import FittedCache
from fintrans.data.builders import DATASETS, seattle_weather, sp500, stocks, uea

SPLITS = ("train", "validation", "test")
SERIES = {"stocks": stocks, "seattle_weather": seattle_weather}
INPUT_LEN, HORIZON = 48, 12  # tests/data/conftest.py SMALL_CONFIGS


def _records(data_dir, name):
    return storage.read_records(storage.open_builder(DATASETS.get(name).builder, data_dir, prepare=False))


def _series(ds, split):
    """The normalised days a split's windows cover: first window's inputs, then every window's first target."""
    src = ds.source(split)
    everything = src.take(np.arange(len(src)))
    targets = np.concatenate([everything["targets"][:, 0], everything["targets"][-1, 1:]])
    return everything["inputs"][0], targets


# --- forecasting series ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,days", [("stocks", 2148), ("seattle_weather", 1461)])
def test_splits_are_chronological_disjoint_70_10_20(load, name, days):
    ds = load(name)
    dates = ds.info["dates"]
    n_train, n_test = int(0.7 * days), int(0.2 * days)
    assert [len(dates[s]) for s in SPLITS] == [n_train, days - n_train - n_test, n_test]
    for s in SPLITS:
        assert np.all(dates[s][1:] > dates[s][:-1])
    assert dates["train"][-1] < dates["validation"][0] and dates["validation"][-1] < dates["test"][0]
    all_dates = np.concatenate([dates[s] for s in SPLITS])
    np.testing.assert_array_equal(all_dates, SERIES[name].daily_table()[0])
    assert ds.info["num_examples"] == {"train": n_train - INPUT_LEN - HORIZON + 1,
                                       "validation": days - n_train - n_test - HORIZON + 1,
                                       "test": n_test - HORIZON + 1}


@pytest.mark.parametrize("name,val_days,test_days", [("stocks", 216, 429), ("seattle_weather", 147, 292)])
def test_horizon_96_fits_every_split(load, name, val_days, test_days):
    ds = load(name, input_len=96, horizon=96)
    assert ds.info["num_examples"]["validation"] == val_days - 96 + 1
    assert ds.info["num_examples"]["test"] == test_days - 96 + 1
    batch = ds.source("test").take(np.arange(2))
    assert batch["inputs"].shape[1] == batch["targets"].shape[1] == 96


@pytest.mark.parametrize("name", ["stocks", "seattle_weather"])
def test_standardised_with_train_statistics_only(load, data_dir, name):
    ds = load(name)
    raw = SERIES[name].daily_table()[1].astype(np.float32).astype(np.float64)  # the records hold float32
    n_train = len(ds.info["dates"]["train"])
    mean, std = raw[:n_train].mean(0), raw[:n_train].std(0)  # recomputed here from the train days only
    np.testing.assert_allclose(ds.info["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(ds.info["std"], std, rtol=1e-6)
    builder = storage.open_builder(DATASETS.get(name).builder, data_dir, prepare=False)  # metadata: de-normalise unloaded
    np.testing.assert_allclose(builder.info.metadata["train_mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(builder.info.metadata["train_std"], std, rtol=1e-12)
    inputs, targets = _series(ds, "train")
    train = np.concatenate([inputs, targets])
    assert len(train) == n_train  # the train windows cover every train day
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(train.std(0), 1, atol=1e-4)
    _, test = _series(ds, "test")
    assert len(test) == len(ds.info["dates"]["test"])  # no test target day is lost
    np.testing.assert_allclose(test * ds.info["std"] + ds.info["mean"], raw[-len(test):], rtol=1e-5, atol=1e-4)
    assert not np.allclose(test.mean(0), 0, atol=0.05)  # later days are not standardised by their own stats


@pytest.mark.parametrize("name", ["stocks", "seattle_weather"])
def test_statistics_and_selection_ignore_later_splits(load, data_dir, name):
    """Changing every validation/test value changes neither the statistics nor the chosen channels."""
    records = _records(data_dir, name)
    metadata = dict(storage.open_builder(DATASETS.get(name).builder, data_dir, prepare=False).info.metadata)
    fields = {"input_len": INPUT_LEN, "horizon": HORIZON}
    if name == "stocks":
        fields.update(target=0, min_corr_pct=60)
    base = DATASETS.get(name).read(records, fields, metadata, FittedCache(None))
    rng = np.random.default_rng(0)
    changed = {s: recs if s == "train" else [{**r, "values": r["values"] * rng.uniform(0.2, 5.0, r["values"].shape)}
                                             for r in recs] for s, recs in records.items()}
    other = DATASETS.get(name).read(changed, fields, metadata, FittedCache(None))
    for key in ("mean", "std", "channels"):
        np.testing.assert_array_equal(other.info[key], base.info[key])
    assert not np.allclose(other.sources["test"].take(np.arange(5))["targets"],
                           base.sources["test"].take(np.arange(5))["targets"])


def test_validation_windows_read_the_last_train_days(load):
    ds = load("stocks")
    train_in, train_targets = _series(ds, "train")
    val_inputs, _ = _series(ds, "validation")
    np.testing.assert_array_equal(val_inputs, np.concatenate([train_in, train_targets])[-INPUT_LEN:])
    assert ds.info["first_target"] == {"train": INPUT_LEN, "validation": 0, "test": 0}


def test_naive_last_value_errors(load):
    from fintrans.data.builders.series import naive_last_value_errors

    src = load("seattle_weather").source("validation")
    batch = src.take(np.arange(len(src)))
    err = batch["targets"] - np.repeat(batch["inputs"][:, -1:], HORIZON, axis=1)  # repeat the last input day
    got = naive_last_value_errors(src)
    np.testing.assert_allclose([got["mse"], got["mae"]], [np.mean(err ** 2), np.mean(np.abs(err))], rtol=1e-6)


def test_stocks_table_matches_the_wheels():
    from bokeh_sampledata import stocks as bokeh_stocks  # its dicts need no pandas

    dates, values = stocks.daily_table()
    assert (dates[0], dates[-1], values.shape) == ("2004-08-19", "2013-03-01", (2148, 6))
    for c, ticker in enumerate(stocks.TICKERS):
        by_date = dict(zip(getattr(bokeh_stocks, ticker)["date"], getattr(bokeh_stocks, ticker)["adj_close"]))
        np.testing.assert_array_equal(values[:, c], [by_date[d] for d in dates])
    sp_dates, sp_values = sp500.daily_table()  # fintrans' sp500 reader, itself tested against arch's loader
    rows = np.searchsorted(sp_dates, dates)
    np.testing.assert_array_equal(sp_dates[rows], dates)
    np.testing.assert_allclose(values[:, 4], sp_values[rows, 3])


def test_stocks_feature_selection_keeps_the_train_correlated_channels(load):
    raw = stocks.daily_table()[1].astype(np.float32).astype(np.float64)
    n_train = int(0.7 * len(raw))
    for target, pct in [(0, 60), (3, 80), (5, 0), (2, 100)]:
        corr = np.corrcoef(raw[:n_train].T)[target]
        expected = [c for c in range(6) if c == target or abs(corr[c]) >= pct / 100]
        ds = load("stocks", target=target, min_corr_pct=pct)
        assert ds.info["channels"] == [stocks.CHANNELS[c] for c in expected]
        assert ds.info["channels"][ds.info["target_position"]] == stocks.CHANNELS[target]
        batch = ds.source("train").take(np.arange(2))
        assert batch["inputs"].shape == (2, INPUT_LEN, len(expected))
        assert stocks.selection(target, pct).indices == tuple(expected)  # what configs size models with
    assert len(load("stocks", target=0, min_corr_pct=60).info["channels"]) < 6


@pytest.mark.parametrize("fields,match", [
    ({"target": 6}, "target=6"), ({"min_corr_pct": 101}, "min_corr_pct=101"),
    ({"horizon": 300}, "horizon=300"), ({"target": -1}, "target")])
def test_stocks_bad_fields_are_named(load, fields, match):
    with pytest.raises(fd.DataConfigError, match=match):
        load("stocks", **fields)


def test_correlations_match_numpy_on_random_series():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5)).cumsum(0) + 50
    x[:, 3] = 2 * x[:, 0] + rng.normal(size=200)
    for on, values in [("prices", x), ("returns", np.diff(np.log(x), axis=0))]:
        corr = feature_selection.correlations(x, 0, on=on)
        np.testing.assert_allclose(corr, np.corrcoef(values.T)[0], atol=1e-12)
    sel = feature_selection.select_correlated(x, 0, threshold=0.9)
    assert 0 in sel.indices and 3 in sel.indices and sel.target_position == 0
    assert set(sel.indices) == {0} | {c for c in range(5) if abs(np.corrcoef(x.T)[0, c]) >= 0.9}
    top = feature_selection.select_correlated(x, 2, threshold=0.0, max_features=2)
    strongest = max((c for c in range(5) if c != 2), key=lambda c: abs(np.corrcoef(x.T)[2, c]))
    assert top.indices == tuple(sorted({2, strongest}))
    with pytest.raises(fd.DataConfigError, match="threshold"):
        feature_selection.select_correlated(x, 0, threshold=1.5)
    with pytest.raises(fd.DataConfigError, match="on='returns' needs positive"):
        feature_selection.correlations(x - 100, 0, on="returns")


def test_preparing_again_gives_the_same_records(data_dir, tmp_path):
    for name in ("seattle_weather", "basic_motions"):
        fd.prepare_dataset(name, tmp_path)
        again = _records(tmp_path, name)
        first = _records(data_dir, name)
        for s in SPLITS:
            assert len(again[s]) == len(first[s])
            for a, b in zip(again[s], first[s]):
                assert a.keys() == b.keys()
                for k in a:
                    np.testing.assert_array_equal(a[k], b[k])


# --- UEA classification --------------------------------------------------------------------------
@pytest.mark.parametrize("name,classes,channels,max_len,sizes", [
    ("basic_motions", 4, 6, 100, (32, 8, 40)),
    ("japanese_vowels", 9, 12, 29, (216, 54, 370)),
    ("arrow_head", 3, 1, 251, (30, 6, 175)),  # 12 per class in TRAIN: round(2.4) = 2 of each to validation
    ("osu_leaf", 6, 1, 427, (159, 41, 242)),
])
def test_uea_shapes_labels_and_splits(load, data_dir, name, classes, channels, max_len, sizes):
    ds = load(name)
    assert tuple(ds.info["num_examples"][s] for s in SPLITS) == sizes
    assert (ds.info["num_classes"], ds.info["num_channels"], ds.info["max_len"]) == (classes, channels, max_len)
    records = _records(data_dir, name)
    train_file = uea.load_official(DATASETS.get(name).builder.PROBLEM, "TRAIN")
    for split in SPLITS:
        src = ds.source(split)
        batch = src.take(np.arange(len(src)))
        assert batch["inputs"].shape == (len(src), max_len, channels) and batch["inputs"].dtype == np.float32
        assert batch["mask"].shape == (len(src), max_len) and batch["label"].dtype == np.int32
        assert batch["label"].min() >= 0 and batch["label"].max() < classes
        assert set(batch["label"]) == set(range(classes))  # every class in every split
        lengths = batch["mask"].sum(1)
        np.testing.assert_array_equal(batch["mask"], np.arange(max_len)[None] < lengths[:, None])  # prefix masks
        assert np.all(batch["inputs"][~batch["mask"]] == 0)
        np.testing.assert_array_equal(lengths, [len(r["series"]) for r in records[split]])
    # train and validation split the official TRAIN file, stratified; test is the TEST file
    rows = {s: {int(r["index"]) for r in records[s]} for s in SPLITS}
    assert not rows["train"] & rows["validation"]
    assert rows["train"] | rows["validation"] == set(range(len(train_file.series)))
    assert rows["test"] == set(range(sizes[2]))
    val_counts = np.bincount(ds.source("validation").take(np.arange(sizes[1]))["label"], minlength=classes)
    np.testing.assert_array_equal(val_counts, np.round(np.bincount(train_file.labels) * 0.2))
    if name == "japanese_vowels":
        assert lengths.min() < max_len  # variable lengths, padded


def test_uea_values_match_sktimes_loader(load):
    """The .ts parser against sktime's own loader, series by series (official files, in file order)."""
    from sktime.datasets import load_from_tsfile

    from fintrans.data.builders.base import packaged_file

    for problem in ("BasicMotions", "JapaneseVowels", "ArrowHead", "OSULeaf"):
        for split in ("TRAIN", "TEST"):
            path = packaged_file("sktime", "datasets", "data", problem, f"{problem}_{split}.ts", dataset=problem)
            frame, labels = load_from_tsfile(str(path), return_data_type="nested_univ")
            ours = uea.load_official(problem, split)
            assert len(ours.series) == len(frame)
            # (sktime lower-cases labels: the files say 'Standing', sktime returns 'standing')
            np.testing.assert_array_equal([ours.class_names[i].lower() for i in ours.labels], labels)
            for i in range(len(frame)):
                expected = np.stack([frame.iloc[i, c].to_numpy() for c in range(frame.shape[1])], axis=1)
                np.testing.assert_array_equal(ours.series[i], expected)
    ds = load("japanese_vowels")
    test = ds.source("test").take(np.arange(3))
    tv = uea.load_official("JapaneseVowels", "TEST")
    for i in range(3):
        np.testing.assert_allclose(test["inputs"][i, :len(tv.series[i])], tv.series[i], rtol=1e-6)


def test_ts_parser_rejects_malformed_files():
    good = "@problemName X\n@dimensions 2\n@classLabel true a b\n@data\n1,2,3:4,5,6:a\n"
    parsed = uea.parse_ts(good)
    np.testing.assert_array_equal(parsed.series[0], [[1, 4], [2, 5], [3, 6]])
    for bad, match in [(good.replace(":a\n", ":c\n"), "label 'c'"), (good.replace("4,5,6", "4,5"), "lengths"),
                       (good.replace("@dimensions 2", "@dimensions 3"), "3"), (good.replace("2,3", "?,3"), "missing"),
                       (good.replace("@classLabel true a b", "@classLabel false"), "classLabel")]:
        with pytest.raises(fd.DatasetCorruptError, match=match):
            uea.parse_ts(bad)
