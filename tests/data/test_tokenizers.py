import numpy as np
import pytest

from fintrans.data import tokenizers as tok


def test_ascii_round_trip_and_replacement():
    text = "def f(x):\n\treturn x ** 2  # ok?\n"
    ids = tok.ascii_encode(text)
    assert ids.dtype == np.int32 and ids.max() < tok.ASCII_VOCAB_SIZE
    assert tok.ascii_decode(ids) == text
    # one replacement id per non-ASCII character (not per UTF-8 byte); a real '?' stays '?'
    ids = tok.ascii_encode("é?€")
    np.testing.assert_array_equal(ids, [tok.REPLACEMENT_ID, ord("?"), tok.REPLACEMENT_ID])
    assert tok.ascii_decode(ids) == "\ufffd?\ufffd"


def test_ascii_decode_rejects_out_of_vocab():
    with pytest.raises(ValueError, match=r"\[0, 128\)"):
        tok.ascii_decode([65, 200])


def test_word_split_join_round_trip():
    text = "The Bank's AI-powered chatbot handled $4.2 million requests, or 12% more, in 2023."
    pieces = tok.word_split(text)
    assert pieces[:3] == ["The", "Bank's", "AI-powered"]
    assert ["$", "4", "##.", "##2"] == pieces[5:9]
    assert tok.word_join(pieces) == text


def test_word_tokenizer_specials_and_unknown_words():
    t = tok.WordTokenizer.from_texts(["We use machine learning."])
    assert t.vocab[:4] == ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
    ids = t.encode("We use quantum learning.")
    assert ids.dtype == np.int32 and ids[2] == tok.UNK_ID
    assert t.decode([tok.CLS_ID, *ids, tok.SEP_ID, tok.PAD_ID, tok.PAD_ID]) == "We use [UNK] learning."
    with pytest.raises(ValueError, match="must start with"):
        tok.WordTokenizer(["a", "b", "c", "d"])
