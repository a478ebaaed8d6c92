"""Metrics: clean, PGD and verified accuracy with any bound method, as a table and as JSON.

Soundness: a sample counts as verified only if every margin lower bound
``y_true − y_j`` is strictly positive (and it is classified correctly is then implied).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from boundc.attacks import pgd_linf
from boundc.train.losses import BoundCache, margin_lower_bounds


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate: radius, bound methods, PGD strength, sample limits."""

    eps: float
    methods: tuple[str, ...] = ("ibp",)
    pgd_steps: int = 200
    restarts: int = 10
    pgd_limit: int | None = 1000
    verify_limit: int | None = None
    batch_size: int = 500
    clip: tuple[float, float] = (0.0, 1.0)
    seed: int = 0


@dataclass
class EvalResult:
    """Accuracies (fractions) and counts; ``verified`` maps method → verified accuracy."""

    eps: float
    n_clean: int
    clean: float
    n_pgd: int = 0
    pgd: float | None = None
    n_verified: int = 0
    verified: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _batches(n: int, bs: int):
    for i in range(0, n, bs):
        yield slice(i, min(i + bs, n))


@torch.no_grad()
def clean_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Fraction of correctly classified samples."""
    correct = sum(int((model(x[s]).argmax(1) == y[s]).sum()) for s in _batches(len(y), batch_size))
    return correct / max(len(y), 1)


@torch.no_grad()
def verified_count(cache: BoundCache, method: str, x: Tensor, y: Tensor, eps: float, clip: tuple[float, float],
                   num_classes: int, batch_size: int = 500) -> int:
    """Number of samples whose margin lower bounds (method ``method``) are all > 0."""
    bm = cache.get(method)
    total = 0
    for s in _batches(len(y), batch_size):
        lower = margin_lower_bounds(bm, x[s], y[s], eps, clip, num_classes)
        total += int((lower > 0).all(1).sum())
    return total


def pgd_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float, clip: tuple[float, float], steps: int,
                 restarts: int, batch_size: int = 500, seed: int = 0) -> float:
    """Fraction of samples still correctly classified at the best PGD point (all restarts)."""
    g = torch.Generator().manual_seed(seed)
    correct = 0
    for s in _batches(len(y), batch_size):
        adv = pgd_linf(model, x[s], y[s], eps, clip=clip, steps=steps, restarts=restarts, generator=g)
        with torch.no_grad():
            correct += int((model(adv).argmax(1) == y[s]).sum())
    return correct / max(len(y), 1)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, cfg: EvalConfig, cache: BoundCache | None = None,
             num_classes: int | None = None) -> EvalResult:
    """Clean accuracy on all of ``x``, PGD on the first ``pgd_limit``, verified accuracy per method
    on the first ``verify_limit`` (methods not available in this build are reported as skipped)."""
    import boundc

    was = model.training
    model.eval()
    cache = cache or BoundCache(model, x[:2])
    if num_classes is None:
        with torch.no_grad():
            num_classes = int(model(x[:1]).shape[1])
    t = time.perf_counter()
    res = EvalResult(cfg.eps, len(y), clean_accuracy(model, x, y, cfg.batch_size))
    res.seconds["clean"] = time.perf_counter() - t
    if cfg.pgd_steps > 0 and cfg.pgd_limit != 0:
        n = len(y) if cfg.pgd_limit is None else min(cfg.pgd_limit, len(y))
        t = time.perf_counter()
        res.n_pgd = n
        res.pgd = pgd_accuracy(model, x[:n], y[:n], cfg.eps, cfg.clip, cfg.pgd_steps, cfg.restarts,
                               cfg.batch_size, cfg.seed)
        res.seconds["pgd"] = time.perf_counter() - t
    n = len(y) if cfg.verify_limit is None else min(cfg.verify_limit, len(y))
    res.n_verified = n
    for method in cfg.methods:
        if method not in boundc.methods():
            res.skipped[method] = "not available in this build"
            continue
        t = time.perf_counter()
        try:
            res.verified[method] = verified_count(cache, method, x[:n], y[:n], cfg.eps, cfg.clip, num_classes,
                                                  cfg.batch_size) / max(n, 1)
        except Exception as err:  # a method that cannot handle this model: report, don't crash the table
            res.skipped[method] = f"{type(err).__name__}: {err}"
        res.seconds[method] = time.perf_counter() - t
    model.train(was)
    return res


def format_table(res: EvalResult) -> str:
    """Paper-style table: accuracy and error (%) per metric."""
    rows = [("clean (nominal)", res.clean, res.n_clean)]
    if res.pgd is not None:
        rows.append(("PGD", res.pgd, res.n_pgd))
    rows += [(f"verified ({m})", v, res.n_verified) for m, v in res.verified.items()]
    lines = [f"eps = {res.eps:g}", f"{'metric':<24}{'accuracy %':>12}{'error %':>10}{'samples':>9}", "-" * 55]
    lines += [f"{name:<24}{100 * a:>12.2f}{100 * (1 - a):>10.2f}{n:>9d}" for name, a, n in rows]
    lines += [f"{'verified (' + m + ')':<24}{'skipped: ' + why[:60]}" for m, why in res.skipped.items()]
    return "\n".join(lines)


def write_json(res: EvalResult, path: str | Path, extra: dict | None = None) -> None:
    """Write the result (plus ``extra`` fields such as the command line) as JSON."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**(extra or {}), **asdict(res)}, indent=2))
