"""`chars`: character-level text of Python standard-library source files (the running interpreter's).

Splits are contiguous 90/5/5 slices of one concatenated text (train first), so no window of one split
overlaps another. Records are chunks of CHUNK_LEN tokens in order; the reader concatenates a split's
chunks and cuts non-overlapping windows of seq_len + 1 tokens (targets = inputs shifted by one).
"""
from __future__ import annotations

import functools
import sys
import sysconfig
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from fintrans.data import tokenizers
from fintrans.data.errors import DataConfigError, DatasetCorruptError
from fintrans.data.builders import register
from fintrans.data.builders.base import OfflineBuilder
from fintrans.data.sources import WindowSource
from fintrans.data.fitted import FittedCache
from fintrans.data.spec import DatasetSpec, Loaded

# Fixed and sorted; present as plain modules (not packages) in CPython 3.9-3.13. ~1.8 MB on 3.11.
MODULES = (
    "argparse.py", "ast.py", "base64.py", "bisect.py", "calendar.py", "collections/__init__.py",
    "configparser.py", "contextlib.py", "copy.py", "csv.py", "dataclasses.py", "difflib.py", "enum.py",
    "fractions.py", "functools.py", "gettext.py", "heapq.py", "inspect.py", "ipaddress.py", "json/decoder.py",
    "json/encoder.py", "logging/__init__.py", "operator.py", "optparse.py", "pprint.py", "queue.py", "random.py",
    "shlex.py", "shutil.py", "statistics.py", "string.py", "subprocess.py", "tarfile.py", "textwrap.py",
    "threading.py", "tokenize.py", "traceback.py", "typing.py", "uuid.py", "weakref.py",
)
SPLIT_FRACTIONS = {"train": 0.90, "validation": 0.05, "test": 0.05}
CHUNK_LEN = 8192
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"


@functools.lru_cache(maxsize=1)
def stdlib_tokens() -> np.ndarray:
    """All MODULES concatenated (each preceded by a '# file: NAME' line), as ASCII ids."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for rel in MODULES:
        path = root / rel
        if not path.is_file():
            raise FileNotFoundError(f"stdlib module {path} not found (Python {PYTHON_VERSION}); the chars dataset "
                                    f"needs all of {MODULES}")
        parts.append(f"# file: {rel}\n" + path.read_text(encoding="utf-8") + "\n")
    return tokenizers.ascii_encode("".join(parts))


def split_bounds(total: int) -> dict[str, tuple[int, int]]:
    """Contiguous [start, end) token ranges of each split."""
    train_end = int(total * SPLIT_FRACTIONS["train"])
    val_end = train_end + int(total * SPLIT_FRACTIONS["validation"])
    return {"train": (0, train_end), "validation": (train_end, val_end), "test": (val_end, total)}


class Chars(OfflineBuilder, skip_registration=True):
    name = "chars"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(f"Character-level text of {len(MODULES)} Python standard-library modules from the "
                         f"interpreter that built it (Python {PYTHON_VERSION}): {', '.join(MODULES)}. Tokens are "
                         f"ASCII codes 0..127; each non-ASCII character becomes id {tokenizers.REPLACEMENT_ID}. "
                         f"Splits are contiguous 90/5/5 slices; records are {CHUNK_LEN}-token chunks in order."),
            features=tfds.features.FeaturesDict({
                "chunk_index": np.int32,
                "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            }),
            disable_shuffling=True,  # order is the text order
            metadata=tfds.core.MetadataDict(python_version=PYTHON_VERSION, modules=list(MODULES)),
        )

    def _generate_examples(self, split: str):
        tokens = stdlib_tokens()
        start, end = split_bounds(len(tokens))[split]
        for i, pos in enumerate(range(start, end, CHUNK_LEN)):
            yield i, {"chunk_index": i, "tokens": tokens[pos:min(pos + CHUNK_LEN, end)]}


def _shifted_pair(windows: np.ndarray) -> dict[str, np.ndarray]:
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}


def read(records: Mapping[str, list[dict[str, Any]]], fields: Mapping[str, int],
         metadata: Mapping[str, Any], fitted: FittedCache) -> Loaded:
    del fitted  # nothing fitted
    seq_len = fields["seq_len"]
    sources, num_tokens = {}, {}
    for split, recs in records.items():
        if [int(r["chunk_index"]) for r in recs] != list(range(len(recs))):
            raise DatasetCorruptError(f"chars {split!r} chunks are out of order; delete the prepared dataset and "
                                      f"prepare it again")
        tokens = np.concatenate([r["tokens"] for r in recs]) if recs else np.zeros((0,), np.int32)
        num_tokens[split] = len(tokens)
        count = max(len(tokens) - 1, 0) // seq_len  # windows of seq_len + 1 overlapping by one token
        if count == 0:
            raise DataConfigError(f"chars: seq_len={seq_len} leaves no window in split {split!r} ({len(tokens)} "
                                  f"tokens); use a shorter seq_len")
        sources[split] = WindowSource(tokens.astype(np.int32), length=seq_len + 1, stride=seq_len, first=0,
                                      count=count, make=_shifted_pair)
    info = {"vocab_size": tokenizers.ASCII_VOCAB_SIZE, "seq_len": seq_len, "num_tokens": num_tokens,
            "replacement_id": tokenizers.REPLACEMENT_ID, "python_version": metadata.get("python_version")}
    return Loaded(sources=sources, info=info, decode=tokenizers.ascii_decode)


SPEC = register(DatasetSpec(name="chars", builder=Chars,
                   fields={"seq_len": (1, "tokens per window (inputs and targets each)")}, read=read))
