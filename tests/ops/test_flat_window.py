"""fintrans.ops.flat_window: the re-exports layers use and grouped_attention's choice of
implementation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fintrans.ops import flat_window
from kernels_pallas import flat_window_attention as kernel


def test_reexports_are_the_kernel_package_functions():
    for name in ("window_order", "window_sort_keys", "make_group_plan", "GroupPlan", "group_tokens",
                 "ungroup_tokens", "num_groups_for"):
        assert getattr(flat_window, name) is getattr(kernel, name)
    # The kernel's implementations, plus the general attention op's over the groups as its batch.
    assert set(flat_window.implementations()) == set(kernel.IMPLEMENTATIONS) | {"xla_dense", "xla_blockwise"}


def test_none_and_named_implementations_agree_with_the_reference():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((3, 16, 2, 8)), jnp.float32) for _ in range(3))
    want = np.asarray(kernel.grouped_attention(q, k, v, implementation="reference", sm_scale=0.4))
    for impl in (None, "xla", "reference", "xla_dense", "xla_blockwise"):
        got = flat_window.grouped_attention(q, k, v, scale=0.4, implementation=impl)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    default = flat_window.grouped_attention(q, k, v)
    named = flat_window.grouped_attention(q, k, v, implementation=flat_window.GROUPED.preference()[0])
    np.testing.assert_array_equal(np.asarray(default), np.asarray(named))


def test_unknown_implementation_and_bad_shapes_name_the_problem():
    x = jnp.zeros((2, 8, 2, 4))
    with pytest.raises(ValueError, match="'flash' is not an implementation of the grouped_attention op"):
        flat_window.grouped_attention(x, x, x, implementation="flash")
    with pytest.raises(ValueError, match="must have the same shape"):
        flat_window.grouped_attention(x, x[:, :4], x)
