"""Codegen: turn an analysed IR graph into a ``torch.fx`` graph of rule calls.

Each bound *method* is a function registered with :func:`method` that walks the
IR and emits calls through an :class:`Emitter`.  Constant (unperturbed) nodes
become calls of their concrete rule, parameters become ``get_attr`` of the live
tensors, perturbed nodes become calls of the method's rules.  The result is an
``fx.GraphModule`` — readable ``.code``, no interpretation overhead, autograd,
``torch.compile`` and ONNX export work on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

from boundc.errors import BoundcError
from boundc.interpreter import Emitting
from boundc.ir import Graph, Node
from boundc.options import CompileOptions
from boundc.passes.graph.analysis import check_rules
from boundc.passes.graph.consume import mark_consumers
from boundc.passes.graph.fuse import fuse_relu_affine
from boundc.passes.rules.interval import Interval

#: Placeholder order of every generated bound network.
INPUT_NAMES = ("x_lower", "x_upper", "C", "x_clean")

MethodBuilder = Callable[["Emitter", CompileOptions], tuple[fx.Node, fx.Node]]
GraphPass = Callable[[Graph, CompileOptions], Graph]
_METHODS: dict[str, tuple[MethodBuilder, tuple[str, ...], GraphPass | None]] = {}


def method(name: str, domains: tuple[str, ...], prepare: GraphPass | None = None) -> Callable[[MethodBuilder], MethodBuilder]:
    """Register a bound method; ``domains`` lists the rule domains it needs, ``prepare``
    an optional method-specific Graph → Graph pass run before codegen (e.g. fusion)."""

    def register(fn: MethodBuilder) -> MethodBuilder:
        _METHODS[name] = (fn, domains, prepare)
        return fn

    return register


def methods() -> list[str]:
    """Names of the registered bound methods."""
    return sorted(_METHODS)


def _ident(name: str) -> str:
    name = re.sub(r"\W", "_", name)
    return name if name and not name[0].isdigit() else "v_" + name


class Emitter:
    """Builds one ``fx.Graph`` for an IR graph; remembers the fx value of each IR node."""

    def __init__(self, g: Graph) -> None:
        self.g = g
        self.fx = fx.Graph()
        self.values: dict[str, fx.Node] = {}
        self.inputs: dict[str, fx.Node] = {}
        self._targets: dict[str, torch.Tensor] = {}
        for name in INPUT_NAMES:  # placeholders in a fixed order; unused ones are removed at the end
            self.inputs[name] = self.fx.placeholder(name, default_value=None if name in ("C", "x_clean") else
                                                    fx.node.inspect.Signature.empty)

    def call(self, fn: Callable, args: tuple, kwargs: dict[str, Any] | None = None, name: str | None = None) -> fx.Node:
        """Emit ``fn(*args, **kwargs)``."""
        return self.fx.create_node("call_function", fn, tuple(args), dict(kwargs or {}),
                                   name=_ident(name) if name else None)

    def attr(self, value: fx.Node, field: str) -> fx.Node:
        """Emit ``value.field``."""
        return self.fx.call_function(getattr, (value, field))

    def arg(self, name: str | None) -> fx.Node | None:
        """The fx value of an IR input (emitting constants on first use)."""
        if name is None:
            return None
        if name not in self.values:
            self.constant(self.g[name])
        return self.values[name]

    def constant(self, n: Node) -> fx.Node:
        """Emit an unperturbed node: a parameter read or a concrete op."""
        if n.name in self.values:
            return self.values[n.name]
        if n.op == "param":
            target = n.attrs["target"]
            self._targets[target] = self.g.tensors[target]
            v = self.fx.get_attr(target)
        elif n.op == "clean_input":
            v = self.inputs["x_clean"]
        elif n.op == "spec_matrix":
            v = self.inputs["C"]
        elif n.perturbed:
            raise BoundcError(f"internal: {n.where()} is perturbed, not a constant")
        else:  # a concrete op over constants: the walker emits it (and its inputs on first use)
            return Emitting(self, "eval").step(n)
        self.values[n.name] = v
        return v

    def finish(self, lower: fx.Node, upper: fx.Node, *extra: fx.Node) -> fx.GraphModule:
        """Close the graph with ``return (lower, upper, *extra)`` and wrap it as a GraphModule."""
        self.fx.output((lower, upper, *extra))
        for ph in list(self.inputs.values()):
            if not ph.users and ph.name not in ("x_lower", "x_upper"):
                self.fx.erase_node(ph)
        self.fx.eliminate_dead_code()
        mark_consumers(self.fx)  # activations of a backward walk may overwrite states no one else reads
        self.fx.lint()
        gm = fx.GraphModule(dict(self._targets), self.fx, class_name="BoundNetwork")
        if self.g.module is not None and any(t.startswith("model.") for t in self._targets):
            # read ``model.*`` through the source module itself, so moving or casting the bound
            # network moves the model too and buffers (BN statistics) stay shared
            gm.model = self.g.module
        return gm


def build(g: Graph, name: str, options: CompileOptions) -> fx.GraphModule:
    """Generate the bound network of ``g`` for method ``name``."""
    if name not in _METHODS:
        raise BoundcError(f"unknown method {name!r}; available: {', '.join(methods())}")
    fn, domains, prepare = _METHODS[name]
    if prepare is not None:
        g = prepare(g, options)
    check_rules(g, domains)
    em = Emitter(g)
    lower, upper = fn(em, options)
    return em.finish(lower, upper)


def emit_interval_node(em: Emitter, n: Node) -> fx.Node:
    """Emit the interval (IBP) rule of one perturbed node from the current values of its inputs."""
    return Emitting(em, "interval").step(n)


def emit_interval(em: Emitter) -> dict[str, fx.Node]:
    """Emit interval (IBP) rules for every perturbed node; returns their fx values (Intervals at run time)."""
    walker = Emitting(em, "interval")
    return {n.name: walker.step(n) for n in em.g if n.perturbed}


def output_bounds(em: Emitter) -> tuple[fx.Node, fx.Node]:
    """``(lower, upper)`` of the graph output from its emitted interval."""
    out = em.g.output
    if not out.perturbed:
        v = em.constant(out)
        return v, v
    v = em.values[out.name]
    return em.attr(v, "lower"), em.attr(v, "upper")


@method("ibp", ("interval",), prepare=lambda g, options: fuse_relu_affine(g, options.kernels))
def ibp(em: Emitter, options: CompileOptions) -> tuple[fx.Node, fx.Node]:
    """Interval bound propagation (Gowal et al. 2018)."""
    emit_interval(em)
    return output_bounds(em)


__all__ = ["Emitter", "Interval", "build", "emit_interval", "emit_interval_node", "method", "methods", "output_bounds"]
