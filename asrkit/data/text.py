"""Text normalisation, applied once at prepare time and again (the same function) to LM text."""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u02bc": "'"})


def normalize_text(text: str) -> str:
    """NFKC, lower case, letters / digits / apostrophes kept, everything else a space.

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
