"""Equal-size grouping for flattened-window attention (FlatFormer).

After `window_order` sorts the token slots (samples in ascending id, each sample's tokens
contiguous, padding slots last), each sample's sorted tokens are cut into groups of `group_size`.
A sample whose count is not a multiple of group_size is padded up to whole groups. With c the
sample's count, gs the group size and p = ceil(c / gs) * gs its padded length, its padded position
r (0 <= r < p) holds its sorted token
    r             for r < c        (the tokens themselves),
    r - gs        for r >= c, when c > gs   (the authors' padding),
    r % c         for r >= c, when c < gs   (one group of the sample's own tokens, cyclically).
So every group holds tokens of one sample only, every slot of a group is a real token, and
attention needs no mask. A sample with one token gives one group of copies of that token; an empty
sample gives no groups. Samples are laid out one after another; the static number of groups is the
upper bound
    num_groups = ceil(N / group_size) + num_samples,
and the unused trailing groups repeat slot order[0] (any valid token; nobody reads their output).

The authors' FlattenedWindowMapping (mit-han-lab/flatformer, mmdet3d/models/middle_encoders/
flatformer.py) builds one `flat2win` index in sorted-rank space, shared by all four orderings (x,
x_shift, y, y_shift), and fills a sample's last group by copying the positions one group earlier:
    flat2win[end - gs + c % gs : end] = flat2win[end - 2 gs + c % gs : end - gs]
(end: the sample's padded end), so padded position r reads sorted token r - gs: the last group is
completed, in sorted order, by the gs - c % gs tokens just before it, i.e. the window-neighbours
of the last group's real tokens. That is the rule above for c > gs, in every ordering and shift
(the plan is made per ordering from that ordering's sort). Difference from the authors: where a
sample has fewer tokens than one group (c < gs), r - gs is negative and their code reads the end of
the previous sample's run (attention across samples), or, for the first sample, an empty slice (a
shape error). Here such a sample repeats its own tokens cyclically instead.

`group_tokens` gathers any per-token array [N, ...] into [num_groups, group_size, ...];
`ungroup_tokens` reads each real token back from its own position (the first copy, as the authors'
`win2flat`) into its original slot (padding slots get zeros), so the outputs of padding copies are
dropped and no token is written twice. Both are plain gathers, so gradients flow: a copy's
gradient adds into its token in `group_tokens`, and `ungroup_tokens` passes gradients to first
copies only.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class GroupPlan:
    """Where each grouped position reads from and where each token slot is written back.

    A pytree whose arrays are leaves and whose sizes are static (so a plan can be passed into and
    out of jit; num_groups and group_size never become tracers).

    gather_index: int32 [num_groups * group_size], the token slot each grouped position holds.
    scatter_index: int32 [N], for each token slot the grouped position of its first copy
      (0 for padding slots; never read).
    valid: bool [N], slot holds a real token (0 <= sample id < num_samples).
    group_sample: int32 [num_groups], the sample of each group; -1 for unused trailing groups.
    group_size, num_groups: static ints.
    """
    gather_index: jax.Array
    scatter_index: jax.Array
    valid: jax.Array
    group_sample: jax.Array
    group_size: int
    num_groups: int

    @property
    def num_tokens(self) -> int:
        return self.scatter_index.shape[0]


jax.tree_util.register_dataclass(
    GroupPlan, data_fields=["gather_index", "scatter_index", "valid", "group_sample"],
    meta_fields=["group_size", "num_groups"])


def num_groups_for(num_tokens: int, num_samples: int, group_size: int) -> int:
    """The static number of groups of a plan: ceil(num_tokens / group_size) + num_samples."""
    return -(-num_tokens // group_size) + num_samples


def _positive_int(name, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} int; "
                         f"got {value!r}")


def make_group_plan(order, sample_ids, *, num_samples: int, group_size: int) -> GroupPlan:
    """The grouping of the sorted tokens (see the module docstring).

    Args:
      order: int [N] permutation from `window_order`: each sample's slots contiguous, samples in
        ascending id, slots that belong to no sample last. (Not checked; the plan is wrong for
        other orders.)
      sample_ids: int [N] per slot; ids outside [0, num_samples) mark padding slots.
      num_samples: static number of samples in the batch.
      group_size: tokens per group.
    """
    _positive_int("num_samples", num_samples)
    _positive_int("group_size", group_size)
    if getattr(order, "ndim", None) != 1 or getattr(sample_ids, "shape", None) != order.shape:
        raise ValueError(f"order and sample_ids must both be [N]; got "
                         f"{getattr(order, 'shape', type(order))} and "
                         f"{getattr(sample_ids, 'shape', type(sample_ids))}")
    for name, x in (("order", order), ("sample_ids", sample_ids)):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"{name} must be an integer array; got {x.dtype}")
    n = order.shape[0]
    if n == 0:
        raise ValueError("make_group_plan needs at least one token slot (N >= 1)")
    g = num_groups_for(n, num_samples, group_size)
    order = order.astype(jnp.int32)
    sample_ids = sample_ids.astype(jnp.int32)
    valid = (sample_ids >= 0) & (sample_ids < num_samples)
    sid = jnp.where(valid, sample_ids, num_samples)          # padding -> a dropped extra sample
    counts = jnp.zeros((num_samples + 1,), jnp.int32).at[sid].add(1)[:num_samples]
    padded = -(-counts // group_size) * group_size
    start = jnp.cumsum(counts) - counts                      # first sorted position of a sample
    pend = jnp.cumsum(padded)
    pstart = pend - padded                                   # first grouped position of a sample

    # Grouped position j -> its sample s, its rank r inside the sample's padded run, the token.
    j = jnp.arange(g * group_size, dtype=jnp.int32)
    s = jnp.searchsorted(pend, j, side="right").astype(jnp.int32)   # num_samples past the end
    used = s < num_samples
    s_c = jnp.minimum(s, num_samples - 1)
    r = j - pstart[s_c]
    c = counts[s_c]
    # Padding (r >= c): the authors' r - group_size where the sample exceeds one group, else the
    # sample's own tokens cyclically (see the module docstring).
    pad_rank = jnp.where(c > group_size, r - group_size, r % jnp.maximum(c, 1))
    pos = start[s_c] + jnp.where(r < c, r, pad_rank)
    gather_index = jnp.where(used, order[jnp.clip(pos, 0, n - 1)], order[0])

    # Token slot -> its rank in the sorted order -> its first grouped position.
    rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    sid_c = jnp.minimum(sid, num_samples - 1)
    scatter_index = jnp.where(valid, pstart[sid_c] + rank - start[sid_c], 0)

    group_sample = jnp.where(used, s, -1).reshape(g, group_size)[:, 0]
    return GroupPlan(gather_index, scatter_index, valid, group_sample, group_size, g)


def _check_plan(plan):
    if not isinstance(plan, GroupPlan):
        raise ValueError(f"plan must be a GroupPlan from make_group_plan; got {type(plan).__name__}")


def group_tokens(x, plan: GroupPlan):
    """x [N, ...] -> [num_groups, group_size, ...]: the tokens of each group (copies included)."""
    _check_plan(plan)
    if getattr(x, "ndim", 0) < 1 or x.shape[0] != plan.num_tokens:
        raise ValueError(f"group_tokens expects x as [N={plan.num_tokens}, ...]; got shape "
                         f"{getattr(x, 'shape', type(x))}")
    return jnp.take(x, plan.gather_index, axis=0, mode="clip").reshape(
        (plan.num_groups, plan.group_size) + x.shape[1:])


def ungroup_tokens(grouped, plan: GroupPlan):
    """[num_groups, group_size, ...] -> [N, ...]: each real token from its first copy, in its
    original slot; padding slots get zeros."""
    _check_plan(plan)
    lead = (plan.num_groups, plan.group_size)
    if getattr(grouped, "ndim", 0) < 2 or grouped.shape[:2] != lead:
        raise ValueError(f"ungroup_tokens expects [num_groups, group_size, ...] = {lead + ('...',)}; "
                         f"got shape {getattr(grouped, 'shape', type(grouped))}")
    flat = grouped.reshape((lead[0] * lead[1],) + grouped.shape[2:])
    out = jnp.take(flat, plan.scatter_index, axis=0, mode="clip")
    keep = plan.valid.reshape((-1,) + (1,) * (out.ndim - 1))
    return jnp.where(keep, out, jnp.zeros((), out.dtype))
