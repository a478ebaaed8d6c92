"""Attacks inside a box: projected gradient descent (PGD) with restarts.

:func:`pgd` is the one implementation: it minimises every column of an
objective over a box, keeping the best point and value seen.  The other
functions are thin wrappers: :func:`pgd_box` (best values; soundness tests),
:func:`pgd_linf` (untargeted attack in a clipped L∞ ball; PGD accuracy) and
:func:`interval_attack` (MixTrain).  ``boundc verify`` calls :func:`pgd` on the
violation of a property's disjuncts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from boundc.errors import BoundcError

#: A step-size schedule: the step (in units of ``step_unit``) at iteration ``t`` (0-based).
Schedule = Callable[[int], float]


@dataclass
class PgdResult:
    """Best points and values found by :func:`pgd`.

    Attributes:
        x: (B, M, *input) the best point of each sample for each objective column.
        value: (B, M) the objective there (the lowest value seen at any iterate of any restart).
    """

    x: Tensor
    value: Tensor


def pgd(objective: Callable[[Tensor], Tensor], lower: Tensor, upper: Tensor, *, steps: int = 50, restarts: int = 1,
        step_size: float | Schedule = 0.1, step_unit: Tensor | float | None = None, start: Tensor | None = None,
        generator: torch.Generator | None = None, deadline: float | None = None) -> PgdResult:
    """Minimise ``objective`` over the box ``[lower, upper]`` (B, *input) by signed-gradient steps.

    ``objective`` maps points (N, *input) to values (N, M); each of the M columns is
    minimised on its own (one copy of every sample per column, run together).  The first
    restart starts at ``start`` (default the box centre), later ones at uniform random
    points of the box.  Iteration ``t`` steps by ``step_size(t) * step_unit`` per coordinate
    (``step_size`` a number or a schedule; ``step_unit`` default the box width, i.e. the
    step is relative), then projects onto the box, so every iterate stays inside it.
    Stops early (between steps) once ``time.monotonic()`` passes ``deadline``.
    """
    if lower.shape != upper.shape:
        raise BoundcError(f"pgd: lower {list(lower.shape)} and upper {list(upper.shape)} differ in shape")
    b, shape = lower.shape[0], tuple(lower.shape[1:])
    unit = upper - lower if step_unit is None else torch.as_tensor(step_unit, dtype=lower.dtype,
                                                                   device=lower.device).expand_as(lower)
    schedule: Schedule = step_size if callable(step_size) else (lambda _t: float(step_size))
    x0 = (lower + upper) / 2 if start is None else torch.minimum(torch.maximum(start.detach(), lower), upper)
    with torch.no_grad():
        m = objective(x0).shape[1]

    def per_column(t: Tensor) -> Tensor:
        return t.unsqueeze(1).expand(b, m, *shape).reshape(b * m, *shape)

    lo, hi, step_unit_ = per_column(lower), per_column(upper), per_column(unit)
    pick = torch.eye(m, dtype=lower.dtype, device=lower.device).repeat(b, 1)  # (B*M, M): column of each copy
    best_v = torch.full((b * m,), float("inf"), dtype=lower.dtype, device=lower.device)
    best_x = per_column(x0).clone()

    def record(x: Tensor, v: Tensor) -> None:
        better = v < best_v
        best_v.copy_(torch.where(better, v, best_v))
        best_x[better] = x[better]

    def late() -> bool:
        return deadline is not None and time.monotonic() > deadline

    with torch.enable_grad():
        for r in range(restarts):
            if r == 0:
                x = per_column(x0).clone()
            else:
                u = torch.rand((b * m, *shape), generator=generator, dtype=lower.dtype).to(lower.device)
                x = lo + (hi - lo) * u
            for t in range(steps):
                if late():
                    break
                x = x.detach().requires_grad_(True)
                v = (objective(x) * pick).sum(1)
                (grad,) = torch.autograd.grad(v.sum(), x, allow_unused=True)
                with torch.no_grad():
                    record(x.detach(), v.detach())
                    if grad is None:  # the objective does not depend on x
                        break
                    x = torch.minimum(torch.maximum(x - schedule(t) * step_unit_ * grad.sign(), lo), hi)
            with torch.no_grad():
                x = x.detach()
                record(x, (objective(x) * pick).sum(1))
            if late():
                break
    return PgdResult(best_x.view(b, m, *shape), best_v.view(b, m))


def pgd_box(objective: Callable[[Tensor], Tensor], lower: Tensor, upper: Tensor, *, steps: int = 50,
            restarts: int = 1, step_size: float = 0.1, generator: torch.Generator | None = None) -> Tensor:
    """The lowest values (B, M) of every column of ``objective`` that :func:`pgd` finds in the box.

    The step is ``step_size`` times the box width (L∞ steepest descent).
    """
    return pgd(objective, lower, upper, steps=steps, restarts=restarts, step_size=step_size,
               generator=generator).value


def margins(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    """Margins ``z_y − max_{j≠y} z_j`` (B,) of the logits ``z = model(x)`` (negative = misclassified)."""
    z = model(x)
    true = z.gather(1, y[:, None]).squeeze(1)
    other = z.masked_fill(torch.nn.functional.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(1)
    return true - other


def linf_ball(x: Tensor, eps: float, clip: tuple[float, float] | None) -> tuple[Tensor, Tensor]:
    """The box of the L∞ ball of radius ``eps`` around ``x``, intersected with ``clip`` (no validation)."""
    lo, hi = x - eps, x + eps
    if clip is not None:
        lo, hi = lo.clamp(*clip), hi.clamp(*clip)
    return lo, hi


def pgd_linf(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, eps: float, *, clip: tuple[float, float]
             | None = (0.0, 1.0), steps: int = 200, restarts: int = 10, step_size: float | None = None,
             start: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Untargeted PGD in the clipped L∞ ball: per sample, the point of lowest margin (all restarts and iterates).

    The first restart starts at ``start`` (default the clean input), later ones at
    uniform random points of the ball; the step is ``step_size`` (absolute; default
    ``max(2.5·eps/steps, eps/50)``).  The result never leaves the clipped ε-ball.
    """
    lo, hi = linf_ball(x, eps, clip)
    alpha = step_size if step_size is not None else max(2.5 * eps / max(steps, 1), eps / 50)
    res = pgd(lambda z: margins(model, z, y)[:, None], lo, hi, steps=steps, restarts=restarts, step_size=alpha,
              step_unit=1.0, start=x if start is None else start, generator=generator)
    return res.x[:, 0]


def interval_attack(model: Callable[[Tensor], Tensor], bound_net: Callable[..., tuple[Tensor, Tensor]], x: Tensor,
                    y: Tensor, eps: float, *, clip: tuple[float, float] | None = (0.0, 1.0), steps: int = 20,
                    sub_radius: float = 0.5, pgd_steps: int = 20, num_classes: int | None = None) -> Tensor:
    """MixTrain's interval attack (Wang et al., Algorithm 1): follow the gradient of the *symbolic
    interval* worst-case margin of a sub-box of radius ``sub_radius·eps`` around the current point
    (which sees further than the point gradient), then finish with a PGD search.

    ``bound_net(xl, xu, C)`` is a compiled bound network.  The result stays inside the clipped ε-ball.
    """
    from boundc.specs import margin_spec

    lo, hi = linf_ball(x, eps, clip)
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
