"""Trainer: resume continues to the identical state; 2-process torchrun matches 1 process; CLI smoke."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import boundc
from boundc.train.trainer import TrainConfig, Trainer, load_checkpoint


def _cfg(out, **kw) -> TrainConfig:
    base = dict(dataset="digits", model="tiny", method="ibp", eps=0.1, epochs=2, batch_size=40, max_train=200,
                schedule="custom", warmup_epochs=0.5, rampup_epochs=1, eval_limit=40, progress=False, out=str(out))
    return TrainConfig(**{**base, **kw})


def _weights(path) -> dict:
    return load_checkpoint(path)["model"]


def test_resume_mid_epoch_is_identical(tmp_path):
    full = Trainer(_cfg(tmp_path / "full"))
    full.fit()
    part = Trainer(_cfg(tmp_path / "part", max_steps=3))          # interrupted mid-epoch 1 (5 steps/epoch)
    assert part.fit()["stopped_early"]
    resumed = Trainer(_cfg(tmp_path / "part"), resume=str(tmp_path / "part" / "checkpoint.pt"))
    resumed.fit()
    a, b = _weights(tmp_path / "full" / "checkpoint.pt"), _weights(tmp_path / "part" / "checkpoint.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "full" / "train.json").exists() and (tmp_path / "full" / "curves.png").exists()


@pytest.mark.parametrize("method", ["mixtrain", "crown-ibp"])
def test_mixtrain_and_crown_ibp_steps_lower_their_robust_loss(tmp_path, method):
    """Steps of the trainer's objective at a fixed ε lower that loss; the margin bounds are finite and sound."""
    tr = Trainer(_cfg(tmp_path / method, method=method, epochs=1, mixtrain_k=40, mixtrain_alpha=0.5))
    xb, yb = tr.data.train.x[:40], tr.data.train.y[:40]
    args = (xb, yb, 0.05, 0.5, 1.0, 0.5, 0)  # eps, kappa, beta (crown-ibp), alpha (mixtrain), step
    before = [p.detach().clone() for p in tr.model.parameters()]
    tr.model.train()
    loss0 = float(tr.objective(*args))
    lower = tr.objective.last.margin_lower
    assert lower is not None and bool(torch.isfinite(lower).all())
    with torch.no_grad():                         # sound: the bound is below the clean margins
        z = tr.model(xb)
        clean_margin = boundc.margin_spec(yb, z.shape[1]).to(z.dtype) @ z.unsqueeze(2)
    assert bool((lower <= clean_margin.squeeze(2) + 1e-5).all())
    for g in tr.opt.param_groups:
        g["lr"] = 1e-3
    for _ in range(10):
        tr.opt.zero_grad()
        tr.objective(*args).backward()
        tr.opt.step()
    assert float(tr.objective(*args)) < loss0
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))


def test_torchrun_two_processes_match_one(tmp_path):
    args = ["train", "--dataset", "digits", "--model", "tiny", "--method", "ibp", "--eps", "0.1", "--epochs", "1",
            "--batch-size", "40", "--max-train", "160", "--schedule", "custom", "--rampup-epochs", "0.5",
            "--eval-limit", "40", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "boundc.cli", *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "boundc.cli", *args, "--out", str(tmp_path / "two")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = _weights(tmp_path / "one" / "checkpoint.pt"), _weights(tmp_path / "two" / "checkpoint.pt")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
