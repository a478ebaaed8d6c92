"""Linear relaxations of activations: the line functions the op table (:mod:`.ops`) refers to.

For an elementwise activation ``f`` and pre-activation bounds ``l <= x <= u`` a
relaxation is a pair of lines with

    a_l * x + b_l  <=  f(x)  <=  a_u * x + b_u      for every x in [l, u].

Every line function has the signature ``lines(l, u, mode, alpha, **attrs) -> Lines``
and is sound for *any* ``l <= u`` and *any* ``alpha`` (it projects ``alpha`` into
its sound range).  ``alpha`` has shape ``(k, *l.shape)`` (or broadcasts against
it), ``k`` = :attr:`AlphaSpec.size` free parameters per neuron:

* piecewise-linear ops (ReLU family): ``k = 1``, the free lower slope
  (``[0, 1]`` for ReLU, ``[a, 1]`` for leaky ReLU with slope ``a <= 1``);
* smooth ops (sigmoid, tanh, softsign, softplus, GELU, SiLU): ``k = 2``, the
  tangent points of the upper (``alpha[0]``) and lower (``alpha[1]``) lines,
  projected into ``[l, u]``.

Without ``alpha`` the *mode* picks the default: :attr:`Mode.CROWN` (adaptive
ReLU lower slope; for smooth ops the tangent / secant lines of the CROWN paper)
or :attr:`Mode.FAST_LIN` (ReLU lower slope = upper slope).

Smooth ops share one construction (:class:`Smooth`): a slope is chosen, and the
intercept is the exact extreme of ``f(x) - s x`` over ``[l, u]`` — found from the
convexity regions of ``f`` (bisection for ``f'(x) = s`` inside each region where
that extreme is interior, end points and inflection points elsewhere) and
rounded outward.  So every line touches ``f`` and is sound for every slope; the
slope only decides tightness.  CROWN's slopes: tangent at the midpoint where
``[l, u]`` lies in one concave (upper) / convex (lower) region, the secant in a
convex (upper) / concave (lower) region, and across an inflection point the
tangent through the opposite end point (or the secant), whichever encloses the
least area.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
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


class Mode(str, enum.Enum):
    """The default choice of the free relaxation parameters (the old strings compare equal)."""

    CROWN = "crown"
    FAST_LIN = "fast-lin"


@dataclass(frozen=True)
class AlphaSpec:
    """The free parameters of a relaxation: ``size`` per neuron, ``init(l, u, **attrs)`` of shape
    ``(size, *l.shape)`` gives the CROWN choice; ``project(alpha, l, u, **attrs)`` maps any ``alpha``
    into its useful range (the lines do the same internally, so any ``alpha`` is sound; projecting
    the optimiser's iterates keeps their gradients alive); ``lr_scale`` multiplies α-CROWN's learning
    rate (tuned for slopes in [0, 1]) for parameters of another scale, such as tangent points."""

    size: int
    init: Callable[..., Tensor]
    project: Callable[..., Tensor] | None = None
    lr_scale: float = 1.0


@dataclass(frozen=True)
class Relaxation:
    """How an activation is relaxed.

    ``lines(l, u, mode, alpha, **attrs) -> Lines`` (sound for any ``alpha``);
    ``alpha``: its free parameters, or ``None``; ``interval(l, u, **attrs) -> (lo, hi)``:
    the exact image of ``[l, u]`` for ops that are not monotone (``None``: map the end points);
    ``kinks(**attrs)``: the break points of a piecewise-linear op (the lines are exact on a box
    holding none strictly inside), ``None`` for a curved op (every box is relaxed).
    """

    lines: Callable[..., Lines]
    alpha: AlphaSpec | None = None
    interval: Callable[..., tuple[Tensor, Tensor]] | None = None
    kinks: Callable[..., tuple[float, ...]] | None = None


def _fp_slack(t: Tensor) -> Tensor:
    """A few ulps of ``t``: added to upper / subtracted from lower intercepts of curved relaxations."""
    return 2 * torch.finfo(t.dtype).eps * (1 + t.abs())


# -- piecewise-linear activations ------------------------------------------------

def _first(alpha: Tensor | None) -> Tensor | None:
    """The first free parameter ``alpha[0]`` (``alpha`` of shape ``(k, *shape)``)."""
    return None if alpha is None else alpha[0]


def _kink(l: Tensor, u: Tensor, mode: str, alpha: Tensor | None, neg: float, pos: float) -> Lines:
    """Lines of ``max(neg*x, pos*x)``-type functions with one kink at 0 (``neg <= pos``: convex).

    Upper: the chord; lower: a line through the origin with slope in ``[neg, pos]``
    (``alpha`` without its ``k`` axis, clamped into that range).

    The hot path of every ReLU pass, so it makes few full-size temporaries: with ``lc = min(l, 0)`` and
    ``uc = max(u, 0)`` one chord formula gives the chord of an unstable neuron and the slope of a stable
    one (``pos`` when ``l >= 0``, ``neg`` when ``u <= 0``, exactly so when ``neg`` is 0 or -1 and ``pos`` is 1;
    other slopes are written in), and ``lc·(neg - chord)`` its intercept (0 when stable).
    """
    below, above = l < 0, u > 0
    lc, uc = torch.where(below, l, 0.0), torch.where(above, u, 0.0)  # no gradient into a stable side
    den = uc - lc  # 0 only when l = u = 0, where any slope through the origin is exact
    num = uc if pos == 1 else pos * uc
    if neg:
        num = num - neg * lc
    chord = num / torch.where(den > 0, den, torch.ones_like(den))
    if neg not in (0.0, -1.0) or pos != 1:  # x·c / x may round away from c: write the stable slopes in
        chord = torch.where(l >= 0, torch.full_like(chord, pos), torch.where(u <= 0, torch.full_like(chord, neg), chord))
    ub = -(lc * chord) if neg == 0 else lc * (neg - chord)
    unstable = below & above
    if alpha is not None:
        slope = alpha.clamp(neg, pos)
    elif mode == Mode.FAST_LIN:
        return Lines(chord, torch.zeros_like(chord), chord, ub)
    else:  # adaptive (CROWN): the steeper side when u > -l
        slope = _adaptive(l, u, neg, pos)
    return Lines(torch.where(unstable, slope, chord), torch.zeros_like(chord), chord, ub)


def _adaptive(l: Tensor, u: Tensor, neg: float, pos: float) -> Tensor:
    """CROWN's adaptive lower slope of a kink at 0: ``pos`` if ``u > -l`` else ``neg``."""
    steep = u > -l
    if (neg, pos) == (0.0, 1.0):
        return steep.to(l.dtype)
    return torch.where(steep, torch.full_like(l, pos), torch.full_like(l, neg))


def slope_projection(lo: float, hi: float) -> Callable[..., Tensor]:
    """A projection of free slopes onto ``[lo, hi]`` (for :class:`AlphaSpec`)."""

    def project(alpha: Tensor, l: Tensor, u: Tensor, **attrs) -> Tensor:
        return alpha.clamp(lo, hi)

    return project


def leaky_relu_project(alpha: Tensor, l: Tensor, u: Tensor, *, negative_slope: float) -> Tensor:
    """Free slope of leaky ReLU onto ``[min(a, 1), max(a, 1)]``."""
    a = float(negative_slope)
    return alpha.clamp(min(a, 1.0), max(a, 1.0))


def relu_lines(l: Tensor, u: Tensor, mode: str = Mode.CROWN, alpha: Tensor | None = None) -> Lines:
    """ReLU: upper chord through (l, 0), (u, u); lower slope adaptive / Fast-Lin / ``alpha[0]`` in [0, 1]."""
    return _kink(l, u, mode, _first(alpha), 0.0, 1.0)


def relu_alpha_init(l: Tensor, u: Tensor) -> Tensor:
    """CROWN's lower slope of ReLU (1 iff ``u > -l``), shape ``(1, *l.shape)``."""
    return _adaptive(l, u, 0.0, 1.0).unsqueeze(0)


def leaky_relu_lines(l: Tensor, u: Tensor, mode: str = Mode.CROWN, alpha: Tensor | None = None, *,
                     negative_slope: float) -> Lines:
    """Leaky ReLU (slope ``a >= 0``): convex for ``a <= 1`` (chord above), concave otherwise (mirrored).

    ``alpha[0]`` is the free slope: of the lower line in ``[a, 1]`` (``a <= 1``), of the upper line in
    ``[1, a]`` otherwise.
    """
    a = float(negative_slope)
    if a <= 1:
        return _kink(l, u, mode, _first(alpha), a, 1.0)
    lo = _kink(-u, -l, mode, _first(alpha), 1.0, a)  # lines of g(y) = max(y, a y) on [-u, -l]; f(x) = -g(-x)
    return Lines(lo.uw, -lo.ub, lo.lw, -lo.lb)


def leaky_relu_alpha_init(l: Tensor, u: Tensor, *, negative_slope: float) -> Tensor:
    """CROWN's free slope of leaky ReLU, shape ``(1, *l.shape)``."""
    a = float(negative_slope)
    s = _adaptive(l, u, a, 1.0) if a <= 1 else _adaptive(-u, -l, 1.0, a)
    return s.unsqueeze(0)


def abs_lines(l: Tensor, u: Tensor, mode: str = Mode.CROWN, alpha: Tensor | None = None) -> Lines:
    """``|x|`` (``max(-x, x)``, convex): upper chord; lower through the origin, slope ``alpha[0]`` in [-1, 1]."""
    return _kink(l, u, mode, _first(alpha), -1.0, 1.0)


def abs_alpha_init(l: Tensor, u: Tensor) -> Tensor:
    """CROWN's lower slope of ``|x|`` (1 if ``u > -l`` else -1), shape ``(1, *l.shape)``."""
    return _adaptive(l, u, -1.0, 1.0).unsqueeze(0)


def abs_interval(l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """The exact image of ``[l, u]`` under ``|x|``."""
    lo = torch.where((l < 0) & (u > 0), torch.zeros_like(l), torch.minimum(l.abs(), u.abs()))
    return lo, torch.maximum(l.abs(), u.abs())


def hardtanh_lines(l: Tensor, u: Tensor, mode: str = Mode.CROWN, alpha: Tensor | None = None, *,
                   min_val: float, max_val: float) -> Lines:
    """Clamp to ``[lo, hi]``: exact in each piece; one kink crossed: ReLU-like (``alpha[0]`` the free slope
    in [0, 1]); both: two sound chords."""
    alpha = _first(alpha)
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


def hardtanh_alpha_init(l: Tensor, u: Tensor, *, min_val: float, max_val: float) -> Tensor:
    """CROWN's free slope of hardtanh (the adaptive slope of whichever kink is crossed), ``(1, *l.shape)``."""
    lo = torch.full_like(l, min_val) if math.isfinite(min_val) else l - 1
    hi = torch.full_like(u, max_val) if math.isfinite(max_val) else u + 1
    upper_kink = (l >= lo) & (l < hi) & (u > hi)
    s = torch.where(upper_kink, _adaptive(hi - u, hi - l, 0.0, 1.0), _adaptive(l - lo, u - lo, 0.0, 1.0))
    return s.unsqueeze(0)


# -- smooth activations ------------------------------------------------------------

#: Bisection steps for tangent points (first-order in the bracket) and for the extremes of f(x) - s x
#: (bounded rigorously by the tangents at the bracket's ends: second-order, so fewer steps do).
_ITERS = 30
_GAP_ITERS = 20


@dataclass(frozen=True)
class Smooth:
    """A smooth scalar function by its convexity regions (the data the generic relaxation needs).

    ``f``, ``df``: the function and its derivative (elementwise, any dtype);
    ``inflections``: the sorted points where the convexity changes; ``convex_first``:
    convex on ``(-inf, inflections[0]]``; ``slack``: how far the op's eval function can lie
    *below* ``f`` for ``x > slack_above`` (softplus switches to ``x`` above its threshold);
    ``eval_ulps``: the eval function's rounding error in units of ``eps * (1 + |x|)``
    (``F.gelu`` cancels in ``1 + erf`` for ``x << 0``); ``monotone``: non-decreasing (slopes
    are kept >= 0); ``argmin`` / ``minimum``: the global minimiser and minimum of a
    non-monotone (unimodal) ``f``; ``dinv``: for a function with one inflection point,
    where ``f'`` peaks, the inverse of ``f'`` right (``dinv(y, True)``) or left of it,
    the inflection point for ``y`` above the peak and ``±inf`` for ``y <= 0`` (spares
    the bisections: the tangent points of a slope are then closed-form).
    """

    f: Callable[[Tensor], Tensor]
    df: Callable[[Tensor], Tensor]
    inflections: tuple[float, ...] = ()
    convex_first: bool = True
    slack: float = 0.0
    slack_above: float = math.inf
    eval_ulps: float = 0.0
    monotone: bool = True
    argmin: float | None = None
    minimum: float | None = None
    dinv: Callable[[Tensor, bool], Tensor] | None = None

    def regions(self, concave: bool) -> list[tuple[float, float]]:
        """The maximal intervals on which ``f`` is concave (``concave``) or convex."""
        edges = (-math.inf, *self.inflections, math.inf)
        out = []
        for i in range(len(edges) - 1):
            is_convex = self.convex_first == (i % 2 == 0)
            if is_convex != concave:
                out.append((edges[i], edges[i + 1]))
        return out


class _Side:
    """One side of a relaxation as an *upper* line problem: ``F = sign * f`` (lower lines of ``f`` are
    upper lines of ``-f``); ``caps`` are the regions where ``F`` is concave."""

    def __init__(self, fn: Smooth, sign: float) -> None:
        self.fn, self.sign = fn, sign
        self.caps = fn.regions(concave=sign > 0)

    def F(self, x: Tensor) -> Tensor:
        return self.sign * self.fn.f(x)

    def dF(self, x: Tensor) -> Tensor:
        return self.sign * self.fn.df(x)


def _bisect(fn: Callable[[Tensor], Tensor], lo: Tensor, hi: Tensor, increasing: bool,
            iters: int = _ITERS) -> tuple[Tensor, Tensor]:
    """A bracket ``[lo, hi]`` of the root of a monotone ``fn`` on ``[lo, hi]`` (an end point if none)."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        right = (fn(mid) < 0) if increasing else (fn(mid) > 0)  # the root lies right of mid
        lo = torch.where(right, mid, lo)
        hi = torch.where(right, hi, mid)
    return lo, hi


def _piece(l: Tensor, u: Tensor, region: tuple[float, float]) -> tuple[Tensor, Tensor, Tensor]:
    """``[l, u]`` intersected with ``region``: ``(a, b, non-empty)`` (``a = b = l`` where empty)."""
    a, b = l.clamp(min=region[0]), u.clamp(max=region[1])
    ok = a <= b
    return torch.where(ok, a, l), torch.where(ok, b, l), ok


def _slope_point(side: _Side, s: Tensor, a: Tensor, b: Tensor, region: tuple[float, float]) -> Tensor | None:
    """The point of ``[a, b]`` (inside ``region``, one convexity region of ``F``) nearest to where ``F' = s``,
    in closed form (``Smooth.dinv``); ``None`` without one.

    No gradient flows through the inverse: any point of ``[a, b]`` gives a sound bound, at the root of
    ``F' = s`` the bound's derivative through the point vanishes, and the inverse's own derivative is
    infinite at the ends of its range (``0 · inf`` made α-CROWN's gradients NaN)."""
    fn = side.fn
    if fn.dinv is None:
        return None
    right = region[0] >= fn.inflections[0]
    x = fn.dinv(side.sign * s.detach(), right)
    return torch.minimum(torch.maximum(x, a), b)


def _cap_gap(side: _Side, s: Tensor, a: Tensor, b: Tensor, region: tuple[float, float]) -> Tensor:
    """An upper bound on ``max over [a, b] of F(x) - s x`` for ``[a, b]`` inside one concave region of ``F``:
    there ``F - s x`` is concave, so it lies below its tangent at any point ``x`` of ``[a, b]``; at the
    closed-form root of ``F' = s`` (``Smooth.dinv``) that tangent is flat and the bound exact up to
    rounding, else the tangents at the ends of the bisection bracket of ``F' = s`` bound it."""

    def gap(x: Tensor) -> Tensor:
        return side.F(x) - s * x

    x = _slope_point(side, s, a, b, region)
    if x is not None:
        sx = side.dF(x) - s
        return gap(x) + torch.maximum(sx * (a - x), sx * (b - x))

    lo, hi = _bisect(lambda x: side.dF(x) - s, a, b, increasing=False, iters=_GAP_ITERS)
    # on the bracket the concave gap lies below its tangents at lo and at hi: bound it by their meeting point
    glo, ghi = gap(lo), gap(hi)
    slo, shi = side.dF(lo) - s, side.dF(hi) - s
    t = ((ghi - glo - shi * (hi - lo)) / torch.where(slo > shi, slo - shi, torch.ones_like(slo)))
    meet = glo + slo * torch.minimum(t.clamp(min=0), hi - lo)
    cand = torch.where(slo <= 0, glo, torch.where(shi >= 0, ghi, meet))
    return torch.maximum(cand, torch.maximum(glo, ghi))


def _max_gap(side: _Side, s: Tensor, l: Tensor, u: Tensor, at: Tensor | None = None) -> Tensor:
    """An upper bound on ``max over [l, u] of F(x) - s x``, tight up to rounding.

    The maximum lies at an end point, at an inflection point, or where ``F' = s`` in a region where
    ``F`` is concave (:func:`_cap_gap`).  ``at``: a point with ``F'(at) == s`` where known (the tangent
    point of the line): on the concave piece that holds it the maximum is at ``at``, and the bisection
    runs only on the entries that still need it (a function with a closed-form ``dinv`` needs neither).
    """

    def gap(x: Tensor) -> Tensor:
        return side.F(x) - s * x

    best = torch.maximum(gap(l), gap(u))
    for p in side.fn.inflections:
        best = torch.maximum(best, gap(torch.minimum(torch.maximum(l.new_tensor(p).expand_as(l), l), u)))
    for region in side.caps:
        a, b, ok = _piece(l, u, region)
        if at is None or side.fn.dinv is not None or torch.jit.is_tracing():
            best = torch.where(ok, torch.maximum(best, _cap_gap(side, s, a, b, region)), best)
            continue
        known = ok & (at >= a) & (at <= b) & (side.dF(at) == s)
        best = torch.where(known, torch.maximum(best, gap(at)), best)
        need = (ok & ~known).expand(best.shape).reshape(-1).nonzero().flatten()
        if need.numel():  # the bisection on those entries only
            sub = [t.expand(best.shape).reshape(-1)[need] for t in (s, a, b)]
            flat = best.reshape(-1)
            cand = _cap_gap(side, sub[0], sub[1], sub[2], region)
            best = flat.index_put((need,), torch.maximum(flat[need], cand)).reshape(best.shape)
    return best


def _through(side: _Side, x0: Tensor, l: Tensor, u: Tensor, region: tuple[float, float], right: bool) -> Tensor:
    """The tangent point ``d`` in ``region ∩ [l, u]`` whose tangent of ``F`` passes through ``(x0, F(x0))``.

    On a concave region ``h(d) = F(d) + F'(d)(x0 - d) - F(x0)`` is increasing right of ``x0`` (``x0 = l``,
    ``right``) and decreasing left of it (``x0 = u``): bisection; an end point where there is no root.
    """
    a, b, _ = _piece(l, u, region)
    f0 = side.F(x0)

    def h(d: Tensor) -> Tensor:
        return side.F(d) + side.dF(d) * (x0 - d) - f0

    lo, hi = _bisect(h, a, b, increasing=right)
    return hi if right else lo


def _crown_slope(side: _Side, l: Tensor, u: Tensor, want_point: bool = False) -> tuple[Tensor, Tensor | None]:
    """CROWN's upper-line slope of ``F`` on ``[l, u]`` and (``want_point``) the tangent point that gives it.

    Candidates: the tangent at the midpoint, the secant, and in every concave region the tangents through
    ``(l, F(l))`` and ``(u, F(u))``; the one whose (exactly lifted) line is lowest at the midpoint wins.
    On one concave region that is the midpoint tangent, on one convex region the secant.
    """
    m = (l + u) / 2
    w = u - l
    secant = torch.where(w > 0, (side.F(u) - side.F(l)) / torch.where(w > 0, w, torch.ones_like(w)), side.dF(m))
    cands: list[tuple[Tensor, Tensor | None]] = [(side.dF(m), m), (secant, None)]
    for region in side.caps:  # through l (u) only where [l, u] can reach left (right) of the region
        for x0, right, beyond in ((l, True, region[0]), (u, False, region[1])):
            if math.isfinite(beyond):
                d = _through(side, x0, l, u, region, right)
                cands.append((side.dF(d), d))
    best_s = best_v = best_d = None
    for s, d in cands:
        v = s * m + _max_gap(side, s, l, u, at=d)  # a tangent's own point spares its bisection
        if want_point and d is None:
            d = _point_of_slope(side, s, l, u)
        if best_v is None:
            best_s, best_v, best_d = s, v, d
            continue
        better = v < best_v
        best_s, best_v = torch.where(better, s, best_s), torch.where(better, v, best_v)
        if want_point:
            best_d = torch.where(better, d, best_d)
    # tiny boxes: the secant is rounding noise; the midpoint tangent is as tight as any line there
    tiny = w <= 1e-4 * (1 + m.abs())
    best_s = torch.where(tiny, side.dF(m), best_s)
    if want_point:
        best_d = torch.where(tiny, m, best_d)
    return best_s, best_d


def _point_of_slope(side: _Side, s: Tensor, l: Tensor, u: Tensor) -> Tensor:
    """A point ``d`` in ``[l, u]`` with ``F'(d) = s`` (``F'`` is monotone on each convexity region)."""
    edges = (-math.inf, *side.fn.inflections, math.inf)
    d = (l + u) / 2
    err = (side.dF(d) - s).abs()
    for i in range(len(edges) - 1):
        a, b, ok = _piece(l, u, (edges[i], edges[i + 1]))
        x = _slope_point(side, s, a, b, (edges[i], edges[i + 1]))
        if x is None:
            dec = (edges[i], edges[i + 1]) in side.caps  # F' decreasing where F is concave
            lo, hi = _bisect(lambda x: side.dF(x) - s, a, b, increasing=not dec)
            x = (lo + hi) / 2
        e = (side.dF(x) - s).abs()
        take = ok & (e < err)
        d, err = torch.where(take, x, d), torch.where(take, e, err)
    return d


def _line(side: _Side, s: Tensor, l: Tensor, u: Tensor, at: Tensor | None = None) -> Tensor:
    """The sound intercept (of ``F``'s upper line of slope ``s``, the tangent at ``at`` where known), rounded
    outward."""
    b = _max_gap(side, s, l, u, at)
    reach = torch.maximum(l.abs(), u.abs())
    eps = torch.finfo(b.dtype).eps
    b = b + _fp_slack(b) + _fp_slack(s * reach) + eps * (side.F(l).abs() + side.F(u).abs())
    if side.fn.eval_ulps:
        b = b + side.fn.eval_ulps * eps * (1 + reach)
    if side.fn.slack and side.sign < 0:  # only the lower line of f must reach below the eval function
        b = b + torch.where(u > side.fn.slack_above, side.fn.slack, 0.0)
    return b


def smooth_lines(fn: Smooth, l: Tensor, u: Tensor, alpha: Tensor | None = None) -> Lines:
    """Lines of a smooth ``f`` on ``[l, u]``: CROWN's slopes, or the tangents at ``alpha[0]`` (upper) and
    ``alpha[1]`` (lower) projected into ``[l, u]``; intercepts exact (see module docstring)."""
    up, low = _Side(fn, 1.0), _Side(fn, -1.0)
    if alpha is None:
        us, _ = _crown_slope(up, l, u)
        ls, _ = _crown_slope(low, l, u)
        du = dl = None
    else:
        du, dl = (torch.minimum(torch.maximum(a, l), u) for a in (alpha[0], alpha[1]))
        us, ls = up.dF(du), low.dF(dl)
    if fn.monotone:  # rounding can tip a flat secant below 0; any slope is sound (exact intercepts)
        us, ls = us.clamp(min=0), ls.clamp(max=0)
    ub = _line(up, us, l, u, du)
    lb = _line(low, ls, l, u, dl)
    return Lines(-ls, -lb, us, ub)


def tangent_projection(alpha: Tensor, l: Tensor, u: Tensor, **attrs) -> Tensor:
    """Tangent points onto ``[l, u]``."""
    return torch.minimum(torch.maximum(alpha, l), u)


def smooth_alpha_init(fn: Smooth, l: Tensor, u: Tensor) -> Tensor:
    """The tangent points (upper, lower) of CROWN's lines, shape ``(2, *l.shape)``."""
    _, du = _crown_slope(_Side(fn, 1.0), l, u, want_point=True)
    _, dl = _crown_slope(_Side(fn, -1.0), l, u, want_point=True)
    return torch.stack(torch.broadcast_tensors(du, dl))


def unimodal_interval(fn: Smooth, eval_fn: Callable[[Tensor], Tensor], l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Exact image of ``[l, u]`` under a function decreasing left of ``fn.argmin``, increasing right of it
    (widened by the eval function's rounding error ``fn.eval_ulps``)."""
    fl, fu = eval_fn(l), eval_fn(u)
    lo, hi = torch.minimum(fl, fu), torch.maximum(fl, fu)
    inside = (l <= fn.argmin) & (u >= fn.argmin)
    fmin = torch.full_like(lo, fn.minimum)
    lo = torch.where(inside, torch.minimum(lo, fmin - _fp_slack(fmin)), lo)
    if fn.eval_ulps:
        err = fn.eval_ulps * torch.finfo(lo.dtype).eps * (1 + torch.maximum(l.abs(), u.abs()))
        lo, hi = lo - err, hi + err
    return lo, hi


# -- the smooth functions --------------------------------------------------------------------

def _dsigmoid(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s)


def _dtanh(x: Tensor) -> Tensor:
    return 1 - torch.tanh(x) ** 2


def _softsign(x: Tensor) -> Tensor:
    return x / (1 + x.abs())


def _dsoftsign(x: Tensor) -> Tensor:
    return 1 / (1 + x.abs()) ** 2


def _dsilu(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


_SQRT1_2 = 1 / math.sqrt(2)
_GELU_K = math.sqrt(2 / math.pi)
_GELU_C = 0.044715


def _gelu_erf(x: Tensor) -> Tensor:
    return F.gelu(x)


def _dgelu_erf(x: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(x * _SQRT1_2)) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def _dgelu_tanh(x: Tensor) -> Tensor:
    t = torch.tanh(_GELU_K * (x + _GELU_C * x ** 3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_K * (1 + 3 * _GELU_C * x * x)


def _root64(fn: Callable[[Tensor], Tensor], a: float, b: float) -> float:
    """The root of ``fn`` in ``[a, b]`` (a sign change there), in float64."""
    lo, hi = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    flo = float(fn(lo))
    for _ in range(200):
        mid = (lo + hi) / 2
        if (float(fn(mid)) > 0) == (flo > 0):
            lo = mid
        else:
            hi = mid
    return float((lo + hi) / 2)


def _d2(df: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """The second derivative by autograd (float64, used once per function to find inflection points)."""

    def d2(x: Tensor) -> Tensor:
        x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(df(x), x)
        return g.detach()

    return d2


def _unimodal(f: Callable, df: Callable, left: tuple[float, float], right: tuple[float, float],
              at_min: tuple[float, float], eval_ulps: float = 0.0) -> Smooth:
    """A concave–convex–concave function with one minimum (GELU, SiLU), its constants found numerically."""
    d2 = _d2(df)
    p1, p2 = _root64(d2, *left), _root64(d2, *right)
    xm = _root64(df, *at_min)
    fmin = float(f(torch.tensor(xm, dtype=torch.float64)))
    return Smooth(f, df, (p1, p2), convex_first=False, eval_ulps=eval_ulps, monotone=False, argmin=xm,
                  minimum=fmin)


def _derf(x: Tensor) -> Tensor:
    return (2 / math.sqrt(math.pi)) * torch.exp(-x * x)


def _side(x: Tensor, right: bool) -> Tensor:
    """``x >= 0`` right of the inflection point 0, ``-x`` left of it."""
    return x if right else -x


def _dsigmoid_inv(y: Tensor, right: bool) -> Tensor:
    # σ(1 - σ) = y  ->  σ = (1 + sqrt(1 - 4y)) / 2 right of 0;  x = log(σ / (1 - σ)) = 2 atanh(sqrt(1 - 4y))
    r = (1 - 4 * y).clamp(0, 1).sqrt()
    return _side(2 * torch.atanh(r), right)


def _dtanh_inv(y: Tensor, right: bool) -> Tensor:
    # 1 - tanh² = y  ->  x = atanh(sqrt(1 - y))
    return _side(torch.atanh((1 - y).clamp(0, 1).sqrt()), right)


def _derf_inv(y: Tensor, right: bool) -> Tensor:
    # (2 / sqrt(pi)) exp(-x²) = y  ->  x = sqrt(-log(y sqrt(pi) / 2))
    return _side((-torch.log((y * (math.sqrt(math.pi) / 2)).clamp(max=1))).clamp(min=0).sqrt(), right)


def _dsoftsign_inv(y: Tensor, right: bool) -> Tensor:
    # 1 / (1 + |x|)² = y  ->  |x| = 1 / sqrt(y) - 1
    return _side((y.clamp(max=1).rsqrt() - 1).clamp(min=0), right)


SIGMOID = Smooth(torch.sigmoid, _dsigmoid, (0.0,), dinv=_dsigmoid_inv)
ERF = Smooth(torch.erf, _derf, (0.0,), dinv=_derf_inv)
TANH = Smooth(torch.tanh, _dtanh, (0.0,), dinv=_dtanh_inv)
SOFTSIGN = Smooth(_softsign, _dsoftsign, (0.0,), dinv=_dsoftsign_inv)
SILU = _unimodal(F.silu, _dsilu, (-3.0, -2.0), (2.0, 3.0), (-2.0, -1.0))
GELU = {"none": _unimodal(_gelu_erf, _dgelu_erf, (-2.0, -1.0), (1.0, 2.0), (-1.5, -0.5), eval_ulps=4),
        "tanh": _unimodal(_gelu_tanh, _dgelu_tanh, (-2.0, -1.0), (1.0, 2.0), (-1.5, -0.5), eval_ulps=2)}


@cache
def softplus_fn(beta: float, threshold: float) -> Smooth:
    """Softplus ``log(1 + exp(beta x)) / beta`` (convex); the eval function switches to ``x`` above
    ``threshold / beta``, a jump of at most ``log1p(exp(-threshold)) / beta`` (the slack)."""

    def f(x: Tensor) -> Tensor:
        return x.clamp(min=0) + torch.log1p(torch.exp(-beta * x.abs())) / beta

    def df(x: Tensor) -> Tensor:
        return torch.sigmoid(beta * x)

    return Smooth(f, df, (), convex_first=True, slack=math.log1p(math.exp(-threshold)) / beta,
                  slack_above=threshold / beta)


def _smooth(fn_of: Callable[..., Smooth]) -> tuple[Callable[..., Lines], Callable[..., Tensor]]:
    """``(lines, alpha init)`` of a smooth op whose :class:`Smooth` is ``fn_of(**attrs)``."""

    def lines(l: Tensor, u: Tensor, mode: str = Mode.CROWN, alpha: Tensor | None = None, **attrs) -> Lines:
        return smooth_lines(fn_of(**attrs), l, u, alpha)

    def init(l: Tensor, u: Tensor, **attrs) -> Tensor:
        return smooth_alpha_init(fn_of(**attrs), l, u)

    return lines, init


def smooth_relaxation(fn_of: Callable[..., Smooth], eval_fn: Callable[..., Tensor] | None = None) -> Relaxation:
    """The :class:`Relaxation` of a smooth op (``k = 2`` tangent points); with ``eval_fn`` (the op's concrete
    function) an exact interval rule for a unimodal (non-monotone) op."""
    lines, init = _smooth(fn_of)
    interval = None
    if eval_fn is not None:
        def interval(l: Tensor, u: Tensor, **attrs) -> tuple[Tensor, Tensor]:
            return unimodal_interval(fn_of(**attrs), lambda x: eval_fn(x, **attrs), l, u)
    return Relaxation(lines, AlphaSpec(2, init, tangent_projection, lr_scale=0.02), interval)


# -- ops added for VNN-COMP coverage: exp, reciprocal, powers, steps, sin / cos ------------------------

EXP = Smooth(torch.exp, torch.exp, (), convex_first=True)


def _extend_const(ln: Lines, l: Tensor, x0: Tensor | float, f0: Tensor | float) -> Lines:
    """Make lines that are sound on ``[max(l, x0), u]`` sound on ``[l, u]`` for a function equal to the constant
    ``f0`` on ``x <= x0``: a line is linear, so it suffices that it is on the right side of ``f0`` at ``l``."""
    below = l < x0
    lb = torch.where(below, torch.minimum(ln.lb, f0 - ln.lw * l - _fp_slack(ln.lw * l)), ln.lb)
    ub = torch.where(below, torch.maximum(ln.ub, f0 - ln.uw * l + _fp_slack(ln.uw * l)), ln.ub)
    return Lines(ln.lw, lb, ln.uw, ub)


def _recip(x: Tensor) -> Tensor:
    return 1.0 / x


def _drecip(x: Tensor) -> Tensor:
    return -1.0 / (x * x)


RECIPROCAL = Smooth(_recip, _drecip, (), convex_first=True, monotone=False)


def reciprocal_lines(l: Tensor, u: Tensor, mode: str = Mode.CROWN, alpha: Tensor | None = None, *,
                     floor: float) -> Lines:
    """``1 / max(x, floor)`` (convex, decreasing): the smooth lines of ``1/x`` on ``[max(l, floor), max(u, floor)]``,
    extended by the constant ``1 / floor`` left of ``floor`` (where ``l < floor`` the upper line is that constant)."""
    lc, uc = l.clamp(min=floor), u.clamp(min=floor)
    ln = _extend_const(smooth_lines(RECIPROCAL, lc, uc, alpha), l, floor, 1.0 / floor)
    below = l < floor  # the maximum 1 / floor is attained: a constant upper line
    top = torch.full_like(ln.ub, 1.0 / floor)
    # lower: the extended line or the constant minimum 1 / max(u, floor), whichever is higher mid-box
    bottom = 1.0 / uc
    bottom = bottom - _fp_slack(bottom)
    flat = below & (bottom >= ln.lw * (l + u) / 2 + ln.lb)
    zero = torch.zeros_like(ln.uw)
    return Lines(torch.where(flat, zero, ln.lw), torch.where(flat, bottom, ln.lb), torch.where(below, zero, ln.uw),
                 torch.where(below, top + _fp_slack(top), ln.ub))


def reciprocal_alpha_init(l: Tensor, u: Tensor, *, floor: float) -> Tensor:
    """CROWN's tangent points of the reciprocal, shape ``(2, *l.shape)``."""
    return smooth_alpha_init(RECIPROCAL, l.clamp(min=floor), u.clamp(min=floor))


def reciprocal_interval(l: Tensor, u: Tensor, *, floor: float) -> tuple[Tensor, Tensor]:
    """Image of ``[l, u]`` under ``1 / max(x, floor)`` (decreasing)."""
    return 1.0 / u.clamp(min=floor), 1.0 / l.clamp(min=floor)


@cache
def power_fn(exponent: int) -> Smooth:
    """``x ** n`` for an integer ``n >= 2``: convex with its minimum 0 at 0 (even), or monotone with an
    inflection at 0 (odd)."""
    n = int(exponent)

    def f(x: Tensor) -> Tensor:
        return x ** n

    def df(x: Tensor) -> Tensor:
        return n * x ** (n - 1)

    if n % 2 == 0:
        return Smooth(f, df, (), convex_first=True, monotone=False, argmin=0.0, minimum=0.0)
    return Smooth(f, df, (0.0,), convex_first=False)


def sqrt_lines(l: Tensor, u: Tensor, alpha: Tensor | None = None) -> Lines:
    """``sqrt(max(x, 0))`` (concave, increasing on x >= 0): lower secant, upper tangent at ``alpha[0]``
    (default the midpoint; a constant line where the tangent point is ~0), rounded outward and
    extended by the constant 0 left of 0."""
    a, b = l.clamp(min=0), u.clamp(min=0)
    ra, rb = torch.sqrt(a), torch.sqrt(b)
    w = b - a
    flat = w <= 1e-6 * (1 + b)
    lw = torch.where(flat, torch.zeros_like(w), (rb - ra) / torch.where(flat, torch.ones_like(w), w))
    lb = ra - lw * a
    lb = lb - 4 * (_fp_slack(lb) + _fp_slack(lw * b) + _fp_slack(rb))
    t = (a + b) / 2 if alpha is None else torch.minimum(torch.maximum(alpha[0], a), b)
    small = t <= 1e-12 * (1 + b)
    rt = torch.sqrt(torch.where(small, torch.ones_like(t), t))
    uw = torch.where(small, torch.zeros_like(t), 0.5 / rt)
    ub = torch.where(small, rb, rt / 2)
    ub = ub + 4 * (_fp_slack(ub) + _fp_slack(uw * b) + _fp_slack(rb))
    return _extend_const(Lines(lw, lb, uw, ub), l, 0.0, 0.0)


def power_lines(l: Tensor, u: Tensor, mode: str = Mode.CROWN, alpha: Tensor | None = None, *,
                exponent: float) -> Lines:
    """Lines of ``x ** exponent`` (integer >= 2: the smooth construction; 0.5: :func:`sqrt_lines`)."""
    if exponent == 0.5:
        return sqrt_lines(l, u, alpha)
    return smooth_lines(power_fn(int(exponent)), l, u, alpha)


def power_alpha_init(l: Tensor, u: Tensor, *, exponent: float) -> Tensor:
    """CROWN's tangent points, shape ``(2, *l.shape)`` (for 0.5 the midpoint, used by the upper line)."""
    if exponent == 0.5:
        m = (l.clamp(min=0) + u.clamp(min=0)) / 2
        return torch.stack((m, m))
    return smooth_alpha_init(power_fn(int(exponent)), l, u)


def power_interval(l: Tensor, u: Tensor, *, exponent: float) -> tuple[Tensor, Tensor]:
    """Exact image of ``[l, u]`` under ``x ** exponent`` (end points, and 0 for an even power across 0)."""
    if exponent == 0.5:
        return torch.sqrt(l.clamp(min=0)), torch.sqrt(u.clamp(min=0))
    n = int(exponent)
    if n % 2:
        return l ** n, u ** n
    return unimodal_interval(power_fn(n), lambda x: x ** n, l, u)


def power_check(attrs: dict) -> str | None:
    """The exponents the power relaxation supports: integers >= 2 and 0.5."""
    e = attrs["exponent"]
    if e == 0.5 or (float(e).is_integer() and e >= 2):
        return None
    return f"Pow with exponent {e} (supported: integers >= 2 and 0.5)"


def step_relaxation(f: Callable[[Tensor], Tensor]) -> Relaxation:
    """The relaxation of a non-decreasing step function ``f`` (sign, floor, ceil): the constant lines
    ``f(l)`` and ``f(u)`` (exact where the box holds no step)."""

    def lines(l: Tensor, u: Tensor, mode: str = Mode.CROWN, alpha: Tensor | None = None) -> Lines:
        zero = torch.zeros_like(l)
        return Lines(zero, f(l), zero, f(u))

    lines.__doc__ = f"Constant lines ``{getattr(f, '__name__', 'f')}(l)`` and ``(u)``."
    return Relaxation(lines)


#: sin on [-2π, 4π]: concave on [2kπ, (2k+1)π], convex between; boxes are shifted into [-π, 3π].
SIN = Smooth(torch.sin, torch.cos, (-math.pi, 0.0, math.pi, 2 * math.pi, 3 * math.pi), convex_first=False,
             monotone=False)
_TWO_PI = 2 * math.pi


def _periodic_shift(l: Tensor, u: Tensor, phase: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """In float64: ``y = x + shift`` maps ``[l, u]`` to ``[yl, yu]`` with ``yl`` in ``[-π, π)`` (``sin(y)`` is
    ``sin(x + phase)``); ``wide`` marks boxes of width ``>= 2π`` (clamped to a point)."""
    l64, u64 = l.double(), u.double()
    k = torch.floor((l64 + phase + math.pi) / _TWO_PI)
    shift = phase - _TWO_PI * k
    wide = (u64 - l64) >= _TWO_PI - 1e-9
    yl = l64 + shift
    yu = torch.where(wide, yl, u64 + shift)
    return yl, yu, shift, wide


def _outward(lines: Lines, l: Tensor, u: Tensor, dtype: torch.dtype) -> Lines:
    """Cast float64 lines to ``dtype``, widening the intercepts by the cast's and ``dtype``'s rounding."""
    reach = torch.maximum(l.double().abs(), u.double().abs())
    eps = torch.finfo(dtype).eps
    lw, uw = lines.lw.to(dtype), lines.uw.to(dtype)
    lb = lines.lb - 4 * eps * (1 + lines.lb.abs() + lines.lw.abs() * reach)
    ub = lines.ub + 4 * eps * (1 + lines.ub.abs() + lines.uw.abs() * reach)
    return Lines(lw, lb.to(dtype), uw, ub.to(dtype))


def periodic_relaxation(phase: float) -> Relaxation:
    """The relaxation of ``sin(x + phase)`` (sin: 0, cos: π/2): the smooth construction on the box shifted by a
    multiple of 2π into one period (computed in float64, rounded outward); constant lines ±1 on a box
    of width >= 2π.  ``alpha``: the tangent points of the upper and lower lines."""

    def lines(l: Tensor, u: Tensor, mode: str = Mode.CROWN, alpha: Tensor | None = None) -> Lines:
        yl, yu, shift, wide = _periodic_shift(l, u, phase)
        a = None if alpha is None else alpha.double() + shift
        ln = smooth_lines(SIN, yl, yu, a)
        slack = 4 * torch.finfo(torch.float64).eps * (1 + shift.abs())
        lb = ln.lb + ln.lw * shift - slack * (1 + ln.lw.abs())
        ub = ln.ub + ln.uw * shift + slack * (1 + ln.uw.abs())
        zero, one = torch.zeros_like(yl), torch.ones_like(yl)
        ln = Lines(torch.where(wide, zero, ln.lw), torch.where(wide, -one, lb),
                   torch.where(wide, zero, ln.uw), torch.where(wide, one, ub))
        return _outward(ln, l, u, l.dtype)

    def init(l: Tensor, u: Tensor) -> Tensor:
        yl, yu, shift, _ = _periodic_shift(l, u, phase)
        return (smooth_alpha_init(SIN, yl, yu) - shift).to(l.dtype)

    def interval(l: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        yl, yu, _, wide = _periodic_shift(l, u, phase)
        sl, su = torch.sin(yl), torch.sin(yu)
        lo, hi = torch.minimum(sl, su), torch.maximum(sl, su)
        peak = ((yl <= math.pi / 2) & (yu >= math.pi / 2)) | (yu >= 5 * math.pi / 2)
        trough = ((yl <= -math.pi / 2) & (yu >= -math.pi / 2)) | ((yl <= 1.5 * math.pi) & (yu >= 1.5 * math.pi))
        hi = torch.where(peak | wide, torch.ones_like(hi), hi)
        lo = torch.where(trough | wide, -torch.ones_like(lo), lo)
        eps = 2 * torch.finfo(l.dtype).eps
        return (lo - eps).clamp(min=-1).to(l.dtype), (hi + eps).clamp(max=1).to(l.dtype)

    return Relaxation(lines, AlphaSpec(2, init, tangent_projection, lr_scale=0.02), interval)


def relax(op: str, l: Tensor, u: Tensor, mode: str = Mode.CROWN, alpha: Tensor | None = None, **attrs) -> Lines:
    """The relaxation lines of activation ``op`` on ``[l, u]`` (from the op table)."""
    from .ops import opdef

    r = opdef(op).relaxation
    if r is None:
        raise ValueError(f"op {op!r} has no relaxation")
    return r.lines(l, u, mode, alpha, **attrs)


__all__ = ["AlphaSpec", "Lines", "Mode", "Relaxation", "Smooth", "periodic_relaxation", "power_fn", "relax",
           "smooth_alpha_init", "smooth_lines", "smooth_relaxation", "softplus_fn", "step_relaxation"]
