"""Inference: ANY model + SearchOptions (+ its LM) -> n-best lists of utterances, for train's dev pass, evaluate,
tune, streaming and the CLI (asrkit.transcribe: audio files).

Utterances are batched by duration; each batch's features go through `model.decode(feats, lens, search, lm)`.
A CTC beam search instead runs over the emissions of a chunk of utterances, decoded by a pool of processes that
load the LM once (asrkit.decoding.DecoderPool). Inputs longer than `segment_seconds` are cut at pauses, decoded
piece by piece and stitched (asrkit.longform). Which search: the checkpoint's [decode], under a decode-params
file (`asrkit tune`'s tune.json), under the command line's options (`DecodeRequest`, `choose_search`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from asrkit.checkpoint import Loaded
from asrkit.data.audio import load_utterance
from asrkit.data.loader import Item, collate
from asrkit.decoding import DecoderPool
from asrkit.errors import AsrkitError, AudioError
from asrkit.lm import load_fusion_lm
from asrkit.longform import DEFAULT_SEGMENT_SECONDS, SEGMENT_OF, check_segment_seconds, decode_long
from asrkit.records import Batch, Failure, Hypothesis, Utterance
from asrkit.request import DECODE_PARAMS_NAME, DecodeRequest, choose  # noqa: F401  (DECODE_PARAMS_NAME: tune.py)
from asrkit.search import SearchOptions, ctc_beam

T = TypeVar("T")
CHUNK_UTTERANCES = 2048  # emissions held in memory at once before they are decoded: at most this many utterances
CHUNK_SECONDS = 1200.0  # ... and this much audio (20 min at 50 frames/s and 30 tokens: 7 MB of float32)
MIN_UTTERANCES_PER_WORKER = 4  # fewer utterances than this per process: decode in fewer processes


# ------------------------------------------------------------------------------------------------------
# Which search: the checkpoint's [decode] < a decode-params file < the command line
# ------------------------------------------------------------------------------------------------------


def choose_search(loaded: Loaded, request: DecodeRequest) -> SearchOptions:
    """The search of `request` for a loaded checkpoint (precedence: its [decode] < the decode-params file < the
    options; asrkit.request.choose). Checked against the model when it decodes (`prepare_search`)."""
    return choose(loaded.config.decode.search_options(), loaded.path.parent, request)


def search_of(loaded: Loaded, decode: SearchOptions | DecodeRequest | None) -> SearchOptions:
    """None: the checkpoint's [decode]; a request: `choose_search`; settings: as they are."""
    if decode is None:
        return loaded.config.decode.search_options()
    return choose_search(loaded, decode) if isinstance(decode, DecodeRequest) else decode


def prepare_search(loaded: Loaded, search: SearchOptions | None = None, lm: Any = None) -> tuple[SearchOptions, Any]:
    """The search the model runs for `search` (default: the checkpoint's [decode]), resolved (asrkit.search.resolve;
    an error names the checkpoint), and the LM its `decode` takes, loaded once (unless given)."""
    search = loaded.config.decode.search_options() if search is None else search
    try:
        search = loaded.model.resolve_search(search)
    except AsrkitError as err:
        raise AsrkitError(f"{loaded.path}: {err}") from None
    if lm is None:
        lm = load_fusion_lm(search.lm, loaded.model.fusion_units(search), loaded.tokenizer.vocab)
    return search, lm


# ------------------------------------------------------------------------------------------------------
# Batches, emissions, n-best lists
# ------------------------------------------------------------------------------------------------------


def load_batches(loaded: Loaded, utts: Sequence[Utterance], batch_size: int, device: torch.device,
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
    device = device or next(loaded.model.parameters()).device

    def batches() -> Iterator[tuple[int, tuple[Utterance, np.ndarray, float] | None]]:
        for idx, batch in load_batches(loaded, utts, batch_size, device, failures):
            if batch is None:
                yield idx[0], None
                continue
            with torch.no_grad():
                em = loaded.model.ctc_emissions(batch.feats, batch.feat_lens, loaded.featurizer.frame_shift)
            if em is None:
                raise AsrkitError(f"{loaded.path}: a {loaded.config.model.family} model without a CTC head has no "
                                  "CTC emissions; beam search with a word LM needs a CTC model (deepspeech2)")
            log_probs = em.log_probs.float().cpu().numpy()
            for b, (i, n) in enumerate(zip(idx, em.lengths.tolist(), strict=True)):
                yield i, (utts[i], np.ascontiguousarray(log_probs[b, :n]), em.frame_shift)

    for row in _in_input_order(batches()):
        if row is not None:
            yield row


def decode_nbest(loaded: Loaded, utts: Sequence[Utterance], *, search: SearchOptions | None = None, lm: Any = None,
                 batch_size: int = 16, device: torch.device | None = None, failures: list[Failure] | None = None,
                 workers: int = 0,
                 segment_seconds: float = DEFAULT_SEGMENT_SECONDS) -> Iterator[tuple[Utterance, list[Hypothesis]]]:
    """N-best lists (best first) of every utterance, in input order; an unreadable file gets [Hypothesis("")]
    and is recorded in `failures` (when given, else raised). `search` None: the checkpoint's [decode]; `lm`: its
    LM, loaded here when not given. A CTC beam search is decoded by `workers` processes (0: one per CPU core).
    Inputs longer than `segment_seconds` are cut at pauses, decoded piece by piece and stitched into one
    hypothesis (asrkit.longform; memory stays bounded); 0 decodes every input whole."""
    check_segment_seconds(segment_seconds)
    search, lm = prepare_search(loaded, search, lm)
    yield from decode_long(utts, segment_seconds, failures,
                           lambda pieces: _decode_pieces(loaded, pieces, batch_size, device, failures, search, lm,
                                                         workers))


def decode_utterances(loaded: Loaded, utts: Sequence[Utterance], *, search: SearchOptions | None = None,
                      lm: Any = None, batch_size: int = 16, device: torch.device | None = None,
                      failures: list[Failure] | None = None, workers: int = 0,
                      segment_seconds: float = DEFAULT_SEGMENT_SECONDS) -> Iterator[tuple[Utterance, Hypothesis]]:
    """`decode_nbest`'s best hypothesis of each utterance, in input order."""
    for utt, hyps in decode_nbest(loaded, utts, search=search, lm=lm, batch_size=batch_size, device=device,
                                  failures=failures, workers=workers, segment_seconds=segment_seconds):
        yield utt, hyps[0]


def _decode_pieces(loaded: Loaded, utts: Sequence[Utterance], batch_size: int, device: torch.device | None,
                   failures: list[Failure] | None, search: SearchOptions, lm: Any,
                   workers: int) -> Iterator[list[Hypothesis]]:
    """decode_nbest without the cutting of long inputs: one n-best list per utterance, in input order."""
    if not ctc_beam(search, loaded.model.objective):
        yield from _decode_batches(loaded, utts, batch_size, device, failures, search, lm)
        return
    for chunk in _chunks(utts):
        rows = list(compute_emissions(loaded, chunk, batch_size=batch_size, device=device, failures=failures))
        with DecoderPool(loaded.tokenizer.vocab, search, decode_workers(workers, len(rows))) as pool:
            nbests = iter(pool.decode([lp for _, lp, _ in rows], rows[0][2] if rows else 0.0))
            done = iter(rows)
            row = next(done, None)
            for utt in chunk:  # rows are the readable utterances of the chunk, in the same order
                if row is not None and row[0] is utt:
                    yield next(nbests)
                    row = next(done, None)
                else:
                    yield [Hypothesis("")]


def _decode_batches(loaded: Loaded, utts: Sequence[Utterance], batch_size: int, device: torch.device | None,
                    failures: list[Failure] | None, search: SearchOptions, lm: Any) -> Iterator[list[Hypothesis]]:
    """Each utterance's n-best list from `model.decode`, batch by batch, in input order."""
    device = device or next(loaded.model.parameters()).device

    def batches() -> Iterator[tuple[int, list[Hypothesis]]]:
        for idx, batch in load_batches(loaded, utts, batch_size, device, failures):
            if batch is None:
                yield idx[0], [Hypothesis("")]
                continue
            lists = loaded.model.decode(batch.feats, batch.feat_lens, search, lm, tokenizer=loaded.tokenizer,
                                        frame_shift=loaded.featurizer.frame_shift)
            yield from zip(idx, lists, strict=True)

    yield from _in_input_order(batches())


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
