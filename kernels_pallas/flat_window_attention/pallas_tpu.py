"""Grouped attention (many small groups) as Pallas Mosaic TPU kernels: forward and one backward.

Each group of S <= MAX_GROUP_SIZE (512) tokens is attended within itself; a group's scores
[S, S] fit VMEM, so there is no online softmax: one grid step takes `groups_per_block` groups and loops over them,
computing each head's full softmax in one go.

Layout. Inputs [G, S, H, D] are read through the reshape [G, S, H*D] (a bitcast for row-major
arrays; XLA lays out the kernel's operands so) with blocks (groups_per_block, S, H*D): the last
two block dims are whole array dims, legal for Mosaic at any S and H*D, and the DMA of a block
is one contiguous run of HBM. head_dim 16 is far below a lane width (128): a block of one head
(16 lanes) is not (8, 128)-tileable, and slicing heads at 16-lane offsets would shift lanes, so
heads are never sliced out. Instead the H*D lanes are cut into 128-lane chunks (aligned slices)
and, inside a chunk, head j is selected by MASKING: q is zeroed outside head j's lanes before
q·k^T (so the 128-deep contraction sums head j only), and the product p·v is kept only on head
j's lanes. On the MXU a contraction or an output of 16 lanes costs as much as one of 128, so the
masked form does no extra matmul passes when H*D is a multiple of 128 and 128 % D == 0 (or D is a
multiple of 128: one head per chunk, no mask). Other head sizes (e.g. 48, 80) use one chunk of
all H*D lanes with H masked heads: correct, but H times the MXU work.

Orientation. Scores are computed transposed, sT = k·q^T [keys, queries]: the softmax reductions
run over sublanes (cheap elementwise maxima/sums across vregs, not cross-lane reductions), and
the per-query statistics come out as lane rows [1, S], which is how logsumexp is stored
([G, H, S] float32, lane-dense). The products that need p rather than p^T contract over the key
axis of both operands ("TN"), which Mosaic supports.

Backward (custom_vjp; residuals q, k, v, out, lse): one kernel per block of groups computes dq,
dk and dv of each group at once from p = exp(s - lse) (groups are independent: no atomics, no
second pass). delta = rowsum(dO * O) per head is one small f32 matmul per chunk (the head-lane
indicator [heads, lanes] times (dO * O)^T), which yields it directly as lane rows.

Partial last block (G not a multiple of groups_per_block): the loop over a block's groups stops
at G, so the garbage rows Pallas pads the edge block with are never computed on; their writes
are dropped by the pipeline. float16 is rejected (NotImplementedError): Mosaic has no f16 tiles.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

__all__ = ["attention", "default_groups_per_block"]

LANES = 128
NT = (((1,), (1,)), ((), ()))  # a @ b.T
NN = (((1,), (0,)), ((), ()))  # a @ b
TN = (((0,), (0,)), ((), ()))  # a.T @ b

# Rows (groups_per_block * group_size) per grid step. A grid step costs ~0.35 us of fixed
# overhead; one group of 128 tokens with 8 heads of 16 is ~67 MFLOP of (masked) matmuls, ~0.35 us
# on a v5e MXU, so ~8 groups (1024 rows) a step keep the overhead near 10%. Chosen by this
# arithmetic, not by measurement.
TARGET_ROWS = 1024
# Pipelined block buffers (double-buffered q, k, v, o, dO, dq, dk, dv of the backward) stay under
# this many bytes: half of v5e's 16 MiB default scoped VMEM, leaving room for the [S, S] f32
# temporaries (256 KiB each at S = 256).
VMEM_BLOCK_BUDGET = 8 * 1024 * 1024
# Keep at least this many grid steps when there are enough groups: the pipeline overlaps the
# next block's DMA with this block's compute, and megacore chips (v5p) split the grid over 2 cores.
MIN_STEPS = 8
# Larger groups would need [S, S] temporaries of over 1 MiB each: left to xla.
MAX_GROUP_SIZE = 512
# VMEM: above the smallest default scoped limit (16 MiB on v5e) the call asks for what it needs,
# up to 48 MiB (v5p has 95 MiB of VMEM, v5e and v6e 128 MiB); beyond that, NotImplementedError.
DEFAULT_SCOPED_VMEM = 16 * 1024 * 1024
MAX_VMEM = 48 * 1024 * 1024

# Names that moved between jax releases.
_CompilerParams = getattr(pltpu, "CompilerParams", None) or getattr(pltpu, "TPUCompilerParams")
_InterpretParams = getattr(pltpu, "InterpretParams", None)


@dataclasses.dataclass(frozen=True)
class _Config:
    """Everything static about one call (hashable: a nondiff argument of the custom_vjp)."""
    num_groups: int
    group_size: int
    heads: int
    head_dim: int
    chunk: int            # lanes per chunk (W): 128, head_dim, or heads * head_dim
    heads_per_chunk: int
    sm_scale: float
    groups_per_block: int
    interpret: bool
    vmem_limit: Optional[int]   # bytes to ask Mosaic for, None: the default scoped limit


def _vmem_estimate(s: int, heads: int, head_dim: int, chunk: int, gpb: int, itemsize: int) -> int:
    """Bytes of VMEM the backward (the larger kernel) needs, roughly: double-buffered blocks of
    q, k, v, o, dO, dq, dk, dv and lse, plus the f32 temporaries of one chunk ([S, S] scores,
    p, dp, ds and [S, W] operands and accumulators)."""
    blocks = 2 * gpb * (8 * s * heads * head_dim * itemsize + heads * s * 4)
    temps = 6 * s * s * 4 + 10 * s * chunk * 4
    return blocks + temps


def _chunking(heads: int, head_dim: int):
    """(chunk lanes W, heads per chunk): see the module docstring."""
    if head_dim % LANES == 0:
        return head_dim, 1
    if LANES % head_dim == 0 and (heads * head_dim) % LANES == 0:
        return LANES, LANES // head_dim
    return heads * head_dim, heads


def default_groups_per_block(num_groups: int, group_size: int, heads: int, head_dim: int,
                             itemsize: int) -> int:
    """TARGET_ROWS per step, capped by VMEM_BLOCK_BUDGET and by MIN_STEPS grid steps."""
    gpb = max(1, TARGET_ROWS // group_size)
    per_group = group_size * heads * head_dim * itemsize
    gpb = min(gpb, max(1, VMEM_BLOCK_BUDGET // (16 * per_group)))
    return max(1, min(gpb, -(-num_groups // MIN_STEPS)))


def attention(q, k, v, *, sm_scale: float, groups_per_block: Optional[int] = None,
              interpret: bool = False):
    """Grouped attention on Pallas Mosaic TPU; q, k, v [num_groups, group_size, heads, head_dim].

    Raises NotImplementedError for what the kernel does not take (so dispatch falls through to
    xla): dtypes other than float32/bfloat16 (float16 included: Mosaic rejects f16 tiles) and
    mixed dtypes.
    """
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"pallas_tpu: q, k, v must all be [num_groups, group_size, heads, "
                         f"head_dim]; got {q.shape}, {k.shape}, {v.shape}")
    if not (q.dtype == k.dtype == v.dtype):
        raise NotImplementedError(f"pallas_tpu needs q, k, v of one dtype; got {q.dtype}, "
                                  f"{k.dtype}, {v.dtype}")
    if q.dtype not in (jnp.float32, jnp.bfloat16):
        raise NotImplementedError(f"pallas_tpu takes float32 and bfloat16, not {q.dtype} "
                                  f"(Mosaic has no float16 tiles)")
    g, s, h, d = q.shape
    if groups_per_block is None:
        groups_per_block = default_groups_per_block(g, s, h, d, q.dtype.itemsize)
    if int(groups_per_block) < 1:
        raise ValueError(f"groups_per_block must be a positive integer, got {groups_per_block}")
    if s > MAX_GROUP_SIZE:
        raise NotImplementedError(f"pallas_tpu takes group_size up to {MAX_GROUP_SIZE}, got {s}")
    chunk, hpc = _chunking(h, d)
    need = _vmem_estimate(s, h, d, chunk, int(groups_per_block), q.dtype.itemsize)
    if need > MAX_VMEM:
        raise NotImplementedError(
            f"pallas_tpu: ~{need >> 20} MiB of VMEM for groups_per_block={groups_per_block}, "
            f"group_size {s}, {h} heads of {d} (limit {MAX_VMEM >> 20} MiB); use fewer groups "
            f"per block or implementation='xla'")
    limit = None if need <= DEFAULT_SCOPED_VMEM * 3 // 4 else min(MAX_VMEM, 2 * need)
    cfg = _Config(g, s, h, d, chunk, hpc, float(sm_scale), int(groups_per_block), bool(interpret),
                  limit)
    return _attention(q, k, v, cfg)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q, k, v, cfg):
    return _forward(q, k, v, cfg, with_lse=False)[0]  # outside differentiation: no lse to write


def _attention_fwd(q, k, v, cfg):
    out, lse = _forward(q, k, v, cfg)
    return out, (q, k, v, out, lse)


def _attention_bwd(cfg, res, do):
    q, k, v, out, lse = res
    return _backward(q, k, v, out, lse, do.astype(q.dtype), cfg)


_attention.defvjp(_attention_fwd, _attention_bwd)


# ----------------------------------------------------------------------------- helpers

def _dot(a, b, dims):
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32, precision=precision)


def _head_mask(cfg: _Config, j: int):
    """[1, W] bool: the lanes of head j within a chunk (None when a chunk holds one head)."""
    if cfg.heads_per_chunk == 1:
        return None
    lane = lax.broadcasted_iota(jnp.int32, (1, cfg.chunk), 1)
    return (lane >= j * cfg.head_dim) & (lane < (j + 1) * cfg.head_dim)


def _only(mask, x):
    return x if mask is None else jnp.where(mask, x, jnp.zeros_like(x))


def _chunks(cfg: _Config):
    """Static lane slices of the chunks of [.., H*D]."""
    return [pl.ds(c * cfg.chunk, cfg.chunk) for c in range(cfg.heads * cfg.head_dim // cfg.chunk)]


def _call(kernel, cfg, in_specs, out_specs, out_shape, cost):
    interpret = False
    if cfg.interpret:
        # "uninitialized": the edge block's rows past num_groups read as NaN, as garbage would on
        # hardware (the kernel never computes on them).
        interpret = (_InterpretParams(out_of_bounds_reads="uninitialized")
                     if _InterpretParams is not None else True)
    return pl.pallas_call(
        kernel, grid=(pl.cdiv(cfg.num_groups, cfg.groups_per_block),), in_specs=in_specs,
        out_specs=out_specs, out_shape=out_shape, interpret=interpret, cost_estimate=cost,
        compiler_params=_CompilerParams(dimension_semantics=("parallel",),
                                        vmem_limit_bytes=cfg.vmem_limit))


def _specs(cfg: _Config, n: int):
    block = pl.BlockSpec((cfg.groups_per_block, cfg.group_size, cfg.heads * cfg.head_dim),
                         lambda i: (i, 0, 0))
    return [block] * n


def _lse_spec(cfg: _Config):
    return pl.BlockSpec((cfg.groups_per_block, cfg.heads, cfg.group_size), lambda i: (i, 0, 0))


def _cost(cfg: _Config, matmuls: int, nbytes: int):
    pairs = cfg.num_groups * cfg.heads * cfg.group_size ** 2
    return pl.CostEstimate(flops=int(2 * matmuls * pairs * cfg.head_dim),
                           transcendentals=int(pairs), bytes_accessed=int(nbytes))


def _for_each_group(cfg: _Config, body):
    """Runs body(i) for the block's groups that exist (the edge block may be partial)."""
    first = pl.program_id(0) * cfg.groups_per_block
    n = jnp.minimum(cfg.groups_per_block, cfg.num_groups - first)

    def step(i, carry):
        body(i)
        return carry
    lax.fori_loop(0, n, step, 0)


# ----------------------------------------------------------------------------- forward

def _fwd_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref=None, *, cfg: _Config):
    def group(i):
        for c, lanes in enumerate(_chunks(cfg)):
            q, k, v = q_ref[i, :, lanes], k_ref[i, :, lanes], v_ref[i, :, lanes]
            out = None
            for j in range(cfg.heads_per_chunk):
                mask = _head_mask(cfg, j)
                st = _dot(k, _only(mask, q), NT) * cfg.sm_scale      # [keys, queries]
                m = jnp.max(st, axis=0, keepdims=True)                # [1, S] lane rows
                e = jnp.exp(st - m)
                l = jnp.sum(e, axis=0, keepdims=True)
                pt = e * (1.0 / l)
                o = _dot(pt.astype(v.dtype), v, TN)                   # p @ v: [S, W]
                out = o if mask is None else (jnp.where(mask, o, out) if j else o)
                if lse_ref is not None:
                    h = c * cfg.heads_per_chunk + j
                    lse_ref[i, h:h + 1, :] = m + jnp.log(l)
            o_ref[i, :, lanes] = out.astype(o_ref.dtype)
    _for_each_group(cfg, group)


def _forward(q, k, v, cfg: _Config, with_lse: bool = True):
    """out [G, S, H, D] and, with_lse, logsumexp [G, H, S] (float32, natural log)."""
    g, s, h, d = q.shape
    flat = lambda x: x.reshape(g, s, h * d)
    out_specs, out_shape = _specs(cfg, 1), [jax.ShapeDtypeStruct((g, s, h * d), q.dtype)]
    if with_lse:
        out_specs.append(_lse_spec(cfg))
        out_shape.append(jax.ShapeDtypeStruct((g, h, s), jnp.float32))
    nbytes = 4 * q.size * q.dtype.itemsize + (g * h * s * 4 if with_lse else 0)
    res = _call(functools.partial(_fwd_kernel, cfg=cfg), cfg, _specs(cfg, 3), out_specs,
                out_shape, _cost(cfg, 2, nbytes))(flat(q), flat(k), flat(v))
    return (res[0].reshape(q.shape),) + tuple(res[1:])


# ----------------------------------------------------------------------------- backward

def _bwd_kernel(q_ref, k_ref, v_ref, o_ref, do_ref, lse_ref, dq_ref, dk_ref, dv_ref, *,
                cfg: _Config):
    hpc, d = cfg.heads_per_chunk, cfg.head_dim
    rows = max(8, hpc)  # an indicator matrix of whole sublanes
    # ind[j, w] = 1 on head j's lanes: ind @ (dO*O)^T gives delta of every head as lane rows.
    ind = (lax.broadcasted_iota(jnp.int32, (rows, cfg.chunk), 1) // d
           == lax.broadcasted_iota(jnp.int32, (rows, cfg.chunk), 0)).astype(jnp.float32)

    def group(i):
        for c, lanes in enumerate(_chunks(cfg)):
            q, k, v = q_ref[i, :, lanes], k_ref[i, :, lanes], v_ref[i, :, lanes]
            do = do_ref[i, :, lanes]
            od = o_ref[i, :, lanes].astype(jnp.float32) * do.astype(jnp.float32)
            delta = _dot(ind, od, NT)                                 # [rows, S]
            dq = dk = dv = None
            for j in range(hpc):
                mask = _head_mask(cfg, j)
                qm, dom = _only(mask, q), _only(mask, do)
                h = c * hpc + j
                st = _dot(k, qm, NT) * cfg.sm_scale                   # [keys, queries]
                pt = jnp.exp(st - lse_ref[i, h:h + 1, :])
                dv_j = _dot(pt.astype(do.dtype), dom, NN)             # p^T @ dO (head j lanes)
                dpt = _dot(v, dom, NT)                                # (dO @ v^T)^T
                dst = (pt * (dpt - delta[j:j + 1, :])).astype(q.dtype)
                dk_j = _dot(dst, qm, NN)                              # dS^T @ q
                dq_j = _dot(dst, _only(mask, k), TN)                  # dS @ k
                dq = dq_j if dq is None else dq + dq_j
                dk = dk_j if dk is None else dk + dk_j
                dv = dv_j if dv is None else dv + dv_j
            dq_ref[i, :, lanes] = (dq * cfg.sm_scale).astype(dq_ref.dtype)
            dk_ref[i, :, lanes] = (dk * cfg.sm_scale).astype(dk_ref.dtype)
            dv_ref[i, :, lanes] = dv.astype(dv_ref.dtype)
    _for_each_group(cfg, group)


def _backward(q, k, v, out, lse, do, cfg: _Config):
    g, s, h, d = q.shape
    flat = lambda x: x.reshape(g, s, h * d)
    nbytes = 8 * q.size * q.dtype.itemsize + g * h * s * 4
    shape = jax.ShapeDtypeStruct((g, s, h * d), q.dtype)
    dq, dk, dv = _call(functools.partial(_bwd_kernel, cfg=cfg), cfg,
                       _specs(cfg, 5) + [_lse_spec(cfg)], _specs(cfg, 3), [shape] * 3,
                       _cost(cfg, 5, nbytes))(flat(q), flat(k), flat(v), flat(out), flat(do), lse)
    return dq.reshape(q.shape), dk.reshape(q.shape), dv.reshape(q.shape)
