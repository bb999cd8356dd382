"""Inference: audio files or a manifest -> features -> model -> greedy or beam-search (n-gram LM) decoding ->
hypotheses, text / JSONL, WER."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from asrkit.checkpoint import Loaded, load_checkpoint, pick_device, resolve_checkpoint
from asrkit.data.audio import audio_info, load_utterance
from asrkit.data.loader import Item, collate
from asrkit.data.manifest import read_manifest
from asrkit.decoding import DecoderPool, LMDecodeOptions
from asrkit.errors import AsrkitError, AudioError
from asrkit.longform import DEFAULT_SEGMENT_SECONDS, SEGMENT_OF, check_segment_seconds, regroup, split_long
from asrkit.metrics import ErrorRate
from asrkit.progress import say
from asrkit.records import Batch, Failure, Hypothesis, Utterance

T = TypeVar("T")
DECODE_PARAMS_NAME = "tune.json"  # beside the checkpoint: `asrkit tune` writes it, transcribe / evaluate read it
CHUNK_UTTERANCES = 2048  # emissions held in memory at once before they are decoded: at most this many utterances
CHUNK_SECONDS = 1200.0  # ... and this much audio (20 min at 50 frames/s and 30 tokens: 7 MB of float32)
MIN_UTTERANCES_PER_WORKER = 4  # fewer utterances than this per process: decode in fewer processes


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


def _load_batches(loaded: Loaded, utts: Sequence[Utterance], batch_size: int, device: torch.device,
                  failures: list[Failure] | None) -> Iterator[tuple[list[int], Batch | None]]:
    """Batches of similar duration: (input indices, padded batch); an unreadable file is recorded in `failures`
    (when given, else raised) and comes back alone with batch None."""
    order = sorted(range(len(utts)), key=lambda i: utts[i].duration)
    for start in range(0, len(order), batch_size):
        items, idx = [], []
        for i in order[start : start + batch_size]:
            try:
                wave = load_utterance(utts[i], loaded.featurizer.cfg.sample_rate)
            except AudioError as err:
                if failures is None:
                    raise
                utt_id = utts[i].extra.get(SEGMENT_OF, utts[i].id)
                if not any(f.id == utt_id for f in failures):  # a long input fails once, not per segment
                    failures.append(Failure(id=utt_id, path=err.path, reason=err.reason))
                yield [i], None
                continue
            items.append(Item(utts[i].id, loaded.featurizer(wave), torch.zeros(0, dtype=torch.long), utts[i].text))
            idx.append(i)
        if items:
            yield idx, collate(items).to(device)


def _in_input_order(pairs: Iterable[tuple[int, T]]) -> Iterator[T]:
    """Re-order (index, value) pairs that come in any order into index order, yielding as soon as possible."""
    waiting: dict[int, T] = {}
    next_out = 0
    for i, value in pairs:
        waiting[i] = value
        while next_out in waiting:
            yield waiting.pop(next_out)
            next_out += 1


def compute_emissions(loaded: Loaded, utts: Sequence[Utterance], *, batch_size: int = 16,
                      device: torch.device | None = None,
                      failures: list[Failure] | None = None) -> Iterator[tuple[Utterance, np.ndarray, float]]:
    """CTC emissions of each readable utterance, in input order: (utterance, (T', V) float32 log-probs, frame
    shift in seconds). The forward pass is batched; an unreadable file is recorded in `failures` and skipped."""
    emissions_of = getattr(loaded.model, "emissions", None)
    if emissions_of is None:
        raise AsrkitError(f"{loaded.path}: a {loaded.config.model.family} model has no CTC emissions; beam search "
                          "with a language model needs a CTC model (deepspeech2)")
    device = device or next(loaded.model.parameters()).device

    def batches() -> Iterator[tuple[int, tuple[Utterance, np.ndarray, float] | None]]:
        for idx, batch in _load_batches(loaded, utts, batch_size, device, failures):
            if batch is None:
                yield idx[0], None
                continue
            with torch.no_grad():
                em = emissions_of(batch.feats, batch.feat_lens, loaded.featurizer.frame_shift)
            log_probs = em.log_probs.float().cpu().numpy()
            for b, (i, n) in enumerate(zip(idx, em.lengths.tolist(), strict=True)):
                yield i, (utts[i], np.ascontiguousarray(log_probs[b, :n]), em.frame_shift)

    for row in _in_input_order(batches()):
        if row is not None:
            yield row


def decode_nbest(loaded: Loaded, utts: Sequence[Utterance], *, batch_size: int = 16,
                 device: torch.device | None = None, failures: list[Failure] | None = None,
                 decode: LMDecodeOptions | None = None, workers: int = 0,
                 segment_seconds: float = DEFAULT_SEGMENT_SECONDS) -> Iterator[tuple[Utterance, list[Hypothesis]]]:
    """N-best lists (best first) of every utterance, in input order; an unreadable file gets [Hypothesis("")]
    and is recorded in `failures` (when given, else raised). `decode` None: the model's own (greedy) decoding;
    else CTC beam search over batched emissions, decoded by `workers` processes (0: one per CPU core).
    Inputs longer than `segment_seconds` are cut at pauses, decoded piece by piece and stitched into one
    hypothesis (asrkit.longform; memory stays bounded); 0 decodes every input whole."""
    check_segment_seconds(segment_seconds)
    decode = _own_search(loaded, decode)
    rows = split_long(utts, segment_seconds, failures)
    pieces = [u for _, u in rows]
    results = _decode_pieces(loaded, pieces, batch_size, device, failures, decode, workers)
    done = regroup(utts, rows, zip(pieces, results, strict=True))
    ready = next(done, None)
    for utt in utts:  # an unreadable long file has no rows: it gets an empty hypothesis in its place
        if ready is not None and ready[0] is utt:
            yield ready
            ready = next(done, None)
        else:
            yield utt, [Hypothesis("")]


def _own_search(loaded: Loaded, decode: LMDecodeOptions | None) -> LMDecodeOptions | None:
    """`decode` as it is for a CTC model (beam search over its emissions). A model with a search of its own (LAS,
    RNN-T) takes `decode.beam_size` and `decode.nbest` into that search instead and gets None; an LM setting is then
    an error."""
    if decode is None or hasattr(loaded.model, "emissions"):
        return decode
    defaults = LMDecodeOptions()
    ctc_only = [f.name for f in fields(decode)
                if f.name not in ("beam_size", "nbest") and getattr(decode, f.name) != getattr(defaults, f.name)]
    if ctc_only:
        raise AsrkitError(f"{loaded.path}: a {loaded.config.model.family} model decodes with its own search; "
                          f"{', '.join(ctc_only)} (LM beam search) apply to CTC models (deepspeech2) only. "
                          "--beam-size alone sets that search's beam (1: greedy)")
    loaded.model.set_search(decode.beam_size, decode.nbest)
    return None


def _decode_pieces(loaded: Loaded, utts: Sequence[Utterance], batch_size: int, device: torch.device | None,
                   failures: list[Failure] | None, decode: LMDecodeOptions | None,
                   workers: int) -> Iterator[list[Hypothesis]]:
    """decode_nbest without the cutting of long inputs: one n-best list per utterance, in input order."""
    if decode is None:
        yield from (hyps for _, hyps in _decode_own(loaded, utts, batch_size, device, failures))
        return
    for chunk in _chunks(utts):
        rows = list(compute_emissions(loaded, chunk, batch_size=batch_size, device=device, failures=failures))
        with DecoderPool(loaded.tokenizer.vocab, decode, decode_workers(workers, len(rows))) as pool:
            nbests = iter(pool.decode([lp for _, lp, _ in rows], rows[0][2] if rows else 0.0))
            done = iter(rows)
            row = next(done, None)
            for utt in chunk:  # rows are the readable utterances of the chunk, in the same order
                if row is not None and row[0] is utt:
                    yield next(nbests)
                    row = next(done, None)
                else:
                    yield [Hypothesis("")]


def _chunks(utts: Sequence[Utterance]) -> Iterator[Sequence[Utterance]]:
    """Consecutive runs of at most CHUNK_UTTERANCES utterances and CHUNK_SECONDS of audio (at least one each):
    the emissions of one run are held in memory while it is decoded."""
    start, seconds = 0, 0.0
    for i, utt in enumerate(utts):
        if i > start and (i - start >= CHUNK_UTTERANCES or seconds + utt.duration > CHUNK_SECONDS):
            yield utts[start:i]
            start, seconds = i, 0.0
        seconds += utt.duration
    if start < len(utts):
        yield utts[start:]


def decode_workers(workers: int, n_utterances: int) -> int:
    """Processes for decoding: `workers`, or (0) one per CPU core, never more than a few utterances each."""
    if workers <= 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(workers, n_utterances // MIN_UTTERANCES_PER_WORKER))


def _decode_own(loaded: Loaded, utts: Sequence[Utterance], batch_size: int, device: torch.device | None,
                failures: list[Failure] | None) -> Iterator[tuple[Utterance, list[Hypothesis]]]:
    """Each utterance decoded by the model itself (CTC greedy; the search of LAS and RNN-T, with its n-best
    list when it has one), in input order."""
    device = device or next(loaded.model.parameters()).device
    model, shift = loaded.model, loaded.featurizer.frame_shift
    nbest_of = getattr(model, "decode_nbest", None)

    def batches() -> Iterator[tuple[int, list[Hypothesis]]]:
        for idx, batch in _load_batches(loaded, utts, batch_size, device, failures):
            if batch is None:
                yield idx[0], [Hypothesis("")]
                continue
            if nbest_of is not None:
                lists = nbest_of(batch.feats, batch.feat_lens, loaded.tokenizer, frame_shift=shift)
            else:
                lists = [[h] for h in model.decode(batch.feats, batch.feat_lens, loaded.tokenizer, frame_shift=shift)]
            yield from zip(idx, lists, strict=True)

    yield from zip(utts, _in_input_order(batches()), strict=True)


def decode_utterances(loaded: Loaded, utts: Sequence[Utterance], *, batch_size: int = 16,
                      device: torch.device | None = None, failures: list[Failure] | None = None,
                      decode: LMDecodeOptions | None = None, workers: int = 0,
                      segment_seconds: float = DEFAULT_SEGMENT_SECONDS) -> Iterator[tuple[Utterance, Hypothesis]]:
    """Decode in batches of similar duration; yields the best hypothesis in input order. An unreadable file is
    recorded in `failures` (when given, else raised) and the rest go on."""
    for utt, hyps in decode_nbest(loaded, utts, batch_size=batch_size, device=device, failures=failures,
                                  decode=decode, workers=workers, segment_seconds=segment_seconds):
        yield utt, hyps[0]


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
            failures.append(Failure(path=err.path, reason=err.reason))
            continue
        utts.append(Utterance(f"{n}", str(p), duration, ""))
    return utts, failures


def transcribe_nbest(model: str | Path, audio: Sequence[str | Path], *, device: str = "auto",
                     batch_size: int = 16, decode: LMDecodeOptions | None = None, workers: int = 0,
                     segment_seconds: float = DEFAULT_SEGMENT_SECONDS,
                     ) -> tuple[list[tuple[str, list[Hypothesis]]], list[Failure]]:
    """Transcribe audio files: [(path, n-best hypotheses, best first)] in input order, and the files that failed.
    `decode` None: greedy; else beam search (with an LM when decode.lm is set). Files longer than
    `segment_seconds` are cut at pauses and stitched (one hypothesis, timings from the file's start)."""
    loaded = load_checkpoint(model, pick_device(device))
    utts, failures = files_to_utterances(audio)
    results = [(u.audio_filepath, h) for u, h in decode_nbest(loaded, utts, batch_size=batch_size,
                                                               failures=failures, decode=decode, workers=workers,
                                                               segment_seconds=segment_seconds)]
    failed = {f.path for f in failures}
    return [(p, h) for p, h in results if p not in failed], failures


def transcribe(model: str | Path, audio: Sequence[str | Path], *, device: str = "auto", batch_size: int = 16,
               decode: LMDecodeOptions | None = None, workers: int = 0,
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


def evaluate(model: str | Path, manifest: str | Path, *, report: str | Path | None = None,
             device: str = "auto", batch_size: int = 16, decode: LMDecodeOptions | None = None,
             workers: int = 0, segment_seconds: float = DEFAULT_SEGMENT_SECONDS) -> EvalResult:
    """Decode a manifest and score it; writes a JSON report (overall + per utterance) when asked."""
    loaded = load_checkpoint(model, pick_device(device))
    utts = read_manifest(manifest)
    decode = _own_search(loaded, decode)  # None: the model decodes itself (CTC greedy, LAS / RNN-T search)
    failures: list[Failure] = []
    pairs = list(decode_utterances(loaded, utts, batch_size=batch_size, failures=failures, decode=decode,
                                   workers=workers, segment_seconds=segment_seconds))
    failed = {f.id for f in failures}
    result = score([(u, h) for u, h in pairs if u.id not in failed])
    result.failures = failures
    result.decoding = loaded.model.search_name() if decode is None else decode_name(decode)
    if report is not None:
        write_report(report, result, model=str(loaded.path), manifest=str(manifest),
                     decoding=result.decoding if decode is None else decode.to_json())
    return result


def decode_name(decode: LMDecodeOptions) -> str:
    """CTC beam-search settings in a few words: "beam 32, LM alpha 0.5 beta 1"."""
    return f"beam {decode.beam_size}" + (f", LM alpha {decode.alpha:g} beta {decode.beta:g}" if decode.lm else "")


# ------------------------------------------------------------------------------------------------------
# Decode settings: command-line options on top of a decode-params file (written by `asrkit tune`)
# ------------------------------------------------------------------------------------------------------


def read_decode_params(path: str | Path) -> LMDecodeOptions:
    """The `decode` settings of a JSON file written by `asrkit tune` (a relative LM path is taken from the
    file's folder)."""
    path = Path(path)
    if not path.is_file():
        raise AsrkitError(f"decode parameters {path} not found; write them with `asrkit tune MODEL DEV --lm LM`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AsrkitError(f"{path}: not a JSON file ({err}); write it with `asrkit tune`") from None
    if not isinstance(data, dict) or not isinstance(data.get("decode"), dict):
        raise AsrkitError(f"{path}: no \"decode\" settings; write the file with `asrkit tune`")
    settings = dict(data["decode"])
    lm = settings.get("lm")
    if isinstance(lm, str) and lm and not Path(lm).is_absolute():
        settings["lm"] = str(path.parent / lm)
    return LMDecodeOptions.from_json(settings, str(path))


def decode_options(model: str | Path, *, decode_params: str | Path | None = None, greedy: bool = False,
                   lm: str | Path | None = None, beam_size: int | None = None, alpha: float | None = None,
                   beta: float | None = None, hotwords: Sequence[str] = (), hotword_weight: float | None = None,
                   nbest: int | None = None) -> LMDecodeOptions | None:
    """How to decode: None for greedy, else the beam-search settings. A decode-params file (given, or MODEL's
    folder's tune.json when no --lm is given) is the base; every option given overrides its value."""
    given: dict[str, Any] = {k: v for k, v in {"lm": None if lm is None else str(lm), "beam_size": beam_size,
                                               "alpha": alpha, "beta": beta, "hotword_weight": hotword_weight,
                                               "nbest": nbest}.items() if v is not None}
    if hotwords:
        given["hotwords"] = tuple(h for h in hotwords if h.strip())
    if greedy:
        if given or decode_params is not None:
            raise AsrkitError("--greedy cannot be combined with --lm, --beam-size, --alpha, --beta, --hotword, "
                              "--nbest or --decode-params; drop one of them")
        return None
    base: LMDecodeOptions | None = None
    if decode_params is not None:
        base = read_decode_params(decode_params)
    elif lm is None:
        auto = resolve_checkpoint(model).parent / DECODE_PARAMS_NAME
        if auto.is_file():
            base = read_decode_params(auto)
            say(f"decoding with the LM settings of {auto} (tuned by `asrkit tune`; --greedy to not use them)")
    if base is None:
        if not given:
            return None
        if "lm" not in given and {"alpha", "beta"} & set(given):
            raise AsrkitError("--alpha and --beta weight a language model: pass --lm LM too (or --decode-params)")
        base = LMDecodeOptions()
    try:
        return replace(base, **given)
    except TypeError as err:
        raise AsrkitError(str(err)) from None


def write_report(path: str | Path, result: EvalResult, **meta: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**meta, "wer": result.wer, "cer": result.cer, "utterances": [asdict(s) for s in result.utterances],
            "failures": [{"path": f.path, "reason": f.reason, "id": f.id} for f in result.failures]}
    path.write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def plot_alignments(model: str | Path, audio: Sequence[str | Path], out_dir: str | Path, *, device: str = "auto",
                    batch_size: int = 16) -> tuple[list[Path], list[Failure]]:
    """Write OUT_DIR/<audio stem>.png for each file: the attention alignment of its best hypothesis (output
    tokens down, listener frames across). Needs a model with attention (`align`, e.g. las)."""
    loaded = load_checkpoint(model, pick_device(device))
    align = getattr(loaded.model, "align", None)
    if align is None:
        raise AsrkitError(f"{loaded.path}: a {loaded.config.model.family} model has no attention to plot; "
                          "--plot-attention needs an attention model (model.family = \"las\")")
    from asrkit.models.attention_plot import plot_attention, token_labels

    out_dir = Path(out_dir)
    utts, failures = files_to_utterances(audio)
    device_ = next(loaded.model.parameters()).device
    written: list[Path] = []
    used: set[str] = set()
    for idx, batch in _load_batches(loaded, utts, batch_size, device_, failures):
        if batch is None:
            continue
        for i, (hyp, weights) in zip(idx, align(batch.feats, batch.feat_lens, loaded.tokenizer), strict=True):
            stem = Path(utts[i].audio_filepath).stem
            name = stem if stem not in used else f"{stem}-{i}"
            used.add(name)
            labels = token_labels(hyp.tokens, loaded.tokenizer, ended=weights.shape[0] > len(hyp.tokens))
            written.append(plot_attention(weights, labels, out_dir / f"{name}.png"))
    return written, failures
