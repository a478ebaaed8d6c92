"""Complete verification by MILP (HiGHS) on tiny networks: exact minima, sound verdicts, clear errors."""

from __future__ import annotations

import pytest
import torch
from boundc.passes.graph.analysis import evaluate
from torch import nn

import boundc
from boundc.errors import BoundcError
from boundc.report import intersect_node_bounds, interval_node_bounds
from boundc.verify.attacks import pgd_box
from boundc.verify.milp import MilpOptions, MilpVerifier


class _Residual(nn.Module):
    """conv → relu → conv + skip → relu → flatten → linear: exercises conv, add and reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, 3, padding=1)
        self.c2 = nn.Conv2d(3, 1, 3, padding=1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = torch.relu(self.c2(h) + x)
        return self.fc(h.flatten(1))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))


def _sampled_min(model, xl, xu, c, n: int = 4000) -> float:
    """Lowest ``c·f(x)`` over random points, vertices and a PGD attack inside the box."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        u = torch.rand((n, *xl.shape[1:]), generator=g, dtype=xl.dtype)
        u[: n // 4] = (u[: n // 4] > 0.5).to(xl.dtype)
        xs = xl + (xu - xl) * u
        best = float((model(xs) @ c).min())
    attacked = pgd_box(lambda x: (model(x) @ c)[:, None], xl, xu, steps=100, restarts=8, generator=g)
    return min(best, float(attacked.min()))


@pytest.mark.parametrize("factory, shape, eps", [(_mlp, (4,), 0.4), (_Residual, (1, 4, 4), 0.15)])
@pytest.mark.parametrize("seed", [0, 1])
def test_milp_minimum_is_exact_and_verdicts_are_sound(factory, shape, eps, seed) -> None:
    torch.manual_seed(seed)
    model = factory().double().eval()
    x = torch.rand(1, *shape, dtype=torch.float64)
    xl, xu = boundc.linf_box(x, eps)
    bms = [boundc.compile(model, x, method=m) for m in ("crown-ibp", "crown")]
    bounds = intersect_node_bounds(bms, xl, xu)
    verifier = MilpVerifier(bms[0].graph, MilpOptions(time_limit=60, tolerance=1e6))  # τ huge: always solve to optimum
    with torch.no_grad():
        y0 = model(x)[0]
    C = boundc.margin_spec(y0.argmax()[None], 3).double()[0]
    for c in C:
        res = verifier.verify_row(xl, xu, c, bounds)
        attacked = _sampled_min(model, xl, xu, c)
        assert res.minimum is not None, res
        # the MILP optimum is a real point of the box: never above what attacks find, and attained there
        assert res.minimum <= attacked + 1e-6, (res.minimum, attacked)
        with torch.no_grad():
            assert float(model(res.point) @ c) == pytest.approx(res.minimum, abs=1e-6)
        with torch.no_grad():
            crown_lower = float(bms[1](xl, xu, c[None, None])[0][0, 0])
        assert crown_lower <= res.minimum + 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2, 4])  # seed 3 draws a net that predicts one class everywhere
def test_milp_verdicts_agree_with_attacks(seed: int) -> None:
    torch.manual_seed(seed)
    model = _mlp().double().eval()
    x = torch.rand(1, 4, dtype=torch.float64)
    verifier = MilpVerifier(boundc.lower(model, x))
    bms = [boundc.compile(model, x, method="crown")]
    with torch.no_grad():
        label = model(x).argmax(1)
    C = boundc.margin_spec(label, 3).double()[0]
    seen = set()
    for eps in (0.001, 0.01, 0.05, 0.2, 1.0, 10.0):
        xl, xu = boundc.linf_box(x, eps)
        status, rows = verifier.verify_spec(xl, xu, C, intersect_node_bounds(bms, xl, xu))
        attacked = min(_sampled_min(model, xl, xu, c) for c in C)
        seen.add(status)
        if status == "verified":
            assert attacked > 0, (eps, attacked)
        elif status == "falsified":
            cex = rows[-1].counterexample
            assert torch.all(cex >= xl) and torch.all(cex <= xu)
            with torch.no_grad():
                assert float((model(cex) @ C.T).min()) < 0
        else:
            pytest.fail(f"a tiny MLP should be decided within the time limit (eps {eps})")
    assert seen == {"verified", "falsified"}, seen  # the sweep crosses the robustness radius


def test_milp_refuses_non_piecewise_linear_ops() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2))
    with pytest.raises(BoundcError, match=r"sigmoid.*no MILP encoding"):
        MilpVerifier(boundc.lower(model, torch.rand(1, 3)))


def test_milp_needs_bounds_on_relu_inputs() -> None:
    model = _mlp().double().eval()
    x = torch.rand(1, 4, dtype=torch.float64)
    verifier = MilpVerifier(boundc.lower(model, x))
    xl, xu = boundc.linf_box(x, 0.1)
    with pytest.raises(BoundcError, match="no finite bounds"):
        verifier.verify_row(xl, xu, torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64), {})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_milp_excludes_conjunctions_soundly(seed: int) -> None:
    """``A·y ≤ b`` with two rows (a VNN-LIB disjunct): excluded only if no sampled point meets both rows."""
    torch.manual_seed(seed)
    model = _mlp().double().eval()
    x = torch.rand(1, 4, dtype=torch.float64)
    verifier = MilpVerifier(boundc.lower(model, x))
    bm = boundc.compile(model, x, method="crown")
    A = torch.tensor([[-1.0, 1.0, 0.0], [-1.0, 0.0, 1.0]], dtype=torch.float64)   # y1 and y2 both ≥ y0 + b
    statuses = set()
    for eps, shift in ((0.05, 0.0), (0.5, 0.0), (0.5, -0.3), (2.0, 0.2)):
        xl, xu = boundc.linf_box(x, eps)
        b = torch.full((2,), shift, dtype=torch.float64)
        res = verifier.exclude(xl, xu, A, b, intersect_node_bounds([bm], xl, xu))
        statuses.add(res.status)
        with torch.no_grad():
            xs = xl + (xu - xl) * torch.rand(20000, 4, dtype=torch.float64)
            hit = ((model(xs) @ A.T) <= b).all(1).any()
        if res.status == "verified":
            assert not hit
        elif res.status == "falsified":
            with torch.no_grad():
                assert bool(((model(res.counterexample) @ A.T)[0] <= b).all())
        else:  # only an optimum inside the tolerance band (0, τ] is left undecided on a tiny net
            assert res.minimum is not None and 0 < res.minimum <= verifier.options.tolerance
        if res.minimum is not None:
            with torch.no_grad():
                assert res.minimum == pytest.approx(float(((model(res.point) @ A.T)[0] - b).max()), abs=1e-6)
    assert "verified" in statuses


@pytest.mark.parametrize("factory, shape", [(_mlp, (4,)), (_Residual, (1, 4, 4))])
def test_interval_node_bounds_contain_every_sampled_node_value(factory, shape) -> None:
    """The IR-walking IBP used for the big-M constants is sound at every node, not just the output."""
    torch.manual_seed(0)
    model = factory().double().eval()
    x = torch.rand(1, *shape, dtype=torch.float64)
    g = boundc.lower(model, x)
    xl, xu = boundc.linf_box(x, 0.2)
    bounds = interval_node_bounds(g, xl, xu)
    assert {n.inputs[0] for n in g if n.op == "relu"} <= set(bounds)
    u = torch.rand((512, *shape), dtype=torch.float64)
    u[:128] = (u[:128] > 0.5).double()                     # vertices too
    values = evaluate(g, xl + (xu - xl) * u)
    for name, b in bounds.items():
        assert torch.all(values[name] >= b.lower - 1e-9) and torch.all(values[name] <= b.upper + 1e-9), name
