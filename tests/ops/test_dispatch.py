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
        assert package.PREFERENCE is kernel_dispatch.PREFERENCE
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
                                          r"\['pallas_gpu', 'pallas_tpu', 'reference', 'xla', 'xla_dense'\]"):
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
