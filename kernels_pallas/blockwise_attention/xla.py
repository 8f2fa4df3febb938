"""Blockwise attention in plain XLA: online softmax over key blocks, forward and backward.

The CPU fallback and the implementation that always works. Memory is O(length): the forward keeps
one [q_block, kv_block] score tile per step and saves only the output and the per-row logsumexp;
the backward recomputes the probabilities tile by tile (custom_vjp).

Tile skipping: every loop runs only over the tiles that can hold a visible pair. Under a causal
mask, tiles entirely above the diagonal are never computed, which is what makes it faster than
dense XLA at long lengths, not just smaller; tiles made only of padding (lengths rounded up to the
tiles) are never computed either. With segment ids, `common.segment_tile_ranges` bounds the loops
further: the forward's kv loop of a q tile runs over [lo, hi) of the tiles whose ids can meet that
q tile's (intersected with the causal bound), and the backward's q loop of a kv tile likewise.

Those bounds differ between the elements of a batch, and a loop vectorised over the batch would
have to run the union of them: a batch of ragged sequences (key padding folded into the ids)
would cost as much as its longest row. So with segment ids the forward scans over (q block, batch
element) pairs and the backward over (kv block, batch element) pairs, each with its own bounds,
and a half-padded batch costs about half whatever its rows' lengths. A step then multiplies one
element's tile instead of the batch's; at the default 512-row tiles that is still a few big
matmuls per step. Measured on CPU (process time, single-threaded XLA; batch 4, length 2048,
4 heads, head_dim 64, forward + backward, float32 and bfloat16): on unpadded ids the per-element
scan took 0.85-0.88x the time of the batch-wide one it replaced, and rows keeping half their keys
took 0.54-0.55x the unpadded time (0.5x the tiles), 0.72-0.73x under a causal mask (0.7x).
Without segment ids the bounds are common to the batch and one step computes the whole batch's
tile, as before.

`tile_visits` counts the (batch element, q tile, kv tile) steps each pass runs, with a counter in
the loops' carry (a static flag: normal calls carry no counter).

Layout inside: q as [blocks, batch, kv_heads, group, block, dim] so grouped-query heads share their
key/value tile without copying it, and dk/dv sum over the group inside the einsum.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from kernels_pallas.blockwise_attention.common import (BlockSizes, pad_axis, round_up,
                                                       segment_tile_ranges)

__all__ = ["attention", "tile_visits", "DEFAULT_BLOCK"]

# Tiles of 512: large enough that each step is a few big matmuls (loop overhead amortized on CPU),
# small enough that a step's float32 scores take 1 MB per (batch, head).
DEFAULT_BLOCK = 512


class _Static(NamedTuple):
    """The custom_vjp's static (hashable) arguments."""
    causal: bool
    scale: float
    q_len: int
    kv_len: int
    blocks: BlockSizes
    count: bool = False  # carry a tile-visit counter through the loops (tile_visits only)


def _prepare(q, k, v, causal, q_segment_ids, kv_segment_ids, sm_scale, block_sizes, count):
    """Static arguments and the padded, blocked-layout operands of _attention."""
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    bs = (block_sizes or BlockSizes()).resolve(DEFAULT_BLOCK, DEFAULT_BLOCK, lq, lk)
    # Forward and backward share one padding: a multiple of both passes' tiles.
    lq_pad = round_up(lq, math.lcm(bs.block_q, bs.block_q_bwd))
    lk_pad = round_up(lk, math.lcm(bs.block_kv, bs.block_kv_bwd))
    st = _Static(causal=bool(causal), scale=float(sm_scale), q_len=lq, kv_len=lk, blocks=bs,
                 count=count)
    qg = pad_axis(q, 1, lq_pad).reshape(b, lq_pad, hkv, hq // hkv, d).transpose(0, 2, 3, 1, 4)
    kt = pad_axis(k, 1, lk_pad).transpose(0, 2, 1, 3)
    vt = pad_axis(v, 1, lk_pad).transpose(0, 2, 1, 3)
    if q_segment_ids is None:
        qseg = kseg = None
    else:  # padded keys are masked by position, padded queries have zero cotangents
        qseg = pad_axis(q_segment_ids.astype(jnp.int32), 1, lq_pad)
        kseg = pad_axis(kv_segment_ids.astype(jnp.int32), 1, lk_pad)
    return st, (qg, kt, vt, qseg, kseg)


def attention(q, k, v, *, causal, q_segment_ids, kv_segment_ids, sm_scale, block_sizes=None,
              interpret=False):
    del interpret  # plain XLA: nothing to interpret
    b, lq, hq, d = q.shape
    st, args = _prepare(q, k, v, causal, q_segment_ids, kv_segment_ids, sm_scale, block_sizes,
                        count=False)
    out = _attention(st, *args)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, -1, hq, d)[:, :lq]


def tile_visits(q, k, v, *, causal, q_segment_ids, kv_segment_ids, sm_scale, block_sizes=None,
                interpret=True) -> dict:
    """{"forward", "backward"}: how many (batch element, q tile, kv tile) steps each pass runs,
    counted in the loops themselves (heads share a step). Arguments as for `attention`."""
    del interpret
    st, args = _prepare(q, k, v, causal, q_segment_ids, kv_segment_ids, sm_scale, block_sizes,
                        count=True)
    out, lse, fwd = jax.jit(_forward, static_argnums=0)(st, *args)
    *_, bwd = jax.jit(_backward, static_argnums=0)(st, *args, out, lse, jnp.zeros_like(out))
    return {"forward": int(fwd), "backward": int(bwd)}


def _blocks(x, axis, size):
    """Splits `axis` into [n, size] and moves the block index to the front."""
    shape = x.shape[:axis] + (x.shape[axis] // size, size) + x.shape[axis + 1:]
    return jnp.moveaxis(x.reshape(shape), axis, 0)


def _unblocks(x, axis):
    """Inverse of _blocks."""
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2:])


def _take(x_b, i, bi):
    """Block i of a blocked array [n, batch, ...]: the whole batch (bi None) or element bi only,
    keeping a batch axis of 1."""
    return x_b[i] if bi is None else x_b[i, bi][None]


def _pairs(x_b):
    """[n, batch, ...] -> [n * batch, 1, ...]: one scan step per (block, batch element)."""
    return x_b.reshape((-1, 1) + x_b.shape[2:])


def _visible(st, q_start, k_start, bq, bk, qseg, kseg):
    """[batch|1, 1, 1, bq, bk] bool for one tile: causal (end-aligned), key padding, segments."""
    rows = q_start + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
    cols = k_start + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
    keep = cols < st.kv_len
    if st.causal:
        keep &= cols <= rows + (st.kv_len - st.q_len)
    keep = keep[None, None, None]
    if qseg is not None:
        keep = keep & (qseg[:, :, None] == kseg[:, None, :])[:, None, None]
    return keep


def _kv_block_end(st, qi, bq, bk):
    """Per query block, the end of the key blocks it can see: causal stops after the diagonal,
    key blocks made only of padding are never seen, and query blocks made only of padding (whose
    outputs are cropped) see none."""
    n_real = -(-st.kv_len // bk)
    hi = jnp.full(qi.shape, n_real, jnp.int32)
    if st.causal:
        last_row = qi * bq + bq - 1 + (st.kv_len - st.q_len)
        hi = jnp.clip(last_row // bk + 1, 0, n_real).astype(jnp.int32)
    return jnp.where(qi * bq < st.q_len, hi, 0)


def _q_block_range(st, kj, bq, bk):
    """Per key block, the query blocks [lo, hi) that can see it: causal starts at the first row
    that sees its first key; query blocks made only of padding (zero cotangent) are skipped, and
    key blocks made only of padding see no query."""
    n_real = -(-st.q_len // bq)
    lo = jnp.zeros(kj.shape, jnp.int32)
    if st.causal:
        first_row = kj * bk - (st.kv_len - st.q_len)  # first query row that sees the first key
        lo = jnp.clip(first_row // bq, 0, n_real).astype(jnp.int32)
    hi = jnp.where(kj * bk < st.kv_len, n_real, 0).astype(jnp.int32)
    return lo, jnp.maximum(hi, lo)


def _forward(st, q, k, v, qseg, kseg):
    """Returns out [b, hkv, g, Lq, d] (q's dtype), lse [b, hkv, g, Lq] (float32; +inf where a
    row sees no key, so the backward recomputes exactly zero probabilities there) and the number
    of tile steps run (st.count) or None."""
    bq, bk = st.blocks.block_q, st.blocks.block_kv
    b, nq, nk = q.shape[0], q.shape[3] // bq, k.shape[2] // bk
    k_b, v_b = _blocks(k, 2, bk), _blocks(v, 2, bk)
    qi = jnp.arange(nq, dtype=jnp.int32)
    hi = _kv_block_end(st, qi, bq, bk)
    if qseg is None:  # bounds common to the batch: one step per q block for all of it
        xs = (qi, None, jnp.zeros_like(hi), hi, _blocks(q, 3, bq), None)
        kseg_b = None
    else:  # own bounds per (q block, batch element), see the module docstring
        lo_s, hi_s = segment_tile_ranges(qseg[:, :st.q_len], kseg[:, :st.kv_len], bq, bk, nq, nk)
        lo, hi = lo_s.T, jnp.minimum(hi_s.T, hi[:, None])  # [nq, b]
        xs = (jnp.repeat(qi, b), jnp.tile(jnp.arange(b, dtype=jnp.int32), nq), lo.reshape(-1),
              hi.reshape(-1), _pairs(_blocks(q, 3, bq)), _pairs(_blocks(qseg, 1, bq)))
        kseg_b = _blocks(kseg, 1, bk)

    def q_block(visits, xs):
        qi, bi, lo, hi, qb, qsegb = xs
        # Scaling q once per block is cheaper than scaling every score; in low precision it
        # would round q, so there the scores are scaled instead.
        qb = qb * jnp.asarray(st.scale, qb.dtype) if qb.dtype == jnp.float32 else qb
        shape = qb.shape[:-1]
        init = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32),
                jnp.zeros(qb.shape, jnp.float32), visits)

        def kv_step(kj, state):
            m, l, acc, visits = state
            s = jnp.einsum("bhgqd,bhkd->bhgqk", qb, _take(k_b, kj, bi),
                           preferred_element_type=jnp.float32)
            if qb.dtype != jnp.float32:
                s = s * st.scale
            ksegb = None if kseg_b is None else _take(kseg_b, kj, bi)
            keep = _visible(st, qi * bq, kj * bk, bq, bk, qsegb, ksegb)
            s = jnp.where(keep, s, -jnp.inf)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # no key seen yet: exp(-inf) = 0
            p = jnp.exp(s - m_safe[..., None])
            alpha = jnp.exp(m - m_safe)
            pv = jnp.einsum("bhgqk,bhkd->bhgqd", p.astype(v.dtype), _take(v_b, kj, bi),
                            preferred_element_type=jnp.float32)
            if visits is not None:
                visits = visits + qb.shape[0]
            return m_new, alpha * l + jnp.sum(p, axis=-1), alpha[..., None] * acc + pv, visits

        m, l, acc, visits = lax.fori_loop(lo, hi, kv_step, init)
        seen = l > 0
        out = acc / jnp.where(seen, l, 1.0)[..., None]
        lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), jnp.inf)
        return visits, (out.astype(q.dtype), lse)

    visits0 = jnp.int32(0) if st.count else None
    visits, (out, lse) = lax.scan(q_block, visits0, xs)
    out, lse = (x.reshape((nq, b) + x.shape[2:]) for x in (out, lse))  # no-op without segments
    return _unblocks(out, 3), _unblocks(lse, 3), visits


def _backward(st, q, k, v, qseg, kseg, out, lse, do):
    """Gradients by recomputation: a scan over key blocks accumulates that block's dk/dv in the
    loop carry, and adds each tile's contribution to the whole dq (O(length) buffer). Returns
    dq, dk, dv and the number of tile steps run (st.count) or None."""
    bq, bk = st.blocks.block_q_bwd, st.blocks.block_kv_bwd
    b, nq, nk = q.shape[0], q.shape[3] // bq, k.shape[2] // bk
    delta = jnp.sum(out.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)
    q_b, do_b = _blocks(q, 3, bq), _blocks(do, 3, bq)
    lse_b, delta_b = _blocks(lse, 3, bq), _blocks(delta, 3, bq)
    kj = jnp.arange(nk, dtype=jnp.int32)
    lo, hi = _q_block_range(st, kj, bq, bk)
    k_b, v_b = _blocks(k, 2, bk), _blocks(v, 2, bk)
    if qseg is None:  # bounds common to the batch: one step per kv block for all of it
        xs = (kj, None, lo, hi, k_b, v_b, None)
        qseg_b = None
    else:  # own bounds per (kv block, batch element), see the module docstring
        lo_s, hi_s = segment_tile_ranges(kseg[:, :st.kv_len], qseg[:, :st.q_len], bk, bq, nk, nq)
        lo = jnp.maximum(lo_s.T, lo[:, None])  # [nk, b]
        hi = jnp.maximum(jnp.minimum(hi_s.T, hi[:, None]), lo)
        xs = (jnp.repeat(kj, b), jnp.tile(jnp.arange(b, dtype=jnp.int32), nk), lo.reshape(-1),
              hi.reshape(-1), _pairs(k_b), _pairs(v_b), _pairs(_blocks(kseg, 1, bk)))
        qseg_b = _blocks(qseg, 1, bq)

    def kv_block(carry, xs):
        kj, bi, lo, hi, kb, vb, ksegb = xs

        def q_step(qi, state):
            dq, dk, dv, visits = state
            qb, dob = _take(q_b, qi, bi), _take(do_b, qi, bi)
            lseb, deltab = _take(lse_b, qi, bi), _take(delta_b, qi, bi)
            qsegb = None if qseg_b is None else _take(qseg_b, qi, bi)
            s = jnp.einsum("bhgqd,bhkd->bhgqk", qb, kb, preferred_element_type=jnp.float32) * st.scale
            keep = _visible(st, qi * bq, kj * bk, bq, bk, qsegb, ksegb)
            p = jnp.where(keep, jnp.exp(s - lseb[..., None]), 0.0)
            dv = dv + jnp.einsum("bhgqk,bhgqd->bhkd", p.astype(do.dtype), dob,
                                 preferred_element_type=jnp.float32)
            dp = jnp.einsum("bhgqd,bhkd->bhgqk", dob, vb, preferred_element_type=jnp.float32)
            ds = (p * (dp - deltab[..., None]) * st.scale).astype(q.dtype)
            dk = dk + jnp.einsum("bhgqk,bhgqd->bhkd", ds, qb, preferred_element_type=jnp.float32)
            dq_tile = jnp.einsum("bhgqk,bhkd->bhgqd", ds, kb, preferred_element_type=jnp.float32)
            dq = dq.at[qi].add(dq_tile) if bi is None else dq.at[qi, bi].add(dq_tile[0])
            if visits is not None:
                visits = visits + qb.shape[0]
            return dq, dk, dv, visits

        dq, visits = carry
        zeros = jnp.zeros(kb.shape, jnp.float32)
        dq, dk, dv, visits = lax.fori_loop(lo, hi, q_step, (dq, zeros, zeros, visits))
        return (dq, visits), (dk.astype(k.dtype), dv.astype(v.dtype))

    carry0 = (jnp.zeros(q_b.shape, jnp.float32), jnp.int32(0) if st.count else None)
    (dq, visits), (dk, dv) = lax.scan(kv_block, carry0, xs)
    dk, dv = (x.reshape((nk, b) + x.shape[2:]) for x in (dk, dv))  # no-op without segments
    return _unblocks(dq, 3).astype(q.dtype), _unblocks(dk, 2), _unblocks(dv, 2), visits


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(st, q, k, v, qseg, kseg):
    return _forward(st, q, k, v, qseg, kseg)[0]


def _attention_fwd(st, q, k, v, qseg, kseg):
    out, lse, _ = _forward(st, q, k, v, qseg, kseg)
    return out, (q, k, v, qseg, kseg, out, lse)


def _attention_bwd(st, residuals, do):
    q, k, v, qseg, kseg, out, lse = residuals
    dq, dk, dv, _ = _backward(st, q, k, v, qseg, kseg, out, lse, do)
    return dq, dk, dv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)
