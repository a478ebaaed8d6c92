"""Metrics: clean, PGD and verified accuracy with any bound method, as a table and as JSON.

Soundness: a sample counts as verified only if every margin lower bound
``y_true − y_j`` is strictly positive (and it is classified correctly is then implied).

Beyond one method per row, :func:`evaluate` can *cascade*: the row
``best bound`` takes, per sample and margin, the highest lower bound of all
methods, where the costly ``refine`` methods (e.g. alpha-CROWN) only run on the
samples the cheaper ones left unverified; the row ``complete MILP`` then
decides what is still open — PGD first (a counterexample settles it), then the
exact MILP of :mod:`boundc.verify.milp`.  Time-outs count as not verified, as in
Gowal et al.'s MIP evaluation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from boundc.errors import BoundcError
from boundc.options import CompileOptions, LinearOptions
from boundc.train.losses import BoundCache, margin_lower_bounds
from boundc.verify.attacks import pgd_linf
from boundc.verify.cascade import Stage, Verdict, run_cascade, verdicts
from boundc.verify.milp import MilpOptions

#: How the ``refine`` methods are compiled: intermediate bounds intersected with IBP,
#: and a longer alpha-CROWN optimisation than the training default.
REFINE_OPTIONS = CompileOptions(linear=LinearOptions(intersect_ibp=True, alpha_iterations=50, alpha_lr=0.1))


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate: radius, bound methods, PGD strength, sample limits.

    ``refine``: tighter, costlier methods run only on samples not yet verified
    (compiled with ``refine_options``); ``complete``: decide what is left with
    the MILP (None: skip).  Either adds the ``best bound`` row.
    """

    eps: float
    methods: tuple[str, ...] = ("ibp",)
    refine: tuple[str, ...] = ()
    refine_options: CompileOptions = REFINE_OPTIONS
    complete: MilpOptions | None = None
    progress: bool = False
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
    #: Sample counts of the cascade: verified by bounds, falsified by PGD / MILP, MILP-verified, undecided.
    cascade: dict[str, int] = field(default_factory=dict)


def _batches(n: int, bs: int):
    for i in range(0, n, bs):
        yield slice(i, min(i + bs, n))


@torch.no_grad()
def clean_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Fraction of correctly classified samples."""
    correct = sum(int((model(x[s]).argmax(1) == y[s]).sum()) for s in _batches(len(y), batch_size))
    return correct / max(len(y), 1)


def _bar(total: int, desc: str, progress: bool, unit: str = "img"):
    """A tqdm bar drawn only on a terminal (``disable=None``) and only when ``progress`` is set."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None if progress else True, dynamic_ncols=True, leave=False)


@torch.no_grad()
def margin_lowers(cache: BoundCache, method: str, x: Tensor, y: Tensor, eps: float, clip: tuple[float, float],
                  num_classes: int, batch_size: int = 500, options: CompileOptions | None = None,
                  progress: bool = False) -> Tensor:
    """Margin lower bounds (n, K−1) of every sample with ``method``."""
    bm = cache.get(method, options)
    parts = []
    with _bar(len(y), f"verify [{method}]", progress) as bar:
        for s in _batches(len(y), batch_size):
            parts.append(margin_lower_bounds(bm, x[s], y[s], eps, clip, num_classes).detach())
            bar.update(s.stop - s.start)
    return torch.cat(parts) if parts else torch.empty(0, num_classes - 1)


def pgd_fooled(model: nn.Module, x: Tensor, y: Tensor, eps: float, clip: tuple[float, float], steps: int,
               restarts: int, batch_size: int = 500, seed: int = 0, progress: bool = False) -> Tensor:
    """Boolean mask of the samples misclassified at some PGD restart (the first from the clean input, the
    others from uniform random points of the ball); a sample already fooled is not attacked again."""
    g = torch.Generator().manual_seed(seed)
    fooled = torch.zeros(len(y), dtype=torch.bool)
    with _bar(len(y) * restarts, f"PGD {steps} steps x {restarts}", progress) as bar:
        for r in range(restarts):
            open_ = torch.nonzero(~fooled).flatten()
            bar.update(len(y) - len(open_))
            for s in _batches(len(open_), batch_size):
                idx = open_[s]
                xb, yb = x[idx], y[idx]
                start = None
                if r:
                    lo, hi = xb - eps, xb + eps
                    if clip is not None:
                        lo, hi = lo.clamp(*clip), hi.clamp(*clip)
                    start = lo + (hi - lo) * torch.rand(xb.shape, generator=g, dtype=xb.dtype).to(xb.device)
                adv = pgd_linf(model, xb, yb, eps, clip=clip, steps=steps, restarts=1, start=start, generator=g)
                with torch.no_grad():
                    fooled[idx] |= (model(adv).argmax(1) != yb).cpu()
                bar.update(len(idx))
                bar.set_postfix(fooled=int(fooled.sum()), refresh=False)
    return fooled


def pgd_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float, clip: tuple[float, float], steps: int,
                 restarts: int, batch_size: int = 500, seed: int = 0, progress: bool = False) -> float:
    """Fraction of samples still correctly classified at every PGD restart."""
    fooled = pgd_fooled(model, x, y, eps, clip, steps, restarts, batch_size, seed, progress)
    return 1.0 - float(fooled.sum()) / max(len(y), 1)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, cfg: EvalConfig, cache: BoundCache | None = None,
             num_classes: int | None = None) -> EvalResult:
    """Clean accuracy on all of ``x``, PGD on the first ``pgd_limit``, verified accuracy per method
    on the first ``verify_limit`` (methods that are unknown or cannot bound this model are reported as skipped)."""
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
                               cfg.batch_size, cfg.seed, cfg.progress)
        res.seconds["pgd"] = time.perf_counter() - t
    n = len(y) if cfg.verify_limit is None else min(cfg.verify_limit, len(y))
    res.n_verified = n
    best: Tensor | None = None
    for method in cfg.methods:
        t = time.perf_counter()
        try:
            low = margin_lowers(cache, method, x[:n], y[:n], cfg.eps, cfg.clip, num_classes, cfg.batch_size,
                                progress=cfg.progress)
        except BoundcError as err:  # an unknown method, or one that cannot handle this model: report it
            res.skipped[method] = str(err)
        else:
            res.verified[method] = float((low > 0).all(1).sum()) / max(n, 1)
            best = low if best is None else torch.maximum(best, low)
        res.seconds[method] = time.perf_counter() - t
    if (cfg.refine or cfg.complete is not None or len(res.verified) > 1) and n:
        best = best if best is not None else torch.full((n, num_classes - 1), float("-inf"))
        _cascade(model, cache, x[:n], y[:n], best, cfg, res, num_classes)
    model.train(was)
    return res


def _cascade(model: nn.Module, cache: BoundCache, x: Tensor, y: Tensor, best: Tensor, cfg: EvalConfig,
             res: EvalResult, num_classes: int) -> None:
    """The ``best bound`` and ``complete MILP`` rows (see the module docstring); fills ``res``.

    A :func:`~boundc.verify.cascade.run_cascade` over the samples: misclassified ones are
    falsified by their clean input, then bounds (``best``, then each ``refine`` method on
    what is left), PGD and the MILP.
    """
    import boundc
    from boundc.report import intersect_node_bounds
    from boundc.verify.milp import MilpVerifier

    n = len(y)
    with torch.no_grad():
        correct = torch.cat([model(x[s]).argmax(1) == y[s] for s in _batches(n, cfg.batch_size)])

    def clean(open_: Tensor) -> Tensor:
        return verdicts(falsified=~correct[open_])

    def bounds(open_: Tensor) -> Tensor:
        return verdicts(verified=(best[open_] > 0).all(1))

    def refine(method: str) -> Callable[[Tensor], Tensor]:
        def decide(open_: Tensor) -> Tensor:
            low = margin_lowers(cache, method, x[open_], y[open_], cfg.eps, cfg.clip, num_classes,
                                cfg.batch_size, cfg.refine_options, progress=cfg.progress)
            best[open_] = torch.maximum(best[open_], low)
            return verdicts(verified=(best[open_] > 0).all(1))
        return decide

    def attack(open_: Tensor) -> Tensor:
        return verdicts(falsified=pgd_fooled(model, x[open_], y[open_], cfg.eps, cfg.clip, cfg.pgd_steps,
                                             cfg.restarts, cfg.batch_size, cfg.seed + 1, cfg.progress))

    def milp(open_: Tensor) -> Tensor:
        from tqdm import tqdm

        verifier = MilpVerifier(cache.get("ibp").graph, cfg.complete)
        bound_nets = [cache.get(m, cfg.refine_options) for m in cfg.complete.bound_methods]
        codes = []
        for i in tqdm(open_.tolist(), desc="MILP", disable=None if cfg.progress else True):
            xl, xu = boundc.linf_box(x[i:i + 1], cfg.eps, cfg.clip)
            with torch.no_grad():
                node_bounds = intersect_node_bounds(bound_nets, xl, xu)
            C = boundc.margin_spec(y[i:i + 1], num_classes).to(x.dtype)[0]
            verdict, _ = verifier.verify_spec(xl, xu, C, node_bounds, known_lower=best[i])
            codes.append(verdict.code)
        return torch.tensor(codes, dtype=torch.int8)

    stages = [Stage("clean", clean), Stage("bounds", bounds)] + [Stage(f"refine {m}", refine(m)) for m in cfg.refine]
    if cfg.complete is not None:
        stages += [Stage("PGD", attack)] if cfg.pgd_steps > 0 else []
        stages += [Stage("MILP", milp)]
    out = run_cascade(n, stages)
    res.seconds.update({k: v for k, v in out.seconds.items() if k.startswith("refine ")})
    by_bounds = sum(c[Verdict.VERIFIED] for k, c in out.counts.items() if k == "bounds" or k.startswith("refine "))
    res.verified["best bound"] = float(by_bounds) / n
    res.cascade["verified by bounds"] = by_bounds
    if cfg.complete is None:
        return
    none = {Verdict.VERIFIED: 0, Verdict.FALSIFIED: 0}
    if cfg.pgd_steps > 0:
        res.cascade["falsified by PGD"] = out.counts.get("PGD", none)[Verdict.FALSIFIED]
    by_milp = out.counts.get("MILP", none)
    res.cascade.update({"MILP verified": by_milp[Verdict.VERIFIED], "MILP falsified": by_milp[Verdict.FALSIFIED],
                        "undecided (time-outs)": out.count(Verdict.UNKNOWN)})
    res.verified["complete MILP"] = float(out.count(Verdict.VERIFIED)) / n
    res.seconds["complete MILP"] = out.seconds.get("PGD", 0.0) + out.seconds.get("MILP", 0.0)


def format_table(res: EvalResult) -> str:
    """Paper-style table: accuracy and error (%) per metric."""
    rows = [("clean (nominal)", res.clean, res.n_clean)]
    if res.pgd is not None:
        rows.append(("PGD", res.pgd, res.n_pgd))
    rows += [(f"verified ({m})", v, res.n_verified) for m, v in res.verified.items()]
    w = max(24, *(len(name) + 2 for name, _, _ in rows))
    lines = [f"eps = {res.eps:g}", f"{'metric':<{w}}{'accuracy %':>12}{'error %':>10}{'samples':>9}", "-" * (w + 31)]
    lines += [f"{name:<{w}}{100 * a:>12.2f}{100 * (1 - a):>10.2f}{n:>9d}" for name, a, n in rows]
    lines += [f"{'verified (' + m + ')':<{w}}{'skipped: ' + why[:60]}" for m, why in res.skipped.items()]
    if res.cascade:
        lines.append("cascade: " + ", ".join(f"{k} {v}" for k, v in res.cascade.items()))
    return "\n".join(lines)


def write_json(res: EvalResult, path: str | Path, extra: dict | None = None) -> None:
    """Write the result (plus ``extra`` fields such as the command line) as JSON."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**(extra or {}), **asdict(res)}, indent=2))
