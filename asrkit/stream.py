"""Streaming transcription: audio in chunks (a file, or raw 16-bit PCM on standard input) -> features computed
incrementally -> a unidirectional transducer with carried state -> partial hypotheses as they stabilise.

Streaming gives the same transcript as whole-utterance decoding of the same model:
- `StreamingFeaturizer` computes every log-mel frame once its whole window has arrived, with the same centre
  (reflect) padding as `Featurizer`, and normalises with the training-set mean/std stored in the checkpoint;
- `StreamingResampler` resamples PCM at another rate block by block, equal to resampling the whole recording;
- the model's stream (`ASRModel.start_stream`) carries the LSTM states and the frames its stacking layers have
  not used yet, and searches frame by frame, as whole-utterance decoding does.

Latency: a frame waits for half an FFT window (16 ms at 16 kHz) beyond its centre, and an encoder frame for all of
the R feature frames it stacks (R * 10 ms); the rest is the chunk size plus the compute time per chunk, which
`StreamResult.latencies` reports.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from asrkit.checkpoint import Loaded, load_checkpoint, pick_device
from asrkit.data.audio import load_audio
from asrkit.data.features import Featurizer
from asrkit.errors import AsrkitError, AudioError
from asrkit.progress import say
from asrkit.records import Failure, Hypothesis
from asrkit.search import SearchOptions

MIN_CHUNK_MS, MAX_CHUNK_MS = 10, 10_000


class StreamingFeaturizer:
    """Normalised log-mel frames of audio that arrives in pieces; all frames together equal `Featurizer(wave)`.

    The STFT is centred: frame k covers samples [k*hop - n_fft/2, k*hop + n_fft/2) of the signal reflected at
    both ends. Frame k is computed once sample k*hop + n_fft/2 has arrived; the last frames, which need the
    reflection of the end, come from `finish()`.
    """

    def __init__(self, featurizer: Featurizer) -> None:
        if featurizer.cfg.normalize and (featurizer.mean is None or featurizer.std is None):
            raise ValueError("the featurizer has no normalisation statistics")
        self.featurizer = featurizer
        self.n_fft, self.hop, self.half = featurizer.n_fft, featurizer.hop_length, featurizer.n_fft // 2
        self.head: torch.Tensor | None = torch.zeros(0)  # samples before the left reflection can be built
        self.buffer = torch.zeros(0)  # padded signal from the start of the next frame on
        self.tail = torch.zeros(0)  # the last half + 1 samples, for the right reflection
        self.samples = 0

    def accept(self, samples: torch.Tensor) -> torch.Tensor:
        """(n,) float samples at the model rate -> (t, F) frames that are complete now (t may be 0)."""
        samples = samples.float().flatten()
        self.samples += len(samples)
        self.tail = torch.cat([self.tail, samples])[-(self.half + 1) :]
        if self.head is not None:  # reflect padding needs half + 1 samples
            self.head = torch.cat([self.head, samples])
            if len(self.head) <= self.half:
                return self._empty()
            self.buffer, self.head = torch.cat([self.head[1 : self.half + 1].flip(0), self.head]), None
        else:
            self.buffer = torch.cat([self.buffer, samples])
        return self._frames()

    def finish(self) -> torch.Tensor:
        """The remaining frames, using the reflection of the end of the audio."""
        if self.head is not None:  # too short to stream: the whole-utterance path (it pads)
            head, self.head = self.head, torch.zeros(0)
            return self.featurizer(head) if len(head) else self._empty()
        self.buffer = torch.cat([self.buffer, self.tail[:-1].flip(0)])
        out = self._frames()
        self.buffer = torch.zeros(0)
        return out

    def _frames(self) -> torch.Tensor:
        if len(self.buffer) < self.n_fft:
            return self._empty()
        n = 1 + (len(self.buffer) - self.n_fft) // self.hop
        segment = self.buffer[: (n - 1) * self.hop + self.n_fft]
        self.buffer = self.buffer[n * self.hop :]
        return self.featurizer.normalise(self.featurizer.core(segment))  # the Featurizer's log-mel core: (t, F)

    def _empty(self) -> torch.Tensor:
        return torch.zeros(0, self.featurizer.cfg.n_mels)


class StreamingResampler:
    """Resample audio block by block; the pieces joined equal `asrkit.data.audio.resample` of the whole signal.

    torchaudio's sinc resampler maps each block of o input samples (o = orig / gcd) to n output samples using the
    input from `width` before the block to `width` after it, so a block is resampled once that input has arrived.
    """

    def __init__(self, orig_sr: int, new_sr: int) -> None:
        import torchaudio

        self.orig_sr, self.new_sr = orig_sr, new_sr
        g = math.gcd(orig_sr, new_sr)
        self.o, self.n = orig_sr // g, new_sr // g
        width = torchaudio.transforms.Resample(orig_sr, new_sr).width
        self.context = math.ceil(width / self.o) * self.o  # left context, a whole number of blocks >= width
        self.width = width
        self.buffer = torch.zeros(self.context)  # input from `context` samples before the next block
        self.received = 0
        self.emitted = 0

    def accept(self, samples: torch.Tensor) -> torch.Tensor:
        self.buffer = torch.cat([self.buffer, samples.float().flatten()])
        self.received += len(samples)
        first = self.context // self.o  # the buffer's first block with all of its left context
        # block m (from the buffer's start) needs input up to m*o + width + o
        last = (len(self.buffer) - self.width - self.o) // self.o  # last block with all of its right context
        if last < first:
            return torch.zeros(0)
        out = self._resample(self.buffer[: last * self.o + self.o + self.width])
        out = out[first * self.n : (last + 1) * self.n]
        self.buffer = self.buffer[(last + 1 - first) * self.o :]
        self.emitted += len(out)
        return out

    def finish(self) -> torch.Tensor:
        """The rest: the end is zero-padded as whole-signal resampling does; total ceil(n * received / o)."""
        total = math.ceil(self.n * self.received / self.o)
        out = self._resample(self.buffer)[self.context // self.o * self.n :][: total - self.emitted]
        self.buffer = torch.zeros(0)
        self.emitted += len(out)
        return out

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        from asrkit.data.audio import resample

        return resample(x, self.orig_sr, self.new_sr)


@dataclass(frozen=True)
class Partial:
    """What is known after a chunk: the best transcript so far and its prefix no later audio can change."""

    text: str
    stable: str
    audio_s: float  # seconds of audio received so far
    latency_s: float  # compute time of this chunk (features + encoder + search)


@dataclass
class StreamResult:
    hypotheses: list[Hypothesis]  # n-best, best first
    latencies: list[float] = field(default_factory=list)  # compute seconds per chunk
    final_latency: float = 0.0  # seconds from the end of the audio to the final transcript
    audio_s: float = 0.0

    @property
    def hypothesis(self) -> Hypothesis:
        return self.hypotheses[0]


class Streamer:
    """Transcribe one utterance chunk by chunk with a loaded model: `accept(samples)` per chunk, then `finish()`."""

    def __init__(self, loaded: Loaded, search: SearchOptions | None = None) -> None:
        """`search`: default the checkpoint's [decode]."""
        if not loaded.model.streaming:
            raise AsrkitError(f"{loaded.path}: a {loaded.config.model.family} model cannot stream; train a "
                              "transducer with its own unidirectional encoder (model.family = \"transducer\", "
                              "transducer.bidirectional = false, encoder.kind = \"\")")
        self.loaded = loaded
        search = loaded.config.decode.search_options() if search is None else search
        try:
            self.stream = loaded.model.start_stream(search)
            self.features = StreamingFeaturizer(loaded.featurizer)
        except ValueError as err:
            raise AsrkitError(f"{loaded.path}: {err}") from None
        self.rate = loaded.featurizer.cfg.sample_rate
        self.samples = 0

    def accept(self, samples: torch.Tensor) -> Partial:
        """Samples (n,) at the model's sample rate."""
        started = time.perf_counter()
        self.samples += len(samples)
        feats = self.features.accept(samples)
        if len(feats):
            self.stream.accept(feats)
        return self._partial(time.perf_counter() - started)

    def finish(self) -> tuple[list[Hypothesis], float]:
        """N-best hypotheses of the whole utterance and the seconds it took after the last chunk."""
        started = time.perf_counter()
        feats = self.features.finish()
        if len(feats):
            self.stream.accept(feats)
        self.stream.finish()
        hyps = self.stream.hypotheses(self.loaded.tokenizer, self.loaded.featurizer.frame_shift)
        return hyps, time.perf_counter() - started

    def _partial(self, latency: float) -> Partial:
        decode = self.loaded.tokenizer.decode
        return Partial(decode(self.stream.best()), decode(self.stream.stable()), self.samples / self.rate, latency)


def audio_chunks(source: str | Path | BinaryIO, chunk_ms: float, sample_rate: int,
                 pcm_rate: int = 16000) -> Iterator[torch.Tensor]:
    """Chunks of `chunk_ms` of mono float audio at `sample_rate`. `source`: an audio file, '-' for raw 16-bit
    little-endian mono PCM at `pcm_rate` on standard input, or a binary stream of such PCM."""
    if isinstance(source, (str, Path)) and str(source) != "-":
        wave = load_audio(source, sample_rate)
        step = max(1, round(sample_rate * chunk_ms / 1000))
        for start in range(0, len(wave), step):
            yield wave[start : start + step]
        return
    stream = sys.stdin.buffer if isinstance(source, (str, Path)) else source
    resampler = StreamingResampler(pcm_rate, sample_rate) if pcm_rate != sample_rate else None
    nbytes = 2 * max(1, round(pcm_rate * chunk_ms / 1000))
    first, odd = True, b""
    while True:
        data = _read_exactly(stream, nbytes)
        if first and data[:4] == b"RIFF":
            raise AsrkitError("standard input holds a WAV file, not raw PCM: pass the file path instead, or send "
                              "headerless audio (e.g. `arecord -f S16_LE -c 1 -r 16000 -t raw`)")
        first = False
        if not data:
            break
        data = odd + data
        odd = data[len(data) - len(data) % 2 :]
        samples = np.frombuffer(data[: len(data) - len(odd)], dtype="<i2").astype(np.float32) / 32768.0
        chunk = torch.from_numpy(samples)
        yield resampler.accept(chunk) if resampler is not None else chunk
    if odd:
        say("warning: the raw PCM ended with half a 16-bit sample; that last byte was ignored")
    if resampler is not None:
        yield resampler.finish()


def _read_exactly(stream: BinaryIO, nbytes: int) -> bytes:
    """Up to `nbytes`; fewer only at the end of the stream (a pipe delivers what it has)."""
    parts, got = [], 0
    while got < nbytes:
        data = stream.read(nbytes - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def stream_transcribe(model: str | Path | Loaded, source: str | Path | BinaryIO, *, chunk_ms: float = 320,
                      pcm_rate: int = 16000, device: str = "cpu",
                      on_partial: Callable[[Partial], None] | None = None,
                      search: SearchOptions | None = None) -> StreamResult:
    """Transcribe `source` (an audio file, '-' for raw 16-bit PCM on standard input at `pcm_rate`, or a binary
    stream of it) as a stream of `chunk_ms` chunks; `on_partial` sees the transcript after every chunk.
    Returns the final n-best list and the compute latency of every chunk. `search`: default the checkpoint's
    [decode]."""
    if not MIN_CHUNK_MS <= chunk_ms <= MAX_CHUNK_MS:
        raise AsrkitError(f"--chunk-ms {chunk_ms} must be between {MIN_CHUNK_MS} and {MAX_CHUNK_MS} (try 320)")
    if pcm_rate < 1000:
        raise AsrkitError(f"--pcm-rate {pcm_rate} Hz is not a sample rate; give the rate of the raw PCM, e.g. 16000")
    loaded = model if isinstance(model, Loaded) else load_checkpoint(model, pick_device(device))
    streamer = Streamer(loaded, search)
    latencies = []
    for chunk in audio_chunks(source, chunk_ms, loaded.featurizer.cfg.sample_rate, pcm_rate):
        partial = streamer.accept(chunk)
        latencies.append(partial.latency_s)
        if on_partial is not None:
            on_partial(partial)
    if streamer.samples == 0:
        raise AsrkitError(f"{'standard input' if str(source) == '-' else source}: no audio received")
    hyps, final = streamer.finish()
    return StreamResult(hyps, latencies, final, streamer.samples / streamer.rate)


def stream_files(model: str | Path, sources: Sequence[str | Path], *, chunk_ms: float = 320, pcm_rate: int = 16000,
                 device: str = "auto", failures: list[Failure] | None = None,
                 on_partial: Callable[[str, Partial], None] | None = None) -> Iterator[tuple[str, StreamResult]]:
    """Stream each source in turn with one loaded model: (source, result) as each one ends. A file that cannot be
    read is recorded in `failures` (when given, else raised); '-' is raw PCM on standard input."""
    if sum(str(s) == "-" for s in sources) > 1:
        raise AsrkitError("'-' (standard input) can be given only once")
    loaded = load_checkpoint(model, pick_device(device))
    for source in sources:
        name = str(source)
        report = None if on_partial is None else functools.partial(on_partial, name)
        try:
            yield name, stream_transcribe(loaded, source, chunk_ms=chunk_ms, pcm_rate=pcm_rate, on_partial=report)
        except AudioError as err:
            if failures is None:
                raise
            failures.append(Failure(path=err.path, reason=err.reason))


def latency_summary(result: StreamResult, chunk_ms: float) -> str:
    """One line: chunks, compute time per chunk (median, 90th percentile, max) and after the end of the audio."""
    ms = sorted(x * 1000 for x in result.latencies)
    if not ms:
        return "no chunks"
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    return (f"{len(ms)} chunks of {chunk_ms:g} ms ({result.audio_s:.2f} s of audio); compute per chunk: median "
            f"{ms[len(ms) // 2]:.1f} ms, p90 {p90:.1f} ms, max {ms[-1]:.1f} ms; final transcript "
            f"{result.final_latency * 1000:.1f} ms after the end of the audio")
