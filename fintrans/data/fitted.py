"""Fitted artefacts: data-dependent preprocessing computed once from a prepared dataset and cached beside it.

ShapeFormer's shapelets, the stocks correlation selection and per-channel training statistics depend on the
data, not only on the config; they are fitted on the train split when a dataset is loaded (never while a
config is parsed) and cached as JSON in the prepared dataset's folder:

    <data_dir>/<name>/<version>/fitted/<kind>-<hash of kind, params, code>.json   {"kind", "params", "code", "value"}

    cache = FittedCache(version_dir)                 # FittedCache(None): compute every time, cache nothing
    value = cache.get("shapelets", {"per_class": 2, "window": 20}, compute)   # compute() -> JSON value

Rebuilding the dataset deletes its folder and so its artefacts; a fit whose code changes its result
passes a new `code` number, so artefacts of the old code are never read.

A value is whatever JSON holds (numbers, strings, lists, dicts; numpy scalars/arrays are converted), and
the first caller gets exactly what later callers read back (the value is round-tripped through JSON).
Concurrent processes are safe: the computation runs under an exclusive `fcntl.flock` on a lock file
beside the artefact, and the file is re-checked after the lock is taken, so it is computed once; files are
published with `os.replace` of a fully written temporary, so a reader never sees half a file. A folder that
cannot be written (a read-only shared data_dir) only costs recomputation, with a warning.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

FITTED_DIR = "fitted"
log = logging.getLogger(__name__)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock between processes (and threads: each call opens its own descriptor)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON data")


def canonical(value: Any) -> str:
    """JSON text of value, with sorted keys (what the cache keys hash and what its files hold)."""
    return json.dumps(value, sort_keys=True, default=_jsonable, allow_nan=False)


def atomic_write_text(path: Path, text: str) -> None:
    """Writes `path` so that readers see the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _header(kind: str, params: Mapping[str, Any], code: int) -> dict:
    return {"kind": kind, "params": dict(params), "code": int(code)}


class FittedCache:
    """Fitted artefacts of one prepared dataset (its version folder), or an uncached stand-in (None)."""

    def __init__(self, dataset_dir: str | os.PathLike | None):
        self.dir = None if dataset_dir is None else Path(dataset_dir) / FITTED_DIR

    def path(self, kind: str, params: Mapping[str, Any], code: int = 1) -> Path | None:
        """Where the artefact (kind, params, code) is cached (None for the uncached stand-in)."""
        if self.dir is None:
            return None
        key = canonical(_header(kind, params, code))
        return self.dir / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"

    def _read(self, path: Path, kind: str, params: Mapping[str, Any], code: int) -> tuple[bool, Any]:
        try:
            stored = json.loads(path.read_text())
        except FileNotFoundError:
            return False, None
        except (OSError, ValueError) as e:  # damaged: fitted again below and replaced
            log.warning("fitted artefact %s is unreadable (%s); fitting it again", path, e)
            return False, None
        header = _header(kind, params, code)
        if not isinstance(stored, dict) or canonical({k: stored.get(k) for k in header}) != canonical(header) or \
                "value" not in stored:
            log.warning("fitted artefact %s does not hold %s%s; fitting it again", path, kind, dict(params))
            return False, None
        return True, stored["value"]

    def get(self, kind: str, params: Mapping[str, Any], compute: Callable[[], Any], *, code: int = 1) -> Any:
        """The cached value of artefact `kind` fitted with `params`; compute() it (once) if missing.

        `code`: the fitting code's version; bump it when a change to the code changes the result."""
        if not kind or not kind.replace("_", "").isalnum():
            raise ValueError(f"fitted artefact kind must be a non-empty identifier; got {kind!r}")
        params = json.loads(canonical(dict(params)))  # plain JSON, so numpy ints hash like Python ints
        path = self.path(kind, params, code)
        if path is None:
            return json.loads(canonical(compute()))
        found, value = self._read(path, kind, params, code)
        if found:
            return value
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(file_lock(path.with_name(path.name + ".lock")))
            except OSError as e:  # read-only data_dir: correct, only slower
                log.warning("cannot cache fitted artefact %s in %s (%s); computing it uncached", kind, self.dir, e)
                return json.loads(canonical(compute()))
            found, value = self._read(path, kind, params, code)  # another process may have fitted it meanwhile
            if found:
                return value
            text = canonical({**_header(kind, params, code), "value": compute()})
            atomic_write_text(path, text)
            return json.loads(text)["value"]
