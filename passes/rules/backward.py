"""Backward linear relaxation (CROWN / Fast-Lin / α): per-op rules in domain ``"backward"``.

A backward pass carries, for a node ``v`` of per-sample shape ``shape``, a
:class:`Coeffs` state: lower/upper coefficient tensors ``lA``, ``uA`` of shape
``(B, S, *shape)`` and biases ``lb``, ``ub`` of shape ``(B, S)`` such that for
every input in the box

    lA·v + lb  <=  (the S bounded quantities)  <=  uA·v + ub.

Each rule maps the state at a node's output to one state per input (``None``
for constant inputs) and returns them as a tuple aligned with the node's
inputs.  Affine ops transpose their linear part (the weight for ``linear``,
autograd's ``conv_input`` for ``conv``, the explicit plain-op transposes of
:mod:`.transpose` for the structural ops) and move their constant part into
the bias.  The accumulated bias
travels to the *first* perturbed input only, so that summing the states of a
node with several users (ResNet skips, concat) counts every bias once.
Activations take their pre-activation bounds and use :mod:`.relaxation`.

Perturbed inputs arrive as their bounds (an Interval) where a rule needs
them and as the string ``"perturbed"`` otherwise; constants as tensors.
Rules receive keyword ``in_shapes`` (per-sample shape of each input, ``None``
for absent ones) in addition to the node's attrs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import transpose
from .interval import Interval
from .linalg import blocks_allowed, matvec, row_blocks, rowdot
from .ops import OpDef, opdef
from .registry import commutes, consumes_state, deriver, forwards_state, owns_result, rule
from .relaxation import Mode

DOMAIN = "backward"


class Coeffs(NamedTuple):
    """Lower/upper linear bounds ``lA·v + lb``, ``uA·v + ub`` on S quantities in terms of a node ``v``."""

    lA: Tensor
    uA: Tensor
    lb: Tensor
    ub: Tensor


# -- helpers ---------------------------------------------------------------------

def _dot(A: Tensor, t: Tensor) -> Tensor:
    """``sum over the node dims of A * t`` → (B, S); ``t`` is a constant broadcast against the node."""
    return (A * _align(t, A.dim() - 1)).flatten(2).sum(-1)


def _align(t: Tensor | float, node_ndim: int) -> Tensor | float:
    """Insert the S dimension into a constant with a batch dimension (rank == node rank incl. batch)."""
    if isinstance(t, Tensor) and t.dim() == node_ndim:
        return t.unsqueeze(1)
    return t


def _sum_to(A: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Undo broadcasting: sum ``A`` (B, S, *out) down to (B, S, *shape)."""
    out = A.shape[2:]
    if tuple(out) == tuple(shape):
        return A
    lead = len(out) - len(shape)
    if lead:
        A = A.sum(dim=tuple(range(2, 2 + lead)))
    dims = tuple(2 + i for i, (s, o) in enumerate(zip(shape, A.shape[2:])) if s == 1 and o != 1)
    return A.sum(dim=dims, keepdim=True) if dims else A


def zero_bias_like(c: Coeffs) -> Coeffs:
    """The same coefficients with zero bias (for every input but the first perturbed one)."""
    return Coeffs(c.lA, c.uA, torch.zeros_like(c.lb), torch.zeros_like(c.ub))


@owns_result
@consumes_state
@commutes
def add_coeffs(a: Coeffs, b: Coeffs, consume: bool = False) -> Coeffs:
    """Sum of the contributions of two users of one node (one sum while both keep one tensor per side).
    ``consume``: the walk holds ``a``'s coefficients nowhere else, so the sum may be formed in them."""
    own = sides_owned(a, consume)

    def total(x: Tensor, y: Tensor) -> Tensor:
        return x.add_(y) if own and consumable(x, torch.broadcast_shapes(x.shape, y.shape)) else x + y

    lA = total(a.lA, b.lA)
    uA = lA if a.uA is a.lA and b.uA is b.lA else total(a.uA, b.uA)
    return Coeffs(lA, uA, a.lb + b.lb, a.ub + b.ub)


def map_coeffs(c: Coeffs, fn: Callable[[Tensor], Tensor], lbias: Tensor | float = 0.0,
               ubias: Tensor | float = 0.0, same_for_every_sample: bool = False) -> Coeffs:
    """Apply the transposed linear map ``fn`` to both coefficient tensors and add biases.

    While lower and upper coefficients are still one tensor (before the first
    activation) the map runs once.  When ``fn`` treats every sample alike
    (``same_for_every_sample``: a weight or a parameter-free op) and the
    coefficients are one tensor broadcast over the batch (a structured start,
    before the first relaxation), the map runs on a single sample and the result
    is broadcast again — so a start of S rows costs S, not B·S, transposed rows.
    """
    def apply(A: Tensor) -> Tensor:
        if same_for_every_sample and A.shape[0] > 1 and A.stride(0) == 0:
            out = fn(A[:1])
            return out.expand((A.shape[0],) + tuple(out.shape[1:]))
        return fn(A)

    lA = apply(c.lA)
    return Coeffs(lA, lA if c.uA is c.lA else apply(c.uA), c.lb + lbias, c.ub + ubias)


def concretize(c: Coeffs, x_lower: Tensor, x_upper: Tensor) -> Interval:
    """Bounds of the S quantities over the input box: ``A·centre ∓ |A|·radius + bias``."""
    centre = ((x_upper + x_lower) / 2).flatten(1)
    radius = ((x_upper - x_lower) / 2).flatten(1)
    lA, uA = c.lA.flatten(2), c.uA.flatten(2)
    lower = matvec(lA, centre) - matvec(lA.abs(), radius) + c.lb
    upper = matvec(uA, centre) + matvec(uA.abs(), radius) + c.ub
    return Interval(lower, upper)


# -- affine rules --------------------------------------------------------------------

@rule("identity", DOMAIN)
@forwards_state
def identity(c: Coeffs, x, *, in_shapes) -> tuple:
    """Unchanged."""
    return (c,)


@rule("linear", DOMAIN)
@owns_result
def linear(c: Coeffs, x, weight: Tensor, bias: Tensor | None, *, in_shapes) -> tuple:
    """``A·W``; the bias moves into the bias term."""
    lb = 0.0 if bias is None else _dot(c.lA, bias)
    ub = 0.0 if bias is None else _dot(c.uA, bias)
    return (map_coeffs(c, lambda A: A @ weight, lb, ub, same_for_every_sample=True), None, None)


_CONV_INPUT = {nd: transpose.conv_input(nd) for nd in (1, 2, 3)}


@rule("conv", DOMAIN)
@owns_result
def conv(c: Coeffs, x, weight: Tensor, bias: Tensor | None, *, in_shapes, stride, padding, dilation,
         groups) -> tuple:
    """Transposed convolution (autograd's input gradient of the conv); the bias moves into the bias term."""
    in_shape = tuple(in_shapes[0])
    grad_in = _CONV_INPUT[weight.dim() - 2]

    def tr(A: Tensor) -> Tensor:
        B, S = A.shape[:2]
        g = grad_in((B * S,) + in_shape, weight, A.reshape((B * S,) + tuple(A.shape[2:])), stride, padding,
                    dilation, groups)
        return g.reshape((B, S) + in_shape)

    def bias_of(A: Tensor) -> Tensor | float:
        return 0.0 if bias is None else A.flatten(3).sum(-1) @ bias

    return (map_coeffs(c, tr, bias_of(c.lA), bias_of(c.uA), same_for_every_sample=True), None, None)


@rule("conv_transpose", DOMAIN)
def conv_transpose(c: Coeffs, x, weight: Tensor, bias: Tensor | None, *, in_shapes, stride, padding, output_padding,
                   dilation, groups) -> tuple:
    """Transpose of a transposed convolution: the convolution with the same weight; the bias moves into the bias
    term."""
    in_shape = tuple(in_shapes[0])

    def tr(A: Tensor) -> Tensor:
        return transpose.conv_transpose_t(A, in_shape, weight, stride, padding, dilation, groups)

    def bias_of(A: Tensor) -> Tensor | float:
        return 0.0 if bias is None else A.flatten(3).sum(-1) @ bias

    return (map_coeffs(c, tr, bias_of(c.lA), bias_of(c.uA), same_for_every_sample=True), None, None)


@rule("scale_shift", DOMAIN)
@forwards_state
def scale_shift(c: Coeffs, x, scale: Tensor | None, shift: Tensor | None, *, in_shapes) -> tuple:
    """``A * scale`` (summed over broadcast dims); ``A·shift`` into the bias."""
    nd = c.lA.dim() - 1
    s = None if scale is None else _align(scale, nd)
    lb = 0.0 if shift is None else _dot(c.lA, shift)
    ub = 0.0 if shift is None else _dot(c.uA, shift)
    shape = tuple(in_shapes[0])
    return (map_coeffs(c, lambda A: _sum_to(A if s is None else A * s, shape), lb, ub), None, None)


@rule("spec", DOMAIN)
def spec(c: Coeffs, y, C: Tensor, *, in_shapes) -> tuple:
    """``A·C`` (per sample).  Methods start from ``C`` directly; this rule serves other roots."""
    return (map_coeffs(c, lambda A: torch.einsum("bts,bsk->btk", A, C)), None)


@rule("spec_linear", DOMAIN)
def spec_linear(c: Coeffs, x, weight: Tensor, bias: Tensor | None, C: Tensor, *, in_shapes) -> tuple:
    """``A·C·W``; ``A·C·b`` into the bias."""
    lb = 0.0 if bias is None else torch.einsum("bts,bsk,k->bt", c.lA, C, bias)
    ub = 0.0 if bias is None else torch.einsum("bts,bsk,k->bt", c.uA, C, bias)
    return (map_coeffs(c, lambda A: torch.einsum("bts,bsk,ki->bti", A, C, weight), lb, ub), None, None, None)


def _two_inputs(c: Coeffs, x, y, in_shapes, sign: float) -> tuple:
    """Shared by add (sign +1) and sub (sign -1)."""
    xp, yp = not isinstance(x, Tensor), not isinstance(y, Tensor)
    out: list[Coeffs | None] = [None, None]
    bias = c
    if not xp:
        bias = Coeffs(c.lA, c.uA, c.lb + _dot(c.lA, x), c.ub + _dot(c.uA, x))
    if not yp:
        bias = Coeffs(c.lA, c.uA, bias.lb + sign * _dot(c.lA, y), bias.ub + sign * _dot(c.uA, y))
    if xp:
        out[0] = map_coeffs(bias, lambda A: _sum_to(A, tuple(in_shapes[0])))
    if yp:
        src = zero_bias_like(c) if xp else bias
        if sign > 0:
            out[1] = map_coeffs(src, lambda A: _sum_to(A, tuple(in_shapes[1])))
        else:  # -y: lower of -y is -upper of y
            out[1] = Coeffs(-_sum_to(src.lA, tuple(in_shapes[1])), -_sum_to(src.uA, tuple(in_shapes[1])),
                            src.lb, src.ub)
    return tuple(out)


@rule("add", DOMAIN)
def add(c: Coeffs, x, y, *, in_shapes) -> tuple:
    """Both perturbed inputs receive the coefficients (bias to the first); a constant goes to the bias."""
    return _two_inputs(c, x, y, in_shapes, 1.0)


@rule("sub", DOMAIN)
def sub(c: Coeffs, x, y, *, in_shapes) -> tuple:
    """``x - y``: the second input receives ``-A``."""
    return _two_inputs(c, x, y, in_shapes, -1.0)


def _structural(name: str, transpose: Callable[[Tensor, tuple, dict], Tensor]) -> Callable[..., tuple]:
    """Backward rule of a parameter-free linear op from its explicit transpose ``transpose(A, in_shape, attrs)``."""

    def backward(c: Coeffs, x, *, in_shapes, **attrs) -> tuple:
        shape = tuple(in_shapes[0])
        return (map_coeffs(c, lambda A: transpose(A, shape, attrs), same_for_every_sample=True),)

    backward.__name__ = backward.__qualname__ = name
    backward.__doc__ = f"Transpose of ``{name}`` (:mod:`.transpose`)."
    return forwards_state(backward)  # (a view of its state, or a fresh tensor)


for _op, _t in (("reshape", lambda A, in_shape, attrs: transpose.reshape_t(A, in_shape)),
                ("permute", lambda A, in_shape, attrs: transpose.permute_t(A, attrs["dims"])),
                ("avg_pool2d", lambda A, in_shape, attrs: transpose.avg_pool2d_t(A, in_shape, **attrs)),
                ("adaptive_avg_pool2d", lambda A, in_shape, attrs: transpose.adaptive_avg_pool2d_t(A, in_shape)),
                ("gather", lambda A, in_shape, attrs: transpose.gather_t(A, in_shape, **attrs)),
                ("reduce_sum", lambda A, in_shape, attrs: transpose.reduce_sum_t(A, in_shape, **attrs))):
    rule(_op, DOMAIN)(_structural(_op, _t))


@rule("pad", DOMAIN)
def pad(c: Coeffs, x, *, in_shapes, pad: tuple, mode: str, value: float) -> tuple:
    """Transpose of ``F.pad``: crop (constant) or fold the borders back (reflect, replicate, circular);
    a non-zero constant ``value`` moves ``value · (sum of A over the padding)`` into the bias."""

    def tr(A: Tensor) -> Tensor:
        return transpose.pad_t(A, pad, mode)

    out = map_coeffs(c, tr, same_for_every_sample=True)
    if mode == "constant" and value:
        def border(A: Tensor, At: Tensor) -> Tensor:
            return value * (A.flatten(2).sum(-1) - At.flatten(2).sum(-1))

        out = Coeffs(out.lA, out.uA, out.lb + border(c.lA, out.lA), out.ub + border(c.uA, out.uA))
    return (out,)


@rule("concat", DOMAIN)
def concat(c: Coeffs, *xs, in_shapes, dim: int) -> tuple:
    """Split ``A`` along the concat dim; constants contribute to the bias, the bias goes to the first input."""
    d = dim + 1 if dim >= 0 else dim
    sizes = [s[dim - 1] if dim >= 0 else s[dim] for s in in_shapes]
    lparts, uparts = c.lA.split(sizes, d), c.uA.split(sizes, d)
    lb, ub = c.lb, c.ub
    for x, la, ua in zip(xs, lparts, uparts):
        if isinstance(x, Tensor):
            lb, ub = lb + _dot(la, x), ub + _dot(ua, x)
    out: list[Coeffs | None] = []
    first = True
    for x, la, ua in zip(xs, lparts, uparts):
        if not isinstance(x, Tensor):
            out.append(Coeffs(la, ua, lb, ub) if first else Coeffs(la, ua, torch.zeros_like(lb), torch.zeros_like(ub)))
            first = False
        else:
            out.append(None)
    return tuple(out)


# -- non-linear rules ------------------------------------------------------------------

def _split(A: Tensor) -> tuple[Tensor, Tensor]:
    return A.clamp(min=0), A.clamp(max=0)


def _alpha_k(a: Tensor | None, node_ndim: int) -> Tensor | None:
    """``alpha`` with its leading ``k`` axis: ``(k, B, S, *shape)`` (a tensor without it gets ``k = 1``)."""
    if a is None or a.dim() > node_ndim:
        return a
    return a.unsqueeze(0)


def maybe_nonzero(t: Tensor) -> bool:
    """False only where ``t`` is known to be all zeros (checked on CPU tensors outside tracing; elsewhere a
    check would cost a device sync or bake a constant into a traced graph, so every tensor counts)."""
    return t.device.type != "cpu" or torch.jit.is_tracing() or bool(t.any())


def nonzero_or_none(t: Tensor) -> Tensor | None:
    """``t``, or ``None`` where it is known to be all zeros (:func:`maybe_nonzero`)."""
    return t if maybe_nonzero(t) else None


def _cut(t: Tensor | None, block: slice) -> Tensor | None:
    """Rows ``block`` of a (B or 1, S or 1, ...) operand (one broadcast over the rows is kept whole)."""
    return t if t is None or t.shape[1] == 1 else t[:, block]


def through_lines_blocked(A: Tensor, slope_pos: Tensor, bias_pos: Tensor | None, slope_neg: Tensor,
                          bias_neg: Tensor | None, in_place: bool = False) -> tuple[Tensor, Tensor]:
    """:func:`through_lines` by :func:`row_blocks` into one output buffer (the same values); ``in_place``:
    that buffer is ``A``'s own (see :func:`consumable`)."""
    if not blocks_allowed():
        return through_lines(A, slope_pos, bias_pos, slope_neg, bias_neg, in_place=in_place)
    shape = torch.broadcast_shapes(A.shape, slope_pos.shape, slope_neg.shape)
    blocks = row_blocks(A.shape[1], math.prod(shape) // max(1, A.shape[1]))
    if blocks is None or shape[1] != A.shape[1]:
        return through_lines(A, slope_pos, bias_pos, slope_neg, bias_neg, in_place=in_place)
    out, bias = (A if in_place else A.new_empty(shape)), A.new_empty(shape[:2])
    for s in blocks:
        bias[:, s] = through_lines(A[:, s], _cut(slope_pos, s), _cut(bias_pos, s), _cut(slope_neg, s),
                                   _cut(bias_neg, s), out=None if in_place else out[:, s], in_place=in_place)[1]
    return out, bias


def sides_owned(state, consume: bool) -> bool:
    """Whether a rule told ``consume`` may overwrite ``state``'s coefficients (Coeffs or Patches): not while
    its lower and upper sides are one tensor, which is read twice."""
    return consume and state.uA is not state.lA


def consumable(A: Tensor, shape: tuple[int, ...] | torch.Size) -> bool:
    """Whether a rule told it may consume its coefficient state (``consume=True``: the generated walk holds
    ``A`` nowhere else, :mod:`boundc.passes.graph.consume`) can form its result in ``A``'s own buffer: no
    gradient is recorded, and ``A`` is a dense buffer of the result's ``shape``."""
    return (not torch.is_grad_enabled() and not A.requires_grad and A.is_contiguous()
            and tuple(A.shape) == tuple(shape))


def through_lines(A: Tensor, slope_pos: Tensor, bias_pos: Tensor | None, slope_neg: Tensor,
                  bias_neg: Tensor | None, out: Tensor | None = None, in_place: bool = False) -> tuple[Tensor, Tensor]:
    """Coefficients through one line per sign: ``A⁺·slope_pos + A⁻·slope_neg`` and the bias
    ``Σ A⁺·bias_pos + A⁻·bias_neg`` (B, S).  ``A`` is (B or 1, S, ...), the lines broadcast against it;
    a bias of ``None`` is zero (a ReLU's lower line, a stable layer) and skips its product.

    Positive entries take exactly ``slope_pos`` (the other product is an exact zero), and no
    where-masks are materialised: the pass costs a few sweeps over ``A``.  When no gradient is
    recorded the products are formed in place in the buffer of ``A⁺`` (fewer and smaller
    allocations: on CPU each fresh buffer of this size is page-faulted in anew).  ``out`` (no gradient
    recorded only): the buffer (of the broadcast shape) to form the coefficients in instead of a fresh one;
    ``in_place``: that buffer is ``A`` itself (its caller owns ``A`` and has checked :func:`consumable`).
    """
    if in_place:
        N = A.clamp(max=0)  # (before A's buffer becomes A⁺)
        P = A.clamp_(min=0)
    else:
        P = A.clamp(min=0) if out is None else torch.clamp(A.expand_as(out), min=0, out=out)
        N = A - P
    terms = [rowdot(M, b) for M, b in ((P, bias_pos), (N, bias_neg)) if b is not None]
    bias = sum(terms[1:], terms[0]) if terms else A.new_zeros(max(A.shape[0], slope_pos.shape[0]), A.shape[1])
    recorded = torch.is_grad_enabled() and any(t.requires_grad for t in (A, slope_pos, slope_neg))
    if not in_place and out is None and (
            recorded or torch.broadcast_shapes(P.shape, slope_pos.shape, slope_neg.shape) != P.shape):
        return torch.addcmul(P * slope_pos, N, slope_neg), bias
    return P.mul_(slope_pos).addcmul_(N, slope_neg), bias


def relax_backward(c: Coeffs, x: Interval, *, op: str, mode: str = Mode.CROWN, alpha: tuple | None = None,
                   consume: bool = False, **attrs) -> Coeffs:
    """Back through an activation: positive lower coefficients take the lower line, negative the upper line.

    ``alpha = (for the lower pass, for the upper pass)``, each ``(k, B, S, *shape)`` or ``None``
    (see :class:`~.relaxation.AlphaSpec`); without it the lines are ``mode``'s default.  ``consume``: the
    walk holds ``c``'s coefficients nowhere else, so they may be overwritten (where :func:`consumable`).
    """
    lines = opdef(op).relaxation.lines
    l, u = x.lower.unsqueeze(1), x.upper.unsqueeze(1)
    nd = c.lA.dim()
    low = lines(l, u, mode, None if alpha is None else _alpha_k(alpha[0], nd), **attrs)
    lower_only = c.uA.shape[1] == 0
    own = sides_owned(c, consume)

    def in_place(A: Tensor, line) -> bool:
        return own and consumable(A, torch.broadcast_shapes(A.shape, line.lw.shape, line.uw.shape))

    lA, lb = through_lines_blocked(c.lA, low.lw, nonzero_or_none(low.lb), low.uw, nonzero_or_none(low.ub),
                                   in_place=in_place(c.lA, low))
    if lower_only:  # no upper rows (lower bounds only): no upper lines, only the output's shapes
        uA, ub = through_lines(c.uA, l, None, l, None)
    else:
        up = low if alpha is None else lines(l, u, mode, _alpha_k(alpha[1], nd), **attrs)
        uA, ub = through_lines_blocked(c.uA, up.uw, nonzero_or_none(up.ub), up.lw, nonzero_or_none(up.lb),
                                       in_place=in_place(c.uA, up))
    lb, ub = c.lb + lb, c.ub + ub
    return Coeffs(lA, uA, lb, ub)


def _activation(op: str) -> Callable[..., tuple]:
    def backward(c: Coeffs, x: Interval, *, in_shapes, mode: str = Mode.CROWN, alpha: tuple | None = None,
                 consume: bool = False, **attrs) -> tuple:
        return (relax_backward(c, x, op=op, mode=mode, alpha=alpha, consume=consume, **attrs),)

    backward.__name__ = backward.__qualname__ = f"{op}_backward"
    backward.__doc__ = f"Back through ``{op}`` with its relaxation lines from the pre-activation bounds."
    return owns_result(consumes_state(backward))


@deriver(DOMAIN)
def derive(d: OpDef) -> Callable[..., tuple] | None:
    """The backward rule of an elementwise activation: its relaxation's lines (``None`` for other ops)."""
    return _activation(d.name) if d.relaxation is not None and d.elementwise else None


@rule("max_pool2d", DOMAIN)
def max_pool2d(c: Coeffs, x: Interval, *, in_shapes, kernel_size, stride, padding, dilation, ceil_mode) -> tuple:
    """Max pooling: lower line = the window entry with the largest lower bound, upper line = the window's
    largest upper bound (a constant)."""
    kw = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    _, idx = F.max_pool2d(x.lower, return_indices=True, **kw)
    top = F.max_pool2d(x.upper, **kw)
    in_shape = tuple(in_shapes[0])
    def select_t(A: Tensor) -> Tensor:  # transpose of x -> x.flatten(2).gather(idx); rows as A has them
        B, S = A.shape[:2]
        index = idx.flatten(2).unsqueeze(1).expand(B, S, idx.shape[1], idx[0, 0].numel())
        out = torch.zeros((B, S, in_shape[0], in_shape[1] * in_shape[2]), dtype=A.dtype, device=A.device)
        return out.scatter_add(3, index, A.flatten(3)).reshape((B, S) + in_shape)

    lp, ln = _split(c.lA)
    up_, un = _split(c.uA)
    lA, uA = select_t(lp), select_t(un)
    lb = c.lb + _dot(ln, top)
    ub = c.ub + _dot(up_, top)
    return (Coeffs(lA, uA, lb, ub),)


__all__ = ["Coeffs", "add_coeffs", "concretize", "map_coeffs", "maybe_nonzero", "nonzero_or_none", "relax_backward",
           "through_lines", "through_lines_blocked", "zero_bias_like"]
