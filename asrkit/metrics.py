"""Edit distance and WER / CER accumulators."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def edit_distance(ref: Sequence[object], hyp: Sequence[object]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    if len(ref) < len(hyp):
        ref, hyp = hyp, ref
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


@dataclass
class ErrorRate:
    """Accumulates errors over reference units; `rate` is errors / reference length (can exceed 1)."""

    errors: int = 0
    total: int = 0

    def add(self, ref: Sequence[object], hyp: Sequence[object]) -> int:
        errs = edit_distance(ref, hyp)
        self.errors += errs
        self.total += len(ref)
        return errs

    @property
    def rate(self) -> float:
        return self.errors / max(self.total, 1)  # an empty reference: every inserted unit is an error


def wer(ref: str, hyp: str) -> float:
    acc = ErrorRate()
    acc.add(ref.split(), hyp.split())
    return acc.rate


def cer(ref: str, hyp: str) -> float:
    acc = ErrorRate()
    acc.add(list(ref), list(hyp))
    return acc.rate
