"""Tests generated from the op table: every activation, in every domain, by sampling, vertices and PGD.

For each op with a relaxation and each of its example attrs:

* the interval rule contains the op's values on random boxes (samples and vertices) and is attained;
* the backward rule with *random* free parameters (any α is sound) bounds the op on its box;
* a small IR graph ``linear → op → linear → op → linear`` compiled with every method is sound
  (samples, vertices and PGD inside the box) and reproduces the graph at eps = 0.
"""

from __future__ import annotations

import pytest
import torch
from boundc.passes.graph.analysis import evaluate, mark_perturbed
from boundc.passes.graph.spec import attach_spec
from boundc.passes.rules.backward import Coeffs, relax_backward
from boundc.passes.rules.interval import Interval
from boundc.passes.rules.ops import OPS, opdef
from boundc.passes.rules.registry import get_rule
from boundc.passes.rules.relaxation import softplus_fn

import boundc
from boundc import codegen, examples
from boundc.bound_module import BoundModule
from boundc.ir import Graph, Node
from boundc.options import CompileOptions
from tests.soundness import check_sound

ACTIVATIONS = [(op, a) for op, d in OPS.items() if d.relaxation is not None for a in d.examples]
IDS = [f"{op}-{i}" for op, d in OPS.items() if d.relaxation is not None for i in range(len(d.examples))]
METHODS = ["ibp", "crown", "crown-ibp", "fast-lin", "forward", "alpha-crown"]


def _box(seed: int, shape: tuple[int, ...], scale: float, dtype=torch.float64) -> Interval:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(shape, generator=g, dtype=dtype) * scale
    r = torch.rand(shape, generator=g, dtype=dtype) * scale
    return Interval(c - r, c + r)


def _points(iv: Interval, n: int, seed: int) -> torch.Tensor:
    """``n`` random points and ``n`` vertices of the box (batch 1 boxes broadcast)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand((2 * n,) + iv.lower.shape[1:], generator=g, dtype=iv.lower.dtype)
    t[n:] = (t[n:] > 0.5).to(t.dtype)
    return iv.lower[:1] + (iv.upper[:1] - iv.lower[:1]) * t


@pytest.mark.parametrize("op,attrs", ACTIVATIONS, ids=IDS)
@pytest.mark.parametrize("scale", [0.01, 1.0, 6.0])
def test_interval_rule(op: str, attrs: dict, scale: float) -> None:
    f = opdef(op).eval
    for seed in range(4):
        iv = _box(seed, (1, 64), scale)
        out = get_rule(op, "interval")(iv, **attrs)
        y = f(_points(iv, 128, seed), **attrs)
        tol = 1e-12 * (1 + y.abs())
        assert bool((out.lower <= y + tol).all()) and bool((y <= out.upper + tol).all()), op
        # attained: the bounds are the op's extreme values on the box (up to the sampling)
        dense = f(iv.lower + (iv.upper - iv.lower) * torch.linspace(0, 1, 4001, dtype=iv.lower.dtype)[:, None],
                  **attrs)
        slack = 1e-6 * (1 + dense.abs().amax(0)) + 2 * (iv.upper[0] - iv.lower[0]) / 4000  # grid resolution
        assert bool((dense.amin(0) - out.lower[0] <= slack).all()) and bool((out.upper[0] - dense.amax(0) <= slack).all())


@pytest.mark.parametrize("op,attrs", ACTIVATIONS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_rule_any_alpha(op: str, attrs: dict, dtype: torch.dtype) -> None:
    """``c·f(x)`` between the backward rule's linear bounds for random coefficients and random α."""
    d = opdef(op)
    f = d.eval
    B, S, n = 2, 3, 40
    iv = _box(7, (B, n), 3.0, dtype)
    g = torch.Generator().manual_seed(11)
    A = torch.randn((B, S, n), generator=g, dtype=dtype)
    start = Coeffs(A, A, torch.zeros(B, S, dtype=dtype), torch.zeros(B, S, dtype=dtype))
    alphas = [None]
    if d.relaxation.alpha is not None:  # steps have no free parameters
        k = d.relaxation.alpha.size
        spread = (iv.upper - iv.lower).unsqueeze(1)
        alphas.append((torch.randn((k, B, S, n), generator=g, dtype=dtype) * spread + iv.lower.unsqueeze(1),
                       torch.randn((k, B, S, n), generator=g, dtype=dtype) * spread + iv.lower.unsqueeze(1)))
        init = d.relaxation.alpha.init(iv.lower.unsqueeze(1), iv.upper.unsqueeze(1), **attrs)
        alphas.append((init.expand((k, B, S, n)), init.expand((k, B, S, n))))
    for mode in ("crown", "fast-lin"):
        for alpha in alphas:
            c = relax_backward(start, iv, op=op, mode=mode, alpha=alpha, **attrs)
            pts = torch.stack([_points(Interval(iv.lower[b:b + 1], iv.upper[b:b + 1]), 256, b) for b in range(B)])
            y = torch.einsum("bsn,bpn->bps", A, f(pts, **attrs))
            lo = torch.einsum("bsn,bpn->bps", c.lA, pts) + c.lb.unsqueeze(1)
            up = torch.einsum("bsn,bpn->bps", c.uA, pts) + c.ub.unsqueeze(1)
            tol = 64 * torch.finfo(dtype).eps * (1 + y.abs() + torch.einsum("bsn,bpn->bps", A.abs(), pts.abs()))
            assert bool((lo <= y + tol).all()), (op, mode, float((lo - y).max()))
            assert bool((y <= up + tol).all()), (op, mode, float((y - up).max()))


#: Weight gain of the test net per op (1.5 by default): smaller for fast-growing ops, so that two layers of
#: them stay in a range where float32 bounds mean something.
_GAIN = {"exp": 0.5, "power": 0.6}
#: Shift of the test net's biases per op: the reciprocal of a softmax sees inputs >= its floor (1), a square
#: root non-negative inputs.
_SHIFT = {"reciprocal_pos": 2.0, "power": 2.0}


def _net(op: str, attrs: dict, seed: int = 0) -> Graph:
    """``x (B, 5) → linear 8 → op → linear 8 → op → linear 3`` as an IR graph."""
    g = Graph()
    gen = torch.Generator().manual_seed(seed)
    gain = _GAIN.get(op, 1.5)
    shift = _SHIFT.get(op, 0.0) if attrs.get("exponent", 0.5) == 0.5 else 0.0  # only sqrt among the powers
    g.add(Node("x", "input", shape=(2, 5), batched=True))
    prev, width = "x", 5
    for i, out in enumerate((8, 8, 3)):
        w = g.add_tensor(f"w{i}", torch.randn(out, width, generator=gen) * (gain / width ** 0.5)).name
        b = g.add_tensor(f"b{i}", torch.randn(out, generator=gen) * 0.5 + shift).name
        prev = g.add(Node(f"fc{i}", "linear", (prev, w, b), shape=(2, out), batched=True)).name
        if i < 2:
            prev = g.add(Node(f"act{i}", op, (prev,), dict(attrs), shape=(2, out), batched=True)).name
        width = out
    g.outputs = [prev]
    return mark_perturbed(g)


def _compile(g: Graph, method: str) -> BoundModule:
    options = CompileOptions()
    return BoundModule(g, method, options, codegen.build(g, method, options),
                       codegen.build(attach_spec(g, elide=options.elide_last_layer), method, options))


@pytest.mark.parametrize("op,attrs", ACTIVATIONS, ids=IDS)
@pytest.mark.parametrize("method", METHODS)
def test_compiled_net_sound(op: str, attrs: dict, method: str) -> None:
    g = _net(op, attrs)
    out = g.outputs[0]

    def model(x: torch.Tensor) -> torch.Tensor:
        return evaluate(g, x)[out]

    bm = _compile(g, method)
    x = torch.randn(2, 5, generator=torch.Generator().manual_seed(5))
    for eps in (0.05, 0.5):
        xl, xu = x - eps, x + eps
        check_sound(bm, model, xl, xu, samples=24, pgd_steps=8, method_name=f"{method}/{op}")
        C = boundc.margin_spec(model(x).argmax(1), 3)
        check_sound(bm, model, xl, xu, C, samples=24, pgd_steps=8, method_name=f"{method}/{op} spec")
    with torch.no_grad():  # eps = 0 reproduces the graph's output
        lo, up = bm(x, x)
    y = model(x)
    atol = 2e-5
    if op == "softplus":  # F.softplus jumps by up to log1p(exp(-threshold)) / beta: the lines keep that slack
        atol += 10 * softplus_fn(attrs["beta"], attrs["threshold"]).slack
    assert torch.allclose(lo, y, atol=atol, rtol=1e-5) and torch.allclose(up, y, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("op,attrs", ACTIVATIONS, ids=IDS)
def test_linear_methods_beat_ibp(op: str, attrs: dict) -> None:
    """On a wide box CROWN is no looser than IBP on average, and α-CROWN no looser than CROWN."""
    g = _net(op, attrs, seed=1)
    x = torch.randn(2, 5, generator=torch.Generator().manual_seed(6))
    width = {}
    for m in ("ibp", "crown", "alpha-crown"):
        with torch.no_grad():
            lo, up = _compile(g, m)(x - 0.3, x + 0.3)
        width[m] = float((up - lo).mean())
    assert width["crown"] <= width["ibp"] * 1.001 + 1e-6
    assert width["alpha-crown"] <= width["crown"] + 1e-5


# -- the new activations through the frontends -------------------------------------------------

class _Swish(torch.nn.Module):
    """SiLU written out (``x * sigmoid(x)``): canonicalised to ``silu``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


FRONTEND_ACTS = {
    "gelu": lambda: torch.nn.GELU(),
    "gelu_tanh": lambda: torch.nn.GELU(approximate="tanh"),
    "silu": lambda: torch.nn.SiLU(),
    "swish": _Swish,
    "softsign": lambda: torch.nn.Softsign(),
}
IR_OP = {"gelu": "gelu", "gelu_tanh": "gelu", "silu": "silu", "swish": "silu", "softsign": "softsign"}


def _mlp(act: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return examples.mlp(in_shape=(1, 4, 4), num_classes=5, hidden=(16, 16), act=FRONTEND_ACTS[act]).eval()


@pytest.mark.parametrize("act", list(FRONTEND_ACTS))
@pytest.mark.parametrize("method", METHODS)
def test_torch_models_sound(act: str, method: str) -> None:
    """GELU, SiLU and softsign MLPs from torch: lowered to one IR op each, sound under every method."""
    model = _mlp(act)
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    bm = boundc.compile(model, x, method=method)
    assert IR_OP[act] in {n.op for n in bm.graph}
    xl, xu = boundc.linf_box(x, 0.1)
    check_sound(bm, model, xl, xu, samples=16, pgd_steps=6, method_name=f"{method}/{act}")
    C = boundc.margin_spec(model(x).argmax(1), 5)
    check_sound(bm, model, xl, xu, C, samples=16, pgd_steps=6, method_name=f"{method}/{act} spec")
    with torch.no_grad():
        lo, up = bm(x, x)
        y = model(x)
    assert torch.allclose(lo, y, atol=2e-5, rtol=1e-5) and torch.allclose(up, y, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("act", list(FRONTEND_ACTS))
@pytest.mark.parametrize("opset", [17, 20])
def test_onnx_models_match_torch(act: str, opset: int, tmp_path) -> None:
    """ONNX exports (``Gelu`` at opset 20, the erf pattern before; ``Softsign`` as Abs/Add/Div; SiLU as
    ``x * Sigmoid(x)``) lower to the same IR op and give the torch model's bounds."""
    if act == "gelu_tanh" and opset < 20:
        pytest.skip("tanh-GELU exports as x**3 arithmetic before opset 20")
    model = _mlp(act)
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    path = tmp_path / f"{act}.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset, input_names=["x"],
                      dynamic_axes={"x": {0: "b"}})
    bo = boundc.compile(str(path), method="crown")
    bt = boundc.compile(model, x, method="crown")
    assert IR_OP[act] in {n.op for n in bo.graph}
    xl, xu = boundc.linf_box(x, 0.05)
    with torch.no_grad():
        lo, uo = bo(xl, xu)
        lt, ut = bt(xl, xu)
    torch.testing.assert_close(lo, lt, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(uo, ut, atol=1e-5, rtol=1e-5)


# -- the affine ops without a relaxation: interval rules by sampling (test_core_rules.py's list lacks them) ---

def _sample_interval(op: str, iv: Interval, consts: list, **attrs) -> None:
    out = get_rule(op, "interval")(iv, *consts, **attrs)
    f = get_rule(op, "eval")
    y = f(_points(iv, 64, 3), *consts, **attrs)
    tol = 1e-9 * (1 + y.abs())
    assert bool((out.lower[:1] <= y + tol).all()) and bool((y <= out.upper[:1] + tol).all()), op
    c = (iv.lower + iv.upper) / 2
    torch.testing.assert_close(get_rule(op, "interval")(Interval(c, c), *consts, **attrs).lower, f(c, *consts, **attrs))


@pytest.mark.parametrize("scale", [0.01, 1.0, 5.0])
def test_new_affine_interval_rules(scale: float) -> None:
    """gather, reduce_sum and conv_transpose: sampled points and vertices inside the interval; exact at a point."""
    iv = _box(1, (1, 2, 4, 5), scale)
    _sample_interval("gather", iv, [], dim=3, index=(4, 0, 0, 2))
    _sample_interval("reduce_sum", iv, [], dims=(1, 3), keepdim=False, scale=0.5)
    w = torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    b = torch.randn(3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _sample_interval("conv_transpose", iv, [w, b], stride=(2, 1), padding=(1, 0), output_padding=(1, 0),
                     dilation=(1, 1), groups=1)
