"""Shared pytest setup: deterministic, single-threaded torch per worker, paths to shared data."""

from __future__ import annotations

import importlib.util
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
        pytest.skip(f"needs {p}: ../shared is the project's folder beside the repository with the data (MNIST, "
                    "CIFAR samples), the VNN-COMP benchmarks and reference bounds; absent in a bare clone "
                    "(set BOUNDC_SHARED to use another location; see the README)")
    return p


def load_reference(name: str) -> tuple[torch.nn.Module, dict, dict]:
    """A model of ``../shared/reference`` (eval mode, stored weights), its inputs and its reference bounds."""
    folder = shared_path("reference")
    spec = importlib.util.spec_from_file_location("ref_models", folder / "ref_models.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    model = ref.build_model(name)
    model.load_state_dict(torch.load(folder / f"{name}.state_dict.pt"))
    return model.eval(), torch.load(folder / f"{name}.inputs.pt"), torch.load(folder / f"{name}.bounds.pt")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long test (tens of seconds); deselect with -m 'not slow'")
