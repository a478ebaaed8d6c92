"""Per-op lowerings of the ONNX frontend (registered with ``@lowering``).

Each lowering reads the current node through the :class:`Lowerer` helpers and
returns one value per node output: a torch tensor for a constant result (folded
here) or a batched :class:`Value` (an IR node).  Raising :class:`Unsupported`
reports the node in the frontend's single error.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from boundc.frontends.onnx_lowering import Lowerer, Unsupported, Value, lowering

# -- structural -------------------------------------------------------------------------


@lowering("Identity", "Dropout")
def _identity(lw: Lowerer, node) -> list:
    """Identity; Dropout at inference (its mask output is not supported)."""
    if len(node.output) > 1 and node.output[1]:
        raise Unsupported("the dropout mask output")
    return [lw.inp(0)]


@lowering("Constant")
def _constant(lw: Lowerer, node) -> list:
    """A constant tensor from any of the value attributes."""
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        v = lw.attr(key)
        if v is not None:
            t = v if isinstance(v, torch.Tensor) else torch.tensor(v)
            if t.is_floating_point():
                t = t.to(torch.get_default_dtype())
            return [t]
    raise Unsupported("a Constant without a dense value")


@lowering("Shape")
def _shape(lw: Lowerer, node) -> list:
    """Shape of a value (the batch dimension of a batched value reads 1)."""
    x = lw.inp(0)
    shape = torch.tensor(lw.shape(x) if isinstance(x, Value) else list(x.shape), dtype=torch.int64)
    start, end = lw.attr("start", 0), lw.attr("end", None)
    return [shape[start:end]]


@lowering("Flatten")
def _flatten(lw: Lowerer, node) -> list:
    """Flatten to 2-d at ``axis``."""
    x = lw.inp(0)
    axis = lw.attr("axis", 1)
    if not isinstance(x, Value):
        return [x.reshape(math.prod(x.shape[:axis]), -1) if axis else x.reshape(1, -1)]
    s = lw.shape(x)
    axis = axis + len(s) if axis < 0 else axis
    if lw.offset:
        return [lw.reshape(x, [math.prod(s[:axis]), math.prod(s[axis:])])]
    if math.prod(s[1:max(axis, 1)]) != 1:
        raise Unsupported(f"flatten at axis {axis} would merge the batch dimension")
    return [lw.reshape(x, [1, math.prod(s[max(axis, 1):])])]


def _resolve_shape(target: list[int], shape: list[int], allowzero: bool) -> list[int]:
    """ONNX Reshape target with 0 (copy) and -1 (infer) resolved."""
    out = [shape[k] if (d == 0 and not allowzero) else d for k, d in enumerate(target)]
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        out[out.index(-1)] = math.prod(shape) // max(known, 1)
    return out


@lowering("Reshape")
def _reshape(lw: Lowerer, node) -> list:
    """Reshape (target from the second input, or the ``shape`` attribute before opset 5)."""
    x = lw.inp(0)
    target = lw.attr("shape") if lw.opset < 5 else lw.const(1, "shape")
    target = [int(d) for d in (target.tolist() if isinstance(target, torch.Tensor) else target)]
    allowzero = bool(lw.attr("allowzero", 0))
    if not isinstance(x, Value):
        return [x.reshape(_resolve_shape(target, list(x.shape), allowzero))]
    s = lw.shape(x)
    if not lw.offset and target:
        target = [1] + target[1:]  # the leading entry is the batch (1, -1, 0 or N)
    return [lw.reshape(x, _resolve_shape(target, s, allowzero))]


def _axes(lw: Lowerer, idx: int) -> list[int] | None:
    if lw.opset >= 13:
        a = lw.const(idx, "axes")
        return None if a is None else [int(v) for v in a.tolist()]
    a = lw.attr("axes")
    return None if a is None else [int(v) for v in a]


@lowering("Squeeze")
def _squeeze(lw: Lowerer, node) -> list:
    """Remove size-1 dimensions (never the batch)."""
    x = lw.inp(0)
    axes = _axes(lw, 1)
    if not isinstance(x, Value):
        return [x.squeeze() if axes is None else x.squeeze(tuple(axes))]
    s = lw.shape(x)
    if axes is None:
        axes = [k for k, d in enumerate(s) if d == 1 and (k > 0 or lw.offset)]
    axes = [a % len(s) for a in axes]
    for a in axes:
        lw.ir_axis(a, len(s))  # rejects the batch axis
    return [lw.reshape(x, [d for k, d in enumerate(s) if k not in axes])]


@lowering("Unsqueeze")
def _unsqueeze(lw: Lowerer, node) -> list:
    """Insert size-1 dimensions (not before the batch)."""
    x = lw.inp(0)
    axes = _axes(lw, 1)
    if not isinstance(x, Value):
        for a in sorted(a % (x.dim() + len(axes)) for a in axes):
            x = x.unsqueeze(a)
        return [x]
    s = lw.shape(x)
    rank = len(s) + len(axes)
    axes = sorted(a % rank for a in axes)
    if 0 in axes and not lw.offset:
        raise Unsupported("unsqueeze before the batch dimension")
    for a in axes:
        s.insert(a, 1)
    return [lw.reshape(x, s)]


@lowering("Transpose")
def _transpose(lw: Lowerer, node) -> list:
    """Permute dimensions (the batch must stay first)."""
    x = lw.inp(0)
    rank = x.rank if isinstance(x, Value) else x.dim()
    perm = [int(p) for p in (lw.attr("perm") or list(range(rank))[::-1])]
    if not isinstance(x, Value):
        return [x.permute(perm)]
    if lw.offset:
        dims = (0, *[p + 1 for p in perm])
    else:
        if perm[0] != 0:
            raise Unsupported(f"a transpose {perm} that moves the batch dimension")
        dims = tuple(perm)
    return [lw.emit("permute", (x.name,), rank=rank, dims=dims)]


@lowering("Concat")
def _concat(lw: Lowerer, node) -> list:
    """Concatenate along a non-batch axis."""
    xs = [lw.inp(k) for k in range(len(node.input))]
    axis = lw.attr("axis", 0)
    if all(not isinstance(x, Value) for x in xs):
        return [torch.cat(xs, axis)]
    rank = next(x.rank for x in xs if isinstance(x, Value))
    dim = lw.ir_axis(axis, rank)
    names = []
    for x in xs:
        if isinstance(x, Value):
            names.append(x.name)
        else:  # a constant block: give it the batch dimension by broadcasting in the graph
            raise Unsupported("concatenating an input-dependent value with a constant")
    return [lw.emit("concat", tuple(names), rank=rank, dim=dim)]


# -- arithmetic -------------------------------------------------------------------------

def _broadcast_ok(lw: Lowerer, x: Value, c: torch.Tensor) -> None:
    if c.dim() > x.rank:
        raise Unsupported(f"a constant of rank {c.dim()} broadcast against a rank-{x.rank} value")
    if not lw.offset and c.dim() == x.rank and c.shape[0] != 1:
        raise Unsupported("a constant that varies along the batch dimension")


def _binary(lw: Lowerer, node, op: str) -> list:
    a, b = lw.inp(0), lw.inp(1)
    if not isinstance(a, Value) and not isinstance(b, Value):
        fn = {"add": torch.add, "sub": torch.sub, "mul": torch.mul}[op]
        return [fn(a, b)]
    for x, y in ((a, b), (b, a)):
        if isinstance(x, Value) and not isinstance(y, Value):
            _broadcast_ok(lw, x, y)
    rank = max(v.rank if isinstance(v, Value) else v.dim() for v in (a, b))
    return [lw.emit(op, (lw.operand(a), lw.operand(b)), rank=rank)]


@lowering("Add", "Sum")
def _add(lw: Lowerer, node) -> list:
    """Elementwise sum (``Sum`` with two inputs)."""
    if len(node.input) != 2:
        raise Unsupported(f"Sum of {len(node.input)} inputs")
    return _binary(lw, node, "add")


@lowering("Sub")
def _sub(lw: Lowerer, node) -> list:
    """Elementwise difference."""
    return _binary(lw, node, "sub")


@lowering("Mul")
def _mul(lw: Lowerer, node) -> list:
    """Elementwise product."""
    return _binary(lw, node, "mul")


@lowering("Div")
def _div(lw: Lowerer, node) -> list:
    """Division by a constant (multiplication by its reciprocal)."""
    a, b = lw.inp(0), lw.inp(1)
    if not isinstance(a, Value) and not isinstance(b, Value):
        return [a / b if a.is_floating_point() or b.is_floating_point() else torch.div(a, b, rounding_mode="trunc")]
    if isinstance(b, Value):  # only x / (1 + |x|) (softsign) is supported: canonicalisation recognises it
        if not isinstance(a, Value):
            raise Unsupported("division by an input-dependent value")
        recip = lw.emit("reciprocal", (b.name,), rank=b.rank)
        return [lw.emit("mul", (a.name, recip.name), rank=max(a.rank, b.rank))]
    _broadcast_ok(lw, a, b)
    return [lw.emit("mul", (a.name, lw.param(1.0 / b.to(torch.get_default_dtype()), "recip")),
                    rank=max(a.rank, b.dim()))]


@lowering("Neg")
def _neg(lw: Lowerer, node) -> list:
    """Negation."""
    x = lw.inp(0)
    if not isinstance(x, Value):
        return [-x]
    return [lw.emit("scale_shift", (x.name, lw.param(torch.tensor(-1.0), "minus_one"), None), rank=x.rank)]


@lowering("Gemm")
def _gemm(lw: Lowerer, node) -> list:
    """``alpha * A' @ B' + beta * C`` with a constant ``B`` → linear."""
    a = lw.inp(0)
    b = lw.const(1, "weight B")
    c = lw.const(2, "bias C")
    alpha, beta = float(lw.attr("alpha", 1.0)), float(lw.attr("beta", 1.0))
    if not isinstance(a, Value):
        a2 = a.T if lw.attr("transA", 0) else a
        b2 = b.T if lw.attr("transB", 0) else b
        return [alpha * a2 @ b2 + (0 if c is None else beta * c)]
    if lw.attr("transA", 0):
        raise Unsupported("transA=1 with an input-dependent A (mixes the batch)")
    weight = (b if lw.attr("transB", 0) else b.T) * alpha
    bias = None
    if c is not None and beta != 0:
        out = weight.shape[0]
        if c.numel() not in (1, out) or (c.dim() == 2 and c.shape[0] != 1):
            raise Unsupported(f"a bias C of shape {list(c.shape)}")
        bias = lw.param((beta * c).reshape(-1).expand(out).contiguous(), "bias")
    return [lw.emit("linear", (a.name, lw.param(weight.contiguous(), "weight"), bias), rank=2)]


@lowering("MatMul")
def _matmul(lw: Lowerer, node) -> list:
    """Matrix product with a constant matrix on either side → linear."""
    a, b = lw.inp(0), lw.inp(1)
    if not isinstance(a, Value) and not isinstance(b, Value):
        return [a @ b]
    if isinstance(a, Value) and isinstance(b, Value):
        raise Unsupported("a product of two input-dependent values")
    if isinstance(a, Value):  # x @ W
        if b.dim() != 2:
            raise Unsupported(f"a constant right operand of rank {b.dim()}")
        if a.rank == 1 and not lw.offset:
            raise Unsupported("a vector times a matrix along the batch")
        rank = a.rank if a.rank > 1 else 1
        return [lw.emit("linear", (a.name, lw.param(b.T.contiguous(), "weight"), None), rank=rank)]
    # W @ x: contract the second-to-last dimension of x (or the only one of a vector)
    if a.dim() != 2:
        raise Unsupported(f"a constant left operand of rank {a.dim()}")
    w = lw.param(a.contiguous(), "weight")
    if b.rank == 1:
        if not lw.offset:
            raise Unsupported("a matrix times the batch vector")
        return [lw.emit("linear", (b.name, w, None), rank=1)]
    last = len(lw.example[b.name].shape) - 1
    if last - 1 == 0:
        raise Unsupported("a constant matrix times the batch dimension")
    dims = list(range(last + 1))
    dims[-1], dims[-2] = dims[-2], dims[-1]
    t = lw.emit("permute", (b.name,), rank=b.rank, dims=tuple(dims))
    y = lw.emit("linear", (t.name, w, None), rank=b.rank)
    return [lw.emit("permute", (y.name,), rank=b.rank, dims=tuple(dims))]


# -- activations ------------------------------------------------------------------------

def _unary(op: str, fold, **attrs) -> None:
    def lower(lw: Lowerer, node) -> list:
        x = lw.inp(0)
        if not isinstance(x, Value):
            return [fold(x)]
        return [lw.emit(op, (x.name,), rank=x.rank, **attrs)]
    return lower


lowering("Relu")(_unary("relu", torch.relu))
lowering("Sigmoid")(_unary("sigmoid", torch.sigmoid))
lowering("Tanh")(_unary("tanh", torch.tanh))
lowering("Softplus")(_unary("softplus", F.softplus, beta=1.0, threshold=20.0))
lowering("Softsign")(_unary("softsign", F.softsign))
lowering("Abs")(_unary("abs", torch.abs))
lowering("Erf")(_unary("erf", torch.erf))


@lowering("Gelu")
def _gelu(lw: Lowerer, node) -> list:
    """GELU (opset 20), ``approximate`` ``"none"`` (erf) or ``"tanh"``."""
    x, approximate = lw.inp(0), str(lw.attr("approximate", "none"))
    if approximate not in ("none", "tanh"):
        raise Unsupported(f"Gelu approximate={approximate!r}")
    if not isinstance(x, Value):
        return [F.gelu(x, approximate=approximate)]
    return [lw.emit("gelu", (x.name,), rank=x.rank, approximate=approximate)]


@lowering("LeakyRelu")
def _leaky_relu(lw: Lowerer, node) -> list:
    """Leaky ReLU with slope ``alpha`` (default 0.01)."""
    x, slope = lw.inp(0), float(lw.attr("alpha", 0.01))
    if not isinstance(x, Value):
        return [F.leaky_relu(x, slope)]
    return [lw.emit("leaky_relu", (x.name,), rank=x.rank, negative_slope=slope)]


@lowering("Clip")
def _clip(lw: Lowerer, node) -> list:
    """Clamp to constant bounds (attributes before opset 11, inputs after)."""
    x = lw.inp(0)
    if lw.opset < 11:
        lo, hi = lw.attr("min", float("-inf")), lw.attr("max", float("inf"))
    else:
        lo_t, hi_t = lw.const(1, "min"), lw.const(2, "max")
        lo = float("-inf") if lo_t is None else float(lo_t)
        hi = float("inf") if hi_t is None else float(hi_t)
    if not isinstance(x, Value):
        return [torch.clamp(x, lo, hi)]
    return [lw.emit("hardtanh", (x.name,), rank=x.rank, min_val=float(lo), max_val=float(hi))]


# -- convolution, pooling, normalisation ------------------------------------------------

def _spatial_pads(lw: Lowerer, nd: int, kernel: list[int], strides: list[int], dil: list[int],
                  in_spatial: list[int]) -> list[int]:
    """ONNX ``pads`` ([begins..., ends...]) with ``auto_pad`` resolved."""
    auto = lw.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return [int(p) for p in (lw.attr("pads") or [0] * (2 * nd))]
    if auto == "VALID":
        return [0] * (2 * nd)
    begins, ends = [], []
    for size, k, s, d in zip(in_spatial, kernel, strides, dil):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)
        ends.append(big if auto == "SAME_UPPER" else small)
    return begins + ends


def _torch_pad(pads: list[int], nd: int) -> tuple[int, ...]:
    """ONNX [b1.., e1..] on the last ``nd`` dims → torch (last dim first) pairs."""
    out: list[int] = []
    for k in reversed(range(nd)):
        out += [pads[k], pads[k + nd]]
    return tuple(out)


def _pre_pad(lw: Lowerer, x: Value, pads: list[int], nd: int, value: float = 0.0) -> tuple[Value, list[int]]:
    """Split ``pads`` into a symmetric part (returned) and an explicit pad node for the rest."""
    sym = [min(pads[k], pads[k + nd]) for k in range(nd)]
    extra = [pads[k] - sym[k] for k in range(nd)] + [pads[k + nd] - sym[k] for k in range(nd)]
    if any(extra):
        x = lw.emit("pad", (x.name,), rank=x.rank, pad=_torch_pad(extra, nd), mode="constant", value=value)
    return x, sym


@lowering("Conv")
def _conv(lw: Lowerer, node) -> list:
    """N-d convolution with a constant kernel."""
    x = lw.batched(0)
    w, b = lw.const(1, "weight"), lw.const(2, "bias")
    nd = w.dim() - 2
    strides = list(lw.attr("strides") or [1] * nd)
    dil = list(lw.attr("dilations") or [1] * nd)
    kernel = list(lw.attr("kernel_shape") or w.shape[2:])
    pads = _spatial_pads(lw, nd, kernel, strides, dil, lw.shape(x)[-nd:])
    x, sym = _pre_pad(lw, x, pads, nd)
    bias = None if b is None else lw.param(b, "bias")
    return [lw.emit("conv", (x.name, lw.param(w, "weight"), bias), rank=x.rank, stride=tuple(strides),
                    padding=tuple(sym), dilation=tuple(dil), groups=int(lw.attr("group", 1)))]


@lowering("Pad")
def _pad(lw: Lowerer, node) -> list:
    """Constant, reflect or edge padding."""
    x = lw.batched(0)
    mode = lw.attr("mode", "constant")
    if lw.opset < 11:
        pads, value = [int(p) for p in lw.attr("pads")], float(lw.attr("value", 0.0))
    else:
        pads = [int(p) for p in lw.const(1, "pads").tolist()]
        v = lw.const(2, "constant_value")
        value = 0.0 if v is None else float(v)
        axes = lw.const(3, "axes") if len(node.input) > 3 else None
        if axes is not None:
            full = [0] * (2 * x.rank)
            na = len(axes)
            for k, a in enumerate(int(a) % x.rank for a in axes.tolist()):
                full[a], full[a + x.rank] = pads[k], pads[k + na]
            pads = full
    rank = x.rank
    if not lw.offset and (pads[0] or pads[rank]):
        raise Unsupported("padding the batch dimension")
    padded = [k for k in range(rank) if pads[k] or pads[k + rank]]
    nd = rank - min(padded) if padded else 0
    if nd == 0:
        return [x]
    trailing = [pads[k] for k in range(rank - nd, rank)] + [pads[k + rank] for k in range(rank - nd, rank)]
    tmode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    if tmode is None:
        raise Unsupported(f"pad mode {mode!r}")
    return [lw.emit("pad", (x.name,), rank=rank, pad=_torch_pad(trailing, nd), mode=tmode, value=value)]


def _pool_common(lw: Lowerer, x: Value) -> tuple[list[int], list[int], list[int]]:
    kernel = list(lw.attr("kernel_shape"))
    if len(kernel) != 2:
        raise Unsupported(f"{len(kernel)}-d pooling (only 2-d)")
    strides = list(lw.attr("strides") or kernel)
    dil = list(lw.attr("dilations") or [1, 1])
    pads = _spatial_pads(lw, 2, kernel, strides, dil, lw.shape(x)[-2:])
    return kernel, strides, pads


@lowering("AveragePool")
def _avg_pool(lw: Lowerer, node) -> list:
    """2-d average pooling (ONNX default: padding not counted)."""
    x = lw.batched(0)
    kernel, strides, pads = _pool_common(lw, x)
    if any(d != 1 for d in (lw.attr("dilations") or [1, 1])):
        raise Unsupported("dilated average pooling")
    include = bool(lw.attr("count_include_pad", 0))
    if pads[:2] != pads[2:] and not include:
        raise Unsupported("asymmetric padding with count_include_pad=0")
    x, sym = _pre_pad(lw, x, pads, 2)
    return [lw.emit("avg_pool2d", (x.name,), rank=x.rank, kernel_size=tuple(kernel), stride=tuple(strides),
                    padding=tuple(sym), ceil_mode=bool(lw.attr("ceil_mode", 0)), count_include_pad=include,
                    divisor_override=None)]


@lowering("MaxPool")
def _max_pool(lw: Lowerer, node) -> list:
    """2-d max pooling (the indices output is not supported)."""
    if len(node.output) > 1 and node.output[1]:
        raise Unsupported("the indices output of MaxPool")
    x = lw.batched(0)
    kernel, strides, pads = _pool_common(lw, x)
    x, sym = _pre_pad(lw, x, pads, 2, value=float("-inf"))
    return [lw.emit("max_pool2d", (x.name,), rank=x.rank, kernel_size=tuple(kernel), stride=tuple(strides),
                    padding=tuple(sym), dilation=tuple(lw.attr("dilations") or [1, 1]),
                    ceil_mode=bool(lw.attr("ceil_mode", 0)))]


@lowering("GlobalAveragePool")
def _global_avg_pool(lw: Lowerer, node) -> list:
    """Mean over the spatial dimensions of an NCHW tensor."""
    x = lw.batched(0)
    if x.rank != 4 or lw.offset:
        raise Unsupported("global average pooling of a non-NCHW tensor")
    return [lw.emit("adaptive_avg_pool2d", (x.name,), rank=4, output_size=(1, 1))]


@lowering("BatchNormalization")
def _batch_norm(lw: Lowerer, node) -> list:
    """Inference-mode batch normalisation with constant statistics."""
    x = lw.batched(0)
    if lw.attr("training_mode", 0) or (len(node.output) > 1 and any(node.output[1:])):
        raise Unsupported("training-mode batch normalisation")
    if lw.offset:
        raise Unsupported("batch normalisation of an unbatched tensor")
    ins = [lw.param(lw.const(k, "statistics"), name) for k, name in
           ((1, "scale"), (2, "bias"), (3, "mean"), (4, "var"))]
    return [lw.emit("batch_norm", (x.name, *ins), rank=x.rank, training=False,
                    eps=float(lw.attr("epsilon", 1e-5)))]
