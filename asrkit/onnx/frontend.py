"""Audio -> normalised log-mel features in numpy, without torch: the operations of asrkit.data.features (a centred
STFT by reflection padding, power, mel filterbank, natural log, training statistics) with the arrays the export
wrote (frontend.npz), and audio decoding and resampling as asrkit.data.audio does them.

Resampling is a windowed-sinc polyphase filter (Hann window, 6 zero crossings, cut-off 0.99 x the lower Nyquist
frequency): the filter torchaudio's `Resample` applies by default, so both paths see the same samples.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from asrkit.data.audio import _reason, open_audio, span_frames
from asrkit.errors import AudioError
from asrkit.records import Utterance

LOG_FLOOR = 1e-6  # asrkit.data.features.LOG_FLOOR
ZERO_CROSSINGS = 6  # of the resampling filter, each side
ROLLOFF = 0.99  # its cut-off, as a fraction of the lower Nyquist frequency


class FrontEnd:
    """Waveform (samples,) float32 -> features (T, F) float32, as the checkpoint's Featurizer computes them."""

    def __init__(self, features: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.sample_rate = int(features["sample_rate"])
        self.n_fft, self.hop = int(features["n_fft"]), int(features["hop_length"])
        self.normalize = bool(features["normalize"])
        self.window, self.mel_fb = arrays["window"], arrays["mel_fb"]  # (n_fft,), (n_fft // 2 + 1, F)
        self.mean, self.std = arrays["mean"], arrays["std"]  # (F,) each; empty without normalisation

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        half = self.n_fft // 2
        frames = 1 + len(wave) // self.hop
        if len(wave) < half + 1:  # reflection needs half + 1 samples
            wave = np.pad(wave, (0, half + 1 - len(wave)))
        padded = np.pad(wave, (half, half), mode="reflect")
        windows = np.lib.stride_tricks.sliding_window_view(padded, self.n_fft)[:: self.hop][:frames]
        spec = np.fft.rfft(windows * self.window, axis=-1)  # (T, n_fft // 2 + 1)
        power = (spec.real**2 + spec.imag**2).astype(np.float32)
        feats = np.log(power @ self.mel_fb + np.float32(LOG_FLOOR))
        if self.normalize:
            feats = (feats - self.mean) / self.std
        return feats.astype(np.float32, copy=False)


def load_wave(utt: Utterance, sample_rate: int) -> np.ndarray:
    """The samples of an utterance (the whole file, or its span with an offset), mono float32 at `sample_rate`;
    AudioError naming the file when they cannot be read (asrkit.data.audio.load_utterance in numpy)."""
    path = utt.audio_filepath
    where = "" if utt.offset is None else f" between {utt.offset:.2f} and {utt.offset + utt.duration:.2f} s"
    f = open_audio(path, "cannot decode audio")
    try:
        with f:
            sr = int(f.samplerate)
            if utt.offset is None:
                data = f.read(dtype="float32", always_2d=True)
            else:
                first, count = span_frames(path, utt.offset, utt.duration, int(f.frames), sr)
                f.seek(first)
                data = f.read(count, dtype="float32", always_2d=True)
                if len(data) < count:
                    raise AudioError(path, f"truncated or damaged audio: only {len(data) / sr:.2f} s of the "
                                           f"span{where} decode; copy or download it again")
    except AudioError:
        raise
    except Exception as err:
        raise AudioError(path, f"cannot decode audio: truncated or damaged data ({_reason(err)}); copy or "
                               "download it again") from None
    if data.shape[0] == 0:
        raise AudioError(path, f"audio has no samples{where}")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(mono)):
        raise AudioError(path, f"audio contains NaN or infinite samples{where}")
    return resample(np.ascontiguousarray(mono), sr, sample_rate)


@lru_cache(maxsize=16)
def _sinc_filters(orig: int, new: int) -> tuple[np.ndarray, int]:
    """(new, K) float32 filters, one per output phase, and the padding `width` (input samples each side)."""
    cutoff = min(orig, new) * ROLLOFF  # in units where the input rate is `orig`
    width = math.ceil(ZERO_CROSSINGS * orig / cutoff)
    taps = np.arange(-width, width + orig, dtype=np.float64) / orig  # (K,) input times, in output-free units
    t = (-np.arange(new, dtype=np.float64)[:, None] / new + taps[None, :]) * cutoff  # (new, K)
    t = np.clip(t, -ZERO_CROSSINGS, ZERO_CROSSINGS)
    window = np.cos(t * math.pi / ZERO_CROSSINGS / 2) ** 2
    t = t * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        sinc = np.where(t == 0, 1.0, np.sin(t) / t)
    return (sinc * window * (cutoff / orig)).astype(np.float32), width


def resample(wave: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """(samples,) at `orig_sr` -> (ceil(samples * new_sr / orig_sr),) at `new_sr`."""
    if orig_sr == new_sr:
        return wave
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    filters, width = _sinc_filters(orig, new)
    padded = np.pad(wave.astype(np.float32, copy=False), (width, width + orig))
    blocks = np.lib.stride_tricks.sliding_window_view(padded, filters.shape[1])[::orig]  # (J, K)
    out = (blocks @ filters.T).reshape(-1)  # output sample j * new + k from block j, phase k
    return np.ascontiguousarray(out[: math.ceil(new * len(wave) / orig)])
