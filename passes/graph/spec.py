"""Specification: bound ``C·y`` instead of the logits ``y``.

:func:`attach_spec` adds a ``spec_matrix`` source (the runtime ``C`` of shape
(B, S, K)) and, when the output node is a linear layer, folds ``C`` into it —
the IBP paper's *elision of the last layer*: ``W' = C·W``, ``b' = C·b``.
Otherwise a ``spec`` node is appended to the output.
"""

from __future__ import annotations

from boundc.ir import Graph, Node

from .analysis import mark_perturbed


def attach_spec(g: Graph, num_specs: int = 1, elide: bool = True) -> Graph:
    """A copy of ``g`` whose output is ``C @ output`` (with the last layer elided if it is linear)."""
    g = g.copy()
    out = g.output
    batch = out.shape[0] if out.shape else 1
    c = Node("C", "spec_matrix", shape=(batch, num_specs) + tuple(out.shape[1:]), batched=True, source="spec C")
    g.nodes = {c.name: c, **g.nodes}
    users = g.users()
    if elide and out.op == "linear" and out.perturbed and not users[out.name] and len(out.shape) == 2:
        x, w, b = out.inputs
        node = Node(g.fresh_name(out.name + "_spec"), "spec_linear", (x, w, b, c.name),
                    shape=(batch, num_specs), batched=True, source=out.source)
    else:
        node = Node(g.fresh_name("spec"), "spec", (out.name, c.name), shape=(batch, num_specs),
                    batched=True, source="spec C")
    g.add(node)
    g.outputs = [node.name]
    g.remove_dead()
    return mark_perturbed(g)
