"""Attacks inside a box: projected gradient descent with restarts.

Used to test soundness (no attacked point may leave the bounds), to evaluate
models (PGD accuracy) and to look for counterexamples (``boundc verify``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def pgd_box(objective: Callable[[Tensor], Tensor], lower: Tensor, upper: Tensor, *, steps: int = 50,
            restarts: int = 1, step_size: float = 0.1, generator: torch.Generator | None = None) -> Tensor:
    """Minimise ``objective(x)`` (shape (B, ...) → per-sample values (B, M)) over the box.

    Each of the M columns is minimised independently (one attack per output
    coordinate, run together).  Returns the best value found per sample and
    column, shape (B, M).  Every iterate stays inside ``[lower, upper]``; the
    step is ``step_size`` times the box width, signed-gradient (L∞ steepest descent).
    """
    width = (upper - lower)
    best: Tensor | None = None
    with torch.enable_grad():
        for r in range(restarts):
            u = torch.rand(lower.shape, generator=generator, dtype=lower.dtype).to(lower.device)
            x0 = lower + width * (u if r else torch.full_like(u, 0.5))
            with torch.no_grad():
                m = objective(x0).shape[1]
            # one copy of the input per output column so each column is attacked on its own
            x = x0.unsqueeze(1).expand(-1, m, *x0.shape[1:]).reshape(-1, *x0.shape[1:]).clone()
            lo = lower.repeat_interleave(m, 0)
            hi = upper.repeat_interleave(m, 0)
            w = width.repeat_interleave(m, 0)
            eye = torch.eye(m, dtype=lower.dtype, device=lower.device).repeat(lower.shape[0], 1)
            for _ in range(steps):
                x.requires_grad_(True)
                vals = (objective(x) * eye).sum(1)
                (grad,) = torch.autograd.grad(vals.sum(), x)
                with torch.no_grad():
                    x = torch.minimum(torch.maximum(x - step_size * w * grad.sign(), lo), hi)
            with torch.no_grad():
                found = (objective(x) * eye).sum(1).view(lower.shape[0], m)
            best = found if best is None else torch.minimum(best, found)
    return best
