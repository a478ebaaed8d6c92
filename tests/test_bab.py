"""Branch and bound with β-CROWN bounds: sound on every sub-domain (against the exact MILP minimum),
never looser than α-CROWN, decides what CROWN cannot, agrees with the MILP, and keeps its deadline."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from boundc.passes.rules.interval import Interval
from torch import nn

import boundc
from boundc.report import intersect_node_bounds
from boundc.verify.bab import BabOptions, Branching, Domains, SpecBounds, branch_and_bound, optimise
from boundc.verify.cascade import Verdict
from boundc.verify.milp import MilpOptions, MilpVerifier


def _net(seed: int, n_in: int = 8, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 3)).double().eval()


def _setup(model: nn.Module, x: torch.Tensor, eps: float) -> tuple:
    xl, xu = x - eps, x + eps
    bm = boundc.compile(model, x, method="crown")
    bounds = intersect_node_bounds([bm], xl, xu)
    sb = SpecBounds(bm.graph, torch.float64)
    sb.set_root(bounds, xl, xu)
    return bm, bounds, sb, xl, xu


def _random_splits(sb: SpecBounds, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """``n`` domains, each splitting a random third of the unstable neurons at random."""
    root = sb.domain_bounds({r: torch.zeros(1, math.prod(sb.shapes[r]), dtype=torch.int8) for r in sb.relus})
    out = {}
    for r in sb.relus:
        b = root[sb.pre[r]]
        unstable = ((b.lower < 0) & (b.upper > 0)).flatten(1).expand(n, -1)
        pick = (torch.rand(unstable.shape, generator=gen) < 0.35) & unstable
        sign = torch.where(torch.rand(unstable.shape, generator=gen) < 0.5, 1, -1)
        out[r] = torch.where(pick, sign, 0).to(torch.int8)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_beta_crown_is_sound_on_every_subdomain_and_never_looser_than_alpha(seed: int) -> None:
    model = _net(seed)
    x = torch.rand(1, 8, dtype=torch.float64)
    bm, bounds, sb, xl, xu = _setup(model, x, 0.15)
    c = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    sb.set_spec(c)
    gen = torch.Generator().manual_seed(seed)
    n = 12
    splits = _random_splits(sb, n, gen)
    root = Domains.root(sb, torch.zeros(1, dtype=torch.bool))
    dom = Domains(splits, {k: v.expand(v.shape[:1] + (n,) + v.shape[2:]).clone() for k, v in root.alpha.items()},
                  {k: v.expand(n, *v.shape[1:]).clone() for k, v in root.beta.items()},
                  torch.full((n, 1), float("-inf"), dtype=torch.float64), torch.zeros(n, 1, dtype=torch.bool))
    deadline = time.monotonic() + 60
    alpha_only, _, _ = optimise(sb, dom, 30, BabOptions(lr_beta=0.0), deadline)
    joint, _, dbounds = optimise(sb, alpha_only, 30, BabOptions(), deadline)
    assert torch.all(joint.lower >= alpha_only.lower)
    assert bool((joint.lower > alpha_only.lower + 1e-6).any()), "β never tightened a split domain"
    milp = MilpVerifier(bm.graph, MilpOptions(time_limit=60, tolerance=1e6))
    checked = 0
    for i in range(n):
        b = {k: v for k, v in bounds.items()}
        for r in sb.relus:
            p = sb.pre[r]
            b[p] = type(bounds[p])(dbounds[p].lower[i:i + 1], dbounds[p].upper[i:i + 1])
        if any(bool((b[sb.pre[r]].lower > b[sb.pre[r]].upper).any()) for r in sb.relus):
            continue
        res = milp.verify_row(xl, xu, c[0], b)
        if res.minimum is None:  # an empty sub-domain: any bound holds
            continue
        checked += 1
        assert float(joint.lower[i, 0]) <= res.minimum + 1e-5, (i, float(joint.lower[i, 0]), res.minimum)
    assert checked >= n // 2


def _decide(model: nn.Module, x: torch.Tensor, eps: float, c: torch.Tensor, branching: Branching) -> tuple:
    bm, bounds, sb, xl, xu = _setup(model, x, eps)
    sb.set_spec(c[None])

    def falsify(xs: torch.Tensor):
        with torch.no_grad():
            v = model(xs.reshape(xs.shape[0], -1)) @ c
        i = int(v.argmin())
        return xs[i] if float(v[i]) <= 0 else None

    res = branch_and_bound(sb, torch.zeros(1, dtype=torch.float64), [1], torch.ones(1, dtype=torch.bool),
                           deadline=time.monotonic() + 60, opts=BabOptions(batch=16, branching=branching),
                           falsify=falsify)
    milp = MilpVerifier(bm.graph, MilpOptions(time_limit=60, tolerance=1e6)).verify_row(xl, xu, c, bounds)
    with torch.no_grad():
        crown = float(bm(xl, xu, c[None, None])[0][0, 0])
    return res, milp, crown


@pytest.mark.parametrize("branching", list(Branching))
def test_bab_decides_what_crown_cannot_and_agrees_with_the_milp(branching: Branching) -> None:
    beyond_crown = falsified = 0
    for seed in range(8):
        model = _net(seed)
        x = torch.rand(1, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        label = int(model(x).argmax())
        for other in (j for j in range(3) if j != label):
            c = torch.zeros(3, dtype=torch.float64)
            c[label], c[other] = 1.0, -1.0
            for eps in (0.05, 0.1, 0.2, 0.3):
                res, milp, crown = _decide(model, x, eps, c, branching)
                assert milp.minimum is not None
                if milp.minimum > 1e-6:
                    assert res.verdict is Verdict.VERIFIED, (seed, other, eps, res.detail)
                    beyond_crown += crown < 0
                elif milp.minimum < -1e-6:
                    assert res.verdict is not Verdict.VERIFIED, (seed, other, eps)  # soundness
                    falsified += res.verdict is Verdict.FALSIFIED
    assert beyond_crown >= 2, beyond_crown
    assert falsified >= 2, falsified


def _hard_onnx(path, n_in: int = 100) -> tuple[np.ndarray, int]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(n_in, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256),
                          nn.ReLU(), nn.Linear(256, 10)).eval()
    x = torch.rand(1, n_in)
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False)
    return x[0].numpy(), int(model(x).argmax())


def test_timeout_holds_inside_branch_and_bound(tmp_path) -> None:
    """A property too hard for the time given comes back ``unknown`` within about a second of the timeout."""
    from boundc.verify import VerifyOptions, verify

    x0, label = _hard_onnx(tmp_path / "hard.onnx")
    eps = 0.014  # CROWN leaves it open, PGD finds nothing, branch and bound needs far more than 5 s
    lines = [f"(declare-const X_{i} Real)" for i in range(x0.size)] + [f"(declare-const Y_{j} Real)" for j in range(10)]
    for i, v in enumerate(x0):
        lines += [f"(assert (>= X_{i} {v - eps}))", f"(assert (<= X_{i} {v + eps}))"]
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(10) if j != label) + "))")
    prop = tmp_path / "hard.vnnlib"
    prop.write_text("\n".join(lines))
    from boundc.verify import VerifierModel

    model = VerifierModel(str(tmp_path / "hard.onnx"), "alpha-crown")
    for timeout in (2.0, 5.0):
        t0 = time.monotonic()
        res = verify(model, prop, VerifyOptions(method="alpha-crown", timeout=timeout, restarts=1, steps=5))
        took = time.monotonic() - t0
        assert res.status == "unknown", res.detail
        assert "timeout" in res.detail and "domains" in res.detail, res.detail
        assert timeout - 0.5 <= took <= timeout + 1.0, (took, res.detail)


@pytest.mark.parametrize("act", [nn.ReLU, nn.Sigmoid])
def test_tightened_intermediate_bounds_are_sound_and_never_looser(act) -> None:
    """α-CROWN on the root's intermediate bounds keeps every sampled pre-activation inside, and shrinks
    some interval without widening any."""
    from boundc.passes.graph.analysis import evaluate

    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 24), act(), nn.Linear(24, 24), act(), nn.Linear(24, 24), act(),
                          nn.Linear(24, 3)).double().eval()
    x = torch.rand(1, 8, dtype=torch.float64)
    bm, bounds, sb, xl, xu = _setup(model, x, 0.3)
    before = {k: (v.lower.clone(), v.upper.clone()) for k, v in sb.root_bounds.items()}
    sb.tighten(30, 0.4, time.monotonic() + 60)
    gen = torch.Generator().manual_seed(0)
    xs = xl + (xu - xl) * torch.rand((4000, 8), generator=gen, dtype=torch.float64)
    xs[:500] = torch.where(torch.rand((500, 8), generator=gen) < 0.5, xl, xu)  # vertices
    with torch.no_grad():
        values = evaluate(bm.graph, xs)
    shrunk = 0.0
    for k, b in sb.root_bounds.items():
        v = values[k].flatten(1)
        lo, up = b.lower.flatten(1), b.upper.flatten(1)
        assert torch.all(v >= lo - 1e-9) and torch.all(v <= up + 1e-9), k
        assert torch.all(lo >= before[k][0].flatten(1)) and torch.all(up <= before[k][1].flatten(1)), k
        shrunk += float(((before[k][1] - before[k][0]) - (b.upper - b.lower)).sum())
    assert shrunk > 1e-3, shrunk


def _smooth_net(seed: int, act: type[nn.Module]) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 12), act(), nn.Linear(12, 12), act(), nn.Linear(12, 3)).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(4.0)  # steep enough that the box matters
    return net


@pytest.mark.parametrize("act", [nn.Sigmoid, nn.Tanh])
def test_bab_cuts_smooth_activations_soundly_and_beyond_the_root_bound(act) -> None:
    """A network with no ReLU is branched on its activations' input intervals.  With ``m`` the minimum of
    the margin over a dense grid of the 2-d box and ``r`` the optimised root bound: the threshold
    ``m + 0.05·(m - r)`` (violated at a grid point) is never ``verified``, and the threshold
    ``r + 0.1·(m - r)`` (true, beyond the root bound) is proved."""
    for seed in range(2):
        model = _smooth_net(seed, act)
        x = torch.rand(1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        label = int(model(x).argmax())
        c = torch.zeros(3, dtype=torch.float64)
        c[label], c[(label + 1) % 3] = 1.0, -1.0
        eps = 1.0
        xl, xu = x - eps, x + eps
        g = torch.linspace(0, 1, 401, dtype=torch.float64)
        grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
        with torch.no_grad():
            m = float((model(xl + (xu - xl) * grid) @ c).min())
        _, _, sb, _, _ = _setup(model, x, eps)
        sb.set_spec(c[None])
        assert sb.smooth and not sb.relus
        opts = BabOptions(batch=32, smooth_root_iterations=40)  # a root with room left for the cuts to show
        root, _, _ = optimise(sb, Domains.root(sb, torch.zeros(1, dtype=torch.bool)), opts.smooth_root_iterations,
                              opts, time.monotonic() + 60)  # the root bound branch and bound starts from
        r = float(root.lower[0, 0])
        assert r <= m + 1e-9
        gap = m - r
        assert gap > 0.05, (seed, m, r)

        def falsify(xs: torch.Tensor, d: float, model=model, c=c):
            with torch.no_grad():
                v = model(xs.reshape(xs.shape[0], -1)) @ c
            i = int(v.argmin())
            return xs[i] if float(v[i]) <= d else None

        for d, deadline in ((m + 0.05 * gap, 4), (r + 0.1 * gap, 60)):
            res = branch_and_bound(sb, torch.tensor([d], dtype=torch.float64), [1], torch.ones(1, dtype=torch.bool),
                                   deadline=time.monotonic() + deadline, opts=opts,
                                   falsify=lambda xs, d=d, f=falsify: f(xs, d))
            if d > m:
                assert res.verdict is not Verdict.VERIFIED, (seed, d, m)  # soundness
            else:
                assert res.verdict is Verdict.VERIFIED and res.domains > 1, (seed, d, r, m, res.detail)


def test_queue_memory_budget_ends_the_search_as_unknown() -> None:
    """The default budget is a quarter of the free memory (positive, below what the machine has); a queue
    outgrowing an explicit budget ends the search ``unknown``, naming the budget, never ``verified``."""
    from boundc.verify.bab import queue_budget

    budget = queue_budget(torch.device("cpu"))
    assert 0 < budget
    with open("/proc/meminfo") as f:
        total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    assert budget <= total // 4
    model = _net(1)
    x = torch.rand(1, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    label = int(model(x).argmax())
    c = torch.zeros(3, dtype=torch.float64)
    c[label], c[(label + 1) % 3] = 1.0, -1.0
    _, _, sb, _, _ = _setup(model, x, 0.3)
    sb.set_spec(c[None])
    root = Domains.root(sb, torch.zeros(1, dtype=torch.bool))
    res = branch_and_bound(sb, torch.full((1,), 1e6, dtype=torch.float64), [1], torch.ones(1, dtype=torch.bool),
                           deadline=time.monotonic() + 60, opts=BabOptions(batch=4, memory=4 * root.nbytes()),
                           falsify=lambda xs: None)
    assert res.verdict is Verdict.UNKNOWN and "memory budget" in res.detail, res.detail


def test_optimise_stops_once_every_domain_is_safe() -> None:
    """With the problem given, the Adam loop ends at the first iterate that excludes every open disjunct;
    without it, it runs every step.  The bound it returns is the same safe one either way."""
    from boundc.verify.bab import _Problem

    model = _net(3)
    x = torch.rand(1, 8, dtype=torch.float64)
    bm, bounds, sb, xl, xu = _setup(model, x, 0.05)
    c = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float64)
    sb.set_spec(c)
    root = Domains.root(sb, torch.zeros(1, dtype=torch.bool))
    first, _, _ = optimise(sb, root, 0, BabOptions(), time.monotonic() + 60)
    d = first.lower[0] - 0.5  # a threshold the starting bound already clears
    calls = []
    run = sb.run

    def counted(*args, **kw):
        calls.append(1)
        return run(*args, **kw)

    sb.run = counted
    problem = _Problem(d, [1], torch.ones(1, dtype=torch.bool), sb.device)
    early, _, _ = optimise(sb, root, 50, BabOptions(), time.monotonic() + 60, problem)
    assert len(calls) == 1 and bool((early.lower - d > 0).all())
    calls.clear()
    optimise(sb, root, 50, BabOptions(), time.monotonic() + 60)
    assert len(calls) == 51


def test_refreshed_intermediate_bounds_hold_on_every_subdomain_and_tighten() -> None:
    """CROWN under a domain's splits (:meth:`SpecBounds.refresh`) keeps every sampled input that meets the
    splits inside the domain's pre-activation bounds, never widens a bound, tightens some, and calls a domain
    empty only when no sampled input meets its splits; re-bounding only the layers after a new split gives
    the same bounds there as re-bounding every layer."""
    from boundc.passes.graph.analysis import evaluate

    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(),
                          nn.Linear(24, 3)).double().eval()
    x = torch.rand(1, 6, dtype=torch.float64)
    bm, bounds, sb, xl, xu = _setup(model, x, 0.4)
    gen = torch.Generator().manual_seed(0)
    n = 60
    root = sb.domain_bounds({r: torch.zeros(1, math.prod(sb.shapes[r]), dtype=torch.int8) for r in sb.relus})
    splits = {r: torch.zeros(n, math.prod(sb.shapes[r]), dtype=torch.int8) for r in sb.relus}
    for i in range(n):  # three random unstable neurons of the first two layers, random sides
        for _ in range(3):
            r = sb.relus[int(torch.randint(2, (1,), generator=gen))]
            b = root[sb.pre[r]]
            cand = torch.nonzero(((b.lower < 0) & (b.upper > 0)).flatten()).flatten()
            j = cand[int(torch.randint(cand.numel(), (1,), generator=gen))]
            splits[r][i, j] = 1 if bool(torch.rand(1, generator=gen) < 0.5) else -1
    base = sb.domain_bounds(splits)
    new, empty = sb.refresh(base)
    xs = xl + (xu - xl) * torch.rand((40000, 6), generator=gen, dtype=torch.float64)
    xs[:2000] = torch.where(torch.rand((2000, 6), generator=gen) < 0.5, xl, xu)  # vertices
    with torch.no_grad():
        values = evaluate(bm.graph, xs)
    pre = {r: values[sb.pre[r]].flatten(1) for r in sb.relus}
    met_any = 0
    for i in range(n):
        meets = torch.ones(xs.shape[0], dtype=torch.bool)
        for r in sb.relus:
            s = splits[r][i].to(torch.float64)
            meets &= ((pre[r] * s) >= 0).all(1)
        if not bool(meets.any()):
            continue
        met_any += 1
        assert not bool(empty[i]), i  # a domain with a point in it is never called empty
        for r in sb.relus:
            v = pre[r][meets]
            lo, up = new[sb.pre[r]].lower.flatten(1)[i], new[sb.pre[r]].upper.flatten(1)[i]
            assert torch.all(v >= lo - 1e-9) and torch.all(v <= up + 1e-9), (i, r)
    assert met_any >= n // 3, met_any
    shrunk = 0.0
    for k, b in base.items():
        lo, up = new[k].lower, new[k].upper
        assert torch.all(lo >= b.lower) and torch.all(up <= b.upper), k
        shrunk += float(((b.upper - b.lower) - (up - lo)).sum())
    assert shrunk > 1e-2, shrunk
    # one new split per domain, in layer 0 or 1: re-bounding only what follows it gives the same bounds there
    layer = torch.randint(2, (n,), generator=gen)
    one = {r: torch.zeros(n, math.prod(sb.shapes[r]), dtype=torch.int8) for r in sb.relus}
    for i in range(n):
        r = sb.relus[int(layer[i])]
        b = root[sb.pre[r]]
        j = torch.nonzero(((b.lower < 0) & (b.upper > 0)).flatten()).flatten()[0]
        one[r][i, j] = 1 if i % 2 else -1
    full, _ = sb.refresh(sb.domain_bounds(one))
    part, _ = sb.refresh(sb.domain_bounds(one), layer)
    last = sb.pre[sb.relus[-1]]
    assert torch.allclose(full[last].lower, part[last].lower) and torch.allclose(full[last].upper, part[last].upper)


def test_the_scout_computes_the_same_refresh_in_float32() -> None:
    """FSB's float32 scout (:meth:`SpecBounds.scout`) is these bounds in float32: built once per spec, and
    its refreshed intermediate bounds and spec bounds match float64's to float32 rounding."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 3)).double().eval()
    x = torch.rand(1, 6, dtype=torch.float64)
    _, _, sb, _, _ = _setup(model, x, 0.3)
    sb.set_spec(torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]], dtype=torch.float64))
    scout = sb.scout()
    assert scout.dtype == torch.float32 and sb.scout() is scout and scout.scout() is scout
    splits = _random_splits(sb, 12, torch.Generator().manual_seed(1))
    base = sb.domain_bounds(splits)
    new, empty = sb.refresh(base)
    new32, empty32 = scout.refresh({k: Interval(v.lower.float(), v.upper.float()) for k, v in base.items()})
    for k, b in new.items():
        scale = 1 + float(b.upper.abs().max())
        assert torch.allclose(new32[k].lower.double(), b.lower, atol=1e-5 * scale)
        assert torch.allclose(new32[k].upper.double(), b.upper, atol=1e-5 * scale)
    assert torch.equal(empty, empty32)
    alpha = sb.alpha_init()
    beta = {r: torch.zeros(12, sb.S, math.prod(sb.shapes[r]), dtype=torch.float64) for r in sb.relus}
    with torch.no_grad():
        low = sb.run(splits, {k: v.expand(-1, 12, *v.shape[2:]) for k, v in alpha.items()}, beta, new)[0]
        low32 = scout.run(splits, {k: v.expand(-1, 12, *v.shape[2:]).float() for k, v in alpha.items()},
                          {k: v.float() for k, v in beta.items()}, new32)[0]
    assert torch.allclose(low32.double(), low, atol=1e-4 * (1 + float(low.abs().max())))
    sb.set_spec(torch.tensor([[0.0, 1.0, -1.0]], dtype=torch.float64))
    assert sb.scout() is not scout  # a new spec: a new scout
