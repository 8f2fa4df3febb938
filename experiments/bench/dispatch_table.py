"""Writes the dispatch table (kernels_pallas/dispatch_table.json) from the benchmarks' JSON.

    python -m experiments.bench.dispatch_table                  # every results/attention_*.json, decode_*.json
    python -m experiments.bench.dispatch_table --from experiments/bench/results/attention_<gpu>_<date>.json
    python -m experiments.bench.dispatch_table --check          # exit 1 if the committed table is stale

The table maps (op, device kind, dtype, head_dim, shape bucket) to the implementations measured
correct there, fastest first; `implementation=None` follows it (kernels_pallas/_dispatch.py says
how). It is a function of its sources: a run reads the files given plus every source the current
table lists that is still on disk, so adding one GPU file keeps the other devices' entries, and
`--check` rebuilds the committed table from its own sources.

Rows (experiments/bench/attention.py and decode.py; old and new field names both read):
  - op: the row's `op` (attention / decode), else the report's `benchmark`; other ops are left out.
  - implementation: the row's `implementation` if it names one, else its `impl` through ALIASES
    (ours_pallas_gpu -> pallas_gpu, jax_cudnn -> cudnn, lean_xla -> xla, ...). Anchors that are not
    implementations dispatch can choose (dense XLA, jax's own Pallas kernels, the oracle, our
    implementation=None) are listed under `ignored`.
  - shape: attention batch/B, q_len/L, kv_len, q_heads/H, kv_heads, head_dim/D, causal, and the
    pass (fwd, or fwd_bwd from `pass` or `kind`); decode batch, max_len, lengths, heads, head_dim.
    The bucket is the op's own function (blockwise_attention.bucket, lean_decode_attention.bucket).
  - device kind: the row's, else the report header's `device_kind`.
Correctness, per row: an `error` (other than "skipped: ...") rejects the implementation for its
bucket, as does a non-finite output or a failed accuracy check: the row's `ok`/`numerics_ok`, else
an error field (rel_err, rel_diff, max_abs_diff, max_abs_diff_vs_first, ...) against TOLERANCE.
The implementation the others were compared with (`diff_vs`, a check's `against`) counts as
checked; so do implementations with a passing entry in the report's `checks`. A row with no
accuracy evidence is not ranked. Rows marked skipped (time budget, memory) are not measurements.
Ranking, per bucket: by the fwd_bwd pass where the bucket has one (a call may be differentiated),
else fwd; an implementation needs a correct row of that pass; score = geometric mean over the
bucket's shapes of its time over the best time at that shape. The same shape measured in several
files counts once, from the newest (date, then start time).

The committed table holds the CPU results only (they exercise the mechanism: on CPU every entry
is `xla`, the only implementation that runs there without interpret mode); GPU entries come from
the GPU benchmark's JSON the first time a session has a GPU (experiments/bench/gpu_check.sh runs
this script at its end).
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "bench" / "results"
TABLE = REPO / "kernels_pallas" / "dispatch_table.json"

# Benchmark names -> dispatch names (kernels_pallas._dispatch.RANKABLE). Ours under every prefix
# the benchmarks have used; cuDNN's anchor is the call our cudnn implementation makes.
ALIASES = {
    **{n: n for n in ("xla", "pallas_gpu", "pallas_tpu", "pallas_mosaic_gpu", "cudnn")},
    "ours_xla": "xla", "lean_xla": "xla", "ours_lean_xla": "xla",
    "ours_pallas_gpu": "pallas_gpu", "ours_triton": "pallas_gpu", "lean_pallas_gpu": "pallas_gpu",
    "ours_lean_pallas_gpu": "pallas_gpu",
    "ours_pallas_mosaic_gpu": "pallas_mosaic_gpu", "ours_mosaic": "pallas_mosaic_gpu",
    "ours_mosaic_gpu": "pallas_mosaic_gpu", "lean_pallas_mosaic_gpu": "pallas_mosaic_gpu",
    "lean_mosaic": "pallas_mosaic_gpu", "ours_lean_pallas_mosaic_gpu": "pallas_mosaic_gpu",
    "ours_pallas_tpu": "pallas_tpu", "lean_pallas_tpu": "pallas_tpu",
    "jax_cudnn": "cudnn", "ours_cudnn": "cudnn", "lean_cudnn": "cudnn",
}
OPS = {"attention": "blockwise_attention", "blockwise_attention": "blockwise_attention",
       "decode": "lean_decode_attention", "lean_decode_attention": "lean_decode_attention"}
# Accuracy limits for rows that record an error but no ok flag: max |got - want| / max |want|
# against an oracle or anchor, as the attention benchmark's TOL (bf16 compared with bf16: twice
# the kernel tests' tolerance); gradients twice the output's.
TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 4e-2}
ERROR_FIELDS = ("rel_err", "rel_diff", "max_rel_err", "max_abs_err", "max_abs_diff", "max_abs_diff_vs_first",
                "out_rel_diff")
OK_FIELDS = ("ok", "numerics_ok")


@dataclasses.dataclass(frozen=True)
class Measurement:
    op: str
    device_kind: str
    dtype: str
    head_dim: int
    bucket: str
    shape: str          # the exact shape, e.g. "B2 H16/16 q8192 kv8192 causal"
    impl: str
    pass_: str          # fwd | fwd_bwd
    ms: Optional[float]
    ok: Optional[bool]  # None: no accuracy evidence
    why: str
    source: str
    recency: tuple


def _rel(path) -> str:
    p = Path(path).resolve()
    try:
        return p.relative_to(REPO).as_posix()
    except ValueError:
        return str(p)


def _pass(row) -> str:
    kind = str(row.get("pass") or row.get("kind") or "fwd").lower().replace("+", "_")
    return "fwd_bwd" if "bwd" in kind else "fwd"


def _first(row, *names):
    for n in names:
        if row.get(n) is not None:
            return row[n]
    return None


def _shape(op, row):
    """(head_dim, bucket, shape text) of a row, or None if it is not a kernel measurement."""
    from kernels_pallas import blockwise_attention, lean_decode_attention
    d = _first(row, "head_dim", "D")
    if d is None:
        return None
    if op == "blockwise_attention":
        b, lq = _first(row, "batch", "B"), _first(row, "q_len", "L")
        lk = _first(row, "kv_len", "L") or lq
        hq = _first(row, "q_heads", "H")
        hkv = _first(row, "kv_heads") or hq
        if lq is None or "causal" not in row:
            return None
        causal = bool(row["causal"])
        text = f"B{b} H{hq}/{hkv} q{lq} kv{lk}" + (" causal" if causal else "")
        return int(d), blockwise_attention.bucket(int(lq), int(lk), causal), text
    b, max_len = _first(row, "batch", "B"), row.get("max_len")
    if b is None or max_len is None:
        return None
    lengths = row.get("lengths")
    text = (f"B{b} H{row.get('q_heads')}/{row.get('kv_heads')} max_len {max_len} "
            f"lengths {_lengths_text(lengths)}")
    return int(d), lean_decode_attention.bucket(int(b), int(max_len)), text


def _lengths_text(lengths):
    if not lengths:
        return "?"
    runs, i = [], 0
    while i < len(lengths):  # run-length, so a batch of 8 equal lengths stays short
        j = i
        while j < len(lengths) and lengths[j] == lengths[i]:
            j += 1
        runs.append(f"{lengths[i]}x{j - i}" if j - i > 1 else str(lengths[i]))
        i = j
    return ",".join(runs)


def _accuracy(row, dtype, pass_, checked, baselines):
    """(ok, why) from the row's own evidence, or the report's checks and comparisons."""
    for f in OK_FIELDS:
        if row.get(f) is not None:
            err = next((f"{e} {row[e]:.3g}" for e in ERROR_FIELDS if isinstance(row.get(e), (int, float))), "")
            return bool(row[f]), f"{f}={bool(row[f])}" + (f" ({err})" if err else "")
    for f in ERROR_FIELDS:
        if isinstance(row.get(f), (int, float)):
            limit = TOLERANCE.get(dtype, TOLERANCE["bfloat16"]) * (2 if pass_ == "fwd_bwd" else 1)
            ok = math.isfinite(row[f]) and row[f] <= limit
            return ok, f"{f} {row[f]:.3g} {'<=' if ok else '>'} {limit:g}"
    if row["impl"] in baselines:
        return True, "the benchmark's baseline for the others' accuracy"
    if row["impl"] in checked:
        return checked[row["impl"]], f"the report's numerics check: ok={checked[row['impl']]}"
    return None, "no accuracy check recorded"


def read(path) -> tuple[dict, list[Measurement], dict]:
    """(source info, measurements, {ignored impl: why}) of one benchmark JSON file."""
    with open(path) as fh:
        doc = json.load(fh)
    src = _rel(path)
    info = {"file": src, "benchmark": doc.get("benchmark"), "device_kind": doc.get("device_kind"),
            "date": doc.get("date"), "started": doc.get("started"), "jax_version": doc.get("jax_version")}
    recency = (str(doc.get("date") or ""), str(doc.get("started") or ""))
    rows = [r for r in doc.get("rows", []) if isinstance(r, dict) and r.get("impl") is not None]
    checked = {c["impl"]: bool(c.get("ok")) for c in doc.get("checks") or [] if "impl" in c}
    baselines = {c["against"] for c in doc.get("checks") or [] if c.get("against")}
    baselines |= {r["diff_vs"] for r in rows if r.get("diff_vs")}
    out, ignored = [], {}
    for row in rows:
        op = OPS.get(str(row.get("op") or doc.get("benchmark") or ""))
        if op is None:
            continue
        shape = _shape(op, row)
        if shape is None:
            continue  # not a kernel measurement (say, decode's generation rows)
        impl = row.get("implementation") if row.get("implementation") in ALIASES else ALIASES.get(row["impl"])
        if impl is None:
            ignored[str(row["impl"])] = "not an implementation dispatch chooses (an anchor, the oracle or the default)"
            continue
        error = row.get("error")
        if row.get("skipped") or (isinstance(error, str) and error.startswith("skipped")):
            continue  # never run (time budget, memory): no evidence either way
        dtype, pass_ = str(row.get("dtype")), _pass(row)
        ms = row.get("ms")
        if error:
            ok, why = False, f"error: {error}"
        elif not isinstance(ms, (int, float)) or not ms > 0:
            ok, why = False, "no time recorded"
        elif row.get("finite") is False:
            ok, why = False, "non-finite output"
        else:
            ok, why = _accuracy(row, dtype, pass_, checked, baselines)
        out.append(Measurement(op, str(row.get("device_kind") or doc.get("device_kind")), dtype, shape[0],
                               shape[1], shape[2], impl, pass_, float(ms) if ms else None, ok, why, src,
                               recency))
    return info, out, ignored


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


def _natural(key) -> tuple:
    """Sort key with numbers compared as numbers (q2048 before q16384)."""
    return tuple(tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(part))) for part in key)


def rank(measurements: Iterable[Measurement]) -> list[dict]:
    """Table entries (sorted) from measurements: newest per (shape, impl, pass), then per bucket."""
    newest: dict[tuple, Measurement] = {}
    for m in measurements:
        k = (m.op, m.device_kind, m.dtype, m.head_dim, m.bucket, m.shape, m.impl, m.pass_)
        if k not in newest or m.recency >= newest[k].recency:
            newest[k] = m
    buckets: dict[tuple, list[Measurement]] = {}
    for m in newest.values():
        buckets.setdefault((m.op, m.device_kind, m.dtype, m.head_dim, m.bucket), []).append(m)
    entries = []
    for (op, kind, dtype, d, bucket), ms in sorted(buckets.items(), key=lambda kv: _natural(kv[0])):
        rejected = {}
        for m in sorted(ms, key=lambda m: (m.pass_, m.shape)):
            if m.ok is False and m.impl not in rejected:
                rejected[m.impl] = f"{m.pass_} {m.shape}: {m.why}"
        good = [m for m in ms if m.ok and m.impl not in rejected]
        ranked_by = "fwd_bwd" if any(m.pass_ == "fwd_bwd" for m in good) else "fwd"
        by_shape: dict[str, dict[str, float]] = {}
        for m in good:
            if m.pass_ == ranked_by:
                by_shape.setdefault(m.shape, {})[m.impl] = m.ms
        score: dict[str, list[float]] = {}
        for times in by_shape.values():
            best = min(times.values())
            for impl, t in times.items():
                score.setdefault(impl, []).append(math.log(t / best))
        order = sorted(score, key=lambda i: (sum(score[i]) / len(score[i]), i))
        unranked = {}
        for m in sorted(ms, key=lambda m: (m.pass_, m.shape)):
            if m.impl not in rejected and m.impl not in order and m.impl not in unranked:
                unranked[m.impl] = m.why if not m.ok else f"no correct {ranked_by} measurement"
        mean = {}
        for p in ("fwd", "fwd_bwd"):
            per = {}
            for m in good:
                if m.pass_ == p:
                    per.setdefault(m.impl, []).append(m.ms)
            if per:
                mean[p] = {i: _sig(sum(t) / len(t)) for i, t in sorted(per.items())}
        entries.append({"op": op, "device_kind": kind, "dtype": dtype, "head_dim": d, "bucket": bucket,
                        "order": order, "ranked_by": ranked_by, "ms": mean,
                        "shapes": sorted({m.shape for m in ms}), "sources": sorted({m.source for m in ms}),
                        "rejected": rejected, "unranked": unranked})
    return entries


ABOUT = ("implementation=None's order per (op, device_kind, dtype, head_dim, bucket): the implementations "
         "measured correct there, fastest first (by the 'ranked_by' pass; 'ms' is the mean over the bucket's "
         "shapes). Written by `python -m experiments.bench.dispatch_table` from the benchmark JSON in "
         "'sources'; never edit by hand. Only CPU results so far (entries are 'xla', the only implementation "
         "there); GPU entries come from the GPU benchmark's JSON when a session has a GPU.")


def build(paths: Iterable) -> dict:
    from kernels_pallas import _dispatch
    sources, measurements, ignored = [], [], {}
    for path in sorted({_rel(p) for p in paths}):
        info, ms, ign = read(REPO / path if not os.path.isabs(path) else path)
        if not ms and not ign:
            continue  # not an attention or decode benchmark
        sources.append(info)
        measurements += ms
        ignored.update(ign)
    return {"about": ABOUT, "format": _dispatch.TABLE_FORMAT, "sources": sources,
            "ignored": dict(sorted(ignored.items())), "entries": rank(measurements)}


def default_sources(table_path=TABLE, extra: Iterable = ()) -> list[str]:
    """The files to build from: `extra`, plus the current table's sources still on disk; with
    neither, every attention_*.json and decode_*.json under experiments/bench/results."""
    listed = []
    if Path(table_path).exists():
        with open(table_path) as fh:
            listed = [s["file"] for s in json.load(fh).get("sources", [])]
    listed = [f for f in listed if (REPO / f).exists() or os.path.isabs(f) and os.path.exists(f)]
    extra = [_rel(p) for p in extra]
    if not extra and not listed:
        return sorted(_rel(p) for pat in ("attention_*.json", "decode_*.json") for p in glob.glob(str(RESULTS / pat)))
    return sorted(set(listed) | set(extra))


def dumps(table: dict) -> str:
    return json.dumps(table, indent=1, sort_keys=False) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="sources", nargs="*", default=[],
                    help="benchmark JSON files to add (default: the table's own sources, else all results)")
    ap.add_argument("--only", action="store_true", help="build from --from alone, dropping the table's sources")
    ap.add_argument("--out", default=str(TABLE), help="table file to write (default: the committed one)")
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if --out differs from a rebuild")
    args = ap.parse_args(argv)
    paths = [_rel(p) for p in args.sources] if args.only else default_sources(args.out, args.sources)
    text = dumps(build(paths))
    if args.check:
        current = Path(args.out).read_text() if Path(args.out).exists() else ""
        if current != text:
            print(f"{args.out} is stale: rebuild with python -m experiments.bench.dispatch_table", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date with its {len(paths)} sources")
        return 0
    tmp = f"{args.out}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, args.out)
    table = json.loads(text)
    print(f"wrote {args.out}: {len(table['entries'])} entries from {len(table['sources'])} sources")
    for e in table["entries"]:
        ms = e["ms"].get(e["ranked_by"], {})
        print(f"  {e['op']:22s} {e['device_kind'][:24]:24s} {e['dtype']:8s} d{e['head_dim']:<4d} {e['bucket']:22s} "
              + " > ".join(f"{n} {ms[n]:.4g}ms" for n in e["order"])
              + (f"   rejected: {sorted(e['rejected'])}" if e["rejected"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
