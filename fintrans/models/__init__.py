"""Model registry: a name maps to a ModelSpec (config class, module class, optional hooks such as generate).

    spec = fintrans.models.get("decoder_lm")  # ModelSpec(config, module, generate)
    model = spec.module(spec.config(num_layers=2))
    params = model.init(rng, batch)

Adding an architecture is one file here that calls `register` at import, plus one line below.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional

from fintrans.models.config import ConfigError, ModelConfig
from fintrans.registry import Registry

# Files that register models; imported on the registry's first lookup.
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
    # Optional hooks that tasks reach through the registry (the trainer never imports a model file):
    # generate(model_config, params, prompt [batch, len], num_tokens, rng, *, temperature, top_k) -> tokens.
    generate: Optional[Callable[..., Any]] = None


MODELS: Registry[ModelSpec] = Registry("model", load=_MODEL_MODULES, error=ConfigError)


def register(name: str, config_cls: type, module_cls: type, *, generate: Optional[Callable[..., Any]] = None) -> None:
    if not issubclass(config_cls, ModelConfig):
        raise TypeError(f"{config_cls} must derive from ModelConfig")
    MODELS.register(name, ModelSpec(config_cls, module_cls, generate))


def names() -> tuple[str, ...]:
    return MODELS.names()


def get(name: str) -> ModelSpec:
    return MODELS.get(name)


def build(name: str, fields: Mapping[str, Any] | None = None):
    """The module for `name` with its config built (and validated) from `fields`."""
    spec = get(name)
    return spec.module(spec.config.from_dict(fields or {}))


__all__ = ["MODELS", "ConfigError", "ModelConfig", "ModelSpec", "build", "get", "names", "register"]
