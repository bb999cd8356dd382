"""Long recordings: cut at pauses into segments, decode the segments as ordinary utterances, stitch the results.

A recording longer than `segment_seconds` (a lecture, a meeting, an hour-long podcast) is never loaded whole:

1. `find_cuts` reads the file once in blocks of `BLOCK_SECONDS` and keeps only the frame energies of the segment
   being cut (10 ms frames, `segment_seconds` worth of them). Each cut goes at the quietest 200 ms of the second
   half of that span (a pause between words, when there is one), so segments last between half and all of
   `segment_seconds`.
2. Each segment is an `Utterance` with an `offset`: `load_span` reads just its samples (soundfile seeks), and the
   usual batching, model and decoders (greedy, beam search with an LM, LAS, RNN-T) run on it unchanged.
3. `stitch` joins the segments' best hypotheses: text separated by a space, scores summed, word timings shifted
   by each segment's offset so they are seconds from the start of the recording.

Memory is bounded by the segment length times the batch size, not by the recording: at 16 kHz a 40 s segment is
2.5 MB of float32 samples, its 80-dim log-mel features 1.3 MB, and a batch of 16 of them with the model's
activations stays near 100-200 MB whatever the recording's length (bench/long_audio.py prints the peak RSS for
1, 10 and 60 minutes). Only the transcript grows with the length. N-best lists are not combined across segments:
a long recording gets its single best transcript.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from asrkit.data.audio import _reason, open_audio, span_frames
from asrkit.errors import AsrkitError, AudioError
from asrkit.records import Failure, Hypothesis, Utterance, WordTiming

DEFAULT_SEGMENT_SECONDS = 40.0  # inputs longer than this are cut; LibriSpeech's longest utterances (35 s) are not
MIN_SEGMENT_SECONDS = 2.0
BLOCK_SECONDS = 10.0  # read this much audio at a time while looking for pauses
FRAME_SECONDS = 0.01  # energy frames
QUIET_SECONDS = 0.2  # a cut goes in the middle of the quietest window of this length
SEGMENT_OF = "segment_of"  # Utterance.extra key of a segment: the id of the recording it was cut from


def check_segment_seconds(seconds: float) -> None:
    if not (seconds == 0 or seconds >= MIN_SEGMENT_SECONDS):
        raise AsrkitError(f"segment length {seconds:g} s: use 0 (never cut long audio) or at least "
                          f"{MIN_SEGMENT_SECONDS:g} s")


def find_cuts(path: str | Path, segment_seconds: float, offset: float = 0.0,
              duration: float | None = None) -> tuple[list[tuple[float, float]], int]:
    """Cut a recording into (offset, duration) spans in seconds of at most `segment_seconds` each, at pauses.
    Returns the spans and the file's sample rate. Reads the file once, in blocks; raises AudioError when it cannot.
    With `duration`, only the span [offset, offset + duration) of the file is cut (a manifest line with an offset),
    and the spans' offsets are seconds from `offset`."""
    with open_audio(path, "cannot read audio") as f:
        sr = int(f.samplerate)
        left = -1  # frames still to read; -1: to the end of the file
        if duration is not None:
            first, left = span_frames(path, offset, duration, int(f.frames), sr)
            f.seek(first)
        frame = max(1, round(sr * FRAME_SECONDS))
        seg_frames = int(segment_seconds / FRAME_SECONDS)
        quiet = max(1, round(QUIET_SECONDS / FRAME_SECONDS))
        spans: list[tuple[float, float]] = []
        energies = np.zeros(0)  # 10 ms frame energies from the start of the current segment on
        start = 0  # first frame of the current segment
        leftover = np.zeros(0, dtype=np.float32)  # samples that do not fill a frame yet
        block = frame * int(BLOCK_SECONDS / FRAME_SECONDS)
        read = 0
        try:
            while True:
                want = block if left < 0 else min(block, left - read)
                data = f.read(want, dtype="float32", always_2d=True)
                read += len(data)
                if len(data):
                    mono = np.concatenate([leftover, data.mean(axis=1)])
                    n = len(mono) // frame
                    leftover = mono[n * frame:]
                    frames = mono[: n * frame].reshape(n, frame)
                    if not np.all(np.isfinite(frames)):
                        raise AudioError(path, f"audio contains NaN or infinite samples near "
                                               f"{(start + len(energies)) * FRAME_SECONDS:.1f} s")
                    energies = np.concatenate([energies, (frames.astype(np.float64) ** 2).mean(axis=1)])
                while len(energies) > seg_frames:  # more than a segment's worth: cut in its second half
                    cut = _quietest(energies[seg_frames // 2 : seg_frames + 1], quiet) + seg_frames // 2
                    spans.append((start * FRAME_SECONDS, cut * FRAME_SECONDS))
                    start += cut
                    energies = energies[cut:]
                if len(data) < want or read == left:
                    break
        except AudioError:
            raise
        except Exception as err:
            raise AudioError(path, f"cannot decode audio after {read / sr:.1f} s ({_reason(err)})") from None
    if read == 0:
        raise AudioError(path, "audio has no samples")
    if 0 <= read < left:
        raise AudioError(path, f"truncated or damaged audio: only {read / sr:.2f} s of the span {offset:.2f}-"
                               f"{offset + (duration or 0):.2f} s decode; copy or download it again")
    total = read / sr
    if total - start * FRAME_SECONDS > 0:
        spans.append((start * FRAME_SECONDS, total - start * FRAME_SECONDS))
    return spans, sr


def _quietest(energies: np.ndarray, window: int) -> int:
    """Index of the middle of the `window`-frame stretch with the least energy (the first one on ties)."""
    if len(energies) <= window:
        return len(energies) // 2
    sums = np.convolve(energies, np.ones(window), mode="valid")
    return int(np.argmin(sums)) + window // 2


def split_long(utts: Sequence[Utterance], segment_seconds: float,
               on_error: list[Failure] | None = None) -> list[tuple[int, Utterance]]:
    """(input index, utterance or segment) for every input: those longer than `segment_seconds` become segments
    (ids "<id>@<seconds from the utterance's start>", `offset` set: seconds from the file's start), the others stay
    as they are. An utterance with an offset is cut within its own span. A long file that cannot be read goes into
    `on_error` as a `Failure` with its utterance's id (when given, else the error is raised) and has no rows."""
    rows: list[tuple[int, Utterance]] = []
    for i, utt in enumerate(utts):
        if segment_seconds <= 0 or utt.duration <= segment_seconds:
            rows.append((i, utt))
            continue
        try:
            if utt.offset is None:
                spans, _ = find_cuts(utt.audio_filepath, segment_seconds)
            else:
                spans, _ = find_cuts(utt.audio_filepath, segment_seconds, utt.offset, utt.duration)
        except AudioError as err:
            if on_error is None:
                raise
            on_error.append(Failure(id=utt.id, path=err.path, reason=err.reason))
            continue
        rows.extend((i, replace(utt, id=f"{utt.id}@{off:.2f}", duration=dur, offset=(utt.offset or 0.0) + off,
                                extra={**utt.extra, SEGMENT_OF: utt.id}))
                    for off, dur in spans)
    return rows


def stitch(parts: Sequence[tuple[Utterance, Hypothesis]], parent: Utterance) -> Hypothesis:
    """One hypothesis for a recording from its segments' best hypotheses, in order; timings from its start."""
    texts: list[str] = []
    words: list[WordTiming] = []
    tokens: list[int] = []
    score = 0.0
    for seg, hyp in parts:
        shift = (seg.offset or 0.0) - (parent.offset or 0.0)
        if hyp.text:
            texts.append(hyp.text)
        score += hyp.score
        tokens.extend(hyp.tokens)
        words.extend(WordTiming(w.word, w.start + shift, w.end + shift) for w in hyp.words)
    return Hypothesis(" ".join(texts), tuple(tokens), score if math.isfinite(score) else 0.0, tuple(words))


def regroup(utts: Sequence[Utterance], rows: Sequence[tuple[int, Utterance]],
            results: Iterator[tuple[Utterance, list[Hypothesis]]]) -> Iterator[tuple[Utterance, list[Hypothesis]]]:
    """Results of the `rows` of `split_long(utts)` (in the same order) -> one (utterance, n-best) per input that
    has rows, segments stitched into one hypothesis."""
    pending: list[tuple[Utterance, Hypothesis]] = []
    for k, ((i, row), (_, hyps)) in enumerate(zip(rows, results, strict=True)):
        if row is utts[i]:
            yield utts[i], hyps
            continue
        pending.append((row, hyps[0]))
        if k + 1 == len(rows) or rows[k + 1][0] != i:
            yield utts[i], [stitch(pending, utts[i])]
            pending = []


def decode_long(utts: Sequence[Utterance], segment_seconds: float, failures: list[Failure] | None,
                decode: Callable[[list[Utterance]], Iterable[list[Hypothesis]]]
                ) -> Iterator[tuple[Utterance, list[Hypothesis]]]:
    """(utterance, n-best) for every input in order, with `decode` (one n-best list per utterance given, in order)
    run on the pieces of the inputs longer than `segment_seconds` cut at pauses (0: every input whole), the
    pieces stitched back into one hypothesis; an unreadable long file (recorded in `failures`) gets an empty
    hypothesis in its place. The caller checks segment_seconds (check_segment_seconds) before its own set-up."""
    rows = split_long(utts, segment_seconds, failures)
    pieces = [u for _, u in rows]
    done = regroup(utts, rows, zip(pieces, decode(pieces), strict=True))
    ready = next(done, None)
    for utt in utts:
        if ready is not None and ready[0] is utt:
            yield ready
            ready = next(done, None)
        else:
            yield utt, [Hypothesis("")]
