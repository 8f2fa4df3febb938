"""The two tokenizers of the text datasets: ASCII characters (`chars`) and words (`finai_sentences`)."""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

# --- ASCII characters ------------------------------------------------------------------------
ASCII_VOCAB_SIZE = 128
# NUL never occurs in source text, so it can stand for every non-ASCII character without ambiguity.
REPLACEMENT_ID = 0
REPLACEMENT_CHAR = "\ufffd"


def ascii_encode(text: str) -> np.ndarray:
    """str -> int32 ids in [0, 128); each non-ASCII character (not byte) becomes REPLACEMENT_ID."""
    data = text.encode("ascii", errors="replace")  # one b'?' per non-ASCII character
    ids = np.frombuffer(data, dtype=np.uint8).astype(np.int32)
    # `errors="replace"` writes '?', which also occurs in real text: mark the replaced positions exactly.
    non_ascii = np.fromiter((ord(c) >= ASCII_VOCAB_SIZE for c in text), dtype=bool, count=len(text))
    ids[non_ascii] = REPLACEMENT_ID
    return ids


def ascii_decode(tokens: Iterable[int]) -> str:
    """int ids -> str; REPLACEMENT_ID shows as U+FFFD; ids outside the vocab raise."""
    ids = np.asarray(tokens).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= ASCII_VOCAB_SIZE):
        raise ValueError(f"token ids must lie in [0, {ASCII_VOCAB_SIZE}); got range [{ids.min()}, {ids.max()}]")
    return "".join(REPLACEMENT_CHAR if i == REPLACEMENT_ID else chr(i) for i in ids.tolist())


# --- words -----------------------------------------------------------------------------------
PAD, CLS, SEP, UNK = "[PAD]", "[CLS]", "[SEP]", "[UNK]"
SPECIAL_TOKENS = (PAD, CLS, SEP, UNK)  # ids 0, 1, 2, 3
PAD_ID, CLS_ID, SEP_ID, UNK_ID = range(4)
# Numbers are split into digits, BERT-style ('##' = glued to the previous token), so every number the
# generator writes is covered by a small vocab and decodes back exactly.
DIGIT_TOKENS = tuple(str(d) for d in range(10)) + tuple(f"##{c}" for c in "0123456789.,")

_TOKEN_RE = re.compile(r"\d+(?:[.,]\d+)*|[A-Za-z]+(?:['\-][A-Za-z]+)*|[^\sA-Za-z\d]")
_NO_SPACE_BEFORE = frozenset(",.;:%)?!")
_NO_SPACE_AFTER = frozenset("($")


def word_split(text: str) -> list[str]:
    """Text -> word pieces: words (with inner hyphens/apostrophes), single punctuation, split numbers."""
    pieces: list[str] = []
    for tok in _TOKEN_RE.findall(text):
        if tok[0].isdigit():
            pieces.append(tok[0])
            pieces.extend("##" + c for c in tok[1:])
        else:
            pieces.append(tok)
    return pieces


def word_join(pieces: Sequence[str]) -> str:
    """Inverse of word_split for text written with the same spacing rules (what the generator writes)."""
    out: list[str] = []
    previous = None
    for piece in pieces:
        if piece.startswith("##"):
            out.append(piece[2:])
        elif previous is None or piece in _NO_SPACE_BEFORE or previous in _NO_SPACE_AFTER:
            out.append(piece)
        else:
            out.append(" " + piece)
        previous = piece
    return "".join(out)


class WordTokenizer:
    """Word-level tokenizer over a fixed vocab; ids 0..3 are [PAD], [CLS], [SEP], [UNK]."""

    def __init__(self, vocab: Sequence[str]):
        vocab = list(vocab)
        if tuple(vocab[:4]) != SPECIAL_TOKENS:
            raise ValueError(f"vocab must start with {SPECIAL_TOKENS}; got {vocab[:4]}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab has duplicate entries")
        self.vocab = vocab
        self._ids = {w: i for i, w in enumerate(vocab)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "WordTokenizer":
        words = set(DIGIT_TOKENS)
        for text in texts:
            words.update(word_split(text))
        return cls(list(SPECIAL_TOKENS) + sorted(words - set(SPECIAL_TOKENS)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        """Text -> int32 ids, without [CLS]/[SEP] (the pipeline adds [CLS]); unknown words -> [UNK]."""
        return np.asarray([self._ids.get(p, UNK_ID) for p in word_split(text)], dtype=np.int32)

    def decode(self, tokens: Iterable[int]) -> str:
        """Ids -> text; [PAD], [CLS] and [SEP] are dropped, [UNK] is shown as '[UNK]'."""
        ids = np.asarray(tokens).reshape(-1).tolist()
        bad = [i for i in ids if not 0 <= i < len(self.vocab)]
        if bad:
            raise ValueError(f"token ids must lie in [0, {len(self.vocab)}); got {bad[:5]}")
        return word_join([self.vocab[i] for i in ids if i not in (PAD_ID, CLS_ID, SEP_ID)])
