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


def kernel(body, *, out_type, grid, grid_names, num_threads, thread_name="wg", compiler_params=None,
           interpret=None, input_output_aliases=None):
    """plgpu.kernel, plus `input_output_aliases` ({input index: output index}): an output that
    starts as the aliased input's contents (a float32 buffer that CTAs add into with TMA
    reduce-add must start at zero). jax exposes aliasing for Mosaic GPU mesh kernels only through
    pallas.mpmd._mpmd_map (jax 0.10 and later); `body` allocates its own scratch."""
    from jax.experimental.pallas import mosaic_gpu as plgpu
    if not input_output_aliases:
        return plgpu.kernel(body, out_type=out_type, grid=grid, grid_names=grid_names,
                            num_threads=num_threads, thread_name=thread_name,
                            compiler_params=compiler_params, interpret=interpret if interpret is not None else False)
    from jax._src.pallas import mpmd
    mpmd_map = getattr(mpmd, "_mpmd_map", None)
    if mpmd_map is None:
        raise NotImplementedError("this jax has no aliased Mosaic GPU kernels (pallas.mpmd._mpmd_map)")
    mesh = plgpu.Mesh(grid=grid, grid_names=grid_names, num_threads=num_threads, thread_name=thread_name)
    return mpmd_map([(mesh, body)], out_types=out_type, input_output_aliases=input_output_aliases,
                    compiler_params=compiler_params, interpret=interpret if interpret is not None else False)
