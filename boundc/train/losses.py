"""Certified-training losses built on compiled bound networks.

* :func:`ibp_loss` — Gowal et al. eq. 12: ``κ·CE(z(x), y) + (1−κ)·CE(ẑ, y)`` where
  the worst-case logits ``ẑ`` are ``−lower(margins)`` at the non-true classes and
  0 at the true class (margins ``y_true − y_j`` bounded with the last layer elided).
* :func:`crown_ibp_loss` — the same with margin lower bounds
  ``β·CROWN-IBP + (1−β)·IBP``.
* :func:`bound_loss` — Wong–Kolter / Fast-Lin / CROWN bound training (any method by name).
* :func:`mixtrain_loss` — MixTrain: ``(1−α)·CE(clean) + α·verified CE`` on ``k``
  points sampled from the batch (stochastic output approximation).
* :func:`tightness_regularizers` — Zhu et al.'s two tightness indicators.

Bound networks are compiled once per (model, method) by :class:`BoundCache`
and reused; they follow the model's live parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import boundc
from boundc.errors import BoundcError
from boundc.options import CompileOptions, LinearOptions

#: What the losses and metrics compile with unless told otherwise: they read only the lower bounds of
#: margins, so the linear methods skip the upper side of the final pass.
LOWER_BOUNDS_ONLY = CompileOptions(linear=LinearOptions(output_upper=False))


class BoundCache:
    """Compile-once cache of bound networks for one model, keyed by method name (and options)."""

    def __init__(self, model: nn.Module, example: Tensor) -> None:
        self.model = model
        self.example = example[:2].detach()
        self._nets: dict[tuple[str, CompileOptions | None], boundc.BoundModule] = {}  # (method, options) -> net

    def get(self, method: str, options: CompileOptions | None = None) -> boundc.BoundModule:
        """The bound network of ``method`` compiled with ``options`` (compiled on first use; default
        :data:`LOWER_BOUNDS_ONLY`: the upper bounds it returns are ``+inf``)."""
        options = options or LOWER_BOUNDS_ONLY
        key = (method, options)
        if key not in self._nets:
            if method not in boundc.methods():
                raise BoundcError(f"bound method {method!r} is not available; have {', '.join(boundc.methods())}")
            was_training = self.model.training
            self._nets[key] = boundc.compile(self.model, self.example, method=method, options=options)
            self.model.train(was_training)
        return self._nets[key]

    def prefix(self, end: int) -> boundc.BoundModule:
        """The IBP bound network of ``model[:end]`` (an ``nn.Sequential`` prefix; compiled on first use)."""
        key = (f"__prefix{end}", None)
        if key not in self._nets:
            if not isinstance(self.model, nn.Sequential):
                raise BoundcError("bound networks of model prefixes need an nn.Sequential model")
            was_training = self.model.training
            self._nets[key] = boundc.compile(self.model[:end], self.example, method="ibp")
            self.model.train(was_training)
        return self._nets[key]


def worst_case_logits(margin_lower: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Worst-case logits ``ẑ``: ``−lower(y_true − y_j)`` at class ``j ≠ true`` and 0 at the true class."""
    z = torch.zeros(labels.shape[0], num_classes, dtype=margin_lower.dtype, device=margin_lower.device)
    keep = labels.unsqueeze(1) != torch.arange(num_classes, device=labels.device).unsqueeze(0)
    return z.masked_scatter(keep, -margin_lower)


def margin_lower_bounds(bm: boundc.BoundModule, x: Tensor, y: Tensor, eps: float | Tensor,
                        clip: tuple[float, float], num_classes: int) -> Tensor:
    """Lower bounds (B, K−1) on the margins ``y_true − y_j`` over the clipped L∞ ball."""
    xl, xu = boundc.linf_box(x, eps, clip)
    lower, _ = bm(xl, xu, boundc.margin_spec(y, num_classes).to(x.dtype), x=x)
    return lower


def verified_ce(margin_lower: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """Cross-entropy of the worst-case logits (the verified / robust loss)."""
    return F.cross_entropy(worst_case_logits(margin_lower, y, num_classes), y)


@dataclass
class LossOutput:
    """A loss value plus what the trainer logs: clean logits and margin lower bounds (None when ε = 0)."""

    loss: Tensor
    logits: Tensor
    margin_lower: Tensor | None = None
    parts: dict[str, float] = field(default_factory=dict)


def _mix(clean: Tensor, robust: Tensor | None, kappa: float) -> Tensor:
    return clean if robust is None else kappa * clean + (1 - kappa) * robust


def ibp_loss(model: nn.Module, cache: BoundCache, x: Tensor, y: Tensor, eps: float, kappa: float,
             clip: tuple[float, float], method: str = "ibp") -> LossOutput:
    """Gowal et al. eq. 12 with margin bounds from ``method`` (default IBP). κ = 1 or ε = 0 is plain training."""
    logits = model(x)
    clean = F.cross_entropy(logits, y)
    k = logits.shape[1]
    if kappa >= 1.0 or eps <= 0.0:
        return LossOutput(clean, logits, None, {"clean": clean.item()})
    lower = margin_lower_bounds(cache.get(method), x, y, eps, clip, k)
    robust = verified_ce(lower, y, k)
    return LossOutput(_mix(clean, robust, kappa), logits, lower, {"clean": clean.item(), "robust": robust.item()})


def bound_loss(model: nn.Module, cache: BoundCache, x: Tensor, y: Tensor, eps: float, kappa: float,
               clip: tuple[float, float], method: str) -> LossOutput:
    """Bound training with any method (``fast-lin`` = Wong–Kolter with fixed slopes, ``crown``, ``forward``...)."""
    return ibp_loss(model, cache, x, y, eps, kappa, clip, method=method)


def crown_ibp_loss(model: nn.Module, cache: BoundCache, x: Tensor, y: Tensor, eps: float, kappa: float,
                   beta: float, clip: tuple[float, float], linear_method: str = "crown-ibp") -> LossOutput:
    """CROWN-IBP: margin lower bound ``β·CROWN-IBP + (1−β)·IBP`` (β = 0 skips the linear pass)."""
    logits = model(x)
    clean = F.cross_entropy(logits, y)
    k = logits.shape[1]
    if kappa >= 1.0 or eps <= 0.0:
        return LossOutput(clean, logits, None, {"clean": clean.item()})
    lower = margin_lower_bounds(cache.get("ibp"), x, y, eps, clip, k)
    if beta > 0.0:
        lin = margin_lower_bounds(cache.get(linear_method), x, y, eps, clip, k)
        lower = beta * lin + (1 - beta) * lower
    robust = verified_ce(lower, y, k)
    return LossOutput(_mix(clean, robust, kappa), logits, lower, {"clean": clean.item(), "robust": robust.item()})


def sample_indices(batch: int, k: int, generator: torch.Generator | None = None) -> Tensor:
    """``k`` distinct indices of the batch, in order (all of them when ``k >= batch``)."""
    if k >= batch:
        return torch.arange(batch)
    return torch.randperm(batch, generator=generator)[:k].sort().values


def mixtrain_loss(model: nn.Module, cache: BoundCache, x: Tensor, y: Tensor, eps: float, alpha: float, k: int,
                  clip: tuple[float, float], method: str = "ibp", generator: torch.Generator | None = None
                  ) -> LossOutput:
    """MixTrain: ``(1−α)·CE(clean, batch) + α·verified CE(k sampled points)`` (stochastic output approximation)."""
    logits = model(x)
    clean = F.cross_entropy(logits, y)
    nc = logits.shape[1]
    if eps <= 0.0 or alpha <= 0.0 or k <= 0:
        return LossOutput(clean, logits, None, {"clean": clean.item()})
    idx = sample_indices(x.shape[0], k, generator)
    lower = margin_lower_bounds(cache.get(method), x[idx], y[idx], eps, clip, nc)
    robust = verified_ce(lower, y[idx], nc)
    full_lower = lower if idx.numel() == x.shape[0] else None
    return LossOutput((1 - alpha) * clean + alpha * robust, logits, full_lower,
                      {"clean": clean.item(), "robust": robust.item()})


@dataclass
class DynamicAlpha:
    """MixTrain's dynamic α: every ``every`` epochs move α by ``step`` (up while the validation
    clean accuracy stays ≥ ``min_clean_acc``, down otherwise), within [``lo``, ``hi``]."""

    alpha: float = 0.4
    step: float = 0.05
    every: int = 5
    lo: float = 0.0
    hi: float = 0.8
    min_clean_acc: float = 0.0

    def update(self, epoch: int, val_clean_acc: float) -> float:
        """Apply the rule after ``epoch`` (1-based count of finished epochs); returns the new α."""
        if self.every > 0 and epoch > 0 and epoch % self.every == 0:
            delta = self.step if val_clean_acc >= self.min_clean_acc else -self.step
            self.alpha = min(max(self.alpha + delta, self.lo), self.hi)
        return self.alpha


def _sequential_relus(model: nn.Module) -> list[int]:
    if not isinstance(model, nn.Sequential):
        raise BoundcError("the tightness regularizers need an nn.Sequential model (pre-activation bounds per ReLU)")
    return [i for i, m in enumerate(model) if isinstance(m, nn.ReLU)]


def optimal_vertex(bm: boundc.BoundModule, x: Tensor, y: Tensor, eps: float, clip: tuple[float, float],
                   num_classes: int) -> tuple[Tensor, Tensor]:
    """For each sample's worst margin row: its lower bound and the box vertex ``x*`` attaining the
    relaxation's optimum (read off the bound's linear coefficients via autograd)."""
    xl, xu = boundc.linf_box(x.detach(), eps, clip)
    xl, xu = xl.clone().requires_grad_(True), xu.clone().requires_grad_(True)
    lower, _ = bm(xl, xu, boundc.margin_spec(y, num_classes).to(x.dtype), x=x.detach())
    worst, row = lower.min(dim=1)
    gl, gu = torch.autograd.grad(worst.sum(), (xl, xu), retain_graph=False)
    x_star = torch.where(gu.abs() > gl.abs(), xu, xl).detach()
    return row, x_star


def tightness_regularizers(model: nn.Module, cache: BoundCache, x: Tensor, y: Tensor, eps: float,
                           clip: tuple[float, float], method: str = "crown-ibp") -> tuple[Tensor, Tensor]:
    """Zhu et al.'s tightness indicators ``(r1, r2)`` for the worst margin of each sample.

    ``r1``: gap between the network's margin at the relaxation's optimal input
    ``x*`` and the relaxed lower bound (≥ 0 by soundness; 0 iff the bound is tight).
    ``r2``: mean distance of each unstable ReLU's pre-activation at ``x*`` to the
    nearest optimum of its relaxation (``l``, 0 or ``u``), with IBP
    pre-activation bounds ``[l, u]`` (as in their CROWN-IBP experiments).
    Differentiable in the model parameters; needs an ``nn.Sequential`` model for ``r2``.
    """
    nc = model(x[:1]).shape[1]
    bm = cache.get(method)
    row, x_star = optimal_vertex(bm, x, y, eps, clip, nc)
    lower = margin_lower_bounds(bm, x, y, eps, clip, nc).gather(1, row[:, None]).squeeze(1)
    C = boundc.margin_spec(y, nc).to(x.dtype)
    c_row = C[torch.arange(x.shape[0]), row]                      # (B, K)
    r1 = ((model(x_star) * c_row).sum(1) - lower).clamp_min(0).mean()
    relus = _sequential_relus(model)
    xl, xu = boundc.linf_box(x, eps, clip)
    terms = []
    h = x_star
    prev = 0
    for i in relus:
        lo, up = cache.prefix(i)(xl, xu, x=x)
        h = model[prev:i](h)
        prev = i
        unstable = (lo < 0) & (up > 0)
        dist = torch.minimum(torch.minimum((h - lo).abs(), h.abs()), (up - h).abs())
        terms.append((dist * unstable).flatten(1).sum(1) / unstable.flatten(1).sum(1).clamp_min(1))
    r2 = torch.stack(terms, 1).mean() if terms else x.new_zeros(())
    return r1, r2
