"""Word n-gram language models: build with KenLM's `lmplz` / `build_binary`, load for CTC beam search.

The text of an LM goes through `normalize_text`, the function that normalised the transcripts, so the LM's
words are spelled like the model's output. `kenlm` and `pyctcdecode` (the `lm` extra) are imported here
and nowhere else, lazily, with an install hint.

Files of an LM built to `OUT` (a stem; a trailing .arpa / .bin is dropped):
    OUT.arpa           the ARPA text model (lmplz)
    OUT.bin            the KenLM binary (build_binary): what `--lm` should point at, it loads fastest
    OUT.unigrams.txt   its words, one a line: pyctcdecode's list of known words
"""

from __future__ import annotations

import bisect
import gzip
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from asrkit.data.text import normalize_text
from asrkit.errors import AsrkitError

LM_EXTRA_HINT = "install the LM extra: pip install 'asrkit[lm]' (kenlm and pyctcdecode)"
KENLM_TOOLS_HINT = "run `make kenlm` (builds lmplz and build_binary into tools/kenlm/bin)"
TOOL_DIR = Path(__file__).resolve().parent.parent / "tools" / "kenlm" / "bin"  # where `make kenlm` puts them
SPECIAL_WORDS = frozenset({"<s>", "</s>", "<unk>"})
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


# ---------------------------------------------------------------------------------------------- building


def find_tool(name: str) -> Path:
    """A KenLM program (lmplz, build_binary) on PATH, else in the project's tools/kenlm/bin."""
    found = shutil.which(name)
    if found:
        return Path(found)
    local = TOOL_DIR / name
    if local.is_file() and os.access(local, os.X_OK):
        return local
    raise AsrkitError(f"KenLM's {name} was not found on PATH nor in {TOOL_DIR}; {KENLM_TOOLS_HINT}, "
                      f"or put a KenLM build's bin/ folder on PATH")


def read_lm_text(paths: Sequence[str | Path]) -> Iterator[str]:
    """Normalised sentences of text files (plain or .gz, one sentence a line) or JSONL manifests (their
    `text` fields). Empty lines are skipped."""
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise AsrkitError(f"LM text {path} not found; pass text files (.txt, .gz) or JSONL manifests")
        is_manifest = path.name.endswith((".jsonl", ".jsonl.gz", ".json"))
        opener: Any = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if is_manifest:
                        line = _manifest_text(line, f"{path}:{lineno}")
                    text = normalize_text(line)
                    if text:
                        yield text
        except (OSError, EOFError, UnicodeDecodeError) as err:
            raise AsrkitError(f"{path}: cannot read it as UTF-8 text{' (gzip)' if opener is gzip.open else ''}: "
                              f"{err}") from None


def _manifest_text(line: str, where: str) -> str:
    if not line.strip():
        return ""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise AsrkitError(f"{where}: not valid JSON ({err.msg}); a manifest has one JSON object a line") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise AsrkitError(f"{where}: no \"text\" string; LM text from a manifest is read from its text fields")
    return str(obj["text"])


@dataclass(frozen=True)
class BuiltLM:
    arpa: Path
    binary: Path
    unigrams: Path
    order: int
    sentences: int
    words: int  # running words of training text
    vocabulary: int  # distinct words

    def summary(self) -> str:
        return (f"{self.order}-gram LM from {self.sentences} sentences ({self.words} words, vocabulary "
                f"{self.vocabulary}) -> {self.binary} (+ {self.arpa.name}, {self.unigrams.name}); "
                f"decode with --lm {self.binary}")


def lm_stem(out: str | Path) -> Path:
    out = Path(out)
    return out.with_suffix("") if out.suffix in (".arpa", ".bin") else out


def build_lm(texts: Sequence[str | Path], out: str | Path, *, order: int = 4, prune: Sequence[int] = (),
             memory: str = "20%", discount_fallback: bool = True) -> BuiltLM:
    """Train a word n-gram with lmplz on normalised text, write OUT.arpa, OUT.bin and OUT.unigrams.txt.

    `prune` are lmplz's --prune counts per order (e.g. 0 1 1: drop singleton 2- and 3-grams).
    `discount_fallback` lets lmplz estimate small or artificial corpora (such as digit strings) whose
    count-of-counts break Kneser-Ney's discounts."""
    if order < 2:
        raise AsrkitError(f"--order {order} must be at least 2 (KenLM's minimum; 3 to 5 is usual for words)")
    if len(prune) > order:
        raise AsrkitError(f"--prune has {len(prune)} thresholds but the LM has order {order}; give at most one "
                          "per order, e.g. --prune 0,1,1")
    if any(p < 0 for p in prune) or list(prune) != sorted(prune):
        raise AsrkitError(f"--prune {','.join(map(str, prune))}: thresholds must be >= 0 and non-decreasing")
    lmplz, build_binary = find_tool("lmplz"), find_tool("build_binary")
    stem = lm_stem(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    arpa, binary, unigram_path = Path(f"{stem}.arpa"), Path(f"{stem}.bin"), Path(f"{stem}.unigrams.txt")
    vocab: set[str] = set()
    sentences = words = 0
    with tempfile.TemporaryDirectory(prefix="asrkit-lm-", dir=stem.parent) as tmp:
        corpus = Path(tmp) / "corpus.txt"
        with corpus.open("w", encoding="utf-8") as f:
            for sentence in read_lm_text(texts):
                tokens = sentence.split()
                vocab.update(tokens)
                sentences += 1
                words += len(tokens)
                f.write(sentence + "\n")
        if not sentences:
            raise AsrkitError(f"no text in {', '.join(map(str, texts))} after normalisation; nothing to train on")
        cmd = [str(lmplz), "-o", str(order), "-S", memory, "-T", tmp, "--text", str(corpus),
               "--arpa", str(arpa) + ".tmp"]
        if prune:
            cmd += ["--prune", *map(str, prune)]
        if discount_fallback:
            cmd.append("--discount_fallback")
        _run(cmd, "lmplz")
        os.replace(str(arpa) + ".tmp", arpa)
    _run([str(build_binary), "-s", str(arpa), str(binary) + ".tmp"], "build_binary")
    os.replace(str(binary) + ".tmp", binary)
    unigram_path.write_text("".join(w + "\n" for w in sorted(vocab)), encoding="utf-8")
    return BuiltLM(arpa, binary, unigram_path, order, sentences, words, len(vocab))


def _run(cmd: list[str], name: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join(line for line in proc.stderr.strip().splitlines()[-4:])
        raise AsrkitError(f"{name} failed (exit {proc.returncode}): {tail[:600]}; command: {' '.join(cmd)}")


# ---------------------------------------------------------------------------------------------- loading


def resolve_lm(path: str | Path) -> Path:
    """An LM file (.bin or .arpa), or the stem `asrkit lm build --out` was given."""
    path = Path(path)
    if path.is_file():
        return path
    for suffix in (".bin", ".arpa"):
        candidate = Path(f"{lm_stem(path)}{suffix}")
        if candidate.is_file():
            return candidate
    raise AsrkitError(f"language model {path} not found; build one with `asrkit lm build TEXT... --out {path}` "
                      "or pass the .bin / .arpa file")


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


def unigram_words(words: Iterable[str]) -> list[str]:
    return sorted({w for w in words if w not in SPECIAL_WORDS})


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
