"""Frozen, validated model configs.

Every model config is a frozen dataclass deriving from ModelConfig. Construction validates every
field; an unknown field or bad value raises ConfigError naming it and the valid choices.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Iterable, Mapping

import jax.numpy as jnp

from fintrans import ops

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class ConfigError(ValueError):
    """A config field is unknown or has a bad value."""


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; choose from {choices}")


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name}={value!r} must be a {'non-negative' if allow_zero else 'positive'} integer")


def check_rate(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name}={value!r} must be a float in [0, 1)")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Fields every model has: compute and parameter dtypes."""
    dtype: str = "float32"
    param_dtype: str = "float32"

    def __post_init__(self):
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("param_dtype", self.param_dtype, DTYPES)
        self.validate()

    def validate(self) -> None:
        """Subclasses check their own fields here."""

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def params_dtype(self):
        return DTYPES[self.param_dtype]

    # What the model needs from the data: model field -> dataset info / data config key. The trainer
    # fills a field left None ("from the data") with the data's value; any other value must equal it.
    DATA_FIELDS: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]):
        """Builds the config from a mapping, naming any unknown field and the valid ones."""
        values = dict(values)
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {unknown}; valid fields: {sorted(cls.field_names())}")
        # ml_collections turns tuples into lists; dataclass fields that are tuples want tuples back.
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**values)

    def replace(self, **changes):
        return self.from_dict({**dataclasses.asdict(self), **changes})


@dataclasses.dataclass(frozen=True)
class AttentionConfig(ModelConfig):
    """The base of models with attention: `attention_impl` names the implementation of every
    attention op the model runs (fintrans.ops; None: the platform's best), checked against each."""
    attention_impl: str | None = None

    def attention_ops(self) -> tuple[str, ...]:
        """The fintrans.ops ops this model's attention runs; a model with another op overrides this.
        A config with `decode=True` also decodes one token at a time through decode_attention."""
        return ("attention",) + (("decode_attention",) if getattr(self, "decode", False) else ())

    def __post_init__(self):
        for op in self.attention_ops():
            try:
                ops.OPS.get(op).validate(self.attention_impl)
            except ValueError as err:
                raise ConfigError(f"attention_impl={self.attention_impl!r}: {err}") from None
        super().__post_init__()
