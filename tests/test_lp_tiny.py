"""Tiny networks against an exact LP of the triangle relaxation (HiGHS) and the Wong–Kolter dual."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

import boundc
from boundc.options import CompileOptions, LinearOptions
from boundc.report import node_bounds
from tests.soundness import check_sound


def _tiny(seed: int, hidden=(10, 8)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers, n = [], 4
    for h in hidden:
        layers += [nn.Linear(n, h), nn.ReLU()]
        n = h
    return nn.Sequential(*layers, nn.Linear(n, 3)).double().eval()


def _triangle_lp(model: nn.Sequential, bounds: list, x0: np.ndarray, eps: float, c: np.ndarray) -> float:
    """min c·y over the box and the triangle relaxation with the given pre-activation bounds."""
    lins = [m for m in model if isinstance(m, nn.Linear)]
    sizes = [4] + [m.out_features for m in lins]
    # variables: x, then (z_k, a_k) per hidden layer, then y
    offs, k = [0], 4
    for s in sizes[1:-1]:
        offs.append(k)
        k += 2 * s
    offs.append(k)
    nvar = k + sizes[-1]
    A_eq, b_eq, A_ub, b_ub = [], [], [], []
    lo = np.full(nvar, -np.inf)
    hi = np.full(nvar, np.inf)
    lo[:4], hi[:4] = x0 - eps, x0 + eps
    prev = (0, 4)  # (offset, size) of the previous activation vector
    for li, m in enumerate(lins):
        W, b = m.weight.detach().numpy(), m.bias.detach().numpy()
        out = offs[li + 1]
        for j in range(W.shape[0]):
            row = np.zeros(nvar)
            row[prev[0]:prev[0] + prev[1]] = W[j]
            row[out + j] = -1
            A_eq.append(row)
            b_eq.append(-b[j])
        if li == len(lins) - 1:
            break
        n = W.shape[0]
        low, up = bounds[li]
        for j in range(n):
            z, a = out + j, out + n + j
            lo[z], hi[z] = low[j], up[j]
            if up[j] <= 0:
                lo[a] = hi[a] = 0
            elif low[j] >= 0:
                row = np.zeros(nvar)
                row[a], row[z] = 1, -1
                A_eq.append(row)
                b_eq.append(0)
            else:
                lo[a] = 0
                row = np.zeros(nvar)
                row[z], row[a] = 1, -1  # z - a <= 0
                A_ub.append(row)
                b_ub.append(0)
                s = up[j] / (up[j] - low[j])
                row = np.zeros(nvar)
                row[a], row[z] = 1, -s  # a - s z <= -s l
                A_ub.append(row)
                b_ub.append(-s * low[j])
        prev = (out + n, n)
    cost = np.zeros(nvar)
    cost[offs[-1]:] = c
    res = linprog(cost, A_ub=np.array(A_ub) if A_ub else None, b_ub=np.array(b_ub) if b_ub else None,
                  A_eq=np.array(A_eq), b_eq=np.array(b_eq), bounds=list(zip(lo, hi)), method="highs")
    assert res.status == 0, res.message
    return float(res.fun)


def _pre_bounds(bm, model, xl, xu) -> list:
    nb = node_bounds(bm, xl, xu)
    names = [n.inputs[0] for n in bm.graph if n.op == "relu"]
    return [(nb[k].lower[0].numpy(), nb[k].upper[0].numpy()) for k in names]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lp_sandwich(seed: int) -> None:
    model = _tiny(seed)
    x = torch.rand(1, 4, dtype=torch.float64)
    eps = 0.3
    xl, xu = boundc.linf_box(x, eps)
    C = boundc.margin_spec(model(x).argmax(1), 3).double()
    opts = CompileOptions(linear=LinearOptions(alpha_iterations=50, alpha_lr=0.2))
    res = {}
    for method in ("crown", "fast-lin", "alpha-crown"):
        bm = boundc.compile(model, x, method=method, options=opts)
        lower, _ = check_sound(bm, model, xl, xu, C, samples=256, pgd_steps=30, method_name=method)
        res[method] = (lower[0].detach().numpy(), _pre_bounds(bm, model, xl, xu))
    # sampled / attacked minimum
    with torch.no_grad():
        xs = xl + (xu - xl) * torch.rand(20000, 4, dtype=torch.float64)
        ys = torch.einsum("sk,bk->bs", C[0], model(xs)).min(0).values.numpy()
    gaps = []
    for method, (lower, pre) in res.items():
        for s in range(C.shape[1]):
            lp = _triangle_lp(model, pre, x[0].numpy(), eps, C[0, s].numpy())
            assert lower[s] <= lp + 1e-6, (method, s, lower[s], lp)
            assert lp <= ys[s] + 1e-6, (method, s, lp, ys[s])
            if method == "alpha-crown":
                gaps.append(lp - lower[s])
    assert np.all(res["alpha-crown"][0] >= res["crown"][0] - 1e-9)
    print(f"alpha-CROWN gap to LP (seed {seed}): max {max(gaps):.4g}, mean {np.mean(gaps):.4g}")


def test_fast_lin_equals_wong_kolter_dual() -> None:
    model = _tiny(3, hidden=(16,))
    x = torch.rand(2, 4, dtype=torch.float64)
    eps = 0.2
    xl, xu = boundc.linf_box(x, eps)
    C = boundc.margin_spec(model(x).argmax(1), 3).double()
    bm = boundc.compile(model, x, method="fast-lin")
    with torch.no_grad():
        lower, _ = bm(xl, xu, C)
    W1, b1 = model[0].weight.detach(), model[0].bias.detach()
    W2, b2 = model[2].weight.detach(), model[2].bias.detach()
    for i in range(2):
        z = W1 @ x[i] + b1
        r = eps * W1.abs().sum(1)
        l, u = z - r, z + r
        I = (l < 0) & (u > 0)
        d = torch.where(I, u / (u - l).where(I, torch.ones_like(u)), (l >= 0).double())
        for s in range(C.shape[1]):
            c = C[i, s]
            nu2 = -c                       # nu_k = -c
            nu1 = d * (W2.T @ nu2)         # nu_1 = D nu_hat_1
            nu_hat0 = W1.T @ nu1
            J = (-(nu2 @ b2) - (nu1 @ b1) - x[i] @ nu_hat0 - eps * nu_hat0.abs().sum()
                 + (l[I] * nu1[I].clamp(min=0)).sum())
            assert abs(J.item() - lower[i, s].item()) <= 1e-5 * max(1.0, abs(J.item()))
