"""The linear-relaxation methods: soundness on the zoo, eps = 0, reference agreement, gradients, report."""

from __future__ import annotations

import pytest
import torch

import boundc
from boundc import examples
from boundc.options import CompileOptions, LinearOptions
from tests.conftest import load_reference
from tests.soundness import check_sound

METHODS = ["crown-ibp", "crown", "fast-lin", "forward", "alpha-crown"]
#: small inputs keep the CROWN intermediate passes cheap on 2 CPU cores
ZOO = {"mlp": (1, 8, 8), "small": (1, 10, 10), "medium": (1, 16, 16), "large": (1, 6, 6), "resnet": (1, 6, 6),
       "sigmoid_tanh": (1, 8, 8), "pool": (1, 8, 8), "kitchen_sink": (1, 6, 6)}
OPTS = CompileOptions(linear=LinearOptions(alpha_iterations=2, intersect_ibp=True))


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("method", METHODS)
def test_sound_on_zoo(name: str, method: str) -> None:
    shape = ZOO[name]
    model = examples.build(name, in_shape=shape)
    x = torch.rand((2,) + shape)
    opts = OPTS if name in ("medium", "large", "resnet", "kitchen_sink") else CompileOptions(
        linear=LinearOptions(alpha_iterations=2))
    bm = boundc.compile(model, x, method=method, options=opts)
    with torch.no_grad():
        y = model(x)
    C = boundc.margin_spec(y.argmax(1), 10)
    xl, xu = boundc.linf_box(x, 0.03)
    check_sound(bm, model, xl, xu, None, samples=12, pgd_steps=4, method_name=method)
    lower, _ = check_sound(bm, model, xl, xu, C, samples=12, pgd_steps=4, method_name=method)
    ibp_lower, _ = boundc.compile(model, x, method="ibp")(xl, xu, C)
    if method in ("crown", "alpha-crown", "fast-lin") and name in ("mlp", "small"):
        assert lower.mean() >= ibp_lower.mean()
    with torch.no_grad():  # eps = 0 reproduces the outputs
        l0, u0 = bm(x, x)
        s0, t0 = bm(x, x, C)
    # curved relaxations (sigmoid/tanh) add 2 ulps of outward slack per neuron against rounding;
    # the forward method applies it at every layer, so allow 2e-5 there
    tol = 2e-5 if name in ("sigmoid_tanh", "kitchen_sink") else 1e-5
    assert torch.allclose(l0, y, atol=tol, rtol=1e-5) and torch.allclose(u0, y, atol=tol, rtol=1e-5)
    m = torch.einsum("bsk,bk->bs", C, y)
    assert torch.allclose(s0, m, atol=tol, rtol=1e-5) and torch.allclose(t0, m, atol=tol, rtol=1e-5)


def _reference(name: str, dtype: torch.dtype):
    model, inp, ref = load_reference(name)
    model = model.to(dtype)
    return model, {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inp.items()}, ref


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name,method,rows", [("mlp_784_256_256_10", "crown-ibp", 16), ("mlp_784_256_256_10", "crown", 16),
                                              ("cnn_ibp_small", "crown-ibp", 16), ("cnn_ibp_small", "crown", 1)])
def test_reference_agreement(name: str, method: str, rows: int, dtype: str) -> None:
    # CROWN's adaptive slope (1 if u > -l) can flip on a near-tie when float32 sums run in another
    # order; the reference was computed on this machine type with torch's default of 2 threads
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _check_reference(name, method, rows, dtype)
    finally:
        torch.set_num_threads(threads)


def _check_reference(name: str, method: str, rows: int, dtype: str) -> None:
    model, inp, ref = _reference(name, getattr(torch, dtype))
    key = {"crown": "CROWN", "crown-ibp": "CROWN-IBP"}[method]
    bm = boundc.compile(model, inp["x"][:2], method=method)
    xl, xu, C = inp["x_L"][:rows], inp["x_U"][:rows], inp["C_margin"][:rows]
    with torch.no_grad():
        ll, lu = bm(xl, xu)
        ml, mu = bm(xl, xu, -C)  # boundc's margin rows are e_true - e_y: the opposite sign
    rl, ru = (t[:rows] for t in ref[dtype][key]["logits"])
    sl, su = (t[:rows] for t in ref[dtype][key]["margin"])
    for mine, theirs in ((ll, rl), (lu, ru), (-mu, sl), (-ml, su)):
        assert _rel(mine, theirs) < 1e-5


def test_crown_ibp_gradients_reach_parameters() -> None:
    model = examples.build("small", in_shape=(1, 10, 10))
    x = torch.rand(2, 1, 10, 10)
    for method in ("crown-ibp", "crown"):
        bm = boundc.compile(model, x, method=method)
        C = boundc.margin_spec(torch.tensor([0, 1]), 10)
        lower, _ = bm(*boundc.linf_box(x, 0.02), C)
        model.zero_grad()
        (-lower.sum()).backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), method


def test_spec_starts_from_C_and_code_shows_walk() -> None:
    model = examples.build("mlp", in_shape=(1, 8, 8))
    bm = boundc.compile(model, torch.rand(2, 1, 8, 8), method="crown-ibp")
    code = bm.spec_net.code
    assert "start_spec_linear" in code and "relu_backward" in code and "concretize" in code
    assert "start_identity" not in code  # the spec is bounded without bounding the logits


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_report_counts_unstable_relus(method: str) -> None:
    """The per-node bounds behind the report are finite and enclose every node's value at sampled inputs,
    and the report's unstable count is the number of ReLU inputs with l < 0 < u."""
    from boundc.passes.graph.analysis import evaluate

    from boundc.report import node_bounds

    torch.manual_seed(0)
    model = examples.build("mlp", in_shape=(1, 8, 8)).eval()
    x = torch.rand(2, 1, 8, 8)
    bm = boundc.compile(model, x, method=method)
    xl, xu = boundc.linf_box(x, 0.05)
    bounds = node_bounds(bm, xl, xu)
    relu_inputs = [n.inputs[0] for n in bm.graph if n.op == "relu" and n.inputs[0] in bounds]
    assert relu_inputs and bm.graph.output.name in bounds
    for k in range(16):
        xs = xl + (xu - xl) * torch.rand(xl.shape, generator=torch.Generator().manual_seed(k))
        with torch.no_grad():
            values = evaluate(bm.graph, xs)
        for name, b in bounds.items():
            assert bool(torch.isfinite(b.lower).all() and torch.isfinite(b.upper).all()), name
            v = values[name]
            assert bool((b.lower <= v + 1e-5).all() and (v <= b.upper + 1e-5).all()), (method, name)
    unstable = sum(int(((bounds[r].lower < 0) & (bounds[r].upper > 0)).sum()) for r in relu_inputs)
    assert unstable > 0
    assert f"{unstable} unstable ReLU neurons" in bm.report(xl, xu)


@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_lower_rows_only_through_max_pool_are_differentiable(method: str) -> None:
    """With only lower rows (``output_upper=False``, what the verifier compiles) the empty upper rows must
    pass max pooling too while autograd records the call (the verifier's split score differentiates the
    bound in the box): same bound as without autograd, and a gradient in the box."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                            torch.nn.Linear(4 * 3 * 3, 3))
    x = torch.rand(2, 1, 8, 8)
    bm = boundc.compile(m, x, method=method, options=CompileOptions(linear=LinearOptions(output_upper=False,
                                                                                          alpha_iterations=3)))
    C = boundc.margin_spec(torch.tensor([0, 1]), 3)
    lo, hi = boundc.linf_box(x, 0.05)
    with torch.no_grad():
        plain = bm(lo, hi, C)[0]
    lo_g, hi_g = lo.clone().requires_grad_(True), hi.clone().requires_grad_(True)
    low = bm(lo_g, hi_g, C)[0]
    torch.testing.assert_close(low.detach(), plain)
    g_lo, g_hi = torch.autograd.grad(low.sum(), (lo_g, hi_g))
    assert (g_lo.abs() + g_hi.abs()).sum() > 0
