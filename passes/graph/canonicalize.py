"""Canonicalisation: small Graph → Graph rewrites applied until nothing changes.

Each rewrite is registered for the op it is anchored on and returns whether it
changed the graph.  Together they

* drop identities (dropout, clone, ...),
* lower batch norm to a per-channel ``scale_shift`` (eval mode: running
  statistics; train mode: statistics of the *clean* batch, computed on a copy of
  the upstream graph fed with the clean input),
* turn add/sub/mul by a constant into ``scale_shift`` and merge chains of them,
* fold a per-channel ``scale_shift`` into the preceding linear/conv and merge
  chains of linear layers (``W2·(W1·x + b1) + b2``) — all exact rewrites.

Folded weights are *constant sub-graphs* over the live parameters (e.g.
``fold_weight(conv.weight, bn_scale(...))``), recomputed on every call, so the
bound network keeps following the model during training.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from boundc.passes.rules.ops import OPS

from boundc.ir import Graph, Node

from .analysis import mark_perturbed

Rewrite = Callable[[Graph, Node, dict[str, list[str]]], bool]
_REWRITES: dict[str, list[Rewrite]] = {}


def rewrite(*ops: str) -> Callable[[Rewrite], Rewrite]:
    """Register a rewrite anchored on nodes of the given ops."""

    def register(fn: Rewrite) -> Rewrite:
        for op in ops:
            _REWRITES.setdefault(op, []).append(fn)
        return fn

    return register


def canonicalize(g: Graph) -> Graph:
    """Apply every rewrite until a fixed point; returns a new graph."""
    g = g.copy()
    mark_perturbed(g)
    changed = True
    while changed:
        changed = False
        users = g.users()
        for node in g:
            for fn in _REWRITES.get(node.op, ()):
                if fn(g, node, users):
                    changed = True
                    break
            if changed:
                g.remove_dead()
                mark_perturbed(g)
                break
    g.remove_dead()
    return mark_perturbed(g)


def _const(g: Graph, anchor: Node, op: str, inputs: tuple, out_shape: tuple, **attrs) -> str:
    """Insert a constant helper node before ``anchor``; returns its name."""
    node = Node(g.fresh_name(f"{anchor.name}_{op}"), op, inputs, attrs, out_shape, False, anchor.source)
    return g.insert_before(anchor.name, node).name


def _replace(g: Graph, old: Node, op: str, inputs: tuple, **attrs) -> None:
    """Replace ``old`` in place (same name and position) by a node of ``op``."""
    g.nodes[old.name] = Node(old.name, op, inputs, attrs, old.shape, old.batched, old.source)


def _absorb(g: Graph, inner: Node, outer: Node, op: str, inputs: tuple, **attrs) -> None:
    """Replace ``outer(inner(...))`` (``inner`` used once) by one node named like ``inner``."""
    merged = Node(inner.name, op, inputs, attrs, outer.shape, outer.batched, f"{inner.source}; {outer.source}")
    del g.nodes[inner.name]
    g.nodes = {(inner.name if k == outer.name else k): (merged if k == outer.name else v) for k, v in g.nodes.items()}
    g.replace_uses(outer.name, inner.name)


# -- identities ------------------------------------------------------------------------

@rewrite("identity")
def drop_identity(g: Graph, node: Node, users) -> bool:
    """``identity(x)`` → ``x``."""
    g.replace_uses(node.name, node.inputs[0])
    return True


@rewrite("scale_shift")
def drop_trivial_scale_shift(g: Graph, node: Node, users) -> bool:
    """``scale_shift(x, None, None)`` → ``x``."""
    if node.inputs[1] is None and node.inputs[2] is None:
        g.replace_uses(node.name, node.inputs[0])
        return True
    return False


# -- batch norm ------------------------------------------------------------------------

def _clean_copy(g: Graph, name: str, anchor: Node, memo: dict[str, str]) -> str:
    """A copy of ``name``'s input-dependent ancestry, fed with the clean input."""
    if name in memo:
        return memo[name]
    node = g[name]
    if not node.batched or node.op == "clean_input":
        memo[name] = name
    elif node.op == "input":
        existing = [n.name for n in g if n.op == "clean_input"]
        if existing:
            memo[name] = existing[0]
        else:
            clean = Node("x_clean", "clean_input", shape=node.shape, batched=True, source="clean input")
            items = list(g.nodes.items())
            g.nodes = {clean.name: clean, **dict(items)}
            memo[name] = clean.name
    else:
        ins = tuple(None if i is None else _clean_copy(g, i, anchor, memo) for i in node.inputs)
        copy = Node(g.fresh_name("clean_" + node.name), node.op, ins, dict(node.attrs), node.shape, True, node.source)
        memo[name] = g.insert_before(anchor.name, copy).name
    return memo[name]


@rewrite("batch_norm")
def lower_batch_norm(g: Graph, node: Node, users) -> bool:
    """``batch_norm`` → ``scale_shift(x, s, t)`` with per-channel ``s``, ``t``."""
    x, weight, bias, mean, var = node.inputs
    channels = node.shape[1]
    if node.attrs["training"] or mean is None:
        clean = _clean_copy(g, x, node, {})
        mean = _const(g, node, "batch_mean", (clean,), (channels,))
        var = _const(g, node, "batch_var", (clean,), (channels,))
    scale = _const(g, node, "bn_scale", (weight, var), (channels,), eps=node.attrs["eps"])
    shift = _const(g, node, "bn_shift", (bias, mean, scale), (channels,))
    bshape = (channels,) + (1,) * (len(node.shape) - 2)
    scale = _const(g, node, "reshape", (scale,), bshape, shape=bshape)
    shift = _const(g, node, "reshape", (shift,), bshape, shape=bshape)
    _replace(g, node, "scale_shift", (x, scale, shift))
    return True


# -- arithmetic with constants ---------------------------------------------------------

@rewrite("add", "sub", "mul")
def constant_operand_to_scale_shift(g: Graph, node: Node, users) -> bool:
    """``x + c``, ``x - c``, ``c - x``, ``x * c`` (``c`` constant) → ``scale_shift``."""
    a, b = (g[i] for i in node.inputs)
    if a.perturbed == b.perturbed:
        return False
    x, c = (a, b) if a.perturbed else (b, a)
    if node.op == "add":
        _replace(g, node, "scale_shift", (x.name, None, c.name))
    elif node.op == "mul":
        _replace(g, node, "scale_shift", (x.name, c.name, None))
    elif a.perturbed:  # x - c
        _replace(g, node, "scale_shift", (x.name, None, _const(g, node, "neg", (c.name,), c.shape)))
    else:  # c - x
        minus_one = g.add_tensor("minus_one", torch.tensor(-1.0)).name
        g.nodes = {minus_one: g.nodes.pop(minus_one), **g.nodes}  # keep topological order
        _replace(g, node, "scale_shift", (x.name, minus_one, c.name))
    return True


@rewrite("scale_shift")
def merge_scale_shift(g: Graph, node: Node, users) -> bool:
    """``scale_shift(scale_shift(x, s1, t1), s2, t2)`` → one ``scale_shift``."""
    inner = g[node.inputs[0]]
    if inner.op != "scale_shift" or len(users[inner.name]) != 1 or not inner.perturbed:
        return False
    x, s1, t1 = inner.inputs
    _, s2, t2 = node.inputs
    scale = None if s1 is None and s2 is None else _const(g, node, "compose_scale", (s1, s2), _bshape(g, s1, s2))
    shift = None if t1 is None and t2 is None else _const(g, node, "compose_shift", (t1, s2, t2), _bshape(g, t1, s2, t2))
    _absorb(g, inner, node, "scale_shift", (x, scale, shift))
    return True


def _bshape(g: Graph, *names: str | None) -> tuple[int, ...]:
    return tuple(torch.broadcast_shapes(*[g[n].shape for n in names if n is not None]))


def _per_output_channel(g: Graph, name: str | None, out_shape: tuple[int, ...], channel_dim: int) -> bool:
    """Whether constant ``name`` varies at most along ``channel_dim`` of ``out_shape``."""
    if name is None:
        return True
    shape = g[name].shape
    if len(shape) > len(out_shape):
        return False
    full = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
    return all(s == 1 or (d == channel_dim % len(out_shape) and s == out_shape[d]) for d, s in enumerate(full))


@rewrite("scale_shift")
def fold_into_affine(g: Graph, node: Node, users) -> bool:
    """``scale_shift(linear/conv(x, W, b), s, t)`` → ``linear/conv(x, W·s, b·s + t)`` (ops with a
    ``channel_dim`` in the op table)."""
    inner = g[node.inputs[0]]
    channel_dim = OPS[inner.op].channel_dim if inner.op in OPS else None
    if channel_dim is None or len(users[inner.name]) != 1 or not inner.perturbed:
        return False
    _, s, t = node.inputs
    if len(inner.shape) != len(node.shape):
        return False
    if not (_per_output_channel(g, s, inner.shape, channel_dim) and _per_output_channel(g, t, inner.shape, channel_dim)):
        return False
    if inner.op == "linear" and len(inner.shape) != 2:
        return False
    x, w, b = inner.inputs
    out_ch = g[w].shape[0]
    if s is not None:
        w = _const(g, node, "fold_weight", (w, s), g[w].shape)
    b = _const(g, node, "fold_bias", (b, s, t), (out_ch,), out_channels=out_ch)
    _absorb(g, inner, node, inner.op, (x, w, b), **inner.attrs)
    return True


@rewrite("linear")
def merge_linear_chain(g: Graph, node: Node, users) -> bool:
    """``linear(linear(x, W1, b1), W2, b2)`` → ``linear(x, W2·W1, W2·b1 + b2)``."""
    inner = g[node.inputs[0]]
    if inner.op != "linear" or len(users[inner.name]) != 1 or not inner.perturbed or len(inner.shape) != 2:
        return False
    x, w1, b1 = inner.inputs
    _, w2, b2 = node.inputs
    w = _const(g, node, "matmul_weights", (w2, w1), (g[w2].shape[0], g[w1].shape[1]))
    b = b2 if b1 is None else _const(g, node, "chain_bias", (w2, b1, b2), (g[w2].shape[0],))
    _absorb(g, inner, node, "linear", (x, w, b))
    return True


@rewrite("reshape")
def merge_reshape_chain(g: Graph, node: Node, users) -> bool:
    """``reshape(reshape(x))`` → ``reshape(x)``; a reshape to the same shape → ``x``."""
    inner = g[node.inputs[0]]
    if inner.shape == node.shape and inner.batched == node.batched:
        g.replace_uses(node.name, inner.name)
        return True
    if inner.op == "reshape" and len(users[inner.name]) == 1:
        node.inputs = (inner.inputs[0],)
        return True
    return False


# -- activations written out: x * sigmoid(x) -> silu(x), x / (1 + |x|) -> softsign(x) -------------

@rewrite("mul")
def fuse_silu(g: Graph, node: Node, users) -> bool:
    """``x * sigmoid(x)`` → ``silu(x)`` (how SiLU / swish exports to ONNX)."""
    a, b = node.inputs
    for x, s in ((a, b), (b, a)):
        if x is not None and s is not None and g[s].op == "sigmoid" and g[s].inputs[0] == x:
            _replace(g, node, "silu", (x,))
            return True
    return False


def _is_const(g: Graph, name: str | None, value: float, rtol: float = 0.0) -> bool:
    """``name`` is a constant parameter equal to ``value`` everywhere (up to ``rtol``)."""
    if name is None or g[name].op != "param":
        return False
    t = g.tensor_of(g[name])
    return t.numel() >= 1 and bool(((t - value).abs() <= rtol * abs(value)).all())


def _is_one(g: Graph, name: str | None) -> bool:
    return _is_const(g, name, 1.0)


def _plus_one(g: Graph, name: str, op: str) -> str | None:
    """``y`` when ``name`` is ``1 + y`` with ``y`` an ``op`` node (``add`` either way round, or
    ``scale_shift(y, None, 1)``)."""
    d = g[name]
    if d.op == "add":
        for p, c in (d.inputs, d.inputs[::-1]):
            if p is not None and g[p].op == op and _is_one(g, c):
                return p
    if d.op == "scale_shift" and d.inputs[1] is None and g[d.inputs[0]].op == op and _is_one(g, d.inputs[2]):
        return d.inputs[0]
    return None


def _one_plus_abs_of(g: Graph, name: str) -> str | None:
    """``x`` when ``name`` is ``1 + |x|``."""
    p = _plus_one(g, name, "abs")
    return None if p is None else g[p].inputs[0]


@rewrite("mul")
def fuse_softsign(g: Graph, node: Node, users) -> bool:
    """``x * reciprocal(1 + |x|)`` → ``softsign(x)`` (how ``F.softsign`` traces: a division)."""
    a, b = node.inputs
    for x, r in ((a, b), (b, a)):
        if x is not None and r is not None and g[r].op == "reciprocal" and _one_plus_abs_of(g, g[r].inputs[0]) == x:
            _replace(g, node, "softsign", (x,))
            return True
    return False


@rewrite("mul")
def fuse_gelu(g: Graph, node: Node, users) -> bool:
    """``x * (1 + erf(x / sqrt(2)))`` → ``2 * gelu(x)`` (how ONNX before opset 20 writes GELU)."""
    a, b = node.inputs
    for x, t in ((a, b), (b, a)):
        if x is None or t is None:
            continue
        e = _plus_one(g, t, "erf")
        z = None if e is None else g[g[e].inputs[0]]
        if z is None or z.op not in ("scale_shift", "mul") or z.inputs[0] != x:
            continue
        if z.op == "scale_shift" and z.inputs[2] is not None:
            continue
        if not _is_const(g, z.inputs[1], 2 ** -0.5, rtol=1e-6):
            continue
        gelu = g.insert_before(node.name, Node(g.fresh_name(node.name + "_gelu"), "gelu", (x,),
                                                {"approximate": "none"}, node.shape, node.batched, node.source))
        two = g.add_tensor("two", torch.tensor(2.0)).name
        g.nodes = {two: g.nodes.pop(two), **g.nodes}  # keep topological order
        _replace(g, node, "scale_shift", (gelu.name, two, None))
        return True
    return False
