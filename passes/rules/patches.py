"""Backward rules in *patches* form (domain ``"patches"``): each coefficient row is a window of a feature map.

Bounding every neuron of a convolutional layer by dense backward passes moves a
``(B, rows, C, H, W)`` tensor through every layer.  But a conv-layer neuron only
sees its receptive field, so here a row is a ``Kh × Kw`` window over the
``(C, H, W)`` feature map it has reached (auto_LiRPA's "patches mode", Xu et al.
2020)::

    A[b, r, c, y, x] = lA[b, r, c, y - (i_r·Sh - Ph), x - (j_r·Sw - Pw)]

where ``(i_r, j_r)`` is row ``r``'s position in the spatial grid of the node the
pass started at, and ``(Sh, Sw)`` / ``(Ph, Pw)`` the window stride and padding
accumulated on the way back.  Through a convolution a window composes with the
kernel (one GEMM with the transposed-convolution matrix of a single window);
through an activation it is multiplied by the relaxation slopes gathered with
``unfold``; at the input box it meets centre and radius the same way.  Entries
that fall outside a feature map (over a convolution's zero padding) are zeroed
at once, so they never leak into earlier layers.

Only ops that act locally and per channel have a rule here (conv, elementwise
activations, per-element affine maps, add/sub, average pooling); a rule's
optional ``covers(graph, node)`` says which attribute values it handles.  A
backward pass whose walk meets any other op runs in the dense form of :mod:`.backward`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import transpose
from .backward import consumable, maybe_nonzero, sides_owned, through_lines
from .interval import Interval
from .linalg import blocks_allowed, row_blocks, rowdot
from .ops import OpDef
from .registry import commutes, consumes_state, deriver, forwards_state, owns_result, rule
from .relaxation import Mode, relax

DOMAIN = "patches"
#: Largest transposed-convolution matrix (entries) built to turn a window's transpose into one GEMM.
_MAX_GEMM_BASIS = 1 << 24


class Patches(NamedTuple):
    """Lower/upper linear bounds on R rows, each coefficient row a window of the current feature map.

    ``lA``/``uA``: ``(B or 1, R, C, Kh, Kw)`` (a leading 1 while every sample shares them);
    ``lb``/``ub``: ``(B or 1, R)``; ``pos``: ``(B, R, 2)`` grid position ``(i, j)`` of each row;
    ``grid``: the start node's spatial size; row ``r``'s window starts at
    ``(i_r·stride[0] - padding[0], j_r·stride[1] - padding[1])``.
    """

    lA: Tensor
    uA: Tensor
    lb: Tensor
    ub: Tensor
    pos: Tensor
    grid: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


def _with(p: Patches, lA: Tensor, uA: Tensor, lb: Tensor | float = 0.0, ub: Tensor | float = 0.0, **geometry) -> Patches:
    """``p`` with new coefficients, biases added, and (optionally) a new window geometry."""
    return p._replace(lA=lA, uA=uA, lb=p.lb + lb, ub=p.ub + ub, **geometry)


def _upper(p: Patches, fn: Callable[[Tensor], Tensor], lA: Tensor) -> Tensor:
    """The upper coefficients mapped by ``fn``: the new ``lA`` while both are one tensor, and none of its
    rows when the pass has no upper rows (a lower-only pass, :func:`~.engine.lower_rows_only`)."""
    if p.uA is p.lA:
        return lA
    return lA[:, :0] if p.uA.shape[1] == 0 else fn(p.uA)


def _dots(p: Patches, t: Tensor) -> tuple[Tensor, Tensor]:
    """``(rowdot(lA, t), rowdot(uA, t))`` for windows ``t`` of every row (an empty upper side stays empty)."""
    lower = rowdot(p.lA, t)
    if p.uA is p.lA:
        return lower, lower
    return lower, (p.ub[:, :0] if p.uA.shape[1] == 0 else rowdot(p.uA, t))


class _Windows(NamedTuple):
    """Every window of a map, unfolded once (``cols`` (B'·L, C·Kh·Kw)), which one each row reads (``at``
    (B, R)), the windows' ``kernel`` and the rows' ``(B, R)``.  (A gather from ``cols`` is an order of
    magnitude faster on CPU than advanced indexing into a strided window view of the map.)"""

    cols: Tensor
    at: Tensor
    kernel: tuple[int, int]
    rows_shape: tuple[int, int]

    def rows(self, block: slice = slice(None)) -> Tensor:
        """The windows of the rows in ``block``, copied out: (B, rows, C, Kh, Kw)."""
        if block == slice(None):  # (the rows' own sizes: one shared size node in an exported graph)
            at, (B, R) = self.at, self.rows_shape
        else:
            at = self.at[:, block]
            B, R = at.shape
        return self.cols.index_select(0, at.flatten()).reshape(B, R, -1, *self.kernel)


def windows(p: Patches, t: Tensor, kernel: tuple[int, int] | None = None) -> _Windows:
    """The windows of ``p``'s rows over a map ``t`` (B', C, H, W), zero outside the map (gathered per block)."""
    kh, kw = (int(k) for k in (kernel or p.lA.shape[-2:]))  # static sizes (also while tracing for export)
    (sh, sw), (ph, pw), (gh, gw) = p.stride, p.padding, p.grid
    H, W = int(t.shape[-2]), int(t.shape[-1])
    bottom = max(0, (gh - 1) * sh - ph + kh - H)
    right = max(0, (gw - 1) * sw - pw + kw - W)
    t = F.pad(t, (pw, right, ph, bottom))
    cols = F.unfold(t, (kh, kw), stride=(sh, sw)).transpose(1, 2)  # (B', L, C*kh*kw)
    Bt, L, E = cols.shape
    B = p.pos.shape[0]
    at = p.pos[..., 0] * ((t.shape[-1] - kw) // sw + 1) + p.pos[..., 1]  # (B, R) window index
    if Bt > 1:
        at = at + L * torch.arange(B, device=at.device).unsqueeze(1)
    return _Windows(cols.reshape(Bt * L, E), at, (kh, kw), tuple(p.pos.shape[:2]))


def window_rows(p: Patches, t: Tensor, kernel: tuple[int, int] | None = None) -> Tensor:
    """Gather the window of every row from a map ``t`` (B', C, H, W) → (B, R, C, Kh, Kw); zero outside the map."""
    return windows(p, t, kernel).rows()


def _blocks(p: Patches) -> list[slice] | None:
    """:func:`~.backward.row_blocks` of ``p``'s rows (``B`` samples, each row a window)."""
    if not blocks_allowed():
        return None
    B, R = p.pos.shape[:2]
    return row_blocks(R, B * math.prod(p.lA.shape[2:]))


def _inside(p: Patches, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
            size: tuple[int, int], dtype: torch.dtype) -> Tensor | None:
    """(B, R, 1, Kh, Kw) mask (1 or 0, in ``dtype``) of the window entries that lie inside a map of spatial
    ``size``; ``None`` when every row's window lies inside, which the shapes alone decide: rows sit at grid
    positions ``0 .. grid - 1``, so the windows span ``-padding .. (grid - 1)·stride - padding + kernel``."""
    if all(padding[d] <= 0 and (p.grid[d] - 1) * stride[d] - padding[d] + kernel[d] <= size[d] for d in range(2)):
        return None
    masks = []
    for d in range(2):
        at = p.pos[..., d:d + 1] * stride[d] - padding[d] + torch.arange(kernel[d], device=p.pos.device)
        masks.append(((at >= 0) & (at < size[d])).to(dtype))  # a product of 0/1 floats: faster than bool ops
    return (masks[0][..., :, None] * masks[1][..., None, :]).unsqueeze(2)


def start_rows(x_lower: Tensor, shape: tuple[int, ...], idx: Tensor, sign: Tensor | None = None) -> Patches:
    """Unit rows for the neurons ``idx`` (B, R) (flat indices per sample) of a node of per-sample ``shape``
    (C, H, W); with ``sign`` (B, R) of ±1, row ``r`` is ``sign[:, r]`` times its unit row."""
    C, H, W = shape
    B, R = idx.shape
    A = torch.zeros(B, R, C, dtype=x_lower.dtype, device=x_lower.device)
    A.scatter_(2, (idx // (H * W)).unsqueeze(2), 1.0 if sign is None else sign.to(A.dtype).unsqueeze(2))
    A = A.reshape(B, R, C, 1, 1)
    pos = torch.stack(((idx % (H * W)) // W, idx % W), 2)
    zero = torch.zeros(B, R, dtype=x_lower.dtype, device=x_lower.device)
    return Patches(A, A, zero, zero, pos, (H, W), (1, 1), (0, 0))


def concretize(p: Patches, x_lower: Tensor, x_upper: Tensor) -> Interval:
    """Bounds (B, R) of the rows over the input box: ``A·centre ∓ |A|·radius + bias`` (by blocks of rows)."""
    centre = windows(p, (x_upper + x_lower) / 2)
    radius = windows(p, (x_upper - x_lower) / 2)

    def bounds(q: Patches, block: slice) -> Interval:
        lA_abs = q.lA.abs()
        uA_abs = lA_abs if q.uA is q.lA else q.uA.abs()
        (lc, uc), (lr, ur) = _dots(q, centre.rows(block)), _dots(q._replace(lA=lA_abs, uA=uA_abs), radius.rows(block))
        return Interval(lc - lr + q.lb, uc + ur + q.ub)

    blocks = _blocks(p)
    if blocks is None:
        return bounds(p, slice(None))
    parts = [bounds(_rows(p, s), s) for s in blocks]
    return Interval(torch.cat([b.lower for b in parts], 1), torch.cat([b.upper for b in parts], 1))


def _rows(p: Patches, block: slice) -> Patches:
    """The rows of ``p`` in ``block`` (an upper side with no rows stays empty)."""
    def cut(t: Tensor) -> Tensor:
        return t if t.shape[1] == 0 else t[:, block]

    lA = p.lA[:, block]
    return p._replace(lA=lA, uA=lA if p.uA is p.lA else cut(p.uA), lb=cut(p.lb), ub=cut(p.ub), pos=p.pos[:, block])


@owns_result
@consumes_state
@commutes
def add_patches(a: Patches, b: Patches, consume: bool = False) -> Patches:
    """Sum of two users' contributions; windows of different extent are padded to their union.  ``consume``:
    the walk holds ``a``'s coefficients nowhere else, so the sum may be formed in them."""
    if a.stride != b.stride:
        raise ValueError(f"patches with strides {a.stride} and {b.stride} cannot be summed")
    ka, kb = (tuple(int(k) for k in p.lA.shape[-2:]) for p in (a, b))
    pad_top = [max(a.padding[d], b.padding[d]) for d in range(2)]
    end = [max(ka[d] - a.padding[d], kb[d] - b.padding[d]) for d in range(2)]
    own = sides_owned(a, consume)

    def grow(p: Patches, k: tuple[int, int], A: Tensor) -> Tensor:
        top = [pad_top[d] - p.padding[d] for d in range(2)]
        rest = [pad_top[d] + end[d] - k[d] - top[d] for d in range(2)]
        return F.pad(A, (top[1], rest[1], top[0], rest[0])) if any(top + rest) else A

    def total(x: Tensor, y: Tensor) -> Tensor:
        top = [pad_top[d] - b.padding[d] for d in range(2)]
        if own and all(pad_top[d] == a.padding[d] and end[d] == ka[d] - a.padding[d] for d in range(2)) \
                and consumable(x, torch.broadcast_shapes(x.shape[:-2], y.shape[:-2]) + x.shape[-2:]):
            # an owned window spanning the union: add the other's windows into their place in it
            x[..., top[0]:top[0] + kb[0], top[1]:top[1] + kb[1]].add_(y)
            return x
        gx, gy = grow(a, ka, x), grow(b, kb, y)
        shape = torch.broadcast_shapes(gx.shape, gy.shape)
        if not torch.is_grad_enabled():  # a window just padded is a fresh buffer: sum into it
            for fresh, other, orig in ((gy, gx, y), (gx, gy, x)):
                if fresh is not orig and fresh.shape == shape:
                    return fresh.add_(other)
        return gx + gy

    lA = total(a.lA, b.lA)
    uA = lA if a.uA is a.lA and b.uA is b.lA else total(a.uA, b.uA)
    return a._replace(lA=lA, uA=uA, lb=a.lb + b.lb, ub=a.ub + b.ub, padding=tuple(pad_top))


def zero_bias(p: Patches) -> Patches:
    """The same rows with zero bias (for every input but the first perturbed one)."""
    return p._replace(lb=torch.zeros_like(p.lb), ub=torch.zeros_like(p.ub))


# -- rules ---------------------------------------------------------------------------

@rule("identity", DOMAIN)
@forwards_state
def identity(p: Patches, x, *, in_shapes) -> tuple:
    """Unchanged."""
    return (p,)


def _min_gemm_density(weight: Tensor, in_channels: int) -> float:
    """The least share of a window one basis entry must touch for the GEMM to beat a transposed convolution.

    The GEMM does ``1 / density`` times the multiply-adds of the convolution, at several times its
    speed: oneDNN's CPU transposed convolution on many small windows runs at about a quarter of GEMM
    speed with wide inputs, far below it with 1–4 input channels (a model's first layer), where the
    GEMM wins up to a 16-fold excess.  On other devices the GEMM is kept up to that excess too.
    """
    if weight.device.type == "cpu" and in_channels > transpose.FOLD_MAX_CHANNELS:
        return 1 / 4
    return 1 / 16


def _window_transpose(window: tuple[int, int, int], weight: Tensor, stride: tuple, dilation: tuple, groups: int,
                      rows: int) -> tuple[Callable[[Tensor], Tensor], tuple[int, int]]:
    """The map from windows over a conv's output (B', R, Co, Kh, Kw) to windows over its input
    (B', R, Ci, Kh', Kw'), and ``(Kh', Kw')``.  With many rows it is one GEMM with the transposed
    convolution of every basis window (built once, shared by the lower and upper coefficients)."""
    Co, kh, kw = window
    basis = Co * kh * kw
    out_h = (kh - 1) * stride[0] + (weight.shape[2] - 1) * dilation[0] + 1
    out_w = (kw - 1) * stride[1] + (weight.shape[3] - 1) * dilation[1] + 1
    ci = weight.shape[1] * groups
    dense = (weight.shape[2] * weight.shape[3]) / (out_h * out_w)  # share of a window one basis entry touches
    gemm = (rows > basis and basis * ci * out_h * out_w <= _MAX_GEMM_BASIS
            and dense >= _min_gemm_density(weight, ci))
    M = None
    if gemm and not torch.jit.is_tracing():  # an exported graph would hold the identity as a constant
        eye = torch.eye(basis, dtype=weight.dtype, device=weight.device).reshape(basis, Co, kh, kw)
        M = F.conv_transpose2d(eye, weight, stride=stride, dilation=dilation, groups=groups).reshape(basis, -1)

    def apply(A: Tensor) -> Tensor:
        Bp, R = A.shape[:2]
        if M is not None:
            out = A.reshape(Bp * R, basis) @ M
        elif transpose.fold_path(weight, A, dilation, groups):
            out = transpose.conv2d_input_fold(A.reshape(Bp * R, Co, kh, kw), weight, (out_h, out_w), stride, (0, 0))
        else:
            out = F.conv_transpose2d(A.reshape(Bp * R, Co, kh, kw), weight, stride=stride, dilation=dilation,
                                     groups=groups)
        return out.reshape(Bp, R, ci, out_h, out_w)

    return apply, (out_h, out_w)


def _masked(A: Tensor, inside: Tensor | None) -> Tensor:
    """``A * inside``, in ``A``'s own (fresh) buffer when no gradient is recorded (``None``: ``A``)."""
    if inside is None:
        return A
    return A * inside if torch.is_grad_enabled() else A.mul_(inside)


@rule("conv", DOMAIN)
@owns_result
def conv(p: Patches, x, weight: Tensor, bias: Tensor | None, *, in_shapes, stride, padding, dilation,
         groups) -> tuple:
    """Compose every window with the kernel; the bias moves into the bias term."""
    lb = 0.0 if bias is None else p.lA.sum((3, 4)) @ bias
    ub = 0.0 if bias is None else p.uA.sum((3, 4)) @ bias
    transpose, kernel = _window_transpose(tuple(int(d) for d in p.lA.shape[2:]), weight, stride, dilation, groups,
                                          p.lA.shape[0] * p.lA.shape[1])
    new_stride = (p.stride[0] * stride[0], p.stride[1] * stride[1])
    new_pad = (p.padding[0] * stride[0] + padding[0], p.padding[1] * stride[1] + padding[1])
    inside = _inside(p, kernel, new_stride, new_pad, tuple(in_shapes[0][-2:]), p.lA.dtype)
    lA = _masked(transpose(p.lA), inside)
    uA = _upper(p, lambda A: _masked(transpose(A), inside), lA)
    return (_with(p, lA, uA, lb, ub, stride=new_stride, padding=new_pad), None, None)


conv.covers = lambda g, n: (n.inputs[1] is not None and not g[n.inputs[1]].perturbed
                            and len(g[n.inputs[1]].shape) == 4)  # 2-d convolutions with a constant weight


@rule("avg_pool2d", DOMAIN)
@owns_result
def avg_pool2d(p: Patches, x, *, in_shapes, kernel_size, stride, padding, ceil_mode, count_include_pad,
               divisor_override) -> tuple:
    """Average pooling as a depthwise convolution with a constant kernel (only the exact cases reach here)."""
    C = in_shapes[0][0]
    k = tuple(kernel_size)
    w = torch.full((C, 1) + k, 1.0 / (k[0] * k[1]), dtype=p.lA.dtype, device=p.lA.device)
    out = conv(p, x, w, None, in_shapes=in_shapes, stride=tuple(stride), padding=tuple(padding), dilation=(1, 1),
               groups=C)
    return out[:1]


avg_pool2d.covers = lambda g, n: (not n.attrs["ceil_mode"] and n.attrs["divisor_override"] is None
                                  and (n.attrs["count_include_pad"] or not any(n.attrs["padding"])))


def _map(p: Patches, t: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The windows of a constant broadcast against a node of per-sample ``shape`` (batch dim kept if it has one)."""
    if t.dim() == len(shape) + 1:
        t = t.expand((t.shape[0],) + tuple(shape))
    else:
        t = t.expand(tuple(shape)).unsqueeze(0)
    return window_rows(p, t)


@rule("scale_shift", DOMAIN)
@forwards_state
def scale_shift(p: Patches, x, scale: Tensor | None, shift: Tensor | None, *, in_shapes) -> tuple:
    """``A * scale`` window by window; ``A·shift`` into the bias."""
    shape = tuple(in_shapes[0])
    lb, ub = (0.0, 0.0) if shift is None else _dots(p, _map(p, shift, shape))
    if scale is None:
        return (_with(p, p.lA, p.uA, lb, ub), None, None)
    s = _map(p, scale, shape)
    lA = p.lA * s
    return (_with(p, lA, _upper(p, lambda A: A * s, lA), lb, ub), None, None)


def _two_inputs(p: Patches, x, y, in_shapes, sign: float) -> tuple:
    """Shared by add (sign +1) and sub (sign -1); constants go to the bias, the bias to the first input."""
    xp, yp = not isinstance(x, Tensor), not isinstance(y, Tensor)
    shape = tuple(in_shapes[0] if xp else in_shapes[1])
    lb = ub = 0.0
    if not xp:
        lb, ub = _dots(p, _map(p, x, shape))
    if not yp:
        ly, uy = _dots(p, _map(p, y, shape))
        lb, ub = lb + sign * ly, ub + sign * uy
    biased = _with(p, p.lA, p.uA, lb, ub)
    out: list[Patches | None] = [biased if xp else None, None]
    if yp:
        src = zero_bias(p) if xp else biased
        out[1] = src if sign > 0 else src._replace(lA=-src.lA, uA=-src.uA)
    return tuple(out)


@rule("add", DOMAIN)
def add(p: Patches, x, y, *, in_shapes) -> tuple:
    """Both perturbed inputs receive the rows (bias to the first); a constant goes to the bias."""
    return _two_inputs(p, x, y, in_shapes, 1.0)


@rule("sub", DOMAIN)
def sub(p: Patches, x, y, *, in_shapes) -> tuple:
    """``x - y``: the second input receives ``-A``."""
    return _two_inputs(p, x, y, in_shapes, -1.0)


def _same_shapes(g, n) -> bool:
    """Every perturbed input has the node's shape (windows do not broadcast)."""
    return all(g[i].shape == n.shape for i in n.inputs if i is not None and g[i].perturbed)


add.covers = sub.covers = _same_shapes


def relax_patches(p: Patches, x: Interval, *, op: str, mode: Mode = Mode.CROWN, consume: bool = False,
                  **attrs) -> Patches:
    """Back through an activation: positive lower coefficients take the lower line, negative the upper line.

    The lines' windows are gathered and applied by blocks of rows (:func:`~.backward.row_blocks`) into one
    output buffer per side, so the gathered windows never exist for all rows at once.  ``consume``: the walk
    holds ``p``'s coefficients nowhere else; that buffer is then theirs (where :func:`~.backward.consumable`)."""
    lines = relax(op, x.lower, x.upper, mode, **attrs)
    # an all-zero bias line (a ReLU's lower line) is not gathered: through_lines skips it
    maps = [windows(p, t) if t is not None else None
            for t in (lines.lw, lines.lb if maybe_nonzero(lines.lb) else None,
                      lines.uw, lines.ub if maybe_nonzero(lines.ub) else None)]
    lower_only = p.uA.shape[1] == 0
    B, R = p.pos.shape[:2]
    shape = (B, R) + tuple(p.lA.shape[2:])
    own = sides_owned(p, consume)
    l_own = own and consumable(p.lA, shape)
    u_own = own and not lower_only and consumable(p.uA, shape)
    blocks = _blocks(p)
    if blocks is None:
        lw, lb, uw, ub = (None if w is None else w.rows() for w in maps)
        lA, lbias = through_lines(p.lA, lw, lb, uw, ub, in_place=l_own)
        if lower_only:
            return _with(p, lA, lA[:, :0], lbias, 0.0)
        uA, ubias = through_lines(p.uA, uw, ub, lw, lb, in_place=u_own)
        return _with(p, lA, uA, lbias, ubias)
    lA, lbias = (p.lA if l_own else p.lA.new_empty(shape)), p.lb.new_empty(B, R)
    uA, ubias = (lA[:, :0], 0.0) if lower_only else ((p.uA if u_own else p.uA.new_empty(shape)), p.ub.new_empty(B, R))
    for s in blocks:
        lw, lb, uw, ub = (None if w is None else w.rows(s) for w in maps)
        lbias[:, s] = through_lines(p.lA[:, s], lw, lb, uw, ub, out=None if l_own else lA[:, s], in_place=l_own)[1]
        if not lower_only:
            ubias[:, s] = through_lines(p.uA[:, s], uw, ub, lw, lb, out=None if u_own else uA[:, s],
                                        in_place=u_own)[1]
    return _with(p, lA, uA, lbias, ubias)


def _activation(op: str):

    def patches(p: Patches, x: Interval, *, in_shapes, mode: Mode = Mode.CROWN, consume: bool = False,
                **attrs) -> tuple:
        return (relax_patches(p, x, op=op, mode=mode, consume=consume, **attrs),)

    patches.__name__ = patches.__qualname__ = f"{op}_patches"
    patches.__doc__ = f"Back through ``{op}`` window by window, with its relaxation lines."
    return owns_result(consumes_state(patches))


@deriver(DOMAIN)
def derive(d: OpDef):
    """The patches rule of an elementwise activation: its relaxation's lines (``None`` for other ops)."""
    return _activation(d.name) if d.relaxation is not None and d.elementwise else None


__all__ = ["Patches", "add_patches", "concretize", "relax_patches", "start_rows", "window_rows", "windows",
           "zero_bias"]

