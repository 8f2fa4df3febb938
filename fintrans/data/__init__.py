"""Offline datasets: TFDS builders (array_record, no TensorFlow) read through Grain.

    import fintrans.data as fd
    ds = fd.load({"name": "chars", "seq_len": 256})   # or an ml_collections.ConfigDict
    it = ds.iterator("train", batch_size=64, shuffle=True, seed=0)
    batch = next(it)                                  # {'inputs': int32[64, 256], 'targets': int32[64, 256]}

Datasets (fd.names()) and their config fields besides `name`, `data_dir` (default $FINTRANS_DATA_DIR or
~/.cache/fintrans/tfds) and `prepare` (default True: build the dataset if it is missing):
  chars            seq_len            {'inputs', 'targets'}: int32[B, seq_len]; targets = inputs shifted by one
  digits           [augment, crop_padding, pad_mode]
                                      {'inputs': float32[B, 8, 8, 1] in [0, 1], 'label': int32[B]}
  sp500            input_len, horizon {'inputs': float32[B, input_len, 6], 'targets': float32[B, horizon, 6]}
  finai_sentences  max_len            {'inputs': int32[B, max_len] ([CLS] first), 'mask': bool[B, max_len], 'label'}
  stocks           input_len, horizon, target, min_corr_pct
                                      {'inputs': float32[B, input_len, C], 'targets': float32[B, horizon, C]}; C of
                                      AAPL/GOOG/IBM/MSFT/sp500/nasdaq kept by train-split correlation with target
  seattle_weather  input_len, horizon {'inputs': float32[B, input_len, 4], 'targets': float32[B, horizon, 4]}
  basic_motions    [shapelets]        {'inputs': float32[B, 100, 6], 'mask': bool[B, 100], 'label': int32[B] (4)}
  japanese_vowels  [shapelets]        {'inputs': float32[B, 29, 12] zero-padded, 'mask': bool[B, 29], 'label' (9)}
  arrow_head       [shapelets]        {'inputs': float32[B, 251, 1], 'mask': bool[B, 251], 'label' (3)} (UCR)
  osu_leaf         [shapelets]        {'inputs': float32[B, 427, 1], 'mask': bool[B, 427], 'label' (6)} (UCR)
  (and patient_visits: gsp; synthetic_scenes: max_points; see their modules). [optional] fields have defaults.
Forecasting series are standardised with their train split's mean/std (info['mean'], info['std']).
Evaluation batches (num_epochs=1) also carry 'valid': bool[B] (False on padding rows).

Image, text and sequence datasets stream (DatasetSpec.streams): each record is decoded when the
pipeline reads it (storage.RecordSource), so memory does not grow with the split; chars and the
forecasting series hold their splits in memory because their windows span records. Training
augmentation (`augment="crop_flip"` etc., fintrans.data.augment) is keyed on (seed, epoch, index).
Data-dependent preprocessing (shapelets, train statistics, feature selection) is fitted when the
dataset is loaded and cached beside it (fintrans.data.fitted); `info` values may be any JSON-like data.
Two processes loading an unbuilt dataset at once both get it: the build runs under a file lock.

The iterator is grain's DatasetIterator: `it.get_state()` / `it.set_state(state)`; with orbax
(mngr = ocp.CheckpointManager(dir); grain registers its args, or pass item_handlers={"data":
grain.checkpoint.CheckpointHandler()}):
    mngr.save(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it)))  # `it` resumes in place
Build datasets ahead of a multi-host run with `python -m fintrans.data.prepare --data_dir=...`
(or fd.prepare_dataset(name, data_dir)).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fintrans.data import pipeline, storage
from fintrans.data.builders import DATASETS
from fintrans.data.errors import DataConfigError, DatasetCorruptError, DatasetNotPreparedError
from fintrans.data.fitted import FittedCache
from fintrans.data.spec import DatasetSpec

# (no function named `prepare`: importing the CLI module fintrans.data.prepare would replace it)
__all__ = ["DATASETS", "Dataset", "DataConfigError", "DatasetCorruptError", "DatasetNotPreparedError", "load",
           "names", "prepare_dataset"]

COMMON_FIELDS = ("name", "data_dir", "prepare")


def names() -> list[str]:
    """Registered dataset names."""
    return list(DATASETS.names())


def _spec(name: Any) -> DatasetSpec:
    if name not in DATASETS:
        raise DataConfigError(f"unknown dataset name {name!r}; valid names: {names()}")
    return DATASETS.get(name)


class Dataset:
    """A loaded dataset: `info`, `iterator(...)`, `source(split)`, and `decode` for text datasets."""

    def __init__(self, spec: DatasetSpec, fields: Mapping[str, Any], builder, data_dir: Path):
        self.name = spec.name
        self.fields = dict(fields)
        self.data_dir = data_dir
        self.streams = spec.streams
        records = storage.record_sources(builder) if spec.streams else storage.read_records(builder)
        self.fitted = FittedCache(os.fspath(builder.data_path))
        loaded = spec.read(records, self.fields, dict(builder.info.metadata or {}), self.fitted)
        self._sources = dict(loaded.sources)
        self._decode = loaded.decode
        self._augment = spec.augmentation(self.fields) if spec.augmentation else None
        self.splits = tuple(self._sources)
        self.info: dict[str, Any] = {
            "name": spec.name, "version": str(builder.version),
            "num_examples": {s: len(src) for s, src in self._sources.items()},
            **loaded.info,
        }

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, {self.fields}, num_examples={self.info['num_examples']})"

    def _check_split(self, split: str) -> None:
        if split not in self._sources:
            raise DataConfigError(f"unknown split {split!r} for dataset {self.name!r}; valid splits: "
                                  f"{list(self.splits)}")

    def source(self, split: str):
        """The split's examples in stored order: len(src), src[i] (one example), src.take(indices) (a batch)."""
        self._check_split(split)
        return self._sources[split]

    def iterator(self, split: str, batch_size: int, *, shuffle: bool, seed: int = 0, num_epochs: int | None = None,
                 process_index: int | None = None, process_count: int | None = None, augment: bool = True):
        """Host-local batches (dicts of numpy arrays) of a GLOBAL batch_size; see fintrans.data.pipeline.

        num_epochs=None repeats forever (training, reshuffled every epoch); num_epochs=1 is evaluation:
        every example once, last batch padded, every batch with 'valid'. Defaults for the process
        arguments come from jax. Training iterators of the train split apply the data config's
        augmentation (if any; keyed on (seed, epoch, index)) unless augment=False.
        """
        self._check_split(split)
        if not isinstance(shuffle, (bool, np.bool_)):
            raise DataConfigError(f"shuffle must be True or False; got {shuffle!r}")
        if process_index is None or process_count is None:
            import jax  # only here: the rest of fintrans.data does not need jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        return pipeline.make_iterator(
            self._sources[split], batch_size=batch_size, shuffle=bool(shuffle), seed=seed, num_epochs=num_epochs,
            process_index=process_index, process_count=process_count, description=f"{self.name} split {split!r}",
            augment=self._augment if augment and split == "train" else None)

    def decode(self, tokens) -> str:
        """Token ids -> text (text datasets only)."""
        if self._decode is None:
            raise TypeError(f"dataset {self.name!r} is not a text dataset; decode exists for "
                            f"{[n for n in names() if n in ('chars', 'finai_sentences')]}")
        return self._decode(tokens)


def _as_dict(data_cfg: Any) -> dict[str, Any]:
    if hasattr(data_cfg, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
        return dict(data_cfg.to_dict())
    if isinstance(data_cfg, Mapping):
        return dict(data_cfg)
    raise DataConfigError(f"data config must be a mapping or ml_collections.ConfigDict; got {type(data_cfg).__name__}")


def _check_field(name: str, field_name: str, field, value: Any) -> Any:
    """The validated value of one config field (see spec.Field)."""
    if value is None:
        return copy.deepcopy(field.default)  # (a reader may not change the spec's default through its fields)
    if field.kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < field.minimum:
            raise DataConfigError(f"config field {field_name} of dataset {name!r} ({field.meaning}) must be an integer "
                                  f">= {field.minimum}; got {value!r}")
        return int(value)
    if field.kind is str:
        if not isinstance(value, str) or (field.choices and value not in field.choices):
            allowed = f"one of {list(field.choices)}" if field.choices else "a string"
            raise DataConfigError(f"config field {field_name} of dataset {name!r} ({field.meaning}) must be "
                                  f"{allowed}; got {value!r}")
        return value
    if hasattr(value, "to_dict"):  # a nested ml_collections.ConfigDict
        value = value.to_dict()
    return field.check(value) if field.check else value


def _validate(cfg: Mapping[str, Any]) -> tuple[DatasetSpec, dict[str, Any]]:
    name = cfg.get("name")
    if not name:
        raise DataConfigError(f"data config has no `name`; valid names: {names()}")
    spec = _spec(name)
    valid = list(COMMON_FIELDS) + list(spec.fields)
    unknown = sorted(set(cfg) - set(valid))
    if unknown:
        raise DataConfigError(f"unknown config field(s) {unknown} for dataset {name!r}; valid fields: {valid}")
    missing = [f for f, field in spec.fields.items() if field.required and cfg.get(f) is None]
    if missing:
        described = "; ".join(f"{f}: {spec.fields[f].meaning}" for f in missing)
        raise DataConfigError(f"missing config field(s) {missing} for dataset {name!r} ({described})")
    fields = {f: _check_field(name, f, field, cfg.get(f)) for f, field in spec.fields.items()}
    if not isinstance(cfg.get("prepare", True), (bool, np.bool_)):
        raise DataConfigError(f"config field prepare must be True or False; got {cfg['prepare']!r}")
    data_dir = cfg.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise DataConfigError(f"config field data_dir must be a path; got {data_dir!r}")
    return spec, fields


def load(data_cfg: Any) -> Dataset:
    """The dataset named by data_cfg['name'] (built first if missing and data_cfg.get('prepare', True))."""
    cfg = _as_dict(data_cfg)
    spec, fields = _validate(cfg)
    data_dir = storage.resolve_data_dir(cfg.get("data_dir"))
    builder = storage.open_builder(spec.builder, data_dir, prepare=bool(cfg.get("prepare", True)))
    return Dataset(spec, fields, builder, data_dir)


def prepare_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Builds dataset `name` in data_dir if it is not there yet; returns its version folder."""
    builder = storage.open_builder(_spec(name).builder, storage.resolve_data_dir(data_dir), prepare=True)
    return Path(os.fspath(builder.data_path))
