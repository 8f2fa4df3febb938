"""Grouped attention (many small groups) as Pallas kernels with the Triton lowering (GPU).

A group's k and v (S rounded up to 16 times head_dim padded, up to 32768 elements: S <= 512 at
head_dim 64, 2048 at 16) stay in a program's registers, so there is no online softmax: each
(group, head) computes its full softmax row by row in one go. Sizes tuned for FlatFormer's
groups of 32..256 with head_dim 16..64; larger groups are correct but spill registers.

Programs. One program per block of `groups_per_block` groups, ALL heads: it loops over
(group, head) pairs with the head innermost. Inputs are [G, S, H, D]; one head's [S, D] tile is
strided by H*D, but consecutive iterations read the neighbouring D-wide column of the same rows,
so a group's rows are fetched from HBM once (the sectors the first head leaves in L2 serve the
next heads) and every byte of q, k, v is read once, every byte of out written once. The loop
over (group, head) is a plain scf.for, which Triton software-pipelines (num_stages). Within a
(group, head), k and v are loaded once and the queries are taken in tiles of `bq` rows
([bq, S] f32 score tiles; see DEFAULTS).

Shapes that are not powers of two (Triton tiles must be), with nothing padded in HBM: the keys
of a group are cut into power-of-two PIECES covering S rounded up to 16 (144 = 128 + 16,
200 -> 208 = 128 + 64 + 16), each piece its own k/v tile and score tile; the softmax runs over
all pieces at once. Query rows go in full tiles of bq (a loop) and a remainder cut the same way
(144 = 2 x 64 + 16). So a group of 144 computes 144 x 144 scores, not the 256 x 256 of padding
to a power of two: this workload is bound by memory and by exp throughput about equally (at
S = 128, 8 heads of 16, the exps take about as long as reading q, k, v and writing out once),
so padded scores would cost real time. Only the last piece can pass S (masked loads give zeros,
its padded keys get -inf logits, masked stores). head_dim is padded to a power of two >= 16 by
masked loads and stores.

Forward writes out and the row logsumexp lse [G, H, S] (float32, base 2: log2(e) * sm_scale is
folded into the logits so the kernel uses exp2). Backward (custom_vjp; residuals q, k, v, out,
lse): ONE kernel with the same programs recomputes p = exp2(s - lse) per query tile, takes
delta = rowsum(dO * O) from the out and dO tiles it loads anyway (no extra XLA pass), writes dq
per tile and accumulates dk, dv (per key piece) over the tiles in registers, written once per
(group, head). Groups are independent, so no atomics and no second kernel.
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
_MIN_TILE = 16               # Triton dots need M, N, K >= 16
_FWD_TILE_ELEMS = 16384      # f32 elements of one [bq, S16] forward score tile
_BWD_TILE_ELEMS = 8192       # the backward keeps p and dp/ds tiles live at once
_MAX_KV_ELEMS = 32768        # S16 * D_pad: k and v stay in registers for a whole (group, head)
# Rows (groups_per_block * S16) of each head a program handles; with H heads a program does
# H times that. 256 rows is 2 groups of 128 (or 1 of 144/256, 4 of 64, 8 of 32): a loop of
# 2 * H (group, head) iterations for the pipeliner, while G = 2048 groups of 128 still give
# 1024 programs (~8 per SM on 132 SMs: a small tail).
TARGET_ROWS = 256
MIN_PROGRAMS = 1024          # groups_per_block shrinks (never below 1) to keep this many programs


@dataclasses.dataclass(frozen=True)
class _Launch:
    bq: int       # query rows per full tile
    warps: int
    stages: int


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _round16(n: int) -> int:
    return -(-n // _MIN_TILE) * _MIN_TILE


def _pieces(start: int, n: int):
    """(start, size) power-of-two pieces, largest first, covering n rows (n a multiple of 16)."""
    out = []
    while n:
        size = 1 << (n.bit_length() - 1)
        out.append((start, size))
        start, n = start + size, n - size
    return tuple(out)


def _launch(group_size: int, d_pad: int, backward: bool) -> _Launch:
    """The rule behind DEFAULTS (chosen by reasoning about registers, not by measurement: the
    session that wrote this had no GPU).

    - bq: the largest power of two whose [bq, S16] f32 score tile has at most 16384 elements
      forward (64 a thread at 8 warps: group 128 is one tile of 128 rows, 144 is 2 x 64 + 16,
      256 is 4 x 64) and 8192 backward, which keeps p and dp/ds live together (128 -> 2 x 64).
    - warps: 8 when the score tile passes 8192 elements or k and v reach 16K elements
      (S16 * D_pad, e.g. 256 x 64), else 4 (small groups: more programs per SM); always 8
      backward (two more [S16, D] f32 accumulators).
    - stages 2: the loops prefetch the next tile's operands (a few KiB of shared memory at
      head_dim 16).
    """
    s16 = _round16(group_size)
    budget = _BWD_TILE_ELEMS if backward else _FWD_TILE_ELEMS
    bq = max(_MIN_TILE, min(_pow2(s16), 1 << ((budget // s16).bit_length() - 1)))
    big = bq * s16 > 8192 or s16 * d_pad >= 16384
    return _Launch(bq, 8 if (backward or big) else 4, 2)


# (group_size, D_pad) -> (forward, backward) launch parameters for the shapes FlatFormer uses
# (groups of 32..256, head_dim 16..64). Other shapes follow the same rule.
DEFAULTS = {(s, d): (_launch(s, d, False), _launch(s, d, True))
            for s in (32, 64, 128, 144, 256) for d in (16, 32, 64)}


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything static about one call (hashable: a nondiff argument of the custom_vjp)."""
    num_groups: int
    group_size: int
    heads: int
    head_dim: int
    s16: int           # group_size rounded up to 16: the rows the kernels may touch
    d_pad: int
    key_pieces: tuple  # ((start, size), ...) covering s16
    sm_scale: float
    groups_per_block: int
    fwd: _Launch
    bwd: _Launch
    interpret: bool

    @property
    def programs(self) -> int:
        return -(-self.num_groups // self.groups_per_block)


def default_groups_per_block(num_groups: int, group_size: int) -> int:
    gpb = max(1, TARGET_ROWS // _round16(group_size))
    return max(1, min(gpb, num_groups // MIN_PROGRAMS))


def _plan(q, sm_scale, groups_per_block, interpret) -> _Plan:
    g, s, h, d = q.shape
    s16, d_pad = _round16(s), _pow2(max(d, _MIN_TILE))
    if s16 * d_pad > _MAX_KV_ELEMS:
        raise NotImplementedError(
            f"pallas_gpu keeps a group's k and v in registers: group_size {s} x head_dim {d} "
            f"(padded {s16} x {d_pad}) exceeds {_MAX_KV_ELEMS} elements")
    if q.size >= 2 ** 31:
        raise NotImplementedError("pallas_gpu indexes with int32: inputs must have fewer than "
                                  "2**31 elements")
    if groups_per_block is None:
        groups_per_block = default_groups_per_block(g, s)
    if int(groups_per_block) < 1:
        raise ValueError(f"groups_per_block must be a positive integer, got {groups_per_block}")
    fwd, bwd = DEFAULTS.get((s, d_pad)) or (_launch(s, d_pad, False), _launch(s, d_pad, True))
    return _Plan(g, s, h, d, s16, d_pad, _pieces(0, s16), float(sm_scale), int(groups_per_block),
                 fwd, bwd, bool(interpret))


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

def _rows_mask(p: _Plan, r0: int, rows: int, cols: bool):
    """Mask of a [rows, D_pad] tile at static row r0 (or of [rows] when cols is False), or None
    when every access is inside the array. Full query tiles (traced r0) never pass S."""
    mask = None
    if isinstance(r0, int) and r0 + rows > p.group_size:
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


def _logits(p: _Plan, q, k, piece):
    """[bq, size] base-2 logits of one key piece: (q . k) * sm_scale * log2(e); -inf on keys
    past the group (only the last piece can have them)."""
    s = _dot(q, k, 1, 1) * (p.sm_scale * _LOG2E)
    start, size = piece
    if start + size > p.group_size:
        s = jnp.where((start + jnp.arange(size) < p.group_size)[None, :], s, -jnp.inf)
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
    """carry = body(r0, rows, carry) over the query rows: S // bq full tiles of bq (a loop, r0
    traced), then the remainder in power-of-two pieces (static r0; only the last may pass S)."""
    n_full = p.group_size // bq
    if n_full == 1:
        carry = body(0, bq, carry)
    elif n_full > 1:
        carry = lax.fori_loop(0, n_full,
                              lambda i, c: body(pl.multiple_of(i * bq, bq), bq, c), carry)
    for r0, rows in _pieces(n_full * bq, _round16(p.group_size - n_full * bq)):
        carry = body(r0, rows, carry)
    return carry


# ----------------------------------------------------------------------------- kernels

def _fwd_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref=None, *, p: _Plan):
    def pair(g, h):
        ks = [_load(k_ref, p, g, h, start, size) for start, size in p.key_pieces]
        vs = [_load(v_ref, p, g, h, start, size) for start, size in p.key_pieces]

        def tile(r0, rows, carry):
            q = _load(q_ref, p, g, h, r0, rows)
            ss = [_logits(p, q, k, piece) for k, piece in zip(ks, p.key_pieces)]
            m = functools.reduce(jnp.maximum, [jnp.max(s, axis=1) for s in ss])  # finite
            es = [jnp.exp2(s - m[:, None]) for s in ss]
            l = sum(jnp.sum(e, axis=1) for e in es)
            acc = sum(_dot(e.astype(v.dtype), v) for e, v in zip(es, vs))
            _store(o_ref, p, g, h, r0, acc / l[:, None])
            if lse_ref is None:  # not differentiated: no residual to write
                return carry
            view, mask = _lse_view(lse_ref, p, g, h, r0, rows)
            lse = m + jnp.log2(l)
            if mask is None:
                view[...] = lse
            else:
                plgpu.store(view, lse, mask=mask)
            return carry
        _for_each_tile(p, p.fwd.bq, tile, 0)

    _for_each_pair(p, pair)


def _bwd_kernel(q_ref, k_ref, v_ref, o_ref, do_ref, lse_ref, dq_ref, dk_ref, dv_ref, *, p: _Plan):
    def pair(g, h):
        ks = [_load(k_ref, p, g, h, start, size) for start, size in p.key_pieces]
        vs = [_load(v_ref, p, g, h, start, size) for start, size in p.key_pieces]

        def tile(r0, rows, carry):
            dks, dvs = carry
            q = _load(q_ref, p, g, h, r0, rows)
            do = _load(do_ref, p, g, h, r0, rows)
            o = _load(o_ref, p, g, h, r0, rows)
            view, mask = _lse_view(lse_ref, p, g, h, r0, rows)
            # Rows past S: lse = +inf makes their p exactly 0 (no contribution to dk, dv).
            lse = view[...] if mask is None else plgpu.load(view, mask=mask, other=jnp.inf)
            delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=1)
            dq, new_dks, new_dvs = None, [], []
            for k, v, dk, dv, piece in zip(ks, vs, dks, dvs, p.key_pieces):
                prob = jnp.exp2(_logits(p, q, k, piece) - lse[:, None])       # [rows, size]
                new_dvs.append(dv + _dot(prob.astype(do.dtype), do, 0, 0))    # p^T dO
                ds = prob * (_dot(do, v, 1, 1) - delta[:, None])             # dS, natural units
                ds = ds.astype(q.dtype)
                new_dks.append(dk + _dot(ds, q, 0, 0))                        # dS^T q
                dq_piece = _dot(ds, k)                                        # dS k
                dq = dq_piece if dq is None else dq + dq_piece
            _store(dq_ref, p, g, h, r0, dq * p.sm_scale)
            return tuple(new_dks), tuple(new_dvs)

        zeros = tuple(jnp.zeros((size, p.d_pad), jnp.float32) for _, size in p.key_pieces)
        dks, dvs = _for_each_tile(p, p.bwd.bq, tile, (zeros, zeros))
        for (start, _), dk, dv in zip(p.key_pieces, dks, dvs):
            _store(dk_ref, p, g, h, start, dk * p.sm_scale)
            _store(dv_ref, p, g, h, start, dv)

    _for_each_pair(p, pair)


# ----------------------------------------------------------------------------- calls

def _whole(p: _Plan):
    """The whole [G, S, H, D] array as one block, padded to [G, S16, H, D_pad] (a block may
    exceed the array; the kernels mask every access past S and D). Kernels index groups and
    heads themselves."""
    return pl.BlockSpec((p.num_groups, p.s16, p.heads, p.d_pad), lambda i: (0, 0, 0, 0))


def _whole_lse(p: _Plan):
    return pl.BlockSpec((p.num_groups, p.heads, p.s16), lambda i: (0, 0, 0))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _forward(p: _Plan, q, k, v, with_lse: bool = True):
    """out [G, S, H, D] and, with_lse, lse [G, H, S] (float32, base 2)."""
    out_specs, out_shape = [_whole(p)], [jax.ShapeDtypeStruct(q.shape, q.dtype)]
    if with_lse:
        out_specs.append(_whole_lse(p))
        out_shape.append(jax.ShapeDtypeStruct((p.num_groups, p.heads, p.group_size), jnp.float32))
    return pl.pallas_call(
        functools.partial(_fwd_kernel, p=p), grid=(p.programs,),
        in_specs=[_whole(p)] * 3, out_specs=out_specs, out_shape=out_shape,
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
    return _forward(p, q, k, v, False)[0]  # outside differentiation: no lse to write


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
    registers (S16 * D_pad > 32768, e.g. group_size > 512 at head_dim 64). Raises RuntimeError
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
