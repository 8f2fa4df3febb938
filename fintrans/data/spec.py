"""What each dataset module provides: a tfds builder plus a reader from records to pipeline sources."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A dataset ready for the pipeline: per-split random-access sources of final examples."""
    sources: Mapping[str, Sequence[dict[str, Any]]]  # split -> source (len + getitem)
    info: dict[str, Any]  # dataset-specific info; 'name' and 'num_examples' are added by fintrans.data
    decode: Callable[[Any], str] | None = None  # text datasets: token ids -> str


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    builder: type  # tfds.core.GeneratorBasedBuilder subclass whose `name` equals `name`
    fields: Mapping[str, tuple[int, str]]  # required integer config field -> (minimum, what it means)
    # (records per split, validated config fields, the prepared dataset's tfds metadata) -> Loaded
    read: Callable[[Mapping[str, list[dict[str, Any]]], Mapping[str, int], Mapping[str, Any]], Loaded]
