"""What each dataset module provides: a tfds builder, its config fields, and a reader from records to sources."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

REQUIRED = object()  # Field.default of a field the data config must give


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field of a dataset: what it means, how it is checked, and its default.

    kind int: an integer >= minimum. kind str: one of `choices`. Any other kind (e.g. dict): `check`
    turns the config's value into the validated one or raises DataConfigError naming the problem.
    """
    meaning: str
    kind: type = int
    minimum: int = 0
    choices: tuple[str, ...] = ()
    default: Any = REQUIRED
    check: Callable[[Any], Any] | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A dataset ready for the pipeline: per-split random-access sources of final examples."""
    sources: Mapping[str, Sequence[dict[str, Any]]]  # split -> source (len, getitem, take)
    info: dict[str, Any]  # dataset-specific info (any JSON-like values); 'name' and 'num_examples' are added
    decode: Callable[[Any], str] | None = None  # text datasets: token ids -> str


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset: builder, config fields and reader.

    `read(records, fields, metadata, fitted) -> Loaded`: records maps split -> a sequence of decoded
    records, fields the validated config fields, metadata the prepared dataset's tfds metadata (any JSON),
    fitted its FittedCache (fintrans.data.fitted) for data-dependent preprocessing.
    `streams`: the records are storage.RecordSource (decoded one at a time on access, never all in memory)
    and the reader maps them lazily (sources.MappedSource); False: the reader needs whole splits at once
    (windows cut across records of one series or text) and gets lists of every decoded record.
    `augmentation(fields)`: the training-time per-example augmentation of the train split, or None.
    A `fields` value (minimum, meaning) is shorthand for Field(meaning, minimum=minimum): a required integer.
    """
    name: str
    builder: type  # tfds.core.GeneratorBasedBuilder subclass whose `name` equals `name`
    fields: Mapping[str, Field | tuple[int, str]]
    read: Callable[..., Loaded]
    streams: bool = False
    augmentation: Callable[[Mapping[str, Any]], Callable | None] | None = None

    def __post_init__(self):
        fields = {k: Field(v[1], minimum=v[0]) if isinstance(v, tuple) else v for k, v in self.fields.items()}
        object.__setattr__(self, "fields", fields)
