"""Every activation relaxation is sound for any l <= u: checked by dense sampling between l and u."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from boundc.passes.rules.relaxation import ACTIVATIONS, relax

FUNCS = {
    "relu": (torch.relu, {}),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.1), {"negative_slope": 0.1}),
    "leaky_relu_steep": (lambda x: F.leaky_relu(x, 2.0), {"negative_slope": 2.0}),
    "sigmoid": (torch.sigmoid, {}),
    "tanh": (torch.tanh, {}),
    "hardtanh": (lambda x: torch.clamp(x, -1.0, 2.0), {"min_val": -1.0, "max_val": 2.0}),
    "softplus": (lambda x: F.softplus(x, 1.0, 20.0), {"beta": 1.0, "threshold": 20.0}),
}


def _boxes(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    centre = torch.randn(400, generator=g, dtype=dtype) * 4
    width = torch.rand(400, generator=g, dtype=dtype) ** 3 * 10
    width[:20] = 0  # degenerate boxes
    width[20:40] = 1e-6
    l, u = centre - width / 2, centre + width / 2
    return l, u


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize("mode", ["crown", "fast-lin", "alpha"])
def test_relaxation_sound(name: str, mode: str, dtype: torch.dtype) -> None:
    f, attrs = FUNCS[name]
    op = name.replace("_steep", "")
    l, u = _boxes(dtype)
    alpha = torch.rand(l.shape, dtype=dtype) if mode == "alpha" else None
    lines = relax(op, l, u, "crown" if mode == "alpha" else mode, alpha, **attrs)
    t = torch.linspace(0, 1, 2001, dtype=dtype).unsqueeze(1)
    xs = l + (u - l) * t  # (2001, 400)
    y = f(xs)
    lo, hi = lines.lw * xs + lines.lb, lines.uw * xs + lines.ub
    tol = 4 * torch.finfo(dtype).eps * (1 + y.abs())
    assert bool((lo <= y + tol).all()), f"{name}: lower line above f by {(lo - y).max().item():.3g}"
    assert bool((hi >= y - tol).all()), f"{name}: upper line below f by {(y - hi).max().item():.3g}"
    assert bool((lines.lw >= 0).all() and (lines.uw >= 0).all()), "monotone activations need slopes >= 0"


def test_declared_once() -> None:
    assert {"relu", "leaky_relu", "sigmoid", "tanh", "hardtanh", "softplus"} <= set(ACTIVATIONS)


def test_relu_adaptive_and_fastlin_slopes() -> None:
    l, u = torch.tensor([-1.0, -3.0, -2.0]), torch.tensor([2.0, 1.0, 2.0])
    c = relax("relu", l, u, "crown")
    assert c.lw.tolist() == [1.0, 0.0, 0.0]  # 1 iff u > -l
    fl = relax("relu", l, u, "fast-lin")
    assert torch.allclose(fl.lw, u / (u - l)) and torch.allclose(fl.uw, u / (u - l))
    assert torch.allclose(c.ub, -l * u / (u - l))
