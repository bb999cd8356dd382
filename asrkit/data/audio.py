"""Audio loading: any sample rate and channel count in, mono float32 at the model rate out.

Every failure is an `AudioError` naming the file and the reason: a missing file, an empty (0-byte) file, a
format libsndfile does not recognise, no samples, data that ends before the header says (a truncated
download), NaN or infinite samples, a span (a manifest line with an `offset`) that starts or ends past the end of
the file.

`load_utterance` is the one reader of a manifest utterance's samples (training, feature statistics, evaluation):
the whole file, or just the span [offset, offset + duration) when the utterance has an offset (`load_span` seeks
to it, so a long recording is never decoded whole for one of its pieces).
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # imported where a tensor is made: the ONNX Runtime path (asrkit.onnx) reads audio without torch
    import torch

from asrkit.errors import AudioError
from asrkit.records import Failure, Utterance

TAIL_FRAMES = 1024  # audio_info decodes this many frames at the end to find files cut short
SPAN_END_SLACK = 0.05  # seconds a span may reach past the end of the file (a rounded duration): read to the end


def audio_info(path: str | Path, *, check_end: bool = True) -> tuple[float, int]:
    """(duration in seconds, sample rate) from the header. With `check_end`, the last few milliseconds are
    decoded too (cheap: one seek), so a file cut short after its header (a truncated FLAC download) fails
    here with a clear reason rather than later, while training or decoding."""
    with open_audio(path, "cannot read audio") as f:
        frames, rate = int(f.frames), int(f.samplerate)
        if frames <= 0 or rate <= 0:
            raise AudioError(path, "audio has no samples")
        if check_end and f.seekable():
            tail = min(frames, TAIL_FRAMES)
            try:
                f.seek(frames - tail)
                got = len(f.read(tail, dtype="float32", always_2d=True))
                problem = "" if got == tail else f"only {got} of the last {tail} samples decode"
            except Exception as err:
                problem = _reason(err)
            if problem:
                raise AudioError(path, f"truncated or damaged audio: the header says {frames / rate:.2f} s but "
                                       f"decoding fails before the end ({problem}); copy or download it again")
    return frames / rate, rate


def load_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """Decode with soundfile, down-mix to mono, resample to `sample_rate`. Returns (samples,) float32."""
    with open_audio(path, "cannot decode audio") as f:
        sr = int(f.samplerate)
        try:
            data = f.read(dtype="float32", always_2d=True)
        except Exception as err:
            raise AudioError(path, f"cannot decode audio: truncated or damaged data after the header "
                                   f"({_reason(err)}); copy or download it again") from None
    return resample(to_mono(path, data), sr, sample_rate)


def load_utterance(utt: Utterance, sample_rate: int) -> torch.Tensor:
    """The samples of an utterance, mono float32 at `sample_rate`: the whole file, or with an offset only the span
    [offset, offset + duration). AudioError (naming the file, and the times of a span) when they cannot be read."""
    if utt.offset is None:
        return load_audio(utt.audio_filepath, sample_rate)
    return load_span(utt.audio_filepath, utt.offset, utt.duration, sample_rate)


def load_span(path: str | Path, offset: float, duration: float, sample_rate: int) -> torch.Tensor:
    """Samples [offset, offset + duration) seconds of a file, mono float32 at `sample_rate`."""
    f = open_audio(path, "cannot read audio")
    try:
        with f:
            sr = int(f.samplerate)
            first, count = span_frames(path, offset, duration, int(f.frames), sr)
            f.seek(first)
            data = f.read(count, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as err:
        raise AudioError(path, f"cannot decode audio at {offset:.2f} s ({_reason(err)})") from None
    where = f" between {offset:.2f} and {offset + duration:.2f} s"
    if len(data) < count:
        raise AudioError(path, f"truncated or damaged audio: only {len(data) / sr:.2f} s of the span{where} "
                               "decode; copy or download it again")
    return resample(to_mono(path, data, where), sr, sample_rate)


def span_frames(path: str | Path, offset: float, duration: float, frames: int, sr: int) -> tuple[int, int]:
    """(first frame, frame count) of the span [offset, offset + duration) seconds in a file of `frames` frames at
    `sr`; AudioError when the span starts at or after the end or ends more than SPAN_END_SLACK after it."""
    total = frames / sr
    if not (offset >= 0 and duration > 0):
        raise AudioError(path, f"bad span: offset {offset} s and duration {duration} s (need offset >= 0 and "
                               "duration > 0)")
    first = round(offset * sr)
    if first >= frames:
        raise AudioError(path, f"offset {offset:.2f} s is past the end of the audio ({total:.2f} s)")
    end = first + max(1, round(duration * sr))
    if end > frames + math.ceil(SPAN_END_SLACK * sr):
        raise AudioError(path, f"the span {offset:.2f}-{offset + duration:.2f} s ends past the end of the audio "
                               f"({total:.2f} s); check the offset and duration of this utterance")
    return first, min(end, frames) - first


def open_audio(path: str | Path, failure: str) -> Any:
    """An open soundfile.SoundFile, or AudioError naming the file and `failure` with libsndfile's reason."""
    import soundfile as sf

    _check_file(path, failure)
    try:
        return sf.SoundFile(str(path))
    except Exception as err:  # libsndfile raises a plain RuntimeError/LibsndfileError
        raise AudioError(path, f"{failure} ({_reason(err)})") from None


def to_mono(path: str | Path, data: np.ndarray, where: str = "") -> torch.Tensor:
    """(frames, channels) samples -> (frames,) float32 mono; AudioError when empty or not finite."""
    if data.shape[0] == 0:
        raise AudioError(path, f"audio has no samples{where}")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(mono)):
        raise AudioError(path, f"audio contains NaN or infinite samples{where}")
    import torch

    return torch.from_numpy(np.ascontiguousarray(mono))


def _check_file(path: str | Path, failure: str) -> None:
    """AudioError for what libsndfile reports vaguely: a missing file ("System error"), a folder, 0 bytes."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AudioError(path, "file not found") from None
    except OSError as err:
        raise AudioError(path, f"{failure} ({err.strerror or err})") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(path, "is a folder, not an audio file")
    if st.st_size == 0:
        raise AudioError(path, f"{failure}: empty file (0 bytes)")


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    if orig_sr == new_sr:
        return wave
    return _resampler(orig_sr, new_sr)(wave)


@lru_cache(maxsize=16)
def _resampler(orig_sr: int, new_sr: int) -> torch.nn.Module:
    import torchaudio

    return torchaudio.transforms.Resample(orig_sr, new_sr)


def write_audio(path: str | Path, wave: np.ndarray | torch.Tensor, sample_rate: int) -> None:
    import soundfile as sf

    if not isinstance(wave, np.ndarray):  # a torch.Tensor
        wave = wave.detach().cpu().numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, sample_rate)


def _reason(err: Exception) -> str:
    """libsndfile's message without the path it repeats ("Error opening '/x.wav': ") or an empty "Error : "."""
    msg = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    msg = re.sub(r"^Error opening '.*': ", "", msg)
    msg = re.sub(r"^Error : ", "", msg)
    return msg[:200]


def files_to_utterances(paths: Sequence[str | Path]) -> tuple[list[Utterance], list[Failure]]:
    """Each audio file an utterance (id = its position, no transcript); files that cannot be read become
    failures that name the file and the reason, in the order given."""
    utts, failures = [], []
    for n, p in enumerate(paths):
        try:
            duration, _ = audio_info(p)
        except AudioError as err:
            failures.append(Failure(path=err.path, reason=err.reason))
            continue
        utts.append(Utterance(f"{n}", str(p), duration, ""))
    return utts, failures
