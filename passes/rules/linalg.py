"""Batched products the rules share, written in the layouts that reach fast BLAS kernels.

``torch.einsum("bse,be->bs", A, v)`` lowers to a ``bmm`` with a ``(B, E, 1)``
operand of unit strides, which CPU BLAS runs as a slow batched matrix–vector
product (5–10× slower than the same ``bmm`` with the vector laid out as a
transposed row, measured on this project's benchmark shapes).  These helpers
give the same results through the fast layouts, and stay plain ``matmul`` /
``sum`` ops (differentiable, traceable, exportable to ONNX).  While tracing for
export they stay one ``einsum`` (one ONNX node instead of four).
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


__all__ = ["matvec", "rowdot", "vecmat"]
