"""`finai_sentences`: synthetic bank-report sentences, labelled 1 when they disclose AI use (FinAI-BERT).

Two generators, both seeded and both prepared into the same record files (the data field `generator`
picks one; the reader reads its slice of each split):
  * 'hard' (default; finai_hard_templates): the paper's size (1,586 sentences, 793 per class), with
    paraphrase groups, distractors (AI words without the bank's own AI use) and keyword-free
    disclosures; split 554/80/159 per class by template group, so no test sentence is a paraphrase or
    re-fill of a training one.
  * 'easy' (finai_templates.generate, the original one): 3,000 sentences, each class from its own
    templates, split 80/10/10 within each class; a small BERT reaches 100% test accuracy on it.
`label_noise` (default 0.03) flips that fraction of the *train* labels (exactly round(rate * n)
sentences, chosen by a seeded rank stored in each record); validation and test labels stay clean, so
the attainable test accuracy is 100% and the flips are what a model must see through. Records hold
the text, its word ids (no [CLS]/[SEP]), the clean label, kind and template group; the vocab (both
generators' words) is in the dataset's metadata so decoding always matches the prepared records. The
reader adds [CLS] ... [SEP], truncates to max_len and pads with [PAD].
"""
from __future__ import annotations

import functools
import random
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from fintrans.data import tokenizers
from fintrans.data.builders import finai_hard_templates, finai_templates
from fintrans.data.errors import DataConfigError, DatasetCorruptError
from fintrans.data.builders import register
from fintrans.data.builders.base import OfflineBuilder
from fintrans.data.sources import MappedSource
from fintrans.data.fitted import FittedCache
from fintrans.data.spec import DatasetSpec, Field, Loaded

SEED = 0
NUM_PER_CLASS = 1500  # the easy generator
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}  # the easy generator
GENERATORS = ("hard", "easy")  # record order within each split
DEFAULT_LABEL_NOISE = 0.03


def vocab_tokenizer() -> tokenizers.WordTokenizer:
    return tokenizers.WordTokenizer.from_texts(finai_templates.vocabulary_texts()
                                               + finai_hard_templates.vocabulary_texts())


@functools.lru_cache(maxsize=1)
def generated_splits() -> dict[str, dict[str, list[finai_templates.Sentence]]]:
    """generator -> split -> sentences."""
    return {"hard": finai_hard_templates.generate_splits(SEED), "easy": split_sentences()}


@functools.lru_cache(maxsize=1)
def split_sentences() -> dict[str, list[finai_templates.Sentence]]:
    """The easy generator's stratified 80/10/10 split (each split shuffled, seeded)."""
    sentences = finai_templates.generate(NUM_PER_CLASS, SEED)
    rng = random.Random(SEED + 1)
    splits: dict[str, list] = {s: [] for s in SPLIT_FRACTIONS}
    for label in (0, 1):
        group = [s for s in sentences if s.label == label]
        rng.shuffle(group)
        n_train = int(len(group) * SPLIT_FRACTIONS["train"])
        n_val = int(len(group) * SPLIT_FRACTIONS["validation"])
        splits["train"] += group[:n_train]
        splits["validation"] += group[n_train:n_train + n_val]
        splits["test"] += group[n_train + n_val:]
    for group in splits.values():
        rng.shuffle(group)
    return splits


class FinaiSentences(OfflineBuilder, skip_registration=True):
    name = "finai_sentences"
    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "2.0.0": "The hard generator (default), template groups and label-noise ranks."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Synthetic stand-in for FinAI-BERT's task (arXiv 2507.01991): sentence-level detection of AI "
                f"disclosures in bank annual reports (seed {SEED}). Each split holds the 'hard' generator's "
                f"sentences ({2 * finai_hard_templates.TOTAL_PER_CLASS}, balanced, paraphrase groups, distractors, "
                "keyword-free disclosures, split by template group), and the 'easy' one's "
                f"({2 * NUM_PER_CLASS}, balanced, split 80/10/10 within each class). Label 1 = discloses the "
                "bank's own use/governance/risk of AI. Word-level tokens over a local vocab ([PAD]=0, [CLS]=1, "
                "[SEP]=2, [UNK]=3); `noise_rank` orders each split's sentences for seeded label flips."),
            features=tfds.features.FeaturesDict({
                "sentence": tfds.features.Text(),
                "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "label": tfds.features.ClassLabel(names=finai_templates.LABEL_NAMES),
                "kind": tfds.features.ClassLabel(names=finai_templates.KINDS),
                "group": tfds.features.Text(),
                "generator": tfds.features.ClassLabel(names=GENERATORS),
                "noise_rank": np.int32,
            }),
            supervised_keys=("sentence", "label"),
            metadata=tfds.core.MetadataDict(vocab=vocab_tokenizer().vocab, num_records={
                g: {split: len(s) for split, s in splits.items()} for g, splits in generated_splits().items()}),
        )

    def _generate_examples(self, split: str):
        tokenizer = vocab_tokenizer()
        i = 0
        for generator in GENERATORS:
            sentences = generated_splits()[generator][split]
            ranks = list(range(len(sentences)))
            random.Random(f"{SEED}/{generator}/{split}").shuffle(ranks)
            for s, rank in zip(sentences, ranks):
                yield i, {"sentence": s.text, "tokens": tokenizer.encode(s.text), "label": s.label, "kind": s.kind,
                          "group": s.group, "generator": generator, "noise_rank": rank}
                i += 1


class RecordSubset:
    """records[indices] as a random-access sequence (what MappedSource reads), without reading any."""

    def __init__(self, records: Sequence[Mapping[str, Any]], indices: Sequence[int]):
        self.records, self.indices = records, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Mapping[str, Any]:
        return self.records[self.indices[int(i)]]

    def __getitems__(self, indices) -> list[Mapping[str, Any]]:
        idx = [self.indices[int(i)] for i in indices]
        if hasattr(self.records, "__getitems__"):
            return self.records.__getitems__(idx)
        return [self.records[i] for i in idx]

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def generator_records(records: Mapping[str, Sequence], metadata: Mapping[str, Any], generator: str,
                      fitted: FittedCache) -> dict:
    """split -> the records of `generator`, in stored order. tfds stores a split's records shuffled by
    key, so where each generator's records lie is found once (reading every record's generator field)
    and cached with the dataset."""
    counts = metadata.get("num_records")
    if not counts or set(counts) != set(GENERATORS):
        raise DatasetCorruptError("finai_sentences has no per-generator record counts in its metadata.json (a "
                                  "dataset prepared before version 2.0.0?); delete it and prepare it again")

    def positions() -> dict:
        out = {g: {} for g in GENERATORS}
        for split, recs in records.items():
            which = [int(r["generator"]) for r in recs]
            for i, g in enumerate(GENERATORS):
                out[g][split] = [k for k, w in enumerate(which) if w == i]
        return out

    where = fitted.get("generator_positions", {}, positions)
    for split in records:
        if len(where[generator][split]) != counts[generator][split]:
            raise DatasetCorruptError(f"finai_sentences: the {split!r} split holds {len(where[generator][split])} "
                                      f"{generator!r} sentences, its metadata {counts[generator][split]}; delete the "
                                      "prepared dataset and prepare it again")
    return {split: RecordSubset(recs, where[generator][split]) for split, recs in records.items()}


def check_label_noise(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0 <= value < 0.5:
        raise DataConfigError(f"config field label_noise of dataset 'finai_sentences' (the fraction of train labels "
                              f"flipped) must be a number in [0, 0.5); got {value!r}")
    return float(value)


def num_flipped(label_noise: float, num_train: int) -> int:
    """How many train labels `label_noise` flips: exactly round(rate * n)."""
    return int(round(label_noise * num_train))


def pad_tokens(tokens: np.ndarray, max_len: int) -> np.ndarray:
    """[CLS] tokens [SEP], truncated to max_len (keeping [SEP] last), padded with [PAD]."""
    body = np.asarray(tokens, np.int32)[:max_len - 2]
    out = np.full((max_len,), tokenizers.PAD_ID, np.int32)
    out[:len(body) + 2] = np.concatenate([[tokenizers.CLS_ID], body, [tokenizers.SEP_ID]])
    return out


def fit_token_stats(records: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict:
    """Per split: every sentence's length with [CLS] and [SEP] (sorted), and the count of each kind."""
    stats: dict[str, dict] = {"lengths": {}, "kind_counts": {}}
    for split, recs in records.items():
        lengths, kinds = [], np.zeros(len(finai_templates.KINDS), np.int64)
        for r in recs:
            lengths.append(len(r["tokens"]) + 2)
            kinds[int(r["kind"])] += 1
        stats["lengths"][split] = sorted(lengths)
        stats["kind_counts"][split] = {k: int(kinds[i]) for i, k in enumerate(finai_templates.KINDS)}
    return stats


def read(records: Mapping[str, list[dict[str, Any]]], fields: Mapping[str, Any],
         metadata: Mapping[str, Any], fitted: FittedCache) -> Loaded:
    max_len, generator, label_noise = fields["max_len"], fields["generator"], fields["label_noise"]
    if "vocab" not in metadata:
        raise DatasetCorruptError("finai_sentences has no vocab in its metadata.json; delete the prepared dataset "
                                  "and prepare it again")
    tokenizer = tokenizers.WordTokenizer(metadata["vocab"])
    records = generator_records(records, metadata, generator, fitted)
    flipped = num_flipped(label_noise, len(records["train"]))

    def example(record: Mapping[str, Any], noisy: bool) -> dict[str, np.ndarray]:
        inputs = pad_tokens(record["tokens"], max_len)
        label = int(record["label"])
        if noisy and int(record["noise_rank"]) < flipped:
            label = 1 - label
        return {"inputs": inputs, "mask": inputs != tokenizers.PAD_ID, "label": np.int32(label)}

    sources = {split: MappedSource(recs, functools.partial(example, noisy=split == "train"))
               for split, recs in records.items()}
    stats = fitted.get("token_stats", {"generator": generator}, lambda: fit_token_stats(records))
    longest = max(max(lengths, default=0) for lengths in stats["lengths"].values())
    truncated = {split: sum(n > max_len for n in lengths) for split, lengths in stats["lengths"].items()}
    kind_counts = stats["kind_counts"]
    info = {"vocab_size": tokenizer.vocab_size, "num_classes": 2, "max_len": max_len,
            "label_names": list(finai_templates.LABEL_NAMES), "pad_id": tokenizers.PAD_ID,
            "cls_id": tokenizers.CLS_ID, "sep_id": tokenizers.SEP_ID, "unk_id": tokenizers.UNK_ID,
            "longest_sequence": longest, "num_truncated": truncated, "kind_counts": kind_counts,
            "generator": generator, "label_noise": label_noise, "num_flipped": {"train": flipped}}
    return Loaded(sources=sources, info=info, decode=tokenizer.decode)


SPEC = register(DatasetSpec(name="finai_sentences", builder=FinaiSentences,
                            fields={
                                "max_len": (2, "tokens per sentence, [CLS] and [SEP] included"),
                                "generator": Field("which sentence generator", kind=str, choices=GENERATORS,
                                                   default="hard"),
                                "label_noise": Field("the fraction of train labels flipped", kind=float,
                                                     default=DEFAULT_LABEL_NOISE, check=check_label_noise)},
                            read=read, streams=True))
