"""PGD with restarts and the interval attack never leave the clipped ε-ball; metrics are sound."""

from __future__ import annotations

import torch
from torch import nn

import boundc
from boundc.train.losses import BoundCache
from boundc.train.metrics import EvalConfig, evaluate, format_table
from boundc.verify.attacks import interval_attack, pgd, pgd_box, pgd_linf


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3)).eval()


def _inside(adv, x, eps):
    return bool(((adv - x).abs() <= eps + 1e-6).all() and (adv >= 0).all() and (adv <= 1).all())


def test_pgd_stays_in_ball_and_finds_lower_margins():
    model = _model()
    x = torch.rand(8, 1, 4, 4)
    x[0] = 0.0                                   # clipping matters here
    y = model(x).argmax(1)
    adv = pgd_linf(model, x, y, 0.1, steps=20, restarts=3, generator=torch.Generator().manual_seed(0))
    assert _inside(adv, x, 0.1)
    z, za = model(x), model(adv)
    m0 = z.gather(1, y[:, None]) - z.masked_fill(nn.functional.one_hot(y, 3).bool(), -1e9).amax(1, keepdim=True)
    m1 = za.gather(1, y[:, None]) - za.masked_fill(nn.functional.one_hot(y, 3).bool(), -1e9).amax(1, keepdim=True)
    assert bool((m1 <= m0 + 1e-5).all())


def test_interval_attack_stays_in_ball():
    model = _model()
    x = torch.rand(6, 1, 4, 4)
    y = model(x).argmax(1)
    bm = boundc.compile(model, x, method="ibp")
    adv = interval_attack(model, bm, x, y, 0.15, steps=5, pgd_steps=5)
    assert _inside(adv, x, 0.15)


def test_pgd_box_minimises_each_column_to_the_box_vertex():
    """A linear objective's minimum over a box is a known vertex; every column is attacked on its own."""
    W = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 1.0, 3.0]])    # (n=2, M=3)
    lo, hi = torch.tensor([[-1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 2.0], [0.5, 3.0]])
    out = pgd_box(lambda x: x @ W, lo, hi, steps=20)
    exact = torch.minimum(lo.unsqueeze(2) * W, hi.unsqueeze(2) * W).sum(1)   # (B, M)
    assert out.shape == (2, 3) and torch.allclose(out, exact, atol=1e-6)


def test_pgd_restarts_find_the_known_counterexample():
    """f(x) = relu(x) - 3 relu(x - 0.6) on [0, 1]: from the centre PGD slides to the local minimum f(0) = 0;
    random restarts reach the global minimum f(1) = -0.2 (a counterexample to f >= 0), inside the box."""
    def f(x):
        return (torch.relu(x) - 3 * torch.relu(x - 0.6)).sum(1, keepdim=True)

    lo, hi = torch.zeros(1, 1), torch.ones(1, 1)
    one = pgd(f, lo, hi, steps=30, restarts=1)
    assert abs(float(one.value) - 0.0) < 1e-6
    many = pgd(f, lo, hi, steps=30, restarts=8, generator=torch.Generator().manual_seed(0))
    assert abs(float(many.value) + 0.2) < 1e-6
    x = many.x[:, 0]
    assert bool(((x >= lo) & (x <= hi)).all()) and torch.allclose(f(x), many.value)


def test_verified_implies_pgd_robust_and_table():
    model = _model()
    x = torch.rand(20, 1, 4, 4)
    y = model(x).argmax(1)
    res = evaluate(model, x, y, EvalConfig(0.01, ("ibp", "no-such-method"), pgd_steps=10, restarts=2),
                   BoundCache(model, x))
    assert res.clean == 1.0 and res.verified["ibp"] <= res.pgd <= res.clean
    assert "no-such-method" in res.skipped
    assert "verified (ibp)" in format_table(res)


def test_cascade_best_bound_and_complete_milp_are_sound_and_decide_everything():
    from boundc.verify.milp import MilpOptions

    model = _model()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(30, 1, 4, 4, generator=g)
    y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 3                       # a few misclassified samples
    cfg = EvalConfig(0.06, ("ibp", "crown-ibp"), refine=("alpha-crown",), complete=MilpOptions(time_limit=30),
                     pgd_steps=30, restarts=3, pgd_limit=None)
    res = evaluate(model, x, y, cfg, BoundCache(model, x))
    best, exact = res.verified["best bound"], res.verified["complete MILP"]
    assert max(res.verified["ibp"], res.verified["crown-ibp"]) <= best <= exact <= res.pgd <= res.clean
    c = res.cascade
    assert c["undecided (time-outs)"] == 0        # a 32-ReLU net is decided exactly
    assert c["verified by bounds"] + c["falsified by PGD"] + c["MILP verified"] + c["MILP falsified"] == 27
    assert 0 < best < 1 and exact * 30 == c["verified by bounds"] + c["MILP verified"]
    assert "verified (complete MILP)" in format_table(res)
