"""Shared fixtures and helpers: paths to the embedded FSDD subset and to ../shared/data (optional, skipped when
absent), KenLM tool and module detection, one-thread torch for tiny recurrent models, a few optimiser steps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "tests" / "assets"
FSDD_ASSETS = ASSETS / "fsdd" / "recordings"


def shared_data() -> Path:
    return Path(os.environ.get("ASRKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data_dir() -> Path:
    path = shared_data()
    if not path.is_dir():
        pytest.skip(f"real corpora not found at {path} (set ASRKIT_SHARED_DATA)")
    return path


def kenlm_tools_found() -> bool:
    """True when KenLM's lmplz and build_binary can be found (on PATH or in tools/, see `make kenlm`)."""
    from asrkit.errors import AsrkitError
    from asrkit.lm_build import find_tool

    try:
        find_tool("lmplz")
        find_tool("build_binary")
    except AsrkitError:
        return False
    return True


needs_kenlm_tools = pytest.mark.skipif(not kenlm_tools_found(),
                                       reason="KenLM's lmplz / build_binary not installed (make kenlm)")


def kenlm_module_found() -> bool:
    """True when the kenlm Python module (the `lm` extra) imports."""
    try:
        import kenlm  # noqa: F401
    except ImportError:
        return False
    return True


# Only the tests that load an n-gram LM through the kenlm module: the rest of the LM tests run without it.
needs_kenlm = pytest.mark.skipif(not kenlm_module_found(),
                                 reason="the kenlm module is not installed (pip install 'asrkit[lm]')")


@pytest.fixture(scope="module")
def one_torch_thread() -> object:
    """Tiny per-frame LSTM steps are much slower with several threads on a busy CPU; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def losses_of_steps(model: torch.nn.Module, batch: object, steps: int, lr: float = 1e-2) -> list[float]:
    """Train `model` on one batch for `steps` Adam steps; the loss before each step."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model.loss(batch)  # type: ignore[operator]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
