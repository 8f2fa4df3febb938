"""Blockwise attention in plain XLA: online softmax over key blocks, forward and backward.

The CPU fallback and the implementation that always works. Memory is O(length): the forward keeps
one [q_block, kv_block] score tile per step and saves only the output and the per-row logsumexp;
the backward recomputes the probabilities tile by tile (custom_vjp). Under a causal mask, tiles
entirely above the diagonal are never computed (loop bounds depend on the block index), which is
what makes it faster than dense XLA at long lengths, not just smaller.

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

from kernels_pallas.blockwise_attention.common import BlockSizes, pad_axis, round_up

# Tiles of 512: large enough that each step is a few big matmuls (loop overhead amortized on CPU),
# small enough that a step's float32 scores take 1 MB per (batch, head).
DEFAULT_BLOCK = 512


def attention(q, k, v, *, causal, q_segment_ids, kv_segment_ids, sm_scale, block_sizes=None,
              interpret=False):
    del interpret  # plain XLA: nothing to interpret
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    bs = (block_sizes or BlockSizes()).resolve(DEFAULT_BLOCK, DEFAULT_BLOCK, lq, lk)
    # Forward and backward share one padding: a multiple of both passes' tiles.
    lq_pad = round_up(lq, math.lcm(bs.block_q, bs.block_q_bwd))
    lk_pad = round_up(lk, math.lcm(bs.block_kv, bs.block_kv_bwd))
    if q_segment_ids is None:
        q_segment_ids = jnp.zeros((b, lq), jnp.int32)
        kv_segment_ids = jnp.zeros((b, lk), jnp.int32)
    static = _Static(causal=causal, scale=sm_scale, q_len=lq, kv_len=lk, blocks=bs)
    qg = pad_axis(q, 1, lq_pad).reshape(b, lq_pad, hkv, hq // hkv, d).transpose(0, 2, 3, 1, 4)
    kt = pad_axis(k, 1, lk_pad).transpose(0, 2, 1, 3)
    vt = pad_axis(v, 1, lk_pad).transpose(0, 2, 1, 3)
    out = _attention(static, qg, kt, vt, pad_axis(q_segment_ids, 1, lq_pad),
                     pad_axis(kv_segment_ids, 1, lk_pad))
    return out.transpose(0, 3, 1, 2, 4).reshape(b, lq_pad, hq, d)[:, :lq]


class _Static(NamedTuple):
    """The custom_vjp's static (hashable) arguments."""
    causal: bool
    scale: float
    q_len: int
    kv_len: int
    blocks: BlockSizes


def _blocks(x, axis, size):
    """Splits `axis` into [n, size] and moves the block index to the front."""
    shape = x.shape[:axis] + (x.shape[axis] // size, size) + x.shape[axis + 1:]
    return jnp.moveaxis(x.reshape(shape), axis, 0)


def _unblocks(x, axis):
    """Inverse of _blocks."""
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2:])


def _visible(st, q_start, k_start, bq, bk, qseg, kseg):
    """[batch, 1, 1, bq, bk] bool for one tile: causal (end-aligned), key padding, segments."""
    rows = q_start + lax.broadcasted_iota(jnp.int32, (bq, bk), 0)
    cols = k_start + lax.broadcasted_iota(jnp.int32, (bq, bk), 1)
    keep = cols < st.kv_len
    if st.causal:
        keep &= cols <= rows + (st.kv_len - st.q_len)
    return keep[None, None, None] & (qseg[:, :, None] == kseg[:, None, :])[:, None, None]


def _kv_block_range(st, qi, bq, bk, nk):
    """Key blocks [0, hi) a query block can see; causal skips the blocks above the diagonal."""
    if not st.causal:
        return nk
    last_row = qi * bq + bq - 1 + (st.kv_len - st.q_len)
    return jnp.clip(last_row // bk + 1, 0, nk)


def _q_block_start(st, kj, bq, bk, nq):
    """First query block that can see key block kj (causal); 0 otherwise."""
    if not st.causal:
        return 0
    first_row = kj * bk - (st.kv_len - st.q_len)  # first query row that sees this block's first key
    return jnp.clip(first_row // bq, 0, nq)


def _forward(st, q, k, v, qseg, kseg):
    """Returns out [b, hkv, g, Lq, d] (q's dtype) and lse [b, hkv, g, Lq] (float32; +inf where a
    row sees no key, so the backward recomputes exactly zero probabilities there)."""
    bq, bk = st.blocks.block_q, st.blocks.block_kv
    nq, nk = q.shape[3] // bq, k.shape[2] // bk
    k_b, v_b, kseg_b = _blocks(k, 2, bk), _blocks(v, 2, bk), _blocks(kseg, 1, bk)

    def q_block(carry, xs):
        qi, qb, qsegb = xs
        # Scaling q once per block is cheaper than scaling every score; in low precision it
        # would round q, so there the scores are scaled instead.
        qb = qb * jnp.asarray(st.scale, qb.dtype) if qb.dtype == jnp.float32 else qb
        shape = qb.shape[:-1]
        init = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32),
                jnp.zeros(qb.shape, jnp.float32))

        def kv_step(kj, state):
            m, l, acc = state
            s = jnp.einsum("bhgqd,bhkd->bhgqk", qb, k_b[kj], preferred_element_type=jnp.float32)
            if qb.dtype != jnp.float32:
                s = s * st.scale
            keep = _visible(st, qi * bq, kj * bk, bq, bk, qsegb, kseg_b[kj])
            s = jnp.where(keep, s, -jnp.inf)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)  # no key seen yet: exp(-inf) = 0
            p = jnp.exp(s - m_safe[..., None])
            alpha = jnp.exp(m - m_safe)
            pv = jnp.einsum("bhgqk,bhkd->bhgqd", p.astype(v.dtype), v_b[kj],
                            preferred_element_type=jnp.float32)
            return m_new, alpha * l + jnp.sum(p, axis=-1), alpha[..., None] * acc + pv

        m, l, acc = lax.fori_loop(0, _kv_block_range(st, qi, bq, bk, nk), kv_step, init)
        seen = l > 0
        out = acc / jnp.where(seen, l, 1.0)[..., None]
        lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), jnp.inf)
        return carry, (out.astype(q.dtype), lse)

    _, (out, lse) = lax.scan(q_block, None, (jnp.arange(nq), _blocks(q, 3, bq), _blocks(qseg, 1, bq)))
    return _unblocks(out, 3), _unblocks(lse, 3)


def _backward(st, q, k, v, qseg, kseg, out, lse, do):
    """Gradients by recomputation: a scan over key blocks accumulates that block's dk/dv in the
    loop carry, and adds each tile's contribution to the whole dq (O(length) buffer)."""
    bq, bk = st.blocks.block_q_bwd, st.blocks.block_kv_bwd
    nq, nk = q.shape[3] // bq, k.shape[2] // bk
    delta = jnp.sum(out.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)
    q_b, do_b, qseg_b = _blocks(q, 3, bq), _blocks(do, 3, bq), _blocks(qseg, 1, bq)
    lse_b, delta_b = _blocks(lse, 3, bq), _blocks(delta, 3, bq)

    def kv_block(dq, xs):
        kj, kb, vb, ksegb = xs

        def q_step(qi, state):
            dq, dk, dv = state
            qb, dob = q_b[qi], do_b[qi]
            s = jnp.einsum("bhgqd,bhkd->bhgqk", qb, kb, preferred_element_type=jnp.float32) * st.scale
            keep = _visible(st, qi * bq, kj * bk, bq, bk, qseg_b[qi], ksegb)
            p = jnp.where(keep, jnp.exp(s - lse_b[qi][..., None]), 0.0)
            dv = dv + jnp.einsum("bhgqk,bhgqd->bhkd", p.astype(do.dtype), dob,
                                 preferred_element_type=jnp.float32)
            dp = jnp.einsum("bhgqd,bhkd->bhgqk", dob, vb, preferred_element_type=jnp.float32)
            ds = (p * (dp - delta_b[qi][..., None]) * st.scale).astype(q.dtype)
            dk = dk + jnp.einsum("bhgqk,bhgqd->bhkd", ds, qb, preferred_element_type=jnp.float32)
            dq = dq.at[qi].add(jnp.einsum("bhgqk,bhkd->bhgqd", ds, kb,
                                          preferred_element_type=jnp.float32))
            return dq, dk, dv

        zeros = jnp.zeros(kb.shape, jnp.float32)
        dq, dk, dv = lax.fori_loop(_q_block_start(st, kj, bq, bk, nq), nq, q_step, (dq, zeros, zeros))
        return dq, (dk.astype(k.dtype), dv.astype(v.dtype))

    dq0 = jnp.zeros(q_b.shape, jnp.float32)
    dq, (dk, dv) = lax.scan(kv_block, dq0, (jnp.arange(nk), _blocks(k, 2, bk), _blocks(v, 2, bk),
                                            _blocks(kseg, 1, bk)))
    return _unblocks(dq, 3).astype(q.dtype), _unblocks(dk, 2), _unblocks(dv, 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(st, q, k, v, qseg, kseg):
    return _forward(st, q, k, v, qseg, kseg)[0]


def _attention_fwd(st, q, k, v, qseg, kseg):
    out, lse = _forward(st, q, k, v, qseg, kseg)
    return out, (q, k, v, qseg, kseg, out, lse)


def _attention_bwd(st, residuals, do):
    q, k, v, qseg, kseg, out, lse = residuals
    dq, dk, dv = _backward(st, q, k, v, qseg, kseg, out, lse, do)
    return dq, dk, dv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)
