"""Lean decode attention in plain XLA: the stream-K schedule of common.py, programs in lockstep.

All `num_programs` programs advance together, one unit (a block_k tile of one segment's cache)
each per step, for ceil(U / P) steps: a while loop whose trip count comes from the lengths, so
the time follows the valid tokens, not batch x max_len. Each step gathers the P tiles it needs,
updates each program's online softmax (reset when the program enters a new segment), and writes
the running partial to the program's slot p + s; the last write for a (program, segment) pair is
that pair's complete partial. common.merge then combines the slots of each segment.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from kernels_pallas.lean_decode_attention.common import locate, merge, schedule

DEFAULT_BLOCK_K = 256  # tokens per unit: a few matmul-sized reads per program and step on CPU


def attention(q, k_cache, v_cache, lengths, *, sm_scale, block_k=None, num_programs, interpret=False):
    del interpret  # plain XLA
    b, hq, d = q.shape
    max_len, hkv = k_cache.shape[1], k_cache.shape[2]
    g, n_seg, n_prog = hq // hkv, b * hkv, num_programs
    bk = min(block_k or DEFAULT_BLOCK_K, max_len)
    lengths = jnp.clip(lengths.astype(jnp.int32), 0, max_len)
    sched = schedule(lengths, hkv, max_len, bk, n_prog)
    qg = q.reshape(n_seg, g, d)  # segment s = b * hkv + h holds query heads h*g .. h*g + g - 1
    prog = jnp.arange(n_prog, dtype=jnp.int32)
    n_slots = n_prog + n_seg

    def step(i, carry):
        m, l, acc, cur, slot_o, slot_m, slot_l, slot_seg = carry
        unit = sched.prog_start + i
        active = unit < sched.prog_end
        seg, tile = locate(sched, jnp.where(active, unit, 0))
        seq, head = seg // hkv, seg % hkv
        pos = tile[:, None] * bk + jnp.arange(bk, dtype=jnp.int32)[None, :]  # [P, bk]
        valid = pos < lengths[seq][:, None]
        pos = jnp.minimum(pos, max_len - 1)
        k = k_cache[seq[:, None], pos, head[:, None]]  # [P, bk, d]
        v = v_cache[seq[:, None], pos, head[:, None]]
        s = jnp.einsum("pgd,pkd->pgk", qg[seg], k, preferred_element_type=jnp.float32) * sm_scale
        s = jnp.where(valid[:, None, :], s, -jnp.inf)
        fresh = seg != cur  # a new segment: start its softmax over
        m = jnp.where(fresh[:, None], -jnp.inf, m)
        l = jnp.where(fresh[:, None], 0.0, l)
        acc = jnp.where(fresh[:, None, None], 0.0, acc)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        p = jnp.exp(s - m_safe[..., None])
        alpha = jnp.exp(m - m_safe)
        l = alpha * l + jnp.sum(p, axis=-1)
        acc = alpha[..., None] * acc + jnp.einsum("pgk,pkd->pgd", p.astype(v.dtype), v,
                                                  preferred_element_type=jnp.float32)
        m = m_new
        slot = jnp.where(active, prog + seg, n_slots)  # inactive programs write nowhere
        slot_o = slot_o.at[slot].set(acc, mode="drop")
        slot_m = slot_m.at[slot].set(m, mode="drop")
        slot_l = slot_l.at[slot].set(l, mode="drop")
        slot_seg = slot_seg.at[slot].set(seg, mode="drop")
        return m, l, acc, jnp.where(active, seg, cur), slot_o, slot_m, slot_l, slot_seg

    carry = (jnp.full((n_prog, g), -jnp.inf, jnp.float32), jnp.zeros((n_prog, g), jnp.float32),
             jnp.zeros((n_prog, g, d), jnp.float32), jnp.full((n_prog,), -1, jnp.int32),
             jnp.zeros((n_slots, g, d), jnp.float32), jnp.full((n_slots, g), -jnp.inf, jnp.float32),
             jnp.zeros((n_slots, g), jnp.float32), jnp.full((n_slots,), -1, jnp.int32))
    *_, slot_o, slot_m, slot_l, slot_seg = lax.fori_loop(0, sched.steps, step, carry)
    out = merge(slot_o, slot_m, slot_l, slot_seg, n_seg)
    return out.reshape(b, hq, d).astype(q.dtype)
