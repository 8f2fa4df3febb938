"""What each prepared dataset holds and what its batches look like."""
import collections
import sys

import numpy as np
import pytest

import fintrans.data as fd
from fintrans.data import storage
from fintrans.data.builders import DATASETS, chars, finai_hard_templates, finai_sentences, finai_templates, sp500

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def records(data_dir):
    def _records(name):
        return storage.read_records(storage.open_builder(DATASETS.get(name).builder, data_dir, prepare=False))
    return _records


def _one_batch(ds, split="train", batch_size=8, **kw):
    return next(ds.iterator(split, batch_size, shuffle=kw.pop("shuffle", True), process_index=0, process_count=1,
                            **kw))


def test_names():
    assert fd.names() == ["arrow_head", "basic_motions", "chars", "digits", "finai_sentences", "japanese_vowels",
                          "osu_leaf", "patient_visits", "seattle_weather", "sp500", "stocks", "synthetic_events",
                          "synthetic_scenes"]


def test_no_tensorflow_is_imported(load):
    for name in fd.names():
        next(load(name).iterator("train", 4, shuffle=True, process_index=0, process_count=1))
    assert "tensorflow" not in sys.modules


@pytest.mark.parametrize("name,shapes", [
    ("chars", {"inputs": ((8, 32), np.int32), "targets": ((8, 32), np.int32)}),
    ("digits", {"inputs": ((8, 8, 8, 1), np.float32), "label": ((8,), np.int32)}),
    ("sp500", {"inputs": ((8, 48, 6), np.float32), "targets": ((8, 12, 6), np.float32)}),
    ("finai_sentences", {"inputs": ((8, 40), np.int32), "mask": ((8, 40), np.bool_), "label": ((8,), np.int32)}),
])
def test_batch_shapes_and_dtypes(load, name, shapes):
    ds = load(name)
    batch = _one_batch(ds)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {k: (s, np.dtype(d)) for k, (s, d) in shapes.items()}
    eval_batch = _one_batch(ds, "test", shuffle=False, num_epochs=1)
    assert set(eval_batch) == set(shapes) | {"valid"} and eval_batch["valid"].dtype == np.bool_
    assert ds.info["name"] == name and set(ds.info["num_examples"]) == set(SPLITS)


# --- chars ---------------------------------------------------------------------------------------
def test_chars_targets_are_inputs_shifted_and_windows_tile_the_text(load):
    ds = load("chars")
    batch = _one_batch(ds, batch_size=16)
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    src = ds.source("validation")
    for i in range(len(src) - 1):  # consecutive non-overlapping windows: no token skipped
        assert src[i]["targets"][-1] == src[i + 1]["inputs"][0]
    assert ds.info["vocab_size"] == 128 and batch["inputs"].max() < 128


def test_chars_splits_are_contiguous_slices_of_the_stdlib_text(load, records, data_dir):
    recs = records("chars")
    per_split = [np.concatenate([r["tokens"] for r in recs[s]]) for s in SPLITS]
    np.testing.assert_array_equal(np.concatenate(per_split), chars.stdlib_tokens())
    sizes = np.array([len(t) for t in per_split]) / len(chars.stdlib_tokens())
    np.testing.assert_allclose(sizes, [0.9, 0.05, 0.05], atol=1e-3)
    ds = load("chars")
    assert ds.info["num_tokens"] == {s: len(t) for s, t in zip(SPLITS, per_split)}
    assert ds.info["num_examples"]["validation"] == (len(per_split[1]) - 1) // 32
    builder = storage.open_builder(chars.Chars, data_dir, prepare=False)
    assert f"Python {chars.PYTHON_VERSION}" in builder.info.description


def test_chars_decode_round_trips(load):
    ds = load("chars")
    src = ds.source("train")
    text = ds.decode(src[0]["inputs"])
    assert text.startswith("# file: argparse.py\n")
    from fintrans.data.tokenizers import ascii_encode
    np.testing.assert_array_equal(ascii_encode(text), src[0]["inputs"])


# --- digits --------------------------------------------------------------------------------------
def test_digits_values_labels_and_stratified_disjoint_splits(load, records):
    ds = load("digits")
    assert ds.info | {"num_classes": 10, "image_size": 8, "channels": 1} == ds.info
    assert sum(ds.info["num_examples"].values()) == 1797
    recs = records("digits")
    index_sets = [{int(r["index"]) for r in recs[s]} for s in SPLITS]
    assert sum(map(len, index_sets)) == len(set().union(*index_sets)) == 1797
    for split in SPLITS:
        src = ds.source(split)
        x, y = (lambda a: (a["inputs"], a["label"]))(src.take(np.arange(len(src))))
        assert x.min() == 0.0 and x.max() == 1.0
        counts = np.bincount(y, minlength=10)
        # stratified: every class in every split, in proportion (each class holds 174..183 images)
        assert counts.min() >= (120 if split == "train" else 25)


def test_digits_match_sklearn_load_digits(records):
    from sklearn.datasets import load_digits

    ref = load_digits()
    for split in SPLITS:
        for r in records("digits")[split][:50]:
            np.testing.assert_array_equal(r["image"][..., 0], ref.images[r["index"]])
            assert r["label"] == ref.target[r["index"]]


# --- sp500 ---------------------------------------------------------------------------------------
def _series(ds, split):
    """The standardised series a split's windows cover, rebuilt from its windows (input_len 48, horizon 12)."""
    src = ds.source(split)
    first = src[0]
    steps = [src[i]["targets"][0] for i in range(len(src))]
    return first["inputs"], np.concatenate([np.stack(steps), src[len(src) - 1]["targets"][1:]])


def test_sp500_splits_are_chronological_70_10_20(load):
    ds = load("sp500")
    dates = ds.info["dates"]
    assert [len(dates[s]) for s in SPLITS] == [3521, 504, 1006]
    assert dates["train"][0] == "1999-01-04" and dates["test"][-1] == "2018-12-31"
    for s in SPLITS:
        assert np.all(dates[s][1:] > dates[s][:-1])
    assert dates["train"][-1] < dates["validation"][0] and dates["validation"][-1] < dates["test"][0]


def test_sp500_standardised_with_train_stats_only(load):
    ds = load("sp500")
    inputs, targets = _series(ds, "train")
    train = np.concatenate([inputs, targets])
    assert len(train) == 3521  # every train day is covered by the train windows
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(train.std(0), 1, atol=1e-4)
    _, test = _series(ds, "test")
    assert len(test) == 1006  # no test target day is lost
    assert np.all(np.abs(test.mean(0)) > 0.5)  # 2015-2018 prices sit far above the 1999-2013 mean
    # de-normalising with info's mean/std gives the raw prices back
    raw = sp500.daily_table()[1]
    np.testing.assert_allclose(test * ds.info["std"] + ds.info["mean"], raw[-1006:], rtol=1e-5)


def test_sp500_windows_stay_inside_their_split(load):
    ds = load("sp500")
    train_in, train_targets = _series(ds, "train")
    train = np.concatenate([train_in, train_targets])
    val_inputs, val_targets = _series(ds, "validation")
    # validation's first window reads the last input_len train days and forecasts validation day 0 on
    np.testing.assert_array_equal(val_inputs, train[-48:])
    assert len(val_targets) == 504 and ds.info["first_target"] == {"train": 48, "validation": 0, "test": 0}
    assert ds.info["num_examples"] == {"train": 3521 - 48 - 12 + 1, "validation": 504 - 12 + 1, "test": 1006 - 12 + 1}


def test_sp500_matches_arch_loader():
    from arch.data import sp500 as arch_sp500

    frame = arch_sp500.load()
    dates, values = sp500.daily_table()
    assert list(dates) == list(frame.index.strftime("%Y-%m-%d"))
    np.testing.assert_allclose(values[:, :5], frame[["Open", "High", "Low", "Close", "Adj Close"]].to_numpy())
    np.testing.assert_allclose(values[:, 5], np.log(frame["Volume"].to_numpy(np.float64)))


# --- finai_sentences -----------------------------------------------------------------------------
def _finai_records(records, generator):
    """The prepared records of one generator, in the order its sources read them."""
    index = finai_sentences.GENERATORS.index(generator)
    return {s: [r for r in recs if int(r["generator"]) == index] for s, recs in records("finai_sentences").items()}


def test_finai_hard_is_balanced_split_by_template_group_with_train_only_label_noise(load, records):
    ds = load("finai_sentences")
    recs = _finai_records(records, "hard")
    assert ds.info["generator"] == "hard" and ds.info["num_examples"] == {"train": 1108, "validation": 160,
                                                                           "test": 318}
    groups, texts = [], []
    for split in SPLITS:
        clean = np.array([int(r["label"]) for r in recs[split]])
        assert clean.sum() * 2 == len(clean)  # balanced, as the paper's 793 + 793
        src = ds.source(split)
        seen = src.take(np.arange(len(src)))["label"]
        flips = int(np.sum(seen != clean))
        assert flips == (round(0.03 * 1108) if split == "train" else 0), (split, flips)
        assert all(ds.info["kind_counts"][split][k] > 0.1 * len(clean) for k in finai_hard_templates.HARD_KINDS)
        groups.append({r["group"] for r in recs[split]})
        texts.append({r["sentence"] for r in recs[split]})
    # No template group (and so no paraphrase of a test sentence) and no sentence in two splits.
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert sum(map(len, texts)) == len(set().union(*texts)) == 1586
    regenerated = finai_hard_templates.generate_splits(finai_sentences.SEED)  # deterministic in the seed
    assert {s.text.encode() for s in regenerated["test"]} == texts[2]
    assert {s.text for s in finai_hard_templates.generate_splits(1)["test"]} != {s.text for s in regenerated["test"]}
    kinds = {k: [r["sentence"].decode() for r in recs["train"] if finai_templates.KINDS[r["kind"]] == k]
             for k in ("distractor", "implicit_disclosure")}
    assert any(" not " in s for s in kinds["distractor"]) and any("competitors" in s for s in kinds["distractor"])
    for sentence in kinds["implicit_disclosure"]:  # disclosures that avoid the obvious keywords
        words = set(sentence.lower().replace(".", " ").replace(",", " ").split())
        assert not words & {"ai", "artificial", "intelligence", "machine", "chatbot", "neural", "generative"}, \
            sentence


def test_finai_easy_generator_stays_reachable(load, records):
    ds = load("finai_sentences", generator="easy", label_noise=0.0)
    recs = _finai_records(records, "easy")
    assert ds.info["num_examples"] == {"train": 2400, "validation": 300, "test": 300}
    src = ds.source("train")
    np.testing.assert_array_equal(src.take(np.arange(len(src)))["label"], [int(r["label"]) for r in recs["train"]])
    assert {finai_templates.KINDS[r["kind"]] for r in recs["train"]} == {"ai_disclosure", "plain", "hard_negative"}
    with pytest.raises(fd.DataConfigError, match=r"label_noise.*\[0, 0.5\)"):
        load("finai_sentences", label_noise=0.6)
    with pytest.raises(fd.DataConfigError, match=r"generator.*'hard', 'easy'"):
        load("finai_sentences", generator="medium")


def test_finai_inputs_mask_and_decode(load, records):
    ds = load("finai_sentences")
    src = ds.source("validation")
    recs = _finai_records(records, "hard")["validation"]
    x, mask = (lambda a: (a["inputs"], a["mask"]))(src.take(np.arange(len(src))))
    assert np.all(x[:, 0] == 1) and np.array_equal(mask, x != 0)
    assert not np.any(x == ds.info["unk_id"])  # the vocab covers every generated word
    for i in range(0, len(recs), 7):
        assert ds.decode(x[i]) == recs[i]["sentence"].decode()
        assert x[i][mask[i]][-1] == ds.info["sep_id"]
    assert ds.info["vocab_size"] == len(finai_sentences.vocab_tokenizer().vocab)


def test_finai_truncation_keeps_cls_first_and_sep_last(load):
    ds = load("finai_sentences", max_len=8)
    x = ds.source("train").take(np.arange(ds.info["num_examples"]["train"]))["inputs"]
    assert x.shape[1] == 8 and np.all(x[:, 0] == 1) and np.all(x[:, -1] == 2)
    assert ds.info["num_truncated"]["train"] == 1108
