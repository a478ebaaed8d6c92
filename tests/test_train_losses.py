"""Certified-training losses: each decreases on a tiny problem; special cases reduce as documented."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import boundc
from boundc.train import losses

CLIP = (0.0, 1.0)


def _problem(n: int = 32):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 4, 4, generator=g)
    y = (x[:, 0, 0, :2].sum(1) > 1.0).long() + 2 * (x[:, 0, 3, 3] > 0.5).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    return model, x, y


def _descend(loss_fn, steps: int = 40) -> tuple[float, float]:
    model, x, y = _problem()
    cache = losses.BoundCache(model, x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = last = None
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model, cache, x, y)
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
        last = float(loss.detach())
    return first, last


def _has(method: str) -> bool:
    """Whether ``method`` exists and can bound the test model (others' methods may still be partial)."""
    if method not in boundc.methods():
        return False
    model, x, _ = _problem()
    try:
        boundc.compile(model, x, method=method)
    except boundc.BoundcError:
        return False
    return True


def test_worst_case_logits_layout():
    lower = torch.tensor([[1.0, 2.0, 3.0]])
    z = losses.worst_case_logits(lower, torch.tensor([2]), 4)
    assert torch.equal(z, torch.tensor([[-1.0, -2.0, 0.0, -3.0]]))


def test_ibp_loss_decreases():
    first, last = _descend(lambda m, c, x, y: losses.ibp_loss(m, c, x, y, 0.05, 0.5, CLIP).loss)
    assert last < 0.9 * first


def test_mixtrain_loss_decreases():
    g = torch.Generator().manual_seed(1)
    first, last = _descend(lambda m, c, x, y: losses.mixtrain_loss(m, c, x, y, 0.05, 0.5, 8, CLIP, generator=g).loss)
    assert last < 0.9 * first


def test_tightness_regularizers_decrease():
    def fn(m, c, x, y):
        r1, r2 = losses.tightness_regularizers(m, c, x, y, 0.05, CLIP, method="ibp")
        assert float(r1) >= 0 and float(r2) >= 0
        return r1 + r2
    first, last = _descend(fn)
    assert last < first


@pytest.mark.parametrize("method", ["crown", "fast-lin", "forward"])
def test_linear_bound_loss_decreases(method):
    if not _has(method):
        pytest.skip(f"{method} not available yet")
    first, last = _descend(lambda m, c, x, y: losses.bound_loss(m, c, x, y, 0.05, 0.0, CLIP, method).loss)
    assert last < 0.9 * first


def test_crown_ibp_loss_decreases():
    if not _has("crown-ibp"):
        pytest.skip("crown-ibp not available yet")
    first, last = _descend(lambda m, c, x, y: losses.crown_ibp_loss(m, c, x, y, 0.05, 0.5, 0.5, CLIP).loss)
    assert last < 0.9 * first


def test_crown_ibp_beta0_is_ibp():
    model, x, y = _problem()
    cache = losses.BoundCache(model, x)
    a = losses.crown_ibp_loss(model, cache, x, y, 0.05, 0.3, 0.0, CLIP).loss
    b = losses.ibp_loss(model, cache, x, y, 0.05, 0.3, CLIP).loss
    assert torch.allclose(a, b)


@pytest.mark.parametrize("eps,kappa", [(0.0, 0.5), (0.1, 1.0)])
def test_reduces_to_plain_training(eps, kappa):
    model, x, y = _problem()
    cache = losses.BoundCache(model, x)
    out = losses.ibp_loss(model, cache, x, y, eps, kappa, CLIP)
    assert torch.allclose(out.loss, F.cross_entropy(model(x), y))
    g1 = torch.autograd.grad(out.loss, list(model.parameters()))
    g2 = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    assert all(torch.allclose(a, b) for a, b in zip(g1, g2))


def test_ibp_loss_at_kappa0_is_bound_of_clean():
    """At ε=0 via the bound path, worst-case CE equals clean CE (bounds are exact)."""
    model, x, y = _problem()
    cache = losses.BoundCache(model, x)
    lower = losses.margin_lower_bounds(cache.get("ibp"), x, y, 0.0, CLIP, 4)
    assert torch.allclose(losses.verified_ce(lower, y, 4), F.cross_entropy(model(x), y), atol=1e-5)


def test_mixtrain_full_k_equals_full_verified_training():
    model, x, y = _problem()
    cache = losses.BoundCache(model, x)
    alpha = 0.7
    mix = losses.mixtrain_loss(model, cache, x, y, 0.05, alpha, len(y), CLIP).loss
    full = losses.ibp_loss(model, cache, x, y, 0.05, 1 - alpha, CLIP).loss   # κ = 1 − α
    assert torch.allclose(mix, full, atol=1e-6)
    only_verified = losses.mixtrain_loss(model, cache, x, y, 0.05, 1.0, len(y), CLIP).loss
    assert torch.allclose(only_verified, losses.ibp_loss(model, cache, x, y, 0.05, 0.0, CLIP).loss, atol=1e-6)


def test_dynamic_alpha_rule():
    d = losses.DynamicAlpha(alpha=0.4, step=0.05, every=5, hi=0.8, min_clean_acc=0.9)
    assert d.update(3, 0.95) == 0.4
    assert d.update(5, 0.95) == pytest.approx(0.45)
    assert d.update(10, 0.5) == pytest.approx(0.4)


def test_bound_cache_compiles_once_and_follows_parameters():
    model, x, y = _problem()
    cache = losses.BoundCache(model, x)
    bm = cache.get("ibp")
    assert cache.get("ibp") is bm
    with torch.no_grad():
        model[-1].bias.add_(1.0)
    lo, up = bm(x, x)
    assert torch.allclose(lo, model(x), atol=1e-5)
