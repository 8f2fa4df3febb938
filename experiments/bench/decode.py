"""Decode-attention benchmark: lean stream-K decode against its anchors, and generation speed.

    python -m experiments.bench.decode [--quick] [--json PATH]

One query token per sequence against a KV cache, on identical random inputs per shape:
- GPU: ours (lean `pallas_gpu` when registered, lean `xla`) against dense XLA (masked, reads
  batch x max_len), jax.nn.dot_product_attention with cuDNN (key_value_seq_lengths) and jax's
  Pallas split-K `gqa`; bf16, 32 query heads over 8 kv heads, head_dim 128; uniform batches of 1
  and 8 sequences at 8k/32k/128k, and a ragged batch (one 128k sequence among seven 2k ones).
- CPU: lean `xla` against dense XLA on smaller float32 caches (uniform and ragged).
Each row gives ms, GB/s of *valid* cache read (k and v of the tokens each sequence has) and that
as a fraction of the copy bandwidth measured in the same run. Then tokens per second of
`decoder_lm.generate` with the lean decode op against masked dense attention ('xla_dense').
Results go to experiments/bench/results/decode_<device>_<date>.json.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.harness import Report, copy_bandwidth, error_text, timed_batches
from kernels_pallas import lean_decode_attention as lean
from kernels_pallas.lean_decode_attention import reference as lean_reference

GPU_SHAPES = dict(heads=(32, 8), head_dim=128, dtype="bfloat16",
                  batches=[("uniform", [8192]), ("uniform", [32768]), ("uniform", [131072]),
                           ("uniform", [8192] * 8), ("uniform", [32768] * 8), ("uniform", [131072] * 8),
                           ("ragged", [131072] + [2048] * 7)])
CPU_SHAPES = dict(heads=(8, 2), head_dim=64, dtype="float32",
                  batches=[("uniform", [8192]), ("uniform", [32768]), ("uniform", [8192] * 8),
                           ("ragged", [32768] + [1024] * 7)])
SMOKE_SHAPES = dict(heads=(4, 2), head_dim=16, dtype="float32",
                    batches=[("uniform", [64]), ("uniform", [64] * 2), ("ragged", [300, 0, 7])])


def decode_fns(platform, lengths_list):
    """name -> f(q, k, v, lengths) for this platform; anchors that cannot run here are absent."""
    fns = {"lean_xla": lambda q, k, v, n: lean.lean_decode_attention(q, k, v, n, implementation="xla")}
    if "pallas_gpu" in lean.IMPLEMENTATIONS and platform == "gpu":
        fns["lean_pallas_gpu"] = lambda q, k, v, n: lean.lean_decode_attention(q, k, v, n, implementation="pallas_gpu")

    def dense(q, k, v, n):
        return lean_reference.attention(q, k, v, n, sm_scale=q.shape[-1] ** -0.5)
    fns["xla_dense"] = dense
    if platform == "gpu":
        def cudnn(q, k, v, n):
            return jax.nn.dot_product_attention(q[:, None], k, v, key_value_seq_lengths=n,
                                                implementation="cudnn")[:, 0]
        fns["cudnn"] = cudnn

        def splitk(q, k, v, n):
            from jax.experimental.pallas.ops.gpu import decode_attention as stock
            # gqa takes [batch, heads, ...] caches and the valid lengths as end indices.
            return stock.gqa(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), end_idx=n)
        fns["stock_splitk"] = splitk
    return fns


def run_kernels(shapes, platform, quick, report):
    hq, hkv = shapes["heads"]
    d, dtype = shapes["head_dim"], jnp.dtype(shapes["dtype"])
    peak = copy_bandwidth(1 << (30 if platform == "gpu" else 20 if quick else 28), dtype)
    print(f"copy bandwidth: {peak:.0f} GB/s")
    batches = shapes["batches"][:2] + shapes["batches"][-1:] if quick else shapes["batches"]
    for kind, lengths in batches:
        b, max_len = len(lengths), max(lengths)
        keys = jax.random.split(jax.random.key(max_len + b), 3)
        q = jax.random.normal(keys[0], (b, hq, d), jnp.float32).astype(dtype)
        k, v = (jax.random.normal(kk, (b, max_len, hkv, d), jnp.float32).astype(dtype) for kk in keys[1:])
        n = jnp.asarray(lengths, jnp.int32)
        valid_bytes = 2 * sum(lengths) * hkv * d * dtype.itemsize
        want = None
        for name, fn in decode_fns(platform, lengths).items():
            row = dict(kind=kind, impl=name, batch=b, max_len=max_len, lengths=lengths, q_heads=hq,
                       kv_heads=hkv, head_dim=d, dtype=dtype.name, valid_cache_bytes=valid_bytes)
            try:
                f = jax.jit(fn)
                seconds, _, out = timed_batches(f, (q, k, v, n), reps=3 if quick else 10, batches=3, warmup=1)
                out = np.asarray(out.astype(jnp.float32))
                want = out if want is None else want
                row.update(ms=1e3 * seconds, gb_per_s=valid_bytes / seconds / 1e9,
                           fraction_of_copy=valid_bytes / seconds / 1e9 / peak,
                           max_abs_diff_vs_first=float(np.max(np.abs(out - want))))
            except Exception as e:  # one failing entry never stops the run
                row["error"] = error_text(e)
            report.add(row, hide=("lengths",))
    return peak


def run_generation(platform, quick, smoke, report):
    """Tokens/s of decoder_lm.generate: lean decode vs masked dense attention over max_len."""
    from fintrans.models import decoder_lm
    import flax.linen as nn
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
        row = dict(kind="generate", impl="lean" if impl is None else impl, batch=batch, prompt=prompt_len,
                   new_tokens=new, max_len=cfg.max_len)
        try:
            out = jax.block_until_ready(gen(params, prompt))  # compile
            t = time.perf_counter()
            out = jax.block_until_ready(gen(params, prompt))
            seconds = time.perf_counter() - t
            row.update(seconds=seconds, tokens_per_s=batch * new / seconds)
            first = next((r for r in report.rows if r.get("kind") == "generate" and "tokens" in r), None)
            row["tokens"] = np.asarray(out)[:, prompt_len:].tolist()
            if first is not None:  # greedy decoding: both attention paths must pick the same tokens
                row["same_tokens_as_lean"] = row["tokens"] == first["tokens"]
        except Exception as e:
            row["error"] = error_text(e)
        report.add(row)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and calls")
    parser.add_argument("--json", default=None, help="exact JSON path")
    parser.add_argument("--no-generate", action="store_true", help="skip the generation benchmark")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: checks the script runs (tests)")
    args = parser.parse_args(argv)
    platform = jax.default_backend()
    report = Report("decode", json_path=args.json, argv=argv, num_programs=lean.default_num_programs())
    shapes = SMOKE_SHAPES if args.smoke else GPU_SHAPES if platform == "gpu" else CPU_SHAPES
    report.doc["copy_gb_per_s"] = run_kernels(shapes, platform, args.quick or args.smoke, report)
    if not args.no_generate:
        run_generation(platform, args.quick, args.smoke, report)
    report.save()
    print(f"wrote {report.path}")


if __name__ == "__main__":
    main()
