"""Tokenizers: characters and sentencepiece (bpe, unigram); blank = 0; unencodable characters reported."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asrkit.data.tokenizer import (
    BLANK,
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    describe_unencodable,
    find_unencodable,
    tokenizer_from_dict,
    train_tokenizer,
)
from asrkit.errors import AsrkitError
from asrkit.records import Utterance

ALPHABET = "abcdefghijklmnopqrstuvwxyz' "
DIGITS = "zero one two three four five six seven eight nine".split()


def digit_texts(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(DIGITS) for _ in range(rng.randint(1, 6))) for _ in range(n)]


def utt(uid: str, text: str) -> Utterance:
    return Utterance(uid, f"/{uid}.wav", 1.0, text)


@pytest.fixture(scope="module")
def char_tok() -> CharTokenizer:
    return CharTokenizer.train(["the quick brown fox jumps over the lazy dog", "it's"])


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def sp_tok(request: pytest.FixtureRequest) -> Tokenizer:
    return train_tokenizer(request.param, digit_texts(), vocab_size=40)


# --- characters -----------------------------------------------------------------------------------------


def test_char_vocab(char_tok: CharTokenizer) -> None:
    assert char_tok.kind == "char"
    assert char_tok.vocab[0] == BLANK
    assert char_tok.vocab[1:] == sorted(set(ALPHABET))
    assert len(char_tok.vocab) == len(set(ALPHABET)) + 1


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=60))
def test_char_round_trip(text: str) -> None:
    tok = CharTokenizer.train([ALPHABET])
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert 0 not in ids
    assert all(0 < i < len(tok.vocab) for i in ids)
    assert tok.decode(ids) == text
    assert tok.unknown_chars(text) == set()


def test_char_decode_drops_blanks(char_tok: CharTokenizer) -> None:
    ids = char_tok.encode("dog")
    assert char_tok.decode([0, ids[0], 0, 0, ids[1], ids[2], 0]) == "dog"


def test_char_encode_unknown_names_the_character(char_tok: CharTokenizer) -> None:
    with pytest.raises(AsrkitError, match="'é'"):
        char_tok.encode("café")


def test_char_train_on_empty_text_is_an_error() -> None:
    with pytest.raises(AsrkitError, match="empty"):
        CharTokenizer.train(["", ""])


def test_find_and_describe_unencodable(char_tok: CharTokenizer) -> None:
    utts = [utt("u1", "café"), utt("u2", "naïve café"), utt("u3", "the dog"), utt("u4", "straße")]
    bad = find_unencodable(char_tok, utts)
    assert bad == {"é": ["u1", "u2"], "ï": ["u2"], "ß": ["u4"]}
    text = describe_unencodable(bad)
    assert text.startswith("'é' in u1, u2")  # most frequent first
    assert "'ï' in u2" in text and "'ß' in u4" in text
    assert find_unencodable(char_tok, [utt("ok", "the lazy dog")]) == {}


def test_describe_unencodable_truncates_long_id_lists() -> None:
    bad = {"é": [f"u{i}" for i in range(8)], "ß": ["v1"]}
    text = describe_unencodable(bad, limit=3)
    assert text == "'é' in u0, u1, u2 (+5 more); 'ß' in v1"


# --- sentencepiece --------------------------------------------------------------------------------------


def test_sp_blank_is_zero(sp_tok: Tokenizer) -> None:
    assert isinstance(sp_tok, SentencePieceTokenizer)
    assert sp_tok.vocab[0] == BLANK
    assert BLANK not in sp_tok.vocab[1:]


@settings(max_examples=60, deadline=None)
@given(words=st.lists(st.sampled_from(DIGITS), min_size=1, max_size=8))
def test_sp_round_trip(sp_tok: Tokenizer, words: list[str]) -> None:
    text = " ".join(words)
    ids = sp_tok.encode(text)
    assert ids and 0 not in ids
    assert all(0 < i < len(sp_tok.vocab) for i in ids)
    assert sp_tok.decode(ids) == text
    assert sp_tok.decode([0, *ids, 0]) == text


def test_sp_kinds(sp_tok: Tokenizer) -> None:
    assert sp_tok.kind in ("bpe", "unigram")
    assert sp_tok.to_dict()["kind"] == sp_tok.kind


def test_sp_unknown_character(sp_tok: Tokenizer) -> None:
    assert sp_tok.unknown_chars("one two") == set()
    assert sp_tok.unknown_chars("one quiet") == {"q"}
    with pytest.raises(AsrkitError, match="'q'"):
        sp_tok.encode("one quiet")
    bad = find_unencodable(sp_tok, [utt("a", "one"), utt("b", "qi")])
    assert bad == {"q": ["b"]}


def test_sp_unknown_chars_matches_encode(sp_tok: Tokenizer) -> None:
    # 'k' never occurs in the digit words; it only appears inside the '<unk>' piece.
    assert sp_tok.unknown_chars("k") == {"k"}
    assert find_unencodable(sp_tok, [utt("u1", "six k")]) == {"k": ["u1"]}


def test_sp_empty_training_text_is_an_error() -> None:
    with pytest.raises(AsrkitError, match="empty"):
        train_tokenizer("bpe", ["", ""], vocab_size=10)


# --- serialisation --------------------------------------------------------------------------------------


def test_char_dict_round_trip(char_tok: CharTokenizer) -> None:
    data = char_tok.to_dict()
    assert data["kind"] == "char"
    back = tokenizer_from_dict(data)
    assert back.vocab == char_tok.vocab
    for text in ("the lazy dog", "it's", "zzz"):
        assert back.encode(text) == char_tok.encode(text)


def test_sp_dict_round_trip(sp_tok: Tokenizer) -> None:
    data = sp_tok.to_dict()
    assert isinstance(data["model"], bytes)
    back = tokenizer_from_dict(data)
    assert back.kind == sp_tok.kind
    assert back.vocab == sp_tok.vocab
    for text in digit_texts(20, seed=7):
        assert back.encode(text) == sp_tok.encode(text)
        assert back.decode(back.encode(text)) == text


def test_unknown_kind_in_dict() -> None:
    with pytest.raises(AsrkitError, match="unknown tokenizer kind 'wordpiece'"):
        tokenizer_from_dict({"kind": "wordpiece"})
    with pytest.raises(AsrkitError, match="unknown tokenizer kind None"):
        tokenizer_from_dict({})


def test_unknown_kind_to_train_lists_valid_kinds() -> None:
    with pytest.raises(AsrkitError) as info:
        train_tokenizer("wordpiece", ["a b"])
    msg = str(info.value)
    assert "'wordpiece'" in msg
    assert "char, bpe, unigram" in msg


def test_train_tokenizer_char() -> None:
    tok = train_tokenizer("char", ["ab", "bc"])
    assert tok.vocab == [BLANK, "a", "b", "c"]
