"""Every interval rule, tested alone by sampling inside random input intervals (hypothesis)."""

from __future__ import annotations

import torch
from boundc.passes.rules import concrete, interval
from boundc.passes.rules.interval import Interval
from boundc.passes.rules.ops import OPS
from boundc.passes.rules.registry import get_rule, ops_with_rule
from hypothesis import given, settings
from hypothesis import strategies as st

SAMPLES = 256


def _random_interval(seed: int, shape, scale: float) -> Interval:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    r = torch.rand(shape, generator=g, dtype=torch.float64) * scale
    return Interval(c - r, c + r)


def _check(op: str, ivs: list[Interval], consts: list, seed: int, batched: tuple[int, ...] = (), **attrs):
    """Outputs of the concrete op at points inside the input intervals lie in the rule's interval."""
    rule = get_rule(op, "interval")
    out = rule(*ivs, *consts, **attrs)
    g = torch.Generator().manual_seed(seed + 1)
    for k in range(SAMPLES // 16):
        pts = []
        for iv in ivs:
            u = torch.rand((16,) + iv.lower.shape[1:], generator=g, dtype=iv.lower.dtype)
            if k % 2:
                u = (u > 0.5).to(u.dtype)  # vertices
            pts.append(iv.lower[:1] + (iv.upper[:1] - iv.lower[:1]) * u)
        cs = [c.expand(16, *c.shape[1:]) if i in batched else c for i, c in enumerate(consts)]
        y = get_rule(op, "eval")(*pts, *cs, **attrs)
        tol = 1e-9 * (1 + y.abs())
        assert torch.all(out.lower[:1] <= y + tol), op
        assert torch.all(y <= out.upper[:1] + tol), op
    return out


seeds = st.integers(0, 10_000)
scales = st.sampled_from([0.01, 1.0, 5.0])


@settings(max_examples=15, deadline=None)
@given(seeds, scales)
def test_elementwise_activations(seed, scale):
    iv = _random_interval(seed, (1, 7, 3), scale)
    for op, attrs in [("relu", {}), ("sigmoid", {}), ("tanh", {}), ("leaky_relu", {"negative_slope": 0.2}),
                      ("hardtanh", {"min_val": -0.5, "max_val": 1.5}), ("softplus", {"beta": 2.0, "threshold": 20.0})]:
        out = _check(op, [iv], [], seed, **attrs)
        # monotone ops are exact: the end points are attained
        torch.testing.assert_close(out.lower, get_rule(op, "eval")(iv.lower, **attrs))


@settings(max_examples=15, deadline=None)
@given(seeds, scales)
def test_affine_rules(seed, scale):
    g = torch.Generator().manual_seed(seed)
    iv = _random_interval(seed, (1, 6), scale)
    w, b = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    _check("linear", [iv], [w, b], seed)
    s, t = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    _check("scale_shift", [iv], [s, t], seed)
    civ = _random_interval(seed, (1, 2, 5, 5), scale)
    cw = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    _check("conv", [civ], [cw, None], seed, stride=(2, 1), padding=(1, 0), dilation=(1, 1), groups=1)
    C = torch.randn(1, 3, 4, generator=g, dtype=torch.float64)
    _check("spec_linear", [iv], [w, b, C], seed, batched=(2,))
    _check("spec", [_random_interval(seed, (1, 4), scale)], [C], seed, batched=(0,))


@settings(max_examples=15, deadline=None)
@given(seeds, scales)
def test_binary_and_structural_rules(seed, scale):
    a, b = _random_interval(seed, (1, 2, 4, 4), scale), _random_interval(seed + 7, (1, 2, 4, 4), scale)
    for op in ("add", "sub", "mul"):
        _check(op, [a, b], [], seed)
    _check("concat", [a, b], [], seed, dim=1)
    _check("max_pool2d", [a], [], seed, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), dilation=(1, 1),
           ceil_mode=False)
    _check("avg_pool2d", [a], [], seed, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), ceil_mode=False,
           count_include_pad=True, divisor_override=None)
    _check("adaptive_avg_pool2d", [a], [], seed, output_size=(1, 1))
    _check("pad", [a], [], seed, pad=(1, 2, 0, 1), mode="constant", value=0.5)
    _check("reshape", [a], [], seed, shape=(-1, 32))
    _check("permute", [a], [], seed, dims=(0, 2, 3, 1))


def test_every_interval_rule_is_covered_by_a_sampling_test():
    tested = {"relu", "sigmoid", "tanh", "leaky_relu", "hardtanh", "softplus", "linear", "scale_shift", "conv",
              "spec_linear", "spec", "add", "sub", "mul", "concat", "max_pool2d", "avg_pool2d",
              "adaptive_avg_pool2d", "pad", "reshape", "permute", "input", "identity"}
    tested |= {"gather", "reduce_sum", "conv_transpose"}  # tests/test_ops_table.py::test_new_affine_interval_rules
    tested |= {op for op, d in OPS.items() if d.relaxation is not None}  # tests/test_ops_table.py
    assert ops_with_rule("interval") <= tested, ops_with_rule("interval") - tested


def test_concrete_and_interval_agree_on_points():
    x = torch.randn(2, 5)
    w = torch.randn(3, 5)
    out = interval.linear(Interval(x, x), w, None)
    torch.testing.assert_close(out.lower, concrete.linear(x, w, None))
