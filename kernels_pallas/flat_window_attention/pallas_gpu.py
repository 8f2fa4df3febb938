"""Grouped attention (many small groups) as Pallas kernels with the Triton lowering (GPU).

A group of S <= 512 tokens fits a program's registers whole, so there is no online softmax:
each (group, head) computes its full softmax row by row in one go.

Programs. One program per block of `groups_per_block` groups, ALL heads: it loops over
(group, head) pairs with the head innermost. Inputs are [G, S, H, D]; one head's [S, D] tile is
strided by H*D, but consecutive iterations read the neighbouring D-wide column of the same rows,
so a group's rows are fetched from HBM once (the sectors the first head leaves in L2 serve the
next heads) and every byte of q, k, v is read once, every byte of out written once. The loop
over (group, head) is a plain scf.for, which Triton software-pipelines (num_stages): the next
pair's loads are in flight while this one computes. Within a (group, head), k and v are loaded
once and the queries are taken in tiles of `bq` rows ([bq, S] f32 score tiles; see DEFAULTS),
by an inner loop.

Padding inside the kernel (nothing is padded in HBM): Triton wants power-of-two tiles, so S is
padded to S_pad = next power of two >= 16 (e.g. 144 -> 256) and head_dim to D_pad = next power
of two >= 16, by masked loads (zeros) and masked stores; padded keys get -inf logits. Query tiles
that lie wholly in the padding are skipped (144 rows = 5 tiles of 32, not 8).

Forward writes out and the row logsumexp lse [G, H, S] (float32, base 2: log2(e) * sm_scale is
folded into the logits so the kernel uses exp2). Backward (custom_vjp; residuals q, k, v, out,
lse): ONE kernel with the same programs recomputes p = exp2(s - lse) per query tile, takes
delta = rowsum(dO * O) from the out and dO tiles it loads anyway (no extra XLA pass), writes dq
per tile and accumulates dk, dv over the tiles in registers, written once per (group, head).
Groups are independent, so no atomics and no second kernel.
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
from jax.experimental.pallas import triton as plgpu

__all__ = ["attention", "DEFAULTS", "default_groups_per_block"]

# The Triton compiler-params class is `CompilerParams` in jax 0.10.2 and later; older releases
# called it `TritonCompilerParams` (and older still took a dict, see _params).
_PARAMS_CLS = getattr(plgpu, "CompilerParams", None) or getattr(plgpu, "TritonCompilerParams", None)
_LOG2E = math.log2(math.e)
_MIN_TILE = 16          # Triton dots need M, N, K >= 16
_MAX_TILE_ELEMS = 8192  # f32 elements of one [bq, S_pad] score tile
_MAX_KV_ELEMS = 32768   # S_pad * D_pad: k and v stay in registers for a whole (group, head)
# Rows (groups_per_block * S_pad) of each head a program handles; with H heads a program does
# H times that. 256 rows is 2 groups of 128 (or 1 of 144/256, 4 of 64, 8 of 32): a loop of
# 2 * H (group, head) iterations for the pipeliner, while G = 2048 groups of 128 still give
# 1024 programs (~8 per SM on 132 SMs: a small tail).
TARGET_ROWS = 256
MIN_PROGRAMS = 1024     # groups_per_block shrinks (never below 1) to keep this many programs


@dataclasses.dataclass(frozen=True)
class _Launch:
    bq: int       # query rows per tile
    warps: int
    stages: int


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _launch(s_pad: int, d_pad: int, backward: bool) -> _Launch:
    """The rule behind DEFAULTS (chosen by reasoning about registers, not by measurement: the
    session that wrote this had no GPU).

    - bq: a [bq, S_pad] f32 score tile of at most 8192 elements (64 per thread at 4 warps),
      as the FlashAttention-2 Triton kernels use (128 x 64): S_pad 128 -> 64-row tiles, 256 -> 32.
    - warps: 4 forward (score tile + k, v of the group + a [bq, D] accumulator); 8 backward,
      which keeps p, dp/ds and two [S_pad, D] f32 accumulators live; 8 forward too once k and v
      alone reach 16K elements (S_pad * D_pad), e.g. 256 x 64.
    - stages 2: the (group, head) loop prefetches the next pair's k, v and q tiles (a few KiB
      of shared memory at head_dim 16).
    """
    bq = max(_MIN_TILE, min(s_pad, _MAX_TILE_ELEMS // s_pad))
    big = s_pad * d_pad >= 16384
    return _Launch(bq, 8 if (backward or big) else 4, 2)


# (S_pad, D_pad) -> (forward, backward) launch parameters, for the shapes FlatFormer uses
# (group 32..256 -> S_pad 32..256; head_dim 16..64). Other shapes follow the same rule.
DEFAULTS = {(s, d): (_launch(s, d, False), _launch(s, d, True))
            for s in (16, 32, 64, 128, 256) for d in (16, 32, 64)}


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything static about one call (hashable: a nondiff argument of the custom_vjp)."""
    num_groups: int
    group_size: int
    heads: int
    head_dim: int
    s_pad: int
    d_pad: int
    sm_scale: float
    groups_per_block: int
    fwd: _Launch
    bwd: _Launch
    interpret: bool

    @property
    def programs(self) -> int:
        return -(-self.num_groups // self.groups_per_block)


def default_groups_per_block(num_groups: int, group_size: int) -> int:
    gpb = max(1, TARGET_ROWS // _pow2(max(group_size, _MIN_TILE)))
    return max(1, min(gpb, num_groups // MIN_PROGRAMS))


def _plan(q, sm_scale, groups_per_block, interpret) -> _Plan:
    g, s, h, d = q.shape
    s_pad, d_pad = _pow2(max(s, _MIN_TILE)), _pow2(max(d, _MIN_TILE))
    if s_pad * d_pad > _MAX_KV_ELEMS:
        raise NotImplementedError(
            f"pallas_gpu keeps a group's k and v in registers: group_size {s} x head_dim {d} "
            f"(padded {s_pad} x {d_pad}) exceeds {_MAX_KV_ELEMS} elements")
    if q.size >= 2 ** 31:
        raise NotImplementedError("pallas_gpu indexes with int32: inputs must have < 2**31 elements")
    if groups_per_block is None:
        groups_per_block = default_groups_per_block(g, s)
    if int(groups_per_block) < 1:
        raise ValueError(f"groups_per_block must be a positive integer, got {groups_per_block}")
    fwd, bwd = DEFAULTS.get((s_pad, d_pad)) or (_launch(s_pad, d_pad, False),
                                                 _launch(s_pad, d_pad, True))
    return _Plan(g, s, h, d, s_pad, d_pad, float(sm_scale), int(groups_per_block), fwd, bwd,
                 bool(interpret))


def _params(launch: _Launch):
    if _PARAMS_CLS is None:  # very old jax: dict form
        return dict(triton=dict(num_warps=launch.warps, num_stages=launch.stages))
    return _PARAMS_CLS(num_warps=launch.warps, num_stages=launch.stages)


def _dot(a, b, contract_a=1, contract_b=0):
    """Matmul on bf16/f16 operands (tensor cores) with float32 accumulation; float32 operands
    ask for full precision explicitly so no jax version silently picks TF32."""
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                           precision=precision, preferred_element_type=jnp.float32)


# ----------------------------------------------------------------------------- memory access

def _rows_mask(p: _Plan, r0, rows: int, cols: bool):
    """Mask of a [rows, D_pad] tile starting at row r0 (or of [rows] when cols is False), or
    None when every access is inside the array. Only tiles that may pass the end of the group
    (the whole-group k/v tile, or query tiles when bq does not divide S) pay for the row mask."""
    mask = None
    if rows > p.group_size or p.group_size % rows:
        mask = (r0 + jnp.arange(rows)) < p.group_size
        if cols:
            mask = mask[:, None]
    if cols and p.d_pad > p.head_dim:
        c = (jnp.arange(p.d_pad) < p.head_dim)[None, :]
        mask = c if mask is None else mask & c
    return mask


def _load(ref, p: _Plan, g, h, r0, rows: int):
    """Rows [r0, r0 + rows) of (group g, head h) as [rows, D_pad]; zeros outside the array."""
    view = ref.at[g, pl.ds(r0, rows), h, pl.ds(0, p.d_pad)]
    mask = _rows_mask(p, r0, rows, True)
    if mask is None:
        return view[...]
    return plgpu.load(view, mask=mask, other=0.0)


def _store(ref, p: _Plan, g, h, r0, value):
    view = ref.at[g, pl.ds(r0, value.shape[0]), h, pl.ds(0, p.d_pad)]
    mask = _rows_mask(p, r0, value.shape[0], True)
    if mask is None:
        view[...] = value.astype(ref.dtype)
    else:
        plgpu.store(view, value.astype(ref.dtype), mask=mask)


def _lse_view(ref, p: _Plan, g, h, r0, rows: int):
    return ref.at[g, h, pl.ds(r0, rows)], _rows_mask(p, r0, rows, False)


def _logits(p: _Plan, q, k):
    """[bq, S_pad] base-2 logits: (q . k) * sm_scale * log2(e), -inf on padded keys."""
    s = _dot(q, k, 1, 1) * (p.sm_scale * _LOG2E)
    if p.s_pad > p.group_size:
        s = jnp.where((jnp.arange(p.s_pad) < p.group_size)[None, :], s, -jnp.inf)
    return s


def _for_each_pair(p: _Plan, body):
    """Runs body(group, head) for this program's groups (the last program may have fewer)."""
    first = pl.program_id(0) * p.groups_per_block
    n = jnp.minimum(p.groups_per_block, p.num_groups - first)

    def step(t, carry):
        body(first + lax.div(t, p.heads), lax.rem(t, p.heads))
        return carry
    lax.fori_loop(0, n * p.heads, step, 0)


def _for_each_tile(p: _Plan, bq: int, body, carry):
    """carry = body(r0, carry) for the query tiles [r0, r0 + bq) that hold real rows (144 rows
    in tiles of 32: 5 tiles, not the 8 of S_pad). A loop rather than unrolled tiles: smaller
    programs for Triton (and for interpret mode)."""
    n = -(-p.group_size // bq)
    if n == 1:
        return body(0, carry)
    return lax.fori_loop(0, n, lambda i, c: body(pl.multiple_of(i * bq, bq), c), carry)


# ----------------------------------------------------------------------------- kernels

def _fwd_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, *, p: _Plan):
    bq = p.fwd.bq

    def pair(g, h):
        k = _load(k_ref, p, g, h, 0, p.s_pad)
        v = _load(v_ref, p, g, h, 0, p.s_pad)

        def tile(r0, carry):
            s = _logits(p, _load(q_ref, p, g, h, r0, bq), k)
            m = jnp.max(s, axis=1)                 # finite: every row has a real key
            e = jnp.exp2(s - m[:, None])
            l = jnp.sum(e, axis=1)
            o = _dot(e.astype(v.dtype), v) / l[:, None]
            _store(o_ref, p, g, h, r0, o)
            view, mask = _lse_view(lse_ref, p, g, h, r0, bq)
            lse = m + jnp.log2(l)
            if mask is None:
                view[...] = lse
            else:
                plgpu.store(view, lse, mask=mask)
            return carry
        _for_each_tile(p, bq, tile, 0)

    _for_each_pair(p, pair)


def _bwd_kernel(q_ref, k_ref, v_ref, o_ref, do_ref, lse_ref, dq_ref, dk_ref, dv_ref, *, p: _Plan):
    bq = p.bwd.bq

    def pair(g, h):
        k = _load(k_ref, p, g, h, 0, p.s_pad)
        v = _load(v_ref, p, g, h, 0, p.s_pad)

        def tile(r0, carry):
            dk, dv = carry
            q = _load(q_ref, p, g, h, r0, bq)
            do = _load(do_ref, p, g, h, r0, bq)
            o = _load(o_ref, p, g, h, r0, bq)
            view, mask = _lse_view(lse_ref, p, g, h, r0, bq)
            # Padded query rows: lse = +inf makes their p exactly 0 (no contribution to dk, dv).
            lse = view[...] if mask is None else plgpu.load(view, mask=mask, other=jnp.inf)
            prob = jnp.exp2(_logits(p, q, k) - lse[:, None])                  # [bq, S_pad]
            delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=1)
            dv = dv + _dot(prob.astype(do.dtype), do, 0, 0)                   # p^T dO
            ds = prob * (_dot(do, v, 1, 1) - delta[:, None])                 # dS (natural units)
            ds = ds.astype(q.dtype)
            _store(dq_ref, p, g, h, r0, _dot(ds, k) * p.sm_scale)
            return dk + _dot(ds, q, 0, 0), dv                                 # dS^T q
        zeros = jnp.zeros((p.s_pad, p.d_pad), jnp.float32)
        dk, dv = _for_each_tile(p, bq, tile, (zeros, zeros))
        _store(dk_ref, p, g, h, 0, dk * p.sm_scale)
        _store(dv_ref, p, g, h, 0, dv)

    _for_each_pair(p, pair)


# ----------------------------------------------------------------------------- calls

def _whole(p: _Plan):
    """The whole [G, S, H, D] array as one block, padded to [G, S_pad, H, D_pad] (a block may
    exceed the array; the kernels mask every access past S and D). Kernels index groups and
    heads themselves."""
    return pl.BlockSpec((p.num_groups, p.s_pad, p.heads, p.d_pad), lambda i: (0, 0, 0, 0))


def _whole_lse(p: _Plan):
    return pl.BlockSpec((p.num_groups, p.heads, p.s_pad), lambda i: (0, 0, 0))


@functools.partial(jax.jit, static_argnums=0)
def _forward(p: _Plan, q, k, v):
    """out [G, S, H, D] and lse [G, H, S] (float32, base 2)."""
    lse_shape = (p.num_groups, p.heads, p.group_size)
    return pl.pallas_call(
        functools.partial(_fwd_kernel, p=p), grid=(p.programs,),
        in_specs=[_whole(p)] * 3, out_specs=[_whole(p), _whole_lse(p)],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct(lse_shape, jnp.float32)],
        compiler_params=_params(p.fwd), interpret=p.interpret, name="grouped_attention_fwd",
    )(q, k, v)


@functools.partial(jax.jit, static_argnums=0)
def _backward(p: _Plan, q, k, v, out, lse, do):
    return pl.pallas_call(
        functools.partial(_bwd_kernel, p=p), grid=(p.programs,),
        in_specs=[_whole(p)] * 5 + [_whole_lse(p)], out_specs=[_whole(p)] * 3,
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype)] * 3,
        compiler_params=_params(p.bwd), interpret=p.interpret, name="grouped_attention_bwd",
    )(q, k, v, out, do.astype(q.dtype), lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(p: _Plan, q, k, v):
    return _forward(p, q, k, v)[0]


def _attention_fwd(p, q, k, v):
    out, lse = _forward(p, q, k, v)
    return out, (q, k, v, out, lse)


def _attention_bwd(p, res, do):
    return _backward(p, *res, do)


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(q, k, v, *, sm_scale: float, groups_per_block: Optional[int] = None,
              interpret: bool = False):
    """Grouped attention on Pallas/Triton; q, k, v [num_groups, group_size, heads, head_dim].

    Raises NotImplementedError for inputs the kernel does not take (dispatch then falls through
    to xla): dtypes other than float32/bfloat16/float16, mixed dtypes, groups too large for
    registers (S_pad * D_pad > 32768, e.g. group_size > 512 at head_dim 64). Raises RuntimeError
    when asked to compile for a GPU that is not there.
    """
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"pallas_gpu: q, k, v must all be [num_groups, group_size, heads, "
                         f"head_dim]; got {q.shape}, {k.shape}, {v.shape}")
    if not (q.dtype == k.dtype == v.dtype):
        raise NotImplementedError(f"pallas_gpu needs q, k, v of one dtype; got {q.dtype}, "
                                  f"{k.dtype}, {v.dtype}")
    if q.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
        raise NotImplementedError(f"pallas_gpu takes float32, bfloat16 and float16, not {q.dtype}")
    p = _plan(q, sm_scale, groups_per_block, interpret)
    if not interpret and jax.default_backend() != "gpu":
        raise RuntimeError(f"pallas_gpu compiles Triton kernels for a GPU, but jax's backend is "
                           f"{jax.default_backend()!r}; pass interpret=True to run it on CPU, "
                           f"or use implementation='xla'")
    return _attention(p, q, k, v)
