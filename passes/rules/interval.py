"""Interval bound propagation (IBP): rules in domain ``"interval"``.

An :class:`Interval` holds elementwise ``lower <= x <= upper``.  Affine ops use
centre/radius form (``W·c + b``, ``|W|·r``); the rules of monotone ops (map the
end points) and of non-monotone activations (their relaxation's exact interval)
are derived from the op table (:func:`derive`); the rest are explicit here.
Inputs that are not perturbed arrive as plain tensors.
"""

from __future__ import annotations

import torch
from boundc.kernels.dispatch import interval_conv, interval_linear
from torch import Tensor

from . import concrete
from .linalg import matvec
from .registry import deriver, rule
from .values import Interval, as_interval, centre_radius, from_centre_radius

DOMAIN = "interval"


def _map(fn, x: Interval, **kw) -> Interval:
    """Apply a monotone non-decreasing ``fn`` to both end points."""
    return Interval(fn(x.lower, **kw), fn(x.upper, **kw))


@rule("input", DOMAIN)
def input_box(lower: Tensor, upper: Tensor) -> Interval:
    """The input box."""
    return Interval(lower, upper)


# -- affine ops -----------------------------------------------------------------

@rule("linear", DOMAIN)
def linear(x: Interval, weight: Tensor, bias: Tensor | None, *, relu_input: bool = False,
           backend: str = "auto") -> Interval:
    """``W·c + b ± |W|·r`` (after a fused ReLU when ``relu_input``); ``backend`` picks Triton or torch."""
    return interval_linear(x, weight, bias, relu_input=relu_input, backend=backend)


@rule("conv", DOMAIN)
def conv(x: Interval, weight: Tensor, bias: Tensor | None, *, stride: tuple, padding: tuple,
         dilation: tuple, groups: int, relu_input: bool = False, backend: str = "auto") -> Interval:
    """Convolution in centre/radius form (after a fused ReLU when ``relu_input``); see ``kernels.dispatch``."""
    return interval_conv(x, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups,
                         relu_input=relu_input, backend=backend)


@rule("conv_transpose", DOMAIN)
def conv_transpose(x: Interval, weight: Tensor, bias: Tensor | None, **kw) -> Interval:
    """Transposed convolution in centre/radius form: ``convT(c, W) + b ± convT(r, |W|)``."""
    c, r = centre_radius(x)
    return from_centre_radius(concrete.conv_transpose(c, weight, bias, **kw),
                              concrete.conv_transpose(r, weight.abs(), None, **kw))


@rule("scale_shift", DOMAIN)
def scale_shift(x: Interval, scale: Tensor | None, shift: Tensor | None) -> Interval:
    """``x * s + t`` elementwise: exact for a box."""
    if scale is None:
        return Interval(x.lower + shift, x.upper + shift) if shift is not None else x
    c, r = centre_radius(x)
    return from_centre_radius(concrete.scale_shift(c, scale, shift), r * scale.abs())


@rule("add", DOMAIN)
def add(x: Interval | Tensor, y: Interval | Tensor) -> Interval:
    """Sum of two values (either may be constant)."""
    x, y = as_interval(x), as_interval(y)
    return Interval(x.lower + y.lower, x.upper + y.upper)


@rule("sub", DOMAIN)
def sub(x: Interval | Tensor, y: Interval | Tensor) -> Interval:
    """Difference of two values (either may be constant)."""
    x, y = as_interval(x), as_interval(y)
    return Interval(x.lower - y.upper, x.upper - y.lower)


@rule("mul", DOMAIN)
def mul(x: Interval | Tensor, y: Interval | Tensor) -> Interval:
    """Product: the extremes of the four end-point products."""
    x, y = as_interval(x), as_interval(y)
    p = torch.stack(torch.broadcast_tensors(x.lower * y.lower, x.lower * y.upper,
                                            x.upper * y.lower, x.upper * y.upper))
    return Interval(p.amin(0), p.amax(0))


@rule("spec", DOMAIN)
def spec(y: Interval, C: Tensor) -> Interval:
    """``C @ y`` for a batched spec ``C`` (B, S, K)."""
    c, r = centre_radius(y)
    return from_centre_radius(matvec(C, c), matvec(C.abs(), r))


@rule("spec_linear", DOMAIN)
def spec_linear(x: Interval, weight: Tensor, bias: Tensor | None, C: Tensor) -> Interval:
    """The last linear layer folded into the spec: ``W' = C·W``, ``b' = C·b``."""
    w = torch.einsum("bsk,ki->bsi", C, weight)
    c, r = centre_radius(x)
    centre = matvec(w, c)
    if bias is not None:
        centre = centre + C @ bias
    return from_centre_radius(centre, matvec(w.abs(), r))


# -- structural ops --------------------------------------------------------------

@rule("concat", DOMAIN)
def concat(*xs: Interval | Tensor, dim: int) -> Interval:
    """Concatenate end points (constants become degenerate intervals)."""
    ivs = [as_interval(x) for x in xs]
    return Interval(torch.cat([i.lower for i in ivs], dim), torch.cat([i.upper for i in ivs], dim))


@deriver(DOMAIN)
def derive(d):
    """The interval rule of an op from its :class:`~.ops.OpDef`: the relaxation's exact interval, else
    ``f(lower), f(upper)`` for a monotone op; ``None`` otherwise."""
    r = d.relaxation
    if r is not None and r.interval is not None:
        image = r.interval

        def fn(x: Interval, **attrs) -> Interval:
            return Interval(*image(x.lower, x.upper, **attrs))

        how = "its exact image (the relaxation's interval)"
    elif d.monotone and d.eval is not None:
        f = d.eval

        def fn(x: Interval, **attrs) -> Interval:
            return _map(f, x, **attrs)

        how = "monotone: both end points mapped"
    else:
        return None
    fn.__name__ = fn.__qualname__ = d.name
    fn.__doc__ = f"``{d.name}``: {how}."
    return fn
