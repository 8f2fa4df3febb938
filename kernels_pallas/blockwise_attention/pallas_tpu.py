"""Blockwise attention as Pallas Mosaic TPU kernels: forward, dk/dv and dq (FlashAttention-2 style).

Layout. When head_dim is a multiple of 128 (or a tensor has a single head) a tensor [batch,
length, heads, head_dim] is read and written in place through its free view [batch, length,
heads * head_dim]: a block (None, block, head_dim) whose last index is the head picks one head's
tile as a strided DMA, so no transpose of q, k, v, the output or the gradients is made in HBM.
Other head_dims (64, 80, ...) transpose to [batch, heads, length, head_dim] first: a block there
must span the whole minor axis, which the in-place view cannot give with several heads. Either
way lengths are padded to the tiles (a copy only when they are not multiples), and head_dim is
never padded: a block spanning the whole last dimension is legal for Mosaic at any size
(AOT-compiled for 8 to 256 on v5e), and padding 64 to 128 lanes would double the HBM traffic of
the most common head size. Logsumexp and delta rows keep their own [batch, heads, 1, length].
Grid, per kernel (the last one or two axes are the sequential reduction):
  forward  (b, q_head, q_block, kv_block)            online softmax, emits logsumexp
  dk/dv    (b, kv_head, kv_block, group, q_block)    sums over the q heads sharing the kv head
  dq       (b, q_head, q_block, kv_block)
GQA/MQA: k/v tiles are indexed by q_head // group; nothing is repeated in HBM.
The backward recomputes probabilities from the residuals (q, k, v, out, logsumexp), so memory
is O(length). The dk/dv kernel works on transposed scores [kv, q] so that logsumexp and delta
enter as lane rows and every matmul is a plain NN or NT product.
Scale. The resident tile of the reduction (q in the forward and dq kernels, k in dk/dv) is
multiplied by the logit scale once, into VMEM scratch at the first reduction step, instead of
every score element; in bf16 that rounds q * scale (or k * scale) to bf16 as the Triton kernel
does. dq and dk take the scale once at the end.
Skipping. A tile pair is skipped (no compute under pl.when, and its index_map repeats the last
visited tile so no DMA is issued) when causality hides it or, with segment ids, when
common.segment_tile_ranges says no pair in it can share a segment: per (batch, q tile) the kv
tiles [lo, hi) for the forward and dq kernels, per (batch, kv tile) the q tiles for dk/dv,
passed as scalar prefetch (SMEM) and intersected with the causal bounds. Key-padding masks
arrive folded into kv segment ids, so a half-padded batch visits about half the tiles.
Tiles that are fully visible without segments skip the mask.
Masked logits are -inf; a query that sees no key has l == 0, gets output 0 and logsumexp +inf,
so the backward recomputes p = 0 there and all its gradients are exactly 0.
`tile_visits` runs the three kernels with a static counting flag (a small int32 output
incremented in the compute branch; off in normal calls) and returns the pairs each computed.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.blockwise_attention.common import (BlockSizes, check_inputs, pad_axis, round_up,
                                                       segment_tile_ranges)

LANES = 128
# For v5e/v6e (bf16, head_dim 128): big enough to keep the MXU busy and amortize the ~0.35 us
# per grid step; Mosaic reports under 10 MiB of VMEM per kernel even for f32 and head_dim 256,
# inside the default scoped limit (16 MiB on v5e), so no vmem_limit_bytes is set.
DEFAULT_BLOCK_Q, DEFAULT_BLOCK_KV = 512, 1024
DEFAULT_BLOCK_Q_BWD, DEFAULT_BLOCK_KV_BWD = 512, 512
NT = (((1,), (1,)), ((), ()))  # a @ b.T
NN = (((1,), (0,)), ((), ()))  # a @ b
COUNT_TILE = (8, 128)  # the int32 tile of tile_visits' counters (one vreg)

# Names that moved between jax releases.
_CompilerParams = getattr(pltpu, "CompilerParams", None) or getattr(pltpu, "TPUCompilerParams")
_InterpretParams = getattr(pltpu, "InterpretParams", None)


@dataclasses.dataclass(frozen=True)
class _Config:
    """Everything static about one call (hashable: it is a nondiff argument of the custom_vjp)."""
    causal: bool
    scale: float
    q_len: int
    kv_len: int
    segments: bool
    tiles: BlockSizes
    interpret: bool
    count: bool = False  # tile_visits only: each kernel also returns its computed tile pairs


def _config(q, k, causal, q_segment_ids, sm_scale, block_sizes, interpret):
    lq, lk = q.shape[1], k.shape[1]
    bs = block_sizes or BlockSizes()
    bs = dataclasses.replace(  # backward tiles: the caller's forward tiles, else our own defaults
        bs, block_q_bwd=bs.block_q_bwd or bs.block_q or DEFAULT_BLOCK_Q_BWD,
        block_kv_bwd=bs.block_kv_bwd or bs.block_kv or DEFAULT_BLOCK_KV_BWD)
    # Tiles map to lanes somewhere (scores, logsumexp rows), so hardware needs multiples of 128;
    # interpret mode only needs whole sublanes, which lets tests use many small tiles.
    multiple = 8 if interpret else LANES
    tiles = bs.resolve(DEFAULT_BLOCK_Q, DEFAULT_BLOCK_KV, lq, lk, multiple=multiple)
    for name, t in dataclasses.asdict(tiles).items():
        if t % multiple:
            raise NotImplementedError(f"pallas_tpu: {name}={t} must be a multiple of {multiple}")
    return _Config(bool(causal), float(sm_scale), lq, lk, q_segment_ids is not None, tiles,
                   bool(interpret))


def _upcast_float16(q, k, v, interpret):
    # Mosaic rejects float16 tiles ("Invalid vector type for load" on v5e and v6e); float32
    # holds every float16 exactly, so compute there and round the output back.
    if q.dtype == jnp.float16 and not interpret:
        return tuple(x.astype(jnp.float32) for x in (q, k, v)), True
    return (q, k, v), False


def attention(q, k, v, *, causal, q_segment_ids, kv_segment_ids, sm_scale, block_sizes=None,
              interpret=False):
    """See blockwise_attention; inputs are already validated by common.check_inputs."""
    (q, k, v), up = _upcast_float16(q, k, v, interpret)
    cfg = _config(q, k, causal, q_segment_ids, sm_scale, block_sizes, interpret)
    out = _attention(q, k, v, q_segment_ids, kv_segment_ids, cfg)
    return out.astype(jnp.float16) if up else out


def tile_visits(q, k, v, *, causal, q_segment_ids, kv_segment_ids, sm_scale, block_sizes=None,
                interpret=True) -> dict:
    """The (q tile, kv tile) pairs each kernel computed, over batch and heads, counted by the
    kernels themselves: {"forward": n, "dq": n, "dkv": n} (int32 scalars).

    Runs the forward and both backward kernels (the cotangent is the output itself: what they
    skip depends only on the lengths, causality and segment ids) with a static counting flag,
    which adds a small int32 output incremented in the compute branch of each step."""
    seg = None if q_segment_ids is None else (q_segment_ids, kv_segment_ids)
    qs, ks, scale = check_inputs(q, k, v, seg, sm_scale)
    (q, k, v), _ = _upcast_float16(q, k, v, interpret)
    cfg = dataclasses.replace(_config(q, k, causal, qs, scale, block_sizes, interpret), count=True)
    out, lse, n_fwd = _forward(q, k, v, qs, ks, cfg)
    *_, n_dkv, n_dq = _backward(q, k, v, qs, ks, out, lse, out, cfg)
    return {"forward": n_fwd, "dq": n_dq, "dkv": n_dkv}


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q, k, v, qs, ks, cfg):
    return _forward(q, k, v, qs, ks, cfg)[0]


def _attention_fwd(q, k, v, qs, ks, cfg):
    out, lse = _forward(q, k, v, qs, ks, cfg)
    return out, (q, k, v, qs, ks, out, lse)


def _attention_bwd(cfg, res, do):
    q, k, v, qs, ks, out, lse = res
    dq, dk, dv = _backward(q, k, v, qs, ks, out, lse, do, cfg)
    return dq, dk, dv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


# ----------------------------------------------------------------------------- shared helpers

def _in_place(heads, d):
    """Whether [b, l, heads, d] is read through its free view [b, l, heads * d]: a block
    (block, d) at lane-block h is legal when d is whole lane tiles, or spans the minor axis."""
    return d % LANES == 0 or heads == 1


def _to_kernel(x, length):
    """[b, l, h, d] -> the kernel's view, zero padded to `length`: [b, length, h * d] in place,
    else the transposed copy [b, h, length, d]."""
    b, l, h, d = x.shape
    if _in_place(h, d):  # pad after the reshape: in the view's layout, not [.., h, d] tiles
        return pad_axis(x.reshape(b, l, h * d), 1, length)
    return pad_axis(jnp.swapaxes(x, 1, 2), 2, length)


def _from_kernel(x, length, heads, d):
    """Inverse of _to_kernel, dropping the padded rows."""
    if _in_place(heads, d):
        return x[:, :length].reshape(x.shape[0], length, heads, d)
    return jnp.swapaxes(x[:, :, :length, :], 1, 2)


def _kernel_shape(b, length, heads, d):
    return (b, length, heads * d) if _in_place(heads, d) else (b, heads, length, d)


def _tile_spec(heads, d, block, index):
    """BlockSpec of one head's tile in the kernel view; index(*grid, *prefetch) -> (batch, head,
    tile)."""
    if _in_place(heads, d):
        def in_place(*a):
            b_, h, t = index(*a)
            return b_, t, h
        return pl.BlockSpec((None, block, d), in_place)

    def transposed(*a):
        b_, h, t = index(*a)
        return b_, h, t, 0
    return pl.BlockSpec((None, None, block, d), transposed)


def _segment_inputs(qs, ks, lq_p, lk_p, q_as_column):
    """Segment ids as tiles Mosaic can compare: one side a lane-broadcast column [b, l, 128],
    the other a lane row [b, 1, l]. The forward/dq kernels put q on rows, dk/dv puts kv there."""
    qs, ks = pad_axis(qs, 1, lq_p), pad_axis(ks, 1, lk_p)  # padded keys are masked by position
    col = lambda s: jnp.broadcast_to(s[:, :, None], s.shape + (LANES,))
    return (col(qs), ks[:, None, :]) if q_as_column else (qs[:, None, :], col(ks))


def _ranges(row_ids, col_ids, block_rows, block_cols, n_rows, n_cols):
    """segment_tile_ranges flattened to [b * n_rows] each (SMEM pads 2-D arrays to (8, 128))."""
    lo, hi = segment_tile_ranges(row_ids, col_ids, block_rows, block_cols, n_rows, n_cols)
    return [lo.reshape(-1), hi.reshape(-1)]


def _clamp(t, lo, last):
    """The tile a reduction step fetches: t inside [lo, last], so steps outside the visited
    range repeat its first or last tile (no new DMA). An empty range (last < lo) stays at lo."""
    return jnp.minimum(jnp.maximum(t, lo), jnp.maximum(last, lo))


def _lanes(x, n):
    """[r, 128] (all lanes equal) -> [r, n]: whole-vreg copies when n is a multiple of 128."""
    if n % LANES == 0:
        return jnp.tile(x, (1, n // LANES))
    return jnp.broadcast_to(x[:, :1], (x.shape[0], n))


def _block_flags(cfg, qi, kj, bq, bk):
    """(run, masked) for the tile of q block qi and kv block kj: run is False when no entry is
    visible (causal), masked is False when every entry is (no mask needed). Python bools when
    static, traced scalars otherwise."""
    run, masked = True, cfg.segments
    off = cfg.kv_len - cfg.q_len
    if cfg.causal:
        run = kj * bk <= jnp.minimum((qi + 1) * bq, cfg.q_len) - 1 + off
        masked = masked | ((kj + 1) * bk - 1 > qi * bq + off)
    if cfg.kv_len % bk:
        masked = masked | ((kj + 1) * bk > cfg.kv_len)
    return run, masked


def _last_kv_block(cfg, qi, bq, bk):
    """Index of the last kv block q block qi sees (causal): skipped steps re-use that tile."""
    hi = jnp.minimum((qi + 1) * bq, cfg.q_len) - 1 + cfg.kv_len - cfg.q_len
    return jnp.maximum(hi, 0) // bk


def _first_q_block(cfg, kj, bq, bk, nq):
    """Index of the first q block that sees kv block kj (causal)."""
    return jnp.minimum(jnp.maximum(kj * bk - (cfg.kv_len - cfg.q_len), 0) // bq, nq - 1)


def _mask(cfg, bk, shape, q_pos, k_pos, q_seg, k_seg):
    """Visibility of a score tile; q_pos/k_pos/q_seg/k_seg broadcast to `shape`."""
    keep = jnp.ones(shape, jnp.bool_)
    if cfg.kv_len % bk:  # padded keys
        keep &= k_pos < cfg.kv_len
    if cfg.causal:
        keep &= k_pos <= q_pos + (cfg.kv_len - cfg.q_len)
    if q_seg is not None:
        keep &= q_seg == k_seg
    return keep


def _dispatch(run, masked, body):
    """Calls body(masked=...) under pl.when for whichever branches can happen."""
    if isinstance(masked, bool):
        if run is True:
            body(masked)
        else:
            pl.when(run)(lambda: body(masked))
        return
    pl.when(jnp.logical_and(run, masked))(lambda: body(True))
    pl.when(jnp.logical_and(run, jnp.logical_not(masked)))(lambda: body(False))


def _in_range(run, ranges, idx, t):
    """run, and tile t inside the prefetched segment range [lo[idx], hi[idx])."""
    if not ranges:
        return run
    lo_ref, hi_ref = ranges
    return jnp.logical_and(run, jnp.logical_and(lo_ref[idx] <= t, t < hi_ref[idx]))


def _split(refs, *counts):
    """Cuts a kernel's refs into consecutive groups of the given sizes (the rest last)."""
    out, at = [], 0
    for n in counts:
        out.append(refs[at:at + n])
        at += n
    return out + [refs[at:]]


def _dot(a, b, dims):
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32, precision=precision)


def _call(kernel, cfg, grid, in_specs, out_specs, out_shape, scratch, semantics, cost, prefetch):
    interpret = False
    if cfg.interpret:
        interpret = _InterpretParams() if _InterpretParams is not None else True
    params = dict(interpret=interpret, cost_estimate=cost,
                  compiler_params=_CompilerParams(dimension_semantics=semantics))
    if not prefetch:
        return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                              out_shape=out_shape, scratch_shapes=scratch, **params)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=len(prefetch), grid=grid, in_specs=in_specs, out_specs=out_specs,
        scratch_shapes=scratch)
    return lambda *args: pl.pallas_call(kernel, grid_spec=grid_spec, out_shape=out_shape,
                                        **params)(*prefetch, *args)


def _cost(cfg, b, hq, d, matmuls, nbytes):
    pairs = b * hq * cfg.q_len * cfg.kv_len * (0.5 if cfg.causal else 1.0)
    return pl.CostEstimate(flops=int(2 * matmuls * pairs * d), transcendentals=int(pairs),
                           bytes_accessed=int(nbytes))


def _counter(shape, index):
    """tile_visits' output: one int32 (8, 128) tile per reduction (all entries equal)."""
    spec = pl.BlockSpec((None,) * len(shape) + COUNT_TILE, lambda *a: index(*a) + (0, 0))
    return spec, jax.ShapeDtypeStruct(tuple(shape) + COUNT_TILE, jnp.int32)


def _total(counts):
    return jnp.sum(counts[..., 0, 0])


def _scaled(x_ref, scale):
    """A tile times the logit scale, rounded back to its dtype (once per resident tile)."""
    return (x_ref[...].astype(jnp.float32) * scale).astype(x_ref.dtype)


# ----------------------------------------------------------------------------- forward

def _fwd_kernel(*refs, cfg, bq, bk, nq, nk):
    n_seg = 2 if cfg.segments else 0
    ranges, (q_ref, k_ref, v_ref), seg_refs, (o_ref, lse_ref), cnt, rest = _split(
        refs, n_seg, 3, n_seg, 2, int(cfg.count))
    m_scr, l_scr, acc_scr, q_scr = rest
    b_, qi, kj = pl.program_id(0), pl.program_id(2), pl.program_id(3)

    @pl.when(kj == 0)
    def _init():
        m_scr[...] = jnp.full(m_scr.shape, -jnp.inf, jnp.float32)
        l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
        acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)
        q_scr[...] = _scaled(q_ref, cfg.scale)  # the q tile stays resident over the kv steps
        if cnt:
            cnt[0][...] = jnp.zeros(cnt[0].shape, jnp.int32)

    def body(masked):
        if cnt:
            cnt[0][...] += 1
        s = _dot(q_scr[...], k_ref[...], NT)  # [bq, bk], already scaled
        if masked:
            q_pos = qi * bq + lax.broadcasted_iota(jnp.int32, s.shape, 0)
            k_pos = kj * bk + lax.broadcasted_iota(jnp.int32, s.shape, 1)
            segs = (_lanes(seg_refs[0][...], bk), seg_refs[1][...]) if cfg.segments else (None, None)
            s = jnp.where(_mask(cfg, bk, s.shape, q_pos, k_pos, *segs), s, -jnp.inf)
        m_prev = m_scr[...]
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))  # [bq, 128]
        m_sub = m_next
        if masked:  # a row with nothing visible yet: p and alpha are 0, not NaN (-inf - -inf)
            m_sub = jnp.where(m_next == -jnp.inf, 0.0, m_next)
        p = jnp.exp(s - _lanes(m_sub, bk))
        alpha = jnp.exp(m_prev - m_sub)
        l_scr[...] = alpha * l_scr[...] + jnp.sum(p, axis=1, keepdims=True)
        m_scr[...] = m_next
        v = v_ref[...]
        acc_scr[...] = acc_scr[...] * _lanes(alpha, acc_scr.shape[1]) + _dot(p.astype(v.dtype), v, NN)

    run, masked = _block_flags(cfg, qi, kj, bq, bk)
    _dispatch(_in_range(run, ranges, b_ * nq + qi, kj), masked, body)

    @pl.when(kj == nk - 1)
    def _finish():
        l = l_scr[...]
        inv = 1.0 / jnp.where(l == 0.0, 1.0, l)  # l == 0: the query saw nothing, acc is 0
        o_ref[...] = (acc_scr[...] * _lanes(inv, acc_scr.shape[1])).astype(o_ref.dtype)
        lse = jnp.where(l == 0.0, jnp.inf, m_scr[...] + jnp.log(l))  # [bq, 128]
        lse_ref[...] = jnp.transpose(lse)[:1, :]  # as a lane row [1, bq]


def _kv_visit(cfg, bq, bk, nq):
    """index(b, q_block, kv_step, *ranges) -> the kv block fetched (forward and dq kernels):
    the step clamped to the visited range, causal and segment bounds intersected."""
    def kv_block(b_, i, j, *ranges):
        last = _last_kv_block(cfg, i, bq, bk) if cfg.causal else None
        if not ranges:
            return j if last is None else jnp.minimum(j, last)
        lo, hi = ranges[0][b_ * nq + i], ranges[1][b_ * nq + i]
        return _clamp(j, lo, hi - 1 if last is None else jnp.minimum(hi - 1, last))
    return kv_block


def _q_visit(cfg, bq, bk, nq, nk):
    """index(b, kv_block, q_step, *ranges) -> the q block fetched (dk/dv kernel), likewise."""
    def q_block(b_, j, i, *ranges):
        first = _first_q_block(cfg, j, bq, bk, nq) if cfg.causal else None
        if not ranges:
            return i if first is None else jnp.maximum(i, first)
        lo, hi = ranges[0][b_ * nk + j], ranges[1][b_ * nk + j]
        return _clamp(i, lo if first is None else jnp.maximum(lo, first), hi - 1)
    return q_block


def _forward(q, k, v, qs, ks, cfg):
    """Returns out [b, lq, hq, d] and logsumexp [b, hq, lq] (float32; +inf where nothing seen),
    plus the computed tile pairs when cfg.count."""
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    bq, bk = cfg.tiles.block_q, cfg.tiles.block_kv
    lq_p, lk_p = round_up(lq, bq), round_up(lk, bk)
    nq, nk = lq_p // bq, lk_p // bk
    kv_block = _kv_visit(cfg, bq, bk, nq)
    prefetch = _ranges(qs, ks, bq, bk, nq, nk) if cfg.segments else []

    q_spec = _tile_spec(hq, d, bq, lambda b_, h, i, j, *r: (b_, h, i))
    kv_spec = _tile_spec(hkv, d, bk, lambda b_, h, i, j, *r: (b_, h // group, kv_block(b_, i, j, *r)))
    in_specs = [q_spec, kv_spec, kv_spec]
    args = [_to_kernel(q, lq_p), _to_kernel(k, lk_p), _to_kernel(v, lk_p)]
    if cfg.segments:
        args += _segment_inputs(qs, ks, lq_p, lk_p, q_as_column=True)
        in_specs += [pl.BlockSpec((None, bq, LANES), lambda b_, h, i, j, *r: (b_, i, 0)),
                     pl.BlockSpec((None, 1, bk), lambda b_, h, i, j, *r: (b_, 0, kv_block(b_, i, j, *r)))]
    out_shape = [jax.ShapeDtypeStruct(_kernel_shape(b, lq_p, hq, d), q.dtype),
                 jax.ShapeDtypeStruct((b, hq, 1, lq_p), jnp.float32)]
    out_specs = [q_spec, pl.BlockSpec((None, None, 1, bq), lambda b_, h, i, j, *r: (b_, h, 0, i))]
    if cfg.count:
        spec, shape = _counter((b, hq, nq), lambda b_, h, i, j, *r: (b_, h, i))
        out_specs.append(spec)
        out_shape.append(shape)
    scratch = [pltpu.VMEM((bq, LANES), jnp.float32), pltpu.VMEM((bq, LANES), jnp.float32),
               pltpu.VMEM((bq, d), jnp.float32), pltpu.VMEM((bq, d), q.dtype)]
    nbytes = sum(x.size * x.dtype.itemsize for x in args) * 2
    outs = _call(functools.partial(_fwd_kernel, cfg=cfg, bq=bq, bk=bk, nq=nq, nk=nk), cfg,
                 (b, hq, nq, nk), in_specs, out_specs, out_shape, scratch,
                 ("parallel", "parallel", "parallel", "arbitrary"),
                 _cost(cfg, b, hq, d, 2, nbytes), prefetch)(*args)
    out, lse = _from_kernel(outs[0], lq, hq, d), outs[1][:, :, 0, :lq]
    return (out, lse, _total(outs[2])) if cfg.count else (out, lse)


# ----------------------------------------------------------------------------- backward

def _dkv_kernel(*refs, cfg, bq, bk, nq, nk, group):
    n_seg = 2 if cfg.segments else 0
    (ranges, (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), seg_refs, (dk_ref, dv_ref), cnt,
     (dk_scr, dv_scr, k_scr)) = _split(refs, n_seg, 6, n_seg, 2, int(cfg.count))
    b_, kj, gi, qi = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)

    @pl.when(jnp.logical_and(gi == 0, qi == 0))
    def _init():
        dk_scr[...] = jnp.zeros(dk_scr.shape, jnp.float32)
        dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)
        k_scr[...] = _scaled(k_ref, cfg.scale)  # the k tile stays resident over (group, q)
        if cnt:
            cnt[0][...] = jnp.zeros(cnt[0].shape, jnp.int32)

    def body(masked):
        if cnt:
            cnt[0][...] += 1
        q, do = q_ref[...], do_ref[...]
        st = _dot(k_scr[...], q, NT)  # transposed scores [bk, bq], already scaled
        if masked:
            k_pos = kj * bk + lax.broadcasted_iota(jnp.int32, st.shape, 0)
            q_pos = qi * bq + lax.broadcasted_iota(jnp.int32, st.shape, 1)
            segs = (seg_refs[0][...], _lanes(seg_refs[1][...], bq)) if cfg.segments else (None, None)
            st = jnp.where(_mask(cfg, bk, st.shape, q_pos, k_pos, *segs), st, -jnp.inf)
        pt = jnp.exp(st - lse_ref[...])  # lse row [1, bq]; +inf rows give p = 0
        dv_scr[...] += _dot(pt.astype(do.dtype), do, NN)
        dpt = _dot(v_ref[...], do, NT)
        dst = pt * (dpt - delta_ref[...])
        dk_scr[...] += _dot(dst.astype(q.dtype), q, NN)

    run, masked = _block_flags(cfg, qi, kj, bq, bk)
    _dispatch(_in_range(run, ranges, b_ * nk + kj, qi), masked, body)

    @pl.when(jnp.logical_and(gi == group - 1, qi == nq - 1))
    def _finish():
        dk_ref[...] = (dk_scr[...] * cfg.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


def _dq_kernel(*refs, cfg, bq, bk, nq, nk):
    n_seg = 2 if cfg.segments else 0
    (ranges, (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), seg_refs, (dq_ref,), cnt,
     (dq_scr, lse_scr, delta_scr, q_scr)) = _split(refs, n_seg, 6, n_seg, 1, int(cfg.count))
    b_, qi, kj = pl.program_id(0), pl.program_id(2), pl.program_id(3)

    @pl.when(kj == 0)
    def _init():
        dq_scr[...] = jnp.zeros(dq_scr.shape, jnp.float32)
        # logsumexp and delta arrive as lane rows; turn them into columns once per q block.
        lse_scr[...] = jnp.transpose(jnp.broadcast_to(lse_ref[...], (LANES, bq)))
        delta_scr[...] = jnp.transpose(jnp.broadcast_to(delta_ref[...], (LANES, bq)))
        q_scr[...] = _scaled(q_ref, cfg.scale)  # the q tile stays resident over the kv steps
        if cnt:
            cnt[0][...] = jnp.zeros(cnt[0].shape, jnp.int32)

    def body(masked):
        if cnt:
            cnt[0][...] += 1
        k = k_ref[...]
        s = _dot(q_scr[...], k, NT)  # [bq, bk], already scaled
        if masked:
            q_pos = qi * bq + lax.broadcasted_iota(jnp.int32, s.shape, 0)
            k_pos = kj * bk + lax.broadcasted_iota(jnp.int32, s.shape, 1)
            segs = (_lanes(seg_refs[0][...], bk), seg_refs[1][...]) if cfg.segments else (None, None)
            s = jnp.where(_mask(cfg, bk, s.shape, q_pos, k_pos, *segs), s, -jnp.inf)
        p = jnp.exp(s - _lanes(lse_scr[...], bk))
        dp = _dot(do_ref[...], v_ref[...], NT)
        ds = p * (dp - _lanes(delta_scr[...], bk))
        dq_scr[...] += _dot(ds.astype(k.dtype), k, NN)

    run, masked = _block_flags(cfg, qi, kj, bq, bk)
    _dispatch(_in_range(run, ranges, b_ * nq + qi, kj), masked, body)

    @pl.when(kj == nk - 1)
    def _finish():
        dq_ref[...] = (dq_scr[...] * cfg.scale).astype(dq_ref.dtype)


def _delta(do, out):
    """rowsum(do * out) per head, [b, h, l] float32. In place, as a matmul of the [b, l, h * d]
    product with a block-diagonal ones matrix [h * d, h]: the per-head reduction of the 4-D
    einsum makes XLA relayout the product to [l, h, d] tiles (5x the HBM bytes on v5e)."""
    b, l, h, d = out.shape
    prod = do.astype(jnp.float32) * out.astype(jnp.float32)
    if not _in_place(h, d):
        return jnp.einsum("blhd->bhl", prod)
    ones = (jnp.arange(h * d)[:, None] // d == jnp.arange(h)[None, :]).astype(jnp.float32)
    return jnp.einsum("blc,ch->bhl", prod.reshape(b, l, h * d), ones,
                      precision=lax.Precision.HIGHEST)


def _backward(q, k, v, qs, ks, out, lse, do, cfg):
    """dq, dk, dv (plus the computed tile pairs of dk/dv and dq when cfg.count)."""
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    bq, bk = cfg.tiles.block_q_bwd, cfg.tiles.block_kv_bwd
    lq_p, lk_p = round_up(lq, bq), round_up(lk, bk)
    nq, nk = lq_p // bq, lk_p // bk
    delta = _delta(do, out)
    rows = lambda x, fill: pad_axis(x, 2, lq_p, fill)[:, :, None, :]  # [b, h, 1, lq_p]
    qt, kt, vt = _to_kernel(q, lq_p), _to_kernel(k, lk_p), _to_kernel(v, lk_p)
    dot_, lse_r, delta_r = _to_kernel(do, lq_p), rows(lse, jnp.inf), rows(delta, 0.0)
    nbytes = sum(x.size * x.dtype.itemsize for x in (qt, kt, vt, dot_)) * 2
    counts = []

    # dk, dv: grid (b, kv_head, kv_block, group, q_block); the last two axes reduce.
    q_block = _q_visit(cfg, bq, bk, nq, nk)
    q_spec = _tile_spec(hq, d, bq, lambda b_, h, j, g, i, *r: (b_, h * group + g, q_block(b_, j, i, *r)))
    kv_spec = _tile_spec(hkv, d, bk, lambda b_, h, j, g, i, *r: (b_, h, j))
    row_spec = pl.BlockSpec((None, None, 1, bq),
                            lambda b_, h, j, g, i, *r: (b_, h * group + g, 0, q_block(b_, j, i, *r)))
    in_specs = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
    args = [qt, kt, vt, dot_, lse_r, delta_r]
    if cfg.segments:
        args += _segment_inputs(qs, ks, lq_p, lk_p, q_as_column=False)
        in_specs += [pl.BlockSpec((None, 1, bq), lambda b_, h, j, g, i, *r: (b_, 0, q_block(b_, j, i, *r))),
                     pl.BlockSpec((None, bk, LANES), lambda b_, h, j, g, i, *r: (b_, j, 0))]
    out_specs = [kv_spec, kv_spec]
    out_shape = [jax.ShapeDtypeStruct(kt.shape, k.dtype), jax.ShapeDtypeStruct(vt.shape, v.dtype)]
    if cfg.count:
        spec, shape = _counter((b, hkv, nk), lambda b_, h, j, g, i, *r: (b_, h, j))
        out_specs.append(spec)
        out_shape.append(shape)
    outs = _call(
        functools.partial(_dkv_kernel, cfg=cfg, bq=bq, bk=bk, nq=nq, nk=nk, group=group), cfg,
        (b, hkv, nk, group, nq), in_specs, out_specs, out_shape,
        [pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, d), jnp.float32),
         pltpu.VMEM((bk, d), k.dtype)],
        ("parallel", "parallel", "parallel", "arbitrary", "arbitrary"),
        _cost(cfg, b, hq, d, 4, nbytes),
        _ranges(ks, qs, bk, bq, nk, nq) if cfg.segments else [])(*args)
    dk, dv = outs[0], outs[1]
    if cfg.count:
        counts.append(_total(outs[2]))

    # dq: grid (b, q_head, q_block, kv_block); the last axis reduces.
    kv_block = _kv_visit(cfg, bq, bk, nq)
    q_spec = _tile_spec(hq, d, bq, lambda b_, h, i, j, *r: (b_, h, i))
    kv_spec = _tile_spec(hkv, d, bk, lambda b_, h, i, j, *r: (b_, h // group, kv_block(b_, i, j, *r)))
    row_spec = pl.BlockSpec((None, None, 1, bq), lambda b_, h, i, j, *r: (b_, h, 0, i))
    in_specs = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
    args = [qt, kt, vt, dot_, lse_r, delta_r]
    if cfg.segments:
        args += _segment_inputs(qs, ks, lq_p, lk_p, q_as_column=True)
        in_specs += [pl.BlockSpec((None, bq, LANES), lambda b_, h, i, j, *r: (b_, i, 0)),
                     pl.BlockSpec((None, 1, bk), lambda b_, h, i, j, *r: (b_, 0, kv_block(b_, i, j, *r)))]
    out_specs = [q_spec]
    out_shape = [jax.ShapeDtypeStruct(qt.shape, q.dtype)]
    if cfg.count:
        spec, shape = _counter((b, hq, nq), lambda b_, h, i, j, *r: (b_, h, i))
        out_specs.append(spec)
        out_shape.append(shape)
    outs = _call(
        functools.partial(_dq_kernel, cfg=cfg, bq=bq, bk=bk, nq=nq, nk=nk), cfg,
        (b, hq, nq, nk), in_specs, out_specs, out_shape,
        [pltpu.VMEM((bq, d), jnp.float32), pltpu.VMEM((bq, LANES), jnp.float32),
         pltpu.VMEM((bq, LANES), jnp.float32), pltpu.VMEM((bq, d), q.dtype)],
        ("parallel", "parallel", "parallel", "arbitrary"),
        _cost(cfg, b, hq, d, 3, nbytes),
        _ranges(qs, ks, bq, bk, nq, nk) if cfg.segments else [])(*args)
    if cfg.count:
        counts.append(_total(outs[1]))
    grads = (_from_kernel(outs[0], lq, hq, d), _from_kernel(dk, lk, hkv, d),
             _from_kernel(dv, lk, hkv, d))
    return grads + tuple(counts)
