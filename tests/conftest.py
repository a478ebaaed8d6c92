"""Shared pytest setup: deterministic, single-threaded torch per worker, paths to shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(os.environ.get("BOUNDC_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def shared_path(*parts: str) -> Path:
    """A path under ../shared/, skipping the test when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p
