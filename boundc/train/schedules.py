"""Training schedules as pure functions of the global step.

``ramp(step, start, end, v0, v1, kind)`` moves a value from ``v0`` to ``v1``
between ``start`` and ``end`` (linear, or the smooth ramp of CROWN-IBP:
quadratic start then linear); :class:`Schedule` bundles ε, κ, β and the
learning rate; :func:`ibp_paper` is the IBP paper's Appendix A MNIST schedule
(60K steps, batch 100, 2K warm-up, 10K ramp-up, LR ÷10 at 15K and 25K),
scaled proportionally to any number of steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

RampKind = Literal["linear", "smooth"]


def linear_ramp(step: int, start: int, end: int, v0: float, v1: float) -> float:
    """``v0`` before ``start``, ``v1`` from ``end`` on, linear in between."""
    if step <= start:
        return v0
    if step >= end:
        return v1
    return v0 + (v1 - v0) * (step - start) / (end - start)


def smooth_ramp(step: int, start: int, end: int, v0: float, v1: float, mid: float = 0.25) -> float:
    """Smooth ramp (CROWN-IBP style): polynomial (quadratic) for the first ``mid`` fraction, then linear.

    Continuous with a continuous first derivative at the switch point; ends exactly at ``v1``.
    """
    if step <= start:
        return v0
    if step >= end:
        return v1
    length = end - start
    t = (step - start) / length
    # value q(t) = a t^2 on [0, mid], then linear with slope 2 a mid up to q(1) = 1
    a = 1.0 / (2 * mid - mid * mid)
    frac = a * t * t if t < mid else a * mid * mid + 2 * a * mid * (t - mid)
    return v0 + (v1 - v0) * frac


def ramp(step: int, start: int, end: int, v0: float, v1: float, kind: RampKind = "linear") -> float:
    """Dispatch to :func:`linear_ramp` or :func:`smooth_ramp`."""
    return (smooth_ramp if kind == "smooth" else linear_ramp)(step, start, end, v0, v1)


def step_lr(step: int, base: float, milestones: tuple[int, ...], factor: float = 0.1,
            warmup: int = 0) -> float:
    """Learning rate: optional linear warm-up from 0 over ``warmup`` steps, then × ``factor`` at each milestone."""
    lr = base * factor ** sum(step >= m for m in milestones)
    if warmup and step < warmup:
        lr *= (step + 1) / warmup
    return lr


@dataclass(frozen=True)
class ScheduleValues:
    """The schedule's values at one step."""

    eps: float
    kappa: float
    beta: float
    lr: float


@dataclass(frozen=True)
class Schedule:
    """ε / κ / β / LR schedule.

    Warm-up (``warmup_steps``): ε = 0, κ = ``kappa_start``, β = ``beta_start``.
    Ramp-up (next ``rampup_steps``): ε → ``eps_train``, κ → ``kappa_final``,
    β → ``beta_final``.  LR: ``lr`` × ``lr_factor`` at each of ``lr_milestones``.
    """

    total_steps: int
    eps_train: float
    warmup_steps: int = 0
    rampup_steps: int = 0
    kappa_start: float = 1.0
    kappa_final: float = 0.5
    beta_start: float = 1.0
    beta_final: float = 0.0
    lr: float = 1e-3
    lr_milestones: tuple[int, ...] = field(default_factory=tuple)
    lr_factor: float = 0.1
    lr_warmup_steps: int = 0
    ramp: RampKind = "linear"

    def at(self, step: int) -> ScheduleValues:
        """Values at global step ``step`` (pure function)."""
        s, e = self.warmup_steps, self.warmup_steps + self.rampup_steps
        return ScheduleValues(
            eps=ramp(step, s, e, 0.0, self.eps_train, self.ramp),
            kappa=linear_ramp(step, s, e, self.kappa_start, self.kappa_final),
            beta=linear_ramp(step, s, e, self.beta_start, self.beta_final),
            lr=step_lr(step, self.lr, self.lr_milestones, self.lr_factor, self.lr_warmup_steps),
        )


def ibp_paper(eps_train: float, total_steps: int = 60_000, kappa_final: float = 0.5, lr: float = 1e-3,
              ramp_kind: RampKind = "linear") -> Schedule:
    """The IBP paper's MNIST schedule (Appendix A), scaled from 60K steps to ``total_steps``.

    Fractions of training: warm-up 2/60, ramp-up 10/60, LR ÷10 at 15/60 and 25/60.
    """
    def frac(k: int) -> int:
        return max(int(round(total_steps * k / 60_000)), 0)

    return Schedule(total_steps=total_steps, eps_train=eps_train, warmup_steps=frac(2_000),
                    rampup_steps=max(frac(10_000), 1), kappa_final=kappa_final, lr=lr,
                    lr_milestones=(frac(15_000), frac(25_000)), ramp=ramp_kind)


def scaled(total_steps: int, eps_train: float, warmup_frac: float, rampup_frac: float,
           lr_milestone_fracs: tuple[float, ...] = (), **kw) -> Schedule:
    """A :class:`Schedule` given as fractions of the total number of steps."""
    return Schedule(total_steps=total_steps, eps_train=eps_train, warmup_steps=int(total_steps * warmup_frac),
                    rampup_steps=max(int(total_steps * rampup_frac), 1),
                    lr_milestones=tuple(int(total_steps * f) for f in lr_milestone_fracs), **kw)
