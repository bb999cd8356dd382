"""The dev loss the trainer records after every epoch (beside the dev WER): the training loss on dev.jsonl
with no augmentation and no dropout, teacher-forced, per utterance. `train.select = "loss"` ranks epochs by it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import cast

import torch

from asrkit.data.features import Featurizer
from asrkit.data.loader import DurationBatchSampler, Item, SpeechDataset, collate
from asrkit.data.tokenizer import Tokenizer, describe_unencodable, find_unencodable
from asrkit.models.layers import ASRModel
from asrkit.records import Utterance


@torch.no_grad()
def dev_loss(model: ASRModel, dev_utts: Sequence[Utterance], featurizer: Featurizer, tokenizer: Tokenizer,
             device: torch.device, autocast: AbstractContextManager[object], *, batch_seconds: float,
             max_batch_size: int, say: Callable[[str], None]) -> float | None:
    """The mean loss per dev utterance of `model` (in eval mode: the caller sets it), in duration-bucketed batches
    of at most batch_seconds padded seconds; None when no utterance gives a finite loss. Utterances whose loss is
    not finite (a transcript the audio is too short for), or whose characters the tokenizer cannot encode, are
    left out and named through `say`."""
    unencodable = find_unencodable(tokenizer, dev_utts)
    if unencodable:  # the dev WER counts them (check_dev_text warned); a loss needs token ids
        say(f"dev loss leaves out utterances with characters the tokenizer cannot encode: "
            f"{describe_unencodable(unencodable)}")
    left_out = {i for ids in unencodable.values() for i in ids}
    utts = [u for u in dev_utts if u.id not in left_out]
    dataset = SpeechDataset(utts, featurizer, tokenizer, manifest="dev.jsonl")
    # bucketed like training's first (in-order) epoch
    chunks = DurationBatchSampler([u.duration for u in utts], batch_seconds, max_batch_size, shuffle=False).batches(0)
    total, count, bad = 0.0, 0, []
    for chunk in chunks:
        tries = [chunk]
        while tries:
            indices = tries.pop()
            batch = collate([cast(Item, dataset[i]) for i in indices]).to(device)  # unreadable audio: left out
            if not batch.ids:
                continue
            with autocast:
                loss = float(model.loss(batch))
            if math.isfinite(loss):
                total, count = total + loss * len(batch.ids), count + len(batch.ids)
            elif len(indices) == 1:
                bad.append(batch.ids[0])
            else:  # find the utterance(s) to blame, one at a time
                tries.extend([i] for i in indices)
    if bad:
        say(f"dev loss leaves out {len(bad)} utterance(s) whose loss is not finite: {', '.join(bad[:3])}"
            f"{' ...' if len(bad) > 3 else ''}")
    return total / count if count else None
