"""Where prepared datasets live, how they are built, and how their records are read back (no TensorFlow).

tfds 4.9.x builds and reads array_record without TensorFlow: `download_and_prepare` writes the split
files and dataset_info.json into `<data_dir>/<name>/incomplete.XXXXXX_<version>/` and renames that
folder to `<version>/` only at the end. An exception removes the temporary folder; a hard kill leaves
it behind (never read; safe to delete), so nothing half-built is ever taken for a prepared dataset.
The records are serialized tf.Example protos that tfds decodes with its numpy parser. They are read
here with array_record's own reader, file by file, so that a damaged file is named in the error.
Two processes must not build into one shared data_dir at once: prepare before a multi-host launch.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds
from array_record.python import array_record_module

from fintrans.data.errors import DatasetCorruptError, DatasetNotPreparedError

ENV_DATA_DIR = "FINTRANS_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/fintrans/tfds"
SPLITS = ("train", "validation", "test")

_lock = threading.Lock()  # two threads preparing one dataset at once would race on tfds' rename
_records_cache: dict[tuple, dict[str, list[dict[str, Any]]]] = {}


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """Explicit data_dir, else $FINTRANS_DATA_DIR, else ~/.cache/fintrans/tfds."""
    return Path(data_dir or os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR).expanduser().resolve()


def _prepare_hint(name: str, data_dir: Path) -> str:
    return (f"prepare it with `python -m fintrans.data.prepare --name={name} --data_dir={data_dir}` "
            f"or load with prepare=True")


def _construct(builder_cls, data_dir: Path):
    version_dir = data_dir / builder_cls.name / str(builder_cls.VERSION)
    try:
        return builder_cls(data_dir=os.fspath(data_dir), file_format="array_record")
    except Exception as e:  # a damaged dataset_info.json / features.json fails inside tfds
        if not (version_dir / "dataset_info.json").exists():
            raise  # nothing prepared there: not a damaged dataset
        raise DatasetCorruptError(
            f"the prepared dataset in {version_dir} cannot be opened ({type(e).__name__}: {e}); delete "
            f"{version_dir} and prepare it again") from e


def open_builder(builder_cls, data_dir: Path, *, prepare: bool) -> tfds.core.DatasetBuilder:
    """The builder of a prepared dataset in data_dir; builds it first if missing and `prepare`."""
    name = builder_cls.name
    if not prepare and not data_dir.is_dir():
        raise DatasetNotPreparedError(f"data_dir {data_dir} does not exist, so dataset {name!r} is not prepared "
                                      f"there; {_prepare_hint(name, data_dir)}")
    with _lock:
        builder = _construct(builder_cls, data_dir)
        # (checking the file first spares tfds' warning about a missing version folder)
        if (Path(os.fspath(builder.data_path)) / "dataset_info.json").is_file() and builder.is_prepared():
            return builder
        if not prepare:
            raise DatasetNotPreparedError(
                f"dataset {name!r} (version {builder_cls.VERSION}) is not prepared in data_dir {data_dir} "
                f"(no {builder.data_path}); {_prepare_hint(name, data_dir)}")
        data_dir.mkdir(parents=True, exist_ok=True)
        tfds.disable_progress_bar()  # the datasets build in seconds; bars only clutter logs
        builder.download_and_prepare(file_format="array_record")
        return _construct(builder_cls, data_dir)  # re-read the info (split sizes, metadata) from disk


def _fingerprint(builder) -> tuple:
    """Identifies the files on disk, so a rebuilt or replaced dataset is never served from cache."""
    path = Path(os.fspath(builder.data_path))
    return (os.fspath(path),) + tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                                             for f in path.iterdir() if f.is_file()))


def _read_file(path: Path, expected: int, features) -> list[dict[str, Any]]:
    fix = f"delete {path.parent} and prepare the dataset again"
    if not path.is_file():
        raise DatasetCorruptError(f"record file {path} is missing; {fix}")
    try:
        reader = array_record_module.ArrayRecordReader(os.fspath(path))
        try:
            count = reader.num_records()
            raw = reader.read_all() if count == expected else None
        finally:
            reader.close()
    except RuntimeError as e:  # riegeli: bad footer, chunk hash mismatch, truncated block, ...
        raise DatasetCorruptError(f"record file {path} is corrupt ({e}); {fix}") from e
    if raw is None:
        raise DatasetCorruptError(f"record file {path} holds {count} records, expected {expected}; {fix}")
    try:
        return [features.deserialize_example_np(r) for r in raw]
    except Exception as e:
        raise DatasetCorruptError(f"record file {path} has undecodable records ({e}); {fix}") from e


def read_records(builder) -> dict[str, list[dict[str, Any]]]:
    """Every split's records, decoded to dicts of numpy values, in file order (cached per process)."""
    key = _fingerprint(builder)
    with _lock:
        if key in _records_cache:
            return _records_cache[key]
    records: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        info = builder.info.splits[split]
        paths = [Path(os.fspath(p)) for p in info.filepaths]
        if len(paths) != len(info.shard_lengths):
            raise DatasetCorruptError(f"split {split!r} of {builder.data_path} lists {len(paths)} files for "
                                      f"{len(info.shard_lengths)} shards; delete {builder.data_path} and prepare "
                                      f"the dataset again")
        records[split] = [r for p, n in zip(paths, info.shard_lengths)
                          for r in _read_file(p, n, builder.info.features)]
    with _lock:
        _records_cache[key] = records
    return records
