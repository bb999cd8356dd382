"""Scoring: decode a manifest with any model (asrkit.inference; an exported one with asrkit.onnx.runtime), word
and character error rates, and the JSON report (overall and per utterance). torch is imported only to decode a
checkpoint."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from asrkit.data.manifest import read_manifest
from asrkit.io import atomic_write
from asrkit.longform import DEFAULT_SEGMENT_SECONDS
from asrkit.metrics import ErrorRate
from asrkit.onnx.bundle import is_exported
from asrkit.records import Failure, Hypothesis, Utterance
from asrkit.request import DecodeRequest
from asrkit.search import SearchOptions, ctc_beam, describe


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


def evaluate(model: str | Path, manifest: str | Path, *, report: str | Path | None = None, device: str = "auto",
             batch_size: int = 16, decode: SearchOptions | DecodeRequest | None = None, workers: int = 0,
             segment_seconds: float = DEFAULT_SEGMENT_SECONDS) -> EvalResult:
    """Decode a manifest and score it; writes a JSON report (overall + per utterance) when asked. `decode`: the
    search (None: the checkpoint's [decode]; a DecodeRequest: the command line's, asrkit.inference.choose_search).
    An exported model (asrkit.onnx) runs on ONNX Runtime."""
    if is_exported(model):
        from asrkit.onnx.runtime import evaluate as on_onnx

        return on_onnx(model, manifest, report=report, device=device, batch_size=batch_size, decode=decode,
                       workers=workers, segment_seconds=segment_seconds)
    from asrkit.checkpoint import load_checkpoint, pick_device
    from asrkit.inference import decode_utterances, prepare_search, search_of

    loaded = load_checkpoint(model, pick_device(device))
    utts = read_manifest(manifest)
    search, lm = prepare_search(loaded, search_of(loaded, decode))
    failures: list[Failure] = []
    pairs = list(decode_utterances(loaded, utts, search=search, lm=lm, batch_size=batch_size, failures=failures,
                                   workers=workers, segment_seconds=segment_seconds))
    failed = {f.id for f in failures}
    result = score([(u, h) for u, h in pairs if u.id not in failed])
    result.failures = failures
    result.decoding = describe(search, loaded.model.objective)
    if report is not None:  # a CTC beam search is reported with all its settings (the LM, alpha, beta ...)
        settings = search.to_json() if ctc_beam(search, loaded.model.objective) else result.decoding
        write_report(report, result, model=str(loaded.path), manifest=str(manifest), decoding=settings)
    return result


def write_report(path: str | Path, result: EvalResult, **meta: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**meta, "wer": result.wer, "cer": result.cer, "utterances": [asdict(s) for s in result.utterances],
            "failures": [{"path": f.path, "reason": f.reason, "id": f.id} for f in result.failures]}
    atomic_write(path, json.dumps(body, indent=1, ensure_ascii=False) + "\n")
