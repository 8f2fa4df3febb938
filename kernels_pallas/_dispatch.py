"""How every kernel package picks an implementation: a named one, or the platform's preference list, falling
through to the next when a kernel raises NotImplementedError for the inputs (say, a head_dim it does not
tile). Each implementation is a module `PACKAGE.NAME` with an `attention(*args, **kwargs)` function, imported
on first use, so a GPU machine never imports the TPU kernels and vice versa.

Implementation names follow one scheme, shared with fintrans.ops (its dispatch.IMPLEMENTATION_NAMES
table is the documentation): `reference` (the dense oracle), `xla` (plain XLA; takes every valid
input), `pallas_gpu` (Triton lowering), `pallas_tpu` (Mosaic TPU), reserved `pallas_mosaic_gpu`
and `cudnn`. Every package's IMPLEMENTATIONS are drawn from NAMES and use PREFERENCE."""
from __future__ import annotations

import importlib
from typing import Any, Mapping, Optional, Sequence

import jax

NAMES = ("reference", "xla", "pallas_gpu", "pallas_tpu", "pallas_mosaic_gpu", "cudnn")
# Tried in order for implementation=None; 'xla' always comes last because it always works.
PREFERENCE = {"cpu": ("xla",), "gpu": ("pallas_gpu", "xla"), "tpu": ("pallas_tpu", "xla")}


def check_names(package: str, implementations: Sequence[str]) -> tuple[str, ...]:
    """`implementations`, after checking each follows the naming scheme (at import: a typo fails early)."""
    bad = [n for n in implementations if n not in NAMES]
    if bad:
        raise ValueError(f"{package}: implementation names {bad} are not in the naming scheme {NAMES}")
    return tuple(implementations)


def module(package: str, name: str):
    return importlib.import_module(f"{package}.{name}")


def dispatch(package: str, implementations: Sequence[str], preference: Mapping[str, Sequence[str]],
             implementation: Optional[str], *args: Any, **kwargs: Any) -> Any:
    """`implementation`'s attention(*args, **kwargs), or with None the first of the platform's `preference`
    that accepts the inputs ('xla' last: it handles every valid input)."""
    if implementation is not None:
        if implementation not in implementations:
            raise ValueError(f"unknown implementation {implementation!r}; "
                             f"choose from {list(implementations)} or None")
        return module(package, implementation).attention(*args, **kwargs)
    for name in preference.get(jax.default_backend(), ("xla",)):
        try:
            return module(package, name).attention(*args, **kwargs)
        except NotImplementedError:
            continue
    raise AssertionError("unreachable: the xla implementation handles every valid input")
