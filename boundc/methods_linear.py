"""The linear-relaxation bound methods: crown, fast-lin, crown-ibp, alpha-crown, forward.

Each is a :func:`boundc.codegen.method` that emits, through the same
:class:`~boundc.codegen.Emitter`, the calls of the per-op rules of
:mod:`boundc.passes.rules.backward` (or :mod:`boundc.passes.rules.forward_linear`) in
reverse topological order, so the generated ``.code`` shows the backward walk
(``A_linear = linear(A_relu, ...)``).  Intermediate bounds (only for inputs of
non-linear ops, see :mod:`boundc.passes.graph.planning`) come from IBP (crown-ibp) or
from chunked backward passes, each a generated sub-module ``walk_<node>``
(its own readable ``.code``) run by :func:`~boundc.passes.rules.engine.backward_bounds`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch.fx as fx
from torch import Tensor

from boundc.codegen import Emitter, _ident, emit_interval_node, method
from boundc.interpreter import Emitting, ReverseWalk
from boundc.ir import Graph, Node
from boundc.options import CompileOptions
from boundc.passes.graph.planning import ancestors, plan_bounds
from boundc.passes.rules import backward as bw
from boundc.passes.rules import engine, patches
from boundc.passes.rules import forward_linear as fw  # noqa: F401
from boundc.passes.rules.engine import relaxation_kinks
from boundc.passes.rules.ops import OPS
from boundc.passes.rules.registry import forwards_state, get_rule

DOMAIN = "backward"


def _shape(g: Graph, name: str | None) -> tuple[int, ...] | None:
    return None if name is None else tuple(g[name].shape[1:])


@dataclass(frozen=True)
class WalkForm:
    """The form a backward pass's coefficients take: the rule domain and its two structural helpers."""

    domain: str
    concretize: Callable
    add: Callable


DENSE = WalkForm("backward", bw.concretize, bw.add_coeffs)
PATCHES = WalkForm("patches", patches.concretize, patches.add_patches)


@forwards_state
def add_split_terms(res: tuple, beta: Tensor | None) -> tuple:
    """Add the Lagrangian terms of split constraints (β-CROWN) to the lower coefficients of an
    activation's input: ``beta`` (B, S, *shape) is ``β·σ`` with ``β >= 0`` and ``σ = -1`` on a neuron
    split active (``z >= 0``), ``+1`` split inactive (``z <= 0``), 0 elsewhere, so the added term
    ``β·σ·z`` is ``<= 0`` on the sub-domain and the lower bound stays sound for every ``β >= 0``."""
    if beta is None:
        return res
    c = res[0]
    return (bw.Coeffs(c.lA + beta, c.uA, c.lb, c.ub), *res[1:])


def emit_walk(em: Emitter, root: str, start: fx.Node, bounds: dict[str, fx.Node], mode: str,
              alphas: dict[str, fx.Node] | None = None, form: WalkForm = DENSE,
              betas: dict[str, fx.Node] | None = None, taps: dict[str, fx.Node | None] | None = None) -> fx.Node:
    """Emit one backward pass from ``root`` (state ``start``) to the input; returns its concretised Interval.

    The pass is a :class:`~boundc.interpreter.ReverseWalk` recorded through :class:`~boundc.interpreter.Emitting`;
    what is specific to the linear methods are its hooks below.  Contributions of several users of a node are
    summed (``form.add``).  ``betas`` (activation node -> fx value) adds split-constraint terms
    (:func:`add_split_terms`) at those activations' inputs; ``taps`` (node -> filled in here) records the lower
    coefficients of the state at those nodes.
    """
    def relaxation(n: Node) -> dict:  # how an op with a relaxation is relaxed: the method's mode, its α
        if OPS[n.op].relaxation is None:
            return {}
        return {"mode": mode, **({"alpha": alphas[n.name]} if alphas is not None and n.name in alphas else {})}

    def split(n: Node, res: fx.Node) -> fx.Node:
        if betas is None or n.name not in betas:
            return res
        return em.call(add_split_terms, (res, betas[n.name]), name=f"A_{n.name}_split")

    def tap(n: Node, state: fx.Node) -> None:
        if taps is not None and n.name in taps:
            taps[n.name] = em.attr(state, "lA")

    def bound(n: Node, state: fx.Node) -> fx.Node:
        return em.call(form.concretize, (state, em.inputs["x_lower"], em.inputs["x_upper"]), name="bound")

    walk = ReverseWalk(Emitting(em, form.domain), form.add, bound, bounds=bounds, extra_kwargs=relaxation, after=split,
                       visit=tap)
    return walk.run(root, start)


def patches_walk_ok(g: Graph, root: str) -> bool:
    """Whether a backward pass from ``root`` can run in patches form: feature maps all the way to the input,
    and every op on the way has a patches rule (or is an activation) that covers its attributes."""
    for name in ancestors(g, root):
        n = g[name]
        if len(n.shape) != 4:
            return False
        if n.op == "input":
            continue
        rule = get_rule(n.op, PATCHES.domain)
        if rule is None or not getattr(rule, "covers", lambda g, n: True)(g, n):
            return False
    return True


def _walk_bounds_needed(g: Graph, root: str) -> list[str]:
    """Intermediate bounds a backward pass from ``root`` reads (inputs of its non-linear ops)."""
    need = []
    for name in ancestors(g, root):
        n = g[name]
        if OPS[n.op].needs_bounds:
            need.extend(i for i in n.inputs if i is not None and g[i].perturbed and i not in need)
    return need


def build_walk(g: Graph, root: str, mode: str, with_alpha: bool = False, form: WalkForm = DENSE,
               splits: tuple[str, ...] = (), taps: tuple[str, ...] = (), owned_start: bool = False
               ) -> tuple[fx.GraphModule, tuple[str, ...], dict[str, str], dict[str, str]]:
    """A generated module running one backward pass from ``root``.

    Returns the module, its placeholder names in order, the placeholder of each
    bound it reads (placeholder -> IR node) and of each relaxation's α or split
    multipliers (placeholder -> the activation node).  ``splits``: activations that
    take a ``beta_<node>`` placeholder (:func:`add_split_terms`, for branch and bound);
    ``taps``: nodes whose lower coefficients the module also returns, in this order,
    after ``lower`` and ``upper``; ``owned_start``: the ``start`` placeholder takes the start rows handed
    over in a one-element list (:func:`~boundc.passes.rules.engine.take_start`), so the walk may overwrite them.
    """
    sub = Emitter(g)
    start = sub.fx.placeholder("start", default_value=None)
    if owned_start:
        start = sub.call(engine.take_start, (start,), name="start_rows")
    bph, bmap = {}, {}
    for name in _walk_bounds_needed(g, root):
        p = sub.fx.placeholder("b_" + _ident(name), default_value=None)
        bph[name], bmap[p.target] = p, name
    aph, amap = {}, {}
    if with_alpha:
        for name in ancestors(g, root):
            relaxation = OPS[g[name].op].relaxation
            if relaxation is not None and relaxation.alpha is not None:
                p = sub.fx.placeholder("alpha_" + _ident(name), default_value=None)
                aph[name], amap[p.target] = p, name
    betas = {}
    for name in splits:
        p = sub.fx.placeholder("beta_" + _ident(name), default_value=None)
        betas[name], amap[p.target] = p, name
    tapped: dict[str, fx.Node | None] = dict.fromkeys(taps)
    res = emit_walk(sub, root, start, bph, "crown" if with_alpha else mode, aph if with_alpha else None, form,
                    betas=betas or None, taps=tapped if taps else None)
    gm = sub.finish(sub.attr(res, "lower"), sub.attr(res, "upper"), *(tapped[t] for t in taps))
    gm.__class__.__name__ = "BackwardWalk"
    names = tuple(n.target for n in gm.graph.nodes if n.op == "placeholder")
    return gm, names, {k: v for k, v in bmap.items() if k in names}, {k: v for k, v in amap.items() if k in names}


def _walk_args(em: Emitter, names: tuple[str, ...], bmap: dict[str, str], bounds: dict[str, fx.Node]) -> dict:
    args = {}
    for n in names:
        if n in em.inputs:
            args[n] = em.inputs[n]
        elif n in bmap:
            args[n] = bounds[bmap[n]]
    return args


def _module(em: Emitter, base: str, mod: fx.GraphModule) -> fx.Node:
    target = base
    k = 1
    while target in em._targets:
        target, k = f"{base}_{k}", k + 1
    em._targets[target] = mod
    return em.fx.get_attr(target)


#: Coefficient entries one chunk of backward rows may hold (``batch × rows × entries per row``).
ROW_BUDGET = 1 << 25


def user_kinks(g: Graph, name: str) -> tuple[float, ...] | None:
    """Break points of the piecewise-linear users of ``name`` (``None`` when a user is curved)."""
    kinks: set[float] = set()
    for n in g:
        if name not in n.inputs or not n.perturbed:
            continue
        k = relaxation_kinks(n.op, n.attrs)
        if k is None:
            return None
        kinks.update(k)
    return tuple(sorted(kinks))


class CentreWalk(Emitting):
    """The model's own values at the centre of the input box, emitted on demand (one clean forward, node by
    node as they are asked for): which side of a kink a neuron is on there guides the one-sided passes of
    :func:`~boundc.passes.rules.engine.backward_bounds`.  Constants are the emitter's; perturbed values stay
    in this walk (the emitter's hold intervals)."""

    def __init__(self, em: Emitter) -> None:
        super().__init__(em, "eval")
        self.values = {}

    def call(self, fn, args: tuple, kwargs: dict, node: Node, name: str | None = None) -> fx.Node:
        """Emit the op, named ``centre_<node>``."""
        return self.em.call(fn, args, kwargs, name=name or "centre_" + _ident(node.name))

    def value(self, name: str | None):
        """Perturbed nodes at the centre; constants as the emitter already has them."""
        if name is not None and not self.em.g[name].perturbed:
            return self.em.constant(self.em.g[name])
        return super().value(name)

    def source(self, node: Node) -> fx.Node:
        """The box centre for the input; other sources as the emitter reads them."""
        if node.op == "input":
            return self.em.call(engine.box_centre, (self.em.inputs["x_lower"], self.em.inputs["x_upper"]),
                                name="x_centre")
        return super().source(node)


def _emit_bound_pass(em: Emitter, options: CompileOptions, mode: str, p, interval: fx.Node,
                     bounds: dict[str, fx.Node], centre: CentreWalk | None = None) -> fx.Node:
    """Emit the chunked backward passes that bound node ``p.node`` (a :class:`BoundPlan` with ``how="backward"``)."""
    g = em.g
    start = engine.Start(p.start)
    form = DENSE
    if start is engine.Start.IDENTITY and options.linear.patches and patches_walk_ok(g, p.root):
        start, form = engine.Start.PATCHES, PATCHES
    walk, names, bmap, _ = build_walk(g, p.root, mode, form=form, owned_start=True)  # (engine._run_rows)
    wnode = _module(em, "walk_" + _ident(p.node), walk)
    widest = max(math.prod(g[a].shape[1:]) for a in ancestors(g, p.root))
    kw = dict(shape=_shape(g, p.node), start=start, interval=interval, kinks=user_kinks(g, p.node),
              row_elems=widest // (8 if form is PATCHES else 1), budget=options.linear.chunk_budget or ROW_BUDGET,
              intersect=options.linear.intersect_ibp, progress=f"bounds {p.node}" if options.linear.progress else None)
    if start is engine.Start.LINEAR:
        n = g[p.node]
        kw.update(weight=em.arg(n.inputs[1]), bias=em.arg(n.inputs[2]))
    if centre is not None and engine.single_kink(kw["kinks"]) is not None:  # one-sided passes
        kw.update(centre=centre.value(p.node))
    return em.call(engine.backward_bounds, (wnode, names, _walk_args(em, names, bmap, bounds)), kw,
                   name=f"bounds_{p.node}")


def emit_intermediate(em: Emitter, options: CompileOptions, mode: str, intermediate: str) -> dict[str, fx.Node]:
    """Emit the intermediate bounds the backward passes need, in topological order.

    Every perturbed node gets its interval (IBP) from the *tightened* bounds
    before it; where a backward bound is planned it is computed for the neurons
    that interval leaves undecided and then replaces the interval downstream.
    """
    g = em.g
    plans = {p.node: p for p in plan_bounds(g, backward=intermediate == "backward")}
    bounds: dict[str, fx.Node] = {}
    centre = CentreWalk(em) if options.linear.skip_stable_side else None
    for n in g:
        if not plans or len(bounds) == len(plans):
            break
        if not n.perturbed:
            continue
        emit_interval_node(em, n)
        p = plans.get(n.name)
        if p is None:
            continue
        if p.how == "backward":
            em.values[n.name] = _emit_bound_pass(em, options, mode, p, em.values[n.name], bounds, centre)
        bounds[n.name] = em.values[n.name]
        bounds[n.name].meta["boundc_bounds"] = n.name  # read by BoundModule.report
    return bounds


def emit_start(em: Emitter) -> tuple[str, fx.Node, tuple[int, ...] | None]:
    """The backward start for the graph output: ``(root, start state, output shape or None for a spec)``."""
    g = em.g
    out = g.output
    if out.op == "spec":
        return out.inputs[0], em.call(engine.start_spec, (em.arg(out.inputs[1]),), name="start"), None
    if out.op == "spec_linear":
        x, w, b, c = out.inputs
        return x, em.call(engine.start_spec_linear, (em.arg(c), em.arg(w), em.arg(b)), name="start"), None
    shape = _shape(g, out.name)
    return out.name, em.call(engine.start_identity, (em.inputs["x_lower"], shape), name="start"), shape


def _finish_output(em: Emitter, res: fx.Node, shape: tuple[int, ...] | None,
                   options: CompileOptions) -> tuple[fx.Node, fx.Node]:
    lower = em.attr(res, "lower")
    if options.linear.output_upper:
        upper = em.attr(res, "upper")
    else:
        upper = em.call(engine.unbounded_above, (lower,), name="upper")
    if shape is not None and len(shape) != 1:
        lower = em.call(engine.unflatten_output, (lower, shape), name="lower")
        upper = em.call(engine.unflatten_output, (upper, shape), name="upper")
    return lower, upper


def backward_method(em: Emitter, options: CompileOptions, mode: str, intermediate: str,
                    alpha: bool = False) -> tuple[fx.Node, fx.Node]:
    """Shared body of the backward methods."""
    g = em.g
    if not g.output.perturbed:
        v = em.constant(g.output)
        return v, v
    bounds = emit_intermediate(em, options, mode, intermediate)
    root, start, shape = emit_start(em)
    if not options.linear.output_upper:
        start = em.call(engine.lower_rows_only, (start,), name="start_lower")
    if not alpha:
        return _finish_output(em, emit_walk(em, root, start, bounds, mode), shape, options)
    walk, names, bmap, amap = build_walk(g, root, mode, with_alpha=True)
    wnode = _module(em, "walk_output", walk)
    alphas = {a: (g[node].op, dict(g[node].attrs), bounds[g[node].inputs[0]]) for a, node in amap.items()}
    lo = options.linear
    res = em.call(engine.alpha_optimize, (wnode, names, _walk_args(em, names, bmap, bounds), start, alphas),
                  dict(iterations=lo.alpha_iterations, lr=lo.alpha_lr, progress=lo.progress), name="bound")
    return _finish_output(em, res, shape, options)


@method("crown", ("backward",))
def crown(em: Emitter, options: CompileOptions) -> tuple[fx.Node, fx.Node]:
    """CROWN (Zhang et al. 2018): backward relaxation, adaptive ReLU lower slopes, backward intermediate bounds."""
    return backward_method(em, options, "crown", "backward")


@method("fast-lin", ("backward",))
def fast_lin(em: Emitter, options: CompileOptions) -> tuple[fx.Node, fx.Node]:
    """Fast-Lin / the Wong–Kolter dual network: lower slope = upper slope, backward intermediate bounds."""
    return backward_method(em, options, "fast-lin", "backward")


@method("crown-ibp", ("backward",))
def crown_ibp(em: Emitter, options: CompileOptions) -> tuple[fx.Node, fx.Node]:
    """CROWN-IBP (Zhang et al. 2020): IBP intermediate bounds, one CROWN pass for the output / spec."""
    return backward_method(em, options, "crown", "ibp")


@method("alpha-crown", ("backward",))
def alpha_crown(em: Emitter, options: CompileOptions) -> tuple[fx.Node, fx.Node]:
    """α-CROWN: CROWN with the lower slopes of unstable ReLUs of the final pass optimised by Adam."""
    return backward_method(em, options, "crown", "backward", alpha=True)


@method("forward", ("forward",))
def forward(em: Emitter, options: CompileOptions) -> tuple[fx.Node, fx.Node]:
    """Forward symbolic linear bounds (MixTrain / Fast-Lin forward), concretised at each non-linear op."""
    return fw.emit_forward(em, options)


__all__ = ["add_split_terms", "backward_method", "build_walk", "emit_intermediate", "emit_start", "emit_walk", "user_kinks"]
