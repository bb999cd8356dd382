"""Shared fixtures: paths to the embedded FSDD subset and to ../shared/data (optional, skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
