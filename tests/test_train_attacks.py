"""PGD with restarts and the interval attack never leave the clipped ε-ball; metrics are sound."""

from __future__ import annotations

import torch
from torch import nn

import boundc
from boundc.train.losses import BoundCache
from boundc.train.metrics import EvalConfig, evaluate, format_table
from boundc.verify.attacks import interval_attack, pgd_box, pgd_linf


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


def test_pgd_box_signature_unchanged():
    model = _model()
    x = torch.rand(2, 1, 4, 4)
    out = pgd_box(model, x - 0.1, x + 0.1, steps=2)
    assert out.shape == (2, 3)


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
