"""IR fusion for the interval (IBP) method: ``relu -> linear/conv`` becomes one fused call.

A ``relu`` whose only reader is a perturbed op with the ``relu_prologue`` trait
(``linear``, ``conv``: their interval kernels apply a ReLU on load) (as its data
input, possibly through a single-use ``reshape``, which commutes with ReLU) is
removed and the affine node gets ``attrs["relu_input"] = True``; the interval
rules then apply the ReLU to the incoming bounds in the kernel prologue (see
:mod:`boundc.kernels.dispatch`).  With ``kernels`` other than ``"auto"`` the
choice is also stamped on every perturbed affine node as ``attrs["backend"]``.

The rewritten graph is only meaningful to the interval rules: run this pass on
the graph handed to the ``ibp`` codegen, never on the graph other methods or the
concrete (``eval``) rules see.  It returns a new graph; the input is unchanged.
"""

from __future__ import annotations

from boundc.passes.rules.ops import has

from boundc.ir import Graph


def _single_use(g: Graph, users: dict[str, list[str]], name: str, reader: str) -> bool:
    """``name`` is read only by ``reader`` (once) and is not a graph output."""
    return users[name] == [reader] and name not in g.outputs


def fuse_relu_affine(g: Graph, kernels: str = "auto") -> Graph:
    """A copy of ``g`` with every single-use ``relu`` feeding a perturbed linear/conv folded into it."""
    g = g.copy()
    users = g.users()
    changed = False
    for n in g:
        if not has(n.op, "relu_prologue") or not n.perturbed or not n.inputs or n.inputs[0] is None:
            continue
        if n.attrs.get("relu_input", False):
            continue
        src = g[n.inputs[0]]
        view = None
        if src.op == "reshape" and _single_use(g, users, src.name, n.name):   # relu -> flatten -> linear
            view, src = src, g[src.inputs[0]]
        if src.op == "relu" and src.perturbed and _single_use(g, users, src.name, (view or n).name):
            if view is not None:
                view.inputs = (src.inputs[0],)    # relu commutes with reshape
            else:
                n.inputs = (src.inputs[0], *n.inputs[1:])
            n.attrs["relu_input"] = True
            changed = True
    if str(kernels) != "auto":
        for n in g:
            if has(n.op, "relu_prologue") and n.perturbed:
                n.attrs["backend"] = str(kernels)  # a plain string: it is printed into the generated code
    if changed:
        g.remove_dead()
    return g


__all__ = ["fuse_relu_affine"]
