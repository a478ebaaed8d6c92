"""Which rule calls of a generated backward walk may consume their coefficient state (an fx pass).

An activation's reverse rule forms its result in a fresh buffer the size of its input state; told
``consume=True`` it forms it in the input's own buffer instead, so a pass holds one coefficient tensor
fewer at its peak.  That is sound only where nothing reads the input state afterwards and no other value
shares its tensors, which the fx graph shows (:func:`owned`): the call is the state's only user, and the
state is one element of a rule's result that is read once, where that rule is marked
:func:`~boundc.passes.rules.registry.owns_result` (fresh tensors, or tensors it took over from a state it
consumed), or passed on by rules and hooks marked :func:`~boundc.passes.rules.registry.forwards_state`
(a view of their input, or fresh tensors) from an owned value that they alone read.  A placeholder (the
start rows its caller passes in and may hold) is never owned, nor is a state that is also tapped or
summed with another; start rows are owned only when the walk takes them out of the one-element list its
caller handed them over in (:func:`~boundc.passes.rules.engine.take_start`).  The rule itself still
checks at run time that no gradient is recorded and that the buffer is a dense one of its result's shape
(:func:`~boundc.passes.rules.backward.consumable`).
"""

from __future__ import annotations

import operator

import torch.fx as fx


def _owns(result: fx.Node) -> bool:
    """Whether the value of ``result`` (a rule's result, a hook's, a sum) holds tensors no other value holds."""
    if result.op != "call_function":
        return False
    if getattr(result.target, "owns_result", False):
        return True
    inner = result.args[0] if result.args else None
    return (getattr(result.target, "forwards_state", False) and isinstance(inner, fx.Node)
            and len(inner.users) == 1 and owned(inner))


def owned(state: fx.Node) -> bool:
    """Whether the coefficient state ``state`` holds tensors that no other value of the graph holds."""
    if state.op != "call_function":
        return False
    if state.target is operator.getitem:
        result = state.args[0]
        return isinstance(result, fx.Node) and len(result.users) == 1 and _owns(result)
    return _owns(state)  # a sum of contributions is the state itself


def mark_consumers(graph: fx.Graph) -> int:
    """Add ``consume=True`` to every call of a :func:`~boundc.passes.rules.registry.consumes_state` rule
    whose state it alone reads and :func:`owned` holds (a sum marked
    :func:`~boundc.passes.rules.registry.commutes` has its two states swapped when only the second is owned);
    returns how many calls were marked."""
    marked = 0
    for node in graph.nodes:
        if node.op != "call_function" or not getattr(node.target, "consumes_state", False) or not node.args:
            continue
        first = _consumable(node.args[0])
        if not first and getattr(node.target, "commutes", False) and _consumable(node.args[1]):
            node.args = (node.args[1], node.args[0], *node.args[2:])  # a sum: consume whichever is owned
            first = True
        if first:
            node.kwargs = {**node.kwargs, "consume": True}
            marked += 1
    return marked


def _consumable(state: object) -> bool:
    return isinstance(state, fx.Node) and len(state.users) == 1 and owned(state)


__all__ = ["mark_consumers", "owned"]
