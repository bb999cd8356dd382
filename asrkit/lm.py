"""Word n-gram language models for CTC beam search: find an LM file and its words, check them against the
tokenizer, load it (KenLM, flashlight-text's KenLM), score words. Building one: asrkit.lm_build. Also the unit
LMs (over a model's own tokens) of the attention decoder's shallow fusion, and `load_fusion_lm`: the LM a model's
`decode` takes, loaded once outside the model.

`kenlm`, `pyctcdecode` and `flashlight-text` (the `lm` extra) are imported here and nowhere else, lazily,
with an install hint. An LM's words are those of its ARPA's 1-grams, or for a binary of STEM.unigrams.txt
(or STEM.arpa) beside it.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from asrkit.errors import AsrkitError
from asrkit.lm_files import SPECIAL_WORDS, lm_stem, unigram_words

if TYPE_CHECKING:
    from asrkit.data.tokenizer import Tokenizer

LM_EXTRA_HINT = "install the LM extra: pip install 'asrkit[lm]' (kenlm, pyctcdecode, flashlight-text)"
MAX_BAD_WORD_FRACTION = 0.1  # an LM with more words the tokenizer cannot spell is refused


# ---------------------------------------------------------------------------------------------- packages


def require_kenlm() -> ModuleType:
    try:
        import kenlm
    except ImportError:
        raise AsrkitError(f"decoding with a language model needs the kenlm module; {LM_EXTRA_HINT}") from None
    return kenlm


def require_pyctcdecode() -> ModuleType:
    try:
        import logging

        import pyctcdecode
    except ImportError:
        raise AsrkitError(f"beam-search decoding needs the pyctcdecode module; {LM_EXTRA_HINT}") from None
    # asrkit checks the vocabulary itself (check_vocabulary) and says so in its own words; pyctcdecode's
    # warnings about small or unusual vocabularies would only repeat it on every load.
    logging.getLogger("pyctcdecode").setLevel(logging.ERROR)
    return pyctcdecode


def flashlight_available() -> bool:
    from importlib.util import find_spec

    try:
        return find_spec("flashlight.lib.text") is not None
    except ImportError:
        return False


def require_flashlight() -> SimpleNamespace:
    """flashlight-text's decoder and dictionary classes (the compiled lexicon beam search)."""
    try:
        from flashlight.lib.text import decoder, dictionary
    except ImportError:
        raise AsrkitError(f"the flashlight backend needs the flashlight-text module; {LM_EXTRA_HINT}") from None
    return SimpleNamespace(Dictionary=dictionary.Dictionary, Trie=decoder.Trie, SmearingMode=decoder.SmearingMode,
                           LexiconDecoder=decoder.LexiconDecoder, LexiconDecoderOptions=decoder.LexiconDecoderOptions,
                           CriterionType=decoder.CriterionType)



# ---------------------------------------------------------------------------------------------- loading


def resolve_lm(path: str | Path) -> Path:
    """An LM file (.bin, .arpa, or a gzipped .arpa.gz, converted once to a binary: asrkit.lm_build), or
    the stem `asrkit lm build --out` was given."""
    path = Path(path)
    if not path.is_file():
        for suffix in (".bin", ".arpa", ".arpa.gz"):
            candidate = Path(f"{lm_stem(path)}{suffix}")
            if candidate.is_file():
                path = candidate
                break
        else:
            raise AsrkitError(f"language model {path} not found; build one with `asrkit lm build TEXT... --out "
                              f"{path}` or pass the .bin / .arpa / .arpa.gz file")
    if path.name.endswith(".arpa.gz"):
        from asrkit.lm_build import binary_of_gzipped_arpa

        return binary_of_gzipped_arpa(path)
    return path


def read_unigrams(lm_path: Path) -> list[str]:
    """Words of an LM: from the ARPA's 1-grams, or for a binary from STEM.unigrams.txt or STEM.arpa beside it."""
    if lm_path.suffix == ".arpa" or _looks_like_arpa(lm_path):
        return _arpa_unigrams(lm_path)
    stem = lm_stem(lm_path)
    sidecar, arpa = Path(f"{stem}.unigrams.txt"), Path(f"{stem}.arpa")
    if sidecar.is_file():
        return [w for w in sidecar.read_text(encoding="utf-8").split() if w not in SPECIAL_WORDS]
    if arpa.is_file():
        return _arpa_unigrams(arpa)
    raise AsrkitError(f"{lm_path}: its word list was not found ({sidecar.name} or {arpa.name} beside it); "
                      "keep the files `asrkit lm build` writes together, or write one word a line to "
                      f"{sidecar}")


def _looks_like_arpa(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(64).lstrip()
    except OSError:
        return False
    return head.startswith(b"\\data\\")


def _arpa_unigrams(arpa: Path) -> list[str]:
    words: list[str] = []
    in_unigrams = False
    try:
        with arpa.open(encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line == "\\1-grams:":
                    in_unigrams = True
                elif in_unigrams and line.startswith("\\"):
                    break
                elif in_unigrams and line:
                    parts = line.split("\t") if "\t" in line else line.split()
                    if len(parts) >= 2 and parts[1] not in SPECIAL_WORDS:
                        words.append(parts[1])
    except (OSError, UnicodeDecodeError) as err:
        raise AsrkitError(f"{arpa}: not a readable ARPA file ({err}); rebuild it with `asrkit lm build`") from None
    if not in_unigrams:
        raise AsrkitError(f"{arpa}: no \\1-grams: section, not an ARPA language model; rebuild it with "
                          "`asrkit lm build`")
    return words


@lru_cache(maxsize=4)
def load_kenlm(path: str) -> Any:
    """kenlm.Model of a .bin or .arpa file (cached per process: tuning and workers reuse it)."""
    kenlm = require_kenlm()
    config = kenlm.Config()
    config.show_progress = False  # kenlm's progress bar while reading an ARPA would interleave with our output
    try:
        return kenlm.Model(path, config)
    except (OSError, RuntimeError, ValueError) as err:
        raise AsrkitError(f"{path}: not a readable KenLM model ({_kenlm_reason(str(err))}); rebuild it with "
                          "`asrkit lm build` (or KenLM's build_binary)") from None


def load_flashlight_lm(path: str, word_dict: Any) -> Any:
    """flashlight-text's own KenLM wrapper over `path`, its words numbered by `word_dict` (it loads the file
    itself; KenLM's progress bar while reading an ARPA is silenced)."""
    from flashlight.lib.text.decoder.kenlm import KenLM

    try:
        with _quiet_stderr():
            return KenLM(path, word_dict)
    except (OSError, RuntimeError, ValueError) as err:
        raise AsrkitError(f"{path}: not a readable KenLM model ({_kenlm_reason(str(err))}); rebuild it with "
                          "`asrkit lm build` (or KenLM's build_binary)") from None


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null (C++ code writing to stderr), restore it after."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _kenlm_reason(message: str) -> str:
    """The useful part of a KenLM exception: what follows "threw SomeException." (the C++ signature before it
    says nothing to a user)."""
    message = " ".join(message.split())
    head, sep, tail = message.partition(" threw ")
    if sep:
        reason = tail.partition(". ")[2] or tail
        return reason.rstrip(")")[:300]
    return message[:300] or "unknown error"


def check_vocabulary(words: Sequence[str], tokenizer_vocab: Sequence[str], lm_path: str | Path) -> int:
    """Refuse an LM whose words the tokenizer cannot spell (other normalisation, case, alphabet).

    Returns how many words are unspellable (those are harmless when few: the decoder can never reach them)."""
    if not words:
        raise AsrkitError(f"{lm_path}: the language model has no words; rebuild it from text with `asrkit lm build`")
    pieces = [p.replace("\u2581", "") for p in tokenizer_vocab[1:]]
    alphabet = {c for p in pieces for c in p} - {" "}
    bad = [w for w in words if any(c not in alphabet for c in w)]
    if len(bad) > MAX_BAD_WORD_FRACTION * len(words):
        chars = sorted({c for w in bad for c in w if c not in alphabet})
        shown = ", ".join(repr(c) for c in chars[:12])
        raise AsrkitError(f"{lm_path}: {len(bad)} of {len(words)} words of the language model use characters the "
                          f"model's tokenizer does not have ({shown}; e.g. {', '.join(bad[:3])}); the LM must be "
                          "built from text normalised like the transcripts: rebuild it with `asrkit lm build`")
    return len(bad)



# ---------------------------------------------------------------------------------------------- scoring

LOG10 = 2.302585092994046  # KenLM scores are log10; the decoder adds natural logs


class WordLM:
    """A KenLM model and its word list, as the beam search asks for them: the log10 score of a word after a
    state, the end of sentence, and whether a partial word starts any known word.

    A word outside the list gets `unk_offset` (log10) added, as pyctcdecode does."""

    def __init__(self, path: str | Path, vocab: Sequence[str] | None = None, unk_offset: float = -10.0) -> None:
        path = resolve_lm(path)
        self.path = path
        self.words = unigram_words(read_unigrams(path))
        if vocab is not None:
            check_vocabulary(self.words, vocab, path)
        self.model = load_kenlm(str(path))
        self.order: int = int(self.model.order)
        self.unk_offset = unk_offset
        self._known = frozenset(self.words)
        self._state_cls = require_kenlm().State
        self._prefix_cache: dict[str, float | None] = {}
        self._unigrams: np.ndarray | None = None

    def start(self) -> Any:
        state = self._state_cls()
        self.model.BeginSentenceWrite(state)
        return state

    def score(self, state: Any, word: str) -> tuple[float, Any]:
        """log10 p(word | state) (+ unk_offset for an unknown word) and the state after it."""
        out = self._state_cls()
        logp = self.model.BaseScore(state, word, out)
        if word not in self._known:
            logp += self.unk_offset
        return logp, out

    def end(self, state: Any) -> float:
        return float(self.model.BaseScore(state, "</s>", self._state_cls()))

    def is_prefix(self, partial: str) -> bool:
        """Does some known word start with `partial`?"""
        return self.lookahead(partial) is not None

    def lookahead(self, partial: str) -> float | None:
        """log10 of the likeliest unigram among the known words that start with `partial` (LM look-ahead for
        a word being spelt), None when no known word does. Binary search in the sorted words, cached."""
        if partial in self._prefix_cache:
            return self._prefix_cache[partial]
        if len(self._prefix_cache) > 500_000:
            self._prefix_cache.clear()
        if len(partial) > 1 and self._prefix_cache.get(partial[:-1], 0.0) is None:
            best = None  # no known word starts with a shorter prefix of it either
        else:
            lo = bisect.bisect_left(self.words, partial)
            hi = bisect.bisect_left(self.words, partial + "\U0010ffff", lo)
            best = float(self._unigram_scores()[lo:hi].max()) if hi > lo else None
        self._prefix_cache[partial] = best
        return best

    def _unigram_scores(self) -> np.ndarray:
        if self._unigrams is None:
            self._unigrams = np.array([self.model.score(w, bos=False, eos=False) for w in self.words],
                                      dtype=np.float32)
        return self._unigrams


# ---------------------------------------------------------------------------------------------- unit LMs

SPACE_WORD = "<sp>"  # the space of a character tokenizer, as a word of a unit LM


def unit_word(piece: str) -> str:
    """A token as a word of a unit LM: the space of a character tokenizer is SPACE_WORD, other pieces as is."""
    return SPACE_WORD if piece == " " else piece


def unit_sentence(tokenizer: Tokenizer, text: str) -> str:
    """A transcript as a line of text for a unit LM (e.g. `lmplz -o 8 --discount_fallback < units.txt`)."""
    return " ".join(unit_word(tokenizer.vocab[i]) for i in tokenizer.encode(text))


class UnitLM:
    """A KenLM n-gram whose words are the model's tokens (see `unit_word`), for the attention decoder's shallow
    fusion; id 0 scores as the end of sentence."""

    def __init__(self, path: str | Path, vocab: Sequence[str]) -> None:
        self.path = resolve_lm(path)
        self.model = load_kenlm(str(self.path))
        self.words = ["</s>", *(unit_word(p) for p in vocab[1:])]
        if not any(w in self.model for w in self.words[1:]):
            raise AsrkitError(f"{self.path}: none of the model's tokens ({', '.join(self.words[1:6])}, ...) is a word "
                              "of this LM; a fusion LM must be built over the same units (asrkit.lm.unit_sentence "
                              "writes its text)")
        self._state = require_kenlm().State

    def start(self) -> Any:
        state = self._state()
        self.model.BeginSentenceWrite(state)
        return state

    def score(self, state: Any, token: int) -> tuple[float, Any]:
        """Natural-log probability of the token after `state`, and the state after it."""
        out = self._state()
        return self.model.BaseScore(state, self.words[token], out) * LOG10, out


def load_fusion_lm(path: str, units: str, vocab: Sequence[str]) -> UnitLM | WordLM | None:
    """The LM a model's `decode` takes as `lm` (ASRModel.fusion_lm names its units), loaded once: "tokens" a
    UnitLM, "words" a WordLM; None without a path or for a model that takes none."""
    if not path or not units:
        return None
    if units == "tokens":
        return UnitLM(path, vocab)
    if units == "words":
        return WordLM(path, vocab)
    raise ValueError(f"unknown LM units {units!r}; valid: tokens, words")
