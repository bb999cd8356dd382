"""Checkpoint averaging: the mean of the weights of the last N epoch checkpoints (EXP/epoch-<k>.pt, kept by
training with train.keep_epochs >= N) is usually a little better than any one of them.

Floating-point tensors are averaged (in float64, stored in their own dtype); integer buffers such as BatchNorm's
num_batches_tracked are the newest checkpoint's, as are the config, tokenizer and feature statistics.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from asrkit.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from asrkit.errors import AsrkitError

EPOCH_NAME = re.compile(r"epoch-(\d+)\.pt")


def epoch_checkpoints(exp_dir: str | Path) -> list[tuple[int, Path]]:
    """(epoch, path) of EXP/epoch-<k>.pt, oldest first."""
    found = [(int(m.group(1)), p) for p in Path(exp_dir).glob("epoch-*.pt") if (m := EPOCH_NAME.fullmatch(p.name))]
    return sorted(found)


def average(exp_dir: str | Path, last: int, out: str | Path | None = None) -> Path:
    """Average the last `last` epoch checkpoints of exp_dir into `out` (default EXP/averaged-last<N>.pt)."""
    exp_dir = Path(exp_dir)
    if last < 1:
        raise AsrkitError(f"--last {last}: average at least 1 checkpoint")
    if not exp_dir.is_dir():
        raise AsrkitError(f"experiment folder {exp_dir} not found")
    found = epoch_checkpoints(exp_dir)
    if len(found) < last:
        have = ", ".join(p.name for _, p in found) or "none"
        raise AsrkitError(f"{exp_dir}: {len(found)} epoch checkpoint(s) ({have}), fewer than --last {last}; "
                          f"train with --set train.keep_epochs={last} (or more) to keep them, or average fewer")
    paths = [p for _, p in found[-last:]]
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
    averaged = {k: (sums[k] / last).to(v.dtype) if k in sums else v for k, v in reference.items()}
    newest.model.load_state_dict(averaged)
    out = Path(out) if out is not None else exp_dir / f"averaged-last{last}.pt"
    state = {"averaged": [p.name for p in paths], "step": newest.state.get("step", 0),
             "epoch": newest.state.get("epoch", 0)}
    save_checkpoint(out, config=newest.config, tokenizer=newest.tokenizer, featurizer=newest.featurizer,
                    model=newest.model, train_state=state)
    return out

