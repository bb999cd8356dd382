"""Tokenizers: characters or sentencepiece (BPE / unigram). Id 0 is always the CTC blank.

A tokenizer serialises to a plain dict (`to_dict`), stored in the checkpoint so `transcribe` needs only
the checkpoint file.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from asrkit.errors import AsrkitError
from asrkit.records import Utterance

BLANK = "<blank>"


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab(self) -> list[str]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def unknown_chars(self, text: str) -> set[str]: ...

    def to_dict(self) -> dict[str, Any]: ...


class CharTokenizer:
    """Characters of the training text; the space is a token of its own."""

    kind = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        self._vocab = [BLANK, *chars]
        self._index = {c: i for i, c in enumerate(self._vocab)}

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        chars = sorted(set("".join(texts)))
        if not chars:
            raise AsrkitError("cannot build a character tokenizer: the training transcripts are empty")
        return cls(chars)

    @property
    def vocab(self) -> list[str]:
        return self._vocab

    def encode(self, text: str) -> list[int]:
        try:
            return [self._index[c] for c in text]
        except KeyError as err:
            raise AsrkitError(f"character {err.args[0]!r} is not in the tokenizer's alphabet") from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self._vocab[i] for i in ids if i != 0)

    def unknown_chars(self, text: str) -> set[str]:
        return {c for c in text if c not in self._index}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": self._vocab[1:]}


class SentencePieceTokenizer:
    """sentencepiece BPE or unigram model; its ids are shifted by one so that 0 is the blank."""

    def __init__(self, model_proto: bytes, kind: str) -> None:
        import sentencepiece as spm

        self.kind = kind
        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self._vocab = [BLANK] + [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]
        self._unk = self._sp.unk_id()
        normal = [i for i in range(self._sp.get_piece_size())
                  if not (self._sp.is_unknown(i) or self._sp.is_control(i) or self._sp.is_unused(i))]
        self._known = {c for i in normal for c in self._sp.id_to_piece(i).replace("\u2581", " ")}

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, kind: str) -> SentencePieceTokenizer:
        import io

        import sentencepiece as spm

        lines = [t for t in texts if t]
        if not lines:
            raise AsrkitError("cannot train sentencepiece: the training transcripts are empty")
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
                model_type=kind, character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0,
                hard_vocab_limit=False, minloglevel=2, num_threads=1,
            )
        except RuntimeError as err:
            raise AsrkitError(f"sentencepiece training failed ({err}); try a smaller tokenizer.vocab_size") from None
        return cls(model.getvalue(), kind)

    @property
    def vocab(self) -> list[str]:
        return self._vocab

    def encode(self, text: str) -> list[int]:
        ids = self._sp.encode(text)
        if self._unk in ids:
            unknown = sorted(self.unknown_chars(text))
            raise AsrkitError(f"text {text!r} has characters {unknown} unknown to the tokenizer")
        return [i + 1 for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._sp.decode([i - 1 for i in ids if i != 0]))

    def unknown_chars(self, text: str) -> set[str]:
        return {c for c in text if c != " " and c not in self._known}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self._proto}


def train_tokenizer(kind: str, texts: Sequence[str], vocab_size: int = 256) -> Tokenizer:
    if kind == "char":
        return CharTokenizer.train(texts)
    if kind in ("bpe", "unigram"):
        return SentencePieceTokenizer.train(texts, vocab_size, kind)
    raise AsrkitError(f"unknown tokenizer.kind {kind!r}; valid kinds: char, bpe, unigram")


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    kind = data.get("kind")
    if kind == "char":
        return CharTokenizer(list(data["chars"]))
    if kind in ("bpe", "unigram"):
        return SentencePieceTokenizer(bytes(data["model"]), str(kind))
    raise AsrkitError(f"checkpoint has an unknown tokenizer kind {kind!r}")


def find_unencodable(tokenizer: Tokenizer, utts: Iterable[Utterance]) -> dict[str, list[str]]:
    """{character: [utterance ids]} for every character the tokenizer cannot encode."""
    bad: dict[str, list[str]] = defaultdict(list)
    for utt in utts:
        for ch in tokenizer.unknown_chars(utt.text):
            bad[ch].append(utt.id)
    return dict(bad)


def describe_unencodable(bad: dict[str, list[str]], limit: int = 5) -> str:
    """One readable line: "'é' in utt1, utt2 (+3 more); 'ß' in utt9"."""
    parts = []
    for ch, ids in sorted(bad.items(), key=lambda kv: -len(kv[1])):
        more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
        parts.append(f"{ch!r} in {', '.join(ids[:limit])}{more}")
    return "; ".join(parts)

