"""GPU interpret mode for our Mosaic GPU kernels on jax 0.10.x: the operand forms its interpreter lacks.

jax 0.10.2 ships Pallas's GPU interpret mode (`InterpretGPUParams`): a kernel's warpgroups run as
threads on the CPU, shared memory, TMA copies, barriers and wgmma are simulated, and races can be
detected. Its interpreter does not yet take some forms every Hopper attention kernel uses, so a
kernel written for the hardware fails there. `interpret_params()` adds them (once, idempotently)
and returns the params to pass as `interpret=`; the kernels themselves are the same code that
compiles for an H100/H200. What is added, each the plain semantics of the op:

  1. `layout_cast` (a register-distribution hint: the values are unchanged) gets a CPU lowering.
  2. Slices with a dynamic start (`ref.at[pl.ds(i * block, block)]`) are accepted: the interpreter
     converts every index to an int before using it, so only dynamic *sizes* are unsupported.
  3. wgmma operands may be transposed views (`plgpu.transpose_ref(k_smem, (1, 0))`, K-major B) and
     the A operand may be a register array (FlashAttention's P @ V), not only a shared-memory ref.
  4. Stores into a WGMMA accumulator (`acc_ref[...] = x`, how a loop-carried accumulator re-enters
     wgmma) and Mosaic GPU's `plgpu.load` (shared memory to registers with a layout).
  5. TMA stores with `reduction_op="add"` (float32 dq accumulated by several CTAs).

Each addition is tested against numpy in tests/kernels_pallas/test_mgpu_interpret.py. Where a later
jax already supports a form, the added path is equivalent to its own. This module touches jax
internals only when interpret mode is requested; compiled kernels never import it.
"""
from __future__ import annotations

import functools
import threading

import numpy as np

_INSTALLED = False
_LOCK = threading.Lock()


def interpret_params(**kwargs):
    """InterpretGPUParams(**kwargs) with the additions above installed. Uninitialised shared memory
    is NaN (jax's default), so a kernel that reads a buffer before writing it fails its test."""
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
    install()
    return InterpretGPUParams(**kwargs)


def install() -> None:
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return
        _install_layout_cast()
        _install_dynamic_starts()
        _install_wgmma_operands()
        _install_accumulator_store_and_load()
        _install_tma_reduce_add()
        _INSTALLED = True


# -- 1. layout_cast ---------------------------------------------------------------------------
def _install_layout_cast():
    from jax._src.interpreters import mlir
    from jax._src.pallas.mosaic_gpu import core as gpu_core
    mlir.register_lowering(gpu_core.layout_cast_p, lambda ctx, x, **_: [x], platform="cpu")


# -- 2. dynamic slice starts ----------------------------------------------------------------------
def _install_dynamic_starts():
    from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks as cb
    from jax._src.state import indexing

    def is_dynamic(indexer):
        return any(isinstance(i, indexing.Slice) and i.is_dynamic_size for i in indexer.indices)
    cb._is_dynamic = is_dynamic


# -- 3. wgmma operands ------------------------------------------------------------------------------
def _split_transforms(transforms):
    """Drops the no-op (unswizzle/untile) transforms; returns (leading indexers, the rest)."""
    from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks as cb
    from jax._src.state import indexing
    kept = [t for t in transforms if not isinstance(t, cb.NOOP_TRANSFORMS)]
    n = 0
    while n < len(kept) and isinstance(kept[n], indexing.NDIndexer):
        n += 1
    return tuple(kept[:n]), tuple(kept[n:])


def _apply_view(x, transforms):
    """Applies the transforms after the first non-indexer to an array already read."""
    from jax._src.pallas.mosaic.interpret import utils as interpret_utils
    from jax._src.state import indexing, types as state_types
    for t in transforms:
        if isinstance(t, state_types.TransposeTransform):
            x = np.transpose(x, t.permutation)
        elif isinstance(t, indexing.NDIndexer):
            x = x[interpret_utils.to_range((t,))]
        else:
            raise ValueError(f"GPU interpret mode: unsupported transform {t} on a wgmma operand")
    return x


def _read(shared_memory, key_array, transforms, thread, logging_info):
    import jax
    from jax._src.pallas.mosaic.interpret import utils as interpret_utils
    from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks as cb
    lead, rest = _split_transforms(jax.tree.map(int, transforms))
    value, _, _ = shared_memory.get_buffer_content(
        cb.HostAllocationKey.from_array(key_array), interpret_utils.to_range(lead), thread,
        logging_info=logging_info)
    assert value is not None, "wgmma operand out of bounds"
    return _apply_view(np.asarray(value), rest)


def _wgmma_callback(*, token, device_id, grid_point_coords, thread_id, acc_key, acc_transforms,
                    acc_dtype, a, a_transforms, a_is_ref, b_key, b_transforms, source_info=None):
    import jax
    from jax._src.pallas.mosaic.interpret import utils as interpret_utils
    from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks as cb
    device_id, thread_id = int(device_id), int(thread_id)
    memory = cb._get_shared_memory()
    thread = memory.get_global_thread_id(device_id, thread_id)
    info = interpret_utils.GPULoggingInfo(device_id=device_id,
                                          grid_point_coords=tuple(int(x) for x in grid_point_coords),
                                          thread_id=thread_id, source_info=source_info)
    a_val = _read(memory, a, a_transforms, thread, info) if a_is_ref else _apply_view(np.asarray(a), a_transforms)
    b_val = _read(memory, b_key, b_transforms, thread, info)
    lead, rest = _split_transforms(jax.tree.map(int, acc_transforms))
    if rest:
        raise ValueError("GPU interpret mode: a wgmma accumulator must not be transposed")
    acc_key = cb.HostAllocationKey.from_array(acc_key)
    acc_range = interpret_utils.to_range(lead)
    acc, _, _ = memory.get_buffer_content(acc_key, acc_range, thread, logging_info=info)
    # The tensor core multiplies low-precision inputs exactly and accumulates in float32.
    res = np.asarray(acc) + np.matmul(a_val.astype(np.float32), b_val.astype(np.float32)).astype(acc_dtype)
    memory.store_buffer_content(acc_key, acc_range, res, thread, logging_info=info)
    return token


def _install_wgmma_operands():
    import jax
    from jax._src import callback
    from jax._src.pallas.mosaic_gpu import primitives as gpu_primitives
    from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks as cb
    from jax._src.pallas.mosaic_gpu.interpret import jaxpr_interpret as ji
    from jax._src.state import types as state_types

    def interpret_wgmma(self, eqn, token, get_invals):
        assert eqn.primitive is gpu_primitives.wgmma_ref_p
        acc, a, b, *leaves = get_invals()
        empty = jax.tree.structure([])
        acc_t, a_t, b_t = jax.tree.unflatten(
            jax.tree_util.treedef_tuple((eqn.params["acc_transforms_tree"] or empty,
                                         eqn.params["a_transforms_tree"] or empty,
                                         eqn.params["b_transforms_tree"] or empty)), leaves)
        a_is_ref = isinstance(eqn.invars[1].aval, state_types.AbstractRef)
        return callback.io_callback(
            functools.partial(_wgmma_callback, acc_dtype=eqn.invars[0].aval.dtype,
                              a_is_ref=a_is_ref, source_info=eqn.source_info),
            cb.TOKEN_SHAPE_DTYPE, token=token, device_id=self.device_info.device_id,
            grid_point_coords=self.grid_point_coords, thread_id=self.thread_id, acc_key=acc,
            acc_transforms=acc_t, a=a, a_transforms=a_t, b_key=b, b_transforms=b_t,
            ordered=True), []

    ji.JaxprInterpreter._interpret_wgmma_ref_p = interpret_wgmma


# -- 4. accumulator stores and plgpu.load --------------------------------------------------------
def _install_accumulator_store_and_load():
    """Rewrites the two primitives, before each (sub-)jaxpr is interpreted, into the ref read and
    write the interpreter already threads its ordering token through: `plgpu.load` is a read
    whose layout is only a hint, an accumulator store is a write of the whole accumulator."""
    import jax
    from jax._src.pallas.mosaic_gpu import primitives as gpu_primitives
    from jax._src.pallas.mosaic_gpu.interpret import jaxpr_interpret as ji
    from jax._src.state import primitives as state_primitives

    def rewrite(eqn):
        if eqn.primitive is gpu_primitives.load_p:
            return eqn.replace(primitive=state_primitives.get_p, params=dict(tree=eqn.params["tree"]))
        if eqn.primitive is gpu_primitives.wgmma_accumulator_store_p:
            return eqn.replace(primitive=state_primitives.swap_p,
                               params=dict(tree=jax.tree.structure(())))
        return eqn

    original = ji.JaxprInterpreter.interpret

    def interpret(self, jaxpr, token, *args):
        if any(e.primitive in (gpu_primitives.load_p, gpu_primitives.wgmma_accumulator_store_p)
               for e in jaxpr.eqns):
            jaxpr = jaxpr.replace(eqns=[rewrite(e) for e in jaxpr.eqns])
        return original(self, jaxpr, token, *args)

    ji.JaxprInterpreter.interpret = interpret


# -- 5. TMA reduce-add -------------------------------------------------------------------------
def _install_tma_reduce_add():
    import jax
    from jax._src.pallas.mosaic.interpret import utils as interpret_utils
    from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks as cb

    original = cb.copy_smem_to_gmem

    def copy_smem_to_gmem(*, reduction_op, **kw):
        if reduction_op is None:
            return original(reduction_op=None, **kw)
        if reduction_op != "add":
            raise NotImplementedError(f"GPU interpret mode: TMA reduction {reduction_op!r}")
        if kw.get("predicate") is not None:
            raise NotImplementedError("predicate not supported")
        device_id, thread_id = int(kw["device_id"]), int(kw["thread_id"])
        memory = cb._get_shared_memory()
        thread = memory.get_global_thread_id(device_id, thread_id)
        info = interpret_utils.GPULoggingInfo(
            device_id=device_id, grid_point_coords=jax.tree.map(int, kw["grid_point_coords"]),
            thread_id=thread_id, source_info=kw.get("source_info"))
        src_key = cb.HostAllocationKey.from_array(kw["src_allocation_key_as_array"])
        dst_key = cb.HostAllocationKey.from_array(kw["dst_allocation_key_as_array"])
        src_range = interpret_utils.to_range(jax.tree.map(int, _split_transforms(kw["src_transforms"])[0]))
        dst_range = interpret_utils.to_range(jax.tree.map(int, _split_transforms(kw["dst_transforms"])[0]))
        src, _, _ = memory.get_buffer_content(src_key, src_range, thread, logging_info=info)
        dst, _, _ = memory.get_buffer_content(dst_key, dst_range, thread, logging_info=info)
        memory.store_buffer_content(dst_key, dst_range, np.asarray(dst) + np.asarray(src), thread,
                                    logging_info=info)
        return kw["token"]

    cb.copy_smem_to_gmem = copy_smem_to_gmem
