"""fintrans.ops.dispatch: one registry of ops, one naming scheme, the fall-through dispatch, and the
rule that a named implementation is never replaced (decoding included)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fintrans import ops
from fintrans.models.config import ConfigError
from fintrans.models.decoder_lm import DecoderLMConfig
from fintrans.models.flatformer import FlatFormerConfig
from fintrans.ops import dispatch
from fintrans.registry import Registry
from kernels_pallas import _dispatch as kernel_dispatch
from kernels_pallas import blockwise_attention, flat_window_attention, lean_decode_attention


def test_every_op_is_registered_and_every_name_follows_the_one_scheme():
    assert set(ops.OPS.names()) == {"attention", "decode_attention", "grouped_attention", "local_attention",
                                    "topk_attention"}
    for name, op in ops.OPS.items():
        assert op.name == name and "xla" in op.names()  # the fallthrough's last resort
        assert set(op.names()) <= set(dispatch.IMPLEMENTATION_NAMES), name
        assert op.preference("cpu")[-1] == "xla"
    assert set(kernel_dispatch.NAMES) <= set(dispatch.IMPLEMENTATION_NAMES)
    for package in (blockwise_attention, flat_window_attention, lean_decode_attention):
        assert set(package.IMPLEMENTATIONS) <= set(kernel_dispatch.NAMES)
    assert flat_window_attention.PREFERENCE is kernel_dispatch.PREFERENCE
    # Attention and decode also have cuDNN and Mosaic GPU: the op and its kernel package agree.
    for op, package in ((ops.ATTENTION, blockwise_attention), (ops.DECODE, lean_decode_attention)):
        assert package.PREFERENCE == kernel_dispatch.ATTENTION_PREFERENCE
        for platform in ("cpu", "gpu", "tpu"):
            assert op.preference(platform) == package.PREFERENCE[platform], (op.name, platform)
    with pytest.raises(ValueError, match="naming scheme"):
        kernel_dispatch.check_names("pkg", ("xla", "triton"))


def test_a_new_op_plugs_in_with_one_declaration(monkeypatch):
    monkeypatch.setattr(dispatch, "OPS", Registry("op"))  # keep the real registry untouched
    calls = []

    def check(x, w):
        if x.shape[-1] != w.shape[0]:
            raise ValueError("x and w do not chain")

    def kernel(x, w):
        calls.append("kernel")
        if x.shape[0] % 8:
            raise NotImplementedError("rows must tile by 8")
        return x @ w

    op = dispatch.Op("scaled_matmul", check=check)
    op.register("xla", lambda x, w: calls.append("xla") or x @ w)
    op.register("pallas_gpu", kernel, platforms=(jax.default_backend(),))
    assert dispatch.get("scaled_matmul") is op and op.preference() == ("pallas_gpu", "xla")
    x, w = jnp.ones((4, 3)), jnp.ones((3, 2))
    np.testing.assert_array_equal(op(x, w), x @ w)
    assert calls == ["kernel", "xla"]  # fell through
    with pytest.raises(NotImplementedError, match="tile by 8"):  # named: never replaced
        op(x, w, implementation="pallas_gpu")
    with pytest.raises(ValueError, match=r"'cudnn' is not an implementation of the scaled_matmul op; "
                                         r"choose from \['pallas_gpu', 'xla'\]"):
        op(x, w, implementation="cudnn")
    with pytest.raises(ValueError, match="do not chain"):  # input errors come before any dispatch
        op(x, jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="naming scheme"):
        op.register("triton", kernel)
    with pytest.raises(ValueError, match="unknown platform"):
        op.register("cudnn", kernel, platforms=("cuda",))


def _spy_lean(monkeypatch):
    """Records which lean decode kernels run; makes pallas_gpu the preferred decode kernel on this
    platform, at both levels (the op's and the kernel package's), refusing every input."""
    seen = []
    real_module = kernel_dispatch.module

    class Refusing:
        @staticmethod
        def attention(*args, **kwargs):
            raise NotImplementedError("spy")

    def module(package, name):
        if package == lean_decode_attention.__name__:
            seen.append(name)
            if name == "pallas_gpu":
                return Refusing
        return real_module(package, name)

    monkeypatch.setattr(kernel_dispatch, "module", module)
    platform = jax.default_backend()
    monkeypatch.setitem(lean_decode_attention.PREFERENCE, platform, ("pallas_gpu", "xla"))
    gpu = ops.DECODE.implementations.get("pallas_gpu")
    monkeypatch.setitem(ops.DECODE.implementations._entries, "pallas_gpu",
                        dispatch.Implementation(gpu.fn, (platform,)))
    monkeypatch.setattr(ops.DECODE, "_preferred", ["pallas_gpu"])
    return seen


def test_decoding_uses_the_named_implementation(monkeypatch):
    """MultiHeadAttention decoding with attention_impl='xla' runs the xla decode kernel even where a
    Pallas kernel is preferred (it used to be replaced by the platform's choice)."""
    seen = _spy_lean(monkeypatch)
    from fintrans.layers.attention import MultiHeadAttention
    x = jnp.ones((1, 6, 8))
    for impl, expected in ((None, ["pallas_gpu", "xla"]), ("xla", ["xla"]), ("xla_dense", []),
                           ("reference", ["reference"])):
        mha = MultiHeadAttention(num_heads=2, head_dim=4, decode=True, attention_impl=impl)
        variables = jax.eval_shape(mha.init, jax.random.PRNGKey(0), x)
        del seen[:]
        jax.eval_shape(lambda v: mha.apply(v, x[:, :1], mutable=["cache"]), variables)  # traces the step
        assert seen == expected, impl


def test_implementations_are_validated_per_op_when_the_config_is_built():
    assert DecoderLMConfig(attention_impl="xla_blockwise").attention_impl == "xla_blockwise"
    with pytest.raises(ConfigError, match=r"attention_impl='xla_blockwise'.*decode_attention op; choose from "
                                          r"\['cudnn', 'pallas_gpu', 'pallas_mosaic_gpu', 'pallas_tpu', 'reference', 'xla', 'xla_dense'\]"):
        DecoderLMConfig(attention_impl="xla_blockwise", decode=True)
    with pytest.raises(ConfigError, match="not an implementation of the attention op"):
        DecoderLMConfig(attention_impl="flash")
    assert FlatFormerConfig(attention_impl="reference").attention_impl == "reference"
    with pytest.raises(ConfigError, match="grouped_attention op"):
        FlatFormerConfig(attention_impl="cudnn")


def test_per_shard_without_a_mesh_calls_the_kernel_directly():
    calls = []
    x = jnp.ones((2, 3))
    out = dispatch.per_shard(lambda a, b: calls.append(1) or a * 2, (x, None), (("activation_batch", None), None),
                             ("activation_batch", None))
    np.testing.assert_array_equal(out, x * 2)
    assert calls == [1]
    assert dispatch.shard_specs([x.shape], [("activation_batch", None)]) is None


def _kernels_on_this_platform(monkeypatch, op, names):
    """Registers op's `names` (their real functions) for this platform, newest first as listed."""
    platform = jax.default_backend()
    for name in names:
        impl = op.implementations.get(name)
        monkeypatch.setitem(op.implementations._entries, name, dispatch.Implementation(impl.fn, (platform,)))
    monkeypatch.setattr(op, "_preferred", list(names))


def test_attention_and_decode_follow_the_dispatch_table_and_explain_it(monkeypatch):
    """The ops use the kernels' table for their GPU-style preference (here on this platform): the
    real cudnn refuses float32 and an unimportable pallas_mosaic_gpu is skipped, both with their
    reasons in explain(); named implementations are used as asked, whatever the table prefers."""
    import sys
    monkeypatch.setattr(kernel_dispatch, "_IMPORT_ERRORS", {})
    monkeypatch.setitem(sys.modules, "kernels_pallas.blockwise_attention.pallas_mosaic_gpu", None)
    _kernels_on_this_platform(monkeypatch, ops.ATTENTION, ["cudnn", "pallas_mosaic_gpu"])
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, 12, 4, 8)) for i in range(3))
    key = blockwise_attention.table_key(q, k, True)
    entry = dict(op=key.op, device_kind=key.device_kind, dtype=key.dtype, head_dim=key.head_dim, bucket=key.bucket,
                 order=["pallas_mosaic_gpu", "cudnn", "xla"], ranked_by="fwd", ms={"fwd": {"cudnn": 0.25}},
                 sources=["synthetic.json"])
    with kernel_dispatch.use_table({"format": kernel_dispatch.TABLE_FORMAT, "entries": [entry]}):
        e = ops.explain("attention", q, k, v, causal=True)
        assert (e.op, e.implementation, e.key) == ("attention", "xla", key)
        assert "dispatch table entry for blockwise_attention" in e.reason and "cudnn 0.25 ms" in e.reason
        assert e.skipped() == {
            "pallas_mosaic_gpu": "implementation 'pallas_mosaic_gpu' is unavailable here: importing "
                                 "kernels_pallas.blockwise_attention.pallas_mosaic_gpu failed (ModuleNotFoundError: "
                                 "import of kernels_pallas.blockwise_attention.pallas_mosaic_gpu halted; None in sys.modules)",
            "cudnn": "NotImplementedError: cudnn: cuDNN flash attention takes bfloat16 and float16, not float32"}
        want = ops.dot_product_attention(q, k, v, causal=True, implementation="xla_dense")
        np.testing.assert_allclose(ops.dot_product_attention(q, k, v, causal=True), want, atol=1e-5)
        with pytest.raises(kernel_dispatch.Unavailable, match="'pallas_mosaic_gpu' is unavailable here"):
            ops.dot_product_attention(q, k, v, causal=True, implementation="pallas_mosaic_gpu")
        with pytest.raises(NotImplementedError, match="not float32"):
            ops.dot_product_attention(q, k, v, causal=True, implementation="cudnn")
        e = ops.ATTENTION.explain(q, k, v, causal=True, implementation="xla_dense")
        assert e.named and e.implementation == "xla_dense" and e.candidates == []
        # Another bucket (not causal): no entry, the registration order, whose unmeasured
        # pallas_mosaic_gpu is dropped here before trying (not a Hopper GPU).
        e = ops.explain("attention", q, k, v)
        assert e.entry is None and e.implementation == "xla" and "static default order" in e.reason
        assert [c[:2] for c in e.candidates] == [("pallas_mosaic_gpu", "dropped"), ("cudnn", "skipped"), ("xla", "chosen")]
        assert "written for Hopper (sm90)" in e.skipped()["pallas_mosaic_gpu"]

    _kernels_on_this_platform(monkeypatch, ops.DECODE, ["cudnn"])
    cache = jax.random.normal(jax.random.PRNGKey(4), (2, 16, 2, 8))
    lengths = jnp.array([3, 0])
    key = lean_decode_attention.table_key(q[:, 0], cache)
    entry.update(op=key.op, bucket=key.bucket, order=["cudnn", "xla"])
    with kernel_dispatch.use_table({"format": kernel_dispatch.TABLE_FORMAT, "entries": [entry]}):
        e = ops.explain("decode_attention", q[:, 0], cache, cache, lengths)
        assert e.implementation == "xla" and "b2/len16" in e.reason and list(e.skipped()) == ["cudnn"]
        np.testing.assert_allclose(ops.decode_attention(q[:, 0], cache, cache, lengths),
                                   ops.decode_attention(q[:, 0], cache, cache, lengths, implementation="xla_dense"),
                                   atol=1e-5)


def test_explain_for_ops_without_a_table_and_unknown_ops():
    x = jnp.zeros((3, 8, 2, 4))
    e = ops.explain("grouped_attention", x, x, x)
    assert e.implementation == "xla" and e.reason.startswith("this op has no dispatch table")
    with pytest.raises(ValueError, match="unknown op 'flash'"):
        ops.explain("flash", x, x, x)
