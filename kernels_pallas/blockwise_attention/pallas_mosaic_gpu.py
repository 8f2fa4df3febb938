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
  it only releases to the producer. Heavy causal CTAs (the last query tiles) are launched first.
  Segment ids bound the kv range of each CTA (common.segment_tile_ranges: tiles that cannot hold a
  visible pair are never loaded) and mask the rest element by element, every tile then taking the
  masked path. GQA: when a kv head serves an even number of query heads, the two consumers take two
  query heads of the same rows and share every key/value tile (each tile is read once for both);
  otherwise they take two row tiles of one head.
Backward (5 matmuls per tile; FlashAttention-2/3's dk/dv-major loop). One CTA of three warpgroups
  owns two 64-row key tiles of one kv head: the producer streams (query tile, dO tile, logsumexp,
  delta) for every query head of the group and every query tile in range; each consumer keeps its
  key and value tiles resident and accumulates dK and dV in registers:
    Sᵀ = K·Qᵀ, Pᵀ = exp2(Sᵀ - lse), dV += Pᵀ·dO, dPᵀ = V·dOᵀ, dSᵀ = Pᵀ∘(dPᵀ - delta),
    dK += dSᵀ·Q, and dQ += dS·K, written through shared memory with a TMA reduce-add into a
  float32 dq buffer (no atomics in registers, no second kernel re-reading K and V). delta =
  rowsum(dO∘O) is one XLA reduction. Causal CTAs start at the first query tile that sees them;
  CTAs are ordered heaviest first.
Conventions as every implementation (common.py): end-aligned causal, segment ids, zero output and
zero gradients for a query that sees no key, float32 statistics. bf16 and f16 only (wgmma),
head_dim a multiple of 64 up to 256; lengths are padded to the tiles (padded keys are masked by
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
    if d % 64 or d > 256:
        raise NotImplementedError(f"pallas_mosaic_gpu: head_dim must be a multiple of 64 up to 256; "
                                  f"got {d}")
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
    # Forward: 128-key tiles (the wgmma N of Q·Kᵀ) up to d=128, 64 at d=256; as many stages as fit
    # in ~200 KiB of the 227 KiB of shared memory next to the two query tiles.
    bk = user.block_kv or (128 if d <= 128 else 64)
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


def _params(p: _Plan):
    return plgpu.CompilerParams(approx_math=True)


def _interpret(p: _Plan):
    return _mgpu.interpret_params(p.interpret)


# ----------------------------------------------------------------------------- shared pieces

def _swizzled(shape, dtype):
    """Shared memory in the layout wgmma and TMA want: (8, 64)-element tiles, 128-byte swizzle."""
    swizzle = 128 if shape[-1] * jnp.dtype(dtype).itemsize >= 128 else 64
    tile = swizzle // jnp.dtype(dtype).itemsize
    return plgpu.SMEM(shape, dtype, transforms=(plgpu.TilingTransform((8, tile)),
                                                plgpu.SwizzleTransform(swizzle)))


def _rendezvous(barrier):
    """Both consumers arrive, then wait: the ping-pong turn-taking step."""
    plgpu.barrier_arrive(barrier)
    plgpu.barrier_wait(barrier)


def _mma(a, b_ref, shape, *, transpose_b=False, init=None):
    """a @ b (a a shared-memory ref or a register array), float32, through a wgmma accumulator."""
    b = plgpu.transpose_ref(b_ref, (1, 0)) if transpose_b else b_ref

    def run(acc_ref):
        if init is not None:
            acc_ref[...] = init
        plgpu.wgmma(acc_ref, a, b)
        return acc_ref[...]
    return pl.run_scoped(run, plgpu.ACC(shape, jnp.float32))


def _rows_layout(x):
    return plgpu.layout_cast(x, plgpu.Layout.WGMMA.reduce(1))


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
                # Tiles the other consumer still needs: hand the slot back, keep the turn order.
                slot = lax.rem(j - kv_lo_cta, st)
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
        thread_name="wg", compiler_params=_params(p), interpret=_interpret(p),
    )(*args)
    return outs[0][:, :p.q_len], outs[1], (outs[2] if p.count else None)
