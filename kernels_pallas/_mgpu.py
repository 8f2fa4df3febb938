"""What every Mosaic GPU (`pallas_mosaic_gpu`) implementation shares: where it may run, and its
interpret mode.

The kernels use Hopper-only instructions (wgmma, TMA, warpgroup register reallocation), so compiled
they run on sm90 GPUs (H100, H200) only; elsewhere implementation=None falls through
(NotImplementedError) and a named call says why (RuntimeError). `interpret=True` (or an
`InterpretGPUParams`) runs them in Pallas's GPU interpret mode on any machine.
"""
from __future__ import annotations

import jax

HOPPER = "9.0"


def interpret_params(interpret):
    """The `interpret=` argument for plgpu.kernel: None (compiled) or GPU interpret params."""
    if interpret is False or interpret is None:
        return None
    from kernels_pallas import _mgpu_interpret
    if interpret is True:
        return _mgpu_interpret.interpret_params()
    _mgpu_interpret.install()
    return interpret  # the caller's InterpretGPUParams (say, with detect_races=True)


def check_device(name: str, interpret) -> None:
    """Raises unless a compiled Mosaic GPU kernel can run here: RuntimeError without a GPU
    (naming the way out), NotImplementedError on a GPU that is not Hopper (dispatch falls through)."""
    if interpret is not False and interpret is not None:
        return
    if jax.default_backend() != "gpu":
        raise RuntimeError(f"{name} compiles Mosaic GPU kernels for a Hopper GPU, but jax's backend is "
                           f"{jax.default_backend()!r}; pass interpret=True to run it on CPU, or use "
                           f"implementation='xla'")
    capability = getattr(jax.devices()[0], "compute_capability", None)
    if capability != HOPPER:
        raise NotImplementedError(f"{name}: Mosaic GPU kernels need an sm90 (Hopper) GPU; this one is "
                                  f"{jax.devices()[0].device_kind} (compute capability {capability})")
