"""IBP soundness on the model zoo: sampled and PGD-attacked points stay inside the bounds."""

from __future__ import annotations

import pytest
import torch
from soundness import check_sound

import boundc
from boundc import examples

ZOO = ["mlp", "small", "medium", "large", "resnet", "sigmoid_tanh", "pool", "kitchen_sink"]


def _setup(name: str, batch: int = 3, eps: float = 0.02):
    model = examples.build(name)
    x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    bm = boundc.compile(model, x, method="ibp")
    xl, xu = boundc.linf_box(x, eps, clip=(0.0, 1.0))
    return model, bm, x, xl, xu


@pytest.mark.parametrize("name", ZOO)
def test_ibp_sound_logits_and_margins(name):
    model, bm, x, xl, xu = _setup(name, batch=2 if name == "large" else 3)
    steps = 5 if name == "large" else 15
    check_sound(bm, model, xl, xu, samples=32, pgd_steps=steps, method_name=f"ibp/{name}")
    with torch.no_grad():
        labels = model(x).argmax(1)
    C = boundc.margin_spec(labels, 10)
    check_sound(bm, model, xl, xu, C, samples=32, pgd_steps=steps, method_name=f"ibp/{name}/margin")


@pytest.mark.parametrize("name", ZOO)
def test_eps_zero_reproduces_model(name):
    model, bm, x, _, _ = _setup(name)
    with torch.no_grad():
        y = model(x)
        lower, upper = bm(x, x)
        C = boundc.margin_spec(y.argmax(1), 10)
        cl, cu = bm(x, x, C)
    torch.testing.assert_close(lower, y, atol=1e-5, rtol=0)
    torch.testing.assert_close(upper, y, atol=1e-5, rtol=0)
    margins = torch.einsum("bsk,bk->bs", C, y)
    torch.testing.assert_close(cl, margins, atol=1e-5, rtol=0)
    torch.testing.assert_close(cu, margins, atol=1e-5, rtol=0)


def test_batch_one_and_other_batch_sizes():
    model = examples.build("resnet")
    bm = boundc.compile(model, torch.rand(1, 1, 28, 28))
    for b in (1, 5):
        x = torch.rand(b, 1, 28, 28)
        with torch.no_grad():
            lower, upper = bm(x, x)
            torch.testing.assert_close(lower, model(x), atol=1e-5, rtol=0)


def test_float64_model():
    model = examples.build("small").double()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    bm = boundc.compile(model, x)
    xl, xu = boundc.linf_box(x, 0.01)
    lower, upper = check_sound(bm, model, xl, xu, samples=16, pgd_steps=5)
    assert lower.dtype == torch.float64


def test_bounds_widen_with_eps():
    model, bm, x, _, _ = _setup("small")
    widths = []
    for eps in (0.0, 0.01, 0.03, 0.1):
        lower, upper = bm(*boundc.linf_box(x, eps))
        widths.append(float((upper - lower).mean()))
    assert widths[0] < 1e-6 and widths == sorted(widths) and widths[-1] > widths[1]


#: Small inputs keep the backward passes cheap; the floor was checked on the whole zoo at eps = 0.02.
_SMALL = {"mlp": (1, 8, 8), "resnet": (1, 6, 6), "pool": (1, 8, 8), "sigmoid_tanh": (1, 8, 8)}


@pytest.mark.parametrize("name", list(_SMALL))
@pytest.mark.parametrize("method", ["crown", "crown-ibp"])
def test_crown_family_not_looser_than_ibp(name, method):
    """Tightness floor: CROWN-family bounds are finite, sound and at most 1.01 x as wide as IBP's."""
    torch.manual_seed(0)
    model = examples.build(name, in_shape=_SMALL[name]).eval()
    x = torch.rand((2, *_SMALL[name]), generator=torch.Generator().manual_seed(3))
    bm = boundc.compile(model, x, method=method)
    xl, xu = boundc.linf_box(x, 0.02, clip=(0.0, 1.0))
    check_sound(bm, model, xl, xu, samples=16, pgd_steps=5, method_name=f"{method}/{name}", ibp_factor=1.01)
