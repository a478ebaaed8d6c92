"""Forward symbolic linear bounds (symbolic intervals as in MixTrain / Fast-Lin forward): domain ``"forward"``.

Every perturbed value ``v`` (per-sample shape ``shape``) carries a :class:`Symbolic`
state: coefficient tensors ``lw``, ``uw`` of shape ``(B, n, *shape)`` over the
``n`` flattened input entries and biases ``lb``, ``ub`` of shape ``(B, *shape)``
with ``lw·x + lb <= v <= uw·x + ub`` for every ``x`` in the box.  Affine ops
act in centre/radius form on the coefficient rows (``W·c ± |W|·r``, exactly the
positive/negative split), activations use the lines of :mod:`.relaxation` at the
concrete bounds of their input (:func:`concretize`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor

from boundc.interpreter import Emitting

from . import concrete
from .interval import Interval
from .linalg import matvec, vecmat
from .ops import OpDef, opdef
from .registry import deriver, rule
from .relaxation import Mode

DOMAIN = "forward"


class Symbolic(NamedTuple):
    """Linear lower/upper bounds ``lw·x + lb``, ``uw·x + ub`` of a value in terms of the input ``x``."""

    lw: Tensor
    uw: Tensor
    lb: Tensor
    ub: Tensor


def _rows(t: Tensor) -> Tensor:
    return t.reshape((-1,) + tuple(t.shape[2:]))


def _unrows(t: Tensor, B: int, k: int) -> Tensor:
    return t.reshape((B, k) + tuple(t.shape[1:]))  # k explicit: an empty batch leaves -1 undetermined


def _cr_map(s: Symbolic, lin: Callable[[Tensor], Tensor], lin_abs: Callable[[Tensor], Tensor],
            full: Callable[[Tensor], Tensor]) -> Symbolic:
    """Apply an affine op in centre/radius form: ``lin`` (no constant part) / ``lin_abs`` on coefficient
    rows, ``full`` (with its constant part) on the bias."""
    B, k = s.lw.shape[:2]
    c, r = _rows((s.lw + s.uw) / 2), _rows((s.uw - s.lw) / 2)
    c, r = _unrows(lin(c), B, k), _unrows(lin_abs(r), B, k)
    cb, rb = full((s.lb + s.ub) / 2), lin_abs((s.ub - s.lb) / 2)
    return Symbolic(c - r, c + r, cb - rb, cb + rb)


def concretize(s: Symbolic, x_lower: Tensor, x_upper: Tensor) -> Interval:
    """Concrete bounds of a value over the box: ``lw·centre - |lw|·radius + lb`` (and the upper mirror)."""
    centre = ((x_upper + x_lower) / 2).flatten(1)
    radius = ((x_upper - x_lower) / 2).flatten(1)
    shape = s.lb.shape
    lw, uw = s.lw.flatten(2), s.uw.flatten(2)
    lower = vecmat(centre, lw) - vecmat(radius, lw.abs())
    upper = vecmat(centre, uw) + vecmat(radius, uw.abs())
    return Interval(lower.reshape(shape) + s.lb, upper.reshape(shape) + s.ub)


@rule("input", DOMAIN)
def input_symbolic(x_lower: Tensor, x_upper: Tensor) -> Symbolic:
    """The input itself: identity coefficients (the input layer only), zero bias."""
    B, shape = x_lower.shape[0], tuple(x_lower.shape[1:])
    n = math.prod(shape)
    eye = torch.eye(n, dtype=x_lower.dtype, device=x_lower.device).reshape((1, n) + shape).expand((B, n) + shape)
    zero = torch.zeros_like(x_lower)
    return Symbolic(eye, eye, zero, zero)


@rule("identity", DOMAIN)
def identity(x: Symbolic) -> Symbolic:
    """Unchanged."""
    return x


@rule("linear", DOMAIN)
def linear(x: Symbolic, weight: Tensor, bias: Tensor | None) -> Symbolic:
    """``W·c ± |W|·r`` on the coefficient rows, plus the bias on the bias term."""
    return _cr_map(x, lambda t: F.linear(t, weight), lambda t: F.linear(t, weight.abs()),
                   lambda t: F.linear(t, weight, bias))


@rule("conv", DOMAIN)
def conv(x: Symbolic, weight: Tensor, bias: Tensor | None, **kw) -> Symbolic:
    """Convolution in centre/radius form."""
    return _cr_map(x, lambda t: concrete.conv(t, weight, None, **kw),
                   lambda t: concrete.conv(t, weight.abs(), None, **kw), lambda t: concrete.conv(t, weight, bias, **kw))


@rule("conv_transpose", DOMAIN)
def conv_transpose(x: Symbolic, weight: Tensor, bias: Tensor | None, **kw) -> Symbolic:
    """Transposed convolution in centre/radius form."""
    return _cr_map(x, lambda t: concrete.conv_transpose(t, weight, None, **kw),
                   lambda t: concrete.conv_transpose(t, weight.abs(), None, **kw),
                   lambda t: concrete.conv_transpose(t, weight, bias, **kw))


def _align(t: Tensor, ref: Tensor) -> Tensor:
    """Insert the coefficient dimension into a batched constant (rank == value rank incl. batch)."""
    return t.unsqueeze(1) if t.dim() == ref.dim() - 1 else t


@rule("scale_shift", DOMAIN)
def scale_shift(x: Symbolic, scale: Tensor | None, shift: Tensor | None) -> Symbolic:
    """Elementwise ``x * s + t``: coefficients scaled (swapped where ``s < 0``), ``t`` into the bias."""
    if scale is None:
        return Symbolic(x.lw, x.uw, x.lb + shift, x.ub + shift) if shift is not None else x
    s = _align(scale, x.lw)
    pos = s >= 0
    lw, uw = torch.where(pos, x.lw * s, x.uw * s), torch.where(pos, x.uw * s, x.lw * s)
    pb = scale >= 0
    lb, ub = torch.where(pb, x.lb * scale, x.ub * scale), torch.where(pb, x.ub * scale, x.lb * scale)
    if shift is not None:
        lb, ub = lb + shift, ub + shift
    return Symbolic(lw, uw, lb, ub)


def _zero_coeffs(c: Tensor, ref: Symbolic) -> Symbolic:
    """A constant as a symbolic value with zero coefficients."""
    c = torch.broadcast_to(c, ref.lb.shape)
    z = torch.zeros((ref.lw.shape[0], ref.lw.shape[1]) + tuple(c.shape[1:]), dtype=c.dtype, device=c.device)
    return Symbolic(z, z, c, c)


@rule("add", DOMAIN)
def add(x, y) -> Symbolic:
    """Sum (either may be a constant)."""
    x = x if isinstance(x, Symbolic) else _zero_coeffs(x, y)
    y = y if isinstance(y, Symbolic) else _zero_coeffs(y, x)
    return Symbolic(x.lw + y.lw, x.uw + y.uw, x.lb + y.lb, x.ub + y.ub)


@rule("sub", DOMAIN)
def sub(x, y) -> Symbolic:
    """Difference (either may be a constant)."""
    x = x if isinstance(x, Symbolic) else _zero_coeffs(x, y)
    y = y if isinstance(y, Symbolic) else _zero_coeffs(y, x)
    return Symbolic(x.lw - y.uw, x.uw - y.lw, x.lb - y.ub, x.ub - y.lb)


def _monotone_linear(fn: Callable[..., Tensor]) -> Callable[..., Symbolic]:
    """Rule for an op that is affine with non-negative weights (reshape, permute, pad, average pooling)."""

    def forward(x: Symbolic, **attrs) -> Symbolic:
        B, k = x.lw.shape[:2]
        f0 = fn(torch.zeros((1,) + tuple(x.lb.shape[1:]), dtype=x.lb.dtype, device=x.lb.device), **attrs)
        lw = _unrows(fn(_rows(x.lw), **attrs) - f0, B, k)
        uw = lw if x.uw is x.lw else _unrows(fn(_rows(x.uw), **attrs) - f0, B, k)
        return Symbolic(lw, uw, fn(x.lb, **attrs), fn(x.ub, **attrs))

    forward.__name__ = forward.__qualname__ = fn.__name__
    forward.__doc__ = f"``{fn.__name__}`` on coefficient rows and biases (non-negative linear map)."
    return forward




@rule("concat", DOMAIN)
def concat(*xs, dim: int) -> Symbolic:
    """Concatenate coefficients (along ``dim + 1``) and biases; constants get zero coefficients."""
    ref = next(x for x in xs if isinstance(x, Symbolic))
    ss = [x if isinstance(x, Symbolic) else _zero_coeffs(x, ref) for x in xs]
    d = dim + 1 if dim >= 0 else dim
    return Symbolic(torch.cat([s.lw for s in ss], d), torch.cat([s.uw for s in ss], d),
                    torch.cat([s.lb for s in ss], dim), torch.cat([s.ub for s in ss], dim))


def _activation(op: str) -> Callable[..., Symbolic]:
    lines_of = opdef(op).relaxation.lines

    def forward(x: Symbolic, bounds: Interval, **attrs) -> Symbolic:
        ln = lines_of(bounds.lower, bounds.upper, Mode.CROWN, None, **attrs)
        lw1, uw1 = ln.lw.unsqueeze(1), ln.uw.unsqueeze(1)
        lw = torch.where(lw1 >= 0, x.lw * lw1, x.uw * lw1)
        uw = torch.where(uw1 >= 0, x.uw * uw1, x.lw * uw1)
        lb = torch.where(ln.lw >= 0, x.lb * ln.lw, x.ub * ln.lw) + ln.lb
        ub = torch.where(ln.uw >= 0, x.ub * ln.uw, x.lb * ln.uw) + ln.ub
        return Symbolic(lw, uw, lb, ub)

    forward.__name__ = forward.__qualname__ = f"{op}_forward"
    forward.__doc__ = f"``{op}``: its relaxation lines applied to the symbolic bounds of its input."
    return forward


@deriver(DOMAIN)
def derive(d: OpDef) -> Callable[..., Symbolic] | None:
    """The forward rule from the op table: an elementwise activation's relaxation lines; for a single-input
    op that is affine and monotone (reshape, permute, pad, average pooling) its eval function on coefficient
    rows and biases; ``None`` for other ops."""
    if d.relaxation is not None and d.elementwise:
        return _activation(d.name)
    if d.affine and d.monotone and d.eval is not None:
        return _monotone_linear(d.eval)
    return None


@rule("max_pool2d", DOMAIN)
def max_pool2d(x: Symbolic, bounds: Interval, **kw) -> Symbolic:
    """Lower: the window entry with the largest lower bound; upper: the window's largest upper bound."""
    _, idx = F.max_pool2d(bounds.lower, return_indices=True, **kw)
    top = F.max_pool2d(bounds.upper, **kw)
    B, n = x.lw.shape[:2]
    flat = idx.flatten(2)
    lw = x.lw.flatten(3).gather(3, flat.unsqueeze(1).expand(B, n, *flat.shape[1:])).reshape((B, n) + top.shape[1:])
    lb = x.lb.flatten(2).gather(2, flat).reshape(top.shape)
    return Symbolic(lw, torch.zeros_like(lw), lb, top)


@rule("spec", DOMAIN)
def spec(y: Symbolic, C: Tensor) -> Symbolic:
    """``C @ y`` per sample (positive/negative parts of ``C``)."""
    cp, cn = C.clamp(min=0), C.clamp(max=0)
    lw = torch.einsum("bsk,bnk->bns", cp, y.lw) + torch.einsum("bsk,bnk->bns", cn, y.uw)
    uw = torch.einsum("bsk,bnk->bns", cp, y.uw) + torch.einsum("bsk,bnk->bns", cn, y.lw)
    lb = matvec(cp, y.lb) + matvec(cn, y.ub)
    ub = matvec(cp, y.ub) + matvec(cn, y.lb)
    return Symbolic(lw, uw, lb, ub)


@rule("spec_linear", DOMAIN)
def spec_linear(x: Symbolic, weight: Tensor, bias: Tensor | None, C: Tensor) -> Symbolic:
    """The elided last layer: the per-sample weight ``C·W`` and bias ``C·b``."""
    w = torch.einsum("bsk,ki->bsi", C, weight)
    out = spec(x, w)
    if bias is None:
        return out
    b = torch.einsum("bsk,k->bs", C, bias)
    return Symbolic(out.lw, out.uw, out.lb + b, out.ub + b)


class ForwardWalk(Emitting):
    """The forward method's walk: an op with ``needs_bounds`` also reads the concrete bounds of its input
    (concretised once per value)."""

    def __init__(self, em, domain: str) -> None:
        super().__init__(em, domain)
        self.bounds: dict[str, fx.Node] = {}

    def extra_args(self, node, args: tuple) -> tuple:
        """The node's inputs, plus the concrete bounds of its input for an op that needs them."""
        if not opdef(node.op).needs_bounds:
            return args
        i, em = node.inputs[0], self.em
        if i not in self.bounds:
            b = em.call(concretize, (self.values[i], em.inputs["x_lower"], em.inputs["x_upper"]), name=f"bounds_{i}")
            b.meta["boundc_bounds"] = i  # read by BoundModule.report
            self.bounds[i] = b
        return (*args, self.bounds[i])


def emit_forward(em, options) -> tuple[fx.Node, fx.Node]:
    """Emit the forward method: one symbolic state per perturbed node, concretised at non-linear ops' inputs."""
    out = em.g.output
    if not out.perturbed:
        v = em.constant(out)
        return v, v
    ForwardWalk(em, DOMAIN).run(perturbed_only=True)
    res = em.call(concretize, (em.values[out.name], em.inputs["x_lower"], em.inputs["x_upper"]), name="bound")
    return em.attr(res, "lower"), em.attr(res, "upper")


__all__ = ["ForwardWalk", "Symbolic", "concretize", "emit_forward", "input_symbolic"]
