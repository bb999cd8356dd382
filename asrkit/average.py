"""Checkpoint averaging: the mean of the weights of several epoch checkpoints (EXP/epoch-<k>.pt, kept by training
with train.keep_epochs) is usually a little better than any one of them. Either the last N (`--last N`) or the N
with the lowest dev WER (`--best N`, ESPnet's valid.acc.ave), ranked by the dev WER each epoch checkpoint records
in its training history (training with a dev.jsonl), or by its dev loss (`--by loss`; the default follows the
run's train.select).

Floating-point tensors are averaged (in float64, stored in their own dtype); integer buffers such as BatchNorm's
num_batches_tracked are the newest averaged checkpoint's, as are the config, tokenizer and feature statistics.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from asrkit.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from asrkit.errors import AsrkitError

EPOCH_NAME = re.compile(r"epoch-(\d+)\.pt")


def epoch_checkpoints(exp_dir: str | Path) -> list[tuple[int, Path]]:
    """(epoch, path) of EXP/epoch-<k>.pt, oldest first."""
    found = [(int(m.group(1)), p) for p in Path(exp_dir).glob("epoch-*.pt") if (m := EPOCH_NAME.fullmatch(p.name))]
    return sorted(found)


SELECT_KEYS = {"wer": "dev_wer", "loss": "dev_loss"}  # train.select -> the history record's key
SELECT_NAMES = {"wer": "dev WER", "loss": "dev loss"}  # train.select -> what messages call it


def dev_score(record: Any, select: str = "wer") -> float | None:
    """What train.select ranks an epoch by (lower is better), from its history record; None when the record has
    none (no dev.jsonl, a loss that could not be computed, or an older run that did not record the loss)."""
    key = SELECT_KEYS[select]
    if not isinstance(record, dict) or record.get(key) is None:
        return None
    value = float(record[key])
    return None if math.isnan(value) else value


def recorded_dev_wer(train_state: dict[str, Any], epoch: int, select: str = "wer") -> float | None:
    """The dev WER (or with select="loss" the dev loss) that training recorded for `epoch` in a checkpoint's
    training state (its history), or None (trained without a dev.jsonl, or not an epoch-end checkpoint)."""
    for record in train_state.get("history") or []:
        if isinstance(record, dict) and record.get("epoch") == epoch:
            return dev_score(record, select)
    return None


def lowest_dev_wer(found: list[tuple[int, Path]], n: int, select: str | None = "wer") -> list[tuple[int, Path]]:
    """The n of the (epoch, path) checkpoints with the lowest recorded dev WER (select="loss": dev loss; None: what
    the newest one's train.select says; a tie goes to the newer epoch), oldest first. Every checkpoint must record
    it."""
    saved = [(epoch, path, read_checkpoint(path)) for epoch, path in found]  # each file read once
    if select is None:  # the run's own train.select
        chosen = ((saved[-1][2].get("config") or {}).get("train") or {}).get("select", "wer")
        select = chosen if chosen in SELECT_KEYS else "wer"
    what = SELECT_NAMES[select]
    ranked, missing = [], []
    for epoch, path, data in saved:
        wer = recorded_dev_wer(data.get("train") or {}, epoch, select)
        if wer is None:
            missing.append(path.name)
        else:
            ranked.append((wer, -epoch, epoch, path))
    if missing:
        how = ("train with a dev.jsonl in --data (its WER is measured after every epoch)" if select == "wer" else
               "rank by WER with --by wer (runs from before train.select record no dev loss)")
        raise AsrkitError(f"{found[0][1].parent}: no {what} recorded in {', '.join(missing)}, so --best cannot rank "
                          f"{'it' if len(missing) == 1 else 'them'}; {how}, or average the newest ones with --last {n}")
    return sorted((epoch, path) for _, _, epoch, path in sorted(ranked)[:n])


def average(exp_dir: str | Path, last: int | None = None, out: str | Path | None = None, *,
            best: int | None = None, by: str | None = None) -> Path:
    """Average the `last` newest epoch checkpoints of exp_dir, or the `best` ones with the lowest dev WER (`by`
    "loss": dev loss; default: what the run's train.select says), into `out` (default EXP/averaged-last<N>.pt or
    EXP/averaged-best<N>.pt)."""
    exp_dir = Path(exp_dir)
    if last is not None and best is not None:
        raise AsrkitError(f"--last {last} and --best {best} are mutually exclusive: average the newest epoch "
                          "checkpoints (--last N) or those with the lowest dev WER (--best N)")
    if last is None and best is None:
        raise AsrkitError("give --last N (the newest N epoch checkpoints) or --best N (the N with the lowest dev WER)")
    option, n = ("--last", last) if last is not None else ("--best", best)
    assert n is not None
    if n < 1:
        raise AsrkitError(f"{option} {n}: average at least 1 checkpoint")
    if by is not None and by not in SELECT_KEYS:
        raise AsrkitError(f"--by {by!r}: rank by {' or '.join(SELECT_KEYS)}")
    if not exp_dir.is_dir():
        raise AsrkitError(f"experiment folder {exp_dir} not found")
    found = epoch_checkpoints(exp_dir)
    if len(found) < n:
        have = ", ".join(p.name for _, p in found) or "none"
        raise AsrkitError(f"{exp_dir}: {len(found)} epoch checkpoint(s) ({have}), fewer than {option} {n}; "
                          f"train with --set train.keep_epochs={n} (or more) to keep them, or average fewer")
    paths = [p for _, p in (found[-n:] if best is None else lowest_dev_wer(found, n, by))]
    newest = load_checkpoint(paths[-1])  # its config, tokenizer and features; checks the weights fit the model
    reference = newest.model.state_dict()
    sums = {k: v.to(torch.float64, copy=True) for k, v in reference.items() if v.is_floating_point()}
    for path in paths[:-1]:
        weights = read_checkpoint(path)["model"]
        if weights.keys() != reference.keys() or any(weights[k].shape != reference[k].shape for k in reference):
            raise AsrkitError(f"{path}: its weights do not match {paths[-1].name}'s (another model); "
                              "average checkpoints of one training run only")
        for key in sums:
            sums[key] += weights[key].double()
    averaged = {k: (sums[k] / n).to(v.dtype) if k in sums else v for k, v in reference.items()}
    newest.model.load_state_dict(averaged)
    out = Path(out) if out is not None else exp_dir / f"averaged-{option[2:]}{n}.pt"
    state = {"averaged": [p.name for p in paths], "step": newest.state.get("step", 0),
             "epoch": newest.state.get("epoch", 0)}
    save_checkpoint(out, config=newest.config, tokenizer=newest.tokenizer, featurizer=newest.featurizer,
                    model=newest.model, train_state=state)
    return out
