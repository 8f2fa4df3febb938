"""Model registry: a name maps to (config class, module class).

    cfg_cls, module_cls = fintrans.models.get("decoder_lm")
    model = module_cls(cfg_cls(num_layers=2))
    params = model.init(rng, batch)

Adding an architecture is one file here that calls `register` at import, plus one line below.
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping, NamedTuple

from fintrans.models.config import ConfigError, ModelConfig

# Files that register models; imported on first use of the registry.
_MODEL_MODULES = (
    "fintrans.models.decoder_lm",
    "fintrans.models.bert",
    "fintrans.models.vit",
    "fintrans.models.ltsf_linear",
    "fintrans.models.transformer_forecaster",
    "fintrans.models.autoformer",
    "fintrans.models.itransformer",
    "fintrans.models.time2vec_encoder",
    "fintrans.models.t2",
    "fintrans.models.shapeformer",
    "fintrans.models.lmuformer",
    "fintrans.models.sansformer",
    "fintrans.models.flatformer",
)


class ModelSpec(NamedTuple):
    config: type
    module: type


_REGISTRY: dict[str, ModelSpec] = {}
_loaded = False


def register(name: str, config_cls: type, module_cls: type) -> None:
    if not issubclass(config_cls, ModelConfig):
        raise TypeError(f"{config_cls} must derive from ModelConfig")
    if name in _REGISTRY and _REGISTRY[name] != (config_cls, module_cls):
        raise ValueError(f"model name {name!r} is already registered")
    _REGISTRY[name] = ModelSpec(config_cls, module_cls)


def _load():
    global _loaded
    if not _loaded:
        for mod in _MODEL_MODULES:
            importlib.import_module(mod)
        _loaded = True


def names() -> tuple[str, ...]:
    _load()
    return tuple(sorted(_REGISTRY))


def get(name: str) -> ModelSpec:
    _load()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; registered models: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def build(name: str, fields: Mapping[str, Any] | None = None):
    """The module for `name` with its config built (and validated) from `fields`."""
    spec = get(name)
    return spec.module(spec.config.from_dict(fields or {}))


__all__ = ["ConfigError", "ModelConfig", "ModelSpec", "build", "get", "names", "register"]
