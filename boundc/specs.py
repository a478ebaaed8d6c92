"""Input sets and output specifications."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from boundc.errors import BoundcError


def _check_finite(name: str, t: Tensor) -> None:
    if not torch.is_floating_point(t):
        raise BoundcError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        bad = (~torch.isfinite(t)).nonzero()[0].tolist()
        raise BoundcError(f"{name} contains NaN or Inf (first at index {bad})")


def linf_box(x: Tensor, eps: float | Tensor, clip: tuple[float, float] | None = None) -> tuple[Tensor, Tensor]:
    """The L∞ ball ``{x' : |x' - x|_∞ <= eps}`` as a box ``(lower, upper)``.

    ``eps`` is a number or a tensor broadcastable to ``x`` (e.g. per sample,
    shape (B, 1, 1, 1)).  ``clip=(lo, hi)`` intersects the ball with the data
    range.  Raises :class:`ValueError` for negative or non-finite ``eps`` and
    NaN/Inf in ``x``.
    """
    _check_finite("x", x)
    eps_t = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if not bool(torch.isfinite(eps_t).all()):
        raise BoundcError(f"eps must be finite, got {eps}")
    if bool((eps_t < 0).any()):
        raise BoundcError(f"eps must be >= 0, got {eps if eps_t.numel() == 1 else eps_t.min().item()}")
    lower, upper = x - eps_t, x + eps_t
    if clip is not None:
        lo, hi = clip
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise BoundcError(f"clip must be a finite range (lo, hi) with lo <= hi, got {clip}")
        lower, upper = lower.clamp(lo, hi), upper.clamp(lo, hi)
    return lower, upper


def other_classes(num_classes: int, device: torch.device | str | None = None) -> Tensor:
    """Index table (K, K-1): row ``i`` lists the classes ``j != i`` in increasing order."""
    ar = torch.arange(num_classes, device=device)
    return ar[1:].expand(num_classes, -1) - (ar[1:].unsqueeze(0) <= ar.unsqueeze(1)).long()


def margin_rows(labels: Tensor, eye: Tensor, others: Tensor) -> Tensor:
    """Rows ``e_label - e_j`` (B, K-1, K) from an identity ``eye`` (K, K) and ``others = other_classes(K)``.

    Only gathers (no data-dependent shapes), so it also traces into ONNX; :func:`margin_spec`
    is the validated entry point.
    """
    return eye[labels].unsqueeze(1) - eye[others[labels]]


def margin_spec(labels: Tensor, num_classes: int) -> Tensor:
    """Margin specification ``C`` of shape (B, K-1, K): rows ``e_true - e_j`` for ``j != true``.

    ``C @ y`` are the margins ``y_true - y_j``; a sample is verified iff every
    row's lower bound is > 0.
    """
    labels = torch.as_tensor(labels)
    if labels.dim() != 1:
        raise BoundcError(f"labels must be a 1-d tensor of class indices, got shape {list(labels.shape)}")
    if num_classes < 2:
        raise BoundcError(f"num_classes must be >= 2, got {num_classes}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise BoundcError(f"labels must lie in [0, {num_classes}), got values in "
                          f"[{int(labels.min())}, {int(labels.max())}]")
    return margin_rows(labels.long(), torch.eye(num_classes, device=labels.device),
                       other_classes(num_classes, labels.device))


def check_box(lower: Tensor, upper: Tensor, input_shape: tuple[int, ...]) -> None:
    """Validate an input box against the model's per-example input shape."""
    for name, t in (("x_lower", lower), ("x_upper", upper)):
        if not isinstance(t, Tensor):
            raise BoundcError(f"{name} must be a tensor, got {type(t).__name__}")
        if tuple(t.shape[1:]) != tuple(input_shape) or t.dim() != len(input_shape) + 1:
            raise BoundcError(f"{name} has shape {list(t.shape)}, expected [batch, {', '.join(map(str, input_shape))}]")
        _check_finite(name, t)
    if lower.shape != upper.shape:
        raise BoundcError(f"x_lower {list(lower.shape)} and x_upper {list(upper.shape)} differ in shape")
    if bool((lower > upper).any()):
        raise BoundcError("x_lower > x_upper somewhere: the box is empty")


def check_spec(C: Tensor, batch: int, num_outputs: int) -> None:
    """Validate a spec matrix of shape (B, S, K)."""
    if not isinstance(C, Tensor) or C.dim() != 3 or C.shape[0] != batch or C.shape[2] != num_outputs:
        shape = list(C.shape) if isinstance(C, Tensor) else type(C).__name__
        raise BoundcError(f"spec C must have shape [batch={batch}, specs, outputs={num_outputs}], got {shape}")
    _check_finite("C", C)
