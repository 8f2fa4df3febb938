"""Flash attention as Pallas kernels with the Triton lowering (GPU): forward, dq, dk/dv.

Forward: grid (q blocks, batch, q head); each program keeps one q tile and walks the kv tiles with
an online softmax in base 2 (log2(e) folded into the scale), writing the output and the row
log-sum-exp (lse). Backward (custom_vjp, recomputation; residuals q, k, v, out, lse, all O(length)):
delta = rowsum(dO*O) in plain XLA, then two kernels that never write the same memory (no atomics):
  dq:    grid (q blocks, batch, q head); loop over kv tiles.
  dk/dv: grid (kv blocks, batch, kv head); loop over q tiles *and* the q heads that share this kv
         head (GQA/MQA), so dk/dv of a kv head accumulate in registers and are written once.
Tile skipping: loop bounds skip fully masked tiles. Causal: forward/dq stop at the diagonal,
dk/dv start there; only the tiles that straddle the diagonal or the end of kv (padding) pay for
the positional element mask. Segment ids: `common.segment_tile_ranges` gives, per (batch, q tile),
the kv tiles [lo, hi) whose ids can meet the tile's (and per (batch, kv tile) the q tiles), computed
in XLA and passed as two small int32 inputs whose block is the batch element's row; each program
reads its own scalars and intersects them with the causal bounds, so a key-padding mask (folded
into the kv ids) or packed sequences skip the tiles they mask. Tiles inside the range still get
the segment element mask. Without segment ids there are no such inputs and the code is as before.
`tile_visits` counts the tile steps each kernel runs (a static flag adds a counter to the loop
carry and one int32 output per program; normal calls have neither).
Triton wants power-of-two tiles: lengths are padded to the tiles, head_dim to a power of two >= 16.
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

from kernels_pallas.blockwise_attention.common import (BlockSizes, pad_axis, round_up,
                                                       segment_tile_ranges)

__all__ = ["attention", "tile_visits", "DEFAULTS"]

# The Triton compiler-params class is `CompilerParams` in jax 0.10.2 and on jax's main branch;
# older releases called it `TritonCompilerParams` (and older still took a dict, see _params).
_PARAMS_CLS = getattr(plgpu, "CompilerParams", None) or getattr(plgpu, "TritonCompilerParams", None)
_LOG2E = math.log2(math.e)
_MIN_TILE = 16        # Triton dots need M, N, K >= 16
_SMEM_BUDGET = 160 * 1024  # bytes of pipelined tiles we allow per program (H100/H200 have 227 KiB)


@dataclasses.dataclass(frozen=True)
class _Defaults:
    """Default tiles and launch parameters for one padded head_dim (see DEFAULTS)."""
    fwd: tuple      # (block_q, block_kv, num_warps, num_stages)
    dkv: tuple      # (block_q streamed, block_kv resident, num_warps, num_stages)
    dq: tuple       # (block_q resident, block_kv streamed, num_warps, num_stages)


# Keyed by head_dim padded to a power of two; habits of the FlashAttention-2 Triton kernels.
# - Forward: 128 query rows per program. kv tile 128 up to d=128 (the [128, d] f32 accumulator
#   and the [128, 128] score tile fit in registers with 4 warps at d<=64, 8 at d=128; k/v tiles
#   are 16-32 KiB per stage, so 3 stages at d<=64, 2 at d=128). d=256 halves both tiles: a
#   [128, 256] f32 accumulator would spill and 128x256 k/v tiles overflow SMEM at 2 stages.
# - Backward: the resident tile (kv for dk/dv, q for dq) is the larger one and the streamed tile
#   the smaller, as in the Triton tutorial. dk/dv keep two f32 accumulators [block_kv, d], so its
#   resident tile shrinks as d grows (128 -> 64 -> 32) to stay near 128 registers/thread at
#   8 warps; dq keeps one [block_q, d] accumulator plus the resident q and dO tiles.
# Chosen by these rules, not by measurement (the session that wrote them had no GPU). BlockSizes
# overrides the tiles; stages (then the default streamed tile) shrink to fit _SMEM_BUDGET, which
# matters for float32 inputs.
DEFAULTS = {
    16: _Defaults((128, 128, 4, 3), (64, 128, 8, 3), (128, 64, 8, 3)),
    32: _Defaults((128, 128, 4, 3), (64, 128, 8, 3), (128, 64, 8, 3)),
    64: _Defaults((128, 128, 4, 3), (64, 128, 8, 3), (128, 64, 8, 3)),
    128: _Defaults((128, 128, 8, 2), (64, 64, 8, 2), (128, 64, 8, 2)),
    256: _Defaults((64, 64, 8, 2), (64, 32, 8, 2), (32, 64, 8, 2)),
}


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything static about one call: shapes, tiles, launch parameters (hashable for jit)."""
    q_len: int
    kv_len: int
    head_dim: int
    d_pad: int
    lq_pad: int
    lk_pad: int
    group: int
    causal: bool
    segments: bool
    sm_scale: float
    fwd: tuple     # (block_q, block_kv, warps, stages) as in _Defaults
    dkv: tuple
    dq: tuple
    interpret: bool
    count: bool = False  # each kernel also outputs its tile steps per program (tile_visits only)

    @property
    def offset(self):  # end-aligned causal: query i sees key j iff j <= i + offset
        return self.kv_len - self.q_len


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _smem(rows_streamed, stages, resident_tiles, rows_resident, d, itemsize):
    """Rough SMEM bytes: `stages` buffers of two streamed tiles plus the resident tiles."""
    return (stages * 2 * rows_streamed + resident_tiles * rows_resident) * d * itemsize


def _plan(q, k, causal, segments, sm_scale, block_sizes, interpret) -> _Plan:
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    d_pad = max(_MIN_TILE, _pow2(d))
    dflt = DEFAULTS[d_pad]
    user = block_sizes or BlockSizes()
    for f in dataclasses.fields(user):
        v = getattr(user, f.name)
        if v is not None and (v < _MIN_TILE or v & (v - 1)):
            raise NotImplementedError(f"pallas_gpu needs power-of-two tiles >= {_MIN_TILE} "
                                      f"(Triton); got BlockSizes.{f.name}={v}")
    if b > 65535 or hq > 65535:
        raise NotImplementedError("pallas_gpu: batch and heads must be <= 65535 (CUDA grid limit)")
    itemsize = jnp.dtype(q.dtype).itemsize

    def tiles(default, want_q, want_kv, kind):
        # BlockSizes.resolve fills unset fields and caps a tile at the length rounded up to 16;
        # rounding that up to a power of two keeps Triton happy and never exceeds a pow2 request.
        r = BlockSizes(want_q, want_kv).resolve(default[0], default[1], lq, lk, _MIN_TILE)
        bq, bk, warps, stages = _pow2(r.block_q), _pow2(r.block_kv), default[2], default[3]
        # Which tile streams through the loop, and how many tiles stay resident.
        streamed_is_q, resident = {"fwd": (False, 1), "dkv": (True, 2), "dq": (False, 2)}[kind]
        user_set = want_q if streamed_is_q else want_kv
        while True:
            st, rs = (bq, bk) if streamed_is_q else (bk, bq)
            while stages > 1 and _smem(st, stages, resident, rs, d_pad, itemsize) > _SMEM_BUDGET:
                stages -= 1
            if (_smem(st, stages, resident, rs, d_pad, itemsize) <= _SMEM_BUDGET
                    or user_set or st <= _MIN_TILE):
                return (bq, bk, warps, stages)
            # Still too big (float32, large head_dim): halve the default streamed tile.
            bq, bk = (bq // 2, bk) if streamed_is_q else (bq, bk // 2)

    fwd = tiles(dflt.fwd, user.block_q, user.block_kv, "fwd")
    bwd_q, bwd_kv = user.block_q_bwd or user.block_q, user.block_kv_bwd or user.block_kv
    dkv = tiles(dflt.dkv, bwd_q, bwd_kv, "dkv")
    dq = tiles(dflt.dq, bwd_q, bwd_kv, "dq")
    # One padded length serves every kernel: all tiles are powers of two, so the largest divides.
    lq_pad = round_up(lq, max(fwd[0], dkv[0], dq[0]))
    lk_pad = round_up(lk, max(fwd[1], dkv[1], dq[1]))
    return _Plan(lq, lk, d, d_pad, lq_pad, lk_pad, hq // hkv, bool(causal), segments,
                 float(sm_scale), fwd, dkv, dq, bool(interpret))


def _params(tiles):
    warps, stages = tiles[2], tiles[3]
    if _PARAMS_CLS is None:  # very old jax: dict form
        return dict(triton=dict(num_warps=warps, num_stages=stages))
    return _PARAMS_CLS(num_warps=warps, num_stages=stages)


def _dot(a, b, contract_a=1, contract_b=0):
    """Matmul on bf16/f16 operands (tensor cores) with float32 accumulation; float32 operands
    ask for full precision explicitly so no jax version silently picks TF32."""
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                           precision=precision, preferred_element_type=jnp.float32)


def _keep(p: _Plan, rows, cols, q_seg, k_seg, positional: bool):
    """Boolean visibility of a tile (rows/cols/ids already shaped to broadcast), or None.

    `positional`: this tile may straddle the causal diagonal or the end of kv (padding); tiles
    strictly inside skip those compares. Segment equality applies to every tile.
    """
    keep = None
    if positional:
        if p.lk_pad > p.kv_len:
            keep = cols < p.kv_len
        if p.causal:
            c = cols <= rows + p.offset
            keep = c if keep is None else keep & c
    if q_seg is not None:
        s = q_seg == k_seg
        keep = s if keep is None else keep & s
    return keep


def _loop(p: _Plan, lo, hi, body, carry):
    """fori_loop that is not even traced when its range is statically empty. With p.count the
    carry is (carry, steps) and each step adds one to steps."""
    if isinstance(lo, int) and isinstance(hi, int) and hi <= lo:
        return carry
    if p.count:
        inner = body
        body = lambda j, c: (inner(j, c[0]), c[1] + 1)
    return lax.fori_loop(lo, hi, body, carry)


def _i32(x):
    # Strongly typed int32 scalars: the Triton lowering of a scalar select mistypes a weak
    # Python-int literal as the predicate's i1 (jax 0.10.2).
    return jnp.int32(x) if isinstance(x, int) else x


def _kv_range(p: _Plan, qi, bq, bk):
    """For q tile qi: kv tiles [0, n_full) need no positional mask, [n_full, n_hi) do."""
    n_kv = pl.cdiv(p.kv_len, bk)  # tiles past kv_len (padding for other kernels' tiles) skipped
    if not p.causal:
        n_full, n_hi = p.kv_len // bk, n_kv
    else:
        # Last row of the tile sees keys < qi*bq + bq + offset; first row keys <= qi*bq + offset.
        # Both clamped at 0 so lax.div (truncating) acts as floor on non-negative numbers.
        n_hi = jnp.minimum(lax.div(jnp.maximum(qi * bq + bq + p.offset, 0) + bk - 1, bk), n_kv)
        n_full = jnp.minimum(lax.div(jnp.maximum(qi * bq + p.offset + 1, 0), bk), p.kv_len // bk)
    if p.lq_pad // bq > pl.cdiv(p.q_len, bq):
        # q tiles made only of padding (there for other kernels' larger tiles) compute nothing.
        n_hi = jnp.where(qi * bq >= p.q_len, jnp.int32(0), _i32(n_hi))
    if isinstance(n_hi, int):
        return n_full, n_hi
    return jnp.minimum(_i32(n_full), n_hi), n_hi


def _seg_kv_range(p: _Plan, qi, bq, bk, lo_ref, hi_ref):
    """_kv_range intersected with the segment range: kv tiles [lo, mid) plain, [mid, hi) masked."""
    n_full, n_hi = _kv_range(p, qi, bq, bk)
    if lo_ref is None:
        return 0, n_full, n_hi
    lo = lo_ref[qi]
    hi = jnp.maximum(jnp.minimum(hi_ref[qi], _i32(n_hi)), lo)
    return lo, jnp.minimum(jnp.maximum(_i32(n_full), lo), hi), hi


def _q_range(p: _Plan, kj, bq, bk):
    """For kv tile kj: q tiles [lo, mid) need the positional mask, [mid, n_q) do not."""
    n_q = pl.cdiv(p.q_len, bq)  # fully padded q tiles have dO = 0: nothing to add
    lo, mid, n_q_i32 = jnp.int32(0), jnp.int32(0), jnp.int32(n_q)
    if p.causal:
        # First q tile with a row that sees key kj*bk; first tile whose every row sees the tile.
        lo = jnp.minimum(lax.div(jnp.maximum(kj * bk - p.offset, 0), bq), n_q)
        mid = lax.div(jnp.maximum(kj * bk + bk - 1 - p.offset, 0) + bq - 1, bq)
        mid = jnp.minimum(jnp.maximum(mid, lo), n_q)
    if p.lk_pad > p.kv_len:
        # A kv tile past kv_len does nothing; one straddling it masks every q tile.
        lo = jnp.where(kj * bk >= p.kv_len, n_q_i32, lo)
        mid = jnp.where((kj + 1) * bk > p.kv_len, n_q_i32, mid)
    if not p.causal and p.lk_pad == p.kv_len:
        return 0, 0, n_q  # static: the masked loop vanishes at trace time
    return lo, mid, n_q


def _seg_q_range(p: _Plan, kj, bq, bk, lo_ref, hi_ref):
    """_q_range intersected with the segment range: q tiles [lo, mid) masked, [mid, hi) plain."""
    lo, mid, n_q = _q_range(p, kj, bq, bk)
    if lo_ref is None:
        return lo, mid, n_q
    lo = jnp.maximum(_i32(lo), lo_ref[kj])
    hi = jnp.maximum(jnp.minimum(_i32(n_q), hi_ref[kj]), lo)
    return lo, jnp.minimum(jnp.maximum(_i32(mid), lo), hi), hi


def _split(p: _Plan, refs, n_in):
    """(inputs, segment refs (q ids, kv ids, range lo, range hi) or Nones, outputs, count ref)."""
    ins, rest = refs[:n_in], refs[n_in:]
    segs = (None,) * 4
    if p.segments:
        segs, rest = rest[:4], rest[4:]
    if p.count:
        return ins, segs, rest[:-1], rest[-1]
    return ins, segs, rest, None


def _qb(p: _Plan, i, bq):
    """The q tile grid step i handles: causal runs the last (busiest) tiles first (even tail)."""
    return p.lq_pad // bq - 1 - i if p.causal else i


def _counted(p: _Plan, carry):
    return (carry, jnp.int32(0)) if p.count else carry


def _store_count(p: _Plan, carry, n_ref):
    """The loop carry without its step counter, which goes to this program's count output."""
    if not p.count:
        return carry
    n_ref[...] = carry[1]
    return carry[0]


def _fwd_kernel(*refs, p: _Plan):
    (q_ref, k_ref, v_ref), (qs_ref, ks_ref, lo_ref, hi_ref), (o_ref, lse_ref), n_ref = \
        _split(p, refs, 3)
    bq, bk = p.fwd[0], p.fwd[1]
    qi = _qb(p, pl.program_id(0), bq)
    # Scale (with log2 e) folded into the resident q tile once; the dot stays in the input dtype.
    q = (q_ref[...].astype(jnp.float32) * (p.sm_scale * _LOG2E)).astype(q_ref.dtype)
    rows = (qi * bq + jnp.arange(bq))[:, None]
    q_seg = None if qs_ref is None else qs_ref[...][:, None]

    def body(positional):
        def step(j, carry):
            acc, m, l = carry
            kv = pl.ds(j * bk, bk)
            k, v = k_ref[kv, :], v_ref[kv, :]
            s = _dot(q, k, 1, 1)                                  # [bq, bk], base-2 logits
            keep = _keep(p, rows, (j * bk + jnp.arange(bk))[None, :], q_seg,
                         None if ks_ref is None else ks_ref[kv][None, :], positional)
            if keep is not None:
                s = jnp.where(keep, s, -jnp.inf)
            m_new = jnp.maximum(m, jnp.max(s, axis=1))
            m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new)     # no -inf - -inf = NaN
            alpha = jnp.exp2(m - m_use)
            e = jnp.exp2(s - m_use[:, None])
            l = l * alpha + jnp.sum(e, axis=1)
            acc = acc * alpha[:, None] + _dot(e.astype(v.dtype), v)
            return acc, m_new, l
        return step

    lo, mid, hi = _seg_kv_range(p, qi, bq, bk, lo_ref, hi_ref)
    carry = (jnp.zeros((bq, p.d_pad), jnp.float32), jnp.full((bq,), -jnp.inf, jnp.float32),
             jnp.zeros((bq,), jnp.float32))
    carry = _loop(p, lo, mid, body(False), _counted(p, carry))
    acc, m, l = _store_count(p, _loop(p, mid, hi, body(True), carry), n_ref)
    # A row that saw no key has l == 0: output 0 and lse = +inf, so the backward's
    # exp2(s - lse) is exactly 0 for it (zero gradients, no NaN).
    seen = l > 0
    l_safe = jnp.where(seen, l, 1.0)
    o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(seen, m + jnp.log2(l_safe), jnp.inf)


def _dq_kernel(*refs, p: _Plan):
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), (qs_ref, ks_ref, lo_ref, hi_ref), \
        (dq_ref,), n_ref = _split(p, refs, 6)
    bq, bk = p.dq[0], p.dq[1]
    qi = _qb(p, pl.program_id(0), bq)
    q = (q_ref[...].astype(jnp.float32) * (p.sm_scale * _LOG2E)).astype(q_ref.dtype)
    do, lse, delta = do_ref[...], lse_ref[...], delta_ref[...]
    rows = (qi * bq + jnp.arange(bq))[:, None]
    q_seg = None if qs_ref is None else qs_ref[...][:, None]

    def body(positional):
        def step(j, dq):
            kv = pl.ds(j * bk, bk)
            k, v = k_ref[kv, :], v_ref[kv, :]
            s = _dot(q, k, 1, 1)
            keep = _keep(p, rows, (j * bk + jnp.arange(bk))[None, :], q_seg,
                         None if ks_ref is None else ks_ref[kv][None, :], positional)
            if keep is not None:
                s = jnp.where(keep, s, -jnp.inf)
            prob = jnp.exp2(s - lse[:, None])
            ds = prob * (_dot(do, v, 1, 1) - delta[:, None])
            return dq + _dot(ds.astype(k.dtype), k)
        return step

    lo, mid, hi = _seg_kv_range(p, qi, bq, bk, lo_ref, hi_ref)
    dq = _loop(p, lo, mid, body(False), _counted(p, jnp.zeros((bq, p.d_pad), jnp.float32)))
    dq = _store_count(p, _loop(p, mid, hi, body(True), dq), n_ref)
    dq_ref[...] = (dq * p.sm_scale).astype(dq_ref.dtype)


def _dkv_kernel(*refs, p: _Plan):
    (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), (qs_ref, ks_ref, lo_ref, hi_ref), \
        (dk_ref, dv_ref), n_ref = _split(p, refs, 6)
    bq, bk = p.dkv[0], p.dkv[1]
    kj = pl.program_id(0)
    # Transposed orientation (rows = keys) so dk/dv accumulate as [bk, d] without transposes.
    k = (k_ref[...].astype(jnp.float32) * (p.sm_scale * _LOG2E)).astype(k_ref.dtype)
    v = v_ref[...]
    cols = (kj * bk + jnp.arange(bk))[:, None]
    k_seg = None if ks_ref is None else ks_ref[...][:, None]

    lo, mid, n_q = _seg_q_range(p, kj, bq, bk, lo_ref, hi_ref)

    def body(first, count, positional):
        # One flat loop over (q head of the group, q tile): better pipelined than nested loops.
        def step(t, carry):
            dk, dv = carry
            if p.group == 1:
                g, qi = 0, first + t
            else:
                g, qi = lax.div(t, count), first + lax.rem(t, count)
            qs = pl.ds(qi * bq, bq)
            q, do = q_ref[qs, g, :], do_ref[qs, g, :]
            lse, delta = lse_ref[g, qs], delta_ref[g, qs]
            st = _dot(k, q, 1, 1)                                  # [bk, bq] = s^T
            keep = _keep(p, (qi * bq + jnp.arange(bq))[None, :], cols,
                         None if qs_ref is None else qs_ref[qs][None, :], k_seg, positional)
            if keep is not None:
                st = jnp.where(keep, st, -jnp.inf)
            pt = jnp.exp2(st - lse[None, :])
            dv = dv + _dot(pt.astype(do.dtype), do)
            dst = pt * (_dot(v, do, 1, 1) - delta[None, :])
            dk = dk + _dot(dst.astype(q.dtype), q)
            return dk, dv
        return step

    zeros = jnp.zeros((bk, p.d_pad), jnp.float32)
    n_masked, n_plain = mid - lo, n_q - mid
    carry = _loop(p, 0, n_masked * p.group, body(lo, n_masked, True), _counted(p, (zeros, zeros)))
    dk, dv = _store_count(p, _loop(p, 0, n_plain * p.group, body(mid, n_plain, False), carry),
                          n_ref)
    dk_ref[...] = (dk * p.sm_scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _pad(p: _Plan, x, length):
    return pad_axis(pad_axis(x, 1, length), 3, p.d_pad)


def _seg_args(p: _Plan, qs, ks, rows, cols, block_rows, block_cols, row_len, col_len):
    """The segment inputs of one kernel: padded q and kv ids, then per (batch, row tile) the
    column tiles [lo, hi) its ids can meet (rows = q for forward/dq, kv for dk/dv)."""
    if not p.segments:
        return []
    lo, hi = segment_tile_ranges(rows, cols, block_rows, block_cols, row_len // block_rows,
                                 col_len // block_cols)
    # Padded queries get an id no key has (-1 vs padding's -2); padded keys are masked by position.
    return [pad_axis(qs, 1, p.lq_pad, -1), pad_axis(ks, 1, p.lk_pad, -2), lo, hi]


def _seg_specs(p: _Plan, q_block, q_tile, kv_block, kv_tile, n_tiles):
    """BlockSpecs for _seg_args: the ids' blocks, and the batch element's row of each range."""
    if not p.segments:
        return []
    row = pl.BlockSpec((None, n_tiles), lambda i, bi, h: (bi, 0))
    return [pl.BlockSpec((None, q_block), lambda i, bi, h: (bi, q_tile(i))),
            pl.BlockSpec((None, kv_block), lambda i, bi, h: (bi, kv_tile(i))), row, row]


def _count_out(p: _Plan, grid):
    """(out_specs, out_shape) of the per-program step count, or empty lists."""
    if not p.count:
        return [], []
    return ([pl.BlockSpec((None, None, None), lambda i, bi, h: (i, bi, h))],
            [jax.ShapeDtypeStruct(grid, jnp.int32)])


@functools.partial(jax.jit, static_argnums=0)
def _forward(p: _Plan, q, k, v, qs, ks):
    """(out, lse), and with p.count the per-program kv steps [grid]."""
    b, _, hq, _ = q.shape
    bq, bk = p.fwd[0], p.fwd[1]
    grid = (p.lq_pad // bq, b, hq)
    qspec = pl.BlockSpec((None, bq, None, p.d_pad), lambda i, bi, h: (bi, _qb(p, i, bq), h, 0))
    kvspec = pl.BlockSpec((None, p.lk_pad, None, p.d_pad),
                          lambda i, bi, h: (bi, 0, h // p.group, 0))
    in_specs = [qspec, kvspec, kvspec] + _seg_specs(p, bq, lambda i: _qb(p, i, bq), p.lk_pad,
                                                    lambda i: 0, p.lq_pad // bq)
    count_specs, count_shape = _count_out(p, grid)
    res = pl.pallas_call(
        functools.partial(_fwd_kernel, p=p),
        grid=grid,
        in_specs=in_specs,
        out_specs=[qspec, pl.BlockSpec((None, None, bq), lambda i, bi, h: (bi, h, _qb(p, i, bq)))]
                  + count_specs,
        out_shape=[jax.ShapeDtypeStruct((b, p.lq_pad, hq, p.d_pad), q.dtype),
                   jax.ShapeDtypeStruct((b, hq, p.lq_pad), jnp.float32)] + count_shape,
        compiler_params=_params(p.fwd), interpret=p.interpret, name="flash_fwd",
    )(_pad(p, q, p.lq_pad), _pad(p, k, p.lk_pad), _pad(p, v, p.lk_pad),
      *_seg_args(p, qs, ks, qs, ks, bq, bk, p.lq_pad, p.lk_pad))
    return (res[0][:, :p.q_len, :, :p.head_dim],) + tuple(res[1:])


@functools.partial(jax.jit, static_argnums=0)
def _backward(p: _Plan, q, k, v, qs, ks, out, lse, do):
    """(dq, dk, dv), and with p.count the per-program steps of the dq and dk/dv kernels."""
    b, _, hq, _ = q.shape
    hkv = k.shape[2]
    delta = jnp.sum(out.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)  # [b, lq, hq]
    delta = pad_axis(jnp.swapaxes(delta, 1, 2), 2, p.lq_pad)
    qp, kp, vp = _pad(p, q, p.lq_pad), _pad(p, k, p.lk_pad), _pad(p, v, p.lk_pad)
    dop = _pad(p, do.astype(q.dtype), p.lq_pad)

    # dq: grid (q tiles, batch, q head).
    bq, bk = p.dq[0], p.dq[1]
    grid = (p.lq_pad // bq, b, hq)
    qspec = pl.BlockSpec((None, bq, None, p.d_pad), lambda i, bi, h: (bi, _qb(p, i, bq), h, 0))
    kvspec = pl.BlockSpec((None, p.lk_pad, None, p.d_pad),
                          lambda i, bi, h: (bi, 0, h // p.group, 0))
    rowspec = pl.BlockSpec((None, None, bq), lambda i, bi, h: (bi, h, _qb(p, i, bq)))
    in_specs = [qspec, kvspec, kvspec, qspec, rowspec, rowspec]
    in_specs += _seg_specs(p, bq, lambda i: _qb(p, i, bq), p.lk_pad, lambda i: 0, p.lq_pad // bq)
    count_specs, count_shape = _count_out(p, grid)
    dq, *dq_count = pl.pallas_call(
        functools.partial(_dq_kernel, p=p), grid=grid,
        in_specs=in_specs, out_specs=[qspec] + count_specs,
        out_shape=[jax.ShapeDtypeStruct(qp.shape, q.dtype)] + count_shape,
        compiler_params=_params(p.dq), interpret=p.interpret, name="flash_bwd_dq",
    )(qp, kp, vp, dop, lse, delta, *_seg_args(p, qs, ks, qs, ks, bq, bk, p.lq_pad, p.lk_pad))

    # dk/dv: grid (kv tiles, batch, kv head); the q-side blocks span the whole group of q heads.
    bq, bk = p.dkv[0], p.dkv[1]
    grid = (p.lk_pad // bk, b, hkv)
    kvspec = pl.BlockSpec((None, bk, None, p.d_pad), lambda j, bi, h: (bi, j, h, 0))
    qspec = pl.BlockSpec((None, p.lq_pad, p.group, p.d_pad), lambda j, bi, h: (bi, 0, h, 0))
    rowspec = pl.BlockSpec((None, p.group, p.lq_pad), lambda j, bi, h: (bi, h, 0))
    in_specs = [qspec, kvspec, kvspec, qspec, rowspec, rowspec]
    in_specs += _seg_specs(p, p.lq_pad, lambda j: 0, bk, lambda j: j, p.lk_pad // bk)
    count_specs, count_shape = _count_out(p, grid)
    dk, dv, *dkv_count = pl.pallas_call(
        functools.partial(_dkv_kernel, p=p), grid=grid,
        in_specs=in_specs, out_specs=[kvspec, kvspec] + count_specs,
        out_shape=[jax.ShapeDtypeStruct(kp.shape, k.dtype)] * 2 + count_shape,
        compiler_params=_params(p.dkv), interpret=p.interpret, name="flash_bwd_dkv",
    )(qp, kp, vp, dop, lse, delta, *_seg_args(p, qs, ks, ks, qs, bk, bq, p.lk_pad, p.lq_pad))
    crop = lambda x, n: x[:, :n, :, :p.head_dim]
    return (crop(dq, p.q_len), crop(dk, p.kv_len), crop(dv, p.kv_len)) + tuple(dq_count + dkv_count)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(p: _Plan, q, k, v, qs, ks):
    return _forward(p, q, k, v, qs, ks)[0]


def _attention_fwd(p, q, k, v, qs, ks):
    out, lse = _forward(p, q, k, v, qs, ks)
    return out, (q, k, v, qs, ks, out, lse)


def _attention_bwd(p, res, do):
    q, k, v, qs, ks, out, lse = res
    dq, dk, dv = _backward(p, q, k, v, qs, ks, out, lse, do)
    return dq, dk, dv, None, None  # integer segment ids: no cotangent


_attention.defvjp(_attention_fwd, _attention_bwd)


def _check_backend(interpret):
    if not interpret and jax.default_backend() != "gpu":
        raise RuntimeError(f"pallas_gpu compiles Triton kernels for a GPU, but jax's backend is "
                           f"{jax.default_backend()!r}; pass interpret=True to run it on CPU, "
                           f"or use implementation='xla'")


def attention(q, k, v, *, causal: bool, q_segment_ids, kv_segment_ids, sm_scale: float,
              block_sizes: Optional[BlockSizes] = None, interpret: bool = False):
    """Blockwise attention on Pallas/Triton; inputs already validated by common.check_inputs.

    Raises NotImplementedError for inputs it does not handle (so dispatch falls through to xla)
    and RuntimeError when asked to compile for a GPU that is not there.
    """
    _check_backend(interpret)
    p = _plan(q, k, causal, q_segment_ids is not None, sm_scale, block_sizes, interpret)
    return _attention(p, q, k, v, q_segment_ids, kv_segment_ids)


def tile_visits(q, k, v, *, causal: bool, q_segment_ids, kv_segment_ids, sm_scale: float,
                block_sizes: Optional[BlockSizes] = None, interpret: bool = True) -> dict:
    """{"forward", "dq", "dkv"}: how many (q tile, kv tile) steps each kernel runs, counted in
    its loops and summed over its programs, so over the batch and the q heads (a dk/dv program
    walks the q heads of its group). Arguments as for `attention`."""
    _check_backend(interpret)
    p = _plan(q, k, causal, q_segment_ids is not None, sm_scale, block_sizes, interpret)
    p = dataclasses.replace(p, count=True)
    out, lse, n_fwd = _forward(p, q, k, v, q_segment_ids, kv_segment_ids)
    *_, n_dq, n_dkv = _backward(p, q, k, v, q_segment_ids, kv_segment_ids, out, lse,
                                jnp.zeros_like(out))
    return {name: int(jnp.sum(n)) for name, n in (("forward", n_fwd), ("dq", n_dq),
                                                   ("dkv", n_dkv))}
