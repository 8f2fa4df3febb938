"""`digits`: scikit-learn's 1,797 8x8 handwritten digits (shipped in the wheel), split 70/15/15.

The split is stratified by label (15% of each class to validation, 15% to test) with a fixed seed.
Records keep the raw 0..16 pixel counts; the reader scales them to [0, 1], one record at a time as the
pipeline reads it (the dataset streams). Training augmentation of the train split (config fields
`augment`, `crop_padding`, `pad_mode`; fintrans.data.augment) is off by default.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from fintrans.data import augment
from fintrans.data.builders import register
from fintrans.data.builders.base import OfflineBuilder, packaged_file
from fintrans.data.sources import MappedSource
from fintrans.data.fitted import FittedCache
from fintrans.data.spec import DatasetSpec, Loaded

SPLIT_SEED = 0
NUM_CLASSES, IMAGE_SIZE, MAX_PIXEL = 10, 8, 16


@functools.lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [1797, 8, 8], int64 labels [1797]), identical to sklearn's load_digits()."""
    table = np.loadtxt(packaged_file("sklearn", "datasets", "data", "digits.csv.gz", dataset="digits"), delimiter=",", dtype=np.int64)
    return table[:, :-1].reshape(-1, IMAGE_SIZE, IMAGE_SIZE).astype(np.uint8), table[:, -1]


@functools.lru_cache(maxsize=1)
def split_indices() -> dict[str, np.ndarray]:
    """Stratified 70/15/15 split of load_digits' row indices (sorted within each split)."""
    labels = load_digits()[1]
    rng = np.random.default_rng(SPLIT_SEED)
    parts: dict[str, list[np.ndarray]] = {"train": [], "validation": [], "test": []}
    for c in range(NUM_CLASSES):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_val = n_test = round(0.15 * len(rows))
        parts["validation"].append(rows[:n_val])
        parts["test"].append(rows[n_val:n_val + n_test])
        parts["train"].append(rows[n_val + n_test:])
    return {split: np.sort(np.concatenate(p)) for split, p in parts.items()}


class Digits(OfflineBuilder, skip_registration=True):
    name = "digits"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=("scikit-learn load_digits: 1,797 8x8 grey images of handwritten digits (UCI optdigits "
                         "test set), pixel counts 0..16. Stratified 70/15/15 train/validation/test split with "
                         f"seed {SPLIT_SEED}."),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                "index": np.int32,  # row in load_digits, for tracing an example back
            }),
            supervised_keys=("image", "label"),
        )

    def _generate_examples(self, split: str):
        images, labels = load_digits()
        for i in split_indices()[split]:
            yield int(i), {"image": images[i][..., None], "label": int(labels[i]), "index": int(i)}


def example(record: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """One stored record -> {'inputs': float32 [8, 8, 1] in [0, 1], 'label': int32}."""
    return {"inputs": np.asarray(record["image"]).astype(np.float32) / MAX_PIXEL,
            "label": np.int32(record["label"])}


def read(records: Mapping[str, Any], fields: Mapping[str, Any], metadata: Mapping[str, Any],
         fitted: FittedCache) -> Loaded:
    del fields, metadata, fitted
    sources = {split: MappedSource(recs, example) for split, recs in records.items()}
    return Loaded(sources=sources, info={"num_classes": NUM_CLASSES, "image_size": IMAGE_SIZE, "channels": 1})


SPEC = register(DatasetSpec(name="digits", builder=Digits, fields=augment.IMAGE_FIELDS, read=read, streams=True,
                            augmentation=augment.image_augmentation))
