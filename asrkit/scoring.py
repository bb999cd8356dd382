"""Scoring without torch: word and character error rates of (reference, hypothesis) pairs, per utterance and
overall, and the JSON report that `asrkit evaluate` writes. Used by asrkit.evaluate (checkpoints), asrkit.onnx.runtime
(exported models), training's dev pass and the benchmarks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from asrkit.io import atomic_write
from asrkit.metrics import ErrorRate
from asrkit.records import Failure, Hypothesis, Utterance


@dataclass
class Scored:
    id: str
    ref: str
    hyp: str
    word_errors: int
    words: int
    char_errors: int
    chars: int


@dataclass
class EvalResult:
    wer: float
    cer: float
    utterances: list[Scored] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    decoding: str = "greedy"  # how it was decoded, e.g. "beam 32, LM alpha 0.5 beta 1" or LAS's "beam 4 + CTC 0.3"


def score(pairs: Sequence[tuple[Utterance, Hypothesis]]) -> EvalResult:
    """WER and CER over (reference utterance, hypothesis) pairs, plus per-utterance counts."""
    words, chars = ErrorRate(), ErrorRate()
    scored = []
    for utt, hyp in pairs:
        w = words.add(utt.text.split(), hyp.text.split())
        c = chars.add(list(utt.text), list(hyp.text))
        scored.append(Scored(utt.id, utt.text, hyp.text, w, len(utt.text.split()), c, len(utt.text)))
    return EvalResult(words.rate, chars.rate, scored)


def write_report(path: str | Path, result: EvalResult, **meta: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**meta, "wer": result.wer, "cer": result.cer, "utterances": [asdict(s) for s in result.utterances],
            "failures": [{"path": f.path, "reason": f.reason, "id": f.id} for f in result.failures]}
    atomic_write(path, json.dumps(body, indent=1, ensure_ascii=False) + "\n")
