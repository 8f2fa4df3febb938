"""synthetic_events: records are make_split's series, and the class is the shape of the event in channel 0
at the recorded place (what the t2 CAM claim scores against)."""
import numpy as np

from fintrans.data.builders import synthetic_events as se


def test_records_match_make_split_and_the_event_decides_the_class(load):
    ds = load("synthetic_events")
    assert ds.info["num_examples"] == se.SIZES
    assert (ds.info["num_classes"], ds.info["num_channels"], ds.info["max_len"]) == (3, se.CHANNELS, se.LENGTH)
    test = se.make_split("test")
    batch = ds.source("test").take(np.arange(se.SIZES["test"]))
    np.testing.assert_array_equal(batch["inputs"], test["series"])
    np.testing.assert_array_equal(batch["label"], test["label"])
    assert batch["mask"].all()
    # Matched filter on channel 0 inside the recorded window recovers the label for every series.
    windows = np.stack([s[t:t + se.EVENT_LEN, 0] for s, t in zip(test["series"], test["event_start"])])
    templates = np.stack([se.event_shape(k) for k in range(3)])
    np.testing.assert_array_equal((windows @ templates.T).argmax(1), test["label"])
    # Elsewhere in channel 0 there is only noise; the distractor channels carry events of every shape.
    outside = np.ones(test["series"].shape[:2], bool)
    for i, t in enumerate(test["event_start"]):
        outside[i, t:t + se.EVENT_LEN] = False
    assert abs(test["series"][..., 0][outside].std() - se.NOISE) < 0.02
    assert test["series"][..., 1:].std() > se.NOISE + 0.1
    assert set(np.bincount(test["label"], minlength=3) > 60) == {True}
    assert not np.array_equal(se.make_split("train")["series"][:5], test["series"][:5])
