"""Audio files -> transcripts: each file an utterance, decoded by asrkit.inference with the search asked for (or,
for a model exported by `asrkit export`, by asrkit.onnx.runtime on ONNX Runtime); the JSONL line of a hypothesis;
attention pictures. torch is imported only to decode a checkpoint."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asrkit.data.audio import files_to_utterances
from asrkit.errors import AsrkitError
from asrkit.longform import DEFAULT_SEGMENT_SECONDS
from asrkit.onnx.bundle import is_exported
from asrkit.records import Failure, Hypothesis
from asrkit.request import DecodeRequest
from asrkit.search import SearchOptions


def transcribe_nbest(model: str | Path, audio: Sequence[str | Path], *, device: str = "auto",
                     batch_size: int = 16, decode: SearchOptions | DecodeRequest | None = None, workers: int = 0,
                     segment_seconds: float = DEFAULT_SEGMENT_SECONDS,
                     ) -> tuple[list[tuple[str, list[Hypothesis]]], list[Failure]]:
    """Transcribe audio files: [(path, n-best hypotheses, best first)] in input order, and the files that failed.
    `decode`: the search (None: the checkpoint's [decode]; a DecodeRequest: the command line's). Files longer than
    `segment_seconds` are cut at pauses and stitched (one hypothesis, timings from the file's start). An exported
    model (asrkit.onnx) runs on ONNX Runtime."""
    if is_exported(model):
        from asrkit.onnx.runtime import transcribe_nbest as on_onnx

        return on_onnx(model, audio, device=device, batch_size=batch_size, decode=decode, workers=workers,
                       segment_seconds=segment_seconds)
    from asrkit.checkpoint import load_checkpoint, pick_device
    from asrkit.inference import decode_nbest, search_of

    loaded = load_checkpoint(model, pick_device(device))
    search = search_of(loaded, decode)
    utts, failures = files_to_utterances(audio)
    results = [(u.audio_filepath, h) for u, h in decode_nbest(loaded, utts, search=search, batch_size=batch_size,
                                                               failures=failures, workers=workers,
                                                               segment_seconds=segment_seconds)]
    failed = {f.path for f in failures}
    return [(p, h) for p, h in results if p not in failed], failures


def transcribe(model: str | Path, audio: Sequence[str | Path], *, device: str = "auto", batch_size: int = 16,
               decode: SearchOptions | DecodeRequest | None = None, workers: int = 0,
               segment_seconds: float = DEFAULT_SEGMENT_SECONDS) -> tuple[list[tuple[str, Hypothesis]], list[Failure]]:
    """Transcribe audio files. Returns [(path, best hypothesis)] in input order and the files that failed."""
    results, failures = transcribe_nbest(model, audio, device=device, batch_size=batch_size, decode=decode,
                                         workers=workers, segment_seconds=segment_seconds)
    return [(p, hyps[0]) for p, hyps in results], failures


def hypothesis_json(path: str, hyp: Hypothesis, alternatives: Sequence[Hypothesis] = ()) -> str:
    """One JSONL line: text, score, word timings in seconds, and the n-best list when there is more than one."""
    body: dict[str, Any] = {"audio_filepath": path, "text": hyp.text, "score": round(hyp.score, 4),
                            "words": [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)}
                                      for w in hyp.words]}
    if alternatives:
        body["nbest"] = [{"text": h.text, "score": round(h.score, 4)} for h in alternatives]
    return json.dumps(body, ensure_ascii=False)


def plot_alignments(model: str | Path, audio: Sequence[str | Path], out_dir: str | Path, *, device: str = "auto",
                    batch_size: int = 16, decode: SearchOptions | DecodeRequest | None = None,
                    ) -> tuple[list[Path], list[Failure]]:
    """Write OUT_DIR/<audio stem>.png for each file: the attention alignment of its best hypothesis (output
    tokens down, encoder frames across). Needs a model with attention (`attention_weights`, e.g. las)."""
    if is_exported(model):
        raise AsrkitError(f"{model} is an exported ONNX model, without attention to plot; --plot-attention needs "
                          "the checkpoint of an attention model (model.family = \"las\")")
    from asrkit.checkpoint import load_checkpoint, pick_device
    from asrkit.inference import load_batches, prepare_search, search_of
    from asrkit.models.attention_plot import plot_attention, token_labels

    loaded = load_checkpoint(model, pick_device(device))
    search, lm = prepare_search(loaded, search_of(loaded, decode))
    out_dir = Path(out_dir)
    utts, failures = files_to_utterances(audio)
    device_ = next(loaded.model.parameters()).device
    written: list[Path] = []
    used: set[str] = set()
    for idx, batch in load_batches(loaded, utts, batch_size, device_, failures):
        if batch is None:
            continue
        aligned = loaded.model.attention_weights(batch.feats, batch.feat_lens, search, lm, tokenizer=loaded.tokenizer)
        if aligned is None:
            raise AsrkitError(f"{loaded.path}: a {loaded.config.model.family} model has no attention to plot; "
                              "--plot-attention needs an attention model (model.family = \"las\")")
        for i, (hyp, weights) in zip(idx, aligned, strict=True):
            stem = Path(utts[i].audio_filepath).stem
            name = stem if stem not in used else f"{stem}-{i}"
            used.add(name)
            labels = token_labels(hyp.tokens, loaded.tokenizer, ended=weights.shape[0] > len(hyp.tokens))
            written.append(plot_attention(weights, labels, out_dir / f"{name}.png"))
    return written, failures
