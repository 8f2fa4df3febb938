"""Blockwise attention as Pallas Mosaic TPU kernels: forward, dk/dv and dq (FlashAttention-2 style).

Layout: inputs are transposed to [batch, heads, length, head_dim] and lengths padded to the
tiles. head_dim is never padded: a block spanning the whole last dimension is legal for Mosaic
at any size (AOT-compiled for 8 to 256 on v5e), and padding 64 to 128 lanes would double the
HBM traffic of the most common head size.
Grid, per kernel (the last one or two axes are the sequential reduction):
  forward  (b, q_head, q_block, kv_block)            online softmax, emits logsumexp
  dk/dv    (b, kv_head, kv_block, group, q_block)    sums over the q heads sharing the kv head
  dq       (b, q_head, q_block, kv_block)
GQA/MQA: k/v tiles are indexed by q_head // group; nothing is repeated in HBM.
The backward recomputes probabilities from the residuals (q, k, v, out, logsumexp), so memory
is O(length). The dk/dv kernel works on transposed scores [kv, q] so that logsumexp and delta
enter as lane rows and every matmul is a plain NN or NT product.
Masking: causal blocks with no visible entry are skipped (no compute, and their index_map
repeats the previous tile so no DMA is issued); blocks that are fully visible skip the mask.
Masked logits are -inf; a query that sees no key has l == 0, gets output 0 and logsumexp +inf,
so the backward recomputes p = 0 there and all its gradients are exactly 0.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.blockwise_attention.common import BlockSizes, pad_axis, round_up

LANES = 128
# For v5e/v6e (bf16, head_dim 128): big enough to keep the MXU busy and amortize the ~0.35 us
# per grid step; Mosaic reports under 10 MiB of VMEM per kernel even for f32 and head_dim 256,
# inside the default scoped limit (16 MiB on v5e), so no vmem_limit_bytes is set.
DEFAULT_BLOCK_Q, DEFAULT_BLOCK_KV = 512, 1024
DEFAULT_BLOCK_Q_BWD, DEFAULT_BLOCK_KV_BWD = 512, 512
NT = (((1,), (1,)), ((), ()))  # a @ b.T
NN = (((1,), (0,)), ((), ()))  # a @ b

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


def attention(q, k, v, *, causal, q_segment_ids, kv_segment_ids, sm_scale, block_sizes=None,
              interpret=False):
    """See blockwise_attention; inputs are already validated by common.check_inputs."""
    lq, lk = q.shape[1], k.shape[1]
    if q.dtype == jnp.float16 and not interpret:
        # Mosaic rejects float16 tiles ("Invalid vector type for load" on v5e and v6e); float32
        # holds every float16 exactly, so compute there and round the output back.
        up = lambda x: x.astype(jnp.float32)
        return attention(up(q), up(k), up(v), causal=causal, q_segment_ids=q_segment_ids,
                         kv_segment_ids=kv_segment_ids, sm_scale=sm_scale,
                         block_sizes=block_sizes).astype(jnp.float16)
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
    cfg = _Config(bool(causal), float(sm_scale), lq, lk, q_segment_ids is not None, tiles,
                  bool(interpret))
    return _attention(q, k, v, q_segment_ids, kv_segment_ids, cfg)


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

def _to_kernel_layout(x, length):
    """[b, l, h, d] -> [b, h, length, d], zero padded."""
    return pad_axis(jnp.swapaxes(x, 1, 2), 2, length)


def _from_kernel_layout(x, length, d):
    return jnp.swapaxes(x[:, :, :length, :d], 1, 2)


def _segment_inputs(qs, ks, lq_p, lk_p, q_as_column):
    """Segment ids as tiles Mosaic can compare: one side a lane-broadcast column [b, l, 128],
    the other a lane row [b, 1, l]. The forward/dq kernels put q on rows, dk/dv puts kv there."""
    qs, ks = pad_axis(qs, 1, lq_p), pad_axis(ks, 1, lk_p)  # padded keys are masked by position
    col = lambda s: jnp.broadcast_to(s[:, :, None], s.shape + (LANES,))
    return (col(qs), ks[:, None, :]) if q_as_column else (qs[:, None, :], col(ks))


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


def _dot(a, b, dims):
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32, precision=precision)


def _call(kernel, cfg, grid, in_specs, out_specs, out_shape, scratch, semantics, cost):
    interpret = False
    if cfg.interpret:
        interpret = _InterpretParams() if _InterpretParams is not None else True
    return pl.pallas_call(
        kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
        scratch_shapes=scratch, interpret=interpret, cost_estimate=cost,
        compiler_params=_CompilerParams(dimension_semantics=semantics))


def _cost(cfg, b, hq, d, matmuls, nbytes):
    pairs = b * hq * cfg.q_len * cfg.kv_len * (0.5 if cfg.causal else 1.0)
    return pl.CostEstimate(flops=int(2 * matmuls * pairs * d), transcendentals=int(pairs),
                           bytes_accessed=int(nbytes))


# ----------------------------------------------------------------------------- forward

def _fwd_kernel(*refs, cfg, bq, bk, nk):
    if cfg.segments:
        q_ref, k_ref, v_ref, qs_ref, ks_ref, o_ref, lse_ref, m_scr, l_scr, acc_scr = refs
    else:
        q_ref, k_ref, v_ref, o_ref, lse_ref, m_scr, l_scr, acc_scr = refs
    qi, kj = pl.program_id(2), pl.program_id(3)

    @pl.when(kj == 0)
    def _init():
        m_scr[...] = jnp.full(m_scr.shape, -jnp.inf, jnp.float32)
        l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
        acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

    def body(masked):
        s = _dot(q_ref[...], k_ref[...], NT) * cfg.scale  # [bq, bk]
        if masked:
            q_pos = qi * bq + lax.broadcasted_iota(jnp.int32, s.shape, 0)
            k_pos = kj * bk + lax.broadcasted_iota(jnp.int32, s.shape, 1)
            segs = (_lanes(qs_ref[...], bk), ks_ref[...]) if cfg.segments else (None, None)
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

    _dispatch(*_block_flags(cfg, qi, kj, bq, bk), body)

    @pl.when(kj == nk - 1)
    def _finish():
        l = l_scr[...]
        inv = 1.0 / jnp.where(l == 0.0, 1.0, l)  # l == 0: the query saw nothing, acc is 0
        o_ref[...] = (acc_scr[...] * _lanes(inv, acc_scr.shape[1])).astype(o_ref.dtype)
        lse = jnp.where(l == 0.0, jnp.inf, m_scr[...] + jnp.log(l))  # [bq, 128]
        lse_ref[...] = jnp.transpose(lse)[:1, :]  # as a lane row [1, bq]


def _forward(q, k, v, qs, ks, cfg):
    """Returns out [b, lq, hq, d] and logsumexp [b, hq, lq] (float32; +inf where nothing seen)."""
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    bq, bk = cfg.tiles.block_q, cfg.tiles.block_kv
    lq_p, lk_p = round_up(lq, bq), round_up(lk, bk)
    nq, nk = lq_p // bq, lk_p // bk

    def kv_block(qi, kj):
        return jnp.minimum(kj, _last_kv_block(cfg, qi, bq, bk)) if cfg.causal else kj

    in_specs = [pl.BlockSpec((None, None, bq, d), lambda b_, h, i, j: (b_, h, i, 0)),
                pl.BlockSpec((None, None, bk, d), lambda b_, h, i, j: (b_, h // group, kv_block(i, j), 0))]
    in_specs.append(in_specs[1])
    args = [_to_kernel_layout(q, lq_p), _to_kernel_layout(k, lk_p),
            _to_kernel_layout(v, lk_p)]
    if cfg.segments:
        args += _segment_inputs(qs, ks, lq_p, lk_p, q_as_column=True)
        in_specs += [pl.BlockSpec((None, bq, LANES), lambda b_, h, i, j: (b_, i, 0)),
                     pl.BlockSpec((None, 1, bk), lambda b_, h, i, j: (b_, 0, kv_block(i, j)))]
    out_shape = [jax.ShapeDtypeStruct((b, hq, lq_p, d), q.dtype),
                 jax.ShapeDtypeStruct((b, hq, 1, lq_p), jnp.float32)]
    out_specs = [pl.BlockSpec((None, None, bq, d), lambda b_, h, i, j: (b_, h, i, 0)),
                 pl.BlockSpec((None, None, 1, bq), lambda b_, h, i, j: (b_, h, 0, i))]
    scratch = [pltpu.VMEM((bq, LANES), jnp.float32), pltpu.VMEM((bq, LANES), jnp.float32),
               pltpu.VMEM((bq, d), jnp.float32)]
    nbytes = sum(x.size * x.dtype.itemsize for x in args) * 2
    out, lse = _call(functools.partial(_fwd_kernel, cfg=cfg, bq=bq, bk=bk, nk=nk), cfg,
                     (b, hq, nq, nk), in_specs, out_specs, out_shape, scratch,
                     ("parallel", "parallel", "parallel", "arbitrary"),
                     _cost(cfg, b, hq, d, 2, nbytes))(*args)
    return _from_kernel_layout(out, lq, d), lse[:, :, 0, :lq]


# ----------------------------------------------------------------------------- backward

def _dkv_kernel(*refs, cfg, bq, bk, nq, group):
    if cfg.segments:
        (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref,
         dk_ref, dv_ref, dk_scr, dv_scr) = refs
    else:
        q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, dk_scr, dv_scr = refs
    kj, gi, qi = pl.program_id(2), pl.program_id(3), pl.program_id(4)

    @pl.when(jnp.logical_and(gi == 0, qi == 0))
    def _init():
        dk_scr[...] = jnp.zeros(dk_scr.shape, jnp.float32)
        dv_scr[...] = jnp.zeros(dv_scr.shape, jnp.float32)

    def body(masked):
        q, do = q_ref[...], do_ref[...]
        st = _dot(k_ref[...], q, NT) * cfg.scale  # transposed scores [bk, bq]
        if masked:
            k_pos = kj * bk + lax.broadcasted_iota(jnp.int32, st.shape, 0)
            q_pos = qi * bq + lax.broadcasted_iota(jnp.int32, st.shape, 1)
            segs = (qs_ref[...], _lanes(ks_ref[...], bq)) if cfg.segments else (None, None)
            st = jnp.where(_mask(cfg, bk, st.shape, q_pos, k_pos, *segs), st, -jnp.inf)
        pt = jnp.exp(st - lse_ref[...])  # lse row [1, bq]; +inf rows give p = 0
        dv_scr[...] += _dot(pt.astype(do.dtype), do, NN)
        dpt = _dot(v_ref[...], do, NT)
        dst = pt * (dpt - delta_ref[...])
        dk_scr[...] += _dot(dst.astype(q.dtype), q, NN)

    _dispatch(*_block_flags(cfg, qi, kj, bq, bk), body)

    @pl.when(jnp.logical_and(gi == group - 1, qi == nq - 1))
    def _finish():
        dk_ref[...] = (dk_scr[...] * cfg.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


def _dq_kernel(*refs, cfg, bq, bk, nk):
    if cfg.segments:
        (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qs_ref, ks_ref,
         dq_ref, dq_scr, lse_scr, delta_scr) = refs
    else:
        q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, dq_scr, lse_scr, delta_scr = refs
    qi, kj = pl.program_id(2), pl.program_id(3)

    @pl.when(kj == 0)
    def _init():
        dq_scr[...] = jnp.zeros(dq_scr.shape, jnp.float32)
        # logsumexp and delta arrive as lane rows; turn them into columns once per q block.
        lse_scr[...] = jnp.transpose(jnp.broadcast_to(lse_ref[...], (LANES, bq)))
        delta_scr[...] = jnp.transpose(jnp.broadcast_to(delta_ref[...], (LANES, bq)))

    def body(masked):
        k = k_ref[...]
        s = _dot(q_ref[...], k, NT) * cfg.scale  # [bq, bk]
        if masked:
            q_pos = qi * bq + lax.broadcasted_iota(jnp.int32, s.shape, 0)
            k_pos = kj * bk + lax.broadcasted_iota(jnp.int32, s.shape, 1)
            segs = (_lanes(qs_ref[...], bk), ks_ref[...]) if cfg.segments else (None, None)
            s = jnp.where(_mask(cfg, bk, s.shape, q_pos, k_pos, *segs), s, -jnp.inf)
        p = jnp.exp(s - _lanes(lse_scr[...], bk))
        dp = _dot(do_ref[...], v_ref[...], NT)
        ds = p * (dp - _lanes(delta_scr[...], bk))
        dq_scr[...] += _dot(ds.astype(k.dtype), k, NN)

    _dispatch(*_block_flags(cfg, qi, kj, bq, bk), body)

    @pl.when(kj == nk - 1)
    def _finish():
        dq_ref[...] = (dq_scr[...] * cfg.scale).astype(dq_ref.dtype)


def _backward(q, k, v, qs, ks, out, lse, do, cfg):
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    group = hq // hkv
    bq, bk = cfg.tiles.block_q_bwd, cfg.tiles.block_kv_bwd
    lq_p, lk_p = round_up(lq, bq), round_up(lk, bk)
    nq, nk = lq_p // bq, lk_p // bk
    delta = jnp.einsum("blhd,blhd->bhl", do.astype(jnp.float32), out.astype(jnp.float32))
    rows = lambda x, fill: pad_axis(x, 2, lq_p, fill)[:, :, None, :]  # [b, h, 1, lq_p]
    qt, kt, vt = (_to_kernel_layout(q, lq_p), _to_kernel_layout(k, lk_p),
                  _to_kernel_layout(v, lk_p))
    dot_, lse_r, delta_r = _to_kernel_layout(do, lq_p), rows(lse, jnp.inf), rows(delta, 0.0)
    nbytes = sum(x.size * x.dtype.itemsize for x in (qt, kt, vt, dot_)) * 2

    # dk, dv: grid (b, kv_head, kv_block, group, q_block); the last two axes reduce.
    def q_block(kj, qi):
        return jnp.maximum(qi, _first_q_block(cfg, kj, bq, bk, nq)) if cfg.causal else qi
    q_spec = pl.BlockSpec((None, None, bq, d),
                          lambda b_, h, j, g, i: (b_, h * group + g, q_block(j, i), 0))
    kv_spec = pl.BlockSpec((None, None, bk, d), lambda b_, h, j, g, i: (b_, h, j, 0))
    row_spec = pl.BlockSpec((None, None, 1, bq),
                            lambda b_, h, j, g, i: (b_, h * group + g, 0, q_block(j, i)))
    in_specs = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
    args = [qt, kt, vt, dot_, lse_r, delta_r]
    if cfg.segments:
        args += _segment_inputs(qs, ks, lq_p, lk_p, q_as_column=False)
        in_specs += [pl.BlockSpec((None, 1, bq), lambda b_, h, j, g, i: (b_, 0, q_block(j, i))),
                     pl.BlockSpec((None, bk, LANES), lambda b_, h, j, g, i: (b_, j, 0))]
    dk, dv = _call(
        functools.partial(_dkv_kernel, cfg=cfg, bq=bq, bk=bk, nq=nq, group=group), cfg,
        (b, hkv, nk, group, nq), in_specs, [kv_spec, kv_spec],
        [jax.ShapeDtypeStruct(kt.shape, k.dtype), jax.ShapeDtypeStruct(vt.shape, v.dtype)],
        [pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, d), jnp.float32)],
        ("parallel", "parallel", "parallel", "arbitrary", "arbitrary"),
        _cost(cfg, b, hq, d, 4, nbytes))(*args)

    # dq: grid (b, q_head, q_block, kv_block); the last axis reduces.
    def kv_block(qi, kj):
        return jnp.minimum(kj, _last_kv_block(cfg, qi, bq, bk)) if cfg.causal else kj
    q_spec = pl.BlockSpec((None, None, bq, d), lambda b_, h, i, j: (b_, h, i, 0))
    kv_spec = pl.BlockSpec((None, None, bk, d),
                           lambda b_, h, i, j: (b_, h // group, kv_block(i, j), 0))
    row_spec = pl.BlockSpec((None, None, 1, bq), lambda b_, h, i, j: (b_, h, 0, i))
    in_specs = [q_spec, kv_spec, kv_spec, q_spec, row_spec, row_spec]
    args = [qt, kt, vt, dot_, lse_r, delta_r]
    if cfg.segments:
        args += _segment_inputs(qs, ks, lq_p, lk_p, q_as_column=True)
        in_specs += [pl.BlockSpec((None, bq, LANES), lambda b_, h, i, j: (b_, i, 0)),
                     pl.BlockSpec((None, 1, bk), lambda b_, h, i, j: (b_, 0, kv_block(i, j)))]
    dq = _call(
        functools.partial(_dq_kernel, cfg=cfg, bq=bq, bk=bk, nk=nk), cfg,
        (b, hq, nq, nk), in_specs, q_spec, jax.ShapeDtypeStruct(qt.shape, q.dtype),
        [pltpu.VMEM((bq, d), jnp.float32), pltpu.VMEM((bq, LANES), jnp.float32),
         pltpu.VMEM((bq, LANES), jnp.float32)],
        ("parallel", "parallel", "parallel", "arbitrary"),
        _cost(cfg, b, hq, d, 3, nbytes))(*args)
    return (_from_kernel_layout(dq, lq, d), _from_kernel_layout(dk, lk, d),
            _from_kernel_layout(dv, lk, d))
