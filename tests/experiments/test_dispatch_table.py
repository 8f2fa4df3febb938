"""experiments/bench/dispatch_table.py on small synthetic benchmark reports (both row formats),
the table it writes as dispatch reads it, and the committed table against its own sources."""
import json
import types

import pytest

from experiments.bench import dispatch_table as dt
from kernels_pallas import _dispatch
from kernels_pallas import blockwise_attention as ba

H100 = "NVIDIA H100 80GB HBM3"


def _attention_row(impl, pass_, ms, L=8192, causal=True, **extra):
    return dict(op="attention", impl=impl, **{"pass": pass_}, batch=2, q_len=L, kv_len=L, q_heads=16, kv_heads=16,
                head_dim=128, causal=causal, dtype="bfloat16", ms=ms, **extra)


def _write(tmp_path, name, header, rows):
    path = tmp_path / name
    path.write_text(json.dumps({**header, "rows": rows}))
    return path


@pytest.fixture
def reports(tmp_path):
    new = dict(benchmark="attention", device_kind=H100, date="2026-12-02", started="2026-12-02T10:00:00",
               jax_version="0.11.2")
    attention = _write(tmp_path, "attention_h100_new.json", new, [
        # B2 L8192 causal: forward and forward+backward.
        _attention_row("jax_cudnn", "fwd", 2.0, rel_err=0.0, ok=True),
        _attention_row("ours_pallas_gpu", "fwd", 2.5, rel_err=0.01, ok=True),
        _attention_row("ours_pallas_mosaic_gpu", "fwd", 1.5, rel_err=0.3, ok=False),  # fast but wrong
        _attention_row("ours_xla", "fwd", 9.0, rel_err=1e-3),                         # no flag: TOLERANCE
        _attention_row("stock_triton", "fwd", 1.0, ok=True),                          # an anchor, not ours
        _attention_row("ours_default", "fwd", 2.0, ok=True, implementation=None),     # implementation=None
        _attention_row("jax_cudnn", "fwd_bwd", 7.0, ok=True),
        _attention_row("ours_pallas_gpu", "fwd_bwd", 6.0, ok=True),
        _attention_row("ours_xla", "fwd_bwd", 20.0, rel_err=0.05),                    # within 2 x 4e-2
        # Same bucket, another shape: cuDNN much faster there, so it leads by geometric mean.
        _attention_row("jax_cudnn", "fwd_bwd", 1.0, L=8000, ok=True),
        _attention_row("ours_pallas_gpu", "fwd_bwd", 2.0, L=8000, ok=True),
        # L4096 non-causal: an error rejects, a skipped row is no measurement, no check is unranked.
        _attention_row("jax_cudnn", "fwd", None, L=4096, causal=False, error="NotImplementedError: no"),
        _attention_row("ours_pallas_gpu", "fwd", None, L=4096, causal=False, error="skipped: time budget 240s spent"),
        _attention_row("ours_xla", "fwd", 3.0, L=4096, causal=False),
        _attention_row("ours_pallas_mosaic_gpu", "fwd", 1.0, L=4096, causal=False, ok=True, finite=False),
    ])
    old = dict(benchmark="attention", device_kind=H100, date="2026-11-30", started="2026-11-30T09:00:00")
    # The old row format (B, L, H, D, kind); the first anchor is the others' baseline (no diff of its own).
    attention_old = _write(tmp_path, "attention_h100_old.json", old, [
        dict(kind="fwd+bwd", impl="jax_cudnn", B=2, L=8192, H=16, D=128, causal=True, dtype="bfloat16", ms=7.5),
        dict(kind="fwd+bwd", impl="ours_pallas_gpu", B=2, L=8192, H=16, D=128, causal=True, dtype="bfloat16",
             ms=100.0, diff_vs="jax_cudnn", rel_diff=0.01, numerics_ok=True),   # replaced by the newer file
        dict(kind="fwd", impl="jax_cudnn", B=1, L=2048, H=16, D=64, causal=False, dtype="float16", ms=0.2),
        dict(kind="fwd", impl="ours_pallas_gpu", B=1, L=2048, H=16, D=64, causal=False, dtype="float16",
             ms=0.3, diff_vs="jax_cudnn", rel_diff=0.001, numerics_ok=True),
    ])
    decode = _write(tmp_path, "decode_h100.json", dict(benchmark="decode", device_kind=H100, date="2026-12-02",
                                                       started="2026-12-02T11:00:00"), [
        dict(kind="uniform", impl=impl, batch=1, max_len=131072, lengths=[131072], q_heads=32, kv_heads=8,
             head_dim=128, dtype="bfloat16", ms=ms, max_abs_diff=err)
        for impl, ms, err in (("lean_xla", 1.0, 1e-3), ("cudnn", 0.8, 2e-3), ("xla_dense", 5.0, 0.0),
                              ("lean_pallas_gpu", 0.5, 0.5))
    ] + [dict(kind="generate", impl="lean", batch=4, prompt=8, tokens_per_s=300.0)])
    window = _write(tmp_path, "window_h100.json", dict(benchmark="window", device_kind=H100), [
        dict(impl="ours_xla", ms=1.0, head_dim=16)])
    return attention, attention_old, decode, window


def _entries(table):
    return {(e["op"], e["dtype"], e["head_dim"], e["bucket"]): e for e in table["entries"]}


def test_the_table_ranks_only_correct_measurements_fastest_first(reports):
    table = dt.build(reports)
    assert [s["file"].rsplit("/", 1)[-1] for s in table["sources"]] == [
        "attention_h100_new.json", "attention_h100_old.json", "decode_h100.json"]  # window: not a source
    assert table["sources"][0]["device_kind"] == H100 and table["sources"][0]["date"] == "2026-12-02"
    assert set(table["ignored"]) == {"stock_triton", "ours_default", "xla_dense"}
    entries = _entries(table)
    assert all(e["device_kind"] == H100 for e in table["entries"])
    assert set(entries) == {("blockwise_attention", "bfloat16", 128, "causal/q8192/kv8192"),
                            ("blockwise_attention", "bfloat16", 128, "full/q4096/kv4096"),
                            ("blockwise_attention", "float16", 64, "full/q2048/kv2048"),
                            ("lean_decode_attention", "bfloat16", 128, "b1/len131072")}

    e = entries["blockwise_attention", "bfloat16", 128, "causal/q8192/kv8192"]
    # Ranked by fwd_bwd; geometric mean of time over each shape's best: cudnn (7/6, 1) before
    # pallas_gpu (1, 2); the old file's 100 ms for pallas_gpu at L8192 was replaced by the new 6 ms.
    assert e["order"] == ["cudnn", "pallas_gpu", "xla"] and e["ranked_by"] == "fwd_bwd"
    assert e["ms"] == {"fwd": {"cudnn": 2.0, "pallas_gpu": 2.5, "xla": 9.0},
                       "fwd_bwd": {"cudnn": 4.0, "pallas_gpu": 4.0, "xla": 20.0}}
    assert list(e["rejected"]) == ["pallas_mosaic_gpu"] and "ok=False (rel_err 0.3)" in e["rejected"]["pallas_mosaic_gpu"]
    assert e["shapes"] == ["B2 H16/16 q8000 kv8000 causal", "B2 H16/16 q8192 kv8192 causal"]
    assert len(e["sources"]) == 1 and e["sources"][0].endswith("attention_h100_new.json")

    e = entries["blockwise_attention", "bfloat16", 128, "full/q4096/kv4096"]
    assert e["order"] == [] and e["rejected"] == {
        "cudnn": "fwd B2 H16/16 q4096 kv4096: error: NotImplementedError: no",
        "pallas_mosaic_gpu": "fwd B2 H16/16 q4096 kv4096: non-finite output"}
    assert e["unranked"] == {"xla": "no accuracy check recorded"}  # and pallas_gpu's skipped row: nothing

    e = entries["blockwise_attention", "float16", 64, "full/q2048/kv2048"]
    assert e["order"] == ["cudnn", "pallas_gpu"] and e["ranked_by"] == "fwd"  # the baseline counts as checked

    e = entries["lean_decode_attention", "bfloat16", 128, "b1/len131072"]
    assert e["order"] == ["cudnn", "xla"]
    assert e["rejected"] == {"pallas_gpu": "fwd B1 H32/8 max_len 131072 lengths 131072: max_abs_diff 0.5 > 0.04"}


def test_dispatch_reads_the_written_table(reports, tmp_path):
    out = tmp_path / "table.json"
    assert dt.main(["--from", *map(str, reports), "--only", "--out", str(out)]) == 0
    assert dt.main(["--from", *map(str, reports), "--only", "--out", str(out), "--check"]) == 0
    table = json.loads(out.read_text())
    assert _dispatch.load_table(str(out))  # what dispatch loads
    hopper = types.SimpleNamespace(platform="gpu", device_kind=H100, compute_capability="9.0")
    key = _dispatch.TableKey("blockwise_attention", H100, "bfloat16", 128, ba.bucket(6000, 6000, True))
    with _dispatch.use_table(table):
        p = _dispatch.plan(ba.PREFERENCE["gpu"], ba.IMPLEMENTATIONS, key, "gpu", hopper)
    assert p.candidates == ("cudnn", "pallas_gpu", "xla")
    entry = _entries(table)["blockwise_attention", "bfloat16", 128, "causal/q8192/kv8192"]
    assert p.entry == entry
    assert p.dropped == (("pallas_mosaic_gpu", "rejected by the table: " + entry["rejected"]["pallas_mosaic_gpu"]),)
    assert "measured fastest first, fwd_bwd: cudnn 4 ms, pallas_gpu 4 ms, xla 20 ms" in p.reason
    # Rebuilding from the table's own sources alone adds nothing new; a changed table is stale.
    assert dt.default_sources(out) == sorted(dt._rel(p) for p in reports[:3])  # the window report is no source
    table["entries"][0]["order"].reverse()  # a hand edit
    out.write_text(dt.dumps(table))
    assert dt.main(["--out", str(out), "--check"]) == 1


def test_the_committed_table_is_built_from_its_sources():
    assert dt.main(["--check"]) == 0
    table = json.loads(dt.TABLE.read_text())
    assert {s["device_kind"] for s in table["sources"]} == {"cpu"}
    assert {tuple(e["order"]) for e in table["entries"]} == {("xla",)}  # the only implementation on CPU
