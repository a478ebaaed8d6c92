"""Explicit transposes (adjoints) of the parameter-free linear ops, written with plain torch ops.

The backward rules apply these to coefficient tensors ``A`` of shape
``(B, S, *out)`` and get ``(B, S, *in)`` with ``<A, f(x)> == <f^T(A), x>`` for
the linear part ``f`` of each op.  Nothing here calls :mod:`torch.func` or
autograd at run time and nothing builds a dense matrix of the op, so the
generated code traces and exports to ONNX as ordinary ops (slices, pads,
``conv_transpose``, small per-axis matmuls) and its size does not grow with the
square of a layer's width.  The per-op shape arithmetic is plain Python on the
static per-sample shapes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from boundc.errors import BoundcError

from .linalg import blocks_allowed, row_blocks


def _fold(A: Tensor, keep: int) -> Tensor:
    """Merge all but the last ``keep`` dimensions of ``A`` into one."""
    return A.reshape((-1,) + tuple(A.shape[A.dim() - keep:]))


def crop_pad(A: Tensor, dim: int, before: int, after: int) -> Tensor:
    """Along ``dim``: drop ``-before``/``-after`` entries where negative, add zeros where positive."""
    n = A.shape[dim]
    lo, hi = max(0, -before), n - max(0, -after)
    if lo or hi != n:
        A = A.narrow(dim, lo, max(0, hi - lo))
    if before > 0 or after > 0:
        shape = list(A.shape)
        parts = []
        if before > 0:
            shape[dim] = before
            parts.append(A.new_zeros(shape))
        parts.append(A)
        if after > 0:
            shape[dim] = after
            parts.append(A.new_zeros(shape))
        A = torch.cat(parts, dim)
    return A


# -- reshape / permute ------------------------------------------------------------------

def reshape_t(A: Tensor, in_shape: tuple[int, ...]) -> Tensor:
    """Transpose of a per-sample reshape: reshape back."""
    return A.reshape(tuple(A.shape[:2]) + tuple(in_shape))


def permute_t(A: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Transpose of ``x.permute(dims)`` (batch first and kept in place): the inverse permutation."""
    nd = len(dims)
    dims = tuple(d % nd for d in dims)
    if dims[0] != 0:
        raise BoundcError(f"permute {dims} moves the batch dimension; it is not a per-sample op")
    inv = [0] * nd
    for i, d in enumerate(dims):
        inv[d] = i
    return A.permute([0, 1] + [inv[j] + 1 for j in range(1, nd)])


# -- pad ------------------------------------------------------------------------------------

def _pad_axis_t(A: Tensor, dim: int, a: int, b: int, mode: str) -> Tensor:
    """Transpose along one axis of a padding by ``a`` before / ``b`` after (``mode`` != constant)."""
    if a < 0 or b < 0:
        raise BoundcError(f"{mode} padding with negative amounts ({a}, {b}) is not supported")
    L = A.shape[dim] - a - b
    g = A.narrow(dim, a, L)
    lead, tail = A.narrow(dim, 0, a), A.narrow(dim, a + L, b)
    if mode == "reflect":  # out[a - 1 - k] = x[k + 1], out[a + L + k] = x[L - 2 - k]
        parts = []
        if a:
            parts.append((1, lead.flip(dim)))
        if b:
            parts.append((L - 1 - b, tail.flip(dim)))
    elif mode == "replicate":  # the pads copy the first / last entry
        parts = []
        if a:
            parts.append((0, lead.sum(dim, keepdim=True)))
        if b:
            parts.append((L - 1, tail.sum(dim, keepdim=True)))
    elif mode == "circular":  # out[k] = x[L - a + k], out[a + L + k] = x[k]
        parts = []
        if a:
            parts.append((L - a, lead))
        if b:
            parts.append((0, tail))
    else:
        raise BoundcError(f"unknown padding mode {mode!r}")
    for at, piece in parts:
        g = g + crop_pad(piece, dim, at, L - at - piece.shape[dim])
    return g


def pad_t(A: Tensor, pad: tuple[int, ...], mode: str) -> Tensor:
    """Transpose of the linear part of ``F.pad(x, pad, mode)`` (``pad`` last dimension first)."""
    for k in range(len(pad) // 2):
        dim = A.dim() - 1 - k
        a, b = int(pad[2 * k]), int(pad[2 * k + 1])
        if mode == "constant":
            A = crop_pad(A, dim, -a, -b)
        elif a or b:
            A = _pad_axis_t(A, dim, a, b, mode)
    return A


# -- average pooling --------------------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def _avg_pool_axis(n_in: int, n_out: int, k: int, s: int, p: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-axis (padded-window size, in-input count) of each output index (PyTorch's avg_pool kernel)."""
    padded, inside = [], []
    for o in range(n_out):
        i0 = o * s - p
        i1 = min(i0 + k, n_in + p)
        padded.append(i1 - i0)
        inside.append(max(0, min(i1, n_in) - max(i0, 0)))
    return tuple(padded), tuple(inside)


def _avg_pool_scale(in_hw: tuple[int, int], out_hw: tuple[int, int], kernel_size, stride, padding,
                    count_include_pad: bool, divisor_override: int | None) -> list[list[float]]:
    """``1 / divisor`` of each output position (0 for windows entirely in the padding)."""
    (ph, ih), (pw, iw) = (_avg_pool_axis(in_hw[d], out_hw[d], kernel_size[d], stride[d], padding[d])
                          for d in (0, 1))
    rows = []
    for oh in range(out_hw[0]):
        row = []
        for ow in range(out_hw[1]):
            if ih[oh] == 0 or iw[ow] == 0:
                row.append(0.0)
                continue
            div = divisor_override or (ph[oh] * pw[ow] if count_include_pad else ih[oh] * iw[ow])
            row.append(1.0 / div)
        rows.append(row)
    return rows


def avg_pool2d_t(A: Tensor, in_shape: tuple[int, ...], *, kernel_size, stride, padding, ceil_mode: bool,
                 count_include_pad: bool, divisor_override: int | None) -> Tensor:
    """Transpose of ``F.avg_pool2d``: scale by ``1/divisor`` per output, then a transposed convolution with a
    uniform ``k×k`` kernel, cropped (or zero-extended) to the input.  ``ceil_mode`` needs nothing extra:
    the output size comes from ``A`` and every window is clipped to the input."""
    k, s, p = (tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * 2 for v in (kernel_size, stride, padding))
    H, W = int(in_shape[-2]), int(in_shape[-1])
    Ho, Wo = int(A.shape[-2]), int(A.shape[-1])
    scale = A.new_tensor(_avg_pool_scale((H, W), (Ho, Wo), k, s, p, count_include_pad, divisor_override))
    lead = tuple(A.shape[:-2])
    x = _fold(A * scale, 2)
    if k == s and not torch.jit.is_tracing():  # non-overlapping windows: each output's share is copied over its
        # k×k window (an exported graph keeps the one-kernel transposed convolution: fewer nodes); widened
        # one axis at a time, the copies run over contiguous rows (2.4x faster than one 5-d expand)
        n = x.shape[0]
        g = x.unsqueeze(-1).expand(n, Ho, Wo, k[1]).reshape(n, Ho, 1, Wo * k[1])
        g = g.expand(n, Ho, k[0], Wo * k[1]).reshape(n, Ho * k[0], Wo * k[1])
    else:
        w = A.new_ones(1, 1, k[0], k[1])
        x = x.unsqueeze(1)
        if fold_path(w, x, (1, 1), 1):
            size = ((Ho - 1) * s[0] + k[0], (Wo - 1) * s[1] + k[1])
            g = conv2d_input_fold(x, w, size, s, (0, 0)).squeeze(1)
        else:
            g = F.conv_transpose2d(x, w, stride=s).squeeze(1)
    # g is in padded-input coordinates, starting at -p
    g = crop_pad(g, 1, -p[0], H + p[0] - g.shape[1])
    g = crop_pad(g, 2, -p[1], W + p[1] - g.shape[2])
    return g.reshape(lead + (H, W))


@functools.lru_cache(maxsize=256)
def _adaptive_axis(n_in: int, n_out: int) -> tuple[tuple[float, ...], ...]:
    """The (n_out, n_in) averaging matrix of one axis of adaptive average pooling."""
    rows = []
    for o in range(n_out):
        start, end = (o * n_in) // n_out, -((-(o + 1) * n_in) // n_out)
        rows.append(tuple(1.0 / (end - start) if start <= i < end else 0.0 for i in range(n_in)))
    return tuple(rows)


def adaptive_avg_pool2d_t(A: Tensor, in_shape: tuple[int, ...]) -> Tensor:
    """Transpose of ``F.adaptive_avg_pool2d``: ``P_h^T · A · P_w`` with the small per-axis averaging matrices."""
    H, W = int(in_shape[-2]), int(in_shape[-1])
    Ph = A.new_tensor(_adaptive_axis(H, int(A.shape[-2])))
    Pw = A.new_tensor(_adaptive_axis(W, int(A.shape[-1])))
    return torch.matmul(torch.matmul(Ph.t(), A), Pw)


# -- convolution --------------------------------------------------------------------------------

_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


#: Input channels up to which the CPU float32 transpose of a 2-d convolution runs as one GEMM and a ``fold``
#: (col2im): oneDNN's transposed convolution is 1.2-4x slower for these narrow outputs (the first layer of an
#: image model: 1 or 3 channels), while for wider ones it wins (``bench/conv_transpose.py``).  Every other
#: transpose is ``conv_transpose``: a stride-1 one run as a convolution with the flipped kernel was no faster
#: inside the bound passes (``bench/results/conv_transpose_cpu.txt``).
FOLD_MAX_CHANNELS = 4


def fold_path(weight: Tensor, grad_output: Tensor, dilation: tuple, groups: int) -> bool:
    """Whether :func:`conv2d_input_fold` is the faster transpose here (and the call is not being exported)."""
    return (weight.dim() == 4 and groups == 1 and all(d == 1 for d in dilation)
            and weight.shape[1] <= FOLD_MAX_CHANNELS and grad_output.dtype == torch.float32
            and grad_output.device.type == "cpu" and not torch.jit.is_tracing())


def conv2d_input_fold(grad_output: Tensor, weight: Tensor, in_hw: tuple[int, int], stride: tuple[int, int],
                      padding: tuple[int, int]) -> Tensor:
    """The transpose of a 2-d convolution as ``Wᵀ · A`` per position (one GEMM) and ``fold`` (col2im, which
    sums the overlapping windows): the same map as ``conv_transpose2d``.  By blocks of rows
    (:func:`~.linalg.row_blocks`) when no gradient is recorded: the columns never exist for all rows."""
    N, Co = grad_output.shape[:2]
    if N == 0:
        return grad_output.new_zeros((0, weight.shape[1]) + tuple(in_hw))
    wt = weight.reshape(Co, -1).t()

    def transposed(A: Tensor) -> Tensor:
        cols = torch.bmm(wt.expand(A.shape[0], -1, -1), A.flatten(2))  # matmul would copy A
        return F.fold(cols, in_hw, tuple(weight.shape[2:]), stride=stride, padding=padding)

    # the columns are the big temporary
    blocks = row_blocks(N, wt.shape[1] * grad_output[0, 0].numel()) if blocks_allowed() else None
    if blocks is None:
        return transposed(grad_output)
    out = grad_output.new_empty((N, weight.shape[1]) + tuple(in_hw))
    for s in blocks:
        out[s] = transposed(grad_output[s])
    return out


def conv_input(nd: int) -> Callable[..., Tensor]:
    """``torch.nn.grad.conv{nd}d_input`` as a transposed convolution with the output padding that restores
    the input size (plain ops: traces and exports, unlike ``aten.convolution_backward``); on CPU in float32,
    narrow 2-d outputs take :func:`conv2d_input_fold`."""
    transpose = _CONV_T[nd]

    def conv_input_nd(input_size, weight: Tensor, grad_output: Tensor, stride=1, padding=0, dilation=1,
                      groups: int = 1) -> Tensor:
        st, pd, dl = (tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd for v in (stride, padding, dilation))
        want = [int(d) for d in tuple(input_size)[-nd:]]
        if fold_path(weight, grad_output, dl, groups):
            return conv2d_input_fold(grad_output, weight, (want[0], want[1]), st, pd)
        out = [int(d) for d in grad_output.shape[-nd:]]
        extra = [want[i] - ((out[i] - 1) * st[i] - 2 * pd[i] + dl[i] * (weight.shape[2 + i] - 1) + 1)
                 for i in range(nd)]
        return transpose(grad_output, weight, None, st, pd, tuple(extra), groups, dl)

    conv_input_nd.__name__ = conv_input_nd.__qualname__ = f"conv{nd}d_input"
    return conv_input_nd


# -- gather / reduce / transposed convolution ------------------------------------------------------

def gather_t(A: Tensor, in_shape: tuple[int, ...], dim: int, index: tuple[int, ...]) -> Tensor:
    """Transpose of ``x.index_select(dim, index)`` (``dim`` counts the batch): scatter-add ``A`` into zeros
    (repeated indices add up)."""
    d = dim + 1
    idx = torch.tensor(index, dtype=torch.long, device=A.device)
    out = A.new_zeros(tuple(A.shape[:2]) + tuple(in_shape))
    return out.index_add(d, idx, A)


def reduce_sum_t(A: Tensor, in_shape: tuple[int, ...], dims: tuple[int, ...], keepdim: bool,
                 scale: float) -> Tensor:
    """Transpose of ``scale * x.sum(dims, keepdim)`` (``dims`` count the batch): broadcast ``scale * A``
    back over the reduced dimensions."""
    if not keepdim:
        for d in sorted(int(d) for d in dims):
            A = A.unsqueeze(d + 1)
    if scale != 1.0:
        A = A * scale
    return A.expand(tuple(A.shape[:2]) + tuple(in_shape))


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def conv_transpose_t(A: Tensor, in_shape: tuple[int, ...], weight: Tensor, stride, padding, dilation,
                     groups: int) -> Tensor:
    """Transpose of ``conv_transpose{N}d(x, weight, ...)``: the convolution with the same weight, stride, padding,
    dilation and groups (cropped / zero-extended to the input size, which it already has)."""
    nd = weight.dim() - 2
    lead = tuple(A.shape[:2])
    g = _CONV[nd](_fold(A, nd + 1), weight, None, tuple(stride), tuple(padding), tuple(dilation), groups)
    for k in range(nd):
        dim = g.dim() - nd + k
        want = int(in_shape[-nd + k])
        g = crop_pad(g, dim, 0, want - int(g.shape[dim]))
    return g.reshape(lead + tuple(in_shape))


__all__ = ["adaptive_avg_pool2d_t", "avg_pool2d_t", "conv2d_input_fold", "conv_input",
           "conv_transpose_t", "crop_pad", "fold_path", "gather_t", "pad_t",
           "permute_t", "reduce_sum_t", "reshape_t"]
