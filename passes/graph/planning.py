"""Planning for the linear-relaxation methods: which intermediate bounds are needed and how to get them.

* Only the (perturbed) inputs of non-linear ops need concrete bounds.
* A node reached from the input through a single mixing op (linear / conv /
  pooling) and elementwise or structural ops only has an *exact* interval: IBP
  gives the same bound as any backward pass there, so no backward pass is run.
* A backward pass for a node with a ``linear`` op and constant weight starts at
  the layer's input from the weight rows (no identity); otherwise it starts from
  unit rows (in patches form when the walk allows it, see ``boundc.methods_linear``).
  Which neurons get rows, and in what chunks, is decided at run time by
  :func:`boundc.passes.rules.engine.backward_bounds`.
"""

from __future__ import annotations

from dataclasses import dataclass

from boundc.passes.rules.ops import OPS, has

from boundc.ir import Graph

# Snapshots of the op table's traits, for readers that want a set (the passes here call ``has``):
#: Ops whose backward rule needs the concrete bounds of their input (trait ``needs_bounds``).
NONLINEAR = frozenset(op for op, d in OPS.items() if d.needs_bounds)
#: Ops that mix entries of their input linearly (trait ``mixing``: IBP is exact for one of them, not a chain).
MIXING = frozenset(op for op, d in OPS.items() if d.mixing)
#: Elementwise or structural affine ops that keep an exact box exact (trait ``structural``).
STRUCTURAL = frozenset(op for op, d in OPS.items() if d.structural)


@dataclass(frozen=True)
class BoundPlan:
    """How one intermediate bound is obtained.

    ``how`` is ``"input"`` (the input box), ``"ibp"`` (exact interval), or
    ``"backward"``; ``root`` is the node a backward pass starts at (the node
    itself, or a linear layer's input for the structured start ``start="linear"``).
    """

    node: str
    how: str
    root: str
    start: str
    numel: int


def needed_bounds(g: Graph) -> list[str]:
    """Perturbed inputs of non-linear ops, in topological order."""
    need: set[str] = set()
    for n in g:
        if n.perturbed and has(n.op, "needs_bounds"):
            need.update(i for i in n.inputs if i is not None and g[i].perturbed)
    return [n.name for n in g if n.name in need]


def ibp_exact(g: Graph) -> set[str]:
    """Nodes whose IBP interval is exact (at most one mixing op between them and the input)."""
    mixes: dict[str, int] = {}
    for n in g:
        if n.op == "input":
            mixes[n.name] = 0
            continue
        if not n.perturbed:
            continue
        pert = [i for i in n.inputs if i is not None and g[i].perturbed]
        mixing = has(n.op, "mixing")
        if len(pert) != 1 or pert[0] not in mixes or not (mixing or has(n.op, "structural")):
            continue
        k = mixes[pert[0]] + mixing
        if k <= 1:
            mixes[n.name] = k
    return set(mixes)


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape[1:]:
        out *= d
    return out


def plan_bounds(g: Graph, backward: bool = True) -> list[BoundPlan]:
    """One :class:`BoundPlan` per needed intermediate bound (see module docstring)."""
    exact = ibp_exact(g)
    plans = []
    for name in needed_bounds(g):
        n = g[name]
        if n.op == "input":
            plans.append(BoundPlan(name, "input", name, "", _numel(n.shape)))
        elif name in exact or not backward:
            plans.append(BoundPlan(name, "ibp", name, "", _numel(n.shape)))
        elif (n.op == "linear" and len(n.shape) == 2 and g[n.inputs[0]].perturbed
              and not g[n.inputs[1]].perturbed and not g[n.inputs[1]].batched):
            plans.append(BoundPlan(name, "backward", n.inputs[0], "linear", _numel(n.shape)))
        else:
            plans.append(BoundPlan(name, "backward", name, "identity", _numel(n.shape)))
    return plans


def ancestors(g: Graph, root: str) -> list[str]:
    """Perturbed ancestors of ``root`` (``root`` included) in topological order."""
    seen = {root}
    stack = [root]
    while stack:
        for i in g[stack.pop()].inputs:
            if i is not None and g[i].perturbed and i not in seen:
                seen.add(i)
                stack.append(i)
    return [n.name for n in g if n.name in seen]


__all__ = ["BoundPlan", "ancestors", "ibp_exact", "needed_bounds", "plan_bounds"]
