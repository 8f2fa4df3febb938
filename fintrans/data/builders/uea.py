"""UEA multivariate time-series classification sets read from the .ts files in the `sktime` wheel
(sktime/datasets/data/NAME/NAME_{TRAIN,TEST}.ts; the files are parsed here, sktime is never imported):

  basic_motions      4 classes (Standing, Running, Walking, Badminton), 6 channels (3-D accelerometer and
                     gyroscope of a smart watch), length 100; 40 train / 40 test series.
  japanese_vowels    9 classes (speakers), 12 channels (LPC cepstrum coefficients), lengths 7..29;
                     270 train / 370 test series.

Splits: `test` is the official TEST file. The official TRAIN file is split, stratified by class with seed 0,
into `train` (80%) and `validation` (20% of each class; the trainer evaluates on validation), so model
selection never looks at the test series. Published UEA accuracies train on the whole TRAIN file.

Values are kept as in the archive (no normalisation; info['mean'] / info['std'] hold the train split's
per-channel statistics over valid steps for models that want them). Every series is zero-padded at the end
to the set's longest length (max over both official files: 100 and 29), and 'mask' marks the real steps:
  {'inputs': float32[B, max_len, channels], 'mask': bool[B, max_len], 'label': int32[B]}
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from fintrans.data.builders.base import OfflineBuilder, packaged_file
from fintrans.data.errors import DatasetCorruptError
from fintrans.data.sources import ArraySource
from fintrans.data.spec import DatasetSpec, Loaded

SPLIT_SEED = 0
VALIDATION_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class TsFile:
    series: list[np.ndarray]  # float64 [length, channels] each
    labels: np.ndarray  # int64 class indices into class_names
    class_names: tuple[str, ...]


def parse_ts(text: str, source: str = "<ts>") -> TsFile:
    """A multivariate .ts file (sktime/aeon format) with class labels and no missing values or timestamps."""
    header: dict[str, str] = {}
    rows: list[str] = []
    in_data = False
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if in_data:
            rows.append(line)
        elif line.lower() == "@data":
            in_data = True
        elif line.startswith("@"):
            key, _, value = line[1:].partition(" ")
            header[key.lower()] = value.strip()
    label_spec = header.get("classlabel", "").split()
    if not label_spec or label_spec[0].lower() != "true":
        raise DatasetCorruptError(f"{source}: no '@classLabel true ...' header")
    if header.get("timestamps", "false").lower() != "false":
        raise DatasetCorruptError(f"{source}: time-stamped .ts files are not supported")
    class_names = tuple(label_spec[1:])
    dims = int(header["dimensions"]) if "dimensions" in header else None
    series, labels = [], []
    for n, row in enumerate(rows):
        *parts, label = row.split(":")
        if dims is not None and len(parts) != dims:
            raise DatasetCorruptError(f"{source}: series {n} has {len(parts)} dimensions, header says {dims}")
        try:
            channels = [np.asarray(p.split(","), dtype=np.float64) for p in parts]
        except ValueError as e:
            raise DatasetCorruptError(f"{source}: series {n} has missing or non-numeric values ({e})") from e
        if len({len(c) for c in channels}) != 1:
            raise DatasetCorruptError(f"{source}: series {n} has channels of different lengths")
        values = np.stack(channels, axis=1)
        if not np.all(np.isfinite(values)):
            raise DatasetCorruptError(f"{source}: series {n} has missing or non-finite values")
        if label not in class_names:
            raise DatasetCorruptError(f"{source}: series {n} has label {label!r} not in {class_names}")
        series.append(values)
        labels.append(class_names.index(label))
    if not series:
        raise DatasetCorruptError(f"{source}: no series after @data")
    return TsFile(series, np.asarray(labels, np.int64), class_names)


@functools.lru_cache(maxsize=None)
def load_official(problem: str, split: str) -> TsFile:
    """The official TRAIN or TEST file of a UEA problem shipped in sktime's wheel."""
    path = packaged_file("sktime", "datasets", "data", problem, f"{problem}_{split}.ts", dataset=problem)
    return parse_ts(path.read_text(), source=str(path))


def split_rows(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Stratified train/validation rows of the official TRAIN file (sorted; seed SPLIT_SEED)."""
    rng = np.random.default_rng(SPLIT_SEED)
    parts: dict[str, list[np.ndarray]] = {"train": [], "validation": []}
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(VALIDATION_FRACTION * len(rows)))
        parts["validation"].append(rows[:n_val])
        parts["train"].append(rows[n_val:])
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}


class _UeaBuilder(OfflineBuilder, skip_registration=True):
    PROBLEM = ""
    DESCRIPTION = ""
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        train, test = load_official(self.PROBLEM, "TRAIN"), load_official(self.PROBLEM, "TEST")
        if train.class_names != test.class_names:
            raise DatasetCorruptError(f"{self.PROBLEM}: TRAIN and TEST files list different classes")
        channels = train.series[0].shape[1]
        max_len = max(len(s) for s in train.series + test.series)
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "series": tfds.features.Tensor(shape=(None, channels), dtype=np.float32),
                "label": tfds.features.ClassLabel(names=list(train.class_names)),
                "index": np.int32,  # row in the official file, for tracing an example back
            }),
            supervised_keys=("series", "label"),
            disable_shuffling=True,  # records in official-file order
            metadata=tfds.core.MetadataDict(problem=self.PROBLEM, max_len=max_len, num_channels=channels,
                                            class_names=list(train.class_names)),
        )

    def _generate_examples(self, split: str):
        if split == "test":
            official, rows = load_official(self.PROBLEM, "TEST"), None
        else:
            official = load_official(self.PROBLEM, "TRAIN")
            rows = split_rows(official.labels)[split]
        for i in (range(len(official.series)) if rows is None else rows):
            i = int(i)
            yield i, {"series": official.series[i].astype(np.float32), "label": int(official.labels[i]), "index": i}


class BasicMotions(_UeaBuilder, skip_registration=True):
    name = "basic_motions"
    PROBLEM = "BasicMotions"
    DESCRIPTION = ("UEA BasicMotions: smart-watch accelerometer and gyroscope (6 channels, 100 steps at 10 Hz) of "
                   "four activities. Official TEST split; official TRAIN split 80/20 into train/validation, "
                   "stratified, seed 0.")


class JapaneseVowels(_UeaBuilder, skip_registration=True):
    name = "japanese_vowels"
    PROBLEM = "JapaneseVowels"
    DESCRIPTION = ("UEA JapaneseVowels: 12 LPC cepstrum coefficients of nine male speakers uttering /ae/, 7..29 "
                   "frames. Official TEST split; official TRAIN split 80/20 into train/validation, stratified, seed 0.")


def read(records: Mapping[str, list[dict[str, Any]]], fields: Mapping[str, int],
         metadata: Mapping[str, Any]) -> Loaded:
    del fields
    max_len, channels = int(metadata["max_len"]), int(metadata["num_channels"])
    sources = {}
    for split, recs in records.items():
        inputs = np.zeros((len(recs), max_len, channels), np.float32)
        mask = np.zeros((len(recs), max_len), bool)
        for n, r in enumerate(recs):
            series = np.asarray(r["series"])
            if series.ndim != 2 or series.shape[1] != channels or not 1 <= len(series) <= max_len:
                raise DatasetCorruptError(f"{metadata.get('problem')}: record {n} of split {split!r} has shape "
                                          f"{series.shape}, expected [1..{max_len}, {channels}]; delete the "
                                          f"prepared dataset and prepare it again")
            inputs[n, :len(series)] = series
            mask[n, :len(series)] = True
        sources[split] = ArraySource({"inputs": inputs, "mask": mask,
                                      "label": np.asarray([r["label"] for r in recs], np.int32)})
    train = sources["train"].arrays
    valid_steps = train["inputs"][train["mask"]].astype(np.float64)  # [steps, channels]
    info = {"problem": metadata.get("problem"), "num_classes": len(metadata["class_names"]),
            "class_names": list(metadata["class_names"]), "num_channels": channels, "max_len": max_len,
            "mean": valid_steps.mean(0).astype(np.float32), "std": valid_steps.std(0).astype(np.float32)}
    return Loaded(sources=sources, info=info)


BASIC_MOTIONS = DatasetSpec(name="basic_motions", builder=BasicMotions, fields={}, read=read)
JAPANESE_VOWELS = DatasetSpec(name="japanese_vowels", builder=JapaneseVowels, fields={}, read=read)
