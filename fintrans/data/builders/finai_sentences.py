"""`finai_sentences`: synthetic bank-report sentences, labelled 1 when they disclose AI use (FinAI-BERT).

Sentences come from finai_templates (seeded): balanced classes, half of the negatives hard. Split
80/10/10 within each class with a fixed seed; every sentence is unique, so no sentence is in two splits.
Records hold the text and its word ids (no [CLS]/[SEP]); the vocab is stored in the dataset's metadata
so decoding always matches the prepared records. The reader adds [CLS] ... [SEP], truncates to max_len
and pads with [PAD].
"""
from __future__ import annotations

import functools
import random
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from fintrans.data import tokenizers
from fintrans.data.builders import finai_templates
from fintrans.data.errors import DatasetCorruptError
from fintrans.data.builders import register
from fintrans.data.builders.base import OfflineBuilder
from fintrans.data.sources import MappedSource
from fintrans.data.fitted import FittedCache
from fintrans.data.spec import DatasetSpec, Loaded

SEED = 0
NUM_PER_CLASS = 1500
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def vocab_tokenizer() -> tokenizers.WordTokenizer:
    return tokenizers.WordTokenizer.from_texts(finai_templates.vocabulary_texts())


@functools.lru_cache(maxsize=1)
def split_sentences() -> dict[str, list[finai_templates.Sentence]]:
    """Stratified 80/10/10 split of the generated sentences (each split shuffled, seeded)."""
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
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Synthetic stand-in for FinAI-BERT's task (arXiv 2507.01991): sentence-level detection of AI "
                f"disclosures in bank annual reports. {2 * NUM_PER_CLASS} unique template sentences (seed {SEED}), "
                "balanced: label 1 = discloses the bank's use/governance/risk of AI, ML, NLP, chatbots, generative "
                "AI; label 0 = ordinary financial-report sentences, half of them hard negatives (technology without "
                "AI, credit-risk 'models', 'learning'/'intelligence'/'automated'/'assistant' in non-AI senses). "
                "Word-level tokens over a local vocab ([PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3); split 80/10/10 "
                "within each class."),
            features=tfds.features.FeaturesDict({
                "sentence": tfds.features.Text(),
                "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "label": tfds.features.ClassLabel(names=finai_templates.LABEL_NAMES),
                "kind": tfds.features.ClassLabel(names=finai_templates.KINDS),
            }),
            supervised_keys=("sentence", "label"),
            metadata=tfds.core.MetadataDict(vocab=vocab_tokenizer().vocab),
        )

    def _generate_examples(self, split: str):
        tokenizer = vocab_tokenizer()
        for i, s in enumerate(split_sentences()[split]):
            yield i, {"sentence": s.text, "tokens": tokenizer.encode(s.text), "label": s.label, "kind": s.kind}


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


def read(records: Mapping[str, list[dict[str, Any]]], fields: Mapping[str, int],
         metadata: Mapping[str, Any], fitted: FittedCache) -> Loaded:
    max_len = fields["max_len"]
    if "vocab" not in metadata:
        raise DatasetCorruptError("finai_sentences has no vocab in its metadata.json; delete the prepared dataset "
                                  "and prepare it again")
    tokenizer = tokenizers.WordTokenizer(metadata["vocab"])

    def example(record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        inputs = pad_tokens(record["tokens"], max_len)
        return {"inputs": inputs, "mask": inputs != tokenizers.PAD_ID, "label": np.int32(record["label"])}

    sources = {split: MappedSource(recs, example) for split, recs in records.items()}
    stats = fitted.get("token_stats", {}, lambda: fit_token_stats(records))
    longest = max(max(lengths, default=0) for lengths in stats["lengths"].values())
    truncated = {split: sum(n > max_len for n in lengths) for split, lengths in stats["lengths"].items()}
    kind_counts = stats["kind_counts"]
    info = {"vocab_size": tokenizer.vocab_size, "num_classes": 2, "max_len": max_len,
            "label_names": list(finai_templates.LABEL_NAMES), "pad_id": tokenizers.PAD_ID,
            "cls_id": tokenizers.CLS_ID, "sep_id": tokenizers.SEP_ID, "unk_id": tokenizers.UNK_ID,
            "longest_sequence": longest, "num_truncated": truncated, "kind_counts": kind_counts}
    return Loaded(sources=sources, info=info, decode=tokenizer.decode)


SPEC = register(DatasetSpec(name="finai_sentences", builder=FinaiSentences,
                   fields={"max_len": (2, "tokens per sentence, [CLS] and [SEP] included")}, read=read,
                            streams=True))
