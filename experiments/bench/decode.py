"""Decode-attention benchmark: lean stream-K decode against its anchors, and generation speed.

    python -m experiments.bench.decode [--quick] [--json PATH]
    python -m experiments.bench.decode --smoke --json /tmp/d.json      # seconds; for the tests

One query token per sequence against a KV cache, on identical random inputs per shape:
- GPU: ours (`pallas_mosaic_gpu`, `pallas_gpu`, `xla` and the dispatcher's default) against
  jax.nn.dot_product_attention with cuDNN and with XLA (both given key_value_seq_lengths) and jax's
  Pallas split-K `gqa` (valid lengths through its kv_seq_len); bf16, 32 query heads over 8 kv heads,
  head_dim 128; uniform batches of 1 and 8 sequences at 8k/32k/128k, and a ragged batch (one 128k
  sequence among seven 2k ones). `--quick` runs B1 128k and the ragged batch (the targets) and B8 8k.
- CPU: ours `xla` against the dense masked oracle ('xla_dense') and XLA on smaller float32 caches.
Every row's output is checked against the float32 dense oracle (kernels_pallas's
lean_decode_attention reference: rel_err, ok). Each row gives ms, GB/s of *valid* cache read (k and
v of the tokens each sequence has) and that as a fraction of the copy bandwidth measured in the same
run. Then, when fintrans imports (it needs flax; the kernel rows need only jax), tokens per second of
`decoder_lm.generate` with the lean decode op against masked dense attention ('xla_dense').
`run_targets` is the target-shape section experiments.bench.targets runs: B1 128k and the ragged
batch, ours against cuDNN, XLA and split-K; targets: B1 128k at >= 0.9x cuDNN's bandwidth, the
ragged batch faster than cuDNN.
Results go to experiments/bench/results/decode_<device>_<date>.json.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.harness import (Report, copy_bandwidth, dispatch_choice, error_text, measure, rel_err, row,
                                       target)
from kernels_pallas import lean_decode_attention as lean
from kernels_pallas.lean_decode_attention import reference as lean_reference

RAGGED = [131072] + [2048] * 7
GPU_SHAPES = dict(heads=(32, 8), head_dim=128, dtype="bfloat16",
                  batches=[("uniform", [8192]), ("uniform", [32768]), ("uniform", [131072]),
                           ("uniform", [8192] * 8), ("uniform", [32768] * 8), ("uniform", [131072] * 8),
                           ("ragged", RAGGED)],
                  quick=[("uniform", [131072]), ("ragged", RAGGED), ("uniform", [8192] * 8)])
CPU_SHAPES = dict(heads=(8, 2), head_dim=64, dtype="float32",
                  batches=[("uniform", [8192]), ("uniform", [32768]), ("uniform", [8192] * 8),
                           ("ragged", [32768] + [1024] * 7)],
                  quick=[("uniform", [8192]), ("ragged", [32768] + [1024] * 7)])
SMOKE_SHAPES = dict(heads=(4, 2), head_dim=16, dtype="float32",
                    batches=[("uniform", [256]), ("uniform", [256] * 2), ("ragged", [256, 7, 100])],
                    quick=[("uniform", [256]), ("ragged", [256, 7, 100])])
TARGET_SHAPES = dict(heads=(32, 8), head_dim=128, dtype="bfloat16",
                     batches=[("uniform", [131072]), ("ragged", RAGGED)])
# max|got - oracle| / max|oracle| (bf16: the kernel tests' bound, doubled; the oracle is float32)
TOL = {"bfloat16": 4e-2, "float16": 1e-2, "float32": 1e-4}
# B1 128k: ours' bandwidth at least 0.9x cuDNN's; ragged: ours faster than cuDNN.
TARGET_B1, TARGET_RAGGED = 0.9, 1.0
OURS = ("ours_pallas_mosaic_gpu", "ours_pallas_gpu", "ours_default")


def jax_splitk(q, k, v, lengths, *, k_splits=16, block_k=128, interpret=False):
    """jax's Pallas split-K decode (jax.experimental.pallas.ops.gpu.decode_attention.gqa): q [batch,
    q_heads, d], caches [batch, seq, kv_heads, d] (our layout), valid lengths as kv_seq_len [batch];
    its softmax scale defaults to d ** -0.5. seq must split into k_splits chunks of >= 16 tokens."""
    from jax.experimental.pallas.ops.gpu import decode_attention as stock
    return stock.gqa(q, k, v, kv_seq_len=lengths, k_splits=k_splits, block_k=block_k, interpret=interpret)


def decode_fns(platform, *, smoke=False, tokamax=None):
    """name -> (f(q, k, v, lengths), implementation, source). Smoke (CPU): jax's split-K runs in
    interpret mode at a small split; entries that need a GPU are left to fail and be recorded."""
    def ours(impl):
        return lambda q, k, v, n: lean.lean_decode_attention(q, k, v, n, implementation=impl)

    def jax_nn(implementation):
        # One query token: [batch, 1, heads, d]; the valid lengths mask the cache exactly.
        return lambda q, k, v, n: jax.nn.dot_product_attention(q[:, None], k, v, key_value_seq_lengths=n,
                                                               implementation=implementation)[:, 0]

    def dense(q, k, v, n):
        return lean_reference.attention(q, k, v, n, sm_scale=q.shape[-1] ** -0.5)

    fns = {}
    if platform == "gpu" or smoke:
        fns["jax_cudnn"] = (jax_nn("cudnn"), "cudnn", "anchor")
        fns["ours_pallas_mosaic_gpu"] = (ours("pallas_mosaic_gpu"), "pallas_mosaic_gpu", "ours")
        fns["ours_pallas_gpu"] = (ours("pallas_gpu"), "pallas_gpu", "ours")
        fns["ours_default"] = (ours(None), None, "ours")
    fns["ours_xla"] = (ours("xla"), "xla", "ours")
    fns["jax_xla"] = (jax_nn("xla"), None, "anchor")
    if platform != "gpu":
        fns["xla_dense"] = (dense, None, "anchor")  # the float32 oracle itself, timed (reads batch x max_len)
    if platform == "gpu" or smoke:
        kw = dict(k_splits=4, block_k=32, interpret=True) if smoke else {}
        fns["jax_splitk"] = (lambda q, k, v, n: jax_splitk(q, k, v, n, **kw), None, "anchor")
    if tokamax is not None:
        fns["tokamax"] = (lambda q, k, v, n: tokamax.dot_product_attention(
            q[:, None], k, v, key_value_seq_lengths=n)[:, 0], None, "anchor")
    return fns


def run_kernels(shapes, platform, report, *, batches_list=None, reps=10, batches=3, warmup=1, peak=None,
                deadline=None, smoke=False, tokamax=None, only=None):
    """Times decode_fns (those `only` accepts, when given) on each batch of `batches_list`; returns the
    copy bandwidth (measured here unless `peak` is given)."""
    hq, hkv = shapes["heads"]
    d, dtype = shapes["head_dim"], jnp.dtype(shapes["dtype"])
    if peak is None:
        peak = copy_bandwidth(1 << (30 if platform == "gpu" else 20 if smoke else 28), dtype)
        print(f"copy bandwidth: {peak:.0f} GB/s", flush=True)
    tol = TOL[dtype.name]
    for kind, lengths in batches_list or shapes["batches"]:
        b, max_len = len(lengths), max(lengths)

        @jax.jit
        def draw(key):
            keys = jax.random.split(key, 3)
            return (jax.random.normal(keys[0], (b, hq, d), jnp.float32).astype(dtype),
                    *(jax.random.normal(kk, (b, max_len, hkv, d), jnp.float32).astype(dtype) for kk in keys[1:]))
        q, k, v = draw(jax.random.key(max_len + b))
        n = jnp.asarray(lengths, jnp.int32)
        # The oracle in float32 (a float32 q makes the reference return float32).
        want = jax.jit(lambda q, k, v, n: lean_reference.attention(q.astype(jnp.float32), k, v, n,
                                                                   sm_scale=d ** -0.5))(q, k, v, n)
        valid_bytes = 2 * sum(lengths) * hkv * d * dtype.itemsize
        for name, (fn, implementation, source) in decode_fns(platform, smoke=smoke, tokamax=tokamax).items():
            if only is not None and not only(name):
                continue
            r = row("decode", "fwd", name, implementation, source=source, dtype=dtype, head_dim=d, batch=b,
                    q_len=1, kv_len=max_len, q_heads=hq, kv_heads=hkv, causal=False, kind=kind, max_len=max_len,
                    lengths=lengths, valid_cache_bytes=valid_bytes)
            if name == "ours_default":
                chosen, text = dispatch_choice("kernels_pallas.lean_decode_attention", q, k, v, n)
                r["dispatched"], r["explain"] = chosen, text
            measure(report, r, fn, (q, k, v, n), reps=reps, batches=batches, warmup=warmup, deadline=deadline,
                    check=lambda out: rel_err(out, want), tol=tol, hide=("lengths", "batch_ms", "explain"))
            if r.get("ms"):
                r.update(gb_per_s=valid_bytes / r["ms"] / 1e6, fraction_of_copy=valid_bytes / r["ms"] / 1e6 / peak)
                report.doc["targets"] = decode_targets(report.rows)
                report.save()
        del q, k, v, want
    return peak


def decode_targets(rows):
    """The longest B1 context (128k on a GPU): ours' valid-cache bandwidth >= 0.9x cuDNN's; the ragged
    batch (128k + 7 x 2k): ours faster than cuDNN."""
    out = []
    decode = [r for r in rows if r.get("op") == "decode"]
    b1 = [r for r in decode if r["kind"] == "uniform" and r["batch"] == 1]
    groups = []
    if b1:
        longest = max(r["kv_len"] for r in b1)
        groups.append(([r for r in b1 if r["kv_len"] == longest], TARGET_B1, False,
                       f"B1 {longest} tokens: {{ours}} >= 0.9x cuDNN's bandwidth"))
    ragged = [r for r in decode if r["kind"] == "ragged"]
    if ragged:
        groups.append((ragged, TARGET_RAGGED, True, f"ragged batch {ragged[0]['lengths']}: {{ours}} faster than cuDNN"))
    for candidates, threshold, strict, what in groups:
        pick = lambda impl: next((r for r in candidates if r["impl"] == impl), None)
        cudnn = pick("jax_cudnn")
        for ours in OURS:
            r = pick(ours)
            if r is None or cudnn is None:
                continue
            missing = [f"{x['impl']}: {x.get('error') or 'no time'}" for x in (r, cudnn) if not x.get("ms")]
            # Same bytes on both sides: the bandwidth ratio is the inverse time ratio.
            out.append(target(f"decode {what.format(ours=ours)}", ratio=None if missing else cudnn["ms"] / r["ms"],
                              threshold=threshold, strict=strict, ok=r.get("ok"), why="; ".join(missing) or None,
                              op="decode", impl=ours, kind=r["kind"], ours_ms=r.get("ms"), cudnn_ms=cudnn.get("ms"),
                              ours_gb_per_s=r.get("gb_per_s"), cudnn_gb_per_s=cudnn.get("gb_per_s")))
    return out


def run_targets(report, *, smoke=False, deadline=None, tokamax=None, peak=None):
    """The target shapes (B1 128k, the ragged batch) with their anchors; smoke: SMOKE_SHAPES' quick pair."""
    shapes = SMOKE_SHAPES if smoke else TARGET_SHAPES
    platform = jax.default_backend()
    reps, batches, warmup = (1, 1, 0) if smoke else (10, 3, 1)
    report.doc["targets_config"] = dict(shapes=shapes, reps=reps, batches=batches, warmup=warmup, tolerance=TOL,
                                        oracle="float32 dense masked attention (lean_decode_attention reference)")
    kw = dict(batches_list=shapes.get("quick", shapes["batches"]), reps=reps, batches=batches, warmup=warmup,
              deadline=deadline, smoke=smoke, tokamax=tokamax)
    # cuDNN and ours on both shapes first, then the other anchors: a budget that runs out costs anchors.
    first = lambda name: name == "jax_cudnn" or name in OURS
    peak = run_kernels(shapes, platform, report, peak=peak, only=first, **kw)
    report.doc["copy_gb_per_s"] = run_kernels(shapes, platform, report, peak=peak, only=lambda n: not first(n), **kw)
    report.doc["targets"] = decode_targets(report.rows)
    report.save()


def run_generation(platform, quick, smoke, report):
    """Tokens/s of decoder_lm.generate: lean decode vs masked dense attention over max_len."""
    try:
        from fintrans.models import decoder_lm
        import flax.linen as nn
    except Exception as e:  # the GPU machine may lack fintrans' data dependencies: the kernel rows stand alone
        report.add(dict(kind="generate", impl="lean", error="skipped: fintrans does not import: " + error_text(e)))
        return
    size = dict(max_len=64, embed_dim=32, num_layers=1) if smoke else dict(max_len=4096, embed_dim=256, num_layers=4)
    cfg = decoder_lm.DecoderLMConfig(vocab_size=256, num_heads=8, num_kv_heads=2, mlp_dim=2 * size["embed_dim"], **size)
    batch, prompt_len, new = (2, 8, 4) if smoke else (4, 256, 64 if quick else 256)
    prompt = jax.random.randint(jax.random.key(0), (batch, prompt_len), 0, cfg.vocab_size)
    params = None
    for impl in (None, "xla_dense"):
        c = cfg.replace(attention_impl=impl)
        if params is None:
            params = nn.unbox(decoder_lm.DecoderLM(c).init(jax.random.key(1), {"inputs": prompt}))["params"]
        gen = jax.jit(lambda p, x: decoder_lm.generate(c, p, x, new, jax.random.key(2), temperature=0.0))
        r = dict(kind="generate", impl="lean" if impl is None else impl, batch=batch, prompt=prompt_len,
                 new_tokens=new, max_len=cfg.max_len)
        try:
            out = jax.block_until_ready(gen(params, prompt))  # compile
            t = time.perf_counter()
            out = jax.block_until_ready(gen(params, prompt))
            seconds = time.perf_counter() - t
            r.update(seconds=seconds, tokens_per_s=batch * new / seconds)
            first = next((x for x in report.rows if x.get("kind") == "generate" and "tokens" in x), None)
            r["tokens"] = np.asarray(out)[:, prompt_len:].tolist()
            if first is not None:  # greedy decoding: both attention paths must pick the same tokens
                r["same_tokens_as_lean"] = r["tokens"] == first["tokens"]
        except Exception as e:
            r["error"] = error_text(e)
        report.add(r)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the target shapes and one more, fewer calls")
    parser.add_argument("--json", default=None, help="exact JSON path")
    parser.add_argument("--no-generate", action="store_true", help="skip the generation benchmark")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: checks the script runs (tests)")
    args = parser.parse_args(argv)
    platform = jax.default_backend()
    report = Report("decode", json_path=args.json, argv=argv, num_programs=lean.default_num_programs(), targets=[])
    shapes = SMOKE_SHAPES if args.smoke else GPU_SHAPES if platform == "gpu" else CPU_SHAPES
    quick = args.quick or args.smoke
    report.doc["copy_gb_per_s"] = run_kernels(
        shapes, platform, report, batches_list=shapes["quick"] if quick else shapes["batches"],
        reps=1 if args.smoke else 3 if quick else 10, batches=1 if args.smoke else 3, smoke=args.smoke)
    report.doc["targets"] = decode_targets(report.rows)
    if not args.no_generate:
        run_generation(platform, args.quick, args.smoke, report)
    report.save()
    print(f"wrote {report.path}")


if __name__ == "__main__":
    main()
