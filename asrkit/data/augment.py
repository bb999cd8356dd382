"""Speed perturbation (Ko et al. 2015): resample an utterance so that it plays `factor` times faster, which
changes both tempo and pitch, as Kaldi's and ESPnet's `sox speed` does. The factor of each utterance is drawn
from (seed, epoch, index) alone, so a resumed run, any number of loader workers and the duration-bucketed
sampler (which sorts by the perturbed durations) all see the same factor."""

from __future__ import annotations

import random
from collections.abc import Sequence
from fractions import Fraction

import torch


def speed_factor(factors: Sequence[float], seed: int, epoch: int, index: int) -> float:
    """The factor for utterance `index` in `epoch`: uniform over `factors`, a pure function of its arguments
    (a string seed: Python's hash of str changes per process, random.Random's str seeding does not)."""
    return random.Random(f"speed:{seed}:{epoch}:{index}").choice(list(factors))


def check_factors(factors: Sequence[float]) -> None:
    bad = [f for f in factors if not 0.5 <= f <= 2.0]
    if bad or not factors:
        raise ValueError(f"features.speed_factors must be numbers in [0.5, 2.0], got {list(factors)}")


def perturb_speed(wave: torch.Tensor, factor: float) -> torch.Tensor:
    """(S,) -> (~S / factor,): the waveform resampled as if it had been recorded at factor x the sample rate."""
    if factor == 1.0:
        return wave
    import torchaudio.functional as taf

    ratio = Fraction(factor).limit_denominator(100)  # 0.9 -> 9/10, 1.1 -> 11/10: a short polyphase filter
    return taf.resample(wave, ratio.numerator, ratio.denominator)
