"""Learning-rate schedules, per optimiser step: linear warm-up to train.lr over train.warmup_steps, then

- anneal: x train.anneal after every epoch (DeepSpeech2's; the default),
- noam:   lr * sqrt(warmup / step) after the warm-up (the Transformer's inverse square root, peak = train.lr),
- cosine: half a cosine from train.lr down to train.min_lr at the last step."""

from __future__ import annotations

import math

from asrkit.config import TrainConfig

SCHEDULES = ("anneal", "noam", "cosine")


def learning_rate(t: TrainConfig, step: int, epoch: int, total_steps: int) -> float:
    """The learning rate of optimiser step `step` (0-based) in `epoch`, of a run of `total_steps` steps."""
    warm = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps > 0 else 1.0
    if t.schedule == "anneal":
        return t.lr * warm * t.anneal**epoch
    if step + 1 <= t.warmup_steps:
        return t.lr * warm
    if t.schedule == "noam":
        return t.lr * math.sqrt(max(t.warmup_steps, 1) / (step + 1))
    if t.schedule == "cosine":
        span = max(total_steps - t.warmup_steps, 1)
        done = min(max(step + 1 - t.warmup_steps, 0) / span, 1.0)
        return t.min_lr + (t.lr - t.min_lr) * 0.5 * (1.0 + math.cos(math.pi * done))
    raise ValueError(f"unknown train.schedule {t.schedule!r}; valid: {', '.join(SCHEDULES)}")
