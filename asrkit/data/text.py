"""Text normalisation: named normalisers, applied once at prepare time and again (the same one) to LM text.

`NORMALISERS` maps a name to a normaliser: raw text -> (normalised text, None), or ("", why the text cannot be
used). A prepared data folder records the name of the one its transcripts went through in `normaliser.json`
beside the manifests (`write_normaliser`, called by prepare.common.finish); training copies it into the config
(tokenizer.normaliser), so a checkpoint carries it; `asrkit lm build` reads it beside a manifest and normalises
the LM text the same way.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from asrkit.errors import AsrkitError
from asrkit.io import atomic_write

NORMALISER_FILE = "normaliser.json"  # beside the manifests: {"normaliser": NAME}
DEFAULT = "default"

_SPACES = re.compile(r"\s+")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u02bc": "'"})


def normalize_text(text: str) -> str:
    """The "default" normaliser: NFKC, lower case, letters / digits / apostrophes kept, everything else a space.

    >>> normalize_text("  Hello, World!  It\u2019s 3 o'clock. ")
    "hello world it's 3 o'clock"
    """
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    chars = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch == "'" or cat[0] in ("L", "N") or cat == "Mn" or cat == "Mc":
            chars.append(ch)
        else:
            chars.append(" ")
    words = [w.strip("'") for w in _SPACES.split("".join(chars))]
    return " ".join(w for w in words if w)


def _default(text: str) -> tuple[str, str | None]:
    return normalize_text(text), None


_CV_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u02bc": "'", "\u00b4": "'"})


@dataclass(frozen=True)
class LanguageRule:
    """Common Voice's normalisation of one language: NFKC, typographic apostrophes to `'`, lower case, punctuation
    and symbols to spaces, apostrophes kept inside words; text with digits (their spoken form is unknown) or
    letters outside `letters` is refused."""

    language: str  # named in the reason a sentence is refused
    letters: str | None  # the language's letters after lower-casing (None: any Unicode letter)
    fold_accents: bool = False  # drop diacritics first (café -> cafe) so loanwords fit `letters`
    casefold: bool = False  # str.casefold instead of str.lower
    spell: tuple[tuple[str, str], ...] = ()  # letters written out after lower-casing (æ -> ae)

    def __call__(self, text: str) -> tuple[str, str | None]:
        text = unicodedata.normalize("NFKC", text).translate(_CV_APOSTROPHES)
        text = text.casefold() if self.casefold else text.lower()
        for letter, spelled in self.spell:
            text = text.replace(letter, spelled)
        if self.fold_accents:
            decomposed = unicodedata.normalize("NFKD", text)
            text = unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c)))
        chars: list[str] = []
        foreign: set[str] = set()
        digits: set[str] = set()
        for ch in text:
            cat = unicodedata.category(ch)
            if ch == "'":
                chars.append(ch)
            elif cat[0] in "LM" and (self.letters is None or ch in self.letters):
                chars.append(ch)
            elif cat[0] in "LM":
                foreign.add(ch)
            elif cat[0] == "N":
                digits.add(ch)
            else:
                chars.append(" ")
        if foreign:
            return "", f"letters outside the {self.language} alphabet: {' '.join(sorted(foreign))}"
        if digits:
            return "", f"digits {' '.join(sorted(digits))} in the text (their spoken form is unknown)"
        words = [w.strip("'") for w in "".join(chars).split()]
        return " ".join(w for w in words if w), None


Normaliser = Callable[[str], tuple[str, str | None]]

# Every named normaliser (asrkit.config.NORMALISERS lists the same names, for the config's check).
NORMALISERS: dict[str, Normaliser] = {
    DEFAULT: _default,  # LibriSpeech, AN4, FSDD, folders of audio: `normalize_text`
    "commonvoice": LanguageRule("any", None),  # Common Voice languages without their own rule: any letter
    "commonvoice-de": LanguageRule("de", string.ascii_lowercase + "äöüß"),
    "commonvoice-en": LanguageRule("en", string.ascii_lowercase, fold_accents=True, casefold=True,
                                   spell=(("æ", "ae"), ("œ", "oe"))),  # café -> cafe, æsthetics -> aesthetics
    "commonvoice-es": LanguageRule("es", string.ascii_lowercase + "áéíñóúü"),
    "commonvoice-fr": LanguageRule("fr", string.ascii_lowercase + "àâæçéèêëîïôœùûüÿ"),
    "commonvoice-it": LanguageRule("it", string.ascii_lowercase + "àèéìíîòóùú"),
}


def get_normaliser(name: str) -> Normaliser:
    """The normaliser called `name`; an unknown name is an error listing the valid ones."""
    if name not in NORMALISERS:
        raise AsrkitError(f"unknown normaliser {name!r}; valid: {', '.join(NORMALISERS)}")
    return NORMALISERS[name]


def write_normaliser(data_dir: Path, name: str) -> Path:
    """Record in DATA/normaliser.json which normaliser the manifests' text went through."""
    get_normaliser(name)
    return atomic_write(Path(data_dir) / NORMALISER_FILE, json.dumps({"normaliser": name}) + "\n")


def read_normaliser(data_dir: Path) -> str | None:
    """The normaliser recorded in DATA/normaliser.json, or None where there is none (hand-made manifests)."""
    path = Path(data_dir) / NORMALISER_FILE
    if not path.is_file():
        return None
    try:
        name = json.loads(path.read_text(encoding="utf-8"))["normaliser"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AsrkitError(f"{path}: cannot read the normaliser's name ({err}); expected "
                          '{"normaliser": "default"}: fix or delete it') from None
    if not isinstance(name, str) or name not in NORMALISERS:
        raise AsrkitError(f"{path}: unknown normaliser {name!r}; valid: {', '.join(NORMALISERS)}")
    return name
