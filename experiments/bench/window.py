"""Flattened-window attention benchmark (FlatFormer): grouped attention and a full layer against
their anchors, on identical inputs in one run.

    python -m experiments.bench.window                 # GPU or CPU mode from jax's backend
    python -m experiments.bench.window --quick --time-budget 80
    python -m experiments.bench.window --smoke --json /tmp/w.json     # seconds; for the tests

1. Grouped attention, [num_groups, group_size, 8 heads, 16] (128 channels), num_groups =
   ceil(tokens / group_size), group sizes 128 (the anchors') and 64; forward, and forward+backward
   (the vjp of a fixed cotangent: dq, dk, dv). Ours (ours_*): kernels_pallas.flat_window_attention.
   grouped_attention with implementation None ('ours_default', the platform's choice), 'xla' and, on
   GPU, 'pallas_gpu' (and 'pallas_mosaic_gpu' once the package has it). Anchors: jax.nn.dot_product_attention
   over the groups (batch = groups) with implementation 'xla' ('jax_xla') and, on GPU, 'cudnn'
   ('jax_cudnn'). Every entry's output (or gradients) is compared with the jax_xla entry on
   the same inputs; a mismatch is flagged, never hidden. Each row gives ms, the HBM floor (bytes
   of the arrays the function must read and write once: q, k, v, out for the forward; q, k, v, the
   cotangent, dq, dk, dv for forward+backward, divided by the copy bandwidth measured in this
   run) and the fraction of it reached (floor_ms / ms; 1.0 is the floor).
2. A full layer on the same points: FlatFormer (sort by window, equal-size groups of 128, grouped
   attention, scatter back) against an SST-style padded window layer (13x13 windows, every
   non-empty window padded to the most points any window holds, key-padding-masked attention with
   cuDNN on GPU when it accepts the shapes, else XLA). Both are written here from the same jnp
   pieces (projections, 8-head attention, output projection, post-LN, GELU FFN of width 2C), so
   only the partition differs. Points: batches of samples whose occupied pillars follow a
   LiDAR-like density (falling with the distance from the sensor), unique per sample. The window
   orders and group plans are built once per forward in FlatFormer (timed separately: "plans"),
   the SST windows on the host (not timed). When fintrans.models.flatformer.flatformer_layer
   imports, the model's own layer is timed on the same points too.

GPU mode: 262,144 tokens (4 samples of 65,536 pillars on a 468x468 grid), bfloat16, 20 calls per
batch, median of 3 batches (the anchors' convention). CPU mode: 8,192 tokens (2 samples of 4,096
on a 144x144 grid), float32, 2 calls per batch; about a minute on 2 quiet cores. Results go to
experiments/bench/results/window_<device>_<date>.json (rewritten after every entry, so a run cut
short keeps its figures); a failing entry records its error and the run goes on. Targets (issue
5): GPU, grouped attention within 2x of the floor and 2x faster than cuDNN over groups, the layer
3x faster than the padded one; CPU, ours 'xla' within 1.5x of dense XLA over groups and never
slower. They are recorded under "targets" with the figures they compare.

`run_targets` is the issue's target shape alone (262,144 tokens in groups of 128, 8 heads of 16,
bf16; ours, cuDNN and XLA over the groups, each figure checked against a float32 oracle on the first
groups; target: within 2x of the HBM floor), which experiments.bench.targets runs with attention's
and decode's.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.harness import (Report, copy_bandwidth, dispatch_choice, error_text, max_rel_diff, target,
                                       timed_batches)
from experiments.bench.harness import row as make_row
from kernels_pallas import flat_window_attention as fw

# Per mode: tokens as samples x points on a grid, channels, heads, group sizes, the layer's
# window and group, dtype, calls per timed batch.
MODES = {
    "gpu": dict(samples=4, points=65536, grid=(468, 468), channels=128, heads=8, group_sizes=(128, 64),
                window=(13, 13), layer_group=128, dtype="bfloat16", reps=20, batches=3,
                layer_passes=("fwd", "fwd_bwd")),
    "cpu": dict(samples=2, points=4096, grid=(144, 144), channels=128, heads=8, group_sizes=(128, 64),
                window=(13, 13), layer_group=128, dtype="float32", reps=2, batches=3,
                layer_passes=("fwd", "fwd_bwd")),
    "smoke": dict(samples=2, points=192, grid=(40, 40), channels=32, heads=2, group_sizes=(32,),
                  window=(7, 7), layer_group=32, dtype="float32", reps=1, batches=1,
                  layer_passes=("fwd",), fwd_bwd_impls=("jax_xla", "ours_default")),  # compiling dominates
}
# max|got - want| / max|want| against the anchor 'xla' entry (bf16: twice the kernel tests' bound)
TOL = {"bfloat16": {"out": 4e-2, "grad": 8e-2}, "float32": {"out": 1e-4, "grad": 2e-4}}


FLOOR_CONVENTION = ("bytes each array read or written once / copy bandwidth: forward q,k,v,out; "
                    "forward+backward q,k,v,cotangent,dq,dk,dv; fraction_of_floor = floor_ms / ms")


def measure(report, row, fn, args, cfg, reference=None, tol=None):
    """Times jit(fn)(*args) into `row` (and checks it against `reference`); returns the output."""
    if report.over_budget():
        row["error"] = "skipped: time budget"
        report.add(row)
        return None
    out = None
    try:
        f = jax.jit(fn)
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        row["compile_and_first_call_s"] = round(time.perf_counter() - t, 3)
        seconds, batches, out = timed_batches(f, args, reps=cfg["reps"], batches=cfg["batches"], warmup=1)
        row["ms"] = 1e3 * seconds
        row["ms_batches"] = [1e3 * b for b in batches]
        if reference is not None:
            err = max_rel_diff(out if isinstance(out, (tuple, list)) else (out,),
                               reference if isinstance(reference, (tuple, list)) else (reference,))
            row["rel_diff_vs_jax_xla"] = row["rel_err"] = err
            row["numerics_ok"] = row["ok"] = bool(err <= tol)
    except Exception as e:  # one failing entry never stops the run
        row["error"] = error_text(e)
    report.add(row)
    return out


# ---------------------------------------------------------------------------------------------
# 1. grouped attention
# ---------------------------------------------------------------------------------------------
def normals(seed, count, shape, dtype):
    """`count` standard-normal arrays (one compiled program: eager ops compile one by one)."""
    @jax.jit
    def draw(key):
        return tuple(jax.random.normal(k, shape, jnp.float32).astype(dtype)
                     for k in jax.random.split(key, count))
    return draw(jax.random.key(seed))


def attention_fns(platform, tokamax=None):
    """name -> (f(q, k, v) on [groups, group_size, heads, head_dim], implementation, source); anchors first."""
    ours = lambda impl: (lambda q, k, v: fw.grouped_attention(q, k, v, implementation=impl))
    fns = {"jax_xla": (lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"), None, "anchor")}
    if platform == "gpu":
        fns["jax_cudnn"] = (lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn"),
                            "cudnn", "anchor")
    fns["ours_default"] = (ours(None), None, "ours")
    fns["ours_xla"] = (ours("xla"), "xla", "ours")
    if platform == "gpu":
        fns["ours_pallas_gpu"] = (ours("pallas_gpu"), "pallas_gpu", "ours")
        if "pallas_mosaic_gpu" in fw.IMPLEMENTATIONS:  # not promised for this op: timed once it exists
            fns["ours_pallas_mosaic_gpu"] = (ours("pallas_mosaic_gpu"), "pallas_mosaic_gpu", "ours")
    if tokamax is not None:
        fns["tokamax"] = (lambda q, k, v: tokamax.dot_product_attention(q, k, v), None, "anchor")
    return fns


def grouped_row(name, implementation, source, pass_, *, g, gs, h, d, dtype, **extra):
    """A row with the dispatch-table fields (the groups are the batch) and the benchmark's own."""
    return make_row("grouped", pass_, name, implementation, source=source, dtype=dtype, head_dim=d, batch=g,
               q_len=gs, kv_len=gs, q_heads=h, kv_heads=h, causal=False, kind="attention", pass_=pass_,
               tokens=extra.pop("tokens"), group_size=gs, num_groups=g, heads=h, **extra)


def run_attention(report, cfg, platform, peak, group_sizes):
    tokens = cfg["samples"] * cfg["points"]
    h, d = cfg["heads"], cfg["channels"] // cfg["heads"]
    dtype = jnp.dtype(cfg["dtype"])
    for gs in group_sizes:
        g = -(-tokens // gs)
        q, k, v, ct = normals(gs, 4, (g, gs, h, d), dtype)
        array_bytes = g * gs * h * d * dtype.itemsize
        for pass_, arrays in (("fwd", 4), ("fwd_bwd", 7)):
            floor_ms = 1e3 * arrays * array_bytes / (peak * 1e9)
            want = None
            for name, (attn, implementation, source) in attention_fns(platform).items():
                if pass_ == "fwd_bwd" and name not in cfg.get("fwd_bwd_impls", (name,)):
                    continue
                if pass_ == "fwd":
                    fn, args = attn, (q, k, v)
                else:
                    fn = lambda q, k, v, ct, attn=attn: jax.vjp(attn, q, k, v)[1](ct)
                    args = (q, k, v, ct)
                r = grouped_row(name, implementation, source, pass_, g=g, gs=gs, h=h, d=d, dtype=dtype,
                                tokens=tokens, floor_bytes=arrays * array_bytes, floor_ms=floor_ms)
                tol = TOL[dtype.name]["out" if pass_ == "fwd" else "grad"]
                out = measure(report, r, fn, args, cfg, reference=want, tol=tol)
                if name == "jax_xla":
                    want = out
                if r.get("ms"):
                    r["fraction_of_floor"] = floor_ms / r["ms"]
                    report.save()
                del out


# ---------------------------------------------------------------------------------------------
# Target shape (experiments.bench.targets runs it with attention's and decode's in one process)
# ---------------------------------------------------------------------------------------------
TARGET_SHAPE = dict(tokens=262144, group_size=128, heads=8, head_dim=16, dtype="bfloat16")  # the anchors'
SMOKE_SHAPE = dict(tokens=512, group_size=32, heads=2, head_dim=16, dtype="float32")
TARGET_FLOOR_FRACTION = 0.5  # within 2x of the HBM floor
ORACLE_GROUPS = 64  # groups are independent: the float32 oracle checks the first ones


def run_targets(report, *, smoke=False, deadline=None, tokamax=None, peak=None):
    """Grouped attention at 262,144 tokens in groups of 128, 8 heads of 16, bf16, forward and
    forward+backward: ours (the default, pallas_gpu, pallas_mosaic_gpu when it exists) against cuDNN
    and XLA over the groups, and the HBM floor (q, k, v, out read or written once at the copy
    bandwidth measured in this run; forward+backward: q, k, v, the cotangent, dq, dk, dv)."""
    from experiments.bench.harness import attention_oracle, measure as measure_row, rel_err
    shape = SMOKE_SHAPE if smoke else TARGET_SHAPE
    platform = jax.default_backend()
    gs, h, d, dtype = shape["group_size"], shape["heads"], shape["head_dim"], jnp.dtype(shape["dtype"])
    g = -(-shape["tokens"] // gs)
    reps, batches, warmup = (1, 1, 0) if smoke else (10, 3, 1)
    if peak is None:
        peak = copy_bandwidth(1 << (30 if platform == "gpu" else 24), dtype)
        print(f"copy bandwidth: {peak:.0f} GB/s", flush=True)
    report.doc["copy_gb_per_s"] = peak
    fns = attention_fns("gpu" if smoke else platform, tokamax)  # smoke: the GPU entries fail and are recorded
    report.doc["targets_config"] = dict(**shape, num_groups=g, impls=list(fns), reps=reps, batches=batches,
                                        warmup=warmup, tolerance=TOL[dtype.name], floor_convention=FLOOR_CONVENTION,
                                        oracle=f"float32 dense attention on the first {ORACLE_GROUPS} groups")
    q, k, v, ct = normals(gs, 4, (g, gs, h, d), dtype)
    part = lambda x: x[:ORACLE_GROUPS]
    oracle = lambda q, k, v: attention_oracle(q, k, v)
    # float32 copies: the oracle's gradients come back in float32, not rounded to the inputs' dtype.
    q32, k32, v32, ct32 = (part(x).astype(jnp.float32) for x in (q, k, v, ct))
    want = {"fwd": jax.jit(oracle)(q32, k32, v32),
            "fwd_bwd": jax.jit(lambda q, k, v, ct: jax.vjp(oracle, q, k, v)[1](ct))(q32, k32, v32, ct32)}
    del q32, k32, v32, ct32
    array_bytes = g * gs * h * d * dtype.itemsize
    # Ours and cuDNN on both passes first, then the other anchors: a budget that runs out costs anchors.
    first = [n for n, (_, _, source) in fns.items() if source == "ours" or n == "jax_cudnn"]
    entries = [(p, n) for group in (first, [n for n in fns if n not in first]) for p in ("fwd", "fwd_bwd")
               for n in group]
    for pass_, name in entries:
        attn, implementation, source = fns[name]
        arrays = 4 if pass_ == "fwd" else 7
        floor_ms = 1e3 * arrays * array_bytes / (peak * 1e9)
        if pass_ == "fwd":
            fn, args = attn, (q, k, v)
        else:
            fn = lambda q, k, v, ct, attn=attn: jax.vjp(attn, q, k, v)[1](ct)
            args = (q, k, v, ct)
        r = grouped_row(name, implementation, source, pass_, g=g, gs=gs, h=h, d=d, dtype=dtype,
                        tokens=shape["tokens"], floor_bytes=arrays * array_bytes, floor_ms=floor_ms)
        if name == "ours_default":
            r["dispatched"], r["explain"] = dispatch_choice("kernels_pallas.flat_window_attention", q, k, v)
        check = lambda out, pass_=pass_: rel_err(tuple(part(x) for x in out) if pass_ == "fwd_bwd" else part(out),
                                                 want[pass_])
        measure_row(report, r, fn, args, reps=reps, batches=batches, warmup=warmup, deadline=deadline,
                    check=check, tol=TOL[dtype.name]["out" if pass_ == "fwd" else "grad"],
                    hide=("batch_ms", "explain"))
        if r.get("ms"):
            r["fraction_of_floor"] = floor_ms / r["ms"]
        report.doc["targets"] = window_targets(report.rows)
        report.save()
    del q, k, v, ct, want
    report.doc["targets"] = window_targets(report.rows)
    report.save()


def window_targets(rows):
    """Each of ours within 2x of the HBM floor (floor_ms / ms >= 0.5), forward and forward+backward."""
    out = []
    for r in rows:
        if r.get("op") == "grouped" and r["source"] == "ours" and r["impl"] != "ours_xla":
            shape = f"{r['batch'] * r['q_len']} tokens in groups of {r['q_len']}, {r['q_heads']}x{r['head_dim']} {r['dtype']}"
            out.append(target(f"grouped window {r['pass']} {shape}: {r['impl']} within 2x of the HBM floor",
                              ratio=r["floor_ms"] / r["ms"] if r.get("ms") else None, threshold=TARGET_FLOOR_FRACTION,
                              ok=r.get("ok"), why=r.get("error") or (None if r.get("ms") else "no time"), op="grouped",
                              impl=r["impl"], ms=r.get("ms"), floor_ms=r["floor_ms"], **{"pass": r["pass"]}))
    return out


# ---------------------------------------------------------------------------------------------
# 2. the full layer: FlatFormer vs SST-style padded windows
# ---------------------------------------------------------------------------------------------
def make_points(cfg, seed=0):
    """coords int32 [N, 2], sample_ids int32 [N]: `points` unique pillars per sample, drawn with
    density ~ 1 / (distance from the grid centre + 8 cells) (near pillars are dense, far ones
    sparse, as in a LiDAR sweep)."""
    nx, ny = cfg["grid"]
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    r = np.hypot(xs - nx / 2, ys - ny / 2).ravel()
    w = 1.0 / (r + 8.0)
    w /= w.sum()
    coords, sids = [], []
    for s in range(cfg["samples"]):
        cells = rng.choice(nx * ny, size=cfg["points"], replace=False, p=w)
        coords.append(np.stack([cells // ny, cells % ny], 1))
        sids.append(np.full(cfg["points"], s))
    return np.concatenate(coords).astype(np.int32), np.concatenate(sids).astype(np.int32)


def padded_windows(coords, sids, window):
    """SST-style partition on the host: (gather [W * M] token slots, lengths [W], position [N]
    of each token in the padded [W * M] layout, M)."""
    wx, wy = window
    key = np.stack([sids, coords[:, 0] // wx, coords[:, 1] // wy], 1)
    _, win, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    win = win.ravel()
    m = int(counts.max())
    order = np.argsort(win, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size) - starts[win[order]]
    pos = win * m + rank
    gather = np.zeros(counts.size * m, np.int32)  # padding slots read token 0; they are masked
    gather[pos] = np.arange(order.size)
    return gather, counts.astype(np.int32), pos.astype(np.int32), m


def init_layer(key, c, dtype):
    ks = jax.random.split(key, 6)
    dense = lambda k, i, o: (jax.random.normal(k, (i, o), jnp.float32) / math.sqrt(i)).astype(dtype)
    return dict(wq=dense(ks[0], c, c), wk=dense(ks[1], c, c), wv=dense(ks[2], c, c), wo=dense(ks[3], c, c),
                w1=dense(ks[4], c, 2 * c), w2=dense(ks[5], 2 * c, c),
                ln1=jnp.ones((c,), dtype), ln2=jnp.ones((c,), dtype))


def layer_norm(x, scale):
    x32 = x.astype(jnp.float32)
    mu = jnp.mean(x32, -1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mu), -1, keepdims=True)
    return ((x32 - mu) * jax.lax.rsqrt(var + 1e-5)).astype(x.dtype) * scale


def layer(params, x, pe, index, heads, attend):
    """Post-LN transformer layer on tokens [N, C]; attend(q, k, v, index) maps [N, H, D] ->
    [N, H, D] (index: the partition's arrays, passed as arguments rather than baked in)."""
    n, c = x.shape
    split = lambda t: t.reshape(n, heads, c // heads)
    qk_in = x + pe
    a = attend(split(qk_in @ params["wq"]), split(qk_in @ params["wk"]), split(x @ params["wv"]), index)
    x = layer_norm(x + a.reshape(n, c) @ params["wo"], params["ln1"])
    return layer_norm(x + jax.nn.gelu(x @ params["w1"]) @ params["w2"], params["ln2"])


def flat_attend(q, k, v, plan):
    out = fw.grouped_attention(*(fw.group_tokens(t, plan) for t in (q, k, v)))
    return fw.ungroup_tokens(out, plan)


def padded_attend(m, implementation):
    def attend(q, k, v, index):
        gather, lengths, pos = index
        w = lengths.shape[0]
        q, k, v = (jnp.take(t, gather, axis=0).reshape((w, m) + t.shape[1:]) for t in (q, k, v))
        out = jax.nn.dot_product_attention(q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths,
                                           implementation=implementation)
        return jnp.take(out.reshape((w * m,) + out.shape[2:]), pos, axis=0)
    return attend


def run_layers(report, cfg, platform):
    dtype = jnp.dtype(cfg["dtype"])
    c, heads, gs = cfg["channels"], cfg["heads"], cfg["layer_group"]
    coords_np, sids_np = make_points(cfg)
    n = coords_np.shape[0]
    coords, sids = jnp.asarray(coords_np), jnp.asarray(sids_np)
    x, pe, ct = normals(7, 3, (n, c), dtype)
    pe = (0.1 * pe).astype(dtype)
    params = jax.jit(init_layer, static_argnums=(1, 2))(jax.random.key(8), c, dtype)
    base = dict(tokens=n, samples=cfg["samples"], grid=list(cfg["grid"]), window=list(cfg["window"]),
                channels=c, heads=heads, dtype=dtype.name)

    def plans(coords, sids):
        out = []
        for axis in ("x", "y"):
            for shift in (False, True):
                order = fw.window_order(coords, sids, grid_shape=cfg["grid"], window_shape=cfg["window"],
                                        axis=axis, shift=shift)
                out.append(fw.make_group_plan(order, sids, num_samples=cfg["samples"], group_size=gs))
        return out

    row = dict(kind="plans", impl="flatformer_4_orderings", pass_="fwd", group_size=gs, **base)
    built = measure(report, row, plans, (coords, sids), cfg)
    plan = (built if built is not None else jax.jit(plans)(coords, sids))[0]  # the 'x' ordering
    gather, lengths, pos, m = padded_windows(coords_np, sids_np, cfg["window"])
    occupancy = dict(windows=int(lengths.size), max_points_per_window=m,
                     mean_points_per_window=float(lengths.mean()), padded_tokens=int(lengths.size * m),
                     grouped_tokens=plan.num_groups * gs)
    report.doc["layer_partition"] = occupancy
    print(json.dumps(occupancy), flush=True)
    gather, lengths, pos = jnp.asarray(gather), jnp.asarray(lengths), jnp.asarray(pos)

    sst_impl = "xla"
    if platform == "gpu":  # cuDNN takes the padded windows' lengths when it accepts the shape
        try:
            attend = padded_attend(m, "cudnn")
            jax.block_until_ready(jax.jit(lambda p, x, pe, i: layer(p, x, pe, i, heads, attend))(
                params, x, pe, (gather, lengths, pos)))
            sst_impl = "cudnn"
        except Exception as e:
            report.doc["sst_cudnn_error"] = error_text(e)
    variants = {
        "flatformer": (dict(group_size=gs, num_groups=plan.num_groups, attention="grouped_attention(None)"),
                       flat_attend, plan),
        "padded_windows": (dict(max_points_per_window=m, windows=int(lengths.shape[0]),
                                attention=f"jax.nn.dot_product_attention({sst_impl}, seq lengths)"),
                           padded_attend(m, sst_impl), (gather, lengths, pos)),
    }
    for pass_ in cfg["layer_passes"]:
        for name, (info, attend, index) in variants.items():
            if pass_ == "fwd":
                fn = lambda p, x, pe, i, attend=attend: layer(p, x, pe, i, heads, attend)
                args = (params, x, pe, index)
            else:
                fn = lambda p, x, pe, i, ct, attend=attend: jax.vjp(
                    lambda p, x: layer(p, x, pe, i, heads, attend), p, x)[1](ct)
                args = (params, x, pe, index, ct)
            measure(report, dict(kind="layer", impl=name, pass_=pass_, **base, **info), fn, args, cfg)
    run_model_layer(report, cfg, base, plan, x, pe)


def run_model_layer(report, cfg, base, plan, x, pe):
    """fintrans.models.flatformer.flatformer_layer (the model's own layer) on the same points, in
    the 'x' ordering (the plan its group_plans builds for it)."""
    row = dict(kind="layer", impl="flatformer_model_layer", pass_="fwd", **base)
    try:
        from fintrans.models import flatformer as model
        import flax.linen as nn
        b, n = cfg["samples"], cfg["points"]
        mcfg = model.FlatFormerConfig(grid_shape=tuple(cfg["grid"]), window_shape=tuple(cfg["window"]),
                                      group_size=cfg["layer_group"], embed_dim=cfg["channels"],
                                      num_heads=cfg["heads"], mlp_dim=2 * cfg["channels"], dtype=cfg["dtype"],
                                      param_dtype=cfg["dtype"])
        mod = model.flatformer_layer(mcfg)
        xb, peb = x.reshape(b, n, -1), pe.reshape(b, n, -1)
        params = nn.unbox(jax.jit(lambda key, xb, peb, plan: mod.init(key, xb, qk_offset=peb, groups=plan,
                                                                      deterministic=True))(
            jax.random.key(0), xb, peb, plan))
    except Exception as e:
        row["error"] = error_text(e)
        report.add(row)
        return
    measure(report, row, lambda p, xb, peb, plan: mod.apply(p, xb, qk_offset=peb, groups=plan, deterministic=True),
            (params, xb, peb, plan), cfg)


# ---------------------------------------------------------------------------------------------
# targets and table
# ---------------------------------------------------------------------------------------------
def find(rows, **kw):
    return next((r for r in rows if all(r.get(k) == v for k, v in kw.items()) and r.get("ms")), None)


def targets(report, mode):
    rows, out = report.doc["rows"], report.doc["targets"]
    for gs in report.doc["config"]["group_sizes"]:
        for pass_ in ("fwd", "fwd_bwd"):
            get = lambda impl: find(rows, kind="attention", impl=impl, group_size=gs, pass_=pass_)
            ours, xla = get("ours_default"), get("jax_xla")
            if mode == "cpu" or mode == "smoke":
                ours_xla = get("ours_xla")
                if ours_xla and xla:
                    ratio = ours_xla["ms"] / xla["ms"]
                    out.append(dict(target="cpu: ours xla within 1.5x of dense XLA and never slower",
                                    group_size=gs, pass_=pass_, ours_ms=ours_xla["ms"], anchor_ms=xla["ms"],
                                    ratio=ratio, met=bool(ratio <= 1.0)))
            else:
                cudnn = get("jax_cudnn")
                if ours:
                    out.append(dict(target="gpu: grouped attention within 2x of the HBM floor", group_size=gs,
                                    pass_=pass_, ms=ours["ms"], floor_ms=ours["floor_ms"],
                                    fraction_of_floor=ours["fraction_of_floor"],
                                    met=bool(ours["fraction_of_floor"] >= 0.5)))
                if ours and cudnn:
                    out.append(dict(target="gpu: at least 2x faster than cuDNN over groups", group_size=gs,
                                    pass_=pass_, ours_ms=ours["ms"], cudnn_ms=cudnn["ms"],
                                    speedup=cudnn["ms"] / ours["ms"], met=bool(cudnn["ms"] >= 2 * ours["ms"])))
    for pass_ in ("fwd", "fwd_bwd"):
        flat = find(rows, kind="layer", impl="flatformer", pass_=pass_)
        padded = find(rows, kind="layer", impl="padded_windows", pass_=pass_)
        if flat and padded:
            out.append(dict(target=("gpu: " if mode == "gpu" else "(gpu target) ") +
                            "FlatFormer layer at least 3x faster than the padded-window layer",
                            pass_=pass_, flatformer_ms=flat["ms"], padded_ms=padded["ms"],
                            speedup=padded["ms"] / flat["ms"], met=bool(padded["ms"] >= 3 * flat["ms"])))
    report.save()


def print_table(report):
    print(f"\n{'kind':10s} {'impl':24s} {'pass':8s} {'gs':>4s} {'ms':>10s} {'floor%':>7s} {'vs xla':>9s}  note")
    for r in report.doc["rows"]:
        ms = f"{r['ms']:.3f}" if r.get("ms") else "-"
        frac = f"{100 * r['fraction_of_floor']:.0f}" if "fraction_of_floor" in r else ""
        err = r.get("rel_diff_vs_jax_xla")
        note = r.get("error", "")[:60] or ("" if r.get("numerics_ok", True) else "NUMERICS MISMATCH")
        print(f"{r['kind']:10s} {r['impl']:24s} {r['pass_']:8s} {r.get('group_size', ''):>4} {ms:>10s} "
              f"{frac:>7s} {'' if err is None else format(err, '.1e'):>9s}  {note}")
    for t in report.doc["targets"]:
        print(("MET    " if t["met"] else "NOT MET"), json.dumps(t))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls per figure")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: checks the script runs (tests)")
    parser.add_argument("--json", default=None, help="exact JSON path")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds after which no new entry starts (the rest are recorded as skipped)")
    parser.add_argument("--no-layer", action="store_true", help="grouped attention only")
    args = parser.parse_args(argv)
    platform = jax.default_backend()
    mode = "smoke" if args.smoke else "gpu" if platform == "gpu" else "cpu"
    cfg = dict(MODES[mode])
    if args.quick and not args.smoke:
        cfg.update(reps=max(1, cfg["reps"] // 2), batches=2)
    report = Report("window", json_path=args.json, time_budget=args.time_budget, argv=argv, mode=mode,
                    config=dict(cfg), floor_convention=FLOOR_CONVENTION, targets=[])
    print(f"jax {jax.__version__} on {report.doc['device_kind']} [{platform}], mode {mode}", flush=True)
    nbytes = 1 << (30 if platform == "gpu" else 24 if args.smoke else 28)
    peak = copy_bandwidth(nbytes, cfg["dtype"])
    report.doc["copy_gb_per_s"] = peak
    print(f"copy bandwidth: {peak:.0f} GB/s", flush=True)
    # The first group size, then the layers, then the other group sizes: under a time budget the
    # entries that are skipped are the least informative.
    run_attention(report, cfg, platform, peak, cfg["group_sizes"][:1])
    if not args.no_layer:
        try:
            run_layers(report, cfg, platform)
        except Exception as e:  # the points or partitions failed to build: record and go on
            report.doc["layer_error"] = error_text(e)
            report.save()
    run_attention(report, cfg, platform, peak, cfg["group_sizes"][1:])
    report.doc["loadavg_at_end"] = list(os.getloadavg())
    targets(report, mode)
    print_table(report)
    print(f"wrote {report.path}")


if __name__ == "__main__":
    main()
