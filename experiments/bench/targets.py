"""The issue's target shapes, every anchor beside ours, in one process (jax starts once; each
benchmark's section compiles its own entries), judged and printed: what gpu_check.sh runs.

    python -m experiments.bench.targets --time-budget 150           # on the GPU machine
    python -m experiments.bench.targets --smoke --out-dir /tmp/t     # CPU: tiny shapes, for the tests

Sections, in this order, each with its share of the time budget (a section that finishes early
leaves its time to the next; an entry is not started past its section's deadline, and is recorded
as skipped):
- attention (experiments.bench.attention.run_targets): L8k D128 bf16, B2 H16, causal and not,
  forward and forward+backward; ours Mosaic GPU, ours Triton, our default against cuDNN, jax's
  attention_mgpu and jax's Triton mha. Targets: forward >= 1.0x cuDNN, forward+backward >= 0.9x.
- decode (experiments.bench.decode.run_targets): B1 128k and a ragged batch (128k + 7 x 2k),
  Hq32/Hkv8 D128 bf16; ours against cuDNN, XLA, jax's split-K. Targets: B1 128k >= 0.9x cuDNN's
  bandwidth; the ragged batch faster than cuDNN.
- window (experiments.bench.window.run_targets): 262,144 tokens in groups of 128, 8 heads of 16,
  bf16; ours against cuDNN and XLA over the groups, and the HBM floor. Target: within 2x of the floor.
tokamax joins each section as an anchor when `import tokamax` works (see gpu_check.sh for carrying
its wheels). The copy bandwidth is measured once and shared by decode and window. Every row is
checked against a float32 oracle (rel_err, ok) and carries the fields a dispatch table keys on (see
harness.row). Each section writes its own report, rewritten after every row:
experiments/bench/results/<attention|decode|window>_<device>_<date>_targets.json, so the dispatch
table script reads them like the full benchmarks' files. Exit status 0 unless the driver itself
fails: a failing entry, or a missed target, is a recorded result.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

SECTIONS = ("attention", "decode", "window")
# Cumulative shares of the budget at which each section's deadline falls: attention compiles the
# most (24 entries, Triton and Mosaic backward passes), decode and window are quick to compile.
SHARES = {"attention": 0.6, "decode": 0.82, "window": 1.0}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes on any backend (checks the script)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds for all sections (default: none); entries past a section's deadline are skipped")
    p.add_argument("--out-dir", default=None, help="where the JSON goes (default experiments/bench/results)")
    p.add_argument("--tag", default="targets", help="file name suffix")
    p.add_argument("--no-tokamax", action="store_true", help="leave tokamax out even if it imports")
    args = p.parse_args(argv)
    sections = [s for s in args.only.split(",") if s]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        p.error(f"--only: unknown sections {unknown}; choose from {list(SECTIONS)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    t0 = time.time()
    import jax
    from experiments.bench import attention, decode, window
    from experiments.bench.harness import Deadline, Report, copy_bandwidth, import_tokamax, print_targets
    tokamax, why = (None, "--no-tokamax") if args.no_tokamax else import_tokamax()
    platform = jax.default_backend()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} [{platform}] ({time.time() - t0:.1f}s to start); "
          f"tokamax: {'version ' + str(getattr(tokamax, '__version__', '?')) if tokamax else 'not used (' + why + ')'}",
          flush=True)
    # The memory roofline decode and window are judged by, measured once (bf16 elements, 1 GiB on a GPU).
    peak = copy_bandwidth(1 << (30 if platform == "gpu" else 24), "bfloat16")
    print(f"copy bandwidth: {peak:.0f} GB/s", flush=True)
    runners = {"attention": attention.run_targets, "decode": decode.run_targets, "window": window.run_targets}
    reports = []
    for name in sections:
        deadline = Deadline(None if args.time_budget is None else t0 + SHARES[name] * args.time_budget)
        report = Report(name, out_dir=args.out_dir, argv=argv, tag=args.tag, mode="smoke" if args.smoke else "targets",
                        copy_gb_per_s=peak, tokamax=getattr(tokamax, "__version__", None) if tokamax else why,
                        deadline=deadline.at, targets=[])
        reports.append(report)
        print(f"\n== {name} (deadline in {'-' if deadline.at is None else round(deadline.at - time.time())}s)", flush=True)
        kwargs = dict(smoke=args.smoke, deadline=deadline, tokamax=tokamax)
        if name != "attention":
            kwargs["peak"] = peak
        try:
            runners[name](report, **kwargs)
        except Exception as e:  # a section that cannot even build its inputs: recorded, the next one runs
            from experiments.bench.harness import error_text
            report.doc["section_error"] = error_text(e)
            print(f"{name}: section failed: {report.doc['section_error']}", flush=True)
        report.save()
        gc.collect()
        jax.clear_caches()
    print_rows([r for rep in reports for r in rep.rows])
    print("\nTargets")
    for report in reports:
        print_targets(report.doc["targets"])
    for report in reports:
        print(f"wrote {report.path}")
    print(f"targets done in {time.time() - t0:.0f}s", flush=True)
    return 0


def print_rows(rows):
    print(f"\n{'op':9s} {'pass':7s} {'causal':6s} {'shape':26s} {'impl':23s} {'ms':>9s} {'x cuDNN':>7s} "
          f"{'rel_err':>8s} {'ok':3s} note")
    cudnn = {}
    for r in rows:
        if r["impl"] == "jax_cudnn" and r.get("ms"):
            cudnn[_key(r)] = r["ms"]
    for r in rows:
        shape = f"B{r['batch']} Lq{r['q_len']} Lk{r['kv_len']} H{r['q_heads']}/{r['kv_heads']} D{r['head_dim']}"
        if r["op"] == "decode" and r.get("kind") == "ragged":
            shape = f"ragged B{r['batch']} max{r['kv_len']}"
        ratio = cudnn.get(_key(r)) / r["ms"] if r.get("ms") and cudnn.get(_key(r)) else None
        note = r.get("error") or r.get("check_error") or (f"same as {r['ms_from']}" if r.get("ms_from") else "")
        if r.get("fraction_of_floor"):
            note = f"{100 * r['fraction_of_floor']:.0f}% of the HBM floor " + note
        elif r.get("gb_per_s"):
            note = f"{r['gb_per_s']:.0f} GB/s " + note
        print(f"{r['op']:9s} {r['pass']:7s} {str(r['causal']):6s} {shape[:26]:26s} {r['impl'][:23]:23s} "
              f"{'-' if not r.get('ms') else format(r['ms'], '.3f'):>9s} {'' if ratio is None else format(ratio, '.2f'):>7s} "
              f"{'' if r.get('rel_err') is None else format(r['rel_err'], '.1e'):>8s} "
              f"{'' if r.get('ok') is None else ('yes' if r['ok'] else 'NO'):3s} {note[:100]}")


def _key(r):
    return (r["op"], r["pass"], r["causal"], r["batch"], r["q_len"], r["kv_len"], str(r.get("lengths")))


if __name__ == "__main__":
    sys.exit(main())
