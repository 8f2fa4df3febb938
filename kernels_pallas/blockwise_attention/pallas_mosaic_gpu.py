"""Blockwise attention as Pallas Mosaic GPU kernels for Hopper (sm90): forward and backward.

Forward (FlashAttention-3's schedule). One CTA of three warpgroups owns two 64-row query tiles:
  * a producer warpgroup streams the key/value tiles of the CTA's kv range through a ring of
    `stages` shared-memory slots with TMA (one barrier per slot and tensor; the consumers release a
    slot through a "consumed" barrier each);
  * two consumer warpgroups each multiply their query tile by every key tile with wgmma
    (S = Q·Kᵀ, K read K-major through a transposed view, no copy), run the online softmax in
    registers and multiply P (still in registers) by V with wgmma;
  * a two-party "schedule" barrier makes the consumers take turns on the tensor cores (ping-pong):
    while one issues its matmuls the other runs its softmax, so exp2 and the MMAs overlap.
  Query tiles are TMA-loaded into 128-byte-swizzled shared memory and scaled once by
  sm_scale·log2(e) there, so the softmax is a plain exp2 of the scores (no per-score multiply).
  Causal CTAs loop over three ranges of key tiles: fully visible tiles without any mask, the
  diagonal tiles with the element mask, then (for the consumer whose rows end earlier) the tiles
  it only releases to the producer. (Launch order: see the backward.)
  Segment ids bound the kv range of each CTA (common.segment_tile_ranges: tiles that cannot hold a
  visible pair are never loaded) and mask the rest element by element, every tile then taking the
  masked path. GQA: when a kv head serves an even number of query heads, the two consumers take two
  query heads of the same rows and share every key/value tile (each tile is read once for both);
  otherwise they take two row tiles of one head.
Backward (5 matmuls per tile; FlashAttention-2/3's dk/dv-major loop). One CTA of three warpgroups
  owns two 64-row key tiles of one kv head: the producer streams (query tile, dO tile, logsumexp,
  delta) for every query head of the group and every query tile in range; each consumer keeps its
  key and value tiles resident and accumulates dK and dV in registers:
    Sᵀ = K·Qᵀ, Pᵀ = exp2(c·Sᵀ - lse), dV += Pᵀ·dO, dPᵀ = V·dOᵀ, dSᵀ = Pᵀ∘(dPᵀ - delta),
    dK += dSᵀ·Q, and dQ += dS·K (c = sm_scale·log2(e) in one multiply-add per score, since the
    forward's logsumexp is in base 2; dK and dQ take sm_scale once), dQ written through shared
    memory (dS stored once, read transposed by wgmma) with a TMA reduce-add into a
  float32 dq buffer (no atomics in registers, no second kernel re-reading K and V). delta =
  rowsum(dO∘O) is one XLA reduction. Causal CTAs start at the first query tile that sees them.
  Both kernels put heads on the fastest grid axis and launch the heaviest tiles of every head
  first (causal: the forward's last query tiles, the backward's first key tiles), so the last
  wave holds the short CTAs of all heads rather than the long ones of a few.
Conventions as every implementation (common.py): end-aligned causal, segment ids, zero output and
zero gradients for a query that sees no key, float32 statistics. bf16 and f16 only (wgmma),
head_dim 64 or 128; lengths are padded to the tiles (padded keys are masked by
position). Anything else raises NotImplementedError so dispatch falls through.
`interpret=True` runs the kernels in Pallas's GPU interpret mode on CPU (kernels_pallas._mgpu_interpret).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from kernels_pallas import _mgpu
from kernels_pallas.blockwise_attention.common import (BlockSizes, pad_axis, round_up,
                                                       segment_tile_ranges)

__all__ = ["attention", "tile_visits"]

_LOG2E = math.log2(math.e)
BLOCK_Q = 64          # rows per consumer warpgroup: one wgmma M tile
NUM_CONSUMERS = 2


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything static about one call (hashable: the custom_vjp's nondiff argument)."""
    q_len: int
    kv_len: int
    head_dim: int
    q_heads: int
    kv_heads: int
    causal: bool
    segments: bool
    scale: float
    block_kv: int
    stages: int
    block_kv_bwd: int       # kv rows per consumer in the backward
    block_q_bwd: int        # q rows per streamed tile in the backward
    stages_bwd: int
    interpret: object       # False, or the InterpretGPUParams
    count: bool = False     # add per-warpgroup tile-visit counts (tests)

    @property
    def group(self):
        return self.q_heads // self.kv_heads

    @property
    def heads_mode(self):
        """The two consumers take two query heads of one kv head (sharing its tiles)."""
        return self.group % 2 == 0

    @property
    def cta_rows(self):
        return BLOCK_Q if self.heads_mode else NUM_CONSUMERS * BLOCK_Q

    @property
    def lq_pad(self):
        return round_up(self.q_len, max(self.cta_rows, self.block_q_bwd))

    @property
    def lk_pad(self):
        return round_up(self.kv_len, math.lcm(self.block_kv, NUM_CONSUMERS * self.block_kv_bwd))

    @property
    def offset(self):  # end-aligned causal: query i sees key j iff j <= i + offset
        return self.kv_len - self.q_len


def _smem_bytes(rows_q, bk, d, stages, itemsize):
    return (NUM_CONSUMERS * rows_q + 2 * stages * bk) * d * itemsize


def _plan(q, k, causal, segments, sm_scale, block_sizes, interpret, count=False) -> _Plan:
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    if q.dtype not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise NotImplementedError(f"pallas_mosaic_gpu: wgmma takes bfloat16 or float16, not {q.dtype}")
    if d not in (64, 128):
        # 256 would need a smaller backward than fits next to dk, dv and the dq tile in 227 KiB.
        raise NotImplementedError(f"pallas_mosaic_gpu: head_dim must be 64 or 128; got {d}")
    user = block_sizes or BlockSizes()
    if user.block_q not in (None, BLOCK_Q) or user.block_q_bwd not in (None, BLOCK_Q):
        raise NotImplementedError(f"pallas_mosaic_gpu: query tiles are {BLOCK_Q} rows (one wgmma "
                                  f"tile per consumer warpgroup)")
    for name in ("block_kv", "block_kv_bwd"):
        v = getattr(user, name)
        if v is not None and (v % 64 or v > 256):
            raise NotImplementedError(f"pallas_mosaic_gpu: BlockSizes.{name}={v} must be a multiple "
                                      f"of 64 up to 256")
    itemsize = q.dtype.itemsize
    # Forward: 128-key tiles (the wgmma N of Q·Kᵀ, FlashAttention-3's choice at these head_dims);
    # as many stages as fit in ~200 KiB of the 227 KiB of shared memory next to the query tiles.
    bk = user.block_kv or 128
    bk = min(bk, round_up(lk, 64))
    stages = 2
    while stages < 4 and _smem_bytes(BLOCK_Q, bk, d, stages + 1, itemsize) <= 200 * 1024:
        stages += 1
    if _smem_bytes(BLOCK_Q, bk, d, stages, itemsize) > 220 * 1024:
        raise NotImplementedError(f"pallas_mosaic_gpu: tiles of {bk} keys at head_dim {d} do not fit "
                                  f"in shared memory")
    bkb = user.block_kv_bwd or 64
    bkb = min(bkb, round_up(-(-lk // NUM_CONSUMERS), 64))
    return _Plan(lq, lk, d, hq, hkv, bool(causal), bool(segments), float(sm_scale), bk, stages,
                 bkb, BLOCK_Q, 2, interpret, count)


def _params():
    """exp2 and log2 as ex2.approx/lg2.approx, as FlashAttention-3 (the same for every plan)."""
    return plgpu.CompilerParams(approx_math=True)


def _interpret(p: _Plan):
    return _mgpu.interpret_params(p.interpret)


# ----------------------------------------------------------------------------- shared pieces

def _swizzled(shape, dtype):
    """Shared memory in the layout wgmma and TMA want: 8-row tiles of 128 bytes (64 bf16/f16 or
    32 float32 elements), 128-byte swizzle (64 for rows of only 64 bytes)."""
    swizzle = 128 if shape[-1] * jnp.dtype(dtype).itemsize >= 128 else 64
    tile = swizzle // jnp.dtype(dtype).itemsize
    return plgpu.SMEM(shape, dtype, transforms=(plgpu.TilingTransform((8, tile)),
                                                plgpu.SwizzleTransform(swizzle)))


def _rendezvous(barrier):
    """Both consumers arrive, then wait: the ping-pong turn-taking step."""
    plgpu.barrier_arrive(barrier)
    plgpu.barrier_wait(barrier)


def _mma(a, b_ref, shape, *, transpose_b=False, init=None):
    """a @ b, float32, through a wgmma accumulator (starting at `init` if given); `a` is a
    shared-memory ref or a register array, `b` a shared-memory ref (read transposed if asked)."""
    b = plgpu.transpose_ref(b_ref, (1, 0)) if transpose_b else b_ref

    def run(acc_ref):
        if init is not None:
            acc_ref[...] = init
        plgpu.wgmma(acc_ref, a, b)
        return acc_ref[...]
    return pl.run_scoped(run, plgpu.ACC(shape, jnp.float32))


def _rows_layout(x):
    return plgpu.layout_cast(x, plgpu.Layout.WGMMA.reduce(1))


def _drain(free_a, free_b, n_steps, stages):
    """The producer takes the consumers' releases of the last `stages` steps, which no later load
    waited for, so every phase of its barriers is observed (the interpreter checks this)."""
    def wait(t, _):
        slot = lax.rem(t, stages)
        plgpu.barrier_wait(free_a.at[slot])
        plgpu.barrier_wait(free_b.at[slot])
    lax.fori_loop(jnp.maximum(n_steps - stages, 0), n_steps, wait, None)


def _kv_bounds(p: _Plan, rows_lo, rows_hi, nk):
    """Key tiles [0, hi) the rows [rows_lo, rows_hi) can see and the first tile `full` that is not
    fully visible to all of them (causal, kv padding); traced or static ints."""
    bk = p.block_kv
    hi, full = nk, p.kv_len // bk
    if p.causal:
        hi = jnp.clip(lax.div(rows_hi - 1 + p.offset + bk, bk), 0, nk)
        full = jnp.clip(lax.div(rows_lo + p.offset + 1, bk), 0, full)
        full = jnp.minimum(full, hi)
    return hi, full


# ----------------------------------------------------------------------------- forward

def _forward_kernel(p: _Plan, q_ref, k_ref, v_ref, *refs):
    refs = list(refs)
    if p.segments:
        qs_ref, ks_ref, lo_ref, hi_ref = refs[:4]
        refs = refs[4:]
    out_ref, lse_ref = refs[:2]
    visits_ref = refs[2] if p.count else None
    bq, bk, d, st = BLOCK_Q, p.block_kv, p.head_dim, p.stages
    nk = p.lk_pad // bk
    n_qt = p.lq_pad // p.cta_rows
    dtype = q_ref.dtype

    hu, qt_raw, batch = lax.axis_index("h"), lax.axis_index("q"), lax.axis_index("b")
    qt = n_qt - 1 - qt_raw if p.causal else qt_raw  # heavy causal tiles first
    cta_row0 = qt * p.cta_rows
    kv_hi_cta, _ = _kv_bounds(p, cta_row0, cta_row0 + p.cta_rows, nk)
    kv_lo_cta = 0
    if p.segments:
        kv_lo_cta = lo_ref[batch, qt]
        kv_hi_cta = jnp.minimum(kv_hi_cta, hi_ref[batch, qt])
        kv_lo_cta = jnp.minimum(kv_lo_cta, kv_hi_cta)
    n_steps = kv_hi_cta - kv_lo_cta

    def head_and_rows(w):
        if p.heads_mode:
            return hu * 2 + w, cta_row0
        return hu, cta_row0 + w * bq

    def body(q_smem, k_smem, v_smem, qseg_smem, kseg_smem, lse_smem, q_bar, k_bar, v_bar, seg_bar,
             k_free, v_free, turn):
        wg = lax.axis_index("wg")

        @pl.when(wg < NUM_CONSUMERS)
        def _consumer():
            plgpu.set_max_registers(232, action="increase")
            head, row0 = head_and_rows(wg)
            q_tile = q_smem.at[wg]
            plgpu.copy_gmem_to_smem(q_ref.at[batch, pl.ds(row0, bq), head], q_tile, q_bar.at[wg])
            if p.segments:
                plgpu.copy_gmem_to_smem(qs_ref.at[batch, pl.ds(row0, bq)], qseg_smem.at[wg],
                                        seg_bar.at[wg])
            plgpu.barrier_wait(q_bar.at[wg])
            # Scale once: exp2 of the scores is then the softmax numerator.
            q_tile[...] = (q_tile[...].astype(jnp.float32) * (p.scale * _LOG2E)).astype(dtype)
            plgpu.commit_smem()
            q_seg = None
            if p.segments:
                plgpu.barrier_wait(seg_bar.at[wg])
                q_seg = plgpu.load(qseg_smem.at[wg], (), layout=plgpu.Layout.WGMMA.reduce(1))

            c_hi, c_full = _kv_bounds(p, row0, row0 + bq, nk)
            c_hi = jnp.clip(c_hi, kv_lo_cta, kv_hi_cta)
            c_full = kv_lo_cta if p.segments else jnp.clip(c_full, kv_lo_cta, c_hi)

            @pl.when(c_hi > kv_lo_cta)
            def _():
                plgpu.barrier_wait(k_bar.at[0])
            pl.when(wg == 1)(lambda: _rendezvous(turn))

            def step(j, carry, masked):
                acc, m, l, count = carry
                slot = lax.rem(j - kv_lo_cta, st)

                def qk(acc_ref):
                    plgpu.wgmma(acc_ref, q_tile, plgpu.transpose_ref(k_smem.at[slot], (1, 0)))
                    _rendezvous(turn)
                    return acc_ref[...]
                s = pl.run_scoped(qk, plgpu.ACC((bq, bk), jnp.float32))
                if masked:
                    rows = row0 + plgpu.broadcasted_iota(jnp.int32, (bq, bk), 0, layout=plgpu.Layout.WGMMA)
                    cols = j * bk + plgpu.broadcasted_iota(jnp.int32, (bq, bk), 1, layout=plgpu.Layout.WGMMA)
                    keep = cols < p.kv_len
                    if p.causal:
                        keep &= cols <= rows + p.offset
                    if p.segments:
                        plgpu.barrier_wait(seg_bar.at[NUM_CONSUMERS + slot])
                        k_seg = plgpu.load(kseg_smem.at[slot], (), layout=plgpu.Layout.WGMMA.reduce(0))
                        keep &= (lax.broadcast_in_dim(q_seg, (bq, bk), [0])
                                 == lax.broadcast_in_dim(k_seg, (bq, bk), [1]))
                    s = jnp.where(keep, s, -jnp.inf)
                plgpu.barrier_arrive(k_free.at[slot])
                m_new = jnp.maximum(m, s.max(axis=1))
                m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new) if masked else m_new
                alpha = jnp.exp2(m - m_use)
                e = jnp.exp2(s - lax.broadcast_in_dim(m_use, s.shape, [0]))
                acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
                l = l * alpha + e.sum(axis=1)
                e16 = e.astype(dtype)
                plgpu.barrier_arrive(turn)            # softmax done: the other consumer's turn
                plgpu.barrier_wait(v_bar.at[slot])
                plgpu.barrier_wait(turn)              # the tensor cores are ours again

                def pv(acc_ref):
                    acc_ref[...] = acc
                    plgpu.wgmma(acc_ref, e16, v_smem.at[slot])
                    nxt = j + 1

                    @pl.when(nxt < c_hi)
                    def _():
                        plgpu.barrier_wait(k_bar.at[lax.rem(nxt - kv_lo_cta, st)])
                    return acc_ref[...]
                acc = pl.run_scoped(pv, plgpu.ACC((bq, d), jnp.float32))
                plgpu.barrier_arrive(v_free.at[slot])
                return acc, m_new, l, count + 1

            def release(j, _):
                # Tiles only the other consumer needs: take the slot's arrivals (every phase of a
                # barrier is observed by each thread that waits on it), hand the slot back, keep
                # the turn order.
                slot = lax.rem(j - kv_lo_cta, st)
                plgpu.barrier_wait(k_bar.at[slot])
                if p.segments:
                    plgpu.barrier_wait(seg_bar.at[NUM_CONSUMERS + slot])
                plgpu.barrier_wait(v_bar.at[slot])
                plgpu.barrier_arrive(k_free.at[slot])
                plgpu.barrier_arrive(v_free.at[slot])
                _rendezvous(turn)
                _rendezvous(turn)

            carry = (plgpu.layout_cast(jnp.zeros((bq, d), jnp.float32), plgpu.Layout.WGMMA),
                     _rows_layout(jnp.full((bq,), -jnp.inf, jnp.float32)),
                     _rows_layout(jnp.zeros((bq,), jnp.float32)), jnp.int32(0))
            masked_all = p.segments
            carry = lax.fori_loop(kv_lo_cta, c_full, functools.partial(step, masked=masked_all), carry)
            acc, m, l, count = lax.fori_loop(c_full, c_hi, functools.partial(step, masked=True), carry)
            lax.fori_loop(c_hi, kv_hi_cta, release, None)
            pl.when(wg == 0)(lambda: _rendezvous(turn))

            seen = l > 0.0
            l_safe = jnp.where(seen, l, 1.0)
            q_tile[...] = (acc / lax.broadcast_in_dim(l_safe, acc.shape, [0])).astype(dtype)
            lse_smem.at[wg][...] = jnp.where(seen, m + jnp.log2(l_safe), jnp.inf)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(q_tile, out_ref.at[batch, pl.ds(row0, bq), head])
            plgpu.copy_smem_to_gmem(lse_smem.at[wg], lse_ref.at[batch, head, pl.ds(row0, bq)])
            if visits_ref is not None:
                visits_ref[batch, qt, hu, wg] = count
            plgpu.wait_smem_to_gmem(0)

        @pl.when(wg == NUM_CONSUMERS)
        def _producer():
            plgpu.set_max_registers(40, action="decrease")
            kv_head = lax.div(head_and_rows(0)[0], p.group)

            def load(j):
                slot = lax.rem(j - kv_lo_cta, st)
                rows = (batch, pl.ds(j * bk, bk), kv_head)
                plgpu.copy_gmem_to_smem(k_ref.at[rows], k_smem.at[slot], k_bar.at[slot])
                if p.segments:
                    plgpu.copy_gmem_to_smem(ks_ref.at[batch, pl.ds(j * bk, bk)], kseg_smem.at[slot],
                                            seg_bar.at[NUM_CONSUMERS + slot])
                plgpu.copy_gmem_to_smem(v_ref.at[rows], v_smem.at[slot], v_bar.at[slot])

            def first(i, _):
                @pl.when(i < n_steps)
                def _():
                    load(kv_lo_cta + i)
            lax.fori_loop(0, st, first, None)

            def rest(j, _):
                slot = lax.rem(j - kv_lo_cta, st)
                plgpu.barrier_wait(k_free.at[slot])
                plgpu.barrier_wait(v_free.at[slot])
                load(j)
            lax.fori_loop(kv_lo_cta + st, kv_hi_cta, rest, None)
            _drain(k_free, v_free, n_steps, st)

    smem = (
        _swizzled((NUM_CONSUMERS, bq, d), dtype),
        _swizzled((st, bk, d), dtype),
        _swizzled((st, bk, d), dtype),
        plgpu.SMEM((NUM_CONSUMERS, bq), jnp.int32) if p.segments else None,
        plgpu.SMEM((st, bk), jnp.int32) if p.segments else None,
        plgpu.SMEM((NUM_CONSUMERS, bq), jnp.float32),
    )
    arrivals = (plgpu.Barrier(num_barriers=NUM_CONSUMERS), plgpu.Barrier(num_barriers=st),
                plgpu.Barrier(num_barriers=st),
                plgpu.Barrier(num_barriers=NUM_CONSUMERS + st) if p.segments else None)
    consumed = (plgpu.Barrier(num_arrivals=NUM_CONSUMERS, num_barriers=st),) * 2
    turn = plgpu.Barrier(num_arrivals=NUM_CONSUMERS)
    pl.run_scoped(lambda smem, arrivals, consumed, turn: body(*smem, *arrivals, *consumed, turn),
                  smem, arrivals, consumed, turn, collective_axes="wg")


def _pad_q(p: _Plan, x):
    return pad_axis(x, 1, p.lq_pad)


def _pad_kv(p: _Plan, x):
    return pad_axis(x, 1, p.lk_pad)


def _forward(p: _Plan, q, k, v, qs, ks):
    b = q.shape[0]
    n_qt = p.lq_pad // p.cta_rows
    n_hu = p.q_heads // 2 if p.heads_mode else p.q_heads
    args = [_pad_q(p, q), _pad_kv(p, k), _pad_kv(p, v)]
    if p.segments:
        lo, hi = segment_tile_ranges(qs, ks, p.cta_rows, p.block_kv, n_qt, p.lk_pad // p.block_kv)
        args += [pad_axis(qs, 1, p.lq_pad, -1), pad_axis(ks, 1, p.lk_pad, -2), lo, hi]
    out_type = [jax.ShapeDtypeStruct((b, p.lq_pad, p.q_heads, p.head_dim), q.dtype),
                jax.ShapeDtypeStruct((b, p.q_heads, p.lq_pad), jnp.float32)]
    if p.count:
        out_type.append(jax.ShapeDtypeStruct((b, n_qt, n_hu, NUM_CONSUMERS), jnp.int32))
    outs = plgpu.kernel(
        functools.partial(_forward_kernel, p), out_type=out_type,
        grid=(n_hu, n_qt, b), grid_names=("h", "q", "b"), num_threads=NUM_CONSUMERS + 1,
        thread_name="wg", compiler_params=_params(), interpret=_interpret(p),
    )(*args)
    return outs[0][:, :p.q_len], outs[1], (outs[2] if p.count else None)


# ----------------------------------------------------------------------------- backward

def _q_bounds(p: _Plan, kv_row0, kv_rows):
    """Query tiles [lo, hi) that see the key rows [kv_row0, kv_row0 + kv_rows), and the first
    tile `mid` from which every one of them is fully visible (causal); traced or static ints."""
    bq = p.block_q_bwd
    hi = -(-p.q_len // bq)  # tiles of padding only have dO = 0: nothing to add
    lo = mid = 0
    if p.causal:
        lo = jnp.minimum(lax.div(jnp.maximum(kv_row0 - p.offset, 0), bq), hi)
        mid = lax.div(jnp.maximum(kv_row0 + kv_rows - 1 - p.offset, 0) + bq - 1, bq)
        mid = jnp.clip(mid, lo, hi)
    return lo, mid, hi


def _backward_kernel(p: _Plan, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs):
    refs = list(refs)
    if p.segments:
        qs_ref, ks_ref, lo_ref, hi_ref = refs[:4]
        refs = refs[4:]
    _, dq_ref, dk_ref, dv_ref = refs[:4]  # refs[0] is the zeroed dq input, aliased to dq_ref
    visits_ref = refs[4] if p.count else None
    bq, bk, d, st, g = p.block_q_bwd, p.block_kv_bwd, p.head_dim, p.stages_bwd, p.group
    dtype = q_ref.dtype
    c = p.scale * _LOG2E

    kt, kv_head, batch = lax.axis_index("k"), lax.axis_index("h"), lax.axis_index("b")
    cta_row0 = kt * (NUM_CONSUMERS * bk)
    q_lo, q_mid, q_hi = _q_bounds(p, cta_row0, NUM_CONSUMERS * bk)
    if p.segments:
        q_lo = jnp.maximum(q_lo, lo_ref[batch, kt])
        q_hi = jnp.minimum(q_hi, hi_ref[batch, kt])
        q_lo = jnp.minimum(q_lo, q_hi)
        q_mid = q_lo  # every tile takes the masked path
    n_q = q_hi - q_lo
    n_steps = g * n_q

    def tile_of(t):
        return lax.div(t, jnp.maximum(n_q, 1)), q_lo + lax.rem(t, jnp.maximum(n_q, 1))

    def body(k_smem, v_smem, q_smem, do_smem, lse_smem, delta_smem, qseg_smem, kseg_smem, ds_smem,
             dq_smem, kv_bar, in_bar, do_bar, q_free, do_free):
        wg = lax.axis_index("wg")

        @pl.when(wg < NUM_CONSUMERS)
        def _consumer():
            plgpu.set_max_registers(232, action="increase")
            row0 = cta_row0 + wg * bk
            kv_rows = (batch, pl.ds(row0, bk), kv_head)
            plgpu.copy_gmem_to_smem(k_ref.at[kv_rows], k_smem.at[wg], kv_bar.at[wg])
            plgpu.copy_gmem_to_smem(v_ref.at[kv_rows], v_smem.at[wg], kv_bar.at[wg])
            if p.segments:
                plgpu.copy_gmem_to_smem(ks_ref.at[batch, pl.ds(row0, bk)], kseg_smem.at[wg],
                                        kv_bar.at[wg])
            plgpu.barrier_wait(kv_bar.at[wg])
            k_seg = None
            if p.segments:
                k_seg = plgpu.load(kseg_smem.at[wg], (), layout=plgpu.Layout.WGMMA.reduce(1))
            k_tile, v_tile, ds_tile, dq_tile = k_smem.at[wg], v_smem.at[wg], ds_smem.at[wg], dq_smem.at[wg]

            def step(t, carry, masked):
                dk, dv, count = carry
                gi, qi = tile_of(t)
                slot = lax.rem(t, st)
                plgpu.barrier_wait(in_bar.at[slot])
                q_tile = q_smem.at[slot]
                st_ = _mma(k_tile, q_tile, (bk, bq), transpose_b=True)        # Sᵀ = K·Qᵀ
                lse = plgpu.load(lse_smem.at[slot], (), layout=plgpu.Layout.WGMMA.reduce(0))
                delta = plgpu.load(delta_smem.at[slot], (), layout=plgpu.Layout.WGMMA.reduce(0))
                if masked:
                    kpos = row0 + plgpu.broadcasted_iota(jnp.int32, (bk, bq), 0, layout=plgpu.Layout.WGMMA)
                    qpos = qi * bq + plgpu.broadcasted_iota(jnp.int32, (bk, bq), 1, layout=plgpu.Layout.WGMMA)
                    keep = kpos < p.kv_len
                    if p.causal:
                        keep &= kpos <= qpos + p.offset
                    if p.segments:
                        q_seg = plgpu.load(qseg_smem.at[slot], (), layout=plgpu.Layout.WGMMA.reduce(0))
                        keep &= (lax.broadcast_in_dim(k_seg, (bk, bq), [0])
                                 == lax.broadcast_in_dim(q_seg, (bk, bq), [1]))
                pt = jnp.exp2(st_ * c - lax.broadcast_in_dim(lse, (bk, bq), [1]))  # +inf lse: 0
                if masked:
                    pt = jnp.where(keep, pt, 0.0)
                plgpu.barrier_wait(do_bar.at[slot])
                do_tile = do_smem.at[slot]
                dv = _mma(pt.astype(dtype), do_tile, (bk, d), init=dv)          # dV += Pᵀ·dO
                dpt = _mma(v_tile, do_tile, (bk, bq), transpose_b=True)         # dPᵀ = V·dOᵀ
                plgpu.barrier_arrive(do_free.at[slot])
                dst = pt * (dpt - lax.broadcast_in_dim(delta, (bk, bq), [1]))
                ds16 = dst.astype(dtype)
                dk = _mma(ds16, q_tile, (bk, d), init=dk)                        # dK += dSᵀ·Q
                plgpu.barrier_arrive(q_free.at[slot])
                # dQ += dS·K: dSᵀ through shared memory (wgmma reads A transposed from there).
                plgpu.wait_smem_to_gmem(0, wait_read_only=True)   # the last reduce-add read dq_tile
                ds_tile[...] = ds16
                plgpu.commit_smem()
                dq = _mma(plgpu.transpose_ref(ds_tile, (1, 0)), k_tile, (bq, d))
                dq_tile[...] = dq * p.scale
                plgpu.commit_smem()
                head = kv_head * g + gi
                plgpu.copy_smem_to_gmem(dq_tile, dq_ref.at[batch, pl.ds(qi * bq, bq), head],
                                        reduction_op="add")
                return dk, dv, count + 1

            zeros = plgpu.layout_cast(jnp.zeros((bk, d), jnp.float32), plgpu.Layout.WGMMA)
            carry = (zeros, zeros, jnp.int32(0))
            n_masked = q_mid - q_lo

            def per_head(gi, carry):
                first = gi * n_q
                carry = lax.fori_loop(first, first + n_masked, functools.partial(step, masked=True), carry)
                return lax.fori_loop(first + n_masked, first + n_q,
                                     functools.partial(step, masked=p.segments), carry)
            dk, dv, count = lax.fori_loop(0, g, per_head, carry)
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)
            k_tile[...] = (dk * p.scale).astype(dtype)
            v_tile[...] = dv.astype(dtype)
            plgpu.commit_smem()
            out_rows = (batch, pl.ds(row0, bk), kv_head)
            plgpu.copy_smem_to_gmem(k_tile, dk_ref.at[out_rows])
            plgpu.copy_smem_to_gmem(v_tile, dv_ref.at[out_rows])
            if visits_ref is not None:
                visits_ref[batch, kt, kv_head, wg] = count
            plgpu.wait_smem_to_gmem(0)

        @pl.when(wg == NUM_CONSUMERS)
        def _producer():
            plgpu.set_max_registers(40, action="decrease")

            def load(t):
                gi, qi = tile_of(t)
                slot = lax.rem(t, st)
                head = kv_head * g + gi
                rows = (batch, pl.ds(qi * bq, bq), head)
                plgpu.copy_gmem_to_smem(q_ref.at[rows], q_smem.at[slot], in_bar.at[slot])
                plgpu.copy_gmem_to_smem(lse_ref.at[batch, head, pl.ds(qi * bq, bq)], lse_smem.at[slot],
                                        in_bar.at[slot])
                plgpu.copy_gmem_to_smem(delta_ref.at[batch, head, pl.ds(qi * bq, bq)],
                                        delta_smem.at[slot], in_bar.at[slot])
                if p.segments:
                    plgpu.copy_gmem_to_smem(qs_ref.at[batch, pl.ds(qi * bq, bq)], qseg_smem.at[slot],
                                            in_bar.at[slot])
                plgpu.copy_gmem_to_smem(do_ref.at[rows], do_smem.at[slot], do_bar.at[slot])

            def first(t, _):
                @pl.when(t < n_steps)
                def _():
                    load(t)
            lax.fori_loop(0, st, first, None)

            def rest(t, _):
                slot = lax.rem(t, st)
                plgpu.barrier_wait(q_free.at[slot])
                plgpu.barrier_wait(do_free.at[slot])
                load(t)
            lax.fori_loop(st, n_steps, rest, None)
            _drain(q_free, do_free, n_steps, st)

    n_in = 4 if p.segments else 3
    smem = (
        _swizzled((NUM_CONSUMERS, bk, d), dtype), _swizzled((NUM_CONSUMERS, bk, d), dtype),
        _swizzled((st, bq, d), dtype), _swizzled((st, bq, d), dtype),
        plgpu.SMEM((st, bq), jnp.float32), plgpu.SMEM((st, bq), jnp.float32),
        plgpu.SMEM((st, bq), jnp.int32) if p.segments else None,
        plgpu.SMEM((NUM_CONSUMERS, bk), jnp.int32) if p.segments else None,
        _swizzled((NUM_CONSUMERS, bk, bq), dtype),
        _swizzled((NUM_CONSUMERS, bq, d), jnp.float32),
    )
    arrivals = (plgpu.Barrier(num_arrivals=3 if p.segments else 2, num_barriers=NUM_CONSUMERS),
                plgpu.Barrier(num_arrivals=n_in, num_barriers=st), plgpu.Barrier(num_barriers=st))
    consumed = (plgpu.Barrier(num_arrivals=NUM_CONSUMERS, num_barriers=st),) * 2
    pl.run_scoped(lambda smem, arrivals, consumed: body(*smem, *arrivals, *consumed),
                  smem, arrivals, consumed, collective_axes="wg")


def _backward(p: _Plan, q, k, v, qs, ks, out, lse, do):
    b = q.shape[0]
    n_kt = p.lk_pad // (NUM_CONSUMERS * p.block_kv_bwd)
    delta = jnp.einsum("blhd,blhd->bhl", out.astype(jnp.float32), do.astype(jnp.float32))
    args = [_pad_q(p, q), _pad_kv(p, k), _pad_kv(p, v), _pad_q(p, do.astype(q.dtype)), lse,
            pad_axis(delta, 2, p.lq_pad)]
    if p.segments:
        lo, hi = segment_tile_ranges(ks, qs, NUM_CONSUMERS * p.block_kv_bwd, p.block_q_bwd, n_kt,
                                     p.lq_pad // p.block_q_bwd)
        args += [pad_axis(qs, 1, p.lq_pad, -1), pad_axis(ks, 1, p.lk_pad, -2), lo, hi]
    dq0 = jnp.zeros((b, p.lq_pad, p.q_heads, p.head_dim), jnp.float32)
    out_type = [jax.ShapeDtypeStruct(dq0.shape, jnp.float32),
                jax.ShapeDtypeStruct((b, p.lk_pad, p.kv_heads, p.head_dim), k.dtype),
                jax.ShapeDtypeStruct((b, p.lk_pad, p.kv_heads, p.head_dim), v.dtype)]
    if p.count:
        out_type.append(jax.ShapeDtypeStruct((b, n_kt, p.kv_heads, NUM_CONSUMERS), jnp.int32))
    outs = _mgpu.kernel(
        functools.partial(_backward_kernel, p), out_type=out_type, grid=(p.kv_heads, n_kt, b),
        grid_names=("h", "k", "b"), num_threads=NUM_CONSUMERS + 1, compiler_params=_params(),
        interpret=_interpret(p), input_output_aliases={len(args): 0})(*args, dq0)
    dq, dk, dv = outs[:3]
    return (dq[:, :p.q_len].astype(q.dtype), dk[:, :p.kv_len], dv[:, :p.kv_len],
            outs[3] if p.count else None)


# ----------------------------------------------------------------------------- entry points

@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(p: _Plan, q, k, v, qs, ks):
    return _forward(p, q, k, v, qs, ks)[0]


def _attention_fwd(p, q, k, v, qs, ks):
    out, lse, _ = _forward(p, q, k, v, qs, ks)
    return out, (q, k, v, qs, ks, out, lse)


def _attention_bwd(p, res, do):
    q, k, v, qs, ks, out, lse = res
    dq, dk, dv, _ = _backward(p, q, k, v, qs, ks, out, lse, do)
    return dq, dk, dv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(q, k, v, *, causal: bool, q_segment_ids, kv_segment_ids, sm_scale: float,
              block_sizes: Optional[BlockSizes] = None, interpret=False):
    """Blockwise attention on Mosaic GPU (sm90); inputs already validated by common.check_inputs.

    `interpret`: False (compiled; needs a Hopper GPU), True (GPU interpret mode on CPU) or an
    InterpretGPUParams (say, with detect_races=True). Raises NotImplementedError for inputs the
    kernels do not take (dispatch falls through) and RuntimeError when asked to compile without a GPU.
    """
    p = _plan(q, k, causal, q_segment_ids is not None, sm_scale, block_sizes, interpret)
    _mgpu.check_device("pallas_mosaic_gpu", interpret)
    return _attention(p, q, k, v, q_segment_ids, kv_segment_ids)


def tile_visits(q, k, v, *, causal, q_segment_ids, kv_segment_ids, sm_scale, block_sizes=None,
                interpret=True) -> dict:
    """How many (query tile, key tile) products each kernel computed, counted by the kernels
    themselves: {"forward": n, "dkv": n} (the backward's one kernel also makes dq)."""
    p = _plan(q, k, causal, q_segment_ids is not None, sm_scale, block_sizes, interpret, count=True)
    out, lse, fwd = _forward(p, q, k, v, q_segment_ids, kv_segment_ids)
    *_, bwd = _backward(p, q, k, v, q_segment_ids, kv_segment_ids, out, lse, jnp.ones_like(out))
    return {"forward": int(jnp.sum(fwd)), "dkv": int(jnp.sum(bwd))}
