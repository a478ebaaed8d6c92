"""Batched products the rules share, written in the layouts that reach fast BLAS kernels.

``torch.einsum("bse,be->bs", A, v)`` lowers to a ``bmm`` with a ``(B, E, 1)``
operand of unit strides, which CPU BLAS runs as a slow batched matrix–vector
product (5–10× slower than the same ``bmm`` with the vector laid out as a
transposed row, measured on this project's benchmark shapes).  These helpers
give the same results through the fast layouts, and stay plain ``matmul`` /
``sum`` ops (differentiable, traceable, exportable to ONNX).  While tracing for
export they stay one ``einsum`` (one ONNX node instead of four).  :func:`row_blocks` splits a rule's
rows into blocks so that its coefficient-sized temporaries exist for one block at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor


def matvec(A: Tensor, v: Tensor) -> Tensor:
    """``Σ_e A[b, s, e]·v[b, e]``: ``A`` (B or 1, S, E), ``v`` (B or 1, E) → (B, S)."""
    if torch.jit.is_tracing():
        return torch.einsum("bse,be->bs", A, v)
    return (A @ v.unsqueeze(1).transpose(1, 2)).squeeze(2)


def vecmat(v: Tensor, A: Tensor) -> Tensor:
    """``Σ_n v[b, n]·A[b, n, k]``: ``v`` (B or 1, N), ``A`` (B or 1, N, K) → (B, K)."""
    if torch.jit.is_tracing():
        return torch.einsum("bn,bnk->bk", v, A)
    return (v.unsqueeze(1) @ A).squeeze(1)


def rowdot(A: Tensor, t: Tensor) -> Tensor:
    """``Σ_entries A * t`` per (sample, row): ``A`` (B or 1, S, ...), ``t`` (B or 1, S or 1, ...) → (B, S)."""
    A, t = A.flatten(2), t.flatten(2)
    if t.shape[1] == 1:
        return matvec(A, t[:, 0])
    if torch.jit.is_tracing():
        return torch.einsum("bse,bse->bs", A, t)
    return (A * t).sum(2)


#: Entries of one block of rows when a rule forms coefficient-sized temporaries block by block.
_BLOCK_ENTRIES = 1 << 17


def blocks_allowed() -> bool:
    """Whether rules may work by :func:`row_blocks` now: not while a gradient is recorded (the blocks are
    written into one buffer in place) nor while tracing for export (a graph of fixed blocks)."""
    return not (torch.is_grad_enabled() or torch.jit.is_tracing())


def row_blocks(rows: int, per_row: int) -> list[slice] | None:
    """Slices of ``rows`` rows of ``per_row`` entries each (over all samples) for a rule that forms
    coefficient-sized temporaries: one block's temporaries hold about :data:`_BLOCK_ENTRIES` entries, so
    the peak stays near the coefficients' own size.  ``None`` (all rows at once) for a small tensor or
    where :func:`blocks_allowed` says no."""
    if not blocks_allowed() or rows * per_row <= 2 * _BLOCK_ENTRIES:
        return None
    step = max(1, _BLOCK_ENTRIES // max(1, per_row))
    return [slice(s, s + step) for s in range(0, rows, step)]


__all__ = ["blocks_allowed", "matvec", "row_blocks", "rowdot", "vecmat"]
