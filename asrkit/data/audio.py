"""Audio loading: any sample rate and channel count in, mono float32 at the model rate out."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from asrkit.errors import AudioError


def audio_info(path: str | Path) -> tuple[float, int]:
    """(duration in seconds, sample rate) without decoding the samples."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except FileNotFoundError:
        raise AudioError(path, "file not found") from None
    except Exception as err:  # libsndfile raises a plain RuntimeError/LibsndfileError
        raise AudioError(path, f"cannot read audio ({_reason(err)})") from None
    if info.frames <= 0:
        raise AudioError(path, "audio has no samples")
    return info.frames / info.samplerate, int(info.samplerate)


def load_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """Decode with soundfile, down-mix to mono, resample to `sample_rate`. Returns (samples,) float32."""
    import soundfile as sf

    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise AudioError(path, "file not found") from None
    except Exception as err:
        raise AudioError(path, f"cannot decode audio ({_reason(err)})") from None
    if data.shape[0] == 0:
        raise AudioError(path, "audio has no samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(mono)):
        raise AudioError(path, "audio contains NaN or infinite samples")
    wave = torch.from_numpy(np.ascontiguousarray(mono))
    return resample(wave, int(sr), sample_rate)


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

    if isinstance(wave, torch.Tensor):
        wave = wave.detach().cpu().numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, sample_rate)


def _reason(err: Exception) -> str:
    msg = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return msg[:200]
