"""The decoder LM's scale proof: AOT compiles for TPU topologies on this machine (libtpu, no TPU),
written to experiments/results/aot_tpu.md and .json.

    python -m experiments.aot_table [--groups=sizes,weak,depth] [--only=SUBSTRING] [--redo] [--fresh]

Groups of rows:
  sizes  runlocal, ~125M and ~1B parameters on v5e:16x16 and v5p:4x4x4 (fsdp x tensor 4), scanned
         and unrolled, 4 sequences per batch shard;
  weak   lm_chars as a new user runs it (rbg keys, dropout 0.1), 4 sequences per batch shard, on
         v5e:8x8 and v5e:16x16: per-device memory and FLOPs must not grow with the mesh;
  depth  4/8/16 layers at width 512 on v5e:4x4, scanned vs unrolled: compile time vs depth.

Each compiled row is appended to the JSON at once (a long sweep can stop and resume: rows already
there are skipped unless --redo), and the markdown is rewritten from the JSON after every row.
Scanned rows need DecoderLMConfig.scan_layers; where the model has no such field they are listed
as not run.

FLOPs: XLA's cost analysis counts the body of a while loop once. Scanned layers are such a loop, and
so are the collective matmuls ("windowed einsums") the TPU compiler makes when it overlaps FSDP's
all-gathers with the matmuls (it does on v5e:8x8 at fsdp 16, not on 16x16 at fsdp 64). Those rows
under-report; the table therefore also gives the analytic model FLOPs per device and the number of
while loops in the compiled step.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from experiments import aot  # noqa: E402
from experiments.configs import lm_chars  # noqa: E402
from fintrans import data  # noqa: E402
from fintrans.layers import dropout  # noqa: E402
from fintrans.models import ConfigError  # noqa: E402
from fintrans.parallel import ShardingError  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GiB = 1 << 30
TENSOR = 4
PER_SHARD = 4  # sequences per batch shard (data x fsdp)

# name -> (model fields, sequence length). ~125M: GPT-2 small's shape with a GLU MLP; ~1B: 18 layers
# of width 2048.
SIZES = {
    "runlocal": (None, None),
    "125M": (dict(vocab_size=32768, max_len=1024, embed_dim=768, num_layers=12, num_heads=12, num_kv_heads=12,
                  mlp_dim=2048, activation="silu", glu=True, dropout_rate=0.0), 1024),
    "1B": (dict(vocab_size=32768, max_len=1024, embed_dim=2048, num_layers=18, num_heads=16, num_kv_heads=8,
                mlp_dim=5632, activation="silu", glu=True, dropout_rate=0.0), 1024),
}
TOPOLOGIES = {"v5e:16x16": 256, "v5p:4x4x4": 64, "v5e:8x8": 64, "v5e:4x4": 16}


@dataclasses.dataclass
class Row:
    group: str
    name: str
    topology: str
    scan: bool
    model: dict  # model-field overrides of lm_chars (full config unless runlocal)
    seq_len: Optional[int]
    rng_impl: str = "threefry2x32"
    runlocal: bool = False
    global_dropout_bits: bool = False  # as before fintrans.layers.dropout: every device draws the whole mask

    @property
    def key(self) -> str:
        return f"{self.group}/{self.name}/{self.topology}/{'scan' if self.scan else 'unrolled'}"


def rows() -> list[Row]:
    out = []
    for name, (model, seq) in SIZES.items():
        for topology in ("v5e:16x16", "v5p:4x4x4"):
            for scan in (False, True):
                out.append(Row("sizes", name, topology, scan, model or {}, seq, runlocal=model is None))
    for before in (False, True):
        for topology in ("v5e:8x8", "v5e:16x16"):
            out.append(Row("weak", "lm_chars rbg dropout 0.1" + (", global mask (before)" if before else ""),
                           topology, False, {}, None, rng_impl="rbg", global_dropout_bits=before))
    for layers in (4, 8, 16):
        for scan in (False, True):
            out.append(Row("depth", f"{layers} layers", "v5e:4x4", scan, dict(num_layers=layers, dropout_rate=0.0),
                           None))
    return out


def config_for(row: Row):
    c = lm_chars.get_config("runlocal" if row.runlocal else None)
    for key, value in row.model.items():
        c.model[key] = value
    if row.seq_len:
        c.data.seq_len = row.seq_len
    if row.scan:
        c.model.scan_layers = True  # only rows whose model has the field are compiled (see run_row)
    c.rng_impl = row.rng_impl
    devices = TOPOLOGIES[row.topology]
    if row.runlocal:  # 1.6M parameters (2 kv heads, width 96) are not worth splitting: data parallel
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = devices, 1, 1
    else:
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, devices // TENSOR, TENSOR
    c.batch_size = c.eval_batch_size = PER_SHARD * c.mesh.data * c.mesh.fsdp
    return c


def model_flops_per_device(c, num_devices: int) -> float:
    """6 x matmul parameters per token (+ attention scores and values, computed dense) x tokens / devices."""
    m = c.model
    heads, kv = m.num_heads, m.num_kv_heads or m.num_heads
    hd = m.head_dim or m.embed_dim // heads
    per_layer = m.embed_dim * hd * (2 * heads + 2 * kv) + (3 if m.glu else 2) * m.embed_dim * m.mlp_dim
    params = m.num_layers * per_layer + m.embed_dim * m.vocab_size  # the logits' projection
    attention = m.num_layers * 4 * c.data.seq_len * heads * hd
    return 3 * (2 * params + attention) * c.batch_size * c.data.seq_len / num_devices


def parameter_count(c) -> int:
    m = c.model
    heads, kv = m.num_heads, m.num_kv_heads or m.num_heads
    hd = m.head_dim or m.embed_dim // heads
    per_layer = m.embed_dim * hd * (2 * heads + 2 * kv) + (3 if m.glu else 2) * m.embed_dim * m.mlp_dim
    return m.num_layers * (per_layer + 2 * m.embed_dim) + m.vocab_size * m.embed_dim + m.embed_dim


@contextlib.contextmanager
def global_dropout_bits(enabled: bool):
    """With `enabled`, dropout masks are drawn whole on every device, as before per-shard bits."""
    local_spec = dropout._local_spec
    if enabled:
        dropout._local_spec = lambda *args: None
    try:
        yield
    finally:
        dropout._local_spec = local_spec


@contextlib.contextmanager
def vocab_stand_in(vocab_size: int):
    """The chars data (ids < 128) stands in for a tokenizer with `vocab_size` ids: the compiled step
    depends only on shapes, and every char id is a valid id of the larger vocab."""
    load = data.load

    def load_with_vocab(cfg):
        dataset = load(cfg)
        dataset.info = {**dataset.info, "vocab_size": vocab_size}
        return dataset

    data.load = load_with_vocab
    try:
        yield
    finally:
        data.load = load


def run_row(row: Row) -> dict[str, Any]:
    c = config_for(row)
    out: dict[str, Any] = {"key": row.key, **dataclasses.asdict(row), "params": parameter_count(c),
                           "batch_size": c.batch_size,
                           "mesh": {"data": c.mesh.data, "fsdp": c.mesh.fsdp, "tensor": c.mesh.tensor}}
    from fintrans.models import get
    if row.scan and "scan_layers" not in {f.name for f in dataclasses.fields(get("decoder_lm").config)}:
        return {**out, "status": "not run: DecoderLMConfig has no scan_layers yet"}
    start = time.perf_counter()
    try:
        with vocab_stand_in(c.model.vocab_size), global_dropout_bits(row.global_dropout_bits):
            report, _, _ = aot.compile_for_topology(c, row.topology)
    except (ConfigError, ShardingError) as e:  # a row the mesh cannot take is a result, not a crash
        return {**out, "status": f"rejected: {e}"}
    seconds = time.perf_counter() - start
    return {**out, "status": "compiled", "compile_seconds": seconds, "report": dataclasses.asdict(report),
            "model_flops_per_device": model_flops_per_device(c, report.num_devices),
            "while_loops": report.while_loops}


def _gib(b) -> str:
    return f"{b / GiB:.3f}"


def _weak_scaling_summary(rows_: list[dict]) -> list[str]:
    """One sentence per variant: how per-device temporaries and FLOPs change from the smaller mesh."""
    out = []
    for name in dict.fromkeys(r["name"] for r in rows_):
        done = [r for r in rows_ if r["name"] == name and r["status"] == "compiled"]
        if len(done) < 2:
            continue
        a, b = done[0], done[-1]
        temp = [r["report"]["per_device"]["temp"] for r in (a, b)]
        flops = [r["report"]["flops_per_device"] for r in (a, b)]
        accessed = [r["report"]["bytes_accessed_per_device"] for r in (a, b)]
        out.append(f"- {name}: {a['topology']} -> {b['topology']}: temporaries x{temp[1] / temp[0]:.2f} "
                   f"({_gib(temp[0])} -> {_gib(temp[1])} GiB), bytes accessed x{accessed[1] / accessed[0]:.2f}, "
                   f"XLA FLOPs x{flops[1] / flops[0]:.2f}, model FLOPs "
                   f"x{b['model_flops_per_device'] / a['model_flops_per_device']:.2f}; while loops "
                   f"{a['while_loops']} -> {b['while_loops']}.")
    return out + [""] if out else []


def markdown(results: list[dict], machine: str) -> str:
    lines = ["# Decoder LM: AOT compiles for TPU topologies", "",
             f"Generated by `python -m experiments.aot_table` on {machine} (libtpu's compiler, no TPU). "
             "Step compile s: lowering and compiling the train step (rows from before that was recorded: the whole "
             "run, with data loading and init). Per device: arguments and temporaries from `memory_analysis()`; peak = arguments + outputs - "
             "aliased + temporaries, against the chip's HBM. FLOPs: XLA's `cost_analysis()` and the analytic "
             "model FLOPs (6 x matmul parameters per token + dense attention, per device); XLA counts a while "
             "loop's body once, so rows with loops (scanned layers, or the collective matmuls the compiler "
             "makes at fsdp 16) under-report (see the loops column).", ""]
    groups = {"sizes": "## Sizes (4 sequences per batch shard; fsdp x tensor 4, runlocal data parallel)",
              "weak": "## Weak scaling: lm_chars as a new user runs it (rbg keys, dropout 0.1), 4 sequences per "
                      "batch shard\n\nThe '(before)' rows draw every dropout mask whole on each device, as the "
                      "trainer did before fintrans.layers.dropout drew rbg bits per shard. XLA's FLOPs grow with "
                      "the mesh only because at fsdp 16 the compiler's collective matmuls are loops it counts "
                      "once; the model FLOPs per device are the same.",
              "depth": "## Compile time against depth (width 512, v5e:4x4)"}
    header = ("| model | params | topology | layers | batch | mesh (data x fsdp x tensor) | step compile s | "
              "arguments GiB | temporaries GiB | peak GiB / HBM | fits | XLA FLOPs | model FLOPs | loops |")
    for group, title in groups.items():
        chosen = [r for r in results if r["group"] == group]
        if not chosen:
            continue
        lines += [title, "", header, "|" + "---|" * (header.count("|") - 1)]
        for r in chosen:
            layers = "scanned" if r["scan"] else "unrolled"
            mesh = " x ".join(str(r["mesh"].get(a, 1)) for a in ("data", "fsdp", "tensor"))
            if r["status"] != "compiled":
                lines.append(f"| {r['name']} | {r['params'] / 1e6:.1f}M | {r['topology']} | {layers} | "
                             f"{r['batch_size']} | {mesh} | {r['status']} |||||||")
                continue
            rep, mem = r["report"], r["report"]["per_device"]
            lines.append(
                f"| {r['name']} | {r['params'] / 1e6:.1f}M | {r['topology']} | {layers} | {r['batch_size']} | {mesh} | "
                f"{rep.get('step_compile_seconds') or r['compile_seconds']:.0f} | {_gib(mem['argument'])} | {_gib(mem['temp'])} | "
                f"{_gib(rep['peak_bytes'])} / {_gib(rep['hbm_bytes'])} | {'yes' if rep['fits'] else 'NO'} | "
                f"{rep['flops_per_device']:.3g} | {r['model_flops_per_device']:.3g} | {r['while_loops']} |")
        lines.append("")
        if group == "weak":
            lines += _weak_scaling_summary(chosen)
    ran = {r["key"] for r in results}
    missing = [row.key for row in rows() if row.key not in ran]
    if missing:
        lines += ["## Rows not run yet", "", *[f"- {k}" for k in missing], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", default="weak,sizes,depth")
    parser.add_argument("--only", default="", help="run only rows whose key contains this")
    parser.add_argument("--fresh", action="store_true", help="start a new JSON (drops every row there)")
    parser.add_argument("--redo", action="store_true", help="recompile the selected rows even if already there")
    parser.add_argument("--out", default=str(RESULTS / "aot_tpu"))
    args = parser.parse_args()
    json_path, md_path = Path(args.out + ".json"), Path(args.out + ".md")
    results = [] if args.fresh or not json_path.exists() else json.loads(json_path.read_text())["rows"]
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores"
    for row in rows():
        if row.group not in args.groups.split(",") or args.only not in row.key:
            continue
        if not args.redo and any(r["key"] == row.key and r["status"] == "compiled" for r in results):
            continue
        print(f"compiling {row.key} ...", flush=True)
        result = run_row(row)
        results = [r for r in results if r["key"] != row.key] + [result]
        order = [r.key for r in rows()]
        results.sort(key=lambda r: order.index(r["key"]) if r["key"] in order else len(order))
        json_path.write_text(json.dumps({"machine": machine, "rows": results}, indent=1))
        md_path.write_text(markdown(results, machine))
        print(f"  {result['status']}" + (f" in {result['compile_seconds']:.0f} s" if "compile_seconds" in result
                                          else ""), flush=True)


if __name__ == "__main__":
    main()
