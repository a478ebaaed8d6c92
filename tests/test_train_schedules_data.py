"""Schedules are pure functions of the step; data readers parse tiny synthetic files."""

from __future__ import annotations

import gzip
import math
import pickle
import struct

import numpy as np
import pytest
import torch
from torch import nn

from boundc.errors import BoundcError
from boundc.train import data, schedules
from boundc.train.models import build_model


def test_ramps():
    assert schedules.linear_ramp(0, 10, 20, 0, 1) == 0
    assert schedules.linear_ramp(15, 10, 20, 0, 1) == 0.5
    assert schedules.linear_ramp(25, 10, 20, 0, 1) == 1
    vals = [schedules.smooth_ramp(i, 0, 100, 0.0, 0.3) for i in range(101)]
    assert vals[0] == 0 and vals[-1] == pytest.approx(0.3)
    assert all(b >= a for a, b in zip(vals, vals[1:]))


def test_ibp_paper_preset():
    s = schedules.ibp_paper(0.2)
    assert (s.warmup_steps, s.rampup_steps, s.lr_milestones) == (2000, 10000, (15000, 25000))
    assert s.at(1000).eps == 0 and s.at(1000).kappa == 1
    assert s.at(7000).eps == pytest.approx(0.1) and s.at(7000).kappa == pytest.approx(0.75)
    assert s.at(12000).eps == pytest.approx(0.2) and s.at(12000).kappa == pytest.approx(0.5)
    assert s.at(20000).lr == pytest.approx(1e-4) and s.at(30000).lr == pytest.approx(1e-5)
    assert s.at(123) == s.at(123)                                    # pure


def _write_idx(path, arr: np.ndarray, gz: bool):
    code = {np.uint8: 0x08}[arr.dtype.type]
    payload = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    (gzip.open if gz else open)(path, "wb").write(payload)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_and_mnist_layout(tmp_path, gz):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 5), ("t10k", 3)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, (n,), dtype=np.uint8)
        suffix = ".gz" if gz else ""
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", imgs, gz)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    ds = data.load_dataset("fashion-mnist", str(tmp_path))
    assert ds.in_shape == (1, 28, 28) and len(ds.train) == 5 and len(ds.test) == 3
    assert ds.train.x.dtype == torch.float32 and 0 <= float(ds.train.x.min()) and float(ds.train.x.max()) <= 1
    raw = data.read_idx(tmp_path / f"train-images-idx3-ubyte{'.gz' if gz else ''}")
    assert torch.allclose(ds.train.x[:, 0], torch.from_numpy(raw.astype(np.float32) / 255))


def test_idx_reader_rejects_garbage(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x02\x03\x04junk")
    with pytest.raises(BoundcError):
        data.read_idx(p)
    p.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 100) + b"\x00" * 10)
    with pytest.raises(BoundcError, match="truncated"):
        data.read_idx(p)


def test_missing_dataset_dir_is_a_clear_error(tmp_path):
    with pytest.raises(BoundcError, match="no download"):
        data.load_dataset("mnist", str(tmp_path / "nope"))


def test_cifar_csv_and_batches(tmp_path):
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.integers(0, 10, (4, 1)), rng.integers(0, 256, (4, 3072))], 1)
    np.savetxt(tmp_path / "c.csv", rows, delimiter=",", fmt="%d")
    split = data.read_cifar_csv(tmp_path / "c.csv")
    assert split.x.shape == (4, 3, 32, 32)
    # HWC interleaved: pixel (0,0) is columns 1..3
    assert torch.allclose(split.x[0, :, 0, 0], torch.tensor(rows[0, 1:4] / 255.0, dtype=torch.float32))
    bdir = tmp_path / "batches"
    bdir.mkdir()
    for name in ("data_batch_1", "test_batch"):
        with open(bdir / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [1, 2]}, f)
    ds = data.load_cifar10(bdir)
    assert ds.in_shape == (3, 32, 32) and ds.train.y.tolist() == [1, 2]


def test_digits_builtin():
    ds = data.load_dataset("digits")
    assert ds.in_shape == (1, 8, 8) and len(ds.train) + len(ds.test) == 1797
    assert float(ds.train.x.max()) <= 1.0


def test_paper_init_is_sonnet_truncated_normal_with_zero_bias():
    model = build_model("small", (1, 28, 28), 10, seed=0, init="paper")
    again = build_model("small", (1, 28, 28), 10, seed=0, init="paper")
    default = build_model("small", (1, 28, 28), 10, seed=0)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 4
    for m in layers:
        std = 1 / math.sqrt(m.weight[0].numel())
        assert float(m.weight.abs().max()) <= 2 * std + 1e-7          # truncated at 2σ
        assert 0.8 * std < float(m.weight.std()) < 0.95 * std         # std of N(0,σ²) cut at ±2σ ≈ 0.88σ
        assert float(m.bias.abs().max()) == 0.0
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    assert not torch.equal(layers[1].weight, [m for m in default.modules() if isinstance(m, nn.Conv2d)][1].weight)
    with pytest.raises(BoundcError, match="unknown init"):
        build_model("small", (1, 28, 28), 10, init="xavier")
