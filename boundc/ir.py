"""The boundc intermediate representation: a small, closed vocabulary of ops.

Both frontends (PyTorch, ONNX) lower onto this IR; every analysis pass and bound
rule downstream sees only IR ops.  The vocabulary itself — what each op computes,
its attributes and traits — is the op table ``boundc.passes.rules.ops.OPS``.  A :class:`Graph` is a list of :class:`Node`
objects in topological order.  Values are referred to by node name.

Conventions
-----------
* A node is *batched* when its value carries the batch as dimension 0 (it is
  derived from the input).  ``shape`` is the shape seen while tracing the example,
  batch included.  Shape-like attributes of batched nodes (``reshape.shape``)
  use ``-1`` for the batch dimension.
* Parameters are ``param`` nodes whose ``attrs["target"]`` names a tensor in
  ``Graph.tensors``; those tensors are the *live* tensors of the source model
  (never copies), so training the model moves the bounds.
* ``perturbed`` is filled in by the perturbation analysis: it is true exactly for
  nodes whose value depends on the perturbed input.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Node:
    """One operation of the IR.

    ``inputs`` holds node names (or ``None`` for an absent optional input),
    ``attrs`` plain Python values (ints, floats, tuples, strings), ``source`` the
    location in the user's model (module path, ONNX node name, file:line) that
    every error message about this node names.
    """

    name: str
    op: str
    inputs: tuple[str | None, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)
    shape: tuple[int, ...] = ()
    batched: bool = False
    source: str = ""
    perturbed: bool = False

    def where(self) -> str:
        """A short description of this node for error messages."""
        src = f" ({self.source})" if self.source else ""
        return f"node '{self.name}' [{self.op}]{src}"


class Graph:
    """Nodes in topological order plus the live tensors that ``param`` nodes name."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.outputs: list[str] = []
        self.tensors: dict[str, torch.Tensor] = {}
        #: The source ``nn.Module`` whose tensors are referenced as ``model.<path>``
        #: targets (None for ONNX graphs); the bound network holds it as a submodule.
        self.module: torch.nn.Module | None = None

    # -- construction -------------------------------------------------------
    def add(self, node: Node) -> Node:
        """Append ``node`` (its inputs must already be in the graph)."""
        if node.name in self.nodes:
            raise ValueError(f"duplicate node name {node.name!r}")
        for i in node.inputs:
            if i is not None and i not in self.nodes:
                raise ValueError(f"{node.where()} uses unknown value {i!r}")
        self.nodes[node.name] = node
        return node

    def fresh_name(self, base: str) -> str:
        """A node name derived from ``base`` that is not used yet."""
        name, k = base, 1
        while name in self.nodes or name in self.tensors:
            name, k = f"{base}_{k}", k + 1
        return name

    def add_tensor(self, base: str, tensor: torch.Tensor, source: str = "") -> Node:
        """Register a (live) tensor and return the ``param`` node that reads it."""
        name = self.fresh_name(base)
        self.tensors[name] = tensor
        return self.add(Node(name, "param", attrs={"target": name}, shape=tuple(tensor.shape), source=source))

    # -- queries ------------------------------------------------------------
    def __iter__(self) -> Iterator[Node]:
        return iter(list(self.nodes.values()))

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def input(self) -> Node:
        """The perturbed input node."""
        for n in self.nodes.values():
            if n.op == "input":
                return n
        raise ValueError("graph has no input node")

    @property
    def output(self) -> Node:
        """The single output node."""
        if len(self.outputs) != 1:
            raise ValueError(f"boundc supports one network output, this graph has {len(self.outputs)}")
        return self.nodes[self.outputs[0]]

    def users(self) -> dict[str, list[str]]:
        """For each node name, the names of the nodes that read it."""
        users: dict[str, list[str]] = {name: [] for name in self.nodes}
        for n in self.nodes.values():
            for i in n.inputs:
                if i is not None:
                    users[i].append(n.name)
        return users

    def float_dtype(self, default: torch.dtype) -> torch.dtype:
        """The dtype of the graph's floating-point tensors (``default`` when it has none)."""
        return next((t.dtype for t in self.tensors.values() if t.is_floating_point()), default)

    def tensor_of(self, node: Node | str) -> torch.Tensor:
        """The live tensor behind a ``param`` node."""
        node = self.nodes[node] if isinstance(node, str) else node
        return self.tensors[node.attrs["target"]]

    # -- rewriting ----------------------------------------------------------
    def replace_uses(self, old: str, new: str) -> None:
        """Make every reader of ``old`` (and the outputs) read ``new`` instead."""
        for n in self.nodes.values():
            if old in n.inputs:
                n.inputs = tuple(new if i == old else i for i in n.inputs)
        self.outputs = [new if o == old else o for o in self.outputs]

    def insert_before(self, anchor: str, node: Node) -> Node:
        """Insert ``node`` just before ``anchor`` in the topological order."""
        if node.name in self.nodes:
            raise ValueError(f"duplicate node name {node.name!r}")
        items = list(self.nodes.items())
        k = [name for name, _ in items].index(anchor)
        self.nodes = dict(items[:k] + [(node.name, node)] + items[k:])
        return node

    def remove_dead(self) -> None:
        """Drop nodes that no output depends on (and tensors nobody reads)."""
        live: set[str] = set()
        stack = list(self.outputs)
        while stack:
            name = stack.pop()
            if name in live:
                continue
            live.add(name)
            stack.extend(i for i in self.nodes[name].inputs if i is not None)
        self.nodes = {k: v for k, v in self.nodes.items() if k in live or v.op == "input"}
        used = {n.attrs["target"] for n in self.nodes.values() if n.op == "param"}
        self.tensors = {k: v for k, v in self.tensors.items() if k in used}

    def copy(self) -> Graph:
        """A structural copy: new Node objects, the *same* live tensors."""
        g = Graph()
        for n in self.nodes.values():
            g.nodes[n.name] = Node(n.name, n.op, n.inputs, dict(n.attrs), n.shape, n.batched, n.source, n.perturbed)
        g.outputs = list(self.outputs)
        g.tensors = dict(self.tensors)
        g.module = self.module
        return g

    def table(self) -> str:
        """A per-node table: name, op, shape, perturbed/constant, source."""
        rows = [("node", "op", "shape", "value", "source")]
        for n in self.nodes.values():
            kind = "perturbed" if n.perturbed else ("param" if n.op == "param" else "constant")
            rows.append((n.name, n.op, "x".join(map(str, n.shape)) or "scalar", kind, n.source))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)
