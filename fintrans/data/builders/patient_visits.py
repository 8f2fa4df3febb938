"""`patient_visits`: seeded synthetic electronic-health-record visit histories (for SANSformer).

Each patient has an age at the first visit (18-85), a latent frailty f ~ Gamma(2, 0.5) and 0-4 chronic
conditions (from the first NUM_CHRONIC diagnosis codes, more likely with age). Visits arrive as a
self-exciting point process: the daily visit rate is
    λ = BASE_RATE · f · (1 + 0.4·#chronic) · (1 + (age - 18)/60) · (1 + 0.5·[visit in the last 30 days])
and gaps are exponential in it. At a visit each chronic condition is coded with probability 0.6, plus
Poisson(0.7) acute codes (drawn from the remaining diagnosis codes); each diagnosis brings its own
procedure (code d mod NUM_PROCEDURES) with probability 0.5, plus a random procedure with probability 0.1.

A record is a patient's history of HISTORY_LEN visits (the first at day 0): 'diagnoses' uint8
[HISTORY_LEN, NUM_DIAGNOSES] and 'procedures' uint8 [HISTORY_LEN, NUM_PROCEDURES] (multi-hot), 'age'
float32 [HISTORY_LEN] (years, at each visit), 'gap_days' float32 [HISTORY_LEN] (days since the previous
visit, 0 for the first), and the downstream target: 'future_visits', the number of visits in the
FUTURE_DAYS days after the last one (the same process continued), and 'label' = its bucket under
LABEL_EDGES (0: fewer than 10, 1: 10 to 24, 2: 25 or more; about tertiles): future healthcare utilisation, which
depends on the history through frailty, chronic conditions, age and recent activity.
Patient i of split s is generated from `np.random.default_rng([SEED, SPLIT_IDS[s], i])`.

Reader: 'inputs' float32 [HISTORY_LEN, NUM_FEATURES] = [diagnoses, procedures, (age - 50)/20,
log1p(gap_days)/4] per visit. The required data field `gsp` picks the targets:
- gsp=0 (fine-tuning, classification task): 'label' int32.
- gsp=1 (Generative Summary Pretraining, forecasting task): 'targets' float32 [HISTORY_LEN - 1,
  NUM_FEATURES], the feature vector (summary) of the next visit for every visit but the last:
  targets[t] = inputs[t + 1] (`gsp_targets`).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from fintrans.data.builders import register
from fintrans.data.builders.base import OfflineBuilder
from fintrans.data.sources import MappedSource
from fintrans.data.fitted import FittedCache
from fintrans.data.spec import DatasetSpec, Loaded

SEED = 11
SPLIT_SIZES = {"train": 2000, "validation": 400, "test": 400}
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
HISTORY_LEN = 16
NUM_DIAGNOSES, NUM_PROCEDURES, NUM_CHRONIC = 24, 8, 6
NUM_FEATURES = NUM_DIAGNOSES + NUM_PROCEDURES + 2
BASE_RATE = 1.0 / 60.0  # visits per day for frailty 1, no conditions, age 18
FUTURE_DAYS = 365
LABEL_EDGES = (10, 25)  # future_visits < 10 -> 0, < 25 -> 1, else 2 (about tertiles)
NUM_CLASSES = len(LABEL_EDGES) + 1
FEATURE_NAMES = ([f"diagnosis_{i}" for i in range(NUM_DIAGNOSES)] + [f"procedure_{i}" for i in range(NUM_PROCEDURES)]
                 + ["age", "log_gap"])


def patient_rng(split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([SEED, SPLIT_IDS[split], index])


def _rate(frailty, n_chronic, age, recent):
    return BASE_RATE * frailty * (1 + 0.4 * n_chronic) * (1 + (age - 18) / 60) * (1 + 0.5 * recent)


def _next_gap(rng, frailty, n_chronic, age, last_gap):
    return rng.exponential(1.0 / _rate(frailty, n_chronic, age, last_gap <= 30))


def generate_patient(rng: np.random.Generator) -> dict[str, Any]:
    age0 = rng.uniform(18, 85)
    frailty = rng.gamma(2.0, 0.5)
    n_chronic = min(rng.binomial(4, 0.1 + 0.5 * (age0 - 18) / 67), NUM_CHRONIC)
    chronic = rng.choice(NUM_CHRONIC, n_chronic, replace=False)
    diagnoses = np.zeros((HISTORY_LEN, NUM_DIAGNOSES), np.uint8)
    procedures = np.zeros((HISTORY_LEN, NUM_PROCEDURES), np.uint8)
    gaps = np.zeros(HISTORY_LEN)
    day, last_gap = 0.0, np.inf
    for t in range(HISTORY_LEN):
        if t:
            last_gap = _next_gap(rng, frailty, n_chronic, age0 + day / 365.25, last_gap)
            gaps[t] = last_gap
            day += last_gap
        codes = list(chronic[rng.random(n_chronic) < 0.6])
        codes += list(rng.integers(NUM_CHRONIC, NUM_DIAGNOSES, rng.poisson(0.7)))
        diagnoses[t, codes] = 1
        for d in codes:
            if rng.random() < 0.5:
                procedures[t, d % NUM_PROCEDURES] = 1
        if rng.random() < 0.1:
            procedures[t, rng.integers(NUM_PROCEDURES)] = 1
    ages = age0 + np.cumsum(gaps) / 365.25
    future, elapsed = 0, 0.0
    while True:
        last_gap = _next_gap(rng, frailty, n_chronic, ages[-1] + elapsed / 365.25, last_gap)
        elapsed += last_gap
        if elapsed > FUTURE_DAYS:
            break
        future += 1
    return {"diagnoses": diagnoses, "procedures": procedures, "age": ages.astype(np.float32),
            "gap_days": gaps.astype(np.float32), "future_visits": future,
            "label": int(np.searchsorted(LABEL_EDGES, future, side="right"))}


class PatientVisits(OfflineBuilder, skip_registration=True):
    name = "patient_visits"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "diagnoses": tfds.features.Tensor(shape=(HISTORY_LEN, NUM_DIAGNOSES), dtype=np.uint8),
                "procedures": tfds.features.Tensor(shape=(HISTORY_LEN, NUM_PROCEDURES), dtype=np.uint8),
                "age": tfds.features.Tensor(shape=(HISTORY_LEN,), dtype=np.float32),
                "gap_days": tfds.features.Tensor(shape=(HISTORY_LEN,), dtype=np.float32),
                "future_visits": np.int32,
                "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                "index": np.int32,
            }),
        )

    def _generate_examples(self, split: str):
        for i in range(SPLIT_SIZES[split]):
            yield i, {**generate_patient(patient_rng(split, i)), "index": i}


def visit_features(record: Mapping[str, Any]) -> np.ndarray:
    """[HISTORY_LEN, NUM_FEATURES]: multi-hot codes, scaled age, log gap."""
    return np.concatenate([
        np.asarray(record["diagnoses"], np.float32), np.asarray(record["procedures"], np.float32),
        ((np.asarray(record["age"], np.float32) - 50.0) / 20.0)[:, None],
        (np.log1p(np.asarray(record["gap_days"], np.float32)) / 4.0)[:, None]], axis=1)


def gsp_targets(inputs: np.ndarray) -> np.ndarray:
    """GSP targets from inputs [..., L, F]: the next visit's features for visits 0..L-2 -> [..., L-1, F]."""
    return inputs[..., 1:, :]


def read(records: Mapping[str, list[dict[str, Any]]], fields: Mapping[str, int],
         metadata: Mapping[str, Any], fitted: FittedCache) -> Loaded:
    del metadata, fitted  # nothing fitted
    gsp = fields["gsp"]
    if gsp not in (0, 1):
        raise ValueError(f"patient_visits: gsp={gsp} must be 0 (labels) or 1 (GSP next-visit targets)")

    def example(record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        inputs = visit_features(record)
        if gsp:
            return {"inputs": inputs, "targets": gsp_targets(inputs)}
        return {"inputs": inputs, "label": np.int32(record["label"])}

    sources = {split: MappedSource(recs, example) for split, recs in records.items()}
    info = {"num_classes": NUM_CLASSES, "history_len": HISTORY_LEN, "num_features": NUM_FEATURES, "gsp": gsp,
            "channels": FEATURE_NAMES}
    if gsp:  # what the forecasting sampler reads: the features are shown as they are (no normalisation)
        info.update(mean=np.zeros(NUM_FEATURES, np.float32), std=np.ones(NUM_FEATURES, np.float32))
    return Loaded(sources=sources, info=info)


SPEC = register(DatasetSpec(name="patient_visits", builder=PatientVisits,
                   fields={"gsp": (0, "1: targets are the next visit's features (Generative Summary "
                                      "Pretraining); 0: the future-utilisation label (fine-tuning)")},
                   read=read, streams=True))
