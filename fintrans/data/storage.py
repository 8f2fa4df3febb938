"""Where prepared datasets live, how they are built, and how their records are read back (no TensorFlow).

tfds 4.9.x builds and reads array_record without TensorFlow: `download_and_prepare` writes the split
files and dataset_info.json into `<data_dir>/<name>/incomplete.XXXXXX_<version>/` and renames that
folder to `<version>/` only at the end. An exception removes the temporary folder; a hard kill leaves
it behind (never read; safe to delete), so nothing half-built is ever taken for a prepared dataset.
The records are serialized tf.Example protos that tfds decodes with its numpy parser. They are read
here with array_record's own reader, file by file, so that a damaged file is named in the error:
`RecordSource` (a grain RandomAccessDataSource) decodes one record per access and holds none, for
datasets that stream; `read_records` decodes whole splits for readers that need them at once.

Concurrent first use (a sweep, two notebooks, several hosts on a shared data_dir) is safe: the build
runs under an exclusive `fcntl.flock` on `<data_dir>/.<name>-<version>.build.lock`, and whoever gets
the lock second finds the dataset prepared and reads it instead of building it again (tfds would
otherwise fail renaming its `incomplete.*` folder onto the winner's).
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module

from fintrans.data.errors import DatasetCorruptError, DatasetNotPreparedError
from fintrans.data.fitted import file_lock

ENV_DATA_DIR = "FINTRANS_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/fintrans/tfds"
SPLITS = ("train", "validation", "test")

_lock = threading.Lock()  # guards the records cache; builds are serialised by a file lock (processes too)
log = logging.getLogger(__name__)
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
    builder = _construct(builder_cls, data_dir)
    if _is_prepared(builder):
        return builder
    if not prepare:
        raise DatasetNotPreparedError(
            f"dataset {name!r} (version {builder_cls.VERSION}) is not prepared in data_dir {data_dir} "
            f"(no {builder.data_path}); {_prepare_hint(name, data_dir)}")
    data_dir.mkdir(parents=True, exist_ok=True)
    lock_path = data_dir / f".{name}-{builder_cls.VERSION}.build.lock"
    with file_lock(lock_path):
        builder = _construct(builder_cls, data_dir)  # re-check: another process may have built it meanwhile
        if _is_prepared(builder):
            log.info("dataset %s was prepared by another process while this one waited", name)
            return builder
        tfds.disable_progress_bar()  # the datasets build in seconds; bars only clutter logs
        builder.download_and_prepare(file_format="array_record")
    return _construct(builder_cls, data_dir)  # re-read the info (split sizes, metadata) from disk


def _is_prepared(builder) -> bool:
    # (checking the file first spares tfds' warning about a missing version folder)
    return (Path(os.fspath(builder.data_path)) / "dataset_info.json").is_file() and builder.is_prepared()


def _fingerprint(builder) -> tuple:
    """Identifies the files on disk, so a rebuilt or replaced dataset is never served from cache."""
    path = Path(os.fspath(builder.data_path))
    return (os.fspath(path),) + tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                                             for f in path.iterdir() if f.is_file()))


def _fix(path: Path) -> str:
    return f"delete {path.parent} and prepare the dataset again"


def _open_file(path: Path, expected: int):
    """An array_record reader of `path` after checking that it holds `expected` records."""
    if not path.is_file():
        raise DatasetCorruptError(f"record file {path} is missing; {_fix(path)}")
    try:
        # readahead 0: random access reads only the chunk it needs (as grain's ArrayRecordDataSource)
        reader = array_record_module.ArrayRecordReader(os.fspath(path), options="readahead_buffer_size:0")
        count = reader.num_records()
        if count != expected:
            reader.close()
    except RuntimeError as e:  # riegeli: bad footer, chunk hash mismatch, truncated block, ...
        raise DatasetCorruptError(f"record file {path} is corrupt ({e}); {_fix(path)}") from e
    if count != expected:
        raise DatasetCorruptError(f"record file {path} holds {count} records, expected {expected}; {_fix(path)}")
    return reader


def _decode(features, raw: bytes, path: Path) -> dict[str, Any]:
    try:
        return features.deserialize_example_np(raw)
    except Exception as e:
        raise DatasetCorruptError(f"record file {path} has undecodable records ({e}); {_fix(path)}") from e


def _split_files(builder, split: str) -> list[tuple[Path, int]]:
    info = builder.info.splits[split]
    paths = [Path(os.fspath(p)) for p in info.filepaths]
    if len(paths) != len(info.shard_lengths):
        raise DatasetCorruptError(f"split {split!r} of {builder.data_path} lists {len(paths)} files for "
                                  f"{len(info.shard_lengths)} shards; delete {builder.data_path} and prepare "
                                  f"the dataset again")
    return list(zip(paths, info.shard_lengths))


class RecordSource:
    """A split's records, decoded one at a time on access: a grain RandomAccessDataSource (len, getitem,
    getitems).

    Only the files' readers are held (opened and checked on construction); no record is kept, so memory
    does not grow with the split. `decoded` counts the records decoded so far. Pickling reopens the
    files, so the source can go to grain's worker processes.
    """

    def __init__(self, builder, split: str):
        self.features = builder.info.features
        self.split = split
        self._files = _split_files(builder, split)
        self._ends = np.cumsum([n for _, n in self._files], dtype=np.int64)
        self.decoded = 0
        self._open()

    def _open(self) -> None:
        self._readers = [_open_file(path, n) for path, n in self._files]
        self._locks = [threading.Lock() for _ in self._files]  # a reader is not shared between threads

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_readers", "_locks")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def _locate(self, index: int) -> tuple[int, int]:
        n = len(self)
        index = int(index)
        if not -n <= index < n:
            raise IndexError(f"record {index} of split {self.split!r} is out of range [0, {n})")
        index %= n
        f = int(np.searchsorted(self._ends, index, side="right"))
        return f, index - (int(self._ends[f - 1]) if f else 0)

    def _read(self, f: int, positions: list[int]) -> list[dict[str, Any]]:
        path = self._files[f][0]
        try:
            with self._locks[f]:
                raw = self._readers[f].read(positions)
                self.decoded += len(positions)
        except RuntimeError as e:
            raise DatasetCorruptError(f"record file {path} is corrupt ({e}); {_fix(path)}") from e
        return [_decode(self.features, r, path) for r in raw]

    def __getitem__(self, index: int) -> dict[str, Any]:
        f, position = self._locate(index)
        return self._read(f, [position])[0]

    def __getitems__(self, indices) -> list[dict[str, Any]]:
        """Records at `indices` (any order), one read call per file."""
        located = [self._locate(i) for i in indices]
        out: list[Any] = [None] * len(located)
        for f in sorted({f for f, _ in located}):
            here = [k for k, (g, _) in enumerate(located) if g == f]
            for k, record in zip(here, self._read(f, [located[k][1] for k in here])):
                out[k] = record
        return out

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"RecordSource({self.split!r}, {len(self)} records in {len(self._files)} file(s))"


def record_sources(builder) -> dict[str, RecordSource]:
    """Every split as a streaming RecordSource."""
    return {split: RecordSource(builder, split) for split in SPLITS}


def _read_file(path: Path, expected: int, features) -> list[dict[str, Any]]:
    reader = _open_file(path, expected)
    try:
        raw = reader.read_all()
    except RuntimeError as e:
        raise DatasetCorruptError(f"record file {path} is corrupt ({e}); {_fix(path)}") from e
    finally:
        reader.close()
    return [_decode(features, r, path) for r in raw]


def read_records(builder) -> dict[str, list[dict[str, Any]]]:
    """Every split's records, decoded to dicts of numpy values, in file order (cached per process), for
    the readers that need whole splits (spec.streams False)."""
    key = _fingerprint(builder)
    with _lock:
        if key in _records_cache:
            return _records_cache[key]
    features = builder.info.features
    records = {split: [r for path, n in _split_files(builder, split) for r in _read_file(path, n, features)]
               for split in SPLITS}
    with _lock:
        _records_cache[key] = records
    return records
