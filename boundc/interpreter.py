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
``boundc.passes.graph.analysis.evaluate`` (eager), the IBP codegen, the
interleaved interval/backward codegen of the linear methods and the forward
method all walk the graph with it.
"""

from __future__ import annotations

from typing import Any

from boundc.errors import BoundcError
from boundc.ir import Graph, Node
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
    def call(self, fn: Any, args: tuple, kwargs: dict, node: Node) -> Any:
        """Apply rule ``fn`` of ``node``."""
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

    def call(self, fn: Any, args: tuple, kwargs: dict, node: Node) -> Any:
        """Emit ``fn(*args, **kwargs)``, named after the node."""
        return self.em.call(fn, args, kwargs, name=node.name)

    def source(self, node: Node) -> Any:
        """The input rule of the domain on the box placeholders; other sources as the emitter reads them."""
        if node.op == "input":
            return self.em.call(get_rule("input", self.domain), (self.em.inputs["x_lower"], self.em.inputs["x_upper"]),
                                name="x")
        return self.em.constant(node)


__all__ = ["Emitting", "Interpreter", "SOURCES"]
