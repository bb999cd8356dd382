"""Inference: audio files or a manifest -> features -> model.decode -> hypotheses, text / JSONL, WER."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from asrkit.checkpoint import Loaded, load_checkpoint
from asrkit.data.audio import audio_info, load_audio
from asrkit.data.loader import Item, collate
from asrkit.data.manifest import read_manifest
from asrkit.errors import AsrkitError, AudioError
from asrkit.metrics import ErrorRate
from asrkit.records import Hypothesis, Utterance


@dataclass
class Failure:
    path: str
    reason: str


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


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AsrkitError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    return torch.device(name)


def decode_utterances(loaded: Loaded, utts: Sequence[Utterance], *, batch_size: int = 16,
                      device: torch.device | None = None,
                      failures: list[Failure] | None = None) -> Iterator[tuple[Utterance, Hypothesis]]:
    """Decode in batches of similar duration; yields in input order. An unreadable file is recorded in
    `failures` (when given, else raised) and the rest go on."""
    device = device or next(loaded.model.parameters()).device
    order = sorted(range(len(utts)), key=lambda i: utts[i].duration)
    results: dict[int, Hypothesis] = {}
    next_out = 0
    for start in range(0, len(order), batch_size):
        items, idx = [], []
        for i in order[start : start + batch_size]:
            try:
                wave = load_audio(utts[i].audio_filepath, loaded.featurizer.cfg.sample_rate)
            except AudioError as err:
                if failures is None:
                    raise
                failures.append(Failure(err.path, err.reason))
                results[i] = Hypothesis("")
                continue
            items.append(Item(utts[i].id, loaded.featurizer(wave), torch.zeros(0, dtype=torch.long), utts[i].text))
            idx.append(i)
        if items:
            batch = collate(items).to(device)
            hyps = loaded.model.decode(batch.feats, batch.feat_lens, loaded.tokenizer,
                                       frame_shift=loaded.featurizer.frame_shift)
            results.update(zip(idx, hyps, strict=True))
        while next_out in results:
            yield utts[next_out], results.pop(next_out)
            next_out += 1


def score(pairs: Sequence[tuple[Utterance, Hypothesis]]) -> EvalResult:
    """WER and CER over (reference utterance, hypothesis) pairs, plus per-utterance counts."""
    words, chars = ErrorRate(), ErrorRate()
    scored = []
    for utt, hyp in pairs:
        w = words.add(utt.text.split(), hyp.text.split())
        c = chars.add(list(utt.text), list(hyp.text))
        scored.append(Scored(utt.id, utt.text, hyp.text, w, len(utt.text.split()), c, len(utt.text)))
    return EvalResult(words.rate, chars.rate, scored)


def files_to_utterances(paths: Sequence[str | Path]) -> tuple[list[Utterance], list[Failure]]:
    utts, failures = [], []
    for n, p in enumerate(paths):
        try:
            duration, _ = audio_info(p)
        except AudioError as err:
            failures.append(Failure(err.path, err.reason))
            continue
        utts.append(Utterance(f"{n}", str(p), duration, ""))
    return utts, failures


def transcribe(model: str | Path, audio: Sequence[str | Path], *, device: str = "auto",
               batch_size: int = 16) -> tuple[list[tuple[str, Hypothesis]], list[Failure]]:
    """Transcribe audio files. Returns [(path, hypothesis)] in input order and the files that failed."""
    loaded = load_checkpoint(model, pick_device(device))
    utts, failures = files_to_utterances(audio)
    results = [(u.audio_filepath, h) for u, h in decode_utterances(loaded, utts, batch_size=batch_size,
                                                                    failures=failures)]
    failed = {f.path for f in failures}
    return [(p, h) for p, h in results if p not in failed], failures


def hypothesis_json(path: str, hyp: Hypothesis) -> str:
    return json.dumps({"audio_filepath": path, "text": hyp.text, "score": round(hyp.score, 4),
                       "words": [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)}
                                 for w in hyp.words]}, ensure_ascii=False)


def evaluate(model: str | Path, manifest: str | Path, *, report: str | Path | None = None,
             device: str = "auto", batch_size: int = 16) -> EvalResult:
    """Decode a manifest and score it; writes a JSON report (overall + per utterance) when asked."""
    loaded = load_checkpoint(model, pick_device(device))
    utts = read_manifest(manifest)
    failures: list[Failure] = []
    pairs = list(decode_utterances(loaded, utts, batch_size=batch_size, failures=failures))
    failed = {f.path for f in failures}
    result = score([(u, h) for u, h in pairs if u.audio_filepath not in failed])
    result.failures = failures
    if report is not None:
        write_report(report, result, model=str(loaded.path), manifest=str(manifest))
    return result


def write_report(path: str | Path, result: EvalResult, **meta: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**meta, "wer": result.wer, "cer": result.cer, "utterances": [asdict(s) for s in result.utterances],
            "failures": [asdict(f) for f in result.failures]}
    path.write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
