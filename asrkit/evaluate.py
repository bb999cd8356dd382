"""Evaluation: decode a manifest with any model (asrkit.inference; an exported one with asrkit.onnx.runtime) and
score it (asrkit.scoring: word and character error rates, the JSON report). torch is imported only to decode a
checkpoint."""

from __future__ import annotations

from pathlib import Path

from asrkit.data.manifest import read_manifest
from asrkit.longform import DEFAULT_SEGMENT_SECONDS
from asrkit.onnx.bundle import is_exported
from asrkit.records import Failure
from asrkit.request import DecodeRequest
from asrkit.scoring import EvalResult, Scored, score, write_report
from asrkit.search import SearchOptions, ctc_beam, describe

__all__ = ["EvalResult", "Scored", "evaluate", "score", "write_report"]  # scoring's names, kept importable from here


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
