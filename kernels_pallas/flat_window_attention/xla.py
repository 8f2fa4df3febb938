"""Grouped attention in plain XLA: runs anywhere, the fallback of every platform.

q, k, v are turned heads-major once ([groups, heads, group_size, head_dim]), so every product is a
batched matmul with its batch dimensions leading (on CPU the product p·v in the token-major layout
ran several times slower than in this one). Each (group, head) gets its whole group_size x
group_size score matrix: groups are small (<= 1024 tokens), so there are no key tiles and no
online softmax. Products take the input dtype and accumulate in float32, as jax.nn's XLA
attention does; the softmax is float32, and the probabilities are rounded to v's dtype before
p·v.

Gradients: a custom_vjp that saves q, k, v, the output and the per-row logsumexp and recomputes
the probabilities in the backward (flash style), instead of jax autodiff, which keeps the
[groups, heads, group_size, group_size] probabilities of every layer alive until the backward
(1.2 GB per layer for 262,144 tokens in groups of 144 with 8 heads). On the 2-core CPU the two
took the same time within the noise of a shared machine (fwd+bwd, 16,384 tokens, groups of 64
and 144, 8 heads of 16, f32 and bf16), both faster than jax.nn.dot_product_attention
(implementation='xla') over the groups (experiments/bench/window.py measures it; on 8,192 tokens
in float32, experiments/bench/results/window_cpu_2026-11-28.json: 1.6x-1.7x faster forward, 1.1x
(groups of 64) and 1.4x (groups of 144) forward+backward).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _heads_major(x):
    return jnp.swapaxes(x, 1, 2)  # [g, n, h, d] <-> [g, h, n, d]


def _scores(q, k, sm_scale):
    """Scaled float32 logits [g, h, n, n] from heads-major q, k."""
    return jnp.einsum("ghqd,ghkd->ghqk", q, k, preferred_element_type=jnp.float32) * sm_scale


def _forward(q, k, v, sm_scale):
    """Heads-major in, heads-major out (in q's dtype) and the logsumexp [g, h, n, 1] (float32)."""
    s = _scores(q, k, sm_scale)
    m = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.exp(s - m)
    l = jnp.sum(e, axis=-1, keepdims=True)
    p = (e / l).astype(v.dtype)
    out = jnp.einsum("ghqk,ghkd->ghqd", p, v, preferred_element_type=jnp.float32)
    return out.astype(q.dtype), m + jnp.log(l)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q, k, v, sm_scale):
    return _forward(q, k, v, sm_scale)[0]


def _attention_fwd(q, k, v, sm_scale):
    out, lse = _forward(q, k, v, sm_scale)
    return out, (q, k, v, out, lse)


def _attention_bwd(sm_scale, residuals, d_out):
    q, k, v, out, lse = residuals
    p = jnp.exp(_scores(q, k, sm_scale) - lse)                               # float32
    f32 = functools.partial(jnp.einsum, preferred_element_type=jnp.float32)
    dv = f32("ghqk,ghqd->ghkd", p.astype(d_out.dtype), d_out)
    dp = f32("ghqd,ghkd->ghqk", d_out, v)
    # sum_k p * dp = d_out · out per row (the softmax backward without an n x n reduction)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    ds = (p * (dp - delta) * sm_scale).astype(q.dtype)
    dq = f32("ghqk,ghkd->ghqd", ds, k)
    dk = f32("ghqk,ghqd->ghkd", ds, q)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(q, k, v, *, sm_scale, groups_per_block=None, interpret=False):
    del groups_per_block, interpret  # no kernel: XLA fuses and tiles as it likes
    out = _attention(_heads_major(q), _heads_major(k), _heads_major(v), float(sm_scale))
    return _heads_major(out)
