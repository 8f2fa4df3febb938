"""Equal-size grouping (FlatFormer): plan properties, gather/scatter round trip and gradients,
for any per-sample counts (0, 1, exact multiples of the group size, padding slots)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.flat_window_attention import (GroupPlan, group_tokens, make_group_plan,
                                                  num_groups_for, ungroup_tokens, window_order)

GRID, WINDOW = (24, 24), (6, 5)


def batch(rng, counts, padding):
    sid = np.concatenate([np.full(c, s) for s, c in enumerate(counts)] + [np.full(padding, -1)])
    perm = rng.permutation(sid.size)
    coords = rng.integers(0, GRID[0], (sid.size, 2))
    return jnp.asarray(coords, jnp.int32), jnp.asarray(sid[perm], jnp.int32)


def plan_for(coords, sid, num_samples, group_size, axis="x", shift=False):
    order = window_order(coords, sid, grid_shape=GRID, window_shape=WINDOW, axis=axis, shift=shift)
    return order, make_group_plan(order, sid, num_samples=num_samples, group_size=group_size)


def authors_flat2win(counts, gs):
    """numpy transcription of FlattenedWindowMapping.forward's flat2win/win2flat loop
    (mit-han-lab/flatformer, mmdet3d/models/middle_encoders/flatformer.py) for per-sample token
    counts (each > 0, as torch.unique sees them): flat2win[j] is the sorted rank (over the whole
    batch) that padded position j reads; win2flat[t] the padded position of sorted token t.
    Slicing follows torch's (negative starts count from the end), as numpy's does."""
    counts = np.asarray(counts, np.int64)
    starts = np.pad(np.cumsum(counts), (1, 0))
    padded = (counts + gs - 1) // gs * gs
    starts_p = np.pad(np.cumsum(padded), (1, 0))
    flat2win = np.arange(starts_p[-1])
    win2flat = np.arange(starts[-1])
    for i in range(len(counts)):
        win2flat[starts[i]:starts[i + 1]] += starts_p[i] - starts[i]
        if counts[i] != padded[i]:
            flat2win[starts_p[i + 1] - gs + counts[i] % gs:starts_p[i + 1]] = \
                flat2win[starts_p[i + 1] - 2 * gs + counts[i] % gs:starts_p[i + 1] - gs]
        flat2win[starts_p[i]:starts_p[i + 1]] -= starts_p[i] - starts[i]
    return flat2win, win2flat


# counts per sample, padding slots, group size
CASES = [
    ([0, 1, 16, 33], 5, 16),     # empty, single token, exact multiple, one past
    ([7], 0, 8),                 # one sample smaller than a group
    ([1, 1, 1], 2, 32),          # only single tokens
    ([64, 64], 0, 32),           # exact multiples, no padding slots
    ([100, 0, 0, 3, 57], 11, 24),
    ([0, 0], 4, 8),              # no real token at all
]


@pytest.fixture(scope="module")
def jit_plan():
    cache = {}

    def get(num_samples, group_size):
        if (num_samples, group_size) not in cache:
            cache[num_samples, group_size] = jax.jit(
                lambda c, s: plan_for(c, s, num_samples, group_size))
        return cache[num_samples, group_size]
    return get


@pytest.mark.parametrize("case", range(len(CASES)))
def test_plan_properties(jit_plan, case):
    counts, padding, gs = CASES[case]
    rng = np.random.default_rng(case)
    coords, sid = batch(rng, counts, padding)
    order, plan = jit_plan(len(counts), gs)(coords, sid)
    n, s = int(sid.shape[0]), len(counts)
    assert plan.group_size == gs and plan.num_groups == num_groups_for(n, s, gs) == -(-n // gs) + s
    gather = np.asarray(plan.gather_index).reshape(plan.num_groups, gs)
    sid_np, order_np = np.asarray(sid), np.asarray(order)
    real_groups = sum(-(-c // gs) for c in counts)
    group_sample = np.asarray(plan.group_sample)
    # Groups come sample after sample, each sample filling ceil(count / gs) of them.
    np.testing.assert_array_equal(group_sample[:real_groups],
                                  np.repeat(np.arange(s), [-(-c // gs) for c in counts]))
    assert np.all(group_sample[real_groups:] == -1)
    for gi in range(real_groups):  # one sample per group, real tokens only
        assert np.all(sid_np[gather[gi]] == group_sample[gi])
    assert np.all(gather[real_groups:] == order_np[0])
    # Each sample's run follows the authors' flat2win (a sample of at least one group: its
    # padding is the tokens just before its last group), or repeats its own tokens cyclically
    # (a sample smaller than one group, where the authors' index reads another sample).
    pos = 0
    for smp, c in enumerate(counts):
        run = gather[pos:pos + -(-c // gs)].ravel()
        own = order_np[np.flatnonzero(sid_np[order_np] == smp)]
        assert own.size == c
        want = own[authors_flat2win([c], gs)[0]] if c >= gs else np.resize(own, run.size)
        np.testing.assert_array_equal(run, want)
        pos += -(-c // gs)
    # Every real token appears at least once; scatter_index points at its first copy.
    valid = sid_np >= 0
    np.testing.assert_array_equal(np.asarray(plan.valid), valid)
    flat = gather.ravel()
    scatter = np.asarray(plan.scatter_index)
    for slot in np.flatnonzero(valid):
        first = np.flatnonzero(flat == slot)
        assert first.size >= 1 and scatter[slot] == first[0]


@pytest.mark.parametrize("axis, shift", [("x", False), ("y", True)])
def test_padding_is_the_authors_on_a_batch_and_padding_outputs_are_dropped(axis, shift):
    """A batch of samples larger than a group (one an exact multiple): the grouped tokens are the
    authors' flat2win over the whole batch and every token comes back from the authors' win2flat
    position, whatever the padding copies compute."""
    counts, gs = [40, 23, 16, 33], 16
    rng = np.random.default_rng(11)
    coords, sid = batch(rng, counts, 6)
    order, plan = jax.jit(lambda c, s: plan_for(c, s, len(counts), gs, axis, shift))(coords, sid)
    flat2win, win2flat = authors_flat2win(counts, gs)
    gather = np.asarray(plan.gather_index)
    sorted_slots = np.asarray(order)             # sorted rank -> slot (samples in order, padding last)
    np.testing.assert_array_equal(gather[:flat2win.size], sorted_slots[flat2win])
    assert np.all(gather[flat2win.size:] == sorted_slots[0])   # unused trailing groups
    # Sample 0 (40 tokens): its last group is ranks 32..39 then 24..31, the tokens just before it.
    np.testing.assert_array_equal(flat2win[32:48], np.r_[32:40, 24:32])
    real = sorted_slots[:sum(counts)]
    np.testing.assert_array_equal(np.asarray(plan.scatter_index)[real], win2flat)
    # Poison every padding copy: no real token reads one back, padding slots stay zero.
    x = jnp.asarray(rng.standard_normal((sid.shape[0], 2)), jnp.float32)
    grouped = np.array(group_tokens(x, plan)).reshape(-1, 2)
    own_position = np.zeros(grouped.shape[0], bool); own_position[win2flat] = True
    grouped[~own_position] = np.nan
    back = np.asarray(ungroup_tokens(jnp.asarray(grouped).reshape(plan.num_groups, gs, 2), plan))
    valid = np.asarray(sid) >= 0
    np.testing.assert_array_equal(back[valid], np.asarray(x)[valid])
    assert np.all(back[~valid] == 0)


def test_a_sample_smaller_than_a_group_repeats_its_own_tokens_where_the_authors_read_another():
    """The documented difference: the authors' index for a 5-token sample after a 40-token one
    pads it with the other sample's tokens; ours repeats its own, in sorted order."""
    counts, gs = [40, 5], 16
    flat2win, _ = authors_flat2win(counts, gs)
    assert np.all(flat2win[48 + 5:64] < 40)       # the authors: sample 0's ranks 29..39
    rng = np.random.default_rng(12)
    coords, sid = batch(rng, counts, 0)
    order, plan = jax.jit(lambda c, s: plan_for(c, s, 2, gs))(coords, sid)
    gather, order = np.asarray(plan.gather_index), np.asarray(order)
    np.testing.assert_array_equal(gather[48:64], order[40 + np.arange(16) % 5])
    np.testing.assert_array_equal(gather[:48], order[flat2win[:48]])


@pytest.mark.parametrize("case", range(len(CASES)))
def test_ungroup_of_group_is_identity_on_real_tokens_and_zero_on_padding(jit_plan, case):
    counts, padding, gs = CASES[case]
    rng = np.random.default_rng(100 + case)
    coords, sid = batch(rng, counts, padding)
    _, plan = jit_plan(len(counts), gs)(coords, sid)
    x = jnp.asarray(rng.standard_normal((sid.shape[0], 3, 2)), jnp.float32)
    grouped = group_tokens(x, plan)
    assert grouped.shape == (plan.num_groups, gs, 3, 2)
    back = ungroup_tokens(grouped, plan)
    valid = np.asarray(sid) >= 0
    np.testing.assert_array_equal(np.asarray(back)[valid], np.asarray(x)[valid])
    assert np.all(np.asarray(back)[~valid] == 0)
    # Any per-group change comes back through the first copy of each token.
    doubled = ungroup_tokens(grouped * 2 + 1, plan)
    np.testing.assert_array_equal(np.asarray(doubled)[valid], 2 * np.asarray(x)[valid] + 1)


def test_gradients_flow_through_group_and_ungroup(jit_plan):
    """d/dx sum(w * ungroup(f(group(x)))) with f = a per-group mix (each output depends on all
    tokens of its group, copies included): checked against the same function written with numpy
    index arithmetic, and ungroup alone passes gradients to first copies only."""
    counts, padding, gs = [5, 0, 9, 1], 3, 4
    rng = np.random.default_rng(7)
    coords, sid = batch(rng, counts, padding)
    _, plan = jit_plan(len(counts), gs)(coords, sid)
    n = sid.shape[0]
    x = jnp.asarray(rng.standard_normal((n, 2)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((n, 2)), jnp.float32)

    def f(x):
        g = group_tokens(x, plan)                          # [G, gs, 2]
        g = jnp.tanh(g + jnp.sum(g, axis=1, keepdims=True))
        return jnp.sum(w * ungroup_tokens(g, plan))

    got = jax.jit(jax.grad(f))(x)
    # Expected, via explicit one-hot matrices: group = A @ x, ungroup = B @ grouped.
    gather, scatter = np.asarray(plan.gather_index), np.asarray(plan.scatter_index)
    valid = np.asarray(plan.valid)
    A = np.zeros((gather.size, n)); A[np.arange(gather.size), gather] = 1
    B = np.zeros((n, gather.size)); B[np.flatnonzero(valid), scatter[valid]] = 1
    M = np.kron(np.eye(plan.num_groups), np.ones((gs, gs))) + np.eye(gather.size)
    want = jax.jit(jax.grad(lambda x: jnp.sum(w * (B @ jnp.tanh(M @ (A @ x))))))(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    # ungroup alone: gradient 1 at each real token's first copy, 0 at other copies and padding.
    g_un = jax.grad(lambda g: jnp.sum(ungroup_tokens(g, plan)))(group_tokens(x, plan))
    np.testing.assert_array_equal(np.asarray(g_un).reshape(-1, 2)[:, 0], B.sum(0))
    # group alone: each token's gradient counts its copies.
    g_gr = jax.grad(lambda x: jnp.sum(group_tokens(x, plan)))(x)
    np.testing.assert_array_equal(np.asarray(g_gr)[:, 0], A.sum(0))
    assert np.all(A.sum(0)[valid] >= 1)


def test_jit_with_static_n_compiles_once_for_new_counts():
    f = jax.jit(lambda c, s, x: ungroup_tokens(group_tokens(x, plan_for(c, s, 3, 8)[1]), plan_for(c, s, 3, 8)[1]))
    rng = np.random.default_rng(3)
    for counts, padding in (([10, 0, 20], 6), ([1, 1, 34], 0), ([0, 0, 0], 36)):
        coords, sid = batch(rng, counts, padding)
        x = jnp.asarray(rng.standard_normal((36,)), jnp.float32)
        got = np.asarray(f(coords, sid, x))
        valid = np.asarray(sid) >= 0
        np.testing.assert_array_equal(got, np.where(valid, np.asarray(x), 0))
    assert f._cache_size() == 1


def test_plan_passes_through_jit_with_static_sizes(jit_plan):
    coords, sid = batch(np.random.default_rng(4), [9, 4], 3)
    _, plan = jit_plan(2, 4)(coords, sid)
    x = jnp.arange(16.0)
    out = jax.jit(lambda p, x: group_tokens(x, p))(plan, x)
    assert out.shape == (plan.num_groups, 4)
    assert jax.tree_util.tree_leaves(plan)[0].shape == plan.gather_index.shape


@pytest.mark.parametrize("fn, message", [
    (lambda o, s, p: make_group_plan(o, s, num_samples=0, group_size=4), "num_samples must be a positive int"),
    (lambda o, s, p: make_group_plan(o, s, num_samples=2, group_size=2.0), "group_size must be a positive int"),
    (lambda o, s, p: make_group_plan(o, s[:-1], num_samples=2, group_size=4), r"must both be \[N\]"),
    (lambda o, s, p: make_group_plan(o.astype(jnp.float32), s, num_samples=2, group_size=4), "order must be an integer"),
    (lambda o, s, p: group_tokens(jnp.zeros((5, 2)), p), r"group_tokens expects x as \[N=16"),
    (lambda o, s, p: ungroup_tokens(jnp.zeros((3, 4)), p), "ungroup_tokens expects"),
    (lambda o, s, p: group_tokens(jnp.zeros((16,)), o), "plan must be a GroupPlan"),
])
def test_bad_inputs_name_the_problem(jit_plan, fn, message):
    coords, sid = batch(np.random.default_rng(5), [9, 4], 3)
    order, plan = jit_plan(2, 4)(coords, sid)
    assert isinstance(plan, GroupPlan)
    with pytest.raises(ValueError, match=message):
        fn(order, sid, plan)
