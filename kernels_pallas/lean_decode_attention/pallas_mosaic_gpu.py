"""Lean decode attention as Pallas Mosaic GPU kernels for Hopper (sm90): stream-K with a TMA ring.

The schedule is common.schedule's (tiny int32 arrays computed in XLA): the valid cache tiles of all
(sequence, kv head) segments laid end to end and cut into `num_programs` equal contiguous ranges.
Kernel 1, grid (num_programs,), two warpgroups:
  * the producer walks its program's units [prog_start, prog_end) and TMA-loads each unit's key and
    value tile (block_k tokens of one sequence and kv head, read in place from the cache as stored,
    [batch, max_len, kv_heads, head_dim]) into a ring of `stages` shared-memory slots;
  * the consumer keeps the segment's query heads (the group sharing the kv head, padded to one
    64-row wgmma tile) in shared memory, runs S = Q·Kᵀ and O += P·V with wgmma and the online
    softmax in registers (exp2, the scale folded into one multiply-add with the running max), and
    when its segment or its range ends writes the partial (o unnormalised, m, l) to slot p + s
    (unique, see common.py), starting over in the next segment.
  Both walk the units the same way: a unit past its segment's end moves to the next segment with a
  unit (`next_segment`, precomputed, so empty segments cost nothing). A sequence's last tile is read
  from a start clamped to max_len - block_k and the tokens outside [its first token, length) are
  masked, so no read leaves the cache.
Kernel 2, grid (segments,), one warpgroup: merges each segment's slots (the programs that touched it
form a contiguous range, precomputed; programs without units in it write nothing and are skipped)
by log-sum-exp and writes the output; a segment without units (length 0) gives zeros.
Cost follows the valid tokens, not batch x max_len: a short sequence in a long cache is a few units.
bf16/f16, head_dim 64 or 128, query heads per kv head up to 64. `interpret=True` runs both kernels in
Pallas's GPU interpret mode on CPU (kernels_pallas._mgpu_interpret).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from kernels_pallas import _mgpu
from kernels_pallas.lean_decode_attention.common import schedule

__all__ = ["attention", "DEFAULT_BLOCK_K"]

_LOG2E = math.log2(math.e)
ROWS = 64            # one wgmma M tile holds a segment's query heads (padded)
DEFAULT_BLOCK_K = 128  # 64 KiB of keys and values per unit at d=128: one TMA pair per slot
STAGES = 4             # at most; _stages fits the ring in shared memory


def _stages(block_k, d, itemsize):
    """Ring depth: as many k+v slots as fit in ~200 KiB next to the query tile and the partial."""
    per = 2 * block_k * d * itemsize
    fixed = ROWS * d * (itemsize + 4)
    return max(2, min(STAGES, (200 * 1024 - fixed) // per))


def _swizzled(shape, dtype):
    itemsize = jnp.dtype(dtype).itemsize
    swizzle = 128 if shape[-1] * itemsize >= 128 else 64
    return plgpu.SMEM(shape, dtype, transforms=(plgpu.TilingTransform((8, swizzle // itemsize)),
                                                plgpu.SwizzleTransform(swizzle)))


def _layout_rows(x):
    return plgpu.layout_cast(x, plgpu.Layout.WGMMA.reduce(1))


def _decode_kernel(seg_start_ref, next_seg_ref, prog_start_ref, prog_end_ref, prog_seg_ref, len_ref,
                   q_ref, k_ref, v_ref, o_ref, m_ref, l_ref, *, hkv, bk, max_len, scale, stages):
    p = lax.axis_index("p")
    start, end = prog_start_ref[p], prog_end_ref[p]
    seg0 = prog_seg_ref[p]
    d = q_ref.shape[-1]
    dtype = q_ref.dtype
    c = scale * _LOG2E

    def advance(u, s):
        """The segment of unit u, given the segment of unit u - 1 (or the first)."""
        return jnp.where(u >= seg_start_ref[s + 1], next_seg_ref[s], s)

    def body(q_smem, k_smem, v_smem, o_smem, ml_smem, q_bar, k_bar, v_bar, k_free, v_free):
        wg = lax.axis_index("wg")

        @pl.when(wg == 0)
        def _consumer():
            plgpu.set_max_registers(232, action="increase")
            cols = plgpu.broadcasted_iota(jnp.int32, (ROWS, bk), 1, layout=plgpu.Layout.WGMMA)

            def unit(u, carry):
                s, acc, m, l = carry
                s_new = jnp.where(u == start, seg0, advance(u, s))
                fresh = (u == start) | (s_new != s)
                tile = u - seg_start_ref[s_new]
                seq = lax.div(s_new, hkv)
                length = len_ref[seq]
                first = tile * bk
                lo = jnp.minimum(first, max_len - bk)
                slot = lax.rem(u - start, stages)

                @pl.when(fresh)
                def _():
                    plgpu.copy_gmem_to_smem(q_ref.at[s_new], q_smem, q_bar.at[0])
                    plgpu.barrier_wait(q_bar.at[0])
                acc = jnp.where(fresh, 0.0, acc)
                m = jnp.where(fresh, -jnp.inf, m)
                l = jnp.where(fresh, 0.0, l)

                plgpu.barrier_wait(k_bar.at[slot])

                def qk(acc_ref):
                    plgpu.wgmma(acc_ref, q_smem, plgpu.transpose_ref(k_smem.at[slot], (1, 0)))
                    return acc_ref[...]
                sc = pl.run_scoped(qk, plgpu.ACC((ROWS, bk), jnp.float32))
                plgpu.barrier_arrive(k_free.at[slot])
                pos = lo + cols
                sc = jnp.where((pos >= first) & (pos < length), sc * c, -jnp.inf)
                m_new = jnp.maximum(m, sc.max(axis=1))  # finite: a unit holds a valid token
                alpha = jnp.exp2(m - m_new)
                e = jnp.exp2(sc - lax.broadcast_in_dim(m_new, sc.shape, [0]))
                l = l * alpha + e.sum(axis=1)
                acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
                plgpu.barrier_wait(v_bar.at[slot])

                def pv(acc_ref):
                    acc_ref[...] = acc
                    plgpu.wgmma(acc_ref, e.astype(dtype), v_smem.at[slot])
                    return acc_ref[...]
                acc = pl.run_scoped(pv, plgpu.ACC((ROWS, d), jnp.float32))
                plgpu.barrier_arrive(v_free.at[slot])

                last = (u == end - 1) | (u + 1 == seg_start_ref[s_new + 1])

                @pl.when(last)
                def _store():
                    out_slot = p + s_new
                    plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the previous partial is out
                    o_smem[...] = acc
                    ml_smem.at[0][...] = m_new
                    ml_smem.at[1][...] = l
                    plgpu.commit_smem()
                    plgpu.copy_smem_to_gmem(o_smem, o_ref.at[out_slot])
                    plgpu.copy_smem_to_gmem(ml_smem.at[0], m_ref.at[out_slot])
                    plgpu.copy_smem_to_gmem(ml_smem.at[1], l_ref.at[out_slot])
                return s_new, acc, m_new, l

            carry = (seg0, plgpu.layout_cast(jnp.zeros((ROWS, d), jnp.float32), plgpu.Layout.WGMMA),
                     _layout_rows(jnp.full((ROWS,), -jnp.inf, jnp.float32)),
                     _layout_rows(jnp.zeros((ROWS,), jnp.float32)))
            lax.fori_loop(start, end, unit, carry)
            plgpu.wait_smem_to_gmem(0)

        @pl.when(wg == 1)
        def _producer():
            plgpu.set_max_registers(40, action="decrease")

            def unit(u, s):
                s = jnp.where(u == start, seg0, advance(u, s))
                slot = lax.rem(u - start, stages)

                @pl.when(u - start >= stages)
                def _():
                    plgpu.barrier_wait(k_free.at[slot])
                    plgpu.barrier_wait(v_free.at[slot])
                lo = jnp.minimum((u - seg_start_ref[s]) * bk, max_len - bk)
                rows = (lax.div(s, hkv), pl.ds(lo, bk), lax.rem(s, hkv))
                plgpu.copy_gmem_to_smem(k_ref.at[rows], k_smem.at[slot], k_bar.at[slot])
                plgpu.copy_gmem_to_smem(v_ref.at[rows], v_smem.at[slot], v_bar.at[slot])
                return s
            lax.fori_loop(start, end, unit, seg0)

            def drain(u, _):  # the releases no later load waited for (every phase is observed)
                slot = lax.rem(u - start, stages)
                plgpu.barrier_wait(k_free.at[slot])
                plgpu.barrier_wait(v_free.at[slot])
            lax.fori_loop(jnp.maximum(end - stages, start), end, drain, None)

    smem = (_swizzled((ROWS, d), dtype), _swizzled((stages, bk, d), dtype),
            _swizzled((stages, bk, d), dtype), _swizzled((ROWS, d), jnp.float32),
            plgpu.SMEM((2, ROWS), jnp.float32))
    arrivals = (plgpu.Barrier(num_barriers=1), plgpu.Barrier(num_barriers=stages),
                plgpu.Barrier(num_barriers=stages))
    consumed = (plgpu.Barrier(num_barriers=stages),) * 2
    pl.run_scoped(lambda smem, arrivals, consumed: body(*smem, *arrivals, *consumed),
                  smem, arrivals, consumed, collective_axes="wg")


def _merge_kernel(lo_ref, hi_ref, start_ref, end_ref, o_ref, m_ref, l_ref, out_ref):
    """out[s] = sum_i exp2(m_i - M) o_i / sum_i exp2(m_i - M) l_i over the slots p + s, p in
    [lo, hi) with units (a program without units writes no slot)."""
    s = lax.axis_index("s")
    lo, hi = lo_ref[s], hi_ref[s]
    d = o_ref.shape[-1]

    def body(o_smem, ml_smem, out_smem, bar):
        def step(i, carry):
            acc, big_m, big_l = carry
            slot = i + s
            plgpu.commit_smem()  # the last step's reads of the buffers come before the next copies
            plgpu.copy_gmem_to_smem(o_ref.at[slot], o_smem, bar.at[0])
            plgpu.copy_gmem_to_smem(m_ref.at[slot], ml_smem.at[0], bar.at[0])
            plgpu.copy_gmem_to_smem(l_ref.at[slot], ml_smem.at[1], bar.at[0])
            plgpu.barrier_wait(bar.at[0])
            o = plgpu.load(o_smem, (), layout=plgpu.Layout.WGMMA)
            m = plgpu.load(ml_smem.at[0], (), layout=plgpu.Layout.WGMMA.reduce(1))
            l = plgpu.load(ml_smem.at[1], (), layout=plgpu.Layout.WGMMA.reduce(1))
            m_new = jnp.maximum(big_m, m)
            a, b = jnp.exp2(big_m - m_new), jnp.exp2(m - m_new)
            new = (acc * lax.broadcast_in_dim(a, acc.shape, [0]) + o * lax.broadcast_in_dim(b, o.shape, [0]),
                   m_new, big_l * a + l * b)
            written = start_ref[i] < end_ref[i]  # else the slot holds no partial: keep the carry
            return tuple(jnp.where(written, x, y) for x, y in zip(new, carry))

        carry = (plgpu.layout_cast(jnp.zeros((ROWS, d), jnp.float32), plgpu.Layout.WGMMA),
                 _layout_rows(jnp.full((ROWS,), -jnp.inf, jnp.float32)),
                 _layout_rows(jnp.zeros((ROWS,), jnp.float32)))
        acc, _, big_l = lax.fori_loop(lo, hi, step, carry)
        seen = big_l > 0.0
        out = acc / lax.broadcast_in_dim(jnp.where(seen, big_l, 1.0), acc.shape, [0])
        out_smem[...] = out.astype(out_ref.dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(out_smem, out_ref.at[s])
        plgpu.wait_smem_to_gmem(0)

    pl.run_scoped(body, _swizzled((ROWS, d), jnp.float32), plgpu.SMEM((2, ROWS), jnp.float32),
                  _swizzled((ROWS, d), out_ref.dtype), plgpu.Barrier(num_arrivals=3, num_barriers=1))


def attention(q, k_cache, v_cache, lengths, *, sm_scale, block_k=None, num_programs,
              interpret=False):
    """See lean_decode_attention; inputs are already validated by common.check_inputs."""
    b, hq, d = q.shape
    max_len, hkv = k_cache.shape[1], k_cache.shape[2]
    g = hq // hkv
    if q.dtype not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise NotImplementedError(f"pallas_mosaic_gpu: wgmma takes bfloat16 or float16, not {q.dtype}")
    if d not in (64, 128):
        raise NotImplementedError(f"pallas_mosaic_gpu: head_dim must be 64 or 128; got {d}")
    if g > ROWS:
        raise NotImplementedError(f"pallas_mosaic_gpu: at most {ROWS} query heads per kv head; got {g}")
    bk = block_k or DEFAULT_BLOCK_K
    if bk % 64 or bk > 256:
        raise NotImplementedError(f"pallas_mosaic_gpu: block_k={bk} must be a multiple of 64 up to 256")
    _mgpu.check_device("pallas_mosaic_gpu", interpret)
    if max_len < bk:  # the clamped last-tile read needs one whole tile of cache
        pad = ((0, 0), (0, bk - max_len), (0, 0), (0, 0))
        k_cache, v_cache = jnp.pad(k_cache, pad), jnp.pad(v_cache, pad)
    n_seg, n_prog = b * hkv, num_programs
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, max_len)
    sched = schedule(lengths, hkv, max_len, bk, n_prog)
    seg_start = sched.seg_start
    has_units = seg_start[1:] > seg_start[:-1]
    # next_segment[s]: the first segment after s that has a unit (n_seg when none).
    idx = jnp.arange(n_seg, dtype=jnp.int32)
    later = jnp.where(has_units, idx, n_seg)
    next_seg = lax.cummin(jnp.concatenate([later[1:], jnp.array([n_seg], jnp.int32)]), reverse=True)
    next_seg = jnp.concatenate([next_seg, jnp.array([n_seg], jnp.int32)])  # for s == n_seg
    seg_start = jnp.concatenate([seg_start, seg_start[-1:]])  # seg_start[n_seg + 1]
    # The segment of each program's first unit (searchsorted over the unit starts).
    prog_seg = jnp.clip(jnp.searchsorted(sched.seg_start, sched.prog_start, side="right") - 1,
                        0, n_seg - 1).astype(jnp.int32)
    # Programs whose ranges touch segment s: those holding its first and last units.
    first_unit, last_unit = sched.seg_start[:-1], sched.seg_start[1:] - 1
    owner = lambda unit: (jnp.searchsorted(sched.prog_end, unit, side="right")).astype(jnp.int32)
    prog_lo = jnp.where(has_units, owner(first_unit), 0)
    prog_hi = jnp.where(has_units, owner(last_unit) + 1, 0)

    qg = q.reshape(n_seg, g, d)
    qg = jnp.pad(qg, ((0, 0), (0, ROWS - g), (0, 0)))
    n_slots = n_prog + n_seg
    stages = _stages(bk, d, q.dtype.itemsize)
    interp = _mgpu.interpret_params(interpret)
    params = plgpu.CompilerParams(approx_math=True)
    kernel = functools.partial(_decode_kernel, hkv=hkv, bk=bk, max_len=max(max_len, bk),
                               scale=float(sm_scale), stages=stages)
    slot_o, slot_m, slot_l = plgpu.kernel(
        kernel, out_type=[jax.ShapeDtypeStruct((n_slots, ROWS, d), jnp.float32),
                          jax.ShapeDtypeStruct((n_slots, ROWS), jnp.float32),
                          jax.ShapeDtypeStruct((n_slots, ROWS), jnp.float32)],
        grid=(n_prog,), grid_names=("p",), num_threads=2, thread_name="wg",
        compiler_params=params, interpret=interp,
    )(seg_start, next_seg, sched.prog_start, sched.prog_end, prog_seg, lengths, qg, k_cache, v_cache)
    out = plgpu.kernel(
        _merge_kernel, out_type=jax.ShapeDtypeStruct((n_seg, ROWS, d), q.dtype),
        grid=(n_seg,), grid_names=("s",), compiler_params=params, interpret=interp,
    )(prog_lo, prog_hi, sched.prog_start, sched.prog_end, slot_o, slot_m, slot_l)
    return out[:, :g].reshape(b, hq, d)
