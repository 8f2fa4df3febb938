"""Streaming sources (records decoded on access, never a whole split), augmentation keyed on
(seed, epoch, index) that survives a resume, and config/metadata fields of any JSON type."""
import itertools
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds

import fintrans.data as fd
from fintrans.data import augment, sources, spec, storage
from fintrans.data.builders import DATASETS, digits
from fintrans.data.builders.base import OfflineBuilder


def test_streaming_source_decodes_only_what_is_read(load):
    ds = load("digits")
    records = ds.source("train").records  # the split's storage.RecordSource
    assert DATASETS.get("digits").streams and isinstance(records, storage.RecordSource)
    assert records.decoded == 0  # loading decodes nothing
    n = ds.info["num_examples"]["train"]
    it = ds.iterator("train", 16, shuffle=True, seed=1, process_index=0, process_count=1)
    for _ in itertools.islice(it, 3):
        pass
    # 3 batches plus at most the prefetched ones (grain buffer of 4, one thread): never the split
    assert 3 * 16 <= records.decoded <= (3 + 5) * 16 < n
    assert not hasattr(ds.source("train"), "arrays")  # no decoded copy of the split is kept
    # (for grain's worker processes: the files are reopened). The iterator's prefetch thread may still be
    # decoding, so the copy's count lies between the counts read before and after pickling.
    seen = records.decoded
    copy = pickle.loads(pickle.dumps(records))
    assert seen <= copy.decoded <= records.decoded and copy[5].keys() == records[5].keys()
    np.testing.assert_array_equal(copy[5]["image"], records[5]["image"])
    got = records.__getitems__([7, 3, 7])
    assert [int(r["index"]) for r in got] == [int(records[i]["index"]) for i in (7, 3, 7)]
    with pytest.raises(IndexError, match=r"record 1259 of split 'train' is out of range \[0, 1259\)"):
        records[n]


def test_streaming_batches_equal_the_in_memory_path(load, data_dir):
    ds = load("digits")
    records = storage.read_records(storage.open_builder(digits.Digits, data_dir, prepare=False))
    for split in ("train", "test"):
        images = np.stack([r["image"] for r in records[split]]).astype(np.float32) / digits.MAX_PIXEL
        labels = np.asarray([r["label"] for r in records[split]], np.int32)
        order = np.random.default_rng([4, 0]).permutation(len(labels))[:32]  # the pipeline's epoch-0 order
        batch = next(ds.iterator(split, 32, shuffle=True, seed=4, process_index=0, process_count=1))
        np.testing.assert_array_equal(batch["inputs"], images[order])
        np.testing.assert_array_equal(batch["label"], labels[order])


def _train_iterator(ds, seed=5):
    return ds.iterator("train", 64, shuffle=True, seed=seed, process_index=0, process_count=1)


def test_augmentation_resumes_exactly_and_differs_per_epoch(load):
    ds = load("digits", augment="crop_flip", crop_padding=2)
    plain = load("digits")
    reference = _train_iterator(ds)
    expected = [next(reference) for _ in range(25)]  # > one epoch (1,259 examples / 64)
    it = _train_iterator(ds)
    for _ in range(12):
        next(it)
    state = it.get_state()
    next(it)  # moving on does not change what resumes
    resumed = _train_iterator(ds)
    resumed.set_state(state)
    for k in range(12, 25):
        batch = next(resumed)
        np.testing.assert_array_equal(batch["inputs"], expected[k]["inputs"])
        np.testing.assert_array_equal(batch["label"], expected[k]["label"])
    # augmented (not the plain images), same examples and labels in the same order
    unaugmented = next(_train_iterator(plain))
    assert not np.array_equal(expected[0]["inputs"], unaugmented["inputs"])
    np.testing.assert_array_equal(expected[0]["label"], unaugmented["label"])
    # the same example in two epochs is augmented differently: take epoch 1's first example
    n, src = ds.info["num_examples"]["train"], ds.source("train")
    stream = np.concatenate([b["inputs"] for b in expected])
    orders = [np.random.default_rng([5, e]).permutation(n) for e in (0, 1)]
    index = int(orders[1][0])
    first, second = stream[int(np.flatnonzero(orders[0] == index)[0])], stream[n]
    assert not np.array_equal(first, second)
    # each is the padded-and-cropped (maybe flipped) original under generator (seed, epoch, index)
    for epoch, image in ((0, first), (1, second)):
        want = augment.ImageAugmentation(("crop", "flip"), crop_padding=2)._one(
            src[index]["inputs"], np.random.default_rng([5, epoch, index]))
        np.testing.assert_array_equal(image, want)


def test_evaluation_and_other_splits_are_never_augmented(load):
    ds, plain = load("digits", augment="crop_flip"), load("digits")
    for split, kw in (("train", {"num_epochs": 1}), ("validation", {})):
        a = next(ds.iterator(split, 32, shuffle=True, seed=0, process_index=0, process_count=1, **kw))
        b = next(plain.iterator(split, 32, shuffle=True, seed=0, process_index=0, process_count=1, **kw))
        np.testing.assert_array_equal(a["inputs"], b["inputs"])


def test_image_augmentations():
    rng = np.random.default_rng(0)
    image = rng.random((6, 6, 2)).astype(np.float32)
    assert augment.random_crop(image, rng, 0) is image
    crops = [augment.random_crop(image, np.random.default_rng(s), 2, "constant") for s in range(20)]
    assert all(c.shape == image.shape for c in crops) and any(c[0, 0, 0] == 0 for c in crops)
    # every crop window equals numpy's padding then slicing, for both modes and any padding
    for mode in augment.PAD_MODES:
        for padding in (1, 2, 7):
            padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode=mode)
            for top, left in ((0, 0), (padding, 2 * padding), (2 * padding, 1), (padding, padding)):
                np.testing.assert_array_equal(augment.crop_window(image, top, left, padding, mode),
                                              padded[top:top + 6, left:left + 6])
    offsets = {tuple(np.argwhere(augment.random_crop(np.arange(36.0).reshape(6, 6, 1), np.random.default_rng(s), 1,
                                                     "constant")[..., 0] == 14)[0]) for s in range(60)}
    assert offsets == {(r, c) for r in (1, 2, 3) for c in (1, 2, 3)}  # all 9 offsets of padding 1 occur
    flips = [augment.horizontal_flip(image, np.random.default_rng(s)) for s in range(10)]
    assert any(f is image for f in flips) and any(np.array_equal(f, image[:, ::-1]) for f in flips)
    resized = augment.random_resized_crop(image, np.random.default_rng(1), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(resized, image, atol=1e-6)  # the whole image, resized to itself
    smaller = augment.random_resized_crop(image, np.random.default_rng(1), scale=(0.25, 0.25), ratio=(1.0, 1.0))
    assert smaller.shape == image.shape and image.min() <= smaller.min() and smaller.max() <= image.max()


def test_bad_augmentation_fields_are_named(load):
    with pytest.raises(fd.DataConfigError, match=r"augment of dataset .digits. .* must be one of \[.crop., .crop_fl"):
        load("digits", augment="rotate")
    with pytest.raises(fd.DataConfigError, match="crop_padding .* must be an integer >= 0; got -1"):
        load("digits", crop_padding=-1)
    with pytest.raises(fd.DataConfigError, match=r"pad_mode .* must be one of \['reflect', 'constant'\]"):
        load("digits", pad_mode="edge")


METADATA = {"string": "café", "float": 0.1, "integer": 3, "list": [1, "two", 3.5, None, True],
            "dict": {"nested": {"k": [1, 2]}, "empty": {}}, "boolean": False}


class JsonMetadata(OfflineBuilder, skip_registration=True):
    name = "json_metadata"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"x": np.int32}),
                                     metadata=tfds.core.MetadataDict(**METADATA))

    def _generate_examples(self, split):
        for i in range(3):
            yield i, {"x": i}


def test_metadata_and_info_fields_of_any_json_type(tmp_path, monkeypatch):
    def read(records, fields, metadata, fitted):
        del fitted
        return spec.Loaded(sources={s: sources.MappedSource(r, lambda rec: {"x": rec["x"]})
                                    for s, r in records.items()},
                           info={"metadata": metadata, "options": fields["options"], "label": fields["label"]})

    dataset = spec.DatasetSpec(
        name="json_metadata", builder=JsonMetadata, read=read, streams=True,
        fields={"options": spec.Field("any JSON mapping", kind=dict, default={"a": [1.5, "b"]}),
                "label": spec.Field("a string", kind=str, default="none")})
    monkeypatch.setitem(DATASETS._entries, "json_metadata", dataset)  # registered for this test only
    ds = fd.load({"name": "json_metadata", "data_dir": str(tmp_path), "options": {"x": {"y": [0.25, "z"]}}})
    assert ds.info["metadata"] == METADATA  # written by the build, read back from disk with its types
    assert ds.info["options"] == {"x": {"y": [0.25, "z"]}} and ds.info["label"] == "none"
    assert fd.load({"name": "json_metadata", "data_dir": str(tmp_path)}).info["options"] == {"a": [1.5, "b"]}
    assert [ds.source("train")[i]["x"] for i in range(3)] == [0, 1, 2]
