"""synthetic_events: multichannel series whose class is decided by one localised event at a known place.

Made for testing what a classifier's class-activation map points at (experiments/claims/t2.py): every
series is noise on CHANNELS channels of LENGTH steps; channel 0 carries one EVENT_LEN-step event starting at
a random step, and its shape is the class:

  0 bump       a raised half-sine (positive)
  1 dip        the same, negative
  2 wiggle     one full sine period (up then down)

Channels 1.. carry DISTRACTORS events of random shapes (any of the three) at random times, which say nothing
about the class; so a model must find channel 0's event and read its shape. The event's window
[event_start, event_start + EVENT_LEN) is the known answer; `make_split(split)` regenerates a split with it
(deterministic, seeded per split), and the records carry it as 'event_start'.

Splits: train 400, validation 100, test 300 series, classes balanced in expectation. Records and batches
have the UEA sets' layout (fintrans.data.builders.uea, whose reader this reuses; every series is full length,
so the mask is all true):
  {'inputs': float32[B, 64, 3], 'mask': bool[B, 64], 'label': int32[B]}
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from fintrans.data.builders import register
from fintrans.data.builders.base import OfflineBuilder
from fintrans.data.builders.uea import read
from fintrans.data.spec import DatasetSpec

LENGTH, CHANNELS, EVENT_LEN, DISTRACTORS = 64, 3, 8, 2
NOISE, AMPLITUDE = 0.5, 2.0
CLASSES = ("bump", "dip", "wiggle")
SIZES = {"train": 400, "validation": 100, "test": 300}
SEEDS = {"train": 0, "validation": 1, "test": 2}


def event_shape(kind: int) -> np.ndarray:
    """The EVENT_LEN-step profile of event class `kind` (peak AMPLITUDE)."""
    phase = np.pi * (np.arange(EVENT_LEN) + 0.5) / EVENT_LEN
    shape = np.sin(phase) if kind < 2 else np.sin(2 * phase)
    return AMPLITUDE * (-shape if kind == 1 else shape)


def make_split(split: str) -> dict[str, np.ndarray]:
    """{'series': float32[n, LENGTH, CHANNELS], 'label': int64[n], 'event_start': int64[n]} of `split`."""
    if split not in SIZES:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(SIZES)}")
    n = SIZES[split]
    rng = np.random.default_rng([SEEDS[split], 20260])
    series = rng.normal(0.0, NOISE, size=(n, LENGTH, CHANNELS))
    labels = rng.integers(0, len(CLASSES), n)
    starts = rng.integers(0, LENGTH - EVENT_LEN + 1, n)
    for i in range(n):
        series[i, starts[i]:starts[i] + EVENT_LEN, 0] += event_shape(labels[i])
        for _ in range(DISTRACTORS):
            c, t, kind = rng.integers(1, CHANNELS), rng.integers(0, LENGTH - EVENT_LEN + 1), rng.integers(0, 3)
            series[i, t:t + EVENT_LEN, c] += event_shape(kind)
    return {"series": series.astype(np.float32), "label": labels, "event_start": starts}


class SyntheticEvents(OfflineBuilder, skip_registration=True):
    name = "synthetic_events"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Noisy 3-channel series classified by the shape of one event in channel 0 "
                        "(bump, dip, wiggle), with distractor events in the other channels.",
            features=tfds.features.FeaturesDict({
                "series": tfds.features.Tensor(shape=(None, CHANNELS), dtype=np.float32),
                "label": tfds.features.ClassLabel(names=list(CLASSES)),
                "index": np.int32,
                "event_start": np.int32,
            }),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(problem="synthetic_events", max_len=LENGTH, num_channels=CHANNELS,
                                            class_names=list(CLASSES), event_len=EVENT_LEN),
        )

    def _generate_examples(self, split: str):
        data = make_split(split)
        for i in range(len(data["label"])):
            yield i, {"series": data["series"][i], "label": int(data["label"][i]), "index": i,
                      "event_start": int(data["event_start"][i])}


SYNTHETIC_EVENTS = register(DatasetSpec(name="synthetic_events", builder=SyntheticEvents, fields={}, read=read,
                                        streams=True))
