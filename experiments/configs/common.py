"""Helpers shared by experiment configs: big_vision-style `key=value,...` arguments."""
from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """'runlocal,model=nlinear' -> {runlocal: True, model: 'nlinear', ...defaults}.

    A bare key means True; values are converted to the type of their default. Unknown keys raise.
    """
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; valid arguments: {sorted(defaults)}")
        if not _:
            out[key] = True
            continue
        kind = type(defaults[key])
        if kind is bool:
            out[key] = value.lower() in ("1", "true", "yes")
        else:
            out[key] = kind(value)
    return ml_collections.ConfigDict(out)
