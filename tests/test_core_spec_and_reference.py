"""Spec elision, agreement with the stored reference bounds, and a check that the checker can fail."""

from __future__ import annotations

import pytest
import torch
from boundc.passes.rules.interval import Interval, centre_radius
from conftest import load_reference
from soundness import check_sound

import boundc
from boundc import examples


def _interval_spec(lower, upper, C):
    """Bounds of C @ y from bounds on y (no elision)."""
    c, r = centre_radius(Interval(lower, upper))
    return (torch.einsum("bsk,bk->bs", C, c) - torch.einsum("bsk,bk->bs", C.abs(), r),
            torch.einsum("bsk,bk->bs", C, c) + torch.einsum("bsk,bk->bs", C.abs(), r))


@pytest.mark.parametrize("name", ["mlp", "small", "resnet", "pool"])
def test_elision_is_at_least_as_tight_as_bounding_logits(name):
    model = examples.build(name)
    x = torch.rand(4, 1, 28, 28)
    bm = boundc.compile(model, x)
    xl, xu = boundc.linf_box(x, 0.05, clip=(0, 1))
    C = boundc.margin_spec(model(x).argmax(1), 10)
    with torch.no_grad():
        el, eu = bm(xl, xu, C)
        nl, nu = _interval_spec(*bm(xl, xu), C)
    assert torch.all(el >= nl - 1e-5) and torch.all(eu <= nu + 1e-5)
    assert (el - nl).mean() > 0  # and strictly tighter on average


def test_elision_equals_interval_bound_of_the_folded_layer():
    model = examples.build("mlp").double()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    bm = boundc.compile(model, x)
    xl, xu = boundc.linf_box(x, 0.02)
    C = boundc.margin_spec(torch.tensor([1, 4, 9]), 10).double()
    # penultimate bounds from a network without the last layer
    body = torch.nn.Sequential(*list(model.children())[:-1])
    hl, hu = boundc.compile(body, x)(xl, xu)
    last = model[-1]
    w = torch.einsum("bsk,ki->bsi", C, last.weight)
    b = torch.einsum("bsk,k->bs", C, last.bias)
    c, r = (hu + hl) / 2, (hu - hl) / 2
    centre = torch.einsum("bsi,bi->bs", w, c) + b
    rad = torch.einsum("bsi,bi->bs", w.abs(), r)
    lower, upper = bm(xl, xu, C)
    torch.testing.assert_close(lower, centre - rad, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(upper, centre + rad, atol=1e-12, rtol=1e-12)


def test_spec_without_trailing_linear_is_appended():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10), torch.nn.Tanh())
    x = torch.rand(2, 1, 28, 28)
    bm = boundc.compile(model, x)
    assert any(n.op == "spec" for n in boundc.compiler.attach_spec(bm.graph))
    C = boundc.margin_spec(torch.tensor([0, 3]), 10)
    check_sound(bm, model, *boundc.linf_box(x, 0.05), C, samples=16, pgd_steps=5)


@pytest.mark.parametrize("name", ["mlp_784_256_256_10", "cnn_ibp_small"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ibp_matches_reference_bounds(name, dtype):
    model, inputs, bounds = load_reference(name)
    model = model.to(dtype)
    xl, xu = inputs["x_L"].to(dtype), inputs["x_U"].to(dtype)
    bm = boundc.compile(model, inputs["x"].to(dtype))
    ref = bounds[str(dtype).removeprefix("torch.")]["IBP"]
    with torch.no_grad():
        got = {"logits": bm(xl, xu), "margin": bm(xl, xu, inputs["C_margin"].to(dtype))}
    for key in ("logits", "margin"):
        for mine, theirs in zip(got[key], ref[key]):
            scale = theirs.abs().max().item()
            torch.testing.assert_close(mine, theirs.to(dtype), atol=1e-5 * max(1.0, scale), rtol=0)


class _Shrunk(torch.nn.Module):
    """A deliberately unsound bound module: bounds shrunk by 2% of their width."""

    def __init__(self, bm):
        super().__init__()
        self.bm = bm

    def forward(self, xl, xu, C=None):
        lower, upper = self.bm(xl, xu, C)
        w = upper - lower
        return lower + 0.02 * w, upper - 0.02 * w


def test_interval_bounds_of_an_affine_net_are_exact_and_the_checker_catches_shrinking():
    # IBP is exact for one affine layer: PGD reaches both ends, so 2% shrinking must be caught
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    x = torch.rand(2, 1, 28, 28)
    bm = boundc.compile(model, x)
    box = boundc.linf_box(x, 0.01)
    check_sound(bm, model, *box, samples=8, pgd_steps=5)
    for C in (None, boundc.margin_spec(torch.tensor([3, 7]), 10)):
        with pytest.raises(AssertionError, match="reachable"):
            check_sound(_Shrunk(bm), model, *box, C, samples=8, pgd_steps=5)
