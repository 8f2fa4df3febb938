"""How every kernel package picks an implementation: a named one, or the platform's preference list, falling
through to the next when a kernel raises NotImplementedError for the inputs (say, a head_dim it does not
tile). Each implementation is a module `PACKAGE.NAME` with an `attention(*args, **kwargs)` function, imported
on first use, so a GPU machine never imports the TPU kernels and vice versa."""
from __future__ import annotations

import importlib
from typing import Any, Mapping, Optional, Sequence

import jax


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
