"""The ONNX lowering machinery: the registry of per-op lowerings and the :class:`Lowerer`.

A lowering is a function ``fn(lw, node)`` registered with :func:`lowering` for one or
more ONNX op types; it reads the node through the :class:`Lowerer` helpers and returns
one value per node output.  The lowerings themselves live in
:mod:`boundc.frontends.onnx_ops`; :mod:`boundc.frontends.onnx` loads a model and drives
the lowerer.  (This module imports neither, so there is no import cycle.)

The graph is traced while it is built: every new node is a step of an
:class:`~boundc.interpreter.Interpreter` (``"eval"``) on an example input of
batch :data:`TRACE_BATCH`, whose values (``Lowerer.example``) give the shapes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from boundc.errors import BoundcError, UnsupportedOpError
from boundc.interpreter import Interpreter
from boundc.ir import Graph, Node

try:
    import onnx
    from onnx import numpy_helper
except ImportError as _err:  # pragma: no cover - onnx is a dependency of this frontend
    raise ImportError("the ONNX frontend needs the 'onnx' package (pip install onnx)") from _err

#: Batch size of the example the graph is traced with (2: tells batch from size-1 dims).
TRACE_BATCH = 2

Lowering = Callable[["Lowerer", Any], "list[Any] | None"]
_LOWERINGS: dict[str, Lowering] = {}


class Unsupported(Exception):
    """Raised inside a lowering: this node (with these attributes/inputs) cannot be lowered."""


def lowering(*op_types: str) -> Callable[[Lowering], Lowering]:
    """Register a lowering for ONNX op types; it returns one value per node output."""

    def register(fn: Lowering) -> Lowering:
        for name in op_types:
            _LOWERINGS[name] = fn
        return fn

    return register


def supported_ops() -> list[str]:
    """ONNX op types the frontend can lower."""
    return sorted(_LOWERINGS)

def _ident(name: str) -> str:
    name = re.sub(r"\W", "_", name).strip("_") or "t"
    return name if not name[0].isdigit() else "t_" + name


def _to_torch(arr: np.ndarray) -> torch.Tensor:
    """Numpy → torch; floating tensors take the default dtype."""
    t = torch.from_numpy(np.array(arr, copy=True))
    if t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t


class Value:
    """A batched ONNX value: its IR node name and ONNX rank."""

    __slots__ = ("name", "rank")

    def __init__(self, name: str, rank: int) -> None:
        self.name = name
        self.rank = rank


class Lowerer:
    """State while lowering one ONNX graph."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.proto = proto
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.g = Graph()
        self.env: dict[str, Value | torch.Tensor | None] = {}
        #: The shape trace: the eval walk of the graph as it grows, on a random input of batch TRACE_BATCH.
        self.trace = Interpreter(self.g, "eval", {})
        self.example: dict[str, torch.Tensor] = self.trace.values  # IR node name -> traced value
        self.problems: list[str] = []
        self.offset = 0
        self.node: Any = None  # the ONNX node being lowered

    # -- helpers used by lowerings ---------------------------------------------------
    @property
    def source(self) -> str:
        """``ONNX node 'name' (OpType)`` of the node being lowered."""
        return f"ONNX node '{self.node.name}' ({self.node.op_type})"

    def attr(self, name: str, default: Any = None) -> Any:
        """An attribute of the current node as a Python value."""
        for a in self.node.attribute:
            if a.name == name:
                v = onnx.helper.get_attribute_value(a)
                if isinstance(v, bytes):
                    return v.decode()
                if isinstance(v, onnx.TensorProto):
                    return _to_torch(numpy_helper.to_array(v))
                if isinstance(v, list):
                    return [x.decode() if isinstance(x, bytes) else x for x in v]
                return v
        return default

    def inp(self, i: int) -> Value | torch.Tensor | None:
        """The i-th input of the current node (``None`` when absent)."""
        names = self.node.input
        if i >= len(names) or names[i] == "":
            return None
        return self.env[names[i]]

    def const(self, i: int, what: str = "input") -> torch.Tensor | None:
        """The i-th input, which must be constant."""
        v = self.inp(i)
        if isinstance(v, Value):
            raise Unsupported(f"input-dependent {what} (input {i})")
        return v

    def batched(self, i: int) -> Value:
        """The i-th input, which must be batched."""
        v = self.inp(i)
        if not isinstance(v, Value):
            raise Unsupported(f"expected an input-dependent value at input {i}")
        return v

    def param(self, tensor: torch.Tensor, base: str = "const") -> str:
        """A ``param`` node for a constant tensor."""
        if tensor.dtype == torch.bool or not tensor.is_floating_point():
            tensor = tensor.to(torch.get_default_dtype())
        node = self.g.add_tensor(_ident(f"{self.node.name or self.node.op_type}_{base}"), tensor, self.source)
        self.trace.step(node)
        return node.name

    def operand(self, v: Value | torch.Tensor | None) -> str | None:
        """IR name of a value (constants become ``param`` nodes)."""
        if v is None:
            return None
        return v.name if isinstance(v, Value) else self.param(v)

    def emit(self, op: str, inputs: tuple, rank: int | None = None, **attrs: Any) -> Value:
        """Add a batched IR node, evaluate it on the example (a step of the trace) and return its value."""
        base = _ident(self.node.name or self.node.op_type)
        node = Node(self.g.fresh_name(base), op, tuple(inputs), attrs, (), True, self.source)
        with torch.no_grad():
            out = self.trace.step(node)
        if out.dim() == 0 or out.shape[0] != TRACE_BATCH:
            del self.example[node.name]
            raise Unsupported(f"the result mixes the batch dimension into others (shape {list(out.shape)})")
        node.shape = tuple(out.shape)
        self.g.add(node)
        return Value(node.name, out.dim() - self.offset if rank is None else rank)

    def shape(self, v: Value) -> list[int]:
        """The ONNX-view shape of a batched value (batch written as 1 when it is dim 0)."""
        s = list(self.example[v.name].shape)
        return s[1:] if self.offset else [1] + s[1:]

    def ir_axis(self, axis: int, rank: int) -> int:
        """The IR axis of ONNX axis ``axis`` of a batched value of ONNX rank ``rank``."""
        a = axis + rank if axis < 0 else axis
        if not 0 <= a < rank:
            raise Unsupported(f"axis {axis} out of range for rank {rank}")
        if a == 0 and not self.offset:
            raise Unsupported("an operation along the batch dimension")
        return a + self.offset

    def reshape(self, v: Value, onnx_shape: list[int]) -> Value:
        """Reshape a batched value to a fully known ONNX shape."""
        per = list(onnx_shape) if self.offset else list(onnx_shape[1:])
        if not self.offset and (not onnx_shape or onnx_shape[0] != 1):
            raise Unsupported(f"a reshape to {onnx_shape} that mixes the batch dimension")
        total = self.example[v.name][0].numel()
        if math.prod(per) != total:
            raise Unsupported(f"a reshape to {onnx_shape} that mixes the batch dimension")
        return self.emit("reshape", (v.name,), rank=len(onnx_shape), shape=(-1, *per))

    # -- driver ----------------------------------------------------------------------
    def run(self) -> Graph:
        """Lower the whole ONNX graph; every op without a lowering is reported in one error."""
        graph = self.proto.graph
        inits = {t.name for t in graph.initializer}
        for t in graph.initializer:
            self.env[t.name] = _to_torch(numpy_helper.to_array(t))
        inputs = [i for i in graph.input if i.name not in inits]
        if not inputs:
            raise BoundcError("the ONNX model has no input")
        if len(inputs) == 1:
            self._input(inputs[0])
        else:
            self._inputs(inputs)
        for k, node in enumerate(graph.node):
            if not node.name:
                node.name = f"{node.op_type}_{k}"
            self.node = node
            self._lower(node)
        if self.problems:
            raise UnsupportedOpError(self.problems)
        outs = []
        for o in graph.output:
            v = self.env.get(o.name)
            if not isinstance(v, Value):
                raise BoundcError(f"ONNX output '{o.name}' does not depend on the input")
            outs.append(v)
        self.g.outputs = [outs[0].name] if len(outs) == 1 else [self._concat_outputs(outs)]
        return self.g

    def _inputs(self, vis: list) -> None:
        """Several ONNX inputs: one flat IR input ``x`` (B, N), sliced and reshaped into each of them in order
        (VNN-LIB numbers ``X_i`` over all inputs concatenated)."""
        shapes, offsets = [], set()
        for vi in vis:
            shape = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
            if not shape:
                raise BoundcError(f"ONNX input '{vi.name}' is a scalar; boundc needs tensor inputs")
            batched = len(shape) >= 2 and shape[0] in (None, 1)
            per = shape[1:] if batched else shape
            if any(d is None or d <= 0 for d in per):
                raise BoundcError(f"ONNX input '{vi.name}' has symbolic non-batch dimensions {shape}")
            offsets.add(0 if batched else 1)
            shapes.append((shape, per))
        if len(offsets) != 1:
            raise BoundcError("ONNX inputs mix batched (leading dimension 1 or symbolic) and unbatched tensors: "
                              f"{[s for s, _ in shapes]}")
        self.offset = offsets.pop()
        total = sum(math.prod(per) for _, per in shapes)
        names = ", ".join(f"'{vi.name}'" for vi in vis)
        x = Node("x", "input", shape=(TRACE_BATCH, total), batched=True,
                 source=f"ONNX inputs {names} (flattened, concatenated)")
        self.g.add(x)
        self.trace.seeds["input"] = torch.rand(TRACE_BATCH, total, generator=torch.Generator().manual_seed(0))
        self.trace.step(x)
        start = 0
        for vi, (shape, per) in zip(vis, shapes):
            self.node = onnx.helper.make_node("Identity", [], [], name=f"input_{vi.name}")
            n = math.prod(per)
            part = self.emit("gather", ("x",), rank=2, dim=1, index=tuple(range(start, start + n)))
            start += n
            self.env[vi.name] = self.emit("reshape", (part.name,), rank=len(shape), shape=(-1, *per))

    def _concat_outputs(self, outs: list[Value]) -> str:
        """Several ONNX outputs: one IR output, the concatenation of the flattened outputs in order."""
        self.node = onnx.helper.make_node("Concat", [], [], name="outputs")
        flat = []
        for v in outs:
            n = self.example[v.name][0].numel()
            flat.append(v.name if self.example[v.name].dim() == 2 else
                        self.emit("reshape", (v.name,), rank=2, shape=(-1, n)).name)
        return self.emit("concat", tuple(flat), rank=2, dim=1).name

    def _input(self, vi: Any) -> None:
        dims = vi.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if not shape:
            raise BoundcError(f"ONNX input '{vi.name}' is a scalar; boundc needs a tensor input")
        if len(shape) >= 2 and shape[0] in (None, 1):
            self.offset, per = 0, shape[1:]
        else:
            self.offset, per = 1, shape
        if any(d is None or d <= 0 for d in per):
            raise BoundcError(f"ONNX input '{vi.name}' has symbolic non-batch dimensions {shape}")
        x = Node("x", "input", shape=(TRACE_BATCH, *per), batched=True, source=f"ONNX input '{vi.name}'")
        self.g.add(x)
        self.trace.seeds["input"] = torch.rand(TRACE_BATCH, *per, generator=torch.Generator().manual_seed(0))
        self.trace.step(x)
        self.env[vi.name] = Value("x", len(shape))

    def _lower(self, node: Any) -> None:
        ins = [self.env.get(i) if i else None for i in node.input]
        if any(i and i not in self.env for i in node.input):
            raise BoundcError(f"ONNX node '{node.name}' ({node.op_type}) reads undefined value "
                              f"{[i for i in node.input if i and i not in self.env]}")
        if node.domain not in ("", "ai.onnx"):
            self.problems.append(f"{node.domain}.{node.op_type} at ONNX node '{node.name}'")
            self._poison(node)
            return
        poisoned = any(i is None and n for i, n in zip(ins, node.input))
        fn = _LOWERINGS.get(node.op_type)
        if fn is None and (poisoned or any(isinstance(v, Value) for v in ins)):
            # no lowering: reported even downstream of another unsupported node, so one error lists every op
            self.problems.append(f"{node.op_type} at ONNX node '{node.name}'")
            self._poison(node)
            return
        if poisoned:
            self._poison(node)  # depends on a node already reported; its own lowering cannot run
            return
        try:
            if fn is None:
                outs = _fold_reference(node, ins, self.opset)
            else:
                outs = fn(self, node)
        except Unsupported as why:
            self.problems.append(f"{node.op_type} at ONNX node '{node.name}': {why}")
            self._poison(node)
            return
        if not isinstance(outs, (list, tuple)):
            outs = [outs]
        for name, val in zip(node.output, outs):
            if name:
                self.env[name] = val
        for name in node.output[len(outs):]:
            if name:
                self.env[name] = None

    def _poison(self, node: Any) -> None:
        for name in node.output:
            if name:
                self.env[name] = None


def _fold_reference(node: Any, ins: list, opset: int) -> list[torch.Tensor]:
    """Evaluate a node with only constant inputs through ``onnx.reference``."""
    from onnx.reference import ReferenceEvaluator

    names = [f"in{k}" for k in range(len(ins))]
    inputs = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names]
    outputs = [onnx.helper.make_tensor_value_info(f"out{k}", onnx.TensorProto.FLOAT, None)
               for k in range(len(node.output))]
    copy = onnx.helper.make_node(node.op_type, names, [o.name for o in outputs], domain=node.domain)
    copy.attribute.extend(node.attribute)
    graph = onnx.helper.make_graph([copy], "fold", inputs, outputs)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    try:
        res = ReferenceEvaluator(model).run(None, {n: v.numpy() for n, v in zip(names, ins)})
    except Exception as err:  # noqa: BLE001 - no lowering and no reference implementation
        raise Unsupported(f"constant folding failed ({type(err).__name__}: {err})") from err
    return [_to_torch(np.asarray(r)) for r in res]
