"""Lean decode attention as a Pallas Mosaic TPU kernel: the stream-K schedule of common.py.

Grid (P, T): P = num_programs ("parallel": megacore chips split the programs over their cores)
and T = ceil(U / P) steps ("arbitrary"), U the work units the lengths give (common.schedule's
`steps`). T is a traced grid bound (Mosaic takes dynamic grid dimensions as scalar operands), so
the grid follows the valid tokens: one short sequence in a 64k cache runs ceil(units / P) steps
per program, not the ceil(U_max / P) that U_max = batch * kv_heads * ceil(max_len / block_k),
the most units any lengths can give, would need. Step i of program p takes unit prog_start[p] + i
while that is below prog_end[p]; the busiest program has exactly T units and the others stop
short: their later steps are inactive, their index_maps repeat the program's last tile and slot
(no DMA, no write-back) and pl.when skips their compute.
Scalar prefetch (SMEM), per (p, i) flattened over a static width of ceil(U_max / P) steps (the
tables' shapes cannot follow the lengths; only their first T columns are read): seg (the unit's
segment s = b * kv_heads + h) and info = tile << 4 | flags (active, fresh = first unit of the
segment in this program, last = last one, empty = program without units), plus lengths [b].
8 bytes per step of SMEM.
Layout: Mosaic rejects a block (None, block_k, None, head_dim) on the cache as stored,
[b, max_len, kv_heads, head_dim] (a squeezed second-minor axis). When head_dim is a multiple of
128 (or kv_heads == 1) the caches are read in place through the free view [b, max_len,
kv_heads * head_dim] with a block (None, block_k, head_dim) at lane-block h: one (sequence,
tile, kv head) per step as a strided DMA, no copy. Other head sizes transpose the caches to
[b, kv_heads, max_len, head_dim] first, a full copy of both caches per call. q, scaled by
sm_scale in XLA (it is tiny; the kernel's scores need no multiply), is viewed as [S, group, d]
with the group padded to 8 sublanes (a free reshape and a small pad). Online softmax in VMEM
scratch (m, l lane-broadcast [g8, 128], acc [g8, d]), reset on `fresh`; on `last` the running
partial is stored into the output block of slot p + s. Those blocks are indexed by the
prefetched slot, so consecutive steps of one segment share a block and Pallas writes it back
once, when the index moves on (or at the end of the grid). Programs without units (fewer units
than programs) point at a trash slot of their own, P + S + p, so their untouched buffers
clobber no real slot and no block is revisited. common.merge then combines slots; the slot ->
segment map is computed in XLA from the schedule.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.lean_decode_attention.common import locate, merge, schedule

LANES, SUBLANES = 128, 8
DEFAULT_BLOCK_K = 512
NT = (((1,), (1,)), ((), ()))  # a @ b.T
NN = (((1,), (0,)), ((), ()))  # a @ b
ACTIVE, FRESH, LAST, EMPTY, FLAG_BITS = 1, 2, 4, 8, 4

# Names that moved between jax releases.
_CompilerParams = getattr(pltpu, "CompilerParams", None) or getattr(pltpu, "TPUCompilerParams")
_InterpretParams = getattr(pltpu, "InterpretParams", None)


def _dot(a, b, dims):
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32, precision=precision)


def _kernel(seg_ref, info_ref, len_ref, q_ref, k_ref, v_ref, o_ref, m_ref, l_ref,
            m_scr, l_scr, acc_scr, *, width, kv_heads, block_k):
    idx = pl.program_id(0) * width + pl.program_id(1)
    info = info_ref[idx]
    active, fresh, last = (info & ACTIVE) != 0, (info & FRESH) != 0, (info & LAST) != 0
    tile = info >> FLAG_BITS
    length = len_ref[seg_ref[idx] // kv_heads]

    @pl.when(fresh)
    def _reset():
        m_scr[...] = jnp.full(m_scr.shape, -jnp.inf, jnp.float32)
        l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
        acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

    def body(edge):
        v = v_ref[...]
        s = _dot(q_ref[...], k_ref[...], NT)  # [g8, bk]; q is pre-scaled
        if edge:  # the segment's last tile: tokens past the length (or past max_len) are out
            pos = tile * block_k + lax.broadcasted_iota(jnp.int32, s.shape, 1)
            s = jnp.where(pos < length, s, -jnp.inf)
            rows = tile * block_k + lax.broadcasted_iota(jnp.int32, v.shape, 0)
            v = jnp.where(rows < length, v, jnp.zeros_like(v))  # garbage past the array
        m_prev = m_scr[...]
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))  # [g8, 128]; finite:
        p = jnp.exp(s - m_next[:, :1])                                    # a tile has a token
        alpha = jnp.exp(m_prev - m_next)
        l_scr[...] = alpha * l_scr[...] + jnp.sum(p, axis=1, keepdims=True)
        m_scr[...] = m_next
        acc_scr[...] = acc_scr[...] * alpha[:, :1] + _dot(p.astype(v.dtype), v, NN)

    edge = (tile + 1) * block_k > length
    pl.when(jnp.logical_and(active, edge))(lambda: body(True))
    pl.when(jnp.logical_and(active, jnp.logical_not(edge)))(lambda: body(False))

    @pl.when(last)
    def _store():
        o_ref[...] = acc_scr[...]
        m_ref[...] = m_scr[...]
        l_ref[...] = l_scr[...]


def _step_tables(sched, n_prog, steps):
    """Per (program, step), flattened: segment, tile << 4 | flags (see the module doc) and the
    slot written (P + S where none)."""
    i = jnp.arange(steps, dtype=jnp.int32)[None, :]
    start, end = sched.prog_start[:, None], sched.prog_end[:, None]
    unit = start + i
    active = unit < end
    empty = jnp.broadcast_to(end == start, unit.shape)
    clamped = jnp.maximum(jnp.minimum(unit, end - 1), 0)  # inactive: the program's last unit
    seg, tile = locate(sched, clamped)
    fresh = active & ((i == 0) | (clamped == sched.seg_start[seg]))
    last = active & ((unit + 1 == end) | (unit + 1 == sched.seg_start[seg + 1]))
    flags = (active * ACTIVE) | (fresh * FRESH) | (last * LAST) | (empty * EMPTY)
    info = (tile << FLAG_BITS) | flags.astype(jnp.int32)
    n_slots = n_prog + sched.seg_start.shape[0] - 1
    slot = jnp.where(active, jnp.arange(n_prog, dtype=jnp.int32)[:, None] + seg, n_slots)
    return seg.reshape(-1), info.reshape(-1), slot.reshape(-1)


def attention(q, k_cache, v_cache, lengths, *, sm_scale, block_k=None, num_programs,
              interpret=False):
    """See lean_decode_attention; inputs are already validated by common.check_inputs."""
    b, hq, d = q.shape
    max_len, hkv = k_cache.shape[1], k_cache.shape[2]
    if q.dtype == jnp.float16 and not interpret:
        # Mosaic rejects float16 tiles; upcasting would copy the whole cache: leave it to xla.
        raise NotImplementedError("pallas_tpu: float16 is not supported by Mosaic")
    if max_len == 0 or b == 0:
        raise NotImplementedError("pallas_tpu: empty cache")
    bk = min(block_k or DEFAULT_BLOCK_K, max_len)
    # Scores put the tile on lanes: hardware wants whole 128-lane tiles; interpret mode only
    # whole sublanes (so tests can use many small tiles). A tile equal to max_len is legal too.
    multiple = SUBLANES if interpret else LANES
    if bk % multiple and bk != max_len:
        raise NotImplementedError(f"pallas_tpu: block_k={bk} must be a multiple of {multiple}")
    if not interpret and bk % LANES:
        raise NotImplementedError(f"pallas_tpu: block_k={bk} must be a multiple of {LANES}")
    g, n_seg, n_prog = hq // hkv, b * hkv, num_programs
    g8 = -(-g // SUBLANES) * SUBLANES
    n_slots = n_prog + n_seg
    width = -(-(n_seg * (-(-max_len // bk))) // n_prog)  # ceil(U_max / P): the tables' width
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, max_len)
    sched = schedule(lengths, hkv, max_len, bk, n_prog)
    seg_t, info_t, slot_t = _step_tables(sched, n_prog, width)
    slot_seg = jnp.full((n_slots,), -1, jnp.int32).at[slot_t].set(seg_t, mode="drop")
    # The grid's step count follows the lengths; at least 1, so that with no units at all
    # every program still runs its (inactive) step.
    steps = jnp.maximum(sched.steps, 1)

    qg = (q.astype(jnp.float32) * sm_scale).astype(q.dtype).reshape(n_seg, g, d)
    if g8 != g:
        qg = jnp.pad(qg, ((0, 0), (0, g8 - g), (0, 0)))

    def q_map(p, i, seg_ref, info_ref, len_ref):
        return seg_ref[p * width + i], 0, 0

    # Mosaic rejects a block squeezing the kv-head axis of [b, max_len, hkv, d] (its last two
    # block dims must be (8k, 128k) or whole). The free view [b, max_len, hkv * d] with a block
    # (None, block_k, d) at lane-block h is legal when d is a multiple of 128 (or hkv == 1);
    # otherwise the caches are transposed to [b, hkv, max_len, d]: a full copy per call.
    flat = d % LANES == 0 or hkv == 1
    if flat:
        kv_args = (k_cache.reshape(b, max_len, hkv * d), v_cache.reshape(b, max_len, hkv * d))

        def kv_map(p, i, seg_ref, info_ref, len_ref):
            s = seg_ref[p * width + i]
            return s // hkv, info_ref[p * width + i] >> FLAG_BITS, s % hkv

        kv_spec = pl.BlockSpec((None, bk, d), kv_map)
    else:
        kv_args = (jnp.swapaxes(k_cache, 1, 2), jnp.swapaxes(v_cache, 1, 2))

        def kv_map(p, i, seg_ref, info_ref, len_ref):
            s = seg_ref[p * width + i]
            return s // hkv, s % hkv, info_ref[p * width + i] >> FLAG_BITS, 0

        kv_spec = pl.BlockSpec((None, None, bk, d), kv_map)

    def slot_map(p, i, seg_ref, info_ref, len_ref):
        idx = p * width + i
        empty = (info_ref[idx] & EMPTY) != 0
        return jnp.where(empty, n_slots + p, p + seg_ref[idx]), 0, 0

    out_shape = [jax.ShapeDtypeStruct((n_slots + n_prog, g8, d), jnp.float32),
                 jax.ShapeDtypeStruct((n_slots + n_prog, g8, LANES), jnp.float32),
                 jax.ShapeDtypeStruct((n_slots + n_prog, g8, LANES), jnp.float32)]
    out_specs = [pl.BlockSpec((None, g8, d), slot_map),
                 pl.BlockSpec((None, g8, LANES), slot_map),
                 pl.BlockSpec((None, g8, LANES), slot_map)]
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=3, grid=(n_prog, steps),
        in_specs=[pl.BlockSpec((None, g8, d), q_map), kv_spec, kv_spec],
        out_specs=out_specs,
        scratch_shapes=[pltpu.VMEM((g8, LANES), jnp.float32), pltpu.VMEM((g8, LANES), jnp.float32),
                        pltpu.VMEM((g8, d), jnp.float32)])
    size = k_cache.dtype.itemsize
    cost = pl.CostEstimate(flops=int(4 * b * hq * max_len * d), transcendentals=int(b * hq * max_len),
                           bytes_accessed=int(2 * b * max_len * hkv * d * size))
    run_interpret = False
    if interpret:
        run_interpret = _InterpretParams() if _InterpretParams is not None else True
    kernel = functools.partial(_kernel, width=width, kv_heads=hkv, block_k=bk)
    slot_o, slot_m, slot_l = pl.pallas_call(
        kernel, grid_spec=grid_spec, out_shape=out_shape, interpret=run_interpret,
        cost_estimate=cost,
        compiler_params=_CompilerParams(dimension_semantics=("parallel", "arbitrary")),
    )(seg_t, info_t, lengths, qg, *kv_args)
    out = merge(slot_o[:n_slots, :g], slot_m[:n_slots, :g, 0], slot_l[:n_slots, :g, 0],
                slot_seg, n_seg)
    return out.reshape(b, hq, d).astype(q.dtype)
