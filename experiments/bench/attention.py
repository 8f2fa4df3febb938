"""Attention benchmark: our blockwise attention against stock JAX, on the same inputs in one run.

    python -m experiments.bench.attention                  # picks GPU or CPU mode from jax's backend
    python -m experiments.bench.attention --quick --time-budget 240
    python -m experiments.bench.attention --max-len 8192   # CPU: stop at 8k (64k takes many minutes)

GPU mode (jax.default_backend() == "gpu"): random bf16 inputs [batch, length, 16 heads, head_dim]
with batch * length = 16,384 tokens (B8 L2k, B4 L4k, B2 L8k, B1 L16k: the anchors' shapes), head_dim
128 and 64, causal and not; forward and forward+backward (the gradient of sum(output) w.r.t. q, k, v).
Timed: ours (kernels_pallas.blockwise_attention) `pallas_mosaic_gpu`, `pallas_gpu` (Triton), the
dispatcher's default (implementation=None: 'ours_default') and `xla`, and the anchors
jax.nn.dot_product_attention(implementation="cudnn"), jax's Mosaic GPU flash attention
(jax.experimental.pallas.ops.gpu.attention_mgpu, float16 only; its backward is non-causal only),
jax's Pallas Triton flash kernel (jax.experimental.pallas.ops.gpu.attention.mha) and
jax.nn.dot_product_attention(implementation="xla") (dense; skipped above 8k like the anchors).
`run_targets` is the target shape alone (B2 L8k H16 D128, each figure checked against a float32
oracle, targets: forward >= 1.0x cuDNN, forward+backward >= 0.9x), which experiments.bench.targets
runs with decode's and window's. Each figure is the median of 3 batches of 20 back-to-back
calls, the timing of the published anchor figures this compares with. Every entry's output (and gradients) is compared with the
first anchor that ran on that shape; a mismatch is flagged, never hidden.

CPU mode: causal forward+backward, batch 1, 8 heads, head_dim 64, float32, lengths 2k..64k: ours
`xla` against dense XLA (jax.nn.dot_product_attention(implementation="xla")). Each measurement runs
in a fresh subprocess, which reports time (median of a few calls), XLA's compiled memory analysis
and its peak resident memory above a baseline (the same process after importing jax and building
the inputs). Before running, the child predicts its need from memory_analysis() and skips (with
the reason recorded) when that exceeds the memory available; the parent also kills a child whose
resident memory runs past the limit, so the machine never runs out. The numerics of `xla` against
dense are asserted before anything is timed. Targets (pass/fail): xla at 65,536 completes within
24 GiB; at 8,192 xla is faster than dense and under 1 GB; at 2,048 xla is within 1.5x dense's time.

Both modes write experiments/bench/results/attention_<device-kind>_<date>.json (rewritten after
every entry, so a run cut short still leaves its figures) and print a table.

FLOP counts (the anchors' convention): forward 4*B*H*Lq*Lk*D, halved for causal; forward+backward
3.5x forward. This script imports only jax, numpy, the standard library and kernels_pallas.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

from experiments.bench.harness import (GIB, REPO, RESULTS_DIR, Report, error_text, fmt, max_abs, mem_available,
                                       mem_total, proc_status, rel_diff, rel_err, timed_batches)

RESULT_MARK = "@@RESULT@@"

# Numerics: max|got - want| / max|want| for the output and for each gradient. GPU entries are
# compared with another bf16 implementation, so twice the bf16 tolerance of the kernel tests
# against a float64 oracle; CPU compares float32 blockwise with float32 dense.
TOL = {"bfloat16": {"out": 4e-2, "grad": 8e-2}, "float32": {"out": 1e-4, "grad": 2e-4}}

# Targets for the CPU run (length, description).
TARGET_GIB_64K = 24
TARGET_PEAK_8K_BYTES = 1e9
TARGET_RATIO_2K = 1.5


def attention_flops(b, h, lq, lk, d, causal, backward):
    f = 4.0 * b * h * lq * lk * d
    if causal:
        f /= 2
    return f * 3.5 if backward else f


def make_report(args, mode) -> Report:
    return Report("attention", json_path=args.json, out_dir=args.out_dir, mode=mode,
                  args={k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in vars(args).items()},
                  flop_convention="forward 4*B*H*Lq*Lk*D, halved for causal; forward+backward 3.5x forward",
                  checks=[], rows=[], targets=[], errors=[])


# ---------------------------------------------------------------------------------------------
# The implementations timed on a GPU (full matrix and target shapes)
# ---------------------------------------------------------------------------------------------
GPU_IMPLS = ("jax_cudnn", "jax_mgpu", "jax_triton", "jax_xla", "ours_pallas_mosaic_gpu", "ours_pallas_gpu",
             "ours_default", "ours_xla")
ANCHORS = {"jax_cudnn": "cudnn", "jax_triton": "triton", "jax_xla": "xla"}  # short names for the ratio columns
OURS = ("ours_pallas_mosaic_gpu", "ours_pallas_gpu", "ours_default", "ours_xla")
# jax's Mosaic GPU flash attention (FlashAttention-3 style; f16 only: its kernels stage q, k, v through
# float16 shared memory). Forward blocks as its own benchmark; the backward needs its four blocks and
# runs non-causal only (causal raises NotImplementedError, which the row records).
MGPU_CONFIG = dict(block_q=64, block_kv=128, max_concurrent_steps=2,
                   block_q_dkv=64, block_kv_dkv=64, block_q_dq=64, block_kv_dq=64)


def impl_spec(name, causal, d, *, interpret=False, tokamax=None):
    """How to run `name` on [batch, length, heads, head_dim] inputs: dict(fn, prepare, unprepare,
    implementation, source[, dtype, note]). prepare(q, k, v) -> the arguments fn takes (outside the
    timed call); unprepare(grads) -> the gradients with respect to the original q, k, v."""
    import jax
    import jax.numpy as jnp
    from kernels_pallas.blockwise_attention import blockwise_attention
    scale = d ** -0.5
    spec = dict(prepare=lambda q, k, v: (q, k, v), unprepare=lambda g: g, source="anchor", implementation=None)
    if name == "jax_cudnn":
        # What our `cudnn` implementation calls (hence implementation='cudnn').
        spec.update(fn=lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn"),
                    implementation="cudnn")
    elif name == "jax_xla":
        spec.update(fn=lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla"))
    elif name == "jax_triton":
        def fn(q, k, v):
            from jax.experimental.pallas.ops.gpu import attention as tri
            # [batch, seq, heads, dim] like ours; sm_scale defaults to 1.0 there, so pass it.
            return tri.mha(q, k, v, segment_ids=None, sm_scale=scale, causal=causal, interpret=interpret)
        spec.update(fn=fn)
    elif name == "jax_mgpu":
        def fn(q, k, v):
            from jax.experimental.pallas.ops.gpu import attention_mgpu as mg
            return mg.attention(q, k, v, mg.TuningConfig(causal=causal, **MGPU_CONFIG))
        # It applies no softmax scale: scale q beforehand (untimed), and dq back for the check.
        spec.update(fn=fn, dtype="float16", note="float16 inputs, q pre-scaled by head_dim**-0.5 (untimed)",
                    prepare=lambda q, k, v: ((q.astype(jnp.float32) * scale).astype(jnp.float16),
                                             k.astype(jnp.float16), v.astype(jnp.float16)),
                    unprepare=lambda g: (g[0] * scale, g[1], g[2]))
    elif name == "tokamax_mosaic":
        if tokamax is None:
            raise ValueError("tokamax_mosaic needs the tokamax module")
        spec.update(fn=lambda q, k, v: tokamax.dot_product_attention(q, k, v, is_causal=causal,
                                                                     implementation="mosaic"))
    elif name.startswith("ours_"):
        impl = name[len("ours_"):]
        impl = None if impl == "default" else impl
        spec.update(fn=lambda q, k, v: blockwise_attention(q, k, v, causal=causal, implementation=impl),
                    implementation=impl, source="ours")
    else:
        raise ValueError(f"unknown implementation {name!r}")
    return spec


def fwd_bwd_of(f):
    """The gradient of sum(f(q, k, v)) with respect to q, k, v (the anchors' forward+backward)."""
    import jax
    import jax.numpy as jnp
    return jax.jit(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32)), argnums=(0, 1, 2)))


# ---------------------------------------------------------------------------------------------
# GPU mode: the full matrix
# ---------------------------------------------------------------------------------------------
def run_gpu(args, report):
    import jax
    import jax.numpy as jnp
    import numpy as np

    t_start = time.time()
    head_dims = [int(x) for x in args.head_dims.split(",")]
    lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else [2048, 4096, 8192, 16384]
    if args.quick and not args.lengths:
        lengths = [2048, 8192, 16384]
    if args.quick and args.head_dims == parser_defaults()["head_dims"]:
        head_dims = [128]
    lengths = [n for n in lengths if n <= args.max_len]
    # Most informative shapes first (the anchors' L8192, then 16k, 4k, 2k), so a time budget that
    # runs out drops the least informative ones.
    order = [8192, 16384, 4096, 2048]
    lengths.sort(key=lambda n: (order.index(n) if n in order else len(order), n))
    impls = [s for s in args.impls.split(",")] if args.impls else list(GPU_IMPLS)
    causal_modes = {"both": (False, True), "causal": (True,), "noncausal": (False,)}[args.causal]
    reps, batches, warmup = (args.reps or (10 if args.quick else 20)), 3, 1  # + the compiling call
    dtype = jnp.dtype(args.dtype or "bfloat16")
    tol = TOL.get(dtype.name, TOL["bfloat16"])
    report.doc["gpu"] = dict(heads=args.heads, tokens=args.tokens, head_dims=head_dims, lengths=lengths,
                             impls=impls, reps=reps, batches=batches, warmup=warmup, dtype=dtype.name,
                             tolerance=tol)
    print(f"GPU mode: lengths {lengths}, head_dims {head_dims}, impls {impls}, "
          f"{batches}x{reps} calls per figure, budget {args.time_budget:.0f}s", flush=True)

    def record(row):
        report.add(row, hide=("batch_ms",))

    for d in head_dims:
        for L in lengths:
            B = max(1, args.tokens // L)
            H = args.heads
            keys = jax.random.split(jax.random.key(args.seed), 3)
            q, k, v = (jax.random.normal(kk, (B, L, H, d), jnp.float32).astype(dtype) for kk in keys)
            for causal in causal_modes:
                for backward in (False, True):
                    kind = "fwd+bwd" if backward else "fwd"
                    flops = attention_flops(B, H, L, L, d, causal, backward)
                    base = None  # (name, output) of the first anchor that ran on this shape
                    for name in impls:
                        row = dict(kind=kind, impl=name, B=B, L=L, H=H, D=d, causal=causal,
                                   dtype=dtype.name, flops=flops, ms=None, op="attention",
                                   batch=B, q_len=L, kv_len=L, q_heads=H, kv_heads=H, head_dim=d,
                                   **{"pass": "fwd_bwd" if backward else "fwd"})
                        if time.time() - t_start > args.time_budget:
                            row["error"] = f"skipped: time budget {args.time_budget:.0f}s spent"
                            record(row)
                            continue
                        if name == "jax_xla" and L > 8192 and not args.dense_long:
                            row["error"] = "skipped: dense XLA above 8192 (as the anchors; --dense-long runs it)"
                            record(row)
                            continue
                        try:
                            spec = impl_spec(name, causal, d)
                            row.update(implementation=spec["implementation"], source=spec["source"])
                            if "dtype" in spec:
                                row.update(dtype=spec["dtype"], note=spec["note"])
                            fn = fwd_bwd_of(spec["fn"]) if backward else jax.jit(spec["fn"])
                            args_ = spec["prepare"](q, k, v)
                            # Timed through jit's own dispatch, as the anchors were; the first call
                            # compiles (and runs once).
                            t0 = time.perf_counter()
                            jax.block_until_ready(fn(*args_))
                            row["first_call_s"] = time.perf_counter() - t0
                            sec, batch_s, out = timed_batches(fn, args_, reps, batches, warmup)
                            row["ms"] = sec * 1e3
                            row["batch_ms"] = [t * 1e3 for t in batch_s]
                            row["tflops"] = flops / sec / 1e12
                            outs = spec["unprepare"](out) if backward else (out,)
                            finite = all(bool(jnp.all(jnp.isfinite(x))) for x in outs)
                            row["finite"] = finite
                            if base is None:
                                if name in ANCHORS and finite:
                                    base = (name, [np.asarray(x, np.float32) for x in outs])
                            else:
                                diffs = [rel_diff(x, w) for x, w in zip(outs, base[1])]
                                row["diff_vs"] = base[0]
                                row["rel_diff"] = row["rel_err"] = max(diffs)
                                limit = tol["grad"] if backward else tol["out"]
                                row["numerics_ok"] = row["ok"] = bool(finite and max(diffs) <= limit)
                                if not row["numerics_ok"]:
                                    msg = (f"{name} {kind} B{B} L{L} H{H} D{d} causal={causal}: "
                                           f"rel diff {max(diffs):.3g} vs {base[0]} (limit {limit}), finite={finite}")
                                    report.doc["errors"].append("numerics: " + msg)
                                    print("NUMERICS MISMATCH:", msg, flush=True)
                            del out, outs, fn
                        except Exception as e:  # one failing entry must not end the run
                            row["error"] = error_text(e)
                        record(row)
                    del base
            del q, k, v
            jax.clear_caches()

    # Ratios: ours' throughput over each anchor's on the same shape (>1: ours faster).
    by_shape = {}
    for r in report.doc["rows"]:
        by_shape.setdefault((r["kind"], r["B"], r["L"], r["D"], r["causal"]), {})[r["impl"]] = r
    for shape, rows in by_shape.items():
        for ours in OURS:
            if ours in rows and rows[ours].get("ms"):
                ratios = {}
                for anchor, short in ANCHORS.items():
                    a = rows.get(anchor)
                    ratios[short] = a["ms"] / rows[ours]["ms"] if a and a.get("ms") else None
                rows[ours]["speedup_vs"] = ratios
    report.save()
    print_gpu_table(report.doc["rows"])


def print_gpu_table(rows):
    print("\nms: median of batches; TFLOP/s by the anchors' convention; xcudnn/xtriton/xxla: ours' speed "
          "relative to that anchor on the same shape (>1 = ours faster); diff: max rel diff vs the named anchor")
    head = "%-7s %-6s %4s %-9s %-16s %9s %8s %7s %7s %7s %10s  %s" % (
        "kind", "causal", "D", "BxL", "impl", "ms", "TFLOP/s", "xcudnn", "xtriton", "xxla", "diff", "note")
    print(head)
    print("-" * len(head))
    for r in rows:
        sp = r.get("speedup_vs") or {}
        note = r.get("error", "")
        if r.get("numerics_ok") is False:
            note = "NUMERICS MISMATCH " + note
        print("%-7s %-6s %4d %-9s %-16s %9s %8s %7s %7s %7s %10s  %s" % (
            r["kind"], r["causal"], r["D"], f"{r['B']}x{r['L']}", r["impl"], fmt(r.get("ms"), ".3f"),
            fmt(r.get("tflops"), ".1f"), fmt(sp.get("cudnn"), ".2f", ""), fmt(sp.get("triton"), ".2f", ""),
            fmt(sp.get("xla"), ".2f", ""), fmt(r.get("rel_diff"), ".2e", ""), note[:90]))


# ---------------------------------------------------------------------------------------------
# Target shapes (experiments.bench.targets runs them with decode's and window's in one process)
# ---------------------------------------------------------------------------------------------
TARGET_SHAPE = dict(batch=2, length=8192, heads=16, head_dim=128, dtype="bfloat16")  # the anchors' shape
SMOKE_SHAPE = dict(batch=1, length=256, heads=2, head_dim=64, dtype="float32")       # CPU: checks the script
# cuDNN (the targets' yardstick) and ours first: a budget that runs out drops the other anchors.
TARGET_IMPLS = ("jax_cudnn", "ours_pallas_mosaic_gpu", "ours_pallas_gpu", "ours_default", "jax_mgpu", "jax_triton")
TARGET_OURS = ("ours_pallas_mosaic_gpu", "ours_pallas_gpu", "ours_default")
# Forward at least as fast as cuDNN, forward+backward at least 0.9x its speed (causal and not).
TARGET_RATIO = {"fwd": 1.0, "fwd_bwd": 0.9}


def oracle_slice(x):
    """Batch 0, heads 0-1: heads and batch entries are independent, so the gradients of sum(out) on
    this slice are exactly the slice of the full gradients; a float32 oracle over it stays cheap."""
    return x[:1, :, :2]


def run_targets(report, *, smoke=False, deadline=None, tokamax=None):
    """L8k D128 bf16 (B2 H16), causal and not, forward and forward+backward: ours (Mosaic GPU,
    Triton, the dispatcher's default) against cuDNN, jax's Mosaic GPU attention_mgpu, jax's Triton
    mha (and tokamax when it imports). Each row's output or gradients are checked against the
    float32 oracle on `oracle_slice`. Smoke (CPU): a tiny shape, jax's Triton kernel in interpret
    mode, the GPU-only entries recorded as errors."""
    import jax
    import jax.numpy as jnp
    from experiments.bench.harness import attention_oracle, dispatch_choice, measure, row
    shape = SMOKE_SHAPE if smoke else TARGET_SHAPE
    B, L, H, d = shape["batch"], shape["length"], shape["heads"], shape["head_dim"]
    dtype = jnp.dtype(shape["dtype"])
    reps, batches, warmup = (1, 1, 0) if smoke else (10, 3, 1)
    impls = list(TARGET_IMPLS) + (["tokamax_mosaic"] if tokamax is not None else [])
    report.doc["targets_config"] = dict(**shape, impls=impls, reps=reps, batches=batches, warmup=warmup,
                                        tolerance=TOL[dtype.name], ratio_thresholds=TARGET_RATIO,
                                        oracle="float32 dense attention on batch 0, heads 0-1")
    q, k, v = jax.jit(lambda key: tuple(jax.random.normal(kk, (B, L, H, d), jnp.float32).astype(dtype)
                                        for kk in jax.random.split(key, 3)))(jax.random.key(0))
    # float32 slices: the oracle's gradients come back in float32, not rounded to the inputs' dtype.
    sq, sk, sv = (oracle_slice(x).astype(jnp.float32) for x in (q, k, v))
    want = {}
    for causal in (False, True):
        oracle = lambda q, k, v, causal=causal: attention_oracle(q, k, v, causal=causal)
        want[causal, "fwd"] = jax.jit(oracle)(sq, sk, sv)
        want[causal, "fwd_bwd"] = fwd_bwd_of(oracle)(sq, sk, sv)
    # cuDNN and ours on all four (causal, pass) pairs first, then the other anchors: a budget that
    # runs out costs anchors, not targets.
    combos = [(c, p) for c in (False, True) for p in ("fwd", "fwd_bwd")]
    first = [n for n in impls if n == "jax_cudnn" or n in TARGET_OURS]
    entries = [(c, p, n) for group in (first, [n for n in impls if n not in first]) for c, p in combos for n in group]
    for causal, pass_, name in entries:
        flops = attention_flops(B, H, L, L, d, causal, pass_ == "fwd_bwd")
        tol = TOL[dtype.name]["out" if pass_ == "fwd" else "grad"]
        r = row("attention", pass_, name, None, source="anchor", dtype=dtype, head_dim=d, batch=B,
                q_len=L, kv_len=L, q_heads=H, kv_heads=H, causal=causal, flops=flops)
        try:
            spec = impl_spec(name, causal, d, interpret=smoke, tokamax=tokamax)
            r.update(implementation=spec["implementation"], source=spec["source"])
            if "dtype" in spec:
                r.update(dtype=spec["dtype"], note=spec["note"])
            if name == "ours_default" and _copy_dispatched(report, r, dispatch_choice(
                    "kernels_pallas.blockwise_attention", q, k, v, causal=causal)):
                continue
            args = spec["prepare"](q, k, v)
        except Exception as e:
            r["error"] = error_text(e)
            report.add(r, hide=("batch_ms",))
            continue
        fn = fwd_bwd_of(spec["fn"]) if pass_ == "fwd_bwd" else spec["fn"]

        def check(out, spec=spec, key=(causal, pass_)):
            if key[1] == "fwd_bwd":
                return rel_err(tuple(oracle_slice(g) for g in spec["unprepare"](out)), want[key])
            return rel_err(oracle_slice(out), want[key])
        measure(report, r, fn, args, reps=reps, batches=batches, warmup=warmup, deadline=deadline,
                check=check, tol=tol)
        if r.get("ms"):
            r["tflops"] = flops / r["ms"] / 1e9
        report.doc["targets"] = attention_targets(report.rows)
        report.save()
        del args
    del want
    report.doc["targets"] = attention_targets(report.rows)
    report.save()


def _copy_dispatched(report, r, choice):
    """ours_default: when the dispatcher says which implementation it picks and that row ran on this
    shape, its figures are this row's (the same kernel after the same dispatch): no second compile.
    Returns whether the row was added."""
    name, text = choice
    r["dispatched"], r["explain"] = name, text
    same = next((x for x in reversed(report.rows) if name and x["impl"] == f"ours_{name}"
                 and all(x.get(f) == r.get(f) for f in ("op", "pass", "causal", "batch", "q_len", "kv_len", "dtype"))
                 and x.get("ms") and not x.get("error")), None)
    if same is None:
        return False
    r.update({f: same.get(f) for f in ("ms", "batch_ms", "finite", "rel_err", "tolerance", "ok", "tflops", "gb_per_s",
                                      "fraction_of_copy", "fraction_of_floor") if f in same},
             ms_from=same["impl"])
    report.add(r, hide=("batch_ms",))
    return True


def attention_targets(rows):
    from experiments.bench.harness import target
    out = []
    for causal in (False, True):
        for pass_, threshold in TARGET_RATIO.items():
            pick = lambda impl: next((r for r in rows if r.get("op") == "attention" and r["impl"] == impl
                                      and r["causal"] == causal and r["pass"] == pass_), None)
            cudnn = pick("jax_cudnn")
            for ours in TARGET_OURS:
                r = pick(ours)
                if r is None or cudnn is None:
                    continue
                shape = f"B{r['batch']} L{r['q_len']} H{r['q_heads']} D{r['head_dim']} {r['dtype']}"
                missing = [f"{x['impl']}: {x.get('error') or 'no time'}" for x in (r, cudnn) if not x.get("ms")]
                out.append(target(f"attention {pass_} causal={causal} {shape}: {ours} >= {threshold}x cuDNN's speed",
                                  ratio=None if missing else cudnn["ms"] / r["ms"], threshold=threshold,
                                  ok=r.get("ok"), why="; ".join(missing) or None, op="attention", impl=ours,
                                  causal=causal, ours_ms=r.get("ms"), cudnn_ms=cudnn.get("ms"), **{"pass": pass_}))
    return out


# ---------------------------------------------------------------------------------------------
# CPU mode
# ---------------------------------------------------------------------------------------------
CPU_DEFAULT_LENGTHS = [2048, 4096, 8192, 16384, 32768, 65536]
CPU_QUICK_LENGTHS = [256, 512, 1024, 2048]
CPU_IMPLS = ("xla", "dense", "reference")


def cpu_attention_fn(impl, causal):
    import jax
    from kernels_pallas.blockwise_attention import blockwise_attention
    if impl == "xla":
        return lambda q, k, v: blockwise_attention(q, k, v, causal=causal, implementation="xla")
    if impl == "dense":
        return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla")
    if impl == "reference":
        return lambda q, k, v: blockwise_attention(q, k, v, causal=causal, implementation="reference")
    raise ValueError(f"unknown CPU implementation {impl!r}")


def cpu_inputs(spec):
    import jax
    import jax.numpy as jnp
    keys = jax.random.split(jax.random.key(spec["seed"]), 3)
    shape = (spec["B"], spec["L"], spec["H"], spec["D"])
    return tuple(jax.random.normal(kk, shape, jnp.dtype(spec["dtype"])) for kk in keys)


def fwd_bwd(f):
    import jax
    import jax.numpy as jnp
    def loss(q, k, v):
        return jnp.sum(f(q, k, v).astype(jnp.float32))
    return jax.grad(loss, argnums=(0, 1, 2))


def child_main(spec):
    """One measurement in this (fresh) process; prints RESULT_MARK + JSON on its last line."""
    res = dict(spec=spec)
    try:
        import jax
        import jax.numpy as jnp
        q, k, v = jax.block_until_ready(cpu_inputs(spec))
        base = proc_status()
        res["baseline_rss_bytes"] = base.get("VmRSS")
        fn = jax.jit(fwd_bwd(cpu_attention_fn(spec["impl"], spec["causal"])))
        t0 = time.perf_counter()
        compiled = fn.lower(q, k, v).compile()
        res["compile_s"] = time.perf_counter() - t0
        ma = compiled.memory_analysis()
        if ma is not None:
            for f in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
                      "alias_size_in_bytes", "generated_code_size_in_bytes"):
                res[f"xla_{f}"] = getattr(ma, f, None)
            need = (res.get("xla_temp_size_in_bytes") or 0) + (res.get("xla_output_size_in_bytes") or 0)
            res["predicted_bytes"] = need
            # Room: what the machine has free now, and what the parent's kill limit leaves this process.
            rooms = [mem_available(), None]
            if spec.get("mem_limit_bytes"):
                rooms[1] = spec["mem_limit_bytes"] - proc_status().get("VmRSS", 0)
            rooms = [r for r in rooms if r is not None]
            if rooms:
                room = min(rooms) - GIB // 2  # headroom for the allocator and the runtime
                res["room_bytes"] = room
                if need > room:
                    res["skipped"] = (f"predicted {need / GIB:.1f} GiB (XLA temp+output) exceeds the "
                                      f"{max(room, 0) / GIB:.1f} GiB available; not run")
                    print(RESULT_MARK + json.dumps(res), flush=True)
                    return
        after_compile = proc_status()
        res["hwm_after_compile_bytes"] = after_compile.get("VmHWM")
        # Reset the peak (VmHWM) to the current RSS so the run's peak excludes the compiler's.
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            res["hwm_reset"] = True
        except OSError:
            res["hwm_reset"] = False
        res["rss_before_run_bytes"] = proc_status().get("VmRSS")
        out = None
        for _ in range(spec["warmup"]):
            out = jax.block_until_ready(compiled(q, k, v))
        ts = []
        for _ in range(spec["reps"]):
            t = time.perf_counter()
            out = jax.block_until_ready(compiled(q, k, v))
            ts.append(time.perf_counter() - t)
        end = proc_status()
        res["times_s"] = ts
        res["ms"] = statistics.median(ts) * 1e3
        res["finite"] = all(bool(jnp.all(jnp.isfinite(g))) for g in out)
        res["peak_run_rss_bytes"] = end.get("VmHWM")
        res["peak_total_rss_bytes"] = max(end.get("VmHWM") or 0, after_compile.get("VmHWM") or 0)
        if res["baseline_rss_bytes"] and end.get("VmHWM"):
            # Memory the computation needed: the run's peak over the process with jax and inputs.
            res["peak_bytes"] = end["VmHWM"] - res["baseline_rss_bytes"]
            res["peak_incl_compile_bytes"] = res["peak_total_rss_bytes"] - res["baseline_rss_bytes"]
    except Exception as e:
        res["error"] = error_text(e)
        res["traceback"] = traceback.format_exc()[-2000:]
    print(RESULT_MARK + json.dumps(res), flush=True)


def run_child(spec, rss_limit, timeout_s, min_available=GIB // 2):
    """Runs one measurement in a fresh process, watching its memory; returns its result dict."""
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "experiments.bench.attention", "--child", json.dumps(spec)]
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO), env=env)
        t0 = time.time()
        killed = None
        peak_seen = 0
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            rss = proc_status(proc.pid).get("VmRSS", 0)
            peak_seen = max(peak_seen, rss)
            avail = mem_available()
            if killed is None:
                if rss_limit and rss > rss_limit:
                    killed = f"killed: resident memory {rss / GIB:.1f} GiB passed the {rss_limit / GIB:.1f} GiB limit"
                elif avail is not None and avail < min_available:
                    killed = (f"killed: the machine's available memory fell to {avail / GIB:.2f} GiB "
                              f"(child at {rss / GIB:.1f} GiB)")
                elif time.time() - t0 > timeout_s:
                    killed = f"killed: ran past {timeout_s:.0f}s"
                if killed:
                    proc.kill()
            time.sleep(0.05)
        wall = time.time() - t0
        out.seek(0)
        text = out.read()
    res = None
    for line in text.splitlines():
        if line.startswith(RESULT_MARK):
            res = json.loads(line[len(RESULT_MARK):])
    if res is None:
        res = dict(spec=spec, error=killed or f"child exited {proc.returncode} without a result: {text[-800:]}")
    elif killed:
        res["error"] = killed
    res["child_wall_s"] = wall
    res["child_ru_maxrss_bytes"] = ru.ru_maxrss * 1024  # Linux: KiB; the whole child, compile included
    res["parent_seen_peak_rss_bytes"] = peak_seen
    res.pop("spec", None)
    return res


def cpu_reps(L, quick):
    if L <= 4096:
        warm, reps = 1, 5
    elif L <= 8192:
        warm, reps = 1, 3
    elif L <= 16384:
        warm, reps = 1, 2
    elif L <= 32768:
        warm, reps = 0, 2  # compiled ahead of time: the first call is not a compile
    else:
        warm, reps = 0, 1
    if quick:
        reps = max(1, (reps + 1) // 2)
    return warm, reps


def check_cpu_numerics(args, report, impls):
    """Output and gradients of each implementation against dense at a small length; before timing."""
    import jax
    L = min(1024, min(args.cpu_lengths))
    spec = dict(B=1, L=L, H=args.heads_cpu, D=args.head_dim_cpu, dtype="float32", seed=args.seed)
    q, k, v = cpu_inputs(spec)
    want_out = jax.jit(cpu_attention_fn("dense", True))(q, k, v)
    want_grads = jax.jit(fwd_bwd(cpu_attention_fn("dense", True)))(q, k, v)
    ok = {}
    for impl in impls:
        if impl == "dense":
            continue
        check = dict(impl=impl, against="dense", L=L, H=spec["H"], D=spec["D"], causal=True, dtype="float32")
        try:
            out = jax.jit(cpu_attention_fn(impl, True))(q, k, v)
            grads = jax.jit(fwd_bwd(cpu_attention_fn(impl, True)))(q, k, v)
            check["out_max_abs_diff"] = max_abs(out, want_out)
            check["out_rel_diff"] = rel_diff(out, want_out)
            check["grad_rel_diff"] = max(rel_diff(g, w) for g, w in zip(grads, want_grads))
            check["grad_max_abs_diff"] = max(max_abs(g, w) for g, w in zip(grads, want_grads))
            check["ok"] = bool(check["out_rel_diff"] <= TOL["float32"]["out"]
                               and check["grad_rel_diff"] <= TOL["float32"]["grad"])
            check["tolerance"] = TOL["float32"]
        except Exception as e:
            check["ok"] = False
            check["error"] = error_text(e)
        ok[impl] = check["ok"]
        report.doc["checks"].append(check)
        print("numerics:", json.dumps(check), flush=True)
        if not check["ok"]:
            report.doc["errors"].append(f"numerics: {impl} does not match dense: {check}")
    report.save()
    return ok


def run_cpu(args, report):
    t_start = time.time()
    lengths = args.cpu_lengths
    impls = [s for s in (args.impls or "xla,dense").split(",")]
    memtotal = mem_total()
    rss_limit = int(args.mem_limit_gib * GIB) if args.mem_limit_gib else (memtotal - GIB if memtotal else None)
    report.doc["cpu"] = dict(batch=1, heads=args.heads_cpu, head_dim=args.head_dim_cpu, causal=True,
                             dtype="float32", lengths=lengths, impls=impls, rss_limit_bytes=rss_limit,
                             dense="jax.nn.dot_product_attention(implementation='xla')",
                             memory=("peak_bytes = the child's VmHWM while running (reset after compiling) "
                                     "minus its VmRSS after importing jax and building the inputs"))
    print(f"CPU mode: causal fwd+bwd, B1 H{args.heads_cpu} D{args.head_dim_cpu} float32, lengths {lengths}, "
          f"impls {impls}; each in a fresh subprocess (memory limit {fmt(rss_limit and rss_limit / GIB, '.1f')} GiB)",
          flush=True)
    ok = check_cpu_numerics(args, report, impls)
    for L in lengths:
        for impl in impls:
            warm, reps = cpu_reps(L, args.quick)
            if args.reps:
                reps = args.reps
            flops = attention_flops(1, args.heads_cpu, L, L, args.head_dim_cpu, True, True)
            row = dict(kind="fwd+bwd", impl=impl, B=1, L=L, H=args.heads_cpu, D=args.head_dim_cpu, causal=True,
                       dtype="float32", flops=flops, warmup=warm, reps=reps, ms=None, op="attention",
                       implementation=None if impl == "dense" else impl, source="anchor" if impl == "dense" else "ours",
                       batch=1, q_len=L, kv_len=L, q_heads=args.heads_cpu, kv_heads=args.heads_cpu,
                       head_dim=args.head_dim_cpu, **{"pass": "fwd_bwd"})
            if ok.get(impl) is False:
                row["error"] = "not timed: its numerics do not match dense (see checks)"
            elif time.time() - t_start > args.time_budget:
                row["error"] = f"skipped: time budget {args.time_budget:.0f}s spent"
            else:
                spec = dict(impl=impl, B=1, L=L, H=args.heads_cpu, D=args.head_dim_cpu, causal=True,
                            dtype="float32", seed=args.seed, warmup=warm, reps=reps, mem_limit_bytes=rss_limit)
                print(f"  running {impl} L={L} ({warm} warm-up, {reps} timed) ...", flush=True)
                load_before = os.getloadavg()[0]
                row.update(run_child(spec, rss_limit, args.child_timeout))
                # Other work on the machine skews CPU timings: keep the 1-minute load around each run.
                row["loadavg_1min"] = [load_before, os.getloadavg()[0]]
                if row.get("ms"):
                    row["gflops"] = flops / (row["ms"] / 1e3) / 1e9
            report.add(row, hide=("traceback",))
    report.doc["targets"] = cpu_targets(report.doc["rows"])
    report.save()
    print_cpu_table(report.doc["rows"], report.doc["targets"])


def cpu_targets(rows):
    def get(impl, L):
        return next((r for r in rows if r["impl"] == impl and r["L"] == L), None)

    def good(r):
        return r is not None and r.get("ms") is not None and not r.get("error") and not r.get("skipped")

    targets = []
    x = get("xla", 65536)
    t = dict(target=f"xla at 65,536 completes within {TARGET_GIB_64K} GiB")
    if x is None:
        t.update(status="n/a", measured="not measured (length not in this run)")
    else:
        total = x.get("peak_total_rss_bytes") or x.get("child_ru_maxrss_bytes")
        t["measured"] = (f"{x.get('error') or x.get('skipped')}" if not good(x) else
                         f"completed in {x['ms'] / 1e3:.1f} s; whole-process peak RSS {total / GIB:.2f} GiB "
                         f"(run peak over baseline {x.get('peak_bytes', 0) / GIB:.2f} GiB)")
        t["status"] = "PASS" if good(x) and x.get("finite") and total and total <= TARGET_GIB_64K * GIB else "FAIL"
    targets.append(t)

    x, dn = get("xla", 8192), get("dense", 8192)
    t = dict(target="at 8,192 causal: xla faster than dense and its peak memory under 1 GB")
    if x is None:
        t.update(status="n/a", measured="not measured (length not in this run)")
    elif not good(x):
        t.update(status="FAIL", measured=f"xla: {x.get('error') or x.get('skipped')}")
    else:
        peak = x.get("peak_bytes")
        faster = good(dn) and x["ms"] < dn["ms"]
        dense_txt = f"dense {dn['ms']:.0f} ms" if good(dn) else f"dense: {dn and (dn.get('error') or dn.get('skipped'))}"
        t["measured"] = f"xla {x['ms']:.0f} ms vs {dense_txt}; xla peak {fmt(peak and peak / 1e6, '.0f')} MB"
        if not good(dn):
            # Dense could not run (memory): xla is trivially 'faster'; say so rather than pass silently.
            t["measured"] += " (dense did not run)"
            faster = dn is not None and bool(dn.get("skipped"))
        t["status"] = "PASS" if faster and peak is not None and peak < TARGET_PEAK_8K_BYTES else "FAIL"
    targets.append(t)

    x, dn = get("xla", 2048), get("dense", 2048)
    t = dict(target=f"at 2,048: xla within {TARGET_RATIO_2K}x dense's time")
    if x is None or dn is None:
        t.update(status="n/a", measured="not measured (length or implementation not in this run)")
    elif not (good(x) and good(dn)):
        t.update(status="FAIL", measured=f"xla: {x.get('error') or x.get('ms')}; dense: {dn.get('error') or dn.get('ms')}")
    else:
        ratio = x["ms"] / dn["ms"]
        t.update(measured=f"xla {x['ms']:.0f} ms / dense {dn['ms']:.0f} ms = {ratio:.2f}x",
                 ratio=ratio, status="PASS" if ratio <= TARGET_RATIO_2K else "FAIL")
    targets.append(t)
    return targets


def print_cpu_table(rows, targets):
    print("\nCPU, causal fwd+bwd, float32. ms: median of the timed calls (n); peak: run's peak RSS over the "
          "baseline; XLA temp: compiled memory_analysis temp bytes")
    head = "%7s %-6s %11s %3s %8s %10s %12s %12s  %s" % (
        "L", "impl", "ms", "n", "GFLOP/s", "compile s", "peak MiB", "XLA temp MiB", "note")
    print(head)
    print("-" * len(head))
    mib = lambda b: None if b is None else b / (1 << 20)
    for r in rows:
        note = r.get("error") or r.get("skipped") or ""
        print("%7d %-6s %11s %3s %8s %10s %12s %12s  %s" % (
            r["L"], r["impl"], fmt(r.get("ms"), ".1f"), len(r.get("times_s") or []) or "",
            fmt(r.get("gflops"), ".1f"), fmt(r.get("compile_s"), ".1f"), fmt(mib(r.get("peak_bytes")), ".0f"),
            fmt(mib(r.get("xla_temp_size_in_bytes")), ".0f"), note[:100]))
    if targets:
        print("\nTargets")
        for t in targets:
            print(f"  [{t['status']:4s}] {t['target']}: {t['measured']}")


# ---------------------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("auto", "gpu", "cpu"), default="auto",
                   help="auto: gpu when jax's default backend is a GPU, else cpu")
    p.add_argument("--quick", action="store_true",
                   help="GPU: head_dim 128 only, lengths 2k/8k/16k, 10 calls per batch; "
                        "CPU: lengths 256..2048 and fewer timed calls")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds; entries past it are recorded as skipped (GPU default 270, CPU unlimited)")
    p.add_argument("--max-len", type=int, default=1 << 30, help="drop lengths above this")
    p.add_argument("--lengths", default=None, help="comma-separated lengths (overrides the mode's defaults)")
    p.add_argument("--impls", default=None,
                   help=f"comma-separated; GPU: {','.join(GPU_IMPLS)}; CPU: xla,dense (reference also accepted)")
    p.add_argument("--reps", type=int, default=None, help="GPU: calls per batch; CPU: timed calls")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=str(RESULTS_DIR), help="where the JSON goes")
    p.add_argument("--json", default=None, help="exact JSON path (overrides --out-dir)")
    g = p.add_argument_group("GPU mode")
    g.add_argument("--head-dims", default="128,64")
    g.add_argument("--heads", type=int, default=16)
    g.add_argument("--tokens", type=int, default=16384, help="batch = tokens // length (at least 1)")
    g.add_argument("--dtype", default=None, help="GPU input dtype (default bfloat16)")
    g.add_argument("--causal", choices=("both", "causal", "noncausal"), default="both")
    g.add_argument("--dense-long", action="store_true", help="also run dense XLA above 8192")
    c = p.add_argument_group("CPU mode")
    c.add_argument("--heads-cpu", type=int, default=8)
    c.add_argument("--head-dim-cpu", type=int, default=64)
    c.add_argument("--mem-limit-gib", type=float, default=None,
                   help="kill a measurement whose resident memory passes this (default: MemTotal - 1 GiB)")
    c.add_argument("--child-timeout", type=float, default=3600.0, help="seconds per measurement")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p


def parser_defaults():
    return vars(build_parser().parse_args([]))


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import jax
    mode = args.mode
    if mode == "auto":
        mode = "gpu" if jax.default_backend() == "gpu" else "cpu"
    if args.time_budget is None:
        args.time_budget = 270.0 if mode == "gpu" else math.inf
    if mode == "cpu":
        lengths = ([int(x) for x in args.lengths.split(",")] if args.lengths else
                   CPU_QUICK_LENGTHS if args.quick else CPU_DEFAULT_LENGTHS)
        args.cpu_lengths = sorted(n for n in lengths if n <= args.max_len)
        if not args.cpu_lengths:
            raise SystemExit(f"no lengths left at or below --max-len {args.max_len} (from {lengths})")
    known = GPU_IMPLS if mode == "gpu" else CPU_IMPLS
    unknown = [i for i in (args.impls or "").split(",") if i and i not in known]
    if unknown:
        raise SystemExit(f"--impls {unknown} unknown in {mode} mode; choose from {list(known)}")
    report = make_report(args, mode)
    print(f"jax {report.doc['jax_version']} (jaxlib {report.doc['jaxlib_version']}) on "
          f"{report.doc['device_kind']} [{report.doc['platform']}], {report.doc['host']}, {report.doc['date']}",
          flush=True)
    report.save()
    if mode == "gpu":
        run_gpu(args, report)
    else:
        run_cpu(args, report)
    report.save()
    print(f"\nwrote {report.path}")
    failed_checks = [c for c in report.doc["checks"] if not c.get("ok")]
    return 1 if failed_checks else 0


if __name__ == "__main__":
    sys.exit(main())
