"""kernels_pallas._dispatch: the dispatch table and its buckets, the static default order and its
reason, explain(), named implementations never replaced, unavailable modules, and the cudnn
implementations (what they refuse, their conventions, their CUDA lowering without a GPU).

Kernels that must refuse are stand-ins (spies); everything else runs the real xla and reference
implementations on tiny inputs, so the file stays fast on CPU."""
import re
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import _dispatch
from kernels_pallas import blockwise_attention as ba
from kernels_pallas import flat_window_attention as fw
from kernels_pallas import lean_decode_attention as ld
from kernels_pallas.blockwise_attention import cudnn as ba_cudnn
from kernels_pallas.lean_decode_attention import cudnn as ld_cudnn

HOPPER = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H100 80GB HBM3", compute_capability="9.0")
AMPERE = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA A100-SXM4-80GB", compute_capability="8.0")
GPU_DEFAULT = ("cudnn", "pallas_mosaic_gpu", "pallas_gpu", "xla")


def _qkv(b=1, lq=16, lk=16, hq=4, hkv=2, d=8, dtype=jnp.float32):
    ks = jax.random.split(jax.random.key(0), 3)
    return (jax.random.normal(ks[0], (b, lq, hq, d), dtype), jax.random.normal(ks[1], (b, lk, hkv, d), dtype),
            jax.random.normal(ks[2], (b, lk, hkv, d), dtype))


def _entry(key, order, ms=None, rejected=None, ranked_by="fwd_bwd"):
    return dict(op=key.op, device_kind=key.device_kind, dtype=key.dtype, head_dim=key.head_dim,
                bucket=key.bucket, order=list(order), ranked_by=ranked_by, ms={ranked_by: ms or {}},
                sources=["results/synthetic.json"], rejected=rejected or {})


def _table(*entries):
    return {"format": _dispatch.TABLE_FORMAT, "entries": list(entries)}


def _spies(monkeypatch, package, refuse):
    """Makes `refuse` implementations of `package` stand-ins that raise NotImplementedError, and
    records every implementation dispatch calls (in order)."""
    calls, real = [], _dispatch.module

    def module(pkg, name):
        if pkg != package.__name__:
            return real(pkg, name)
        if name in refuse:
            def attention(*a, **kw):
                calls.append(name)
                raise NotImplementedError(f"{name} refuses")
            return types.SimpleNamespace(attention=attention)
        impl = real(pkg, name)
        return types.SimpleNamespace(attention=lambda *a, **kw: calls.append(name) or impl.attention(*a, **kw))

    monkeypatch.setattr(_dispatch, "module", module)
    return calls


def test_buckets_and_table_keys():
    assert [_dispatch.pow2_bucket(n) for n in (0, 1, 2, 3, 2048, 2049)] == [1, 1, 2, 4, 2048, 4096]
    assert ba.bucket(2000, 2048, True) == "causal/q2048/kv2048" and ba.bucket(1, 4097, False) == "full/q1/kv8192"
    assert ld.bucket(3, 131072) == "b4/len131072" and ld.bucket(8, 100_000) == "b8/len131072"
    q = jax.ShapeDtypeStruct((2, 100, 4, 64), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((2, 300, 2, 64), jnp.bfloat16)
    kind = jax.devices()[0].device_kind
    assert ba.table_key(q, k, True) == _dispatch.TableKey("blockwise_attention", kind, "bfloat16", 64,
                                                          "causal/q128/kv512")
    assert ld.table_key(jax.ShapeDtypeStruct((3, 4, 64), jnp.float16), k) == _dispatch.TableKey(
        "lean_decode_attention", kind, "float16", 64, "b4/len512")


def test_static_default_order_and_its_reason():
    """No table entry (another GPU, a new shape): cudnn, pallas_mosaic_gpu (Hopper, bf16/f16),
    pallas_gpu, xla on GPU; CPU and TPU as before; packages without cuDNN keep their order."""
    for package in (ba, ld):
        assert package.PREFERENCE == {"cpu": ("xla",), "gpu": GPU_DEFAULT, "tpu": ("pallas_tpu", "xla")}
        assert set(package.IMPLEMENTATIONS) >= set(GPU_DEFAULT)
    assert fw.PREFERENCE["gpu"] == ("pallas_gpu", "xla")
    key = _dispatch.TableKey("blockwise_attention", HOPPER.device_kind, "bfloat16", 128, "causal/q8192/kv8192")
    with _dispatch.use_table(_table()):
        p = _dispatch.plan(GPU_DEFAULT, ba.IMPLEMENTATIONS, key, "gpu", HOPPER)
        assert p.candidates == GPU_DEFAULT and p.entry is None and p.dropped == ()
        assert p.reason == ("no dispatch table entry for blockwise_attention on 'NVIDIA H100 80GB HBM3', bfloat16, "
                            f"head_dim 128, causal/q8192/kv8192: the static default order for gpu {GPU_DEFAULT}")
        p = _dispatch.plan(GPU_DEFAULT, ba.IMPLEMENTATIONS, key, "gpu", AMPERE)
        assert p.candidates == ("cudnn", "pallas_gpu", "xla")
        assert p.dropped[0][0] == "pallas_mosaic_gpu" and "Hopper (sm90)" in p.dropped[0][1]
        f32 = _dispatch.TableKey(key.op, key.device_kind, "float32", 128, key.bucket)
        p = _dispatch.plan(GPU_DEFAULT, ba.IMPLEMENTATIONS, f32, "gpu", HOPPER)
        assert dict(p.dropped) == {"pallas_mosaic_gpu": "pallas_mosaic_gpu takes bfloat16 and float16, not float32"}
        # An implementation the package lacks is never a candidate; nothing follows xla.
        p = _dispatch.plan(("pallas_gpu", "xla", "cudnn"), ("xla", "pallas_gpu"), None, "gpu", HOPPER)
        assert p.candidates == ("pallas_gpu", "xla") and "this op has no dispatch table" in p.reason


def test_table_entries_order_reject_and_cut_at_xla():
    key = _dispatch.TableKey("blockwise_attention", HOPPER.device_kind, "bfloat16", 128, "causal/q8192/kv8192")
    plan = lambda: _dispatch.plan(GPU_DEFAULT, ba.IMPLEMENTATIONS, key, "gpu", HOPPER)
    rejected = {"pallas_mosaic_gpu": "fwd_bwd B2 H16/16 q8192 kv8192 causal: ok=False (rel_err 0.3)"}
    with _dispatch.use_table(_table(_entry(key, ["pallas_gpu", "cudnn"], {"pallas_gpu": 1.1, "cudnn": 1.3},
                                           rejected))):
        p = plan()
        assert p.candidates == ("pallas_gpu", "cudnn", "xla")
        assert p.dropped == (("pallas_mosaic_gpu", "rejected by the table: " + rejected["pallas_mosaic_gpu"]),)
        assert "(from results/synthetic.json); measured fastest first, fwd_bwd: pallas_gpu 1.1 ms, cudnn 1.3 ms; " \
               "then the default order's unmeasured ['xla']" in p.reason
    with _dispatch.use_table(_table(_entry(key, ["xla", "cudnn"]))):  # xla measured fastest: it is the last try
        p = plan()
        assert p.candidates == ("xla",)
        assert [n for n, why in p.dropped if "after xla" in why] == ["cudnn", "pallas_mosaic_gpu", "pallas_gpu"]
    with _dispatch.use_table(_table(_entry(key, ["cudnn"]))):  # unmeasured ones keep the default order
        assert plan().candidates == GPU_DEFAULT
    # A key the table does not hold falls back, saying so.
    other = _dispatch.TableKey(key.op, key.device_kind, "bfloat16", 64, key.bucket)
    with _dispatch.use_table(_table(_entry(key, ["pallas_gpu"]))):
        p = _dispatch.plan(GPU_DEFAULT, ba.IMPLEMENTATIONS, other, "gpu", HOPPER)
        assert p.entry is None and p.reason.startswith("no dispatch table entry for") and p.candidates == GPU_DEFAULT


def test_malformed_tables_are_rejected_by_name(tmp_path):
    key = _dispatch.TableKey("blockwise_attention", "cpu", "float32", 8, "full/q16/kv16")
    with pytest.raises(ValueError, match=r"names \['flash'\], not in"):
        with _dispatch.use_table(_table(_entry(key, ["flash", "xla"]))):
            pass
    with pytest.raises(ValueError, match="expected format 1"):
        with _dispatch.use_table({"entries": []}):
            pass
    path = tmp_path / "t.json"
    path.write_text('{"format": 1, "entries": [{"op": "x"}]}')
    with pytest.raises(ValueError, match="malformed entry"):
        _dispatch.load_table(str(path))
    assert _dispatch.load_table(str(tmp_path / "missing.json")) == {}
    # The committed table loads, and every entry is keyed as dispatch computes keys.
    for k in _dispatch.load_table(_dispatch.TABLE_PATH):
        assert k.op in (ba.TABLE_OP, ld.TABLE_OP) and re.fullmatch(r"(causal|full)/q\d+/kv\d+|b\d+/len\d+", k.bucket)


def test_dispatch_follows_the_table_and_explain_says_why(monkeypatch):
    """implementation=None on a table entry tries its order, falling through on NotImplementedError;
    explain() reports the same without running anything (ShapeDtypeStructs); a named implementation
    is never replaced, also when the table prefers another."""
    calls = _spies(monkeypatch, ba, refuse=("cudnn", "pallas_gpu"))
    q, k, v = _qkv()
    key = ba.table_key(q, k, True)
    want = ba.blockwise_attention(q, k, v, causal=True, implementation="reference")
    with _dispatch.use_table(_table(_entry(key, ["cudnn", "pallas_gpu", "xla"], {"cudnn": 0.5, "xla": 2.0}))):
        del calls[:]
        np.testing.assert_allclose(ba.blockwise_attention(q, k, v, causal=True), want, atol=1e-5)
        assert calls == ["cudnn", "pallas_gpu", "xla"]
        abstract = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v)]
        e = ba.explain(*abstract, causal=True)
        assert (e.op, e.implementation, e.named, e.key, e.error) == ("blockwise_attention", "xla", False, key, None)
        assert e.entry["order"] == ["cudnn", "pallas_gpu", "xla"]
        assert e.skipped() == {"cudnn": "NotImplementedError: cudnn refuses",
                               "pallas_gpu": "NotImplementedError: pallas_gpu refuses"}
        text = str(e)
        assert text.startswith("blockwise_attention: xla\n  why: dispatch table entry for blockwise_attention on")
        assert "fwd_bwd: cudnn 0.5 ms, pallas_gpu, xla 2 ms" in text and "  xla: chosen" in text
        # Not causal: another bucket, no entry -> this platform's default order.
        e = ba.explain(*abstract)
        assert e.implementation == "xla" and e.entry is None and "static default order for cpu" in e.reason
    with _dispatch.use_table(_table(_entry(key, ["xla"]))):
        with pytest.raises(NotImplementedError, match="pallas_gpu refuses"):
            ba.blockwise_attention(q, k, v, causal=True, implementation="pallas_gpu")
        e = ba.explain(q, k, v, causal=True, implementation="pallas_gpu")
        assert e.named and e.implementation is None and e.error == "NotImplementedError: pallas_gpu refuses"
        assert e.reason == "named by the caller: used as asked, never replaced"
        del calls[:]
        np.testing.assert_allclose(ba.blockwise_attention(q, k, v, causal=True, implementation="reference"), want)
        assert calls == ["reference"]
    # Input errors come before any choice, in explain as in the call.
    with pytest.raises(ValueError, match="share a dtype"):
        ba.explain(q, k.astype(jnp.bfloat16), v)


def test_decode_follows_the_table_too(monkeypatch):
    calls = _spies(monkeypatch, ld, refuse=("cudnn",))
    q = jax.random.normal(jax.random.key(1), (2, 4, 8))
    cache = jax.random.normal(jax.random.key(2), (2, 32, 2, 8))
    lengths = jnp.array([5, 32])
    key = ld.table_key(q, cache)
    with _dispatch.use_table(_table(_entry(key, ["cudnn", "xla"], ranked_by="fwd"))):
        out = ld.lean_decode_attention(q, cache, cache, lengths, num_programs=2)
        assert calls == ["cudnn", "xla"]
        np.testing.assert_allclose(out, ld.lean_decode_attention(q, cache, cache, lengths, implementation="reference"),
                                   atol=1e-5)
        e = ld.explain(q, cache, cache, lengths)
        assert e.implementation == "xla" and e.skipped() == {"cudnn": "NotImplementedError: cudnn refuses"}
        assert str(key) in e.reason and key.bucket == "b2/len32"


def test_an_unimportable_implementation_is_skipped_and_naming_it_says_why(monkeypatch):
    """As when jax drops Pallas Triton: importing the module fails, implementation=None goes on to
    the next candidate and a named one raises Unavailable with the import error."""
    monkeypatch.setattr(_dispatch, "_IMPORT_ERRORS", {})
    from jax.experimental import pallas
    if hasattr(pallas, "triton"):
        monkeypatch.delattr(pallas, "triton")
    monkeypatch.setitem(sys.modules, "jax.experimental.pallas.triton", None)  # import fails
    monkeypatch.delitem(sys.modules, "kernels_pallas.blockwise_attention.pallas_gpu", raising=False)
    monkeypatch.setitem(sys.modules, "kernels_pallas.blockwise_attention.pallas_mosaic_gpu", None)
    monkeypatch.setitem(ba.PREFERENCE, jax.default_backend(), ("pallas_mosaic_gpu", "pallas_gpu", "xla"))
    q, k, v = _qkv(d=16)
    np.testing.assert_allclose(ba.blockwise_attention(q, k, v),
                               ba.blockwise_attention(q, k, v, implementation="reference"), atol=1e-5)
    e = ba.explain(q, k, v)
    assert e.implementation == "xla" and list(e.skipped()) == ["pallas_mosaic_gpu", "pallas_gpu"]
    assert e.skipped()["pallas_gpu"].startswith(
        "implementation 'pallas_gpu' is unavailable here: importing kernels_pallas.blockwise_attention.pallas_gpu "
        "failed (ModuleNotFoundError:")
    with pytest.raises(_dispatch.Unavailable, match="'pallas_gpu' is unavailable here.*jax.experimental.pallas.triton"):
        ba.blockwise_attention(q, k, v, implementation="pallas_gpu")
    assert issubclass(_dispatch.Unavailable, ImportError)
    monkeypatch.setitem(sys.modules, "kernels_pallas.lean_decode_attention.pallas_mosaic_gpu", None)
    qd, cache = jnp.zeros((1, 2, 16)), jnp.zeros((1, 16, 2, 16))
    with pytest.raises(_dispatch.Unavailable, match="importing kernels_pallas.lean_decode_attention.pallas_mosaic_gpu"):
        ld.lean_decode_attention(qd, cache, cache, jnp.array([3]), implementation="pallas_mosaic_gpu")


@pytest.mark.parametrize("args, kwargs, message", [
    ((jnp.bfloat16, 16, 16, 64), dict(segment_ids=(jnp.zeros((1, 16), jnp.int32),) * 2), "no segment ids"),
    ((jnp.bfloat16, 8, 16, 64), dict(causal=True), r"top left.*q_len == kv_len \(got 8 and 16\)"),
    ((jnp.float32, 16, 16, 64), {}, "bfloat16 and float16, not float32"),
    ((jnp.float16, 16, 16, 20), {}, "multiple of 8 up to 128 on this device; got 20"),
    ((jnp.bfloat16, 16, 16, 256), {}, "up to 128 on this device; got 256"),  # 256 only from Hopper on
    ((jnp.bfloat16, 16, 16, 64), dict(interpret=True), "interpret=True runs Pallas kernels"),
])
def test_cudnn_refuses_what_it_cannot_compute_exactly(args, kwargs, message):
    dtype, lq, lk, d = args
    if d > 128 and ba_cudnn.max_head_dim() >= d:
        pytest.skip(f"this GPU's cuDNN takes head_dim {d}")  # from Hopper on
    q, k, v = _qkv(lq=lq, lk=lk, d=d, dtype=dtype)
    with pytest.raises(NotImplementedError, match=message):
        ba.blockwise_attention(q, k, v, implementation="cudnn", **kwargs)


def test_cudnn_without_a_gpu_and_in_decode():
    q, k, v = _qkv(d=64, dtype=jnp.bfloat16)
    if jax.default_backend() != "gpu":
        with pytest.raises(RuntimeError, match="NVIDIA GPU, but jax's backend is 'cpu'"):
            ba.blockwise_attention(q, k, v, causal=True, implementation="cudnn")
    cache, lengths = jnp.zeros((1, 32, 2, 64), jnp.bfloat16), jnp.array([7])
    for dtype, d, kw, message in ((jnp.float32, 64, {}, "not float32"), (jnp.bfloat16, 12, {}, "got 12"),
                                  (jnp.bfloat16, 64, dict(interpret=True), "interpret")):
        with pytest.raises(NotImplementedError, match=message):
            ld.lean_decode_attention(jnp.zeros((1, 4, d), dtype), cache[..., :d].astype(dtype),
                                     cache[..., :d].astype(dtype), lengths, implementation="cudnn", **kw)
    if jax.default_backend() != "gpu":
        with pytest.raises(RuntimeError, match="jax's backend is 'cpu'"):
            ld.lean_decode_attention(jnp.zeros((1, 4, 64), jnp.bfloat16), cache, cache, lengths,
                                     implementation="cudnn")


def test_cudnn_calls_follow_our_conventions(monkeypatch):
    """The exact jax.nn.dot_product_attention calls cudnn makes, run by jax's XLA path (cuDNN's
    contract is the same function): the scale, GQA heads, causal with equal lengths, and for decode
    one query against key_value_seq_lengths with lengths clipped and zero-length rows giving zeros."""
    real = jax.nn.dot_product_attention
    seen = []

    def via_xla(*a, implementation=None, **kw):
        seen.append(implementation)
        return real(*a, implementation="xla", **kw)

    monkeypatch.setattr(jax.nn, "dot_product_attention", via_xla)
    q, k, v = _qkv(b=2, lq=24, lk=24, hq=4, hkv=2, d=16)
    for causal in (False, True):
        got = ba_cudnn._attention(q, k, v, causal=causal, sm_scale=0.3)
        want = ba.blockwise_attention(q, k, v, causal=causal, sm_scale=0.3, implementation="reference")
        np.testing.assert_allclose(got, want, atol=2e-5)
    qd = jax.random.normal(jax.random.key(3), (4, 4, 16))
    cache_k, cache_v = (jax.random.normal(jax.random.key(s), (4, 32, 2, 16)) for s in (4, 5))
    lengths = jnp.array([5, 0, 40, -3])  # beyond max_len and negative are clipped
    got = ld_cudnn._attention(qd, cache_k, cache_v, lengths, sm_scale=0.25)
    want = ld.lean_decode_attention(qd, cache_k, cache_v, lengths, sm_scale=0.25, implementation="reference")
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_array_equal(got[jnp.array([1, 3])], 0.0)
    assert seen == ["cudnn"] * 3 and got.dtype == qd.dtype


@pytest.fixture
def cudnn_lowering(monkeypatch):
    """jax lowers its cuDNN custom calls for CUDA without a GPU once it can name a cuDNN version,
    which only the CUDA plugin (absent here) provides: pretend 9.10."""
    fa = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo", reason="jax moved its cuDNN lowering")
    cuda_versions = getattr(pytest.importorskip("jax._src.lib"), "cuda_versions", None)
    if cuda_versions is None:
        monkeypatch.setattr(fa, "check_cudnn_version", lambda: 91000)

    def lower(fn, *args):
        text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
        return re.findall(r"custom_call @(\S+?)\(", text), text
    return lower


def test_cudnn_lowers_to_cudnn_custom_calls_for_cuda(cudnn_lowering):
    """Forward and backward (the blockwise cudnn implementation is differentiable), GQA and causal,
    and decode's padding mask: each a cuDNN fused-attention custom call."""
    q, k, v = (jax.ShapeDtypeStruct(s, jnp.bfloat16) for s in ((2, 256, 8, 128), (2, 256, 2, 128), (2, 256, 2, 128)))
    fwd = lambda q, k, v: ba_cudnn._attention(q, k, v, causal=True, sm_scale=0.1)
    calls, text = cudnn_lowering(fwd, q, k, v)
    assert calls == ["__cudnn$fmhaSoftmax"] and "CAUSAL" in text
    grad = jax.grad(lambda q, k, v: jnp.sum(fwd(q, k, v).astype(jnp.float32)), argnums=(0, 1, 2))
    calls, _ = cudnn_lowering(grad, q, k, v)
    assert calls == ["__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"]
    qd = jax.ShapeDtypeStruct((2, 8, 128), jnp.float16)
    cache = jax.ShapeDtypeStruct((2, 1024, 2, 128), jnp.float16)
    dec = lambda q, k, v, n: ld_cudnn._attention(q, k, v, n, sm_scale=0.1)
    calls, text = cudnn_lowering(dec, qd, cache, cache, jax.ShapeDtypeStruct((2,), jnp.int32))
    assert calls == ["__cudnn$fmhaSoftmax"] and "PADDING" in text
