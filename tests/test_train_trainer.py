"""Trainer: resume continues to the identical state; 2-process torchrun matches 1 process; CLI smoke."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

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


def test_mixtrain_and_crown_ibp_methods_run(tmp_path):
    Trainer(_cfg(tmp_path / "mix", method="mixtrain", mixtrain_k=5, epochs=1)).fit()
    import boundc

    if "crown-ibp" in boundc.methods():
        Trainer(_cfg(tmp_path / "cibp", method="crown-ibp", epochs=1)).fit()


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
