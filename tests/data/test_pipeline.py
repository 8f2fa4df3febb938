"""Iterator semantics: determinism, epochs, process shards, evaluation padding, checkpointed state."""
import itertools

import numpy as np
import pytest

from fintrans.data import pipeline
from fintrans.data.sources import ArraySource

N = 50  # examples in the synthetic source; each example's 'id' is its index


def _iterator(batch_size=8, *, shuffle=True, seed=0, num_epochs=None, process_index=0, process_count=1, n=N):
    source = ArraySource({"id": np.arange(n), "x": np.arange(n, dtype=np.float32) * 2})
    return pipeline.make_iterator(source, batch_size=batch_size, shuffle=shuffle, seed=seed, num_epochs=num_epochs,
                                  process_index=process_index, process_count=process_count)


def _ids(it, num_batches):
    return np.concatenate([b["id"] for b in itertools.islice(it, num_batches)])


def test_same_seed_same_order_other_seed_different():
    a, b, c = _ids(_iterator(seed=3), 10), _ids(_iterator(seed=3), 10), _ids(_iterator(seed=4), 10)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_unshuffled_order_is_the_source_order():
    np.testing.assert_array_equal(_ids(_iterator(10, shuffle=False), 10), np.arange(100) % N)


def test_every_epoch_is_a_fresh_permutation():
    stream = _ids(_iterator(10, seed=1), 3 * N // 10)
    epochs = stream.reshape(3, N)
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(N))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


def test_training_batches_are_full_and_carry_no_valid():
    it = _iterator(16)
    for batch in itertools.islice(it, 10):  # 160 > N: batches straddle epochs, never short
        assert set(batch) == {"id", "x"} and batch["id"].shape == (16,)
        np.testing.assert_array_equal(batch["x"], batch["id"] * 2)


def test_finite_epochs_drop_only_the_last_incomplete_batch():
    batches = list(_iterator(16, num_epochs=3))
    assert len(batches) == (3 * N) // 16 and all(b["id"].shape == (16,) and "valid" not in b for b in batches)


def test_process_shards_are_disjoint_and_make_up_the_global_batch():
    single = list(itertools.islice(_iterator(8, seed=5), 12))
    shards = [list(itertools.islice(_iterator(8, seed=5, process_index=p, process_count=2), 12)) for p in range(2)]
    for k in range(12):
        a, b = shards[0][k]["id"], shards[1][k]["id"]
        assert a.shape == b.shape == (4,)
        np.testing.assert_array_equal(np.concatenate([a, b]), single[k]["id"])
    first_epoch = [np.concatenate([b["id"] for b in s])[:N // 2 - 1] for s in shards]
    assert not set(first_epoch[0]) & set(first_epoch[1])


@pytest.mark.parametrize("shuffle", [False, True])
def test_evaluation_covers_every_example_once_with_valid_marking_padding(shuffle):
    per_process = [list(_iterator(16, shuffle=shuffle, num_epochs=1, process_index=p, process_count=2))
                   for p in range(2)]
    assert len(per_process[0]) == len(per_process[1]) == 4  # ceil(50 / 16): no process waits on another
    ids, valid = [], []
    for batches in per_process:
        for b in batches:
            assert b["id"].shape == b["valid"].shape == (8,) and b["valid"].dtype == np.bool_
            ids.append(b["id"])
            valid.append(b["valid"])
    ids, valid = np.concatenate(ids), np.concatenate(valid)
    np.testing.assert_array_equal(np.sort(ids[valid]), np.arange(N))
    assert (~valid).sum() == 4 * 16 - N
    single = list(_iterator(16, shuffle=shuffle, num_epochs=1))
    assert single[-1]["valid"].tolist() == [True] * 2 + [False] * 14  # padding only at the end


def test_evaluation_of_an_empty_split_yields_nothing():
    assert list(_iterator(4, num_epochs=1, n=0)) == []


def test_get_state_set_state_resumes_exactly():
    reference = _iterator(8, seed=7)
    expected = [next(reference) for _ in range(15)]
    it = _iterator(8, seed=7)
    for _ in range(9):
        next(it)
    state = it.get_state()
    resumed = _iterator(8, seed=7)
    resumed.set_state(state)
    for k in range(9, 15):
        np.testing.assert_array_equal(next(resumed)["id"], expected[k]["id"])


def test_orbax_checkpoint_manager_round_trip(tmp_path, load):
    import grain
    import orbax.checkpoint as ocp

    ds = load("digits")
    make = lambda: ds.iterator("train", 32, shuffle=True, seed=11, process_index=0, process_count=1)  # noqa: E731
    reference = make()
    expected = [next(reference) for _ in range(60)]  # > one epoch of 1,259 examples
    it = make()
    for _ in range(45):
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt",
                               item_handlers={"data": grain.checkpoint.CheckpointHandler()}) as mngr:
        mngr.save(45, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    next(it)  # moving on must not affect what was saved
    with ocp.CheckpointManager(tmp_path / "ckpt",
                               item_handlers={"data": grain.checkpoint.CheckpointHandler()}) as mngr:
        restored = make()
        mngr.restore(mngr.latest_step(), args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
    for k in range(45, 60):
        batch = next(restored)
        for key in ("inputs", "label"):
            np.testing.assert_array_equal(batch[key], expected[k][key])


def test_dataset_evaluation_covers_each_test_image_once(load):
    ds = load("digits")
    src = ds.source("test")
    rows = [np.concatenate([b["inputs"][b["valid"]].reshape(-1, 64), b["label"][b["valid"]][:, None]], axis=1)
            for p in range(2)
            for b in ds.iterator("test", 64, shuffle=True, seed=2, num_epochs=1, process_index=p, process_count=2)]
    got = np.concatenate(rows)
    arrays = src.take(np.arange(len(src)))
    want = np.concatenate([arrays["inputs"].reshape(-1, 64), arrays["label"][:, None]], axis=1)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got[np.lexsort(got.T)], want[np.lexsort(want.T)])


def test_default_process_arguments_come_from_jax(load):
    import jax

    ds = load("digits")
    batch = next(ds.iterator("train", 8, shuffle=False))
    assert batch["label"].shape == (8 // jax.process_count(),)
