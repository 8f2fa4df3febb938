"""UEA multivariate time-series classification sets read from the .ts files in the `sktime` wheel
(sktime/datasets/data/NAME/NAME_{TRAIN,TEST}.ts; the files are parsed here, sktime is never imported):

  basic_motions      4 classes (Standing, Running, Walking, Badminton), 6 channels (3-D accelerometer and
                     gyroscope of a smart watch), length 100; 40 train / 40 test series.
  japanese_vowels    9 classes (speakers), 12 channels (LPC cepstrum coefficients), lengths 7..29;
                     270 train / 370 test series.
  arrow_head         3 classes (arrowhead types), 1 channel (outline of the head as a distance-to-centre
                     profile), length 251; 36 train / 175 test series (UCR, univariate).
  osu_leaf           6 classes (tree species), 1 channel (leaf outline profile), length 427; 200 train /
                     242 test series (UCR, univariate).

The last two do not saturate (good classifiers stay clearly below 100%: the UCR archive's 1-NN DTW scores
about 0.70 on ArrowHead and 0.59 on OSULeaf), unlike basic_motions, where 40 test series and near-perfect
accuracy leave no room to tell methods apart.

Splits: `test` is the official TEST file. The official TRAIN file is split, stratified by class with seed 0,
into `train` (80%) and `validation` (20% of each class; the trainer evaluates on validation), so model
selection never looks at the test series. Published UEA accuracies train on the whole TRAIN file.

Values are kept as in the archive (no normalisation; info['mean'] / info['std'] hold the train split's
per-channel statistics over valid steps for models that want them). Every series is zero-padded at the end
to the set's longest length (max over both official files: 100, 29, 251 and 427), and 'mask' marks the real steps:
  {'inputs': float32[B, max_len, channels], 'mask': bool[B, max_len], 'label': int32[B]}
Examples are padded one record at a time as the pipeline reads them (the datasets stream); the train
statistics are a fitted artefact (fintrans.data.fitted), computed once and cached beside the dataset.

Config field `shapelets` (default None): a dict such as {"per_class": 2, "window": 20} discovers ShapeFormer's
shapelets on the train split (fintrans.data.shapelets; ~10 s for basic_motions) the first time the dataset
is loaded with it, caches them beside the dataset, and exposes them as info['shapelets'], the ShapeFormer
config fields {shapelets, shapelet_channels, shapelet_starts, shapelet_weights} (tuples).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from fintrans.data.builders import register
from fintrans.data.builders.base import OfflineBuilder, packaged_file
from fintrans.data import shapelets
from fintrans.data.errors import DataConfigError, DatasetCorruptError
from fintrans.data.sources import MappedSource
from fintrans.data.fitted import FittedCache
from fintrans.data.spec import DatasetSpec, Field, Loaded

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


class ArrowHead(_UeaBuilder, skip_registration=True):
    name = "arrow_head"
    PROBLEM = "ArrowHead"
    DESCRIPTION = ("UCR ArrowHead: outlines of projectile points (arrowheads) as 251-step profiles, three classes "
                   "(Avonlea, Clovis, Mix). Official TEST split; official TRAIN split 80/20 into "
                   "train/validation, stratified, seed 0.")


class OSULeaf(_UeaBuilder, skip_registration=True):
    name = "osu_leaf"
    PROBLEM = "OSULeaf"
    DESCRIPTION = ("UCR OSULeaf: leaf outlines of six tree species as 427-step profiles. Official TEST split; "
                   "official TRAIN split 80/20 into train/validation, stratified, seed 0.")


SHAPELET_PARAMS = {"per_class": 2, "window": 20, "pip_fraction": 0.2, "min_len": 3, "max_len_fraction": 0.5}


def check_shapelet_fit(value: Any) -> dict | None:
    """The `shapelets` config field: None (no shapelets) or a dict of SHAPELET_PARAMS keys (others default)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise DataConfigError(f"config field shapelets must be None or a dict with keys {list(SHAPELET_PARAMS)}; "
                              f"got {value!r}")
    unknown = sorted(set(value) - set(SHAPELET_PARAMS))
    if unknown:
        raise DataConfigError(f"unknown key(s) {unknown} in config field shapelets; valid keys: "
                              f"{list(SHAPELET_PARAMS)}")
    fit = {**SHAPELET_PARAMS, **value}
    for key, minimum in (("per_class", 1), ("window", 0), ("min_len", 1)):
        if isinstance(fit[key], bool) or not isinstance(fit[key], (int, np.integer)) or fit[key] < minimum:
            raise DataConfigError(f"shapelets.{key} must be an integer >= {minimum}; got {fit[key]!r}")
        fit[key] = int(fit[key])
    for key in ("pip_fraction", "max_len_fraction"):
        if isinstance(fit[key], bool) or not isinstance(fit[key], (int, float)) or not 0 < fit[key] <= 1:
            raise DataConfigError(f"shapelets.{key} must be a number in (0, 1]; got {fit[key]!r}")
        fit[key] = float(fit[key])
    return fit


def _valid_series(record: Mapping[str, Any], max_len: int, channels: int, problem: str) -> np.ndarray:
    series = np.asarray(record["series"])
    if series.ndim != 2 or series.shape[1] != channels or not 1 <= len(series) <= max_len:
        raise DatasetCorruptError(f"{problem}: record {int(record['index'])} has shape {series.shape}, expected "
                                  f"[1..{max_len}, {channels}]; delete the prepared dataset and prepare it again")
    return series


def fit_train_stats(train: Sequence[Mapping[str, Any]]) -> dict:
    """Per-channel mean and std (float64) of the train split's valid steps."""
    steps = np.concatenate([np.asarray(r["series"], np.float64) for r in train])  # [steps, channels]
    return {"mean": steps.mean(0).tolist(), "std": steps.std(0).tolist()}


def fit_shapelets(train: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> dict:
    """ShapeFormer config fields (shapelets.Shapelets.as_config) discovered on the train split."""
    per_class = params["per_class"]
    scored = shapelets.score_candidates([np.asarray(r["series"]) for r in train],
                                        np.asarray([r["label"] for r in train]),
                                        **{k: v for k, v in params.items() if k != "per_class"})
    return shapelets.select(scored, per_class).as_config()


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def read(records: Mapping[str, Sequence[Mapping[str, Any]]], fields: Mapping[str, Any],
         metadata: Mapping[str, Any], fitted: FittedCache) -> Loaded:
    max_len, channels, problem = int(metadata["max_len"]), int(metadata["num_channels"]), metadata.get("problem")

    def example(record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        series = _valid_series(record, max_len, channels, problem)
        inputs = np.zeros((max_len, channels), np.float32)
        inputs[:len(series)] = series
        return {"inputs": inputs, "mask": np.arange(max_len) < len(series), "label": np.int32(record["label"])}

    sources = {split: MappedSource(recs, example) for split, recs in records.items()}
    stats = fitted.get("train_stats", {}, lambda: fit_train_stats(records["train"]))
    info = {"problem": problem, "num_classes": len(metadata["class_names"]),
            "class_names": list(metadata["class_names"]), "num_channels": channels, "max_len": max_len,
            "mean": np.asarray(stats["mean"]).astype(np.float32), "std": np.asarray(stats["std"]).astype(np.float32)}
    if fields.get("shapelets") is not None:
        params = fields["shapelets"]
        found = fitted.get("shapelets", params, lambda: fit_shapelets(records["train"], params),
                            code=shapelets.CODE_VERSION)
        info["shapelets"] = {k: _as_tuples(v) for k, v in found.items()}
    return Loaded(sources=sources, info=info)


UEA_FIELDS = {"shapelets": Field(
    f"ShapeFormer shapelets fitted on the train split and cached beside the dataset (info['shapelets']): None, "
    f"or a dict of {SHAPELET_PARAMS} (defaults shown; fintrans.data.shapelets)", kind=dict, default=None,
    check=check_shapelet_fit)}
BASIC_MOTIONS = register(DatasetSpec(name="basic_motions", builder=BasicMotions, fields=UEA_FIELDS, read=read,
                                     streams=True))
JAPANESE_VOWELS = register(DatasetSpec(name="japanese_vowels", builder=JapaneseVowels, fields=UEA_FIELDS, read=read,
                                       streams=True))
ARROW_HEAD = register(DatasetSpec(name="arrow_head", builder=ArrowHead, fields=UEA_FIELDS, read=read, streams=True))
OSU_LEAF = register(DatasetSpec(name="osu_leaf", builder=OSULeaf, fields=UEA_FIELDS, read=read, streams=True))
