"""PyTorch frontend: ``torch.export`` → boundc IR.

The model is exported (non-strict) at the example input; each ATen op of the
exported graph is lowered by a function registered with :func:`lowering`.
Parameters and buffers become ``param`` nodes reading the *live* tensors of the
model.  Every op without a lowering is collected and reported in one
:class:`~boundc.errors.UnsupportedOpError`.
"""

from __future__ import annotations

import operator
import re
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.export.graph_signature import InputKind
from torch.fx.operator_schemas import normalize_function

from boundc.errors import BoundcError, UnsupportedOpError
from boundc.ir import Graph, Node

Lowering = Callable[["_Lowerer", fx.Node, dict[str, Any]], str | None]
_LOWERINGS: dict[str, Lowering] = {}


def lowering(*aten_names: str) -> Callable[[Lowering], Lowering]:
    """Register a lowering for ATen ops by packet name (``"conv2d"``, ``"relu_"``…)."""

    def register(fn: Lowering) -> Lowering:
        for name in aten_names:
            _LOWERINGS[name] = fn
        return fn

    return register


def _source(node: fx.Node) -> str:
    """``module 'path' (Type), file.py:line`` for a traced node."""
    parts = []
    stack = node.meta.get("nn_module_stack")
    if stack:
        path, typ = list(stack.values())[-1]
        typ = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
        parts.append(f"module '{path or '<root>'}' ({typ.rsplit('.', 1)[-1]})")
    trace = node.meta.get("stack_trace")
    if trace:  # the innermost frame that is the user's code, not torch's
        frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
        user = [(f, ln) for f, ln in frames if "/torch/" not in f and "/boundc/" not in f]
        if user:
            parts.append(f"{user[-1][0].rsplit('/', 1)[-1]}:{user[-1][1]}")
    return ", ".join(parts)


class _Lowerer:
    """State while lowering one exported graph."""

    def __init__(self, model: nn.Module, ep: torch.export.ExportedProgram, batch: int) -> None:
        self.model = model
        self.ep = ep
        self.batch = batch
        self.g = Graph()
        self.values: dict[str, str | None] = {}  # fx node name -> IR node name
        self.problems: list[str] = []

    # -- helpers used by lowerings --------------------------------------------
    def value(self, arg: Any, like: fx.Node | None = None) -> str | None:
        """IR name for an fx argument; Python numbers become constant tensors."""
        if arg is None:
            return None
        if isinstance(arg, fx.Node):
            return self.values[arg.name]
        if isinstance(arg, (int, float, bool)):
            dtype = torch.get_default_dtype()
            return self.g.add_tensor("const", torch.tensor(float(arg), dtype=dtype)).name
        raise BoundcError(f"unexpected argument {arg!r} at {self._where(like)}")

    def emit(self, fx_node: fx.Node, op: str, inputs: tuple, **attrs: Any) -> str:
        """Add an IR node for ``fx_node`` (shape and batch taken from the trace)."""
        val = fx_node.meta.get("val")
        shape = tuple(val.shape) if isinstance(val, torch.Tensor) else ()
        batched = any(i is not None and self.g[i].batched for i in inputs)
        node = Node(self.g.fresh_name(fx_node.name), op, tuple(inputs), attrs, shape, batched, _source(fx_node))
        if batched and (not shape or shape[0] != self.batch):
            raise BoundcError(f"{node.where()} mixes the batch dimension into others (shape {list(shape)}, "
                              f"batch {self.batch}); boundc needs dimension 0 to stay the batch")
        return self.g.add(node).name

    def batched_shape(self, fx_node: fx.Node) -> tuple[int, ...]:
        """The traced output shape with the batch dimension written as -1."""
        shape = tuple(fx_node.meta["val"].shape)
        return (-1,) + shape[1:]

    def is_batched(self, arg: Any) -> bool:
        """Whether an fx argument is a batched (input-derived) value."""
        return isinstance(arg, fx.Node) and self.values.get(arg.name) is not None and self.g[self.values[arg.name]].batched

    def _where(self, node: fx.Node | None) -> str:
        return "?" if node is None else f"node '{node.name}' ({_source(node)})"

    # -- driver -----------------------------------------------------------------
    def run(self) -> Graph:
        sig = self.ep.graph_signature
        specs = {s.arg.name: s for s in sig.input_specs}
        for node in self.ep.graph.nodes:
            if node.op == "placeholder":
                self._placeholder(node, specs[node.name])
            elif node.op == "call_function":
                self._call(node)
            elif node.op == "output":
                outs = [a for a in node.args[0] if isinstance(a, fx.Node)]
                user_outs = [s.arg.name for s in sig.output_specs if s.kind.name == "USER_OUTPUT"]
                self.g.outputs = [self.values[a.name] for a in outs if a.name in user_outs]
        if self.problems:
            raise UnsupportedOpError(self.problems)
        return self.g

    def _placeholder(self, node: fx.Node, spec: Any) -> None:
        if spec.kind == InputKind.USER_INPUT:
            shape = tuple(node.meta["val"].shape)
            self.values[node.name] = self.g.add(Node("x", "input", shape=shape, batched=True, source="model input")).name
            return
        target = spec.target
        if spec.kind == InputKind.PARAMETER:
            tensor = self.model.get_parameter(target)
        elif spec.kind == InputKind.BUFFER:
            tensor = self.model.get_buffer(target)
        else:  # lifted constant tensors
            tensor = self.ep.constants[target]
        name = self.g.fresh_name(target.replace(".", "_"))
        self.g.tensors["model." + target] = tensor
        self.values[node.name] = self.g.add(Node(name, "param", attrs={"target": "model." + target},
                                                 shape=tuple(tensor.shape), source=f"model.{target}")).name

    def _call(self, node: fx.Node) -> None:
        target = node.target
        if target is operator.getitem:  # (values, indices) results: keep the values
            src, idx = node.args
            self.values[node.name] = self.values[src.name] if idx == 0 else None
            return
        name = getattr(getattr(target, "overloadpacket", None), "__name__", None) or getattr(target, "__name__", str(target))
        fn = _LOWERINGS.get(name)
        inputs = [a for a in node.all_input_nodes if a.name in self.values]
        if fn is None:
            if inputs or not node.all_input_nodes:
                self.problems.append(f"{target} at node '{node.name}' ({_source(node)})")
            self.values[node.name] = None
            return
        if any(self.values[a.name] is None for a in inputs):
            self.values[node.name] = None  # downstream of an op already reported
            return
        try:
            kwargs = normalize_function(target, node.args, node.kwargs, normalize_to_only_use_kwargs=True).kwargs
        except Exception:  # noqa: BLE001 - ops without a schema keep their raw arguments
            kwargs = {**{f"arg{i}": a for i, a in enumerate(node.args)}, **node.kwargs}
        self.values[node.name] = fn(self, node, kwargs)


def from_torch(model: nn.Module, example: torch.Tensor) -> Graph:
    """Trace ``model`` at ``example`` (batch first) and lower it to the IR."""
    if not isinstance(example, torch.Tensor):
        raise BoundcError(f"example input must be a tensor, got {type(example).__name__}")
    if example.dim() == 0:
        raise BoundcError("example input must have a batch dimension")
    if example.shape[0] == 1:  # batch 1 cannot be told apart from a size-1 dimension
        example = example.expand(2, *example.shape[1:]).clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ep = torch.export.export(model, (example,), strict=False)
        except Exception as err:  # noqa: BLE001 - report torch's reason with ours
            raise BoundcError(f"torch.export could not trace the model: {type(err).__name__}: {err}") from err
    g = _Lowerer(model, ep, example.shape[0]).run()
    g.module = model
    return g


# -- lowerings ------------------------------------------------------------------------

def _x(lw: _Lowerer, kw: dict, key: str = "input") -> str:
    return lw.value(kw[key])


@lowering("linear")
def _linear(lw, node, kw):
    return lw.emit(node, "linear", (_x(lw, kw), lw.value(kw["weight"]), lw.value(kw.get("bias"))))


@lowering("conv1d", "conv2d", "conv3d", "convolution", "_convolution")
def _conv(lw, node, kw):
    if kw.get("transposed"):
        lw.problems.append(f"transposed convolution at node '{node.name}' ({_source(node)})")
        return None
    weight = kw["weight"].meta["val"]
    nd = weight.dim() - 2
    padding = kw.get("padding", 0)
    if isinstance(padding, str):
        if padding == "valid":
            padding = [0] * nd
        else:  # 'same': symmetric when the total padding is even
            dil = _tuple(kw.get("dilation", 1), nd)
            total = [d * (k - 1) for d, k in zip(dil, weight.shape[2:])]
            if any(t % 2 for t in total):
                lw.problems.append(f"padding='same' with an even kernel at node '{node.name}' ({_source(node)})")
                return None
            padding = [t // 2 for t in total]
    return lw.emit(node, "conv", (_x(lw, kw), lw.value(kw["weight"]), lw.value(kw.get("bias"))),
                   stride=_tuple(kw.get("stride", 1), nd), padding=_tuple(padding, nd),
                   dilation=_tuple(kw.get("dilation", 1), nd), groups=int(kw.get("groups", 1)))


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * n
    v = tuple(int(a) for a in v)
    return v * n if len(v) == 1 else v


def _binary(lw, node, kw, op: str):
    a, b = kw["input"], kw["other"]
    alpha = kw.get("alpha", 1)
    if alpha != 1:  # x + alpha * y
        if not isinstance(b, fx.Node):
            b = b * alpha
        else:
            scaled = lw.g.add(Node(lw.g.fresh_name(node.name + "_alpha"), "scale_shift",
                                   (lw.value(b), lw.value(alpha), None), shape=tuple(b.meta["val"].shape),
                                   batched=lw.is_batched(b), source=_source(node)))
            return lw.emit(node, op, (lw.value(a), scaled.name))
    return lw.emit(node, op, (lw.value(a), lw.value(b)))


@lowering("add", "add_")
def _add(lw, node, kw):
    return _binary(lw, node, kw, "add")


@lowering("sub", "sub_")
def _sub(lw, node, kw):
    return _binary(lw, node, kw, "sub")


@lowering("rsub")
def _rsub(lw, node, kw):
    return lw.emit(node, "sub", (lw.value(kw["other"]), lw.value(kw["input"])))


@lowering("mul", "mul_")
def _mul(lw, node, kw):
    return lw.emit(node, "mul", (lw.value(kw["input"]), lw.value(kw["other"])))


@lowering("div", "div_")
def _div(lw, node, kw):
    if kw.get("rounding_mode") is not None:
        lw.problems.append(f"division with rounding at node '{node.name}' ({_source(node)})")
        return None
    other = kw["other"]
    if isinstance(other, (int, float)):
        return lw.emit(node, "mul", (lw.value(kw["input"]), lw.value(1.0 / other)))
    # by an input-dependent value: only ``x / (1 + |x|)`` (softsign) is supported; canonicalisation
    # recognises it, and a reciprocal of a perturbed value is reported at compile time otherwise
    recip = lw.g.add(Node(lw.g.fresh_name(node.name + "_recip"), "reciprocal", (lw.value(other),),
                          shape=tuple(other.meta["val"].shape), batched=lw.is_batched(other), source=_source(node)))
    return lw.emit(node, "mul", (lw.value(kw["input"]), recip.name))


@lowering("neg")
def _neg(lw, node, kw):
    return lw.emit(node, "scale_shift", (lw.value(kw["input"]), lw.value(-1.0), None))


def _unary(op: str, **fixed: Any) -> Lowering:
    def lower(lw, node, kw):
        return lw.emit(node, op, (lw.value(kw["input"]),), **fixed)
    return lower


for _name, _op in [("relu", "relu"), ("relu_", "relu"), ("sigmoid", "sigmoid"), ("sigmoid_", "sigmoid"),
                   ("tanh", "tanh"), ("tanh_", "tanh"), ("silu", "silu"), ("silu_", "silu"), ("abs", "abs"),
                   ("abs_", "abs"), ("erf", "erf"), ("erf_", "erf")]:
    lowering(_name)(_unary(_op))

for _name in ("dropout", "dropout_", "feature_dropout", "alpha_dropout", "clone", "contiguous", "alias",
              "detach", "lift_fresh_copy"):
    lowering(_name)(_unary("identity"))


@lowering("gelu", "gelu_")
def _gelu(lw, node, kw):
    return lw.emit(node, "gelu", (lw.value(kw["input"]),), approximate=str(kw.get("approximate", "none")))


@lowering("leaky_relu", "leaky_relu_")
def _leaky_relu(lw, node, kw):
    return lw.emit(node, "leaky_relu", (lw.value(kw["input"]),), negative_slope=float(kw.get("negative_slope", 0.01)))


@lowering("hardtanh", "hardtanh_", "clamp", "clamp_", "clip", "relu6")
def _hardtanh(lw, node, kw):
    name = node.target.overloadpacket.__name__
    if name.startswith("hardtanh"):
        lo, hi = kw.get("min_val", -1.0), kw.get("max_val", 1.0)
    elif name == "relu6":
        lo, hi = 0.0, 6.0
    else:
        lo, hi = kw.get("min"), kw.get("max")
        if isinstance(lo, fx.Node) or isinstance(hi, fx.Node):
            lw.problems.append(f"clamp with tensor bounds at node '{node.name}' ({_source(node)})")
            return None
    lo = float("-inf") if lo is None else float(lo)
    hi = float("inf") if hi is None else float(hi)
    return lw.emit(node, "hardtanh", (lw.value(kw["input"]),), min_val=lo, max_val=hi)


@lowering("softplus")
def _softplus(lw, node, kw):
    return lw.emit(node, "softplus", (lw.value(kw["input"]),), beta=float(kw.get("beta", 1.0)),
                   threshold=float(kw.get("threshold", 20.0)))


@lowering("flatten", "view", "reshape", "_unsafe_view", "squeeze", "unsqueeze", "expand_dims")
def _reshape(lw, node, kw):
    x = kw["input"]
    if not lw.is_batched(x):
        return lw.emit(node, "reshape", (lw.value(x),), shape=tuple(node.meta["val"].shape))
    return lw.emit(node, "reshape", (lw.value(x),), shape=lw.batched_shape(node))


@lowering("permute")
def _permute(lw, node, kw):
    return lw.emit(node, "permute", (lw.value(kw["input"]),), dims=tuple(int(d) for d in kw["dims"]))


@lowering("transpose", "t", "swapaxes")
def _transpose(lw, node, kw):
    rank = len(node.meta["val"].shape)
    if rank < 2:
        return lw.emit(node, "identity", (lw.value(kw["input"]),))
    d0, d1 = (kw.get("dim0", 0), kw.get("dim1", 1)) if "dim0" in kw else (0, 1)
    dims = list(range(rank))
    dims[d0 % rank], dims[d1 % rank] = dims[d1 % rank], dims[d0 % rank]
    return lw.emit(node, "permute", (lw.value(kw["input"]),), dims=tuple(dims))


@lowering("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional",
          "native_batch_norm", "_native_batch_norm_legit")
def _batch_norm(lw, node, kw):
    name = node.target.overloadpacket.__name__
    training = bool(kw.get("training", False)) and name != "_native_batch_norm_legit_no_training"
    ins = (lw.value(kw["input"]), lw.value(kw.get("weight")), lw.value(kw.get("bias")),
           lw.value(kw.get("running_mean")), lw.value(kw.get("running_var")))
    return lw.emit(node, "batch_norm", ins, training=training, eps=float(kw.get("eps", 1e-5)))


@lowering("avg_pool2d")
def _avg_pool2d(lw, node, kw):
    k = _tuple(kw["kernel_size"], 2)
    return lw.emit(node, "avg_pool2d", (lw.value(kw["input"]),), kernel_size=k,
                   stride=_tuple(kw.get("stride") or k, 2), padding=_tuple(kw.get("padding", 0), 2),
                   ceil_mode=bool(kw.get("ceil_mode", False)), count_include_pad=bool(kw.get("count_include_pad", True)),
                   divisor_override=kw.get("divisor_override"))


@lowering("adaptive_avg_pool2d", "_adaptive_avg_pool2d")
def _adaptive_avg_pool2d(lw, node, kw):
    out = tuple(node.meta["val"].shape[-2:])
    return lw.emit(node, "adaptive_avg_pool2d", (lw.value(kw["input"]),), output_size=out)


@lowering("max_pool2d", "max_pool2d_with_indices")
def _max_pool2d(lw, node, kw):
    k = _tuple(kw["kernel_size"], 2)
    return lw.emit(node, "max_pool2d", (lw.value(kw["input"]),), kernel_size=k,
                   stride=_tuple(kw.get("stride") or k, 2), padding=_tuple(kw.get("padding", 0), 2),
                   dilation=_tuple(kw.get("dilation", 1), 2), ceil_mode=bool(kw.get("ceil_mode", False)))


@lowering("cat", "concat", "concatenate")
def _cat(lw, node, kw):
    xs = kw.get("tensors")
    rank = len(node.meta["val"].shape)
    return lw.emit(node, "concat", tuple(lw.value(x) for x in xs), dim=int(kw.get("dim", 0)) % rank)


@lowering("pad", "constant_pad_nd")
def _pad(lw, node, kw):
    mode = kw.get("mode", "constant")
    value = kw.get("value")
    return lw.emit(node, "pad", (lw.value(kw["input"]),), pad=tuple(int(p) for p in kw["pad"]), mode=mode,
                   value=0.0 if value is None else float(value))


@lowering("mean")
def _mean(lw, node, kw):
    # x.mean((2, 3)) over spatial dims == global average pooling
    dims = kw.get("dim")
    shape = tuple(kw["input"].meta["val"].shape)
    if dims is not None and len(shape) == 4 and sorted(d % 4 for d in dims) == [2, 3]:
        out = lw.emit(node, "adaptive_avg_pool2d", (lw.value(kw["input"]),), output_size=(1, 1))
        if not kw.get("keepdim", False):
            reshaped = Node(lw.g.fresh_name(node.name + "_squeeze"), "reshape", (out,),
                            {"shape": (-1, shape[1])}, (shape[0], shape[1]), True, _source(node))
            lw.g.nodes[out].shape = (shape[0], shape[1], 1, 1)
            return lw.g.add(reshaped).name
        return out
    lw.problems.append(f"mean over dims {dims} at node '{node.name}' ({_source(node)}) "
                       "(only the spatial mean of an NCHW tensor is supported)")
    return None


# -- VNN-COMP coverage: elementwise functions, slices, powers, softmax ----------------------------

for _name, _op in [("sin", "sin"), ("cos", "cos"), ("exp", "exp"), ("sign", "sign"), ("floor", "floor"),
                   ("ceil", "ceil")]:
    lowering(_name)(_unary(_op))


def _side_node(lw: _Lowerer, node: fx.Node, suffix: str, op: str, inputs: tuple, traced: tuple, **attrs: Any) -> str:
    """An extra batched IR node for ``node`` (a lowering that emits several), with an explicit traced shape."""
    return lw.g.add(Node(lw.g.fresh_name(f"{node.name}_{suffix}"), op, inputs, attrs, tuple(traced), True,
                         _source(node))).name


@lowering("slice")
def _slice(lw, node, kw):
    x = kw["input"]
    shape = tuple(x.meta["val"].shape)
    dim = int(kw.get("dim", 0)) % len(shape)
    start, end, step = kw.get("start"), kw.get("end"), int(kw.get("step", 1) or 1)
    index = list(range(*slice(start, end, step).indices(shape[dim])))
    if index == list(range(shape[dim])):
        return lw.emit(node, "identity", (lw.value(x),))
    if dim == 0 and lw.is_batched(x):
        lw.problems.append(f"slicing the batch dimension at node '{node.name}' ({_source(node)})")
        return None
    return lw.emit(node, "gather", (lw.value(x),), dim=dim, index=tuple(index))


@lowering("select")
def _select(lw, node, kw):
    x = kw["input"]
    shape = tuple(x.meta["val"].shape)
    dim = int(kw["dim"]) % len(shape)
    if dim == 0 and lw.is_batched(x):
        lw.problems.append(f"selecting along the batch dimension at node '{node.name}' ({_source(node)})")
        return None
    i = int(kw["index"]) % shape[dim]
    kept = shape[:dim] + (1,) + shape[dim + 1:]
    g = _side_node(lw, node, "gather", "gather", (lw.value(x),), kept, dim=dim, index=(i,))
    return lw.emit(node, "reshape", (g,), shape=lw.batched_shape(node))


@lowering("pow")
def _pow(lw, node, kw):
    e = kw.get("exponent")
    if isinstance(e, (int, float)) and (e == 0.5 or (float(e).is_integer() and e >= 2)):
        return lw.emit(node, "power", (lw.value(kw["input"]),), exponent=e if e == 0.5 else int(e))
    if isinstance(e, (int, float)) and e == 1:
        return lw.emit(node, "identity", (lw.value(kw["input"]),))
    lw.problems.append(f"pow with exponent {e!r} at node '{node.name}' ({_source(node)}) "
                       "(supported: integers >= 1 and 0.5)")
    return None


@lowering("sqrt")
def _sqrt(lw, node, kw):
    return lw.emit(node, "power", (lw.value(kw["input"]),), exponent=0.5)


@lowering("softmax", "_softmax")
def _softmax(lw, node, kw):
    """``softmax(x)_i = 1 / sum_j exp(x_j - x_i)`` along the last dimension (the ONNX lowering's decomposition)."""
    x = kw["input"]
    shape = tuple(x.meta["val"].shape)
    dim = int(kw.get("dim", -1)) % len(shape)
    if dim != len(shape) - 1 or dim == 0:
        lw.problems.append(f"softmax over dimension {dim} (only the last, non-batch one) at node '{node.name}' "
                           f"({_source(node)})")
        return None
    K = shape[-1]
    eye = torch.eye(K, dtype=torch.get_default_dtype())
    diff = lw.g.add_tensor(f"{node.name}_diff", (eye.unsqueeze(0) - eye.unsqueeze(1)).reshape(K * K, K)).name
    d = _side_node(lw, node, "diff", "linear", (lw.value(x), diff, None), shape[:-1] + (K * K,))
    e = _side_node(lw, node, "exp", "exp", (d,), shape[:-1] + (K * K,))
    e3 = _side_node(lw, node, "pairs", "reshape", (e,), shape[:-1] + (K, K), shape=(-1,) + shape[1:-1] + (K, K))
    s = _side_node(lw, node, "sum", "reduce_sum", (e3,), shape, dims=(len(shape),), keepdim=False, scale=1.0)
    return lw.emit(node, "reciprocal_pos", (s,), floor=1.0)
