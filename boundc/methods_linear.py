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

import operator

import torch.fx as fx

from boundc.codegen import Emitter, _ident, emit_interval, method
from boundc.ir import Graph
from boundc.options import CompileOptions
from boundc.passes.graph.planning import NONLINEAR, ancestors, plan_bounds
from boundc.passes.rules import backward as bw
from boundc.passes.rules import engine
from boundc.passes.rules import forward_linear as fw  # noqa: F401
from boundc.passes.rules.interval import input_box
from boundc.passes.rules.registry import get_rule

DOMAIN = "backward"


def _shape(g: Graph, name: str | None) -> tuple[int, ...] | None:
    return None if name is None else tuple(g[name].shape[1:])


def emit_walk(em: Emitter, root: str, start: fx.Node, bounds: dict[str, fx.Node], mode: str,
              alphas: dict[str, fx.Node] | None = None) -> fx.Node:
    """Emit one backward pass from ``root`` (state ``start``) to the input; returns its concretised Interval.

    Contributions of several users of a node are summed (``add_coeffs``).
    """
    g = em.g
    order = ancestors(g, root)
    pending: dict[str, fx.Node] = {root: start}
    for name in reversed(order):
        n = g[name]
        state = pending.pop(name)
        if n.op == "input":
            return em.call(bw.concretize, (state, em.inputs["x_lower"], em.inputs["x_upper"]), name="bound")
        fn = get_rule(n.op, DOMAIN)
        args = [None if i is None else (bounds.get(i, "perturbed") if g[i].perturbed else em.arg(i)) for i in n.inputs]
        kwargs = dict(n.attrs, in_shapes=tuple(_shape(g, i) for i in n.inputs))
        if n.op in NONLINEAR and n.op != "max_pool2d":
            kwargs["mode"] = mode
            if alphas is not None and name in alphas:
                kwargs["alpha"] = alphas[name]
        res = em.call(fn, (state, *args), kwargs, name=f"A_{name}")
        for k, i in enumerate(n.inputs):
            if i is None or not g[i].perturbed:
                continue
            part = em.call(operator.getitem, (res, k), name=f"A_{i}")
            pending[i] = part if i not in pending else em.call(bw.add_coeffs, (pending[i], part), name=f"A_{i}")
    raise AssertionError(f"backward pass from {root!r} never reached the input")


def _walk_bounds_needed(g: Graph, root: str) -> list[str]:
    """Intermediate bounds a backward pass from ``root`` reads (inputs of its non-linear ops)."""
    need = []
    for name in ancestors(g, root):
        n = g[name]
        if n.op in NONLINEAR:
            need.extend(i for i in n.inputs if i is not None and g[i].perturbed and i not in need)
    return need


def build_walk(g: Graph, root: str, mode: str, with_alpha: bool = False
               ) -> tuple[fx.GraphModule, tuple[str, ...], dict[str, str], dict[str, str]]:
    """A generated module running one backward pass from ``root``.

    Returns the module, its placeholder names in order, the placeholder of each
    bound it reads (placeholder -> IR node) and of each ReLU slope (placeholder ->
    IR node of the ReLU's input).
    """
    sub = Emitter(g)
    start = sub.fx.placeholder("start", default_value=None)
    bph, bmap = {}, {}
    for name in _walk_bounds_needed(g, root):
        p = sub.fx.placeholder("b_" + _ident(name), default_value=None)
        bph[name], bmap[p.target] = p, name
    aph, amap = {}, {}
    if with_alpha:
        for name in ancestors(g, root):
            if g[name].op == "relu":
                p = sub.fx.placeholder("alpha_" + _ident(name), default_value=None)
                aph[name], amap[p.target] = p, g[name].inputs[0]
    res = emit_walk(sub, root, start, bph, "crown" if with_alpha else mode, aph if with_alpha else None)
    gm = sub.finish(sub.attr(res, "lower"), sub.attr(res, "upper"))
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


def emit_intermediate(em: Emitter, options: CompileOptions, mode: str, intermediate: str) -> dict[str, fx.Node]:
    """Emit the intermediate bounds the backward passes need (IBP, input box, or chunked backward passes)."""
    g, lo = em.g, options.linear
    plans = plan_bounds(g, backward=intermediate == "backward")
    ivals = emit_interval(em) if plans else {}
    bounds: dict[str, fx.Node] = {}
    for p in plans:
        if p.how == "input":
            bounds[p.node] = em.call(input_box, (em.inputs["x_lower"], em.inputs["x_upper"]), name="x")
        elif p.how == "ibp":
            bounds[p.node] = ivals[p.node]
        else:
            walk, names, bmap, _ = build_walk(g, p.root, mode)
            wnode = _module(em, "walk_" + _ident(p.node), walk)
            n = g[p.node]
            kw = dict(shape=_shape(g, p.node), start=p.start, chunk_size=lo.chunk_size)
            if p.start == "linear":
                kw.update(weight=em.arg(n.inputs[1]), bias=em.arg(n.inputs[2]))
            if lo.intersect_ibp:
                kw["ibp"] = ivals[p.node]
            bounds[p.node] = em.call(engine.backward_bounds, (wnode, names, _walk_args(em, names, bmap, bounds)), kw,
                                     name=f"bounds_{p.node}")
        bounds[p.node].meta["boundc_bounds"] = p.node  # read by BoundModule.report
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


def _finish_output(em: Emitter, res: fx.Node, shape: tuple[int, ...] | None) -> tuple[fx.Node, fx.Node]:
    lower, upper = em.attr(res, "lower"), em.attr(res, "upper")
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
    if not alpha:
        return _finish_output(em, emit_walk(em, root, start, bounds, mode), shape)
    walk, names, bmap, amap = build_walk(g, root, mode, with_alpha=True)
    wnode = _module(em, "walk_output", walk)
    relus = {a: bounds[node] for a, node in amap.items()}
    lo = options.linear
    res = em.call(engine.alpha_optimize, (wnode, names, _walk_args(em, names, bmap, bounds), start, relus),
                  dict(iterations=lo.alpha_iterations, lr=lo.alpha_lr), name="bound")
    return _finish_output(em, res, shape)


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


__all__ = ["backward_method", "build_walk", "emit_intermediate", "emit_start", "emit_walk"]
