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

GSP targets ('gsp_summaries' float32 [HISTORY_LEN, NUM_SUMMARIES], `window_summaries`): for each history
visit t, summary statistics of the window (day_t, day_t + GSP_WINDOW_DAYS] (365 days) over every later visit,
those of the history after t and those of the follow-up year after the last visit (whose diagnoses are
generated too, after its gaps, so 'future_visits' is what version 1.0.0 had): [0] the number of visits in the
window, [1 + c] the number of diagnosis codes of chapter c (codes CHAPTER_SIZE·c .. CHAPTER_SIZE·c + 3, as ICD
chapters group codes) those visits carry. The follow-up year is observed (a registry's next year), so every
window is complete; at the last visit summary [0] is 'future_visits', the downstream target.

Reader: 'inputs' float32 [HISTORY_LEN, NUM_FEATURES] = [diagnoses, procedures, (age - 50)/20,
log1p(gap_days)/4] per visit. The data fields pick the targets:
- gsp=1 (Generative Summary Pretraining, count_regression task): 'targets' = 'gsp_summaries'.
- gsp=0, buckets=0 (fine-tuning, the paper's regression; count_regression task): 'targets' float32 =
  'future_visits'.
- gsp=0, buckets=1 (the earlier classification option): 'label' int32, the bucket.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from fintrans.data.builders import register
from fintrans.data.builders.base import OfflineBuilder
from fintrans.data.sources import MappedSource
from fintrans.data.fitted import FittedCache
from fintrans.data.spec import DatasetSpec, Field, Loaded

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
# Generative Summary Pretraining: summary statistics of the GSP_WINDOW_DAYS after each visit.
GSP_WINDOW_DAYS = 365.0
CHAPTER_SIZE = 4  # diagnosis 'chapters' (as ICD chapters group codes): codes 4c .. 4c+3
NUM_CHAPTERS = NUM_DIAGNOSES // CHAPTER_SIZE
NUM_SUMMARIES = 1 + NUM_CHAPTERS
SUMMARY_NAMES = ["visits"] + [f"chapter_{c}_diagnoses" for c in range(NUM_CHAPTERS)]
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
        codes = _visit_codes(rng, chronic)
        diagnoses[t, codes] = 1
        for d in codes:
            if rng.random() < 0.5:
                procedures[t, d % NUM_PROCEDURES] = 1
        if rng.random() < 0.1:
            procedures[t, rng.integers(NUM_PROCEDURES)] = 1
    ages = age0 + np.cumsum(gaps) / 365.25
    follow_days, elapsed = [], 0.0
    while True:
        last_gap = _next_gap(rng, frailty, n_chronic, ages[-1] + elapsed / 365.25, last_gap)
        elapsed += last_gap
        if elapsed > FUTURE_DAYS:
            break
        follow_days.append(elapsed)
    future = len(follow_days)
    # The follow-up year's diagnoses, drawn after its gaps so the gaps (and future_visits) are those of
    # version 1.0.0.
    follow_dx = np.zeros((future, NUM_DIAGNOSES), np.uint8)
    for v in range(future):
        follow_dx[v, _visit_codes(rng, chronic)] = 1
    days = np.cumsum(gaps)
    gsp = window_summaries(days, diagnoses, days[-1] + np.asarray(follow_days), follow_dx)
    return {"diagnoses": diagnoses, "procedures": procedures, "age": ages.astype(np.float32),
            "gap_days": gaps.astype(np.float32), "future_visits": future, "gsp_summaries": gsp,
            "label": int(np.searchsorted(LABEL_EDGES, future, side="right"))}


def _visit_codes(rng, chronic) -> list:
    codes = list(chronic[rng.random(len(chronic)) < 0.6])
    return codes + list(rng.integers(NUM_CHRONIC, NUM_DIAGNOSES, rng.poisson(0.7)))


def window_summaries(days, diagnoses, follow_days, follow_diagnoses, window: float = GSP_WINDOW_DAYS) -> np.ndarray:
    """GSP targets [len(days), NUM_SUMMARIES]: for each history visit t (on day days[t]), over the window
    (days[t], days[t] + window] of every later visit (the history's and the follow-up's): the number of
    visits, then the number of diagnosis codes of each chapter (code // CHAPTER_SIZE) they carry."""
    all_days = np.concatenate([np.asarray(days, np.float64), np.asarray(follow_days, np.float64)])
    all_dx = np.concatenate([np.asarray(diagnoses), np.asarray(follow_diagnoses).reshape(-1, NUM_DIAGNOSES)])
    chapters = all_dx.reshape(len(all_dx), NUM_CHAPTERS, CHAPTER_SIZE).sum(-1)  # [visits, chapters]
    out = np.zeros((len(days), NUM_SUMMARIES), np.float32)
    for t, day in enumerate(days):
        inside = (all_days > day) & (all_days <= day + window)
        out[t, 0] = inside.sum()
        out[t, 1:] = chapters[inside].sum(0)
    return out


class PatientVisits(OfflineBuilder, skip_registration=True):
    name = "patient_visits"
    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "2.0.0": "gsp_summaries: the paper's GSP targets (future-window summary statistics)."}

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
                "gsp_summaries": tfds.features.Tensor(shape=(HISTORY_LEN, NUM_SUMMARIES), dtype=np.float32),
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


def read(records: Mapping[str, list[dict[str, Any]]], fields: Mapping[str, int],
         metadata: Mapping[str, Any], fitted: FittedCache) -> Loaded:
    del metadata, fitted  # nothing fitted
    gsp, buckets = fields["gsp"], fields["buckets"]
    if gsp not in (0, 1) or buckets not in (0, 1):
        raise ValueError(f"patient_visits: gsp={gsp} and buckets={buckets} must each be 0 or 1")
    if gsp and buckets:
        raise ValueError("patient_visits: buckets=1 picks the fine-tuning label; it cannot go with gsp=1")

    def example(record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        inputs = visit_features(record)
        if gsp:
            return {"inputs": inputs, "targets": np.asarray(record["gsp_summaries"], np.float32)}
        if buckets:
            return {"inputs": inputs, "label": np.int32(record["label"])}
        return {"inputs": inputs, "targets": np.float32(record["future_visits"])}

    start, size = fields["train_start"], fields["train_size"]
    if start < 0 or size < 0:
        raise ValueError(f"patient_visits: train_start={start} and train_size={size} must be >= 0")
    records = dict(records)
    if start or size:  # a slice of the training patients, by index (the claim's unlabelled pool / labelled sets)
        stop = start + size if size else None
        train = records["train"]
        records["train"] = sorted((train[i] for i in range(len(train)) if start <= int(train[i]["index"]) < (stop or np.inf)),
                                  key=lambda r: int(r["index"]))
        if not records["train"]:
            raise ValueError(f"patient_visits: train_start={start}, train_size={size} select no patient of "
                             f"{SPLIT_SIZES['train']}")
    sources = {split: MappedSource(recs, example) for split, recs in records.items()}
    info = {"num_classes": NUM_CLASSES, "history_len": HISTORY_LEN, "num_features": NUM_FEATURES, "gsp": gsp,
            "num_summaries": NUM_SUMMARIES, "summaries": SUMMARY_NAMES, "channels": FEATURE_NAMES}
    return Loaded(sources=sources, info=info)


SPEC = register(DatasetSpec(name="patient_visits", builder=PatientVisits,
                   fields={"gsp": (0, "1: targets are the summary statistics of the year after each visit "
                                      "(Generative Summary Pretraining); 0: fine-tuning targets"),
                           "buckets": Field("with gsp=0: 1 gives the 3-bucket 'label' (classification); 0 the "
                                          "count of next-year visits as float 'targets' (regression, the paper's)", default=0),
                           "train_start": Field("first training patient index kept", default=0),
                           "train_size": Field("training patients kept from train_start (0: all)", default=0)},
                   read=read, streams=True))
