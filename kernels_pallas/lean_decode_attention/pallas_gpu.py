"""Lean decode attention as one Pallas kernel with the Triton lowering (GPU), stream-K.

The schedule (common.schedule) is computed in XLA: tiny int32 arrays. One pallas_call with grid
(num_programs,): program p walks its units [prog_start[p], prog_end[p]) in a fori_loop with dynamic
bounds, carrying the current segment s (found for its first unit in XLA, then advanced in-kernel
by a small while loop past seg_start[s + 1], which also skips empty segments). Per unit it loads
the segment's q rows [group, d] and the k/v tile [block_k, d] straight from the whole caches
((sequence, position, head) indexing, no copy of the cache), masks positions >= lengths[b], and
runs an online softmax in base 2; when the segment ends or the program's range does, it stores the
partial (o unnormalised, m in natural-log units, l) to slot p + s and marks the slot with s. A
program entering a new segment starts its softmax over. common.merge combines the slots.

Triton wants power-of-two tiles >= 16: the group of q heads is padded to 16..64 rows (zero rows,
cropped after) and head_dim to a power of two (this pads the caches too, a copy: head_dims 16, 32,
64, 128, 256 avoid it). A cache shorter than one tile is padded to it (small); otherwise the last
tile of a sequence is read from a start clamped to max_len - block_k and the overlap is masked.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels_pallas.lean_decode_attention.common import locate, merge, schedule

__all__ = ["attention", "DEFAULT_BLOCK_K", "NUM_WARPS"]

# The Triton compiler-params class is `CompilerParams` in jax 0.10.2 and on jax's main branch;
# older releases called it `TritonCompilerParams` (and older still took a dict, see _params).
_PARAMS_CLS = getattr(plgpu, "CompilerParams", None) or getattr(plgpu, "TritonCompilerParams", None)
_LOG2E = math.log2(math.e)
_LN2 = math.log(2.0)
_MIN_TILE = 16      # Triton dots need M, N, K >= 16
MAX_GROUP = 64      # q heads per kv head handled in one tile
# Tokens per unit, by padded head_dim. Decode is bandwidth bound (16..64 query rows per tile), so
# the tile is sized for registers, not FLOPs: with 4 warps (128 threads) a [64, 128] bf16 k and v
# tile are ~32 registers/thread each next to the [<=64, d] float32 accumulator and the [<=64, 64]
# score tile, leaving room for the loads of the next unit. 64 also keeps stream-K fine grained:
# a program's share is within one unit (64 tokens) of every other's, and the masked tail of a
# ragged sequence wastes at most 63 tokens. d=256 halves it to stay in registers. Chosen by these
# rules, not by measurement (the session that wrote them had no GPU).
DEFAULT_BLOCK_K = {16: 64, 32: 64, 64: 64, 128: 64, 256: 32}
NUM_WARPS = 4
# The loads' addresses come from the in-loop segment search, so Triton cannot prefetch the next
# unit's tiles across iterations; more stages would only cost shared memory.
NUM_STAGES = 1


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _floor_pow2(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def _params():
    if _PARAMS_CLS is None:  # very old jax: dict form
        return dict(triton=dict(num_warps=NUM_WARPS, num_stages=NUM_STAGES))
    return _PARAMS_CLS(num_warps=NUM_WARPS, num_stages=NUM_STAGES)


def _dot(a, b, contract_a=1, contract_b=0):
    """bf16/f16 operands on tensor cores with float32 accumulation; float32 operands ask for full
    precision explicitly so no jax version silently picks TF32."""
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())),
                           precision=precision, preferred_element_type=jnp.float32)


def _kernel(seg_start_ref, prog_start_ref, prog_end_ref, prog_seg_ref, lengths_ref,
            q_ref, k_ref, v_ref, seg_in_ref,
            o_ref, m_ref, l_ref, seg_ref, *, hkv, bk, max_len, scale):
    del seg_in_ref  # aliased to seg_ref: slots no program writes keep their -1
    p = pl.program_id(0)
    gp, dp = q_ref.shape[1], q_ref.shape[2]
    start, end = prog_start_ref[p], prog_end_ref[p]
    seg0 = prog_seg_ref[p]
    cols = jnp.arange(bk, dtype=jnp.int32)

    def step(u, carry):
        acc, m, l, cur, base, nxt = carry

        # Advance to the segment holding unit u (skips empty segments: their start equals the next).
        def more(c):
            return u >= c[2]

        def advance(c):
            s, _, b_next = c
            return s + 1, b_next, seg_start_ref[s + 2]

        new, base, nxt = lax.while_loop(more, advance, (cur, base, nxt))
        fresh = new != cur
        seq, head = lax.div(new, jnp.int32(hkv)), lax.rem(new, jnp.int32(hkv))
        length = lengths_ref[seq]
        first = (u - base) * bk                       # first token of this unit
        lo = jnp.minimum(first, jnp.int32(max_len - bk))  # clamped read start (last tile)
        pos = lo + cols
        keep = (pos >= first) & (pos < length)

        q = q_ref[new, :, :]                          # [gp, dp]
        k = k_ref[seq, pl.ds(lo, bk), head, :]        # [bk, dp]
        v = v_ref[seq, pl.ds(lo, bk), head, :]
        s = _dot(q, k, 1, 1) * scale                  # [gp, bk], base-2 logits
        s = jnp.where(keep[None, :], s, -jnp.inf)
        m = jnp.where(fresh, jnp.full_like(m, -jnp.inf), m)  # a new segment starts over
        m_new = jnp.maximum(m, jnp.max(s, axis=1))    # finite: every unit holds a valid token
        alpha = jnp.exp2(m - m_new)                   # 0 when fresh: clears acc and l
        e = jnp.exp2(s - m_new[:, None])
        l = l * alpha + jnp.sum(e, axis=1)
        acc = acc * alpha[:, None] + _dot(e.astype(v.dtype), v)

        @pl.when((u == nxt - 1) | (u == end - 1))     # the segment or the range ends here
        def _():
            slot = p + new
            o_ref[slot, :, :] = acc
            m_ref[slot, :] = m_new * _LN2
            l_ref[slot, :] = l
            seg_ref[slot, :] = jnp.full((gp,), new, jnp.int32)

        return acc, m_new, l, new, base, nxt

    carry = (jnp.zeros((gp, dp), jnp.float32), jnp.full((gp,), -jnp.inf, jnp.float32),
             jnp.zeros((gp,), jnp.float32), seg0, seg_start_ref[seg0], seg_start_ref[seg0 + 1])
    lax.fori_loop(start, end, step, carry)


@functools.partial(jax.jit, static_argnames=("sm_scale", "bk", "num_programs", "interpret"))
def _attention(q, k_cache, v_cache, lengths, *, sm_scale, bk, num_programs, interpret):
    b, hq, d = q.shape
    max_len, hkv = k_cache.shape[1], k_cache.shape[2]
    g, n_seg, n_prog = hq // hkv, b * hkv, num_programs
    gp, dp = max(_MIN_TILE, _pow2(g)), max(_MIN_TILE, _pow2(d))
    n_slots = n_prog + n_seg

    lengths = jnp.clip(lengths.astype(jnp.int32), 0, max_len)
    sched = schedule(lengths, hkv, max_len, bk, n_prog)
    prog_seg = locate(sched, sched.prog_start)[0]   # segment of each program's first unit

    # Segment s = b * hkv + h holds query heads h*g .. h*g + g - 1; pad rows and head_dim.
    qg = jnp.pad(q.reshape(n_seg, g, d), ((0, 0), (0, gp - g), (0, dp - d)))
    pad_len = max(bk - max_len, 0)
    if pad_len or dp != d:  # copies the caches: only odd head_dims or caches shorter than a tile
        k_cache, v_cache = (jnp.pad(x, ((0, 0), (0, pad_len), (0, 0), (0, dp - d)))
                            for x in (k_cache, v_cache))
    seg_init = jnp.full((n_slots, gp), -1, jnp.int32)

    whole = lambda shape: pl.BlockSpec(shape, lambda i: (0,) * len(shape))
    ins = (sched.seg_start, sched.prog_start, sched.prog_end, prog_seg, lengths,
           qg, k_cache, v_cache, seg_init)
    out_shape = [jax.ShapeDtypeStruct((n_slots, gp, dp), jnp.float32),
                 jax.ShapeDtypeStruct((n_slots, gp), jnp.float32),
                 jax.ShapeDtypeStruct((n_slots, gp), jnp.float32),
                 jax.ShapeDtypeStruct((n_slots, gp), jnp.int32)]
    kernel = functools.partial(_kernel, hkv=hkv, bk=bk, max_len=max(max_len, bk),
                               scale=sm_scale * _LOG2E)
    slot_o, slot_m, slot_l, slot_seg = pl.pallas_call(
        kernel, grid=(n_prog,),
        in_specs=[whole(x.shape) for x in ins],
        out_specs=[whole(s.shape) for s in out_shape],
        out_shape=out_shape,
        input_output_aliases={len(ins) - 1: 3},
        compiler_params=_params(), interpret=interpret, name="lean_decode",
    )(*ins)
    out = merge(slot_o[:, :g, :d], slot_m[:, :g], slot_l[:, :g], slot_seg[:, 0], n_seg)
    return out.reshape(b, hq, d).astype(q.dtype)


def attention(q, k_cache, v_cache, lengths, *, sm_scale, block_k=None, num_programs,
              interpret=False):
    """Lean decode attention on Pallas/Triton; inputs already validated by common.check_inputs.

    Raises NotImplementedError for inputs it does not handle (dispatch falls through to xla) and
    RuntimeError when asked to compile for a GPU that is not there.
    """
    if not interpret and jax.default_backend() != "gpu":
        raise RuntimeError(f"pallas_gpu compiles a Triton kernel for a GPU, but jax's backend is "
                           f"{jax.default_backend()!r}; pass interpret=True to run it on CPU, "
                           f"or use implementation='xla'")
    b, hq, d = q.shape
    max_len, hkv = k_cache.shape[1], k_cache.shape[2]
    if hq // hkv > MAX_GROUP:
        raise NotImplementedError(f"pallas_gpu handles at most {MAX_GROUP} query heads per kv "
                                  f"head; got {hq // hkv}")
    if block_k is not None and (block_k < _MIN_TILE or block_k & (block_k - 1)):
        raise NotImplementedError(f"pallas_gpu needs a power-of-two block_k >= {_MIN_TILE} "
                                  f"(Triton); got {block_k}")
    if num_programs > 65535:
        raise NotImplementedError("pallas_gpu: num_programs must be <= 65535 (CUDA grid limit)")
    dp = max(_MIN_TILE, _pow2(d))
    # Never a tile longer than the cache (rounded down to a power of two), except caches < 16.
    bk = max(_MIN_TILE, min(block_k or DEFAULT_BLOCK_K[dp], _floor_pow2(max_len)))
    return _attention(q, k_cache, v_cache, lengths, sm_scale=float(sm_scale), bk=bk,
                      num_programs=int(num_programs), interpret=bool(interpret))
