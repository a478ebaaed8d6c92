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
    if any(not isinstance(x, Value) for x in xs):  # constant blocks: zero-padded batched pieces plus a constant
        return [_concat_with_constants(lw, xs, axis, rank, dim)]
    return [lw.emit("concat", tuple(x.name for x in xs), rank=rank, dim=dim)]


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


# -- VNN-COMP coverage: slicing, reductions, elementwise functions, resizing ----------------------

def _range_of(start: int, end: int, step: int, n: int) -> list[int]:
    """ONNX Slice's clamped index range along an axis of size ``n`` (Python slice semantics)."""
    return list(range(*slice(start, end, step).indices(n)))


def _select(lw: Lowerer, x: Value, axis: int, index: list[int]) -> Value:
    """Entries ``index`` of the batched ``x`` along ONNX ``axis`` (a gather node; nothing for the identity)."""
    rank = x.rank
    a = axis % rank if -rank <= axis < rank else axis
    n = lw.shape(x)[a] if 0 <= a < rank else 0
    if not lw.offset and a == 0:
        if index == list(range(n)):
            return x
        raise Unsupported("selecting along the batch dimension")
    dim = lw.ir_axis(axis, rank)
    if index == list(range(n)):
        return x
    if not index:
        raise Unsupported("an empty slice")
    return lw.emit("gather", (x.name,), rank=rank, dim=dim, index=tuple(int(i) for i in index))


@lowering("Slice")
def _slice(lw: Lowerer, node) -> list:
    """Slices with constant starts / ends / axes / steps (inputs from opset 10, attributes before)."""
    x = lw.inp(0)
    if lw.opset < 10:
        starts, ends = list(lw.attr("starts")), list(lw.attr("ends"))
        axes, steps = lw.attr("axes"), None
    else:
        starts = [int(v) for v in lw.const(1, "starts").tolist()]
        ends = [int(v) for v in lw.const(2, "ends").tolist()]
        a, st = lw.const(3, "axes"), lw.const(4, "steps")
        axes = None if a is None else [int(v) for v in a.tolist()]
        steps = None if st is None else [int(v) for v in st.tolist()]
    rank = x.rank if isinstance(x, Value) else x.dim()
    axes = list(range(len(starts))) if axes is None else [int(a) for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    if not isinstance(x, Value):
        out = x
        for a, s, e, t in zip(axes, starts, ends, steps):
            a = a % rank
            rng = _range_of(int(s), int(e), int(t), out.shape[a])
            out = out.index_select(a, torch.tensor(rng, dtype=torch.long))
        return [out]
    for a, s, e, t in zip(axes, starts, ends, steps):
        if t == 0:
            raise Unsupported("a slice step of 0")
        n = lw.shape(x)[a % rank]
        x = _select(lw, x, a, _range_of(int(s), int(e), int(t), n))
    return [x]


@lowering("Split")
def _split(lw: Lowerer, node) -> list:
    """Split along an axis into constant parts (``split`` attribute / input, or equal parts)."""
    x = lw.inp(0)
    axis = int(lw.attr("axis", 0))
    if lw.opset >= 13:
        sp = lw.const(1, "split") if len(node.input) > 1 else None
        sizes = None if sp is None else [int(v) for v in sp.tolist()]
    else:
        sizes = lw.attr("split")
        sizes = None if sizes is None else [int(v) for v in sizes]
    rank = x.rank if isinstance(x, Value) else x.dim()
    n = (lw.shape(x) if isinstance(x, Value) else list(x.shape))[axis % rank]
    if sizes is None:
        k = int(lw.attr("num_outputs", len(node.output)))
        chunk = -(-n // k)
        sizes = [min(chunk, n - i * chunk) for i in range(k)]
    if not isinstance(x, Value):
        return list(torch.split(x, sizes, axis % rank))
    outs, start = [], 0
    for size in sizes:
        outs.append(_select(lw, x, axis, list(range(start, start + size))))
        start += size
    return outs


@lowering("Gather")
def _gather(lw: Lowerer, node) -> list:
    """Entries at constant indices along ``axis`` (the indices' shape replaces that axis)."""
    x = lw.inp(0)
    indices = lw.const(1, "indices").to(torch.long)
    axis = int(lw.attr("axis", 0))
    if not isinstance(x, Value):
        a = axis % x.dim()
        idx = torch.where(indices < 0, indices + x.shape[a], indices)
        out = x.index_select(a, idx.reshape(-1))
        return [out.reshape(tuple(x.shape[:a]) + tuple(idx.shape) + tuple(x.shape[a + 1:]))]
    rank = x.rank
    a = axis % rank
    s = lw.shape(x)
    idx = torch.where(indices < 0, indices + s[a], indices)
    if bool(((idx < 0) | (idx >= s[a])).any()):
        raise Unsupported(f"indices out of range for an axis of size {s[a]}")
    out = _select(lw, x, axis, [int(i) for i in idx.reshape(-1).tolist()])
    if idx.dim() == 1:
        return [out]
    new = s[:a] + list(idx.shape) + s[a + 1:]
    return [lw.reshape(out, new)]


def _reduce(lw: Lowerer, node, mean: bool) -> list:
    x = lw.inp(0)
    from_input = (node.op_type == "ReduceSum" and lw.opset >= 13) or lw.opset >= 18
    axes = _axes_input(lw) if from_input else lw.attr("axes")
    keep = bool(lw.attr("keepdims", 1))
    rank = x.rank if isinstance(x, Value) else x.dim()
    if axes is None or len(axes) == 0:
        if from_input and lw.attr("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(rank))
    axes = sorted({int(a) % rank for a in axes})
    if not isinstance(x, Value):
        out = x.sum(axes, keepdim=keep) if axes else x
        return [out / math.prod(x.shape[a] for a in axes) if mean else out]
    s = lw.shape(x)
    if not lw.offset and 0 in axes:  # the batch (1 in the ONNX view): reducing over it changes nothing
        if not keep:
            raise Unsupported("a reduction over the batch dimension that removes it")
        axes = [a for a in axes if a]
    if not axes:
        return [x]
    dims = tuple(lw.ir_axis(a, rank) for a in axes)
    n = math.prod(s[a] for a in axes)
    out_rank = rank if keep else rank - len(axes)
    if not keep and lw.example[x.name].dim() - len(dims) < 2:
        raise Unsupported("a reduction to a single number per example (keepdims=0 over every axis)")
    return [lw.emit("reduce_sum", (x.name,), rank=out_rank, dims=dims, keepdim=keep,
                    scale=1.0 / n if mean else 1.0)]


def _axes_input(lw: Lowerer) -> list[int] | None:
    a = lw.const(1, "axes")
    return None if a is None else [int(v) for v in a.tolist()]


@lowering("ReduceSum")
def _reduce_sum(lw: Lowerer, node) -> list:
    """Sum over constant axes (keepdims)."""
    return _reduce(lw, node, mean=False)


@lowering("ReduceMean")
def _reduce_mean(lw: Lowerer, node) -> list:
    """Mean over constant axes (keepdims)."""
    return _reduce(lw, node, mean=True)


def _power(lw: Lowerer, x, e: float) -> Value | torch.Tensor:
    if not isinstance(x, Value):
        return torch.sqrt(x) if e == 0.5 else x ** e
    if e == 1.0:
        return x
    if e == 0.5 or (float(e).is_integer() and e >= 2):
        return lw.emit("power", (x.name,), rank=x.rank, exponent=e if e == 0.5 else int(e))
    raise Unsupported(f"exponent {e} (supported: integers >= 1 and 0.5 for non-negative inputs)")


@lowering("Pow")
def _pow(lw: Lowerer, node) -> list:
    """``x ** e`` for a constant scalar exponent: integers >= 1, or 0.5 (inputs must be non-negative)."""
    x = lw.inp(0)
    e = lw.const(1, "exponent")
    if not isinstance(x, Value):
        return [torch.pow(x, e)]
    if e.numel() != 1:
        raise Unsupported("a non-scalar exponent")
    return [_power(lw, x, float(e.reshape(()).item()))]


@lowering("Sqrt")
def _sqrt(lw: Lowerer, node) -> list:
    """Square root (of a non-negative value)."""
    return [_power(lw, lw.inp(0), 0.5)]


lowering("Exp")(_unary("exp", torch.exp))
lowering("Sign")(_unary("sign", torch.sign))
lowering("Floor")(_unary("floor", torch.floor))
lowering("Ceil")(_unary("ceil", torch.ceil))
lowering("Sin")(_unary("sin", torch.sin))
lowering("Cos")(_unary("cos", torch.cos))


@lowering("Where")
def _where(lw: Lowerer, node) -> list:
    """Elementwise selection with a constant condition: ``x * c + y * (1 - c)`` (affine)."""
    cond = lw.const(0, "condition").to(torch.bool)
    x, y = lw.inp(1), lw.inp(2)
    if not isinstance(x, Value) and not isinstance(y, Value):
        return [torch.where(cond, x, y)]
    dtype = torch.get_default_dtype()
    c = cond.to(dtype)
    rank = max([v.rank if isinstance(v, Value) else v.dim() for v in (x, y)] + [cond.dim()])
    for v, other in ((x, y), (y, x)):
        if isinstance(v, Value):
            _broadcast_ok(lw, v, c)
            if not isinstance(other, Value):
                _broadcast_ok(lw, v, other)
    if isinstance(x, Value) and isinstance(y, Value):
        a = lw.emit("scale_shift", (x.name, lw.param(c, "cond"), None), rank=rank)
        b = lw.emit("scale_shift", (y.name, lw.param(1.0 - c, "not_cond"), None), rank=rank)
        return [lw.emit("add", (a.name, b.name), rank=rank)]
    if isinstance(x, Value):
        shift = torch.where(cond, torch.zeros((), dtype=dtype), y.to(dtype))
        return [lw.emit("scale_shift", (x.name, lw.param(c, "cond"), lw.param(shift, "other")), rank=rank)]
    shift = torch.where(cond, x.to(dtype), torch.zeros((), dtype=dtype))
    return [lw.emit("scale_shift", (y.name, lw.param(1.0 - c, "not_cond"), lw.param(shift, "other")), rank=rank)]


def _pad_along(lw: Lowerer, x: Value, dim: int, before: int, after: int) -> Value:
    """Zero-pad the batched ``x`` along IR dimension ``dim``."""
    nd = lw.example[x.name].dim()
    pad = [0] * (2 * (nd - dim))
    k = nd - 1 - dim
    pad[2 * k], pad[2 * k + 1] = before, after
    return lw.emit("pad", (x.name,), rank=x.rank, pad=tuple(pad), mode="constant", value=0.0)


def _concat_with_constants(lw: Lowerer, xs: list, axis: int, rank: int, dim: int) -> Value:
    """``concat`` of batched values and constants: every batched piece zero-padded to the full length, summed,
    plus one constant holding the constant pieces (zeros where the batched pieces go)."""
    sizes = [lw.shape(x)[axis % rank] if isinstance(x, Value) else x.shape[axis % rank] for x in xs]
    total = sum(sizes)
    ref = lw.shape(next(x for x in xs if isinstance(x, Value)))
    full_shape = list(ref)
    full_shape[axis % rank] = total
    if lw.offset == 0:
        full_shape[0] = 1
    const = torch.zeros(full_shape, dtype=torch.get_default_dtype())
    acc, start = None, 0
    for x, n in zip(xs, sizes):
        if isinstance(x, Value):
            part = _pad_along(lw, x, dim, start, total - start - n)
            acc = part if acc is None else lw.emit("add", (acc.name, part.name), rank=rank)
        else:
            c = x.to(const.dtype)
            if c.dim() != rank:
                raise Unsupported(f"a constant of rank {c.dim()} in a rank-{rank} concat")
            const.narrow(axis % rank, start, n).copy_(c.expand(const.narrow(axis % rank, start, n).shape))
        start += n
    return lw.emit("add", (acc.name, lw.param(const, "concat_const")), rank=rank)


@lowering("Resize", "Upsample")
def _resize(lw: Lowerer, node) -> list:
    """Resize / Upsample with constant scales or sizes: per resized axis a constant interpolation matrix
    (nearest, linear or cubic; computed with ONNX's reference implementation), applied as a linear map."""
    x = lw.inp(0)
    if not isinstance(x, Value):
        from boundc.frontends.onnx_lowering import _fold_reference

        return _fold_reference(node, [lw.inp(k) for k in range(len(node.input))], lw.opset)
    s = lw.shape(x)
    rank = x.rank
    scales = sizes = None
    if node.op_type == "Upsample":
        scales = lw.attr("scales") if lw.opset < 9 else lw.const(1, "scales")
    elif lw.opset < 11:
        scales = lw.const(1, "scales")
    else:
        scales = lw.const(2, "scales") if len(node.input) > 2 else None
        sizes = lw.const(3, "sizes") if len(node.input) > 3 else None
        if lw.attr("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
            raise Unsupported("coordinate_transformation_mode='tf_crop_and_resize'")
        if lw.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise Unsupported("keep_aspect_ratio_policy other than 'stretch'")
    if scales is not None and len(scales) == 0:
        scales = None
    axes = lw.attr("axes")
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
    per_axis: dict[int, tuple[str, float | int]] = {}
    if sizes is not None and len(sizes):
        for a, m in zip(axes, [int(v) for v in sizes.tolist()]):
            if m != s[a]:
                per_axis[a] = ("sizes", m)
    elif scales is not None:
        for a, f in zip(axes, [float(v) for v in (scales.tolist() if isinstance(scales, torch.Tensor) else scales)]):
            if f != 1.0:
                per_axis[a] = ("scales", f)
    else:
        raise Unsupported("neither scales nor sizes given")
    for a, (kind, val) in sorted(per_axis.items()):
        if not lw.offset and a == 0:
            raise Unsupported("resizing the batch dimension")
        M = _resize_matrix(lw, node, s[a], kind, val)
        x = _axis_linear(lw, x, a, M)
        s = lw.shape(x)
    return [x]


def _resize_matrix(lw: Lowerer, node, n: int, kind: str, val: float | int) -> torch.Tensor:
    """The (out, n) matrix of one resized axis: ONNX's reference Resize of the identity along that axis."""
    import numpy as np
    import onnx
    from onnx.reference import ReferenceEvaluator

    h = onnx.helper
    keep = {"mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a", "exclude_outside",
            "extrapolation_value"}
    if node.op_type == "Upsample":  # Upsample == Resize (opset 10): asymmetric coordinates, floor for nearest
        mode = lw.attr("mode", "nearest")
        attrs = dict(mode=mode, coordinate_transformation_mode="asymmetric")
        if mode == "nearest":
            attrs["nearest_mode"] = "floor"
    else:
        attrs = {a.name: h.get_attribute_value(a) for a in node.attribute if a.name in keep}
        if lw.opset < 11:
            attrs.setdefault("coordinate_transformation_mode", "asymmetric")
            if attrs.get("mode", b"nearest") in ("nearest", b"nearest"):
                attrs.setdefault("nearest_mode", "floor")
    X = h.make_tensor_value_info("X", onnx.TensorProto.FLOAT, None)
    Y = h.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)
    arr = np.array([1.0, val], np.float32) if kind == "scales" else np.array([n, int(val)], np.int64)
    init = onnx.numpy_helper.from_array(arr, "P")
    inputs = ["X", "", "P"] if kind == "scales" else ["X", "", "", "P"]
    res = h.make_node("Resize", inputs, ["Y"], **attrs)
    model = h.make_model(h.make_graph([res], "axis", [X], [Y], [init]), opset_imports=[h.make_opsetid("", 19)])
    try:
        out = ReferenceEvaluator(model).run(None, {"X": np.eye(n, dtype=np.float32)})[0]
    except Exception as err:  # noqa: BLE001 - the reference names what it cannot do
        raise Unsupported(f"resize attributes {attrs} ({type(err).__name__}: {err})") from err
    return torch.from_numpy(np.array(out, dtype=np.float64).T.copy()).to(torch.get_default_dtype())


def _axis_linear(lw: Lowerer, x: Value, axis: int, M: torch.Tensor) -> Value:
    """``M`` (out, n) applied along ONNX ``axis`` of the batched ``x``: a linear node on the last dimension,
    with permutes around it when ``axis`` is not last."""
    dim = lw.ir_axis(axis, x.rank)
    last = lw.example[x.name].dim() - 1
    w = lw.param(M.contiguous(), "interp")
    if dim == last:
        return lw.emit("linear", (x.name, w, None), rank=x.rank)
    dims = list(range(last + 1))
    dims[dim], dims[last] = dims[last], dims[dim]
    t = lw.emit("permute", (x.name,), rank=x.rank, dims=tuple(dims))
    y = lw.emit("linear", (t.name, w, None), rank=x.rank)
    return lw.emit("permute", (y.name,), rank=x.rank, dims=tuple(dims))


@lowering("ConvTranspose")
def _conv_transpose(lw: Lowerer, node) -> list:
    """Transposed convolution with a constant kernel (symmetric pads; no output_shape)."""
    x = lw.batched(0)
    w, b = lw.const(1, "weight"), lw.const(2, "bias")
    nd = w.dim() - 2
    if lw.attr("output_shape") is not None:
        raise Unsupported("the output_shape attribute")
    if lw.attr("auto_pad", "NOTSET") not in ("NOTSET", "", "VALID"):
        raise Unsupported(f"auto_pad={lw.attr('auto_pad')!r}")
    pads = [int(p) for p in (lw.attr("pads") or [0] * (2 * nd))]
    if pads[:nd] != pads[nd:]:
        raise Unsupported(f"asymmetric pads {pads}")
    strides = tuple(int(v) for v in (lw.attr("strides") or [1] * nd))
    dil = tuple(int(v) for v in (lw.attr("dilations") or [1] * nd))
    outpad = tuple(int(v) for v in (lw.attr("output_padding") or [0] * nd))
    bias = None if b is None else lw.param(b, "bias")
    return [lw.emit("conv_transpose", (x.name, lw.param(w, "weight"), bias), rank=x.rank, stride=strides,
                    padding=tuple(pads[:nd]), output_padding=outpad, dilation=dil, groups=int(lw.attr("group", 1)))]


def _softmax_last(lw: Lowerer, x: Value) -> Value:
    """Softmax over the last dimension, ``y_i = 1 / sum_j exp(x_j - x_i)``: a linear map to the K² differences,
    exp, a linear sum (>= 1: the j = i term is exp(0)), and the reciprocal of a value >= 1."""
    K = int(lw.example[x.name].shape[-1])
    eye = torch.eye(K, dtype=torch.get_default_dtype())
    diff = (eye.unsqueeze(0) - eye.unsqueeze(1)).reshape(K * K, K)  # row i*K + j: e_j - e_i
    d = lw.emit("linear", (x.name, lw.param(diff, "softmax_diff"), None), rank=x.rank)
    e = lw.emit("exp", (d.name,), rank=x.rank)
    # the sum over j as a reduction (monotone: IBP adds end points, no centre/radius cancellation)
    lead = tuple(lw.example[x.name].shape[1:-1])
    e3 = lw.emit("reshape", (e.name,), rank=x.rank + 1, shape=(-1, *lead, K, K))
    last = lw.example[e3.name].dim() - 1
    s = lw.emit("reduce_sum", (e3.name,), rank=x.rank, dims=(last,), keepdim=False, scale=1.0)
    return lw.emit("reciprocal_pos", (s.name,), rank=x.rank, floor=1.0)


@lowering("Softmax")
def _softmax(lw: Lowerer, node) -> list:
    """Softmax along ``axis`` (before opset 13: over the dimensions from ``axis`` on, flattened)."""
    x = lw.inp(0)
    new = lw.opset >= 13
    axis = int(lw.attr("axis", -1 if new else 1))
    if not isinstance(x, Value):
        if new:
            return [torch.softmax(x, axis)]
        a = axis % x.dim()
        return [torch.softmax(x.reshape(tuple(x.shape[:a]) + (-1,)), -1).reshape(x.shape)]
    rank = x.rank
    a = axis % rank
    s = lw.shape(x)
    if not new and a < rank - 1:  # flatten the trailing dimensions into one
        y = _softmax_last(lw, lw.reshape(x, s[:a] + [math.prod(s[a:])]))
        return [lw.reshape(y, s)]
    lw.ir_axis(a, rank)  # rejects the batch axis
    if a == rank - 1:
        return [_softmax_last(lw, x)]
    last = lw.example[x.name].dim() - 1
    dim = lw.ir_axis(a, rank)
    dims = list(range(last + 1))
    dims[dim], dims[last] = dims[last], dims[dim]
    t = lw.emit("permute", (x.name,), rank=rank, dims=tuple(dims))
    return [lw.emit("permute", (_softmax_last(lw, t).name,), rank=rank, dims=tuple(dims))]
