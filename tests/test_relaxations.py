"""Every activation relaxation of the op table: sound for any l <= u and any alpha, and tight.

Soundness by dense sampling between l and u; tightness by checking that every line
touches the function on [l, u], that tangents touch at their tangent point, that
secants pass through the end points, and that the CROWN choices are the paper's.
"""

from __future__ import annotations

import pytest
import torch
from boundc.passes.rules import relaxation as R
from boundc.passes.rules.ops import OPS, opdef
from boundc.passes.rules.relaxation import Mode, relax

#: attrs variants per op, from the op table
ATTRS: dict[str, list[dict]] = {op: list(d.examples) for op, d in OPS.items() if d.relaxation is not None}
CASES = [(op, a) for op, variants in ATTRS.items() for a in variants]
SMOOTH = ("sigmoid", "tanh", "softsign", "erf", "softplus", "gelu", "silu")
#: Other curved ops (sound for every box and α by test_relaxation_sound; their touching points are not
#: those of the S-shaped / convex family above, so the tangent tests below do not apply as written).
OTHER_CURVED = ("exp", "reciprocal_pos", "power", "sin", "cos")
#: Step functions: constant lines f(l), f(u); nothing to optimise.
STEPS = ("sign", "floor", "ceil")


def _boxes(dtype: torch.dtype, n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    centre = torch.randn(n, generator=g, dtype=dtype) * 4
    width = torch.rand(n, generator=g, dtype=dtype) ** 3 * 10
    width[:20] = 0  # degenerate boxes
    width[20:40] = 1e-6
    return centre - width / 2, centre + width / 2


def _grid(l: torch.Tensor, u: torch.Tensor, k: int = 2001) -> torch.Tensor:
    return l + (u - l) * torch.linspace(0, 1, k, dtype=l.dtype).unsqueeze(1)


def _alpha(op: str, l: torch.Tensor, u: torch.Tensor, seed: int = 3) -> torch.Tensor:
    """Random free parameters, partly outside their sound range (the lines must project them)."""
    k = opdef(op).relaxation.alpha.size
    g = torch.Generator().manual_seed(seed)
    t = torch.rand((k,) + l.shape, generator=g, dtype=l.dtype) * 1.6 - 0.3
    if op in SMOOTH:
        return l + (u - l) * t  # tangent points
    return t * 2 - 0.5  # slopes


def _tol(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return 4 * torch.finfo(dtype).eps * (1 + y.abs())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op,attrs", CASES, ids=[f"{o}-{i}" for o, a in ATTRS.items() for i in range(len(a))])
@pytest.mark.parametrize("mode", ["crown", "fast-lin", "alpha", "init"])
def test_relaxation_sound(op: str, attrs: dict, mode: str, dtype: torch.dtype) -> None:
    f = opdef(op).eval
    l, u = _boxes(dtype)
    if mode in ("alpha", "init") and opdef(op).relaxation.alpha is None:
        assert op in STEPS, f"{op}: only step functions have no free parameters"
        pytest.skip(f"{op} has no free parameters")
    if mode == "alpha":
        alpha = _alpha(op, l, u)
    elif mode == "init":
        alpha = opdef(op).relaxation.alpha.init(l, u, **attrs)
    else:
        alpha = None
    lines = relax(op, l, u, Mode.CROWN if alpha is not None else mode, alpha, **attrs)
    xs = _grid(l, u)
    y = f(xs, **attrs)
    lo, hi = lines.lw * xs + lines.lb, lines.uw * xs + lines.ub
    tol = _tol(y, dtype)
    assert bool((lo <= y + tol).all()), f"{op}: lower line above f by {(lo - y).max().item():.3g}"
    assert bool((hi >= y - tol).all()), f"{op}: upper line below f by {(y - hi).max().item():.3g}"
    if opdef(op).monotone:
        assert bool((lines.lw >= 0).all() and (lines.uw >= 0).all()), "monotone activations need slopes >= 0"
    # tight: every line touches f on [l, u] (up to the grid resolution and the outward rounding)
    w = (u - l)
    slope = (lines.lw.abs() + lines.uw.abs() + 1.5)
    res = slope * w / 2000 + 64 * torch.finfo(dtype).eps * (1 + y.abs().amax(0) + (lines.uw.abs() + 1) * u.abs())
    if op in ("gelu",) and dtype == torch.float32:
        res = res + 16 * torch.finfo(dtype).eps * (1 + u.abs().maximum(l.abs()))
    if op == "softplus":  # the eval function jumps at beta x = threshold: both lines keep that slack
        res = res + 2 * R.softplus_fn(attrs["beta"], attrs["threshold"]).slack
    assert bool(((y - lo).amin(0) <= res).all()), f"{op}: lower line does not touch f"
    assert bool(((hi - y).amin(0) <= res).all()), f"{op}: upper line does not touch f"


@pytest.mark.parametrize("op,attrs", [(o, a) for o, a in CASES if o in SMOOTH])
def test_alpha_init_is_crown(op: str, attrs: dict) -> None:
    """The tangent points of ``alpha.init`` give CROWN's lines."""
    l, u = _boxes(torch.float64)
    crown = relax(op, l, u, Mode.CROWN, None, **attrs)
    init = relax(op, l, u, Mode.CROWN, opdef(op).relaxation.alpha.init(l, u, **attrs), **attrs)
    for a, b in zip(crown, init):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def _smooth_fn(op: str, attrs: dict) -> R.Smooth:
    fixed = {"sigmoid": R.SIGMOID, "tanh": R.TANH, "softsign": R.SOFTSIGN, "erf": R.ERF, "silu": R.SILU}
    if op in fixed:
        return fixed[op]
    return R.GELU[attrs["approximate"]] if op == "gelu" else R.softplus_fn(attrs["beta"], attrs["threshold"])


@pytest.mark.parametrize("op,attrs", [(o, a) for o, a in CASES if o in SMOOTH])
def test_tangents_touch_at_their_point(op: str, attrs: dict) -> None:
    """On one region of convexity the tangent line at its point ``d`` touches f at ``d``; the other line
    passes through an end point (the secant by default)."""
    f = opdef(op).eval
    dtype = torch.float64
    l, u = _boxes(dtype)
    fn = _smooth_fn(op, attrs)
    tol = 1e-9 + 2 * fn.slack
    d = _alpha(op, l, u).clamp_min(l).clamp_max(u)
    for alpha in (d, None):
        lines = relax(op, l, u, Mode.CROWN, alpha, **attrs)
        for concave in (True, False):
            for region in fn.regions(concave=concave):
                inside = (l >= region[0]) & (u <= region[1])
                # the tangent: upper on a concave region, lower on a convex one (midpoint by default)
                w, b, k = (lines.uw, lines.ub, 0) if concave else (lines.lw, lines.lb, 1)
                t = (l + u) / 2 if alpha is None else alpha[k]
                gap = (w * t + b - f(t, **attrs))[inside]
                assert bool((gap.abs() <= tol).all()), (op, concave, gap.abs().max())
                # the other line touches at an end point; by default at both (the secant)
                w, b = (lines.lw, lines.lb) if concave else (lines.uw, lines.ub)
                gl, gu = (w * l + b - f(l, **attrs)).abs(), (w * u + b - f(u, **attrs)).abs()
                end = (gl.maximum(gu) if alpha is None else gl.minimum(gu))[inside & (u - l > 1e-3)]
                assert bool((end <= tol).all()), (op, concave, "secant", end.max())


def _ref_upper_through_l(f, df, l: float, u: float) -> tuple[float, float]:
    """The CROWN paper's upper line of an S-shaped f (inflection at 0) across 0, in float64 by bisection:
    the tangent at d in [0, u] through (l, f(l)), or the secant when that tangent would need d > u."""
    t = torch.tensor

    def h(d: float) -> float:
        return float(f(t(d)) + df(t(d)) * (l - d) - f(t(l)))

    if h(u) < 0:
        s = float((f(t(u)) - f(t(l))) / (u - l))
        return s, float(f(t(l))) - s * l
    lo, hi = 0.0, u
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if h(mid) >= 0 else (mid, hi)
    s = float(df(t(hi)))
    return s, float(f(t(hi))) - s * hi


@pytest.mark.parametrize("op", ["sigmoid", "tanh", "softsign", "erf"])
def test_crown_s_shape_lines(op: str) -> None:
    """Across the inflection point the lines are never above (upper) / below (lower) the CROWN paper's
    lines at the midpoint, and touch f at an end point or at the midpoint."""
    f, fn = opdef(op).eval, _smooth_fn(op, {})
    ls = [-3.0, -0.5, -6.0, -0.1, -2.0]
    us = [2.0, 4.0, 0.3, 0.2, 2.0]
    l, u = torch.tensor(ls, dtype=torch.float64), torch.tensor(us, dtype=torch.float64)
    ln = relax(op, l, u, Mode.CROWN, None)
    m = (l + u) / 2
    for i, (a, b) in enumerate(zip(ls, us)):
        s, c = _ref_upper_through_l(fn.f, fn.df, a, b)
        assert float(ln.uw[i] * m[i] + ln.ub[i]) <= s * float(m[i]) + c + 1e-6
        s, c = _ref_upper_through_l(lambda x: -fn.f(-x), lambda x: fn.df(-x), -b, -a)  # lower, mirrored
        assert float(ln.lw[i] * m[i] + ln.lb[i]) >= -(s * float(-m[i]) + c) - 1e-6
    for w, b in ((ln.uw, ln.ub), (ln.lw, ln.lb)):
        touch = torch.stack([(w * x + b - f(x)).abs() for x in (l, u, m)]).amin(0)
        assert bool((touch < 1e-7).all())  # through an end point up to the tangent point's bisection


@pytest.mark.parametrize("op,attrs", [(o, a) for o, a in CASES if o in SMOOTH])
def test_tighter_than_the_box(op: str, attrs: dict) -> None:
    """The area between the lines is below that of the interval (the constant lines) on wide boxes."""
    f = opdef(op).eval
    l, u = _boxes(torch.float64)
    ln = relax(op, l, u, Mode.CROWN, None, **attrs)
    xs = _grid(l, u, 501)
    y = f(xs, **attrs)
    area = ((ln.uw * xs + ln.ub) - (ln.lw * xs + ln.lb)).mean(0)
    box = y.amax(0) - y.amin(0)
    wide = box > 0.05
    assert int(wide.sum()) > 50 and bool((area[wide] < box[wide]).all())


def test_relu_adaptive_and_fastlin_slopes() -> None:
    l, u = torch.tensor([-1.0, -3.0, -2.0]), torch.tensor([2.0, 1.0, 2.0])
    c = relax("relu", l, u, "crown")
    assert c.lw.tolist() == [1.0, 0.0, 0.0]  # 1 iff u > -l
    assert opdef("relu").relaxation.alpha.init(l, u).tolist() == [[1.0, 0.0, 0.0]]
    fl = relax("relu", l, u, Mode.FAST_LIN)
    assert torch.allclose(fl.lw, u / (u - l)) and torch.allclose(fl.uw, u / (u - l))
    assert torch.allclose(c.ub, -l * u / (u - l))
    a = relax("relu", l, u, "crown", torch.full((1, 3), 0.3))
    assert torch.allclose(a.lw, torch.full((3,), 0.3))


def test_every_smooth_relaxation_is_classified() -> None:
    assert {op for op, d in OPS.items() if d.relaxation is not None and d.relaxation.kinks is None} == \
        set(SMOOTH) | set(OTHER_CURVED) | set(STEPS)


@pytest.mark.parametrize("fn", [R.SIGMOID, R.TANH, R.SILU, R.GELU["none"]], ids=["sigmoid", "tanh", "silu", "gelu"])
def test_known_tangent_point_gap_matches_the_bisection(fn) -> None:
    """With the tangent point known, the intercept's gap skips the bisection on the concave piece holding it:
    never below the sampled maximum of ``F - s x``, and within rounding of the bisection's bound."""
    l, u = _boxes(torch.float64)
    t = torch.rand(l.shape, generator=torch.Generator().manual_seed(5), dtype=l.dtype)
    d = l + (u - l) * t
    for sign in (1.0, -1.0):
        side = R._Side(fn, sign)
        s = side.dF(d)
        fast = R._max_gap(side, s, l, u, d)
        slow = R._max_gap(side, s, l, u)
        xs = _grid(l, u)
        true = (side.F(xs) - s * xs).max(0).values
        assert bool((fast >= true - _tol(true, torch.float64)).all())
        assert bool((fast <= slow + 4 * _tol(slow, torch.float64)).all())


@pytest.mark.parametrize("fn", [R.SIGMOID, R.TANH, R.ERF, R.SOFTSIGN], ids=["sigmoid", "tanh", "erf", "softsign"])
def test_tangent_point_gradients_stay_finite_where_the_slope_leaves_the_inverse_range(fn) -> None:
    """α-CROWN differentiates the lines in their tangent points.  A tangent far out in a flat tail has a slope
    whose closed-form inverse (``Smooth.dinv``) is infinite, outside the box: the lines clamp it, but a gradient
    through the inverse was ``0 · inf = NaN`` and spread through every later layer (eran's sigmoid net)."""
    l = torch.tensor([-1.0, -40.0, -3.0, 0.5], dtype=torch.float64)
    u = torch.tensor([40.0, 1.0, 3.0, 2.0], dtype=torch.float64)
    alpha = torch.stack([u, l]).requires_grad_(True)  # tangents at the far ends: flat slopes
    lines = R.smooth_lines(fn, l, u, alpha)
    sum(t.sum() for t in lines).backward()
    assert bool(torch.isfinite(alpha.grad).all())


@pytest.mark.parametrize("fn", [R.SIGMOID, R.TANH, R.ERF, R.SOFTSIGN], ids=["sigmoid", "tanh", "erf", "softsign"])
def test_closed_form_slope_points_match_the_bisection(fn) -> None:
    """``Smooth.dinv`` (the inverse of ``f'`` on each side of the inflection point) replaces the bisections of
    ``F' = s``: ``f'(dinv(f'(x))) == f'(x)``, and the gap it bounds is never below the sampled maximum of
    ``F - s x`` and never above the bisection's bound (beyond rounding), for slopes inside and outside ``f'``'s range."""
    import dataclasses

    x = torch.linspace(-6, 6, 241, dtype=torch.float64)
    y = fn.df(x)
    back = torch.where(x >= 0, fn.dinv(y, True), fn.dinv(y, False))
    assert torch.allclose(fn.df(back), y, rtol=1e-9, atol=1e-15)
    bisecting = dataclasses.replace(fn, dinv=None)
    l, u = _boxes(torch.float64)
    gen = torch.Generator().manual_seed(7)
    for sign in (1.0, -1.0):
        side, slow_side = R._Side(fn, sign), R._Side(bisecting, sign)
        s = side.dF(l + (u - l) * torch.rand(l.shape, generator=gen, dtype=l.dtype))
        s = s * (0.5 + torch.rand(l.shape, generator=gen, dtype=l.dtype))  # some beyond f'(x)'s range
        fast = R._max_gap(side, s, l, u)
        slow = R._max_gap(slow_side, s, l, u)
        xs = _grid(l, u)
        true = (side.F(xs) - s * xs).max(0).values
        assert bool((fast >= true - _tol(true, torch.float64)).all())
        assert bool((fast <= slow + 4 * _tol(slow, torch.float64)).all())
