"""LM text and LM file names, shared by asrkit.lm (loading a model), asrkit.lm_build (building one) and
asrkit.lm_text (held-out overlap): the sentences of text files and manifests through a text normaliser, the
normaliser they record, an LM's file stem and its word list. No torch and no KenLM here."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asrkit.data.text import DEFAULT, NORMALISER_FILE, get_normaliser, normalize_text, read_normaliser
from asrkit.errors import AsrkitError

SPECIAL_WORDS = frozenset({"<s>", "</s>", "<unk>"})


def lm_stem(out: str | Path) -> Path:
    out = Path(out)
    return out.with_suffix("") if out.suffix in (".arpa", ".bin") else out


def unigram_words(words: Iterable[str]) -> list[str]:
    return sorted({w for w in words if w not in SPECIAL_WORDS})


def is_manifest(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz", ".json"))


def lm_normaliser(paths: Sequence[str | Path], name: str | None = None) -> str:
    """The normaliser for LM text: `name` when given (checked), else the one recorded beside the manifests among
    `paths`, else "default". Manifests that record different ones are an error."""
    if name is not None:
        get_normaliser(name)
        return name
    recorded = {folder: found for folder in dict.fromkeys(Path(p).parent for p in paths if is_manifest(Path(p)))
                if (found := read_normaliser(folder)) is not None}
    if len(set(recorded.values())) > 1:
        each = ", ".join(f"{folder / NORMALISER_FILE}: {found}" for folder, found in recorded.items())
        raise AsrkitError(f"the manifests record different text normalisers ({each}); choose one with --normaliser")
    return next(iter(recorded.values()), DEFAULT)


@dataclass
class Refused:
    """LM text lines the normaliser refused (left out): how many, and the first with its reason."""

    lines: int = 0
    first: str = ""  # "FILE:LINE: reason"


def read_lm_text(paths: Sequence[str | Path], normaliser: str = DEFAULT,
                 refused: Refused | None = None) -> Iterator[str]:
    """Sentences of text files (plain or .gz, one sentence a line) or JSONL manifests (their `text` fields),
    through the named normaliser. Empty lines are skipped; lines the normaliser refuses are skipped and counted
    in `refused`."""
    return (text for _, _, text in read_numbered_lm_text(paths, normaliser, refused))


def read_numbered_lm_text(paths: Sequence[str | Path], normaliser: str = DEFAULT,
                          refused: Refused | None = None) -> Iterator[tuple[Path, int, str]]:
    """`read_lm_text`, each sentence with its file and line number (1-based)."""
    normalise = get_normaliser(normaliser)
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise AsrkitError(f"LM text {path} not found; pass text files (.txt, .gz) or JSONL manifests")
        manifest = is_manifest(path)
        opener: Any = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if manifest:
                        line = _manifest_text(line, f"{path}:{lineno}")
                    if normaliser == DEFAULT:
                        text, problem = normalize_line(line), None
                    else:
                        text, problem = normalise(line)
                    if problem and refused is not None:
                        refused.lines += 1
                        refused.first = refused.first or f"{path}:{lineno}: {problem}"
                    if text:
                        yield path, lineno, text
        except (OSError, EOFError, UnicodeDecodeError) as err:
            raise AsrkitError(f"{path}: cannot read it as UTF-8 text{' (gzip)' if opener is gzip.open else ''}: "
                              f"{err}") from None


_NOT_ASCII_WORD = re.compile(r"[^a-z0-9']+")


def normalize_line(line: str) -> str:
    """`normalize_text`, with a regex fast path for ASCII lines (LibriSpeech's 800 M words of LM text): NFKC
    changes no ASCII, the only ASCII letters and digits are a-z, 0-9, and backquotes are apostrophes."""
    if not line.isascii():
        return normalize_text(line)
    words = (w.strip("'") for w in _NOT_ASCII_WORD.sub(" ", line.replace("`", "'").lower()).split())
    return " ".join(w for w in words if w)


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
