"""The op table: one :class:`OpDef` per IR op, the single source of truth about what an op *is*.

An entry holds the op's concrete semantics (``eval``), its attribute names, its
traits and, for activations, its :class:`~.relaxation.Relaxation`.  Everything
downstream reads the traits instead of keeping lists of op names: the interval,
backward and forward domains derive their rules from them
(:func:`~.registry.get_rule`; explicit per-domain rules exist only where they
pay: linear, conv, spec, pooling, the binary ops), planning reads
``needs_bounds`` / ``mixing`` / ``structural``, fusion ``relu_prologue``, the
canonicaliser ``channel_dim``, the MILP encoder ``affine``, α-CROWN the
relaxation's :class:`~.relaxation.AlphaSpec`.

Adding an elementwise activation is one :func:`defop` call with a relaxation
(plus its frontend lowerings); it then has IBP, CROWN, Fast-Lin, forward and
α-CROWN bounds, and ``tests/test_ops_table.py`` tests it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from boundc.errors import BoundcError

from . import concrete as C
from . import relaxation as R
from .registry import forget
from .relaxation import AlphaSpec, Relaxation

__all__ = ["OPS", "AlphaSpec", "OpDef", "Relaxation", "defop", "has", "opdef"]


@dataclass(frozen=True)
class OpDef:
    """What one IR op is.

    Traits (all ``False`` unless set):

    * ``affine``: affine in its perturbed input(s) when every other input is constant;
    * ``bilinear``: a product: affine only while at most one factor is perturbed;
    * ``elementwise``: output entry ``i`` depends on input entry ``i`` only;
    * ``monotone``: non-decreasing in its (single) perturbed input: IBP maps the end points;
    * ``mixing``: mixes entries linearly (linear / conv / average pooling): IBP is exact for one of them;
    * ``structural``: moves entries or is elementwise affine: keeps an exact box exact;
    * ``piecewise_linear``: exactly encodable in a MILP with binaries at the kinks;
    * ``needs_bounds``: its linear-relaxation rules need the concrete bounds of its input;
    * ``source``: its value never depends on the perturbed input (``param``, ``clean_input``, ``spec_matrix``);
    * ``batch_reduction``: reduces over the batch (the result has no batch dimension);
    * ``reads_spec``: takes the specification matrix as an input;
    * ``relu_prologue``: the interval kernel can apply a preceding ReLU (fusion);
    * ``channel_dim``: output-channel dimension of a weight/bias op (a per-channel affine folds into it).

    ``check(attrs)`` returns a problem (a string) for attribute values the rules do not support;
    ``examples``: attribute values the tests generated from the table use.
    """

    name: str
    doc: str
    eval: Callable[..., Any] | None = None
    attrs: tuple[str, ...] = ()
    affine: bool = False
    bilinear: bool = False
    elementwise: bool = False
    monotone: bool = False
    mixing: bool = False
    structural: bool = False
    piecewise_linear: bool = False
    needs_bounds: bool = False
    source: bool = False
    batch_reduction: bool = False
    reads_spec: bool = False
    relu_prologue: bool = False
    channel_dim: int | None = None
    relaxation: Relaxation | None = None
    check: Callable[[dict], str | None] | None = None
    examples: tuple[dict, ...] = ({},)


#: Every IR op by name.
OPS: dict[str, OpDef] = {}


def defop(name: str, doc: str, eval: Callable[..., Any] | None = None, attrs: tuple[str, ...] = (),
          **traits: Any) -> OpDef:
    """Define (register) the IR op ``name``; see :class:`OpDef` for the traits."""
    if name in OPS:
        raise ValueError(f"IR op {name!r} defined twice")
    d = OpDef(name, doc, eval, tuple(attrs), **traits)
    if d.relaxation is not None and not d.needs_bounds:
        raise ValueError(f"IR op {name!r}: a relaxation needs the input bounds (needs_bounds=True)")
    OPS[name] = d
    forget(name)
    return d


def opdef(name: str) -> OpDef:
    """The definition of IR op ``name``; a :class:`~boundc.errors.BoundcError` naming it if there is none."""
    try:
        return OPS[name]
    except KeyError:
        raise BoundcError(f"unknown IR op {name!r} (not in the op table boundc.passes.rules.ops.OPS)") from None


def has(name: str, trait: str) -> bool:
    """Whether op ``name`` has ``trait`` (``False`` for ops not in the table)."""
    d = OPS.get(name)
    return bool(d is not None and getattr(d, trait))


# -- sources -------------------------------------------------------------------------------
defop("input", "the perturbed network input (one per graph)")
defop("clean_input", "the unperturbed input the box was built around (batch statistics)", source=True)
defop("param", "a live tensor of the source model or a constant", attrs=("target",), source=True)
defop("spec_matrix", "the specification matrix C (B, S, K), a run-time input", source=True)

# -- affine ops ------------------------------------------------------------------------------
defop("identity", "(x)", C.identity, affine=True, elementwise=True, monotone=True, structural=True)
defop("linear", "(x, weight, bias?) -> x @ weight.T + bias", C.linear, affine=True, mixing=True,
      relu_prologue=True, channel_dim=-1)
defop("conv", "(x, weight, bias?) N-d convolution", C.conv, ("stride", "padding", "dilation", "groups"),
      affine=True, mixing=True, relu_prologue=True, channel_dim=1)
defop("scale_shift", "(x, scale?, shift?) -> x * scale + shift, constants broadcast", C.scale_shift,
      affine=True, elementwise=True, structural=True)
defop("add", "(x, y) elementwise sum of two values", C.add, affine=True, elementwise=True)
defop("sub", "(x, y) elementwise difference of two values", C.sub, affine=True, elementwise=True)
defop("mul", "(x, y) elementwise product (affine when one factor is constant)", C.mul, affine=True,
      bilinear=True, elementwise=True)
defop("reshape", "(x) attrs shape (batch dimension written as -1)", C.reshape, ("shape",), affine=True,
      monotone=True, structural=True)
defop("permute", "(x) attrs dims", C.permute, ("dims",), affine=True, monotone=True, structural=True)
defop("pad", "(x) attrs pad, mode, value", C.pad, ("pad", "mode", "value"), affine=True, monotone=True,
      structural=True)
defop("concat", "(x0, x1, ...) attrs dim", C.concat, ("dim",), affine=True, monotone=True)
defop("avg_pool2d", "(x) 2-d average pooling", C.avg_pool2d,
      ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
      affine=True, monotone=True, mixing=True)
defop("adaptive_avg_pool2d", "(x) 2-d adaptive average pooling", C.adaptive_avg_pool2d, ("output_size",),
      affine=True, monotone=True, mixing=True)
defop("spec", "(y, C) -> C @ y for a batched spec matrix C (B, S, K)", C.spec, affine=True, reads_spec=True)
defop("spec_linear", "(x, weight, bias?, C) -> C @ (x @ weight.T + bias): the elided last layer",
      C.spec_linear, affine=True, reads_spec=True)

# -- piecewise-linear non-linear ops ---------------------------------------------------------
defop("relu", "(x) max(x, 0)", C.relu, elementwise=True, monotone=True, piecewise_linear=True,
      needs_bounds=True, relaxation=Relaxation(R.relu_lines, AlphaSpec(1, R.relu_alpha_init, R.slope_projection(0.0, 1.0)),
                                               kinks=lambda: (0.0,)))
defop("leaky_relu", "(x) attrs negative_slope (>= 0)", C.leaky_relu, ("negative_slope",), elementwise=True,
      monotone=True, piecewise_linear=True, needs_bounds=True,
      relaxation=Relaxation(R.leaky_relu_lines, AlphaSpec(1, R.leaky_relu_alpha_init, R.leaky_relu_project),
                            kinks=lambda negative_slope: (0.0,)),
      check=lambda a: ("leaky_relu with a negative slope is not monotone" if a["negative_slope"] < 0 else None),
      examples=({"negative_slope": 0.1}, {"negative_slope": 2.0}))
defop("hardtanh", "(x) attrs min_val, max_val (clamp)", C.hardtanh, ("min_val", "max_val"), elementwise=True,
      monotone=True, piecewise_linear=True, needs_bounds=True,
      relaxation=Relaxation(R.hardtanh_lines,
                            AlphaSpec(1, R.hardtanh_alpha_init, R.slope_projection(0.0, 1.0)),
                            kinks=lambda min_val, max_val: (float(min_val), float(max_val))),
      examples=({"min_val": -1.0, "max_val": 2.0}, {"min_val": 0.0, "max_val": float("inf")}))
defop("abs", "(x) |x|", C.abs_, elementwise=True, piecewise_linear=True, needs_bounds=True,
      relaxation=Relaxation(R.abs_lines, AlphaSpec(1, R.abs_alpha_init, R.slope_projection(-1.0, 1.0)),
                            R.abs_interval, kinks=lambda: (0.0,)))
defop("max_pool2d", "(x) 2-d max pooling", C.max_pool2d,
      ("kernel_size", "stride", "padding", "dilation", "ceil_mode"), monotone=True, piecewise_linear=True,
      needs_bounds=True)

# -- smooth activations: tangent / secant lines (CROWN), tangent points optimised by alpha-CROWN ---------
defop("sigmoid", "(x) logistic sigmoid", C.sigmoid, elementwise=True, monotone=True, needs_bounds=True,
      relaxation=R.smooth_relaxation(lambda: R.SIGMOID))
defop("tanh", "(x) hyperbolic tangent", C.tanh, elementwise=True, monotone=True, needs_bounds=True,
      relaxation=R.smooth_relaxation(lambda: R.TANH))
defop("erf", "(x) the error function", C.erf, elementwise=True, monotone=True, needs_bounds=True,
      relaxation=R.smooth_relaxation(lambda: R.ERF))
defop("softsign", "(x) x / (1 + |x|)", C.softsign, elementwise=True, monotone=True, needs_bounds=True,
      relaxation=R.smooth_relaxation(lambda: R.SOFTSIGN))
defop("softplus", "(x) log(1 + exp(beta x)) / beta, attrs beta, threshold", C.softplus, ("beta", "threshold"),
      elementwise=True, monotone=True, needs_bounds=True, relaxation=R.smooth_relaxation(R.softplus_fn),
      examples=({"beta": 1.0, "threshold": 20.0}, {"beta": 3.0, "threshold": 5.0}))
defop("gelu", "(x) x * Phi(x); attrs approximate ('none': erf, 'tanh': the tanh formula)", C.gelu,
      ("approximate",), elementwise=True, needs_bounds=True,
      relaxation=R.smooth_relaxation(lambda approximate: R.GELU[approximate], C.gelu),
      check=lambda a: (None if a["approximate"] in R.GELU else f"gelu approximate={a['approximate']!r}"),
      examples=({"approximate": "none"}, {"approximate": "tanh"}))
defop("silu", "(x) x * sigmoid(x) (swish)", C.silu, elementwise=True, needs_bounds=True,
      relaxation=R.smooth_relaxation(lambda: R.SILU, C.silu))

# -- normalisation (lowered to scale_shift by canonicalisation) --------------------------------
defop("batch_norm", "(x, weight?, bias?, running_mean?, running_var?) attrs training, eps", C.batch_norm,
      ("training", "eps"))
defop("batch_mean", "(x) per-channel mean over all but dim 1, shape (C,)", C.batch_mean, batch_reduction=True)
defop("batch_var", "(x) per-channel biased variance over all but dim 1, shape (C,)", C.batch_var,
      batch_reduction=True)

# -- constant helpers built by canonicalisation and the frontends (never perturbed) -----------------
defop("bn_scale", "(weight?, var) per-channel BN scale weight / sqrt(var + eps)", C.bn_scale, ("eps",))
defop("bn_shift", "(bias?, mean, scale) per-channel BN shift bias - mean * scale", C.bn_shift)
defop("fold_weight", "(weight, scale) a weight scaled per output channel", C.fold_weight)
defop("fold_bias", "(bias?, scale?, shift?) bias after a per-output-channel affine", C.fold_bias,
      ("out_channels",))
defop("matmul_weights", "(w2, w1) weight of two chained linear layers", C.matmul_weights)
defop("chain_bias", "(w2, b1?, b2?) bias of two chained linear layers", C.chain_bias)
defop("compose_scale", "(s1?, s2?) scale of two chained scale_shifts", C.compose_scale)
defop("compose_shift", "(t1?, s2?, t2?) shift of two chained scale_shifts", C.compose_shift)
defop("neg", "(x) -x", C.neg)
defop("reciprocal", "(x) 1 / x (of a constant: division by an input-dependent value is not supported)",
      C.reciprocal, check=lambda a: "division by an input-dependent value")

# -- ops added for VNN-COMP coverage -----------------------------------------------------------
defop("gather", "(x) entries attrs index (constant, non-negative) along attrs dim: slices, splits, gathers",
      C.gather, ("dim", "index"), affine=True, monotone=True, structural=True)
defop("reduce_sum", "(x) scale * sum over attrs dims (keepdim); scale >= 0 (1/n: a mean)", C.reduce_sum,
      ("dims", "keepdim", "scale"), affine=True, monotone=True, mixing=True,
      check=lambda a: ("reduce_sum with a negative scale" if a["scale"] < 0 else None))
defop("conv_transpose", "(x, weight, bias?) N-d transposed convolution", C.conv_transpose,
      ("stride", "padding", "output_padding", "dilation", "groups"), affine=True, mixing=True)
defop("exp", "(x) e^x", C.exp, elementwise=True, monotone=True, needs_bounds=True,
      relaxation=R.smooth_relaxation(lambda: R.EXP))
defop("reciprocal_pos", "(x) 1 / max(x, floor): the reciprocal of a value known to be >= floor > 0 "
      "(the sum of exponentials of a softmax)", C.reciprocal_pos, ("floor",), elementwise=True, needs_bounds=True,
      relaxation=Relaxation(R.reciprocal_lines, AlphaSpec(2, R.reciprocal_alpha_init, R.tangent_projection,
                                                          lr_scale=0.02), R.reciprocal_interval),
      check=lambda a: (None if a["floor"] > 0 else "reciprocal_pos needs a positive floor"),
      examples=({"floor": 1.0},))
defop("power", "(x) x ** exponent: an integer >= 2, or 0.5 (sqrt of a non-negative value)", C.power,
      ("exponent",), elementwise=True, needs_bounds=True,
      relaxation=Relaxation(R.power_lines, AlphaSpec(2, R.power_alpha_init, R.tangent_projection, lr_scale=0.02),
                            R.power_interval),
      check=R.power_check, examples=({"exponent": 2}, {"exponent": 3}, {"exponent": 0.5}))
defop("sign", "(x) -1, 0 or 1 (a step)", C.sign, elementwise=True, monotone=True, needs_bounds=True,
      relaxation=R.step_relaxation(C.sign))
defop("floor", "(x) round down (a staircase)", C.floor, elementwise=True, monotone=True, needs_bounds=True,
      relaxation=R.step_relaxation(C.floor))
defop("ceil", "(x) round up (a staircase)", C.ceil, elementwise=True, monotone=True, needs_bounds=True,
      relaxation=R.step_relaxation(C.ceil))
defop("sin", "(x) sine", C.sin, elementwise=True, needs_bounds=True, relaxation=R.periodic_relaxation(0.0))
defop("cos", "(x) cosine", C.cos, elementwise=True, needs_bounds=True,
      relaxation=R.periodic_relaxation(math.pi / 2))
