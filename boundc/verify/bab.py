"""Branch and bound on ReLU splits with β-CROWN bounds (Wang et al. 2021).

A *domain* is the input box together with a split of some ReLUs: neuron ``j`` of
ReLU ``r`` is either free, split *active* (its input ``z >= 0``) or split
*inactive* (``z <= 0``).  A domain is bounded by one backward pass from the
specification rows (the generated walk of :func:`boundc.methods_linear.build_walk`)
in which

* the pre-activation bounds are the root's (CROWN ∩ IBP) clamped by the splits, so
  a split ReLU is relaxed exactly (identity or zero); on small networks each domain keeps
  its own, re-bounded after every split by CROWN under its splits (:meth:`SpecBounds.refresh`),
  so a split also tightens every later layer;
* every activation's free relaxation parameters α (ReLU lower slopes, tangent
  points of smooth activations) are optimised, as in α-CROWN;
* every split adds its constraint as a Lagrangian term ``β·σ·z`` (β >= 0,
  :func:`~boundc.methods_linear.add_split_terms`), optimised jointly with α.

A network whose activations are smooth (sigmoid, tanh, ...) is split on those
instead: a *cut* halves one neuron's input interval (at 0, their inflection
point, when it lies well inside, else at the midpoint), so each child relaxes
it on a narrower interval (no β: the children's tighter lines do the work).

Domains are bounded in batches (the batch is the walk's batch dimension, on
whatever device the model is on); children start from their parent's α and β.
The domain with the worst bound is split first, on the neuron of highest
BaBSR-style score (the intercept the split removes, weighted by the bound's
coefficient) or, with :attr:`Branching.FSB`, the best of the top candidates
after a one-pass bound of both children (filtered smart branching).  Every
bounded domain also proposes the input minimising its linear lower bound as a
counterexample candidate.
"""

from __future__ import annotations

import enum
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor
from tqdm.auto import tqdm

from boundc.codegen import Emitter
from boundc.errors import BoundcError
from boundc.ir import Graph
from boundc.methods_linear import build_walk, emit_start, user_kinks
from boundc.passes.graph.planning import BoundPlan, ancestors, plan_bounds
from boundc.passes.graph.spec import attach_spec
from boundc.passes.rules.backward import Coeffs
from boundc.passes.rules.engine import Start, lower_rows_only, relaxation_kinks, start_rows, undecided
from boundc.passes.rules.interval import Interval
from boundc.passes.rules.ops import OPS
from boundc.verify.cascade import Verdict


class Branching(str, enum.Enum):
    """How the neuron to split is chosen."""

    BABSR = "babsr"  # highest intercept score
    FSB = "fsb"  # filtered smart branching: best of the top-k by a one-pass bound of both children

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class BabOptions:
    """Knobs of :func:`branch_and_bound`.

    Attributes:
        batch: domains split (and so ``2 × batch`` children bounded) per round.
        iterations: Adam steps on α and β per round; ``refresh_iterations`` where the children refresh their
            intermediate bounds (``refresh_bounds``), which then cost far more than the steps (mnistfc 256x4
            prop_10_0.05: its disjunct 0 open at 300 s with 8 steps, excluded with 20).
        root_iterations: Adam steps on α at the root (the α-CROWN bound); ``smooth_root_iterations`` on
            networks with no ReLU to split, whose tangent points converge slowly and whose cuts gain little
            (eran sigmoid idx 4214 after tightening: worst root margin −0.48 at 40 steps, +0.68 at 300;
            with 800, idx 1211 and 7107 are proved, open at 300 s with 300 steps, and the root stops
            early once every disjunct is excluded).
        intermediate_iterations: Adam steps on α for the root's intermediate bounds
            (:meth:`SpecBounds.tighten`; 0: keep CROWN's), at most, within ``tighten_share`` of the time
            left when tightening starts; ``lr_intermediate`` their learning rate.
            ``smooth_intermediate_iterations`` replaces it on networks with no ReLU to split (only smooth
            activations, whose cuts narrow one interval and leave later layers' bounds as they are, so
            tighter intermediate bounds pay more: on eran's sigmoid 6x200 net, 60 steps left idx 4857 open
            at 300 s, 150 proved it in 115 s).
        lr_alpha, lr_beta: Adam learning rates of α (scaled by each relaxation's ``lr_scale``) and β.
        refresh_bounds: re-bound every child's intermediate bounds (:meth:`SpecBounds.refresh`: CROWN under
            its splits) before optimising it, and let FSB weigh each layer's best neuron with them (in place of
            the top ``fsb_candidates`` overall; against both together, on eight mnistfc 256x4 instances at 300 s:
            the same three proved, the five still open all closer to a proof), on networks
            with at most ``refresh_max_neurons`` ReLU neurons in at most ``refresh_max_layers`` layers.  A split
            in an early layer then tightens every later layer's bounds (mnistfc 256x4 prop_13_0.03: open at
            300 s without, proved in 9 s with).  Each child costs a CROWN pass per later layer, and FSB bounds
            a candidate per layer, so the cost grows with the square of the depth: on eran's 9x200 net
            (1,610 neurons) idx 2971 went from proved in 205 s to open at 300 s, and on oval21's convolutional
            base net (3,172) img4631 from proved in 270 s to open at 300 s.
        branching: :class:`Branching`.
        fsb_candidates: candidates per domain that FSB bounds when splitting ReLUs; ``cut_candidates``
            when cutting smooth activations (where the choice matters more: a cut only narrows).
        scout: with ``refresh_bounds``, FSB refreshes and bounds its candidates in float32
            (:meth:`SpecBounds.scout`; they are only compared) and the chosen children are refreshed again in
            the bounds' own dtype.
        memory: bytes the queue of open domains may hold (their α, β and splits); beyond it: ``unknown``.
            ``None``: a quarter of the memory free where the bounds live when branch and bound starts
            (:func:`queue_budget`).
        progress: a progress bar with open domains, the global lower bound and the elapsed time.
    """

    batch: int = 128
    iterations: int = 8
    root_iterations: int = 40
    smooth_root_iterations: int = 800
    intermediate_iterations: int = 60
    smooth_intermediate_iterations: int = 200
    tighten_share: float = 0.5
    lr_intermediate: float = 0.4
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    refresh_iterations: int = 20
    refresh_bounds: bool = True
    refresh_max_neurons: int = 2048
    refresh_max_layers: int = 6
    branching: Branching = Branching.FSB
    fsb_candidates: int = 2
    cut_candidates: int = 4
    scout: bool = True
    memory: int | None = None
    progress: bool = False

    def for_network(self, relus: bool) -> BabOptions:
        """These options as a network uses them: one with no ReLU to split (``relus`` false) takes
        ``smooth_root_iterations``, ``smooth_intermediate_iterations`` and ``cut_candidates`` in place of
        ``root_iterations``, ``intermediate_iterations`` and ``fsb_candidates``."""
        if relus:
            return self
        return replace(self, root_iterations=self.smooth_root_iterations,
                       intermediate_iterations=self.smooth_intermediate_iterations, fsb_candidates=self.cut_candidates)


@dataclass
class BabResult:
    """Outcome of :func:`branch_and_bound`: ``verdict``, what ``falsify`` returned for a counterexample when one
    was confirmed, the number of domains bounded, the final global lower bound and why it stopped."""

    verdict: Verdict
    counterexample: object | None
    domains: int
    lower: float
    detail: str


def splittable(g: Graph) -> list[str]:
    """The ReLU nodes of ``g`` branch and bound may split (the perturbed ones)."""
    return [n.name for n in g if n.op == "relu" and n.perturbed]


def cuttable(g: Graph) -> list[str]:
    """The curved elementwise activations of ``g`` (a relaxation without break points: sigmoid, tanh, ...)
    whose input intervals branch and bound may cut (the perturbed ones)."""
    return [n.name for n in g if n.perturbed and OPS[n.op].elementwise and OPS[n.op].relaxation is not None
            and relaxation_kinks(n.op, n.attrs) is None]


#: A neuron's input interval narrower than this is not cut further.
MIN_CUT_WIDTH = 1e-4


class SpecBounds:
    """β-CROWN bounds of ``C·f(x)`` on batches of sub-domains of one input box.

    ``graph``: the analysed IR of the network (``BoundModule.graph``); ``dtype``, ``device``: where and
    in which dtype the bounds are computed.
    """

    def __init__(self, graph: Graph, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> None:
        g = attach_spec(cast_graph(graph, dtype, device))
        self.g, self.dtype, self.device = g, dtype, torch.device(device)
        self._graph = graph
        self._scout: SpecBounds | None = None
        em = Emitter(g)
        root, start, _ = emit_start(em)
        self._start = em.finish(start, start)
        on_path = set(ancestors(g, root))
        self.relus = [r for r in splittable(g) if r in on_path]
        # smooth activations are cut only in a network with no ReLU (neither: the root bound alone)
        self.smooth = [] if self.relus else [a for a in cuttable(g) if a in on_path]
        self.pre = {r: g[r].inputs[0] for r in self.relus + self.smooth}
        self.shapes = {r: tuple(g[r].shape[1:]) for r in self.relus + self.smooth}
        self.input = g.input.name
        taps = tuple(self.relus) + tuple(self.smooth) + (self.input,)
        self.walk, self.names, self.bmap, amap = build_walk(g, root, "crown", with_alpha=True,
                                                            splits=tuple(self.relus), taps=taps)
        self.alphas = {k: v for k, v in amap.items() if k.startswith("alpha_")}
        self.betas = {v: k for k, v in amap.items() if k.startswith("beta_")}
        self.root_bounds: dict[str, Interval] = {}
        self._walks: dict[str, tuple] = {}  # backward walks from intermediate nodes (for tighten)

    # -- root ----------------------------------------------------------------------------
    def set_root(self, bounds: dict[str, Interval], x_lower: Tensor, x_upper: Tensor) -> None:
        """Fix the box (1, *input) and the root's intermediate bounds (by IR node)."""
        missing = [n for n in self.bmap.values() if n not in bounds]
        if missing:
            raise BoundcError(f"internal: no root bounds for {missing}")
        d = self.dtype
        dev = self.device
        self.root_bounds = {n: Interval(bounds[n].lower.detach().to(dtype=d, device=dev),
                                        bounds[n].upper.detach().to(dtype=d, device=dev)) for n in self.bmap.values()}
        self.x_lower = x_lower.detach().to(dtype=d, device=dev)
        self.x_upper = x_upper.detach().to(dtype=d, device=dev)
        self._scout = None

    def scout(self) -> SpecBounds:
        """A float32 copy of these bounds (the same graph, box, root bounds and rows, built once after
        :meth:`set_spec`) for what only guides the search, never a bound: filtered smart branching's scores
        of its candidates (its products run about twice as fast as float64's on a CPU).  Itself where the
        bounds are float32 already."""
        if self.dtype == torch.float32:
            return self
        if self._scout is None:
            scout = SpecBounds(self._graph, torch.float32, self.device)
            scout.set_root(self.root_bounds, self.x_lower, self.x_upper)
            scout.set_spec(self.C)
            self._scout = scout
        return self._scout

    def set_spec(self, C: Tensor) -> None:
        """Fix the rows ``C`` (S, K) to bound (after :meth:`set_root`)."""
        with torch.no_grad():
            start = self._start(self.x_lower, self.x_upper, C.to(dtype=self.dtype, device=self.device).unsqueeze(0))[0]
        self.start = lower_rows_only(start)  # lower bounds only (no upper α either)
        self.S = C.shape[0]
        self.C = C
        self._scout = None

    def tighten(self, iterations: int, lr: float, deadline: float, budget: int = 1 << 24,
                max_rows: int = 4096) -> int:
        """α-CROWN on the root's intermediate bounds: in topological order, re-bound the neurons of every
        node the final pass reads bounds of (inputs of activations) whose relaxation a tighter bound can
        change (:func:`~boundc.passes.rules.engine.undecided`), by a backward pass from that node with its
        own optimised α (lower and upper rows apart, best value per row kept), and intersect with the
        known bounds, so every later pass sees the tighter ones.  Nodes with more than ``max_rows`` such
        neurons keep their bounds (too costly).  The time to ``deadline`` is shared out: each node gets the
        time left over the nodes left (each chunk of its rows the node's time over its chunks left), and
        stops its ``iterations`` there.  Returns how many neurons a kink no longer splits."""
        decided = 0
        order = [n.name for n in self.g if n.name in self.root_bounds]
        below = [p for p in order if self._after_relaxation(p)]
        for left, p in zip(range(len(below), 0, -1), below):
            node_deadline = time.monotonic() + (deadline - time.monotonic()) / left
            b = self.root_bounds[p]
            kinks = user_kinks(self.g, p)
            todo = undecided(b, kinks)[0]
            idx = torch.nonzero(todo).flatten()
            if not idx.numel() or idx.numel() > max_rows:
                continue
            walk, names, bmap, amap = self._walk_from(p)
            if not amap:  # no relaxation before the node: CROWN's bound is already exact for the box
                continue
            lo, up = b.lower.flatten(1)[0].clone(), b.upper.flatten(1)[0].clone()
            shape = tuple(self.g[p].shape[1:])
            widest = max(math.prod(self.g[a].shape[1:]) for a in ancestors(self.g, p))
            rows = max(1, budget // widest)
            starts = range(0, idx.numel(), rows)
            for chunks_left, s0 in zip(range(len(starts), 0, -1), starts):
                if time.monotonic() > deadline:
                    return decided
                part = idx[s0:s0 + rows]
                chunk_deadline = time.monotonic() + (node_deadline - time.monotonic()) / chunks_left
                low, upp = self._tighten_rows(walk, names, bmap, amap, shape, part, iterations, lr, chunk_deadline)
                lo[part], up[part] = torch.fmax(lo[part], low), torch.fmin(up[part], upp)  # a NaN never wins
            self.root_bounds[p] = Interval(lo.reshape(b.lower.shape), up.reshape(b.upper.shape))
            if kinks is not None:
                decided += int(todo.sum()) - int(undecided(self.root_bounds[p], kinks)[0].sum())
        return decided

    def _tighten_rows(self, walk, names, bmap, amap, shape, idx: Tensor, iterations: int, lr: float,
                      deadline: float) -> tuple[Tensor, Tensor]:
        """Best lower and upper bounds of the neurons ``idx`` of a node over ``iterations`` Adam steps on α."""
        R, d = idx.numel(), self.dtype
        start = start_rows(self.x_lower, shape, idx.unsqueeze(0), Start.IDENTITY, None, None)
        args: dict[str, object] = {"start": start, "x_lower": self.x_lower, "x_upper": self.x_upper}
        for ph, node in bmap.items():
            args[ph] = self.root_bounds[node]
        params = {}
        for ph, node in amap.items():
            a = self.crown_alpha(node, self.root_bounds, R)
            params[ph] = (a.clone().requires_grad_(True), a.requires_grad_(True))
        groups = [{"params": list(pair), "lr": lr * self.lr_scale(amap[ph])} for ph, pair in params.items()]
        opt = torch.optim.Adam(groups, fused=True)
        best_l = torch.full((R,), float("-inf"), dtype=d, device=idx.device)
        best_u = torch.full((R,), float("inf"), dtype=d, device=idx.device)
        with torch.enable_grad():
            for it in range(iterations + 1):
                args.update(params)
                lower, upper = walk(*[args.get(n) for n in names])[:2]
                best_l = torch.fmax(best_l, lower.detach()[0])  # fmax: a NaN iterate never replaces a bound
                best_u = torch.fmin(best_u, upper.detach()[0])
                if it == iterations or time.monotonic() > deadline:
                    break
                opt.zero_grad()
                (upper.sum() - lower.sum()).backward()
                opt.step()
                for ph, pair in params.items():
                    for t in pair:
                        self.project(amap[ph], t, self.root_bounds)
        return best_l, best_u

    def alpha_init(self) -> dict[str, Tensor]:
        """CROWN's α for one domain (the root), ``(k, 1, S, *shape)`` per α placeholder."""
        return {name: self.crown_alpha(node, self.root_bounds, self.S) for name, node in self.alphas.items()}

    def crown_alpha(self, node: str, bounds: dict[str, Interval], rows: int) -> Tensor:
        """CROWN's choice of the free parameters of activation ``node`` (its :class:`AlphaSpec`) under
        ``bounds``, for ``rows`` bounded rows: ``(k, N, rows, *shape)``."""
        n = self.g[node]
        b = bounds[n.inputs[0]]
        a = OPS[n.op].relaxation.alpha.init(b.lower, b.upper, **n.attrs)
        return a.unsqueeze(2).expand(a.shape[:2] + (rows,) + a.shape[2:]).clone()

    def lr_scale(self, node: str) -> float:
        """The learning-rate factor of activation ``node``'s parameters (its :class:`AlphaSpec`)."""
        return OPS[self.g[node].op].relaxation.alpha.lr_scale

    @torch.no_grad()
    def project(self, node: str, alpha: Tensor, bounds: dict[str, Interval]) -> None:
        """Map ``alpha`` of activation ``node`` back into its useful range in place (``AlphaSpec.project``)."""
        n = self.g[node]
        fn = OPS[n.op].relaxation.alpha.project
        if fn is not None:
            b = bounds[n.inputs[0]]
            alpha.copy_(fn(alpha, b.lower.unsqueeze(1), b.upper.unsqueeze(1), **n.attrs))

    def domain_bounds(self, splits: dict[str, Tensor], cuts: dict[str, Tensor] | None = None,
                      base: dict[str, Interval] | None = None) -> dict[str, Interval]:
        """Per-domain pre-activation bounds (N, *shape): the root's (or ``base``, the domains' own), clamped
        by the splits and the cuts (per smooth activation (N, 2, n): a lower and an upper bound of its input)."""
        cuts = cuts or {}
        N = _count(splits, cuts)
        out = {}
        for node, b in (base or self.root_bounds).items():
            out[node] = Interval(b.lower.expand((N,) + b.lower.shape[1:]), b.upper.expand((N,) + b.upper.shape[1:]))
        for r in self.relus:
            p = self.pre[r]
            s = splits[r].reshape((N,) + self.shapes[r])
            b = out[p]
            out[p] = Interval(torch.where(s > 0, b.lower.clamp(min=0), b.lower),
                              torch.where(s < 0, b.upper.clamp(max=0), b.upper))
        for a, c in cuts.items():
            p = self.pre[a]
            b = out[p]
            lo, up = (c[:, k].reshape((N,) + self.shapes[a]) for k in (0, 1))
            out[p] = Interval(torch.maximum(b.lower, lo), torch.minimum(b.upper, up))
        return out

    @torch.no_grad()
    def refresh(self, bounds: dict[str, Interval], changed: Tensor | None = None, deadline: float = math.inf,
                budget: int = 1 << 20) -> tuple[dict[str, Interval], Tensor]:
        """CROWN on the intermediate bounds of a batch of domains under their splits.  In topological order,
        the undecided neurons of every ReLU input after the first relaxation are re-bounded by a backward
        pass from that input with CROWN's slopes on the domains' own bounds (``bounds``, (N, *shape), already
        clamped by the splits, so a split neuron is relaxed exactly), and intersected with them, so later
        layers see the tighter ones.  ``changed`` (N,): per domain, the index in :attr:`relus` of the one
        ReLU whose split is new (only the inputs after it are re-bounded); ``None``: every input.  Past
        ``deadline`` (checked between chunks of domains) the rest keep their bounds.
        Returns the new bounds and a (N,) mask of the domains found empty: some neuron's lower bound is above
        its upper by more than rounding (no input of the box meets the splits).  Bounds crossed by less than
        that keep their old values (sound)."""
        out = dict(bounds)
        N = next(iter(bounds.values())).lower.shape[0]
        dev = self.device
        empty = torch.zeros(N, dtype=torch.bool, device=dev)
        tol = 1e-5 if self.dtype == torch.float32 else 1e-9
        for p in self._refreshable:
            if changed is None:
                sel = torch.arange(N, device=dev)
            else:
                sel = torch.nonzero(self._upstream[p][changed]).flatten()
            b = out[p]
            lo, up = b.lower.flatten(1), b.upper.flatten(1)
            idx = torch.nonzero(undecided(Interval(lo[sel], up[sel]), user_kinks(self.g, p)).any(0)).flatten()
            if not idx.numel():
                continue
            root, rows_of = self._start_of(p)
            walk, names, bmap, amap = self._walk_from(root)
            R = idx.numel()
            widest = max(math.prod(self.g[a].shape[1:]) for a in ancestors(self.g, p))
            step = max(1, budget // (R * widest))
            new_lo, new_up = lo.clone(), up.clone()
            start = rows_of(idx)
            for s0 in range(0, sel.numel(), step):
                if time.monotonic() > deadline:
                    break
                part_idx = sel[s0:s0 + step]
                n = part_idx.numel()
                part = {k: Interval(v.lower[part_idx], v.upper[part_idx]) for k, v in out.items()}
                args: dict[str, object] = {"start": Coeffs(*(t.expand((n,) + t.shape[1:]) for t in start)),
                                           "x_lower": self.x_lower.expand((n,) + self.x_lower.shape[1:]),
                                           "x_upper": self.x_upper.expand((n,) + self.x_upper.shape[1:])}
                for ph, node in bmap.items():
                    args[ph] = part[node]
                for ph, node in amap.items():
                    a = self.crown_alpha(node, part, R)
                    args[ph] = (a, a)
                lower, upper = walk(*[args.get(k) for k in names])[:2]
                grid = part_idx.unsqueeze(1), idx.unsqueeze(0)
                new_lo[grid] = torch.fmax(lo[grid], lower)  # fmax: a NaN never wins
                new_up[grid] = torch.fmin(up[grid], upper)
            crossed = new_lo > new_up
            empty |= (new_lo > new_up + tol * (1 + new_up.abs())).any(1)
            new_lo = torch.where(crossed, lo, new_lo)
            new_up = torch.where(crossed, up, new_up)
            out[p] = Interval(new_lo.reshape(b.lower.shape), new_up.reshape(b.upper.shape))
        return out, empty

    @functools.cached_property
    def _refreshable(self) -> list[str]:
        """The ReLU inputs :meth:`refresh` re-bounds: those after some relaxation, in topological order."""
        pres = {self.pre[r] for r in self.relus}
        return [n.name for n in self.g if n.name in pres and self._after_relaxation(n.name)]

    def _after_relaxation(self, node: str) -> bool:
        """Whether a relaxed activation lies before ``node`` (else CROWN bounds it exactly on the box)."""
        return any(OPS[self.g[a].op].relaxation is not None for a in ancestors(self.g, node) if a != node)

    @functools.cached_property
    def _upstream(self) -> dict[str, Tensor]:
        """Per ReLU input :meth:`refresh` re-bounds, which of :attr:`relus` lie before it (a bool mask)."""
        before = {p: set(ancestors(self.g, p)) for p in self._refreshable}
        return {p: torch.tensor([r in before[p] for r in self.relus], device=self.device) for p in self._refreshable}

    @functools.cached_property
    def _plans(self) -> dict[str, BoundPlan]:
        """How the compiler plans each intermediate bound (:func:`plan_bounds`), by node."""
        return {b.node: b for b in plan_bounds(self.g)}

    def _start_of(self, node: str) -> tuple[str, Callable[[Tensor], Coeffs]]:
        """Where a backward pass bounding neurons of ``node`` starts, and its start state ``(1, R, ...)`` for
        the neurons ``idx`` (R,): where the planner starts at a linear layer's input (one product fewer than
        unit rows at the node) and its weight is stored, the rows of that weight, else unit rows at the node
        (:func:`~boundc.passes.rules.engine.start_rows`)."""
        n, plan = self.g[node], self._plans.get(node)
        consts = [self.g[i] for i in n.inputs[1:] if i is not None]
        if plan is not None and plan.start == "linear" and all(c.op == "param" for c in consts):
            weight = self.g.tensors[consts[0].attrs["target"]]
            bias = self.g.tensors[consts[1].attrs["target"]] if len(consts) > 1 else None
            return n.inputs[0], lambda idx: start_rows(self.x_lower, (), idx.unsqueeze(0), Start.LINEAR, weight, bias)
        shape = tuple(n.shape[1:])
        return node, lambda idx: start_rows(self.x_lower, shape, idx.unsqueeze(0), Start.IDENTITY, None, None)

    def _walk_from(self, node: str) -> tuple:
        """The backward walk from intermediate ``node`` (built once)."""
        if node not in self._walks:
            self._walks[node] = build_walk(self.g, node, "crown", with_alpha=True)
        return self._walks[node]

    def run(self, splits: dict[str, Tensor], alpha: dict[str, Tensor], beta: dict[str, Tensor],
            bounds: dict[str, Interval]) -> tuple[Tensor, list[Tensor]]:
        """One backward pass: lower bounds (N, S) and the tapped lower coefficients (per ReLU output, per
        smooth activation's output, then the input).  ``beta``: β >= 0 per split ReLU, (N, S, n); the sign
        comes from the splits.  ``bounds``: the domains' bounds (:meth:`domain_bounds` of their splits and cuts)."""
        N = _count(splits, None, bounds)
        args: dict[str, object] = {
            "start": Coeffs(*(t.expand((N,) + t.shape[1:]) for t in self.start)),
            "x_lower": self.x_lower.expand((N,) + self.x_lower.shape[1:]),
            "x_upper": self.x_upper.expand((N,) + self.x_upper.shape[1:]),
        }
        for ph, node in self.bmap.items():
            args[ph] = bounds[node]
        for ph, a in alpha.items():
            args[ph] = (a, None)
        for r in self.relus:
            sign = -splits[r].to(self.dtype).unsqueeze(1)  # σ: -1 active, +1 inactive
            args[self.betas[r]] = (beta[r] * sign).reshape((N, self.S) + self.shapes[r])
        out = self.walk(*[args.get(n) for n in self.names])
        return out[0], list(out[2:])

    def unstable(self, bounds: dict[str, Interval], splits: dict[str, Tensor]) -> dict[str, Tensor]:
        """(N, n) masks of the neurons that can be split: free ReLUs whose input interval contains 0
        strictly, and smooth activations whose input interval is wider than :data:`MIN_CUT_WIDTH`."""
        out = {}
        for r in self.relus:
            b = bounds[self.pre[r]]
            lo, up = b.lower.flatten(1), b.upper.flatten(1)
            out[r] = (lo < 0) & (up > 0) & (splits[r] == 0)
        for a in self.smooth:
            b = bounds[self.pre[a]]
            out[a] = (b.upper - b.lower).flatten(1) > MIN_CUT_WIDTH
        return out


def _count(splits: dict[str, Tensor], cuts: dict[str, Tensor] | None = None,
           bounds: dict[str, Interval] | None = None) -> int:
    """The number of domains of a batch (one when nothing can be split: the root)."""
    for t in (*splits.values(), *(cuts or {}).values()):
        return t.shape[0]
    for b in (bounds or {}).values():
        return max(b.lower.shape[0], 1)
    return 1


def cast_graph(g: Graph, dtype: torch.dtype, device: torch.device | str = "cpu") -> Graph:
    """A copy of ``g`` whose tensors are detached, on ``device``, floating ones in ``dtype``
    (no live module: the bounds of a fixed network)."""
    h = g.copy()
    h.tensors = {k: (v.detach().to(dtype=dtype, device=device) if v.is_floating_point() else v.to(device))
                 for k, v in g.tensors.items()}
    h.module = None
    return h


@dataclass
class Domains:
    """A batch of domains: splits (int8, per ReLU (N, n)), α, β, lower bounds (N, S), per-disjunct
    exclusion flags (N, D), cuts (per smooth activation (N, 2, n): bounds of its input) and, where they
    are refreshed, the domains' own intermediate bounds (per node (N, *shape))."""

    splits: dict[str, Tensor]
    alpha: dict[str, Tensor]
    beta: dict[str, Tensor]
    lower: Tensor
    excluded: Tensor
    cuts: dict[str, Tensor] = field(default_factory=dict)
    bounds: dict[str, Interval] | None = None  # the domains' own intermediate bounds (None: the root's, clamped)

    def __len__(self) -> int:
        return self.lower.shape[0]

    @staticmethod
    def root(sb: SpecBounds, excluded: Tensor) -> Domains:
        """The unsplit domain with CROWN's α, zero β, bound ``-inf`` and the disjuncts ``excluded`` (D,)."""
        dev = sb.device
        splits = {r: torch.zeros(1, math.prod(sb.shapes[r]), dtype=torch.int8, device=dev) for r in sb.relus}
        beta = {r: torch.zeros(1, sb.S, math.prod(sb.shapes[r]), dtype=sb.dtype, device=dev) for r in sb.relus}
        inf = torch.tensor([[float("-inf")], [float("inf")]], dtype=sb.dtype, device=dev)
        cuts = {a: inf.expand(2, math.prod(sb.shapes[a])).unsqueeze(0).clone() for a in sb.smooth}
        return Domains(splits, sb.alpha_init(), beta, torch.full((1, sb.S), float("-inf"), dtype=sb.dtype, device=dev),
                       excluded.to(dev).unsqueeze(0), cuts)

    def take(self, idx: Tensor) -> Domains:
        """The domains ``idx``."""
        return Domains({k: v[idx] for k, v in self.splits.items()}, {k: v[:, idx] for k, v in self.alpha.items()},
                       {k: v[idx] for k, v in self.beta.items()}, self.lower[idx], self.excluded[idx],
                       {k: v[idx] for k, v in self.cuts.items()},
                       None if self.bounds is None else
                       {k: Interval(v.lower[idx], v.upper[idx]) for k, v in self.bounds.items()})

    @staticmethod
    def cat(parts: list[Domains]) -> Domains:
        """Concatenate batches."""
        a = parts[0]
        return Domains({k: torch.cat([p.splits[k] for p in parts]) for k in a.splits},
                       {k: torch.cat([p.alpha[k] for p in parts], 1) for k in a.alpha},
                       {k: torch.cat([p.beta[k] for p in parts]) for k in a.beta},
                       torch.cat([p.lower for p in parts]), torch.cat([p.excluded for p in parts]),
                       {k: torch.cat([p.cuts[k] for p in parts]) for k in a.cuts},
                       None if a.bounds is None else
                       {k: Interval(torch.cat([p.bounds[k].lower for p in parts]),
                                    torch.cat([p.bounds[k].upper for p in parts])) for k in a.bounds})

    def nbytes(self) -> int:
        """Bytes held."""
        ts = [*self.splits.values(), *self.alpha.values(), *self.beta.values(), self.lower, self.excluded,
              *self.cuts.values(), *(t for b in (self.bounds or {}).values() for t in (b.lower, b.upper))]
        return sum(t.numel() * t.element_size() for t in ts)


class _Problem:
    """The specification's rows grouped into disjuncts: a domain is safe when every open disjunct has a row
    whose lower bound exceeds its threshold."""

    def __init__(self, d: Tensor, rows: list[int], open_: Tensor, device: torch.device) -> None:
        self.d = d.to(device)
        self.group = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(rows)).to(device)
        self.D = len(rows)
        self.open = open_.to(device)  # (D,) disjuncts to exclude

    def margins(self, lower: Tensor) -> Tensor:
        """(N, D): per disjunct, the best row margin ``max_rows (lower - d)`` (-inf for empty disjuncts)."""
        m = lower - self.d.to(lower.dtype)
        out = torch.full((m.shape[0], self.D), float("-inf"), dtype=m.dtype, device=m.device)
        return out.scatter_reduce(1, self.group.expand_as(m), m, "amax")

    def value(self, lower: Tensor, excluded: Tensor) -> Tensor:
        """(N,): the worst margin over the disjuncts still open on each domain (+inf when none is)."""
        m = self.margins(lower)
        live = self.open.unsqueeze(0) & ~excluded
        return torch.where(live, m, torch.full_like(m, float("inf"))).amin(1)

    def row_weights(self, excluded: Tensor) -> Tensor:
        """(N, S): 1 on the rows of disjuncts still open."""
        live = self.open.unsqueeze(0) & ~excluded
        return live[:, self.group].to(self.d.dtype)


def optimise(sb: SpecBounds, dom: Domains, iterations: int, opts: BabOptions, deadline: float,
             problem: _Problem | None = None) -> tuple[Domains, list[Tensor], dict[str, Interval]]:
    """Optimise α and β of a batch with Adam, keeping per row the best bound seen (never worse than the
    bound at the starting parameters, nor than ``dom.lower``, e.g. the parent's bound); with ``problem``,
    stop as soon as every domain is safe.  Returns the improved domains, the taps and the domain bounds."""
    bounds = _own(sb, dom)
    alpha = {k: v.clone().requires_grad_(True) for k, v in dom.alpha.items()}
    beta = {k: v.clone().requires_grad_(True) for k, v in dom.beta.items()}
    groups = [{"params": [v], "lr": opts.lr_alpha * sb.lr_scale(sb.alphas[k])} for k, v in alpha.items()]
    if beta:
        groups.append({"params": list(beta.values()), "lr": opts.lr_beta})
    opt = torch.optim.Adam(groups, fused=True) if groups else None  # fused: ~4x faster steps on CPU
    best = dom.lower.clone()
    best_a = {k: v.detach().clone() for k, v in dom.alpha.items()}
    best_b = {k: v.detach().clone() for k, v in dom.beta.items()}
    taps: list[Tensor] = []
    with torch.enable_grad():
        for it in range(iterations + 1):
            lower, taps = sb.run(dom.splits, alpha, beta, bounds)
            low = lower.detach()
            better = low > best
            if it == 0:  # a parent's bound holds on its children too: never report less
                better = torch.ones_like(better)
                best = torch.fmax(dom.lower, low)  # fmax: a NaN iterate never replaces a bound
            else:
                best = torch.fmax(best, low)
            for k, v in alpha.items():
                m = better.reshape((1,) + better.shape + (1,) * (v.dim() - 3))
                best_a[k] = torch.where(m, v.detach(), best_a[k])
            for k, v in beta.items():
                best_b[k] = torch.where(better.unsqueeze(-1), v.detach(), best_b[k])
            if it == iterations or opt is None or time.monotonic() > deadline:
                break
            if problem is not None and bool((problem.value(best, dom.excluded) > 0).all()):
                break
            opt.zero_grad()
            (-lower.sum()).backward()
            opt.step()
            for k, v in alpha.items():
                sb.project(sb.alphas[k], v, bounds)
            with torch.no_grad():
                for v in beta.values():
                    v.clamp_(min=0)
    taps = [t.detach() for t in taps]
    return Domains(dom.splits, best_a, best_b, best, dom.excluded, dom.cuts, dom.bounds), taps, bounds


def _scores(sb: SpecBounds, taps: list[Tensor], bounds: dict[str, Interval], splits: dict[str, Tensor],
            weights: Tensor) -> Tensor:
    """(N, total free neurons) BaBSR-style scores: per unstable neuron, the intercept of its upper line
    times the weight the bound puts on it (``-λ``, where the bound uses the upper line), plus a small
    term for the lower line; for a smooth activation, the weight times its input width squared (the
    gap of its relaxation grows so); ``-inf`` where a neuron cannot be split."""
    mask = sb.unstable(bounds, splits)
    out = []
    for r, lam in zip(sb.relus, taps):
        b = bounds[sb.pre[r]]
        lo, up = b.lower.flatten(1), b.upper.flatten(1)
        lam = (lam.flatten(2) * weights.unsqueeze(-1).to(lam.dtype))  # (N, S, n)
        den = torch.where(mask[r], up - lo, torch.ones_like(up))
        intercept = -lo * up / den  # >= 0 on unstable neurons
        s = (lam.clamp(max=0).neg() * intercept.unsqueeze(1)).sum(1)
        s = s + 1e-3 * (lam.abs() * (up - lo).unsqueeze(1)).sum(1)
        out.append(torch.where(mask[r], s, torch.full_like(s, float("-inf"))))
    for a, lam in zip(sb.smooth, taps[len(sb.relus):]):  # the relaxation gap grows with the width squared
        b = bounds[sb.pre[a]]
        width = (b.upper - b.lower).flatten(1)
        s = (lam.flatten(2).abs() * weights.unsqueeze(-1).to(lam.dtype)).sum(1) * width.square()
        out.append(torch.where(mask[a], s, torch.full_like(s, float("-inf"))))
    return torch.cat(out, 1)


def _cut_point(lo: Tensor, up: Tensor) -> Tensor:
    """Where to cut the input intervals ``[lo, up]`` of smooth activations: at 0 (the inflection point of
    sigmoid and tanh) when it lies in the middle 80 %, else at the midpoint."""
    mid = (lo + up) / 2
    inside = (lo + 0.1 * (up - lo) < 0) & (up - 0.1 * (up - lo) > 0)
    return torch.where(inside, torch.zeros_like(mid), mid)


def _children(sb: SpecBounds, dom: Domains, choice: Tensor, bounds: dict[str, Interval]) -> Domains:
    """Two children per domain, split on the flat neuron index ``choice`` (N,) (ReLUs first, then smooth
    activations): active first, then inactive; a smooth activation's input interval (``bounds``: the
    domains' own) is cut in two, the lower part first."""
    N = len(dom)
    sizes = [math.prod(sb.shapes[r]) for r in sb.relus + sb.smooth]
    offsets = torch.tensor([0, *sizes], device=choice.device).cumsum(0)
    cuts = {}
    for k, a in enumerate(sb.smooth, start=len(sb.relus)):
        c = dom.cuts[a].repeat(2, 1, 1)
        local = choice - offsets[k]
        rows = torch.nonzero((local >= 0) & (local < sizes[k])).flatten()
        if rows.numel():
            cols = local[rows]
            b = bounds[sb.pre[a]]
            m = _cut_point(b.lower.flatten(1)[rows, cols], b.upper.flatten(1)[rows, cols])
            c[rows, 1, cols] = m
            c[rows + N, 0, cols] = m
        cuts[a] = c
    splits = {}
    for k, r in enumerate(sb.relus):
        s = dom.splits[r].repeat(2, 1)
        local = choice - offsets[k]
        hit = (local >= 0) & (local < sizes[k])
        rows = torch.nonzero(hit).flatten()
        if rows.numel():
            cols = local[rows]
            s[rows, cols] = 1
            s[rows + N, cols] = -1
        splits[r] = s
    alpha = {k: v.repeat(1, 2, *([1] * (v.dim() - 2))) for k, v in dom.alpha.items()}
    if cuts:  # a parent's tangent points may lie outside a child's narrower interval: start from CROWN's
        kb = sb.domain_bounds(splits, cuts)
        alpha = {k: sb.crown_alpha(sb.alphas[k], kb, sb.S) for k in alpha}
    own = None
    if dom.bounds is not None:  # the parent's own bounds, clamped by the children's splits
        own = sb.domain_bounds(splits, cuts, {k: Interval(v.lower.repeat(2, *([1] * (v.lower.dim() - 1))),
                                                          v.upper.repeat(2, *([1] * (v.upper.dim() - 1))))
                                              for k, v in dom.bounds.items()})
    return Domains(splits, alpha, {k: v.repeat(2, *([1] * (v.dim() - 1))) for k, v in dom.beta.items()},
                   dom.lower.repeat(2, 1), dom.excluded.repeat(2, 1), cuts, own)


def _own(sb: SpecBounds, dom: Domains) -> dict[str, Interval]:
    """The domains' bounds: their own when they keep them, else the root's clamped by their splits and cuts."""
    return dom.bounds if dom.bounds is not None else sb.domain_bounds(dom.splits, dom.cuts)


def _layer_of(sb: SpecBounds, choice: Tensor) -> Tensor:
    """The index in ``sb.relus`` of each flat ReLU neuron index of ``choice``."""
    sizes = torch.tensor([math.prod(sb.shapes[r]) for r in sb.relus], device=choice.device)
    return torch.searchsorted(sizes.cumsum(0), choice, right=True)


def _choose(sb: SpecBounds, dom: Domains, taps: list[Tensor], bounds: dict[str, Interval], problem: _Problem,
            opts: BabOptions, refresh: bool = False, deadline: float = math.inf
            ) -> tuple[Tensor, tuple[dict[str, Interval], Tensor] | None]:
    """The flat neuron to split per domain (BaBSR, or FSB over the top candidates).  With ``refresh``, FSB
    bounds the candidates' children with refreshed intermediate bounds (:meth:`SpecBounds.refresh`) and
    also returns those of the chosen children (in :func:`_children`'s order) with their empty mask, unless
    it bounded them with the float32 scout (``opts.scout``: the caller then refreshes the chosen ones)."""
    score = _scores(sb, taps, bounds, dom.splits, problem.row_weights(dom.excluded))
    if opts.branching is Branching.BABSR or score.shape[1] <= 1:
        return score.argmax(1), None
    k = min(opts.fsb_candidates, score.shape[1])
    cand = score.topk(k, dim=1).indices  # (N, k)
    if refresh and len(sb.relus) > 1:  # the best of each layer instead: an early split tightens every later layer
        sizes = [math.prod(sb.shapes[r]) for r in sb.relus]
        offsets = [0, *torch.tensor(sizes).cumsum(0).tolist()]
        cand = torch.stack([part.argmax(1) + off for part, off in zip(score.split(sizes, 1), offsets)], 1)
        k = cand.shape[1]
    N = len(dom)
    flat = cand.T.reshape(-1)  # candidate-major
    rep = dom.take(torch.arange(N, device=cand.device).repeat(k))
    kids = _children(sb, rep, flat, _own(sb, rep))
    kb = _own(sb, kids)
    empty = None
    judge, alpha, beta = sb, kids.alpha, kids.beta
    if refresh and opts.scout:  # the candidates are only compared: in float32, and the chosen refreshed again
        judge = sb.scout()
        kb = {n: Interval(b.lower.to(judge.dtype), b.upper.to(judge.dtype)) for n, b in kb.items()}
        alpha = {k: v.to(judge.dtype) for k, v in alpha.items()}
        beta = {k: v.to(judge.dtype) for k, v in beta.items()}
    if refresh:
        kb, empty = judge.refresh(kb, _layer_of(sb, flat).repeat(2), deadline)
    with torch.no_grad():
        lower, _ = judge.run(kids.splits, alpha, beta, kb)
    if empty is not None:
        lower = torch.where(empty.unsqueeze(1), torch.full_like(lower, float("inf")), lower)
    v = problem.value(lower.to(kids.lower.dtype), kids.excluded)
    v = torch.minimum(v[:N * k], v[N * k:]).reshape(k, N)
    v = torch.where(torch.isfinite(score.gather(1, cand).T), v, torch.full_like(v, float("-inf")))
    best = v.argmax(0)
    choice = cand.gather(1, best.unsqueeze(1)).squeeze(1)
    if empty is None or judge is not sb:
        return choice, None
    pick = best * N + torch.arange(N, device=best.device)
    pick = torch.cat([pick, pick + N * k])  # the chosen candidate's active, then inactive children
    return choice, ({n: Interval(b.lower[pick], b.upper[pick]) for n, b in kb.items()}, empty[pick])


def _vertices(sb: SpecBounds, taps: list[Tensor], value_rows: Tensor) -> Tensor:
    """Per domain, the input corner minimising the linear lower bound of row ``value_rows`` (N,)."""
    A = taps[-1]  # (N, S, *input)
    N = A.shape[0]
    a = A[torch.arange(N, device=A.device), value_rows]
    xl = sb.x_lower.expand_as(a)
    xu = sb.x_upper.expand_as(a)
    return torch.where(a >= 0, xl, xu)


def branch_and_bound(sb: SpecBounds, d: Tensor, rows: list[int], open_: Tensor, *, deadline: float,
                     opts: BabOptions, falsify: Callable[[Tensor], object | None]) -> BabResult:
    """Exclude the open disjuncts (rows ``C·y > d`` grouped by ``rows``) on the box of ``sb`` by branch and
    bound.  ``falsify(xs)`` checks candidate inputs (N, *input) and returns a confirmed counterexample or
    ``None``.  Call :meth:`SpecBounds.set_root` and :meth:`SpecBounds.set_spec` first."""
    problem = _Problem(d, rows, open_, sb.device)
    budget = opts.memory if opts.memory is not None else queue_budget(sb.device)
    opts = opts.for_network(bool(sb.relus))
    root = Domains.root(sb, ~open_)
    refresh = (opts.refresh_bounds and len(sb.relus) <= opts.refresh_max_layers
               and 0 < sum(math.prod(sb.shapes[r]) for r in sb.relus) <= opts.refresh_max_neurons)
    if refresh:
        root.bounds = sb.domain_bounds(root.splits)
    root, taps, _ = optimise(sb, root, opts.root_iterations, opts, deadline, problem)
    t0 = time.monotonic()
    count = 1

    def settle(dom: Domains, taps: list[Tensor]) -> tuple[Domains, object | None]:
        """Mark excluded disjuncts, drop safe domains, try the open ones' minimising corners."""
        m = problem.margins(dom.lower)
        dom.excluded = dom.excluded | (m > 0)
        keep = ~(dom.excluded | ~problem.open.unsqueeze(0)).all(1)
        # counterexample candidates: the corner minimising the worst open row
        weights = problem.row_weights(dom.excluded)
        margin = torch.where(weights > 0, dom.lower - problem.d.to(dom.lower.dtype),
                             torch.full_like(dom.lower, float("inf")))
        idx = torch.nonzero(keep).flatten()
        cex = None
        if idx.numel():
            xs = _vertices(sb, [t[idx] for t in taps], margin[idx].argmin(1))
            cex = falsify(xs)
        return dom.take(idx), cex

    queue, cex = settle(root, taps)
    if cex is not None:
        return BabResult(Verdict.FALSIFIED, cex, count, float("-inf"), "counterexample at a root vertex")
    if len(queue) and not (sb.relus or sb.smooth):
        low = _global(problem, queue)
        return BabResult(Verdict.UNKNOWN, None, count, low, f"no activation to branch on (optimised root bound: "
                                                             f"worst margin {low:.4g})")
    def timeout(open_: Domains) -> BabResult:
        low = _global(problem, open_)
        return BabResult(Verdict.UNKNOWN, None, count, low, f"timeout with {len(open_)} open domains "
                                                            f"(worst margin {low:.4g})")

    bar = tqdm(desc="branch and bound", unit="dom", disable=None if opts.progress else True, leave=False)
    try:
        while len(queue):
            if time.monotonic() > deadline:
                return timeout(queue)
            if queue.nbytes() * 2 > budget:
                return BabResult(Verdict.UNKNOWN, None, count, _global(problem, queue),
                                 f"{len(queue)} open domains exceed the memory budget")
            v = problem.value(queue.lower, queue.excluded)
            order = v.argsort()
            pick, rest = order[:opts.batch], order[opts.batch:]
            batch = queue.take(pick)
            bbounds = _own(sb, batch)
            with torch.no_grad():  # the coefficients for branching (not kept in the queue: memory)
                _, btaps = sb.run(batch.splits, batch.alpha, batch.beta, bbounds)
            unstable = sb.unstable(bbounds, batch.splits)
            stuck = ~torch.stack([m.any(1) for m in unstable.values()], 1).any(1)
            if bool(stuck.any()):
                return BabResult(Verdict.UNKNOWN, None, count, _global(problem, queue),
                                 "a domain with nothing left to split is still open")
            choice, refreshed = _choose(sb, batch, btaps, bbounds, problem, opts, refresh, deadline)
            kids = _children(sb, batch, choice, bbounds)
            count += len(kids)
            if refresh:
                if refreshed is None:
                    refreshed = sb.refresh(kids.bounds, _layer_of(sb, choice).repeat(2), deadline)
                kids.bounds, empty = refreshed
                kids = kids.take(torch.nonzero(~empty).flatten())  # no input meets their splits
                if not len(kids):
                    queue = queue.take(rest)
                    continue
            if time.monotonic() > deadline:  # the children are not bounded yet: their parents stay open
                return timeout(queue)
            steps = opts.refresh_iterations if refresh else opts.iterations
            kids, ktaps, _ = optimise(sb, kids, steps, opts, deadline, problem)
            kids, cex = settle(kids, ktaps)
            if cex is not None:
                return BabResult(Verdict.FALSIFIED, cex, count, float("-inf"), "counterexample at a domain vertex")
            queue = Domains.cat([queue.take(rest), kids])
            bar.update(len(kids))
            bar.set_postfix(open=len(queue), lower=f"{_global(problem, queue):.4g}",
                            elapsed=f"{time.monotonic() - t0:.0f}s")
    finally:
        bar.close()
    return BabResult(Verdict.VERIFIED, None, count, 0.0, f"branch and bound ({count} domains)")


def queue_budget(device: torch.device) -> int:
    """A quarter of the memory free on ``device`` now (the CPU's ``MemAvailable``, a GPU's free memory);
    2 GiB where it cannot be read."""
    fallback = 2 << 30
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 4
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 4
    except OSError:
        pass
    return fallback


def _global(problem: _Problem, queue: Domains) -> float:
    """The global lower bound: the worst open domain's value."""
    if not len(queue):
        return float("inf")
    return float(problem.value(queue.lower, queue.excluded).min())


__all__ = ["BabOptions", "BabResult", "Branching", "Domains", "SpecBounds", "branch_and_bound", "cuttable", "optimise",
           "queue_budget", "splittable"]
