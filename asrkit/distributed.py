"""This process among torchrun's ranks, and the few collectives the training loop needs.

`Group.start` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), picks this rank's device (one GPU
per rank, or the CPU) and joins the process group (NCCL on GPUs, gloo on the CPU). Alone (no torchrun, or one
process) every collective is free and returns its input. `wrap` puts a model's loss under PyTorch's
DistributedDataParallel, which averages the gradients: asrkit has no communication code of its own beyond
handing rank 0's decisions to the others and averaging BatchNorm statistics before a save.
"""

from __future__ import annotations

import inspect
import os
import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from asrkit.checkpoint import pick_device
from asrkit.errors import AsrkitError
from asrkit.models import ASRModel
from asrkit.records import Batch

T = TypeVar("T")

# Rank 0 alone computes feature statistics and decodes dev while the other ranks wait for it.
TIMEOUT = timedelta(hours=2)
# DDP's argument that stops it copying rank 0's buffers to the others before every forward (renamed in torch 2.14).
_DDP_ARGS = inspect.signature(nn.parallel.DistributedDataParallel).parameters
_NO_BUFFER_SYNC: dict[str, Any] = {"forward_sync_buffers" if "forward_sync_buffers" in _DDP_ARGS
                                   else "broadcast_buffers": False}


class Group:
    """This process among the ranks: rank, world size, device; `main` is rank 0, which alone writes and prints."""

    def __init__(self, rank: int, world: int, device: torch.device, owned: bool = False) -> None:
        self.rank, self.world, self.device, self.owned = rank, world, device, owned
        self.main = rank == 0

    @classmethod
    def start(cls, device_name: str) -> Group:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(0, 1, pick_device(device_name))
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        cuda = pick_device(device_name.split(":")[0]).type == "cuda"  # the name checked; each rank takes its own GPU
        if cuda and local_rank >= torch.cuda.device_count():
            raise AsrkitError(f"LOCAL_RANK {local_rank}, but this node has {torch.cuda.device_count()} GPU(s): start "
                              "at most one process per GPU (torchrun --nproc-per-node)")
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")  # one GPU per rank
        if cuda:
            torch.cuda.set_device(device)
        owned = not dist.is_initialized()
        if owned:
            dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT, device_id=device if cuda else None)
        return cls(rank, world, device, owned)

    def wrap(self, model: ASRModel) -> nn.parallel.DistributedDataParallel:
        """DistributedDataParallel around `model.loss`: DDP averages gradients in hooks that its forward() sets
        up, so the loss must be computed through it. BatchNorm buffers are not copied from rank 0 before every
        forward; `average_buffers` averages them before each save instead."""
        return nn.parallel.DistributedDataParallel(
            LossOf(model), device_ids=[self.device.index] if self.device.type == "cuda" else None, **_NO_BUFFER_SYNC)

    def sum(self, *values: float | torch.Tensor) -> list[float]:
        """Each value summed over the ranks."""
        if self.world == 1:
            return [float(v) for v in values]
        out = torch.stack([torch.as_tensor(v, dtype=torch.float64).to(self.device) for v in values])
        dist.all_reduce(out)
        return out.tolist()

    def from_main(self, fn: Callable[[], T]) -> T:
        """fn() run on rank 0 only; its result, or its AsrkitError, is handed to every rank."""
        if self.world == 1:
            return fn()
        box: list[Any] = [None]
        if self.main:
            try:
                box = [("ok", fn())]
            except AsrkitError as err:
                box = [("error", str(err))]
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise AsrkitError(value)
        return value

    def gather(self, obj: T) -> list[T]:
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def average_buffers(self, model: nn.Module) -> None:
        """Floating-point buffers (BatchNorm running statistics) := their mean over the ranks."""
        if self.world == 1:
            return
        for buf in model.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf /= self.world

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()


class LossOf(nn.Module):
    """forward(batch) = model.loss(batch): what DistributedDataParallel wraps, so that it sees the loss."""

    def __init__(self, model: ASRModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model.loss(batch)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random generators (torch CPU, Python, the device's CUDA generator), as saved in last.pt."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()), "cuda": cuda}


def restore_rng(state: dict[str, Any], group: Group, seed: int) -> None:
    """This rank's RNG states from a checkpoint's train state (`rng_ranks`: one per rank; else rank 0's in
    `rng_torch`, `rng_python`, `rng_cuda`). A rank without one (an interrupt's save, another world size) is
    re-seeded, so its dropout masks differ from the uninterrupted run's."""
    ranks = state.get("rng_ranks") or []
    if len(ranks) == group.world and group.world > 1:
        own = ranks[group.rank]
    elif group.main:
        own = {"torch": state["rng_torch"], "python": state["rng_python"], "cuda": state.get("rng_cuda")}
    else:
        torch.manual_seed(seed + group.rank + 7919 * int(state.get("step", 0)))
        return
    torch.set_rng_state(own["torch"])
    random.setstate(_as_tuple(own["python"]))
    if own.get("cuda") is not None and group.device.type == "cuda":
        torch.cuda.set_rng_state(own["cuda"], group.device)


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value
