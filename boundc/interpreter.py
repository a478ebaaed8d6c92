"""One walker over the IR: run it eagerly, or record it in an fx graph (torch.fx's Interpreter / Transformer pair).

:class:`Interpreter` visits the nodes of a :class:`~boundc.ir.Graph` in
topological order.  A perturbed node applies its rule in the walker's *domain*
(``"eval"``, ``"interval"``, ``"forward"``, ...); every other node its concrete
(``"eval"``) rule, computed when first read; sources (``input``, ``param``,
``clean_input``, ``spec_matrix``) come from :meth:`Interpreter.source`.
Subclasses change only *how* a rule is applied: :class:`Emitting` records the
call in the bound network's fx graph instead of making it, and a domain that
needs more than the node's inputs (the forward rules of activations take the
concrete bounds of their input) overrides :meth:`Interpreter.extra_args`.

:class:`ReverseWalk` is the reverse counterpart: from a root back to the input,
each perturbed ancestor's rule of a reverse domain (``"backward"``,
``"patches"``) maps the state at its output to one state per input, and the
states of a node with several users are summed.  It applies rules through an
:class:`Interpreter` (eager) or :class:`Emitting` (recorded), which also gives
it the values of constants; the method specific parts are its hooks.

Walks that use this module: ``boundc.passes.graph.analysis.evaluate`` (eager),
the IBP codegen and the interleaved interval/backward codegen of the linear
methods (:mod:`boundc.codegen`), the forward method
(``boundc.passes.rules.forward_linear.ForwardWalk``), the backward passes of
the linear methods (``boundc.methods_linear.emit_walk``, a :class:`ReverseWalk`),
the MILP encoder (``boundc.verify.milp.MilpEncoding``) and the shape trace of
the ONNX frontend (``boundc.frontends.onnx_lowering.Lowerer.emit``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from boundc.errors import BoundcError
from boundc.ir import Graph, Node
from boundc.passes.graph.planning import ancestors
from boundc.passes.rules.registry import get_rule

#: Ops whose value is given to the walk rather than computed by a rule.
SOURCES = ("input", "param", "clean_input", "spec_matrix")


class Interpreter:
    """Eager walk: ``values`` maps node names to tensors (or domain values such as Intervals).

    ``seeds`` gives the values of ``input``, ``clean_input`` and ``spec_matrix``; ``param``
    nodes read the graph's live tensors.
    """

    def __init__(self, g: Graph, domain: str, seeds: dict[str, Any] | None = None) -> None:
        self.g = g
        self.domain = domain
        self.seeds = seeds or {}
        self.values: dict[str, Any] = {}

    # -- what subclasses override ---------------------------------------------------------
    def call(self, fn: Any, args: tuple, kwargs: dict, node: Node, name: str | None = None) -> Any:
        """Apply rule ``fn`` of ``node`` (``name``: what an emitted call is named, default the node's name)."""
        return fn(*args, **kwargs)

    def source(self, node: Node) -> Any:
        """The value of a source node (``input``, ``param``, ``clean_input``, ``spec_matrix``)."""
        if node.op == "param":
            return self.g.tensor_of(node)
        if node.op not in self.seeds:
            raise BoundcError(f"{node.where()}: the walk was given no value for '{node.op}'")
        return self.seeds[node.op]

    def extra_args(self, node: Node, args: tuple) -> tuple:
        """The arguments of a perturbed node's rule (its inputs' values; a domain may add more)."""
        return args

    # -- the walk ----------------------------------------------------------------------------
    def value(self, name: str | None) -> Any:
        """The value of node ``name`` (``None`` for an absent optional input); constants on first use."""
        if name is None:
            return None
        if name not in self.values:
            self.step(self.g[name])
        return self.values[name]

    def step(self, node: Node) -> Any:
        """Compute (or emit) one node from the values of its inputs."""
        if node.op in SOURCES:
            v = self.source(node)
        else:
            domain = self.domain if node.perturbed else "eval"
            fn = get_rule(node.op, domain)
            if fn is None:
                raise BoundcError(f"{node.where()} has no rule in domain {domain!r}")
            args = tuple(self.value(i) for i in node.inputs)
            if node.perturbed:
                args = self.extra_args(node, args)
            v = self.call(fn, args, node.attrs, node)
        self.values[node.name] = v
        return v

    def run(self, perturbed_only: bool = False) -> dict[str, Any]:
        """Walk every node (or only the perturbed ones; constants are then computed as they are read)."""
        for n in self.g:
            if n.name not in self.values and (n.perturbed or not perturbed_only):
                self.step(n)
        return self.values


class Emitting(Interpreter):
    """The same walk recorded in the fx graph of a :class:`boundc.codegen.Emitter` (values are fx nodes)."""

    def __init__(self, em: Any, domain: str) -> None:
        super().__init__(em.g, domain)
        self.em = em
        self.values = em.values  # shared: constants and earlier walks are reused

    def call(self, fn: Any, args: tuple, kwargs: dict, node: Node, name: str | None = None) -> Any:
        """Emit ``fn(*args, **kwargs)``, named ``name`` (default: after the node)."""
        return self.em.call(fn, args, kwargs, name=name or node.name)

    def source(self, node: Node) -> Any:
        """The input rule of the domain on the box placeholders; other sources as the emitter reads them."""
        if node.op == "input":
            return self.em.call(get_rule("input", self.domain), (self.em.inputs["x_lower"], self.em.inputs["x_upper"]),
                                name="x")
        return self.em.constant(node)


Hook = Callable[[Node, Any], Any]


def _unchanged(node: Node, value: Any) -> Any:
    return value


class ReverseWalk:
    """Walk the perturbed ancestors of a root in reverse topological order, applying each node's rule of
    ``walker.domain`` to the state at its output.

    A rule is called as ``rule(state, *args(node), **kwargs(node))`` and returns one state per input of the
    node (``None`` for constants); the state of a node with several users is the sum (``add``) of their
    contributions.  The walk stops at the ``input`` node and returns ``finish(input_node, state)``.
    ``walker`` applies the rules (:class:`Interpreter`: eagerly; :class:`Emitting`: recorded as calls named
    ``A_<node>``) and gives the values of constant inputs.  The hooks are what a method adds:

    * ``bounds``: the value a perturbed input is passed as (its concrete bounds); the string
      ``"perturbed"`` for one without;
    * ``extra_kwargs(node)``: keyword arguments beyond the node's attributes and ``in_shapes`` (the per-sample
      shape of each input), e.g. a relaxation's ``mode`` and ``alpha``;
    * ``after(node, result)``: rewrites a rule's result before it is split per input (β split terms);
    * ``visit(node, state)``: sees the state at each node before its rule (taps);
    * ``finish(node, state)``: the walk's result from the state at the input (e.g. concretised on the box).
    """

    def __init__(self, walker: Interpreter, add: Callable[[Any, Any], Any], finish: Hook = _unchanged, *,
                 bounds: dict[str, Any] | None = None, extra_kwargs: Callable[[Node], dict] | None = None,
                 after: Hook = _unchanged, visit: Callable[[Node, Any], None] | None = None) -> None:
        self.walker, self.g, self.domain = walker, walker.g, walker.domain
        self.add, self.finish, self.after, self.visit = add, finish, after, visit
        self.bounds = bounds or {}
        self.extra_kwargs = extra_kwargs

    def args(self, node: Node) -> tuple:
        """The node's inputs as its rule reads them after the state: bounds (or ``"perturbed"``), constants."""
        g = self.g
        return tuple(None if i is None else self.bounds.get(i, "perturbed") if g[i].perturbed else self.walker.value(i)
                     for i in node.inputs)

    def kwargs(self, node: Node) -> dict:
        """The node's attributes, ``in_shapes`` and the method's extra keyword arguments."""
        shapes = tuple(None if i is None else tuple(self.g[i].shape[1:]) for i in node.inputs)
        return dict(node.attrs, in_shapes=shapes, **(self.extra_kwargs(node) if self.extra_kwargs else {}))

    def run(self, root: str, start: Any) -> Any:
        """Walk from ``root`` (state ``start``) to the input; returns ``finish`` of the state there."""
        g, call = self.g, self.walker.call
        pending: dict[str, Any] = {root: start}
        for name in reversed(ancestors(g, root)):
            n = g[name]
            state = pending.pop(name)
            if self.visit is not None:
                self.visit(n, state)
            if n.op == "input":
                return self.finish(n, state)
            fn = get_rule(n.op, self.domain)
            if fn is None:
                raise BoundcError(f"{n.where()} has no rule in domain {self.domain!r}")
            res = self.after(n, call(fn, (state, *self.args(n)), self.kwargs(n), n, name=f"A_{name}"))
            for k, i in enumerate(n.inputs):
                if i is None or not g[i].perturbed:
                    continue
                part = call(operator.getitem, (res, k), {}, n, name=f"A_{i}")
                pending[i] = part if i not in pending else call(self.add, (pending[i], part), {}, n, name=f"A_{i}")
        raise AssertionError(f"the reverse walk from {root!r} never reached the input")


__all__ = ["Emitting", "Interpreter", "ReverseWalk", "SOURCES"]
