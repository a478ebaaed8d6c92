"""Linear relaxations of activations, declared once per op.

For an elementwise activation ``f`` and pre-activation bounds ``l <= x <= u``
a relaxation is a pair of lines with

    a_l * x + b_l  <=  f(x)  <=  a_u * x + b_u      for every x in [l, u].

:func:`relax` returns those :class:`Lines` for any ``l <= u`` (elementwise),
and the backward (CROWN / Fast-Lin / α) and forward rules all derive from it.
The *mode* only changes the free choice of the ReLU-like lower slope:

* ``"crown"``: adaptive lower slope (1 if ``u > -l`` else 0 for ReLU),
* ``"fast-lin"``: lower slope = upper slope (the Wong–Kolter fixed dual point),
* ``alpha`` given: the lower slope of unstable neurons is ``alpha`` (clamped to
  the sound range, e.g. [0, 1] for ReLU).

Every activation is non-decreasing, so every slope returned is >= 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Lines(NamedTuple):
    """Lower line ``lw * x + lb`` and upper line ``uw * x + ub`` (elementwise tensors)."""

    lw: Tensor
    lb: Tensor
    uw: Tensor
    ub: Tensor


@dataclass(frozen=True)
class Activation:
    """Declaration of one activation: its shape class and the function computing its lines.

    ``kind`` is ``"piecewise-linear"`` (ReLU family: exact outside the kinks),
    ``"s-shaped"`` (convex left of ``centre``, concave right, point-symmetric about
    it) or ``"convex"``.  ``lines(l, u, mode, alpha, **attrs)`` returns :class:`Lines`.
    """

    name: str
    kind: str
    monotone: bool
    lines: Callable[..., Lines]


ACTIVATIONS: dict[str, Activation] = {}


def declare(name: str, kind: str, monotone: bool = True) -> Callable[[Callable[..., Lines]], Callable[..., Lines]]:
    """Register the decorated line function as the relaxation of activation ``name``."""

    def register(fn: Callable[..., Lines]) -> Callable[..., Lines]:
        ACTIVATIONS[name] = Activation(name, kind, monotone, fn)
        return fn

    return register


def relax(op: str, l: Tensor, u: Tensor, mode: str = "crown", alpha: Tensor | None = None, **attrs) -> Lines:
    """The relaxation lines of activation ``op`` on ``[l, u]`` (see module docstring)."""
    return ACTIVATIONS[op].lines(l, u, mode, alpha, **attrs)


def _fp_slack(t: Tensor) -> Tensor:
    """A few ulps of ``t``: added to upper / subtracted from lower intercepts of curved relaxations."""
    return 2 * torch.finfo(t.dtype).eps * (1 + t.abs())


# -- piecewise-linear activations ------------------------------------------------

def _kink(l: Tensor, u: Tensor, mode: str, alpha: Tensor | None, neg: float, pos: float) -> Lines:
    """Lines of ``max(neg*x, pos*x)``-type functions with one kink at 0 (``neg <= pos``: convex).

    Upper: the chord; lower: a line through the origin with slope in ``[neg, pos]``.
    """
    unstable = (l < 0) & (u > 0)
    active = l >= 0
    den = torch.where(unstable, u - l, torch.ones_like(u))
    fl, fu = neg * l, pos * u
    chord = torch.where(unstable, (fu - fl) / den, torch.zeros_like(u))
    uw = torch.where(unstable, chord, torch.where(active, torch.full_like(u, pos), torch.full_like(u, neg)))
    ub = torch.where(unstable, fl - chord * l, torch.zeros_like(u))
    if alpha is not None:
        slope = alpha.clamp(neg, pos)
    elif mode == "fast-lin":
        slope = chord
    else:  # adaptive (CROWN): the steeper side when u > -l
        slope = torch.where(u > -l, torch.full_like(u, pos), torch.full_like(u, neg))
    lw = torch.where(unstable, slope, uw)
    return Lines(lw, torch.zeros_like(u), uw, ub)


@declare("relu", "piecewise-linear")
def relu_lines(l: Tensor, u: Tensor, mode: str = "crown", alpha: Tensor | None = None) -> Lines:
    """ReLU: upper chord through (l, 0), (u, u); lower slope adaptive / Fast-Lin / α in [0, 1]."""
    return _kink(l, u, mode, alpha, 0.0, 1.0)


@declare("leaky_relu", "piecewise-linear")
def leaky_relu_lines(l: Tensor, u: Tensor, mode: str = "crown", alpha: Tensor | None = None, *,
                     negative_slope: float) -> Lines:
    """Leaky ReLU (slope ``a >= 0``): convex for ``a <= 1`` (chord above), concave otherwise (mirrored)."""
    a = float(negative_slope)
    if a <= 1:
        return _kink(l, u, mode, alpha, a, 1.0)
    lo = _kink(-u, -l, mode, alpha, 1.0, a)  # lines of g(y) = max(y, a y) on [-u, -l]; f(x) = -g(-x)
    return Lines(lo.uw, -lo.ub, lo.lw, -lo.lb)


@declare("hardtanh", "piecewise-linear")
def hardtanh_lines(l: Tensor, u: Tensor, mode: str = "crown", alpha: Tensor | None = None, *,
                   min_val: float, max_val: float) -> Lines:
    """Clamp to ``[lo, hi]``: exact in each piece; one kink crossed: ReLU-like; both: two sound chords."""
    lo = torch.full_like(l, min_val) if math.isfinite(min_val) else l - 1
    hi = torch.full_like(u, max_val) if math.isfinite(max_val) else u + 1
    zero, one = torch.zeros_like(l), torch.ones_like(l)
    # default: the exact piece (constant lo, identity, constant hi) by where the box lies
    below, above = u <= lo, l >= hi
    mid = (l >= lo) & (u <= hi)
    w = torch.where(mid, one, zero)
    b = torch.where(below, lo, torch.where(above, hi, zero))
    lw, lb, uw, ub = w, b, w, b
    # only the lower kink crossed: convex ReLU shifted to (lo, lo)
    k1 = (l < lo) & (u > lo) & (u <= hi)
    r = _kink(l - lo, u - lo, mode, alpha, 0.0, 1.0)
    lw, uw = torch.where(k1, r.lw, lw), torch.where(k1, r.uw, uw)
    lb = torch.where(k1, r.lb + lo - r.lw * lo, lb)
    ub = torch.where(k1, r.ub + lo - r.uw * lo, ub)
    # only the upper kink crossed: concave, f(x) = hi - relu(hi - x)
    k2 = (l >= lo) & (l < hi) & (u > hi)
    r = _kink(hi - u, hi - l, mode, alpha, 0.0, 1.0)  # lines of relu(y), y = hi - x
    lw, uw = torch.where(k2, r.uw, lw), torch.where(k2, r.lw, uw)
    lb = torch.where(k2, hi - r.ub - r.uw * hi, lb)
    ub = torch.where(k2, hi - r.lb - r.lw * hi, ub)
    # both kinks crossed: lower through (lo, lo), (u, hi); upper through (l, lo), (hi, hi)
    k3 = (l < lo) & (u > hi)
    sl = (hi - lo) / torch.where(k3, u - lo, one)
    su = (hi - lo) / torch.where(k3, hi - l, one)
    lw, lb = torch.where(k3, sl, lw), torch.where(k3, lo - sl * lo, lb)
    uw, ub = torch.where(k3, su, uw), torch.where(k3, lo - su * l, ub)
    return Lines(lw, lb, uw, ub)


# -- curved activations ------------------------------------------------------------

def _tangent(f: Callable, df: Callable, d: Tensor) -> tuple[Tensor, Tensor]:
    """Slope and intercept of the tangent of ``f`` at ``d``."""
    s = df(d)
    return s, f(d) - s * d


def _chord(f: Callable, df: Callable, l: Tensor, u: Tensor, curv: float) -> tuple[Tensor, Tensor, Tensor]:
    """Chord of ``f`` over [l, u]; for tiny widths the midpoint tangent plus a curvature slack.

    Returns ``(slope, intercept, slack)``: ``|f - (slope x + intercept)| <= slack`` bounds the
    error of the fallback (``curv`` = max |f''|).
    """
    w = u - l
    tiny = w < 1e-4
    den = torch.where(tiny, torch.ones_like(w), w)
    s = torch.where(tiny, df((l + u) / 2), (f(u) - f(l)) / den)
    b = torch.where(tiny, f((l + u) / 2) - s * (l + u) / 2, f(l) - s * l)
    slack = torch.where(tiny, curv * w * w / 8, torch.zeros_like(w))
    return s, b, slack


def _s_upper(f: Callable, df: Callable, l: Tensor, u: Tensor, curv: float,
             iters: int = 30) -> tuple[Tensor, Tensor]:
    """A sound upper line on [l, u] of an S-shaped ``f`` (convex on x<0, concave on x>0).

    * ``l >= 0`` (concave): tangent at the midpoint.
    * ``u <= 0`` (convex): the chord.
    * mixed: the tangent at ``d >= 0`` that passes above ``(l, f(l))`` (it then lies above ``f``
      on ``[l, inf)``), found by bisection keeping the sound end; the chord if the tangent at
      ``u`` already passes below ``f(l)`` (then the chord is above ``f``).
    """
    m = (l + u) / 2
    ts, tb = _tangent(f, df, m)
    cs, cb, slack = _chord(f, df, l, u, curv)
    # mixed case
    lm = torch.minimum(l, torch.zeros_like(l))
    um = torch.maximum(u, torch.zeros_like(u))
    fl = f(lm)

    def h(d: Tensor) -> Tensor:  # >= 0  <=>  tangent at d is above f at l
        s, b = _tangent(f, df, d)
        return s * lm + b - fl

    lo, hi = torch.zeros_like(u), um.clone()
    use_chord = h(um) < 0
    for _ in range(iters):
        mid = (lo + hi) / 2
        ok = h(mid) >= 0
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, mid)
    ms, mb = _tangent(f, df, hi)
    mcs, mcb, mslack = _chord(f, df, lm, um, curv)
    mixed_s = torch.where(use_chord, mcs, ms)
    mixed_b = torch.where(use_chord, mcb + mslack, mb)
    # a tangent that only reaches f(l) up to rounding: lift it by the residual
    mixed_b = mixed_b + torch.where(use_chord, torch.zeros_like(u), (-h(hi)).clamp(min=0))
    concave, convex = l >= 0, u <= 0
    s = torch.where(concave, ts, torch.where(convex, cs, mixed_s))
    b = torch.where(concave, tb, torch.where(convex, cb + slack, mixed_b))
    return s, b + _fp_slack(b) + _fp_slack(s * torch.maximum(l.abs(), u.abs()))


def _s_shaped(f: Callable, df: Callable, centre_value: float, curv: float, l: Tensor, u: Tensor) -> Lines:
    """Lines of an S-shaped ``f`` point-symmetric about ``(0, c)``: ``f(x) = 2c - f(-x)``.

    The lower line on [l, u] is the reflection of the upper line on [-u, -l].
    """
    us, ub = _s_upper(f, df, l, u, curv)
    ls, lb = _s_upper(f, df, -u, -l, curv)
    return Lines(ls, 2 * centre_value - lb, us, ub)


def _dsigmoid(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s)


def _dtanh(x: Tensor) -> Tensor:
    return 1 - torch.tanh(x) ** 2


@declare("sigmoid", "s-shaped")
def sigmoid_lines(l: Tensor, u: Tensor, mode: str = "crown", alpha: Tensor | None = None) -> Lines:
    """Sigmoid: chord / tangent lines by convexity region, tangents through an end point when mixed."""
    return _s_shaped(torch.sigmoid, _dsigmoid, 0.5, 0.1, l, u)


@declare("tanh", "s-shaped")
def tanh_lines(l: Tensor, u: Tensor, mode: str = "crown", alpha: Tensor | None = None) -> Lines:
    """tanh: as sigmoid (point-symmetric about the origin)."""
    return _s_shaped(torch.tanh, _dtanh, 0.0, 0.8, l, u)


@declare("softplus", "convex")
def softplus_lines(l: Tensor, u: Tensor, mode: str = "crown", alpha: Tensor | None = None, *,
                   beta: float, threshold: float) -> Lines:
    """Softplus (convex): upper = chord, lower = tangent at the midpoint (or at ``alpha`` in [l, u])."""

    def f(x: Tensor) -> Tensor:
        return F.softplus(x, beta, threshold)

    def df(x: Tensor) -> Tensor:
        return torch.sigmoid(beta * x)

    d = (l + u) / 2 if alpha is None else torch.maximum(torch.minimum(alpha, u), l)
    ls, lb = _tangent(f, df, d)
    cs, cb, slack = _chord(f, df, l, u, beta / 4)
    # F.softplus switches to x above the threshold: a jump of at most log1p(exp(-threshold))/beta
    jump = math.log1p(math.exp(-threshold)) / beta
    lb = lb - jump - _fp_slack(lb) - _fp_slack(ls * torch.maximum(l.abs(), u.abs()))
    ub = cb + slack + jump + _fp_slack(cb) + _fp_slack(cs * torch.maximum(l.abs(), u.abs()))
    return Lines(ls, lb, cs, ub)


__all__ = ["ACTIVATIONS", "Activation", "Lines", "declare", "relax"]
