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


def _margins(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    """Margins ``z_y − max_{j≠y} z_j`` (negative = misclassified)."""
    z = model(x)
    true = z.gather(1, y[:, None]).squeeze(1)
    other = z.masked_fill(torch.nn.functional.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(1)
    return true - other


def pgd_linf(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, eps: float, *, clip: tuple[float, float]
             | None = (0.0, 1.0), steps: int = 200, restarts: int = 10, step_size: float | None = None,
             start: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Untargeted PGD in the clipped L∞ ball: per sample, the point with the lowest margin over all restarts.

    The first restart starts at ``start`` (default the clean input), later ones at
    uniform random points of the ball.  Every iterate is projected onto
    ``[x − eps, x + eps] ∩ clip``, so the result never leaves the ε-ball.
    """
    lo, hi = x - eps, x + eps
    if clip is not None:
        lo, hi = lo.clamp(*clip), hi.clamp(*clip)
    alpha = step_size if step_size is not None else max(2.5 * eps / max(steps, 1), eps / 50)
    best_x = x.clone() if start is None else torch.minimum(torch.maximum(start, lo), hi).detach()
    with torch.no_grad():
        best_m = _margins(model, best_x, y)
    with torch.enable_grad():
        for r in range(restarts):
            if r == 0:
                adv = best_x.clone()
            else:
                u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
                adv = lo + (hi - lo) * u
            for _ in range(steps):
                adv.requires_grad_(True)
                (g,) = torch.autograd.grad(_margins(model, adv, y).sum(), adv)
                with torch.no_grad():
                    adv = torch.minimum(torch.maximum(adv - alpha * g.sign(), lo), hi)
            with torch.no_grad():
                m = _margins(model, adv, y)
                better = m < best_m
                best_m = torch.where(better, m, best_m)
                best_x[better] = adv[better]
    return best_x.detach()


def interval_attack(model: Callable[[Tensor], Tensor], bound_net: Callable[..., tuple[Tensor, Tensor]], x: Tensor,
                    y: Tensor, eps: float, *, clip: tuple[float, float] | None = (0.0, 1.0), steps: int = 20,
                    sub_radius: float = 0.5, pgd_steps: int = 20, num_classes: int | None = None) -> Tensor:
    """MixTrain's interval attack (Wang et al., Algorithm 1): follow the gradient of the *symbolic
    interval* worst-case margin of a sub-box of radius ``sub_radius·eps`` around the current point
    (which sees further than the point gradient), then finish with a PGD search.

    ``bound_net(xl, xu, C)`` is a compiled bound network.  The result stays inside the clipped ε-ball.
    """
    from boundc.specs import margin_spec

    lo, hi = x - eps, x + eps
    if clip is not None:
        lo, hi = lo.clamp(*clip), hi.clamp(*clip)
    k = num_classes or model(x[:1]).shape[1]
    C = margin_spec(y, k).to(x.dtype)
    step = eps / max(steps, 1) * 2.0
    cur = x.clone()
    r = sub_radius * eps
    with torch.enable_grad():
        for _ in range(steps):
            cur.requires_grad_(True)
            sl, su = torch.maximum(cur - r, lo), torch.minimum(cur + r, hi)
            lower, _ = bound_net(torch.minimum(sl, su), torch.maximum(sl, su), C)
            (g,) = torch.autograd.grad(lower.min(1).values.sum(), cur)
            with torch.no_grad():
                cur = torch.minimum(torch.maximum(cur - step * g.sign(), lo), hi)
    return pgd_linf(model, x, y, eps, clip=clip, steps=pgd_steps, restarts=1, start=cur)
