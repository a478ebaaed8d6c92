"""Run-time drivers of the backward linear relaxation: start states, chunked intermediate bounds, α-CROWN.

The per-op backward rules live in :mod:`.backward`; the generated code calls
these drivers to start a backward pass (from an identity chunk, rows of a
weight, or the spec), to bound every neuron of a node by chunked passes, and to
optimise the free relaxation parameters (α-CROWN).
"""

from __future__ import annotations

import contextlib
import enum
import math
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from boundc.errors import BoundcInternalError, DeadlineExceeded

from . import patches
from .backward import Coeffs
from .interval import Interval
from .ops import opdef
from .registry import owns_result

# -- deadlines -----------------------------------------------------------------------------

_deadline: list[float] = []  # the active deadlines (time.monotonic()), innermost last


@contextlib.contextmanager
def deadline(at: float | None) -> Iterator[None]:
    """Within the block, bound computations stop with :class:`~boundc.errors.DeadlineExceeded` once
    ``time.monotonic()`` passes ``at`` (checked between chunks of backward rows; α-CROWN stops
    optimising and keeps its best parameters); ``None``: no deadline."""
    _deadline.append(math.inf if at is None else at)
    try:
        yield
    finally:
        _deadline.pop()


def check_deadline() -> None:
    """Raise :class:`~boundc.errors.DeadlineExceeded` when an active :func:`deadline` has passed."""
    if _deadline and time.monotonic() > min(_deadline):
        raise DeadlineExceeded("the deadline passed while bounding")


# -- start states -------------------------------------------------------------------

def start_identity(x_lower: Tensor, shape: tuple[int, ...]) -> Coeffs:
    """Unit rows for every neuron of a node of per-sample ``shape`` (the same for every sample)."""
    B, n = x_lower.shape[0], math.prod(shape)
    A = torch.eye(n, dtype=x_lower.dtype, device=x_lower.device).reshape((1, n) + tuple(shape))
    A = A.expand((B, n) + tuple(shape))
    zero = torch.zeros(B, n, dtype=x_lower.dtype, device=x_lower.device)
    return Coeffs(A, A, zero, zero)


def start_spec(C: Tensor) -> Coeffs:
    """Start at the logits from the spec ``C`` (B, S, K): the spec is never bounded via the logits."""
    zero = torch.zeros(C.shape[:2], dtype=C.dtype, device=C.device)
    return Coeffs(C, C, zero, zero)


def start_spec_linear(C: Tensor, weight: Tensor, bias: Tensor | None) -> Coeffs:
    """Start at the input of an elided last layer: ``C·W`` and bias ``C·b``."""
    A = torch.einsum("bsk,ki->bsi", C, weight)
    b = torch.zeros(C.shape[:2], dtype=C.dtype, device=C.device) if bias is None else torch.einsum("bsk,k->bs", C,
                                                                                                     bias)
    return Coeffs(A, A, b, b)


def lower_rows_only(c: Coeffs | patches.Patches) -> Coeffs | patches.Patches:
    """The same start with no upper rows: the upper pass then runs on zero rows and costs nothing
    (for callers that read only lower bounds: certification, certified training, branch and bound)."""
    return c._replace(uA=c.uA[:, :0], ub=c.ub[:, :0])


def unbounded_above(lower: Tensor) -> Tensor:
    """The upper bound of quantities whose upper pass was skipped (:func:`lower_rows_only`): ``+inf``."""
    return torch.full_like(lower, math.inf)


# -- drivers: run a generated backward walk over chunks / with optimised slopes -----------

@owns_result
def take_start(box: list) -> Coeffs | patches.Patches:
    """The start rows a caller hands over to a walk built with ``owned_start`` (:func:`_run_rows`): the only
    element of the list ``box``, taken out of it, so the walk holds the only reference to them and may form
    its first results in their buffers (:mod:`boundc.passes.graph.consume`)."""
    if not isinstance(box, list) or len(box) != 1:
        raise BoundcInternalError("a walk that owns its start takes it as a one-element list, "
                                  f"got {type(box).__name__}")
    return box.pop()


def _call_walk(walk: Callable, names: tuple[str, ...], args: dict, **extra) -> Interval:
    """Call a generated walk module with its placeholders filled by name."""
    return Interval(*walk(*[extra[n] if n in extra else args.get(n) for n in names]))


class Start(enum.Enum):
    """How the rows of a backward pass for an intermediate bound start.

    ``IDENTITY``: unit rows at the node (dense); ``LINEAR``: rows of a linear
    layer's weight at the layer's input (no identity); ``PATCHES``: unit
    windows at a feature map, run through the walk in patches form.
    """

    IDENTITY = "identity"
    LINEAR = "linear"
    PATCHES = "patches"


def relaxation_kinks(op: str, attrs: dict) -> tuple[float, ...] | None:
    """Break points of activation ``op`` with ``attrs`` (from the op table); ``None`` for a curved op
    or one without a relaxation record (every neuron matters)."""
    r = opdef(op).relaxation
    if r is None or r.kinks is None:
        return None
    return tuple(float(k) for k in r.kinks(**attrs))


def undecided(bounds: Interval, kinks: tuple[float, ...] | None) -> Tensor:
    """(B, n) mask of the neurons whose relaxation a tighter bound could change.

    ``kinks``: the break points of the piecewise-linear users of the node (a
    neuron with no break point strictly inside its interval is relaxed exactly);
    ``None`` (a curved user): every neuron.
    """
    lower, upper = bounds.lower.flatten(1), bounds.upper.flatten(1)
    if kinks is None:
        return torch.ones_like(lower, dtype=torch.bool)
    open_ = torch.zeros_like(lower, dtype=torch.bool)
    for k in kinks:
        open_ = open_ | ((lower < k) & (upper > k))
    return open_


def start_rows(x_lower: Tensor, shape: tuple[int, ...], idx: Tensor, start: Start, weight: Tensor | None,
                bias: Tensor | None, sign: Tensor | None = None):
    """Start state for the neurons ``idx`` (B, r) of a node: row ``k`` of sample ``b`` is neuron ``idx[b, k]``
    (times ``sign[b, k]`` = ±1 when given: a lower-only pass then bounds ``-x`` from below where it is -1)."""
    if start is Start.PATCHES:
        return patches.start_rows(x_lower, shape, idx, sign)
    B, k = idx.shape
    zero = torch.zeros(B, k, dtype=x_lower.dtype, device=x_lower.device)
    if start is Start.LINEAR:
        w, b = weight[idx], (zero if bias is None else bias[idx])
        if sign is not None:  # (w is a fresh gather: flipped in place when no gradient is recorded)
            s = sign.to(w.dtype)
            w = w * s.unsqueeze(2) if torch.is_grad_enabled() else w.mul_(s.unsqueeze(2))
            b = b * s
        return Coeffs(w, w, b, b)
    A = torch.zeros(B, k, math.prod(shape), dtype=x_lower.dtype, device=x_lower.device)
    A.scatter_(2, idx.unsqueeze(2), 1.0 if sign is None else sign.to(A.dtype).unsqueeze(2))
    A = A.reshape((B, k) + tuple(shape))
    return Coeffs(A, A, zero, zero)


class _Rows(NamedTuple):
    """Where the backward rows of one pass went: neuron ``order[b, k]`` of sample ``b`` (where ``valid``)."""

    order: Tensor
    valid: Tensor


def _pick(todo: Tensor) -> _Rows | None:
    """Rows for the ``todo`` (B, n) neurons of each sample, padded to the largest count (``None``: none)."""
    count = todo.sum(1)
    R = int(count.max()) if todo.shape[0] else 0
    if R == 0:
        return None
    order = todo.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :R]  # todo first
    return _Rows(order, torch.arange(R, device=order.device) < count.unsqueeze(1))


def _run_rows(walk: Callable, names: tuple[str, ...], args: dict, rows: _Rows, chunk: int, progress: str | None,
              start_of: Callable[[Tensor, Tensor | None], object], sign: Tensor | None = None) -> Interval:
    """The walk over ``rows`` in chunks of ``chunk`` rows: (B, R) bounds in ``rows.order``.  With ``sign`` (B, n)
    the pass is lower-only and row ``k`` bounds ``sign·x`` from below (its upper bound is empty)."""
    B, R = args["x_lower"].shape[0], int(rows.order.shape[1])
    lows, ups = [], []
    for s in tqdm(range(0, R, chunk), desc=progress, unit="chunk", disable=None if progress else True, leave=False):
        check_deadline()
        idx = rows.order[:, s:s + chunk]
        st = start_of(idx, None if sign is None else sign.gather(1, idx))
        box = [st if sign is None else lower_rows_only(st)]
        del st  # the walk takes the rows out of the box: it then holds the only reference (take_start)
        out = _call_walk(walk, names, args, start=box)
        lows.append(out.lower.expand(B, -1))
        ups.append(out.upper.expand(B, -1))
    return Interval(torch.cat(lows, 1), torch.cat(ups, 1))


def _put(base: Tensor, rows: _Rows, values: Tensor, keep: Callable[[Tensor, Tensor], Tensor] | None) -> Tensor:
    """``base`` with ``values`` written at the valid rows (combined with the old value by ``keep`` if given)."""
    old = base.gather(1, rows.order)
    if keep is not None:
        values = keep(values, old)
    return base.scatter(1, rows.order, torch.where(rows.valid, values, old))


def single_kink(kinks: tuple[float, ...] | None) -> float | None:
    """The break point of a node's users when they have exactly one (where one-sided passes apply)."""
    return kinks[0] if kinks is not None and len(kinks) == 1 else None


def box_centre(x_lower: Tensor, x_upper: Tensor) -> Tensor:
    """The centre of the input box (where the one-sided passes look which side of a kink a neuron is on)."""
    return (x_lower + x_upper) / 2


def first_side(point: Tensor, kink: float) -> Tensor:
    """Which bound of each neuron to compute first (int8, +1: the lower, -1: the upper): the side of
    ``kink`` the neuron's value at some ``point`` of its range is on (a stable neuron's every value is on
    its side).  Only the cost depends on the choice, never the bounds."""
    return torch.where(point >= kink, 1, -1).to(torch.int8)


def backward_bounds(walk: Callable, names: tuple[str, ...], args: dict, *, shape: tuple[int, ...], start: Start,
                    interval: Interval, kinks: tuple[float, ...] | None, row_elems: int, budget: int,
                    intersect: bool = False, centre: Tensor | None = None,
                    weight: Tensor | None = None, bias: Tensor | None = None,
                    progress: str | None = None) -> Interval:
    """Bounds of a node's neurons by backward passes over chunks of rows, only where they can matter.

    ``interval`` is a sound bound already known for the node (IBP from the
    tightened bounds before it); each sample gets rows only for its own
    :func:`undecided` neurons (padded to the largest count with neurons that
    keep their interval), the others keep it.  Computed bounds replace it (or are
    intersected with it when ``intersect``).  ``walk`` is the generated
    backward pass from the node (or, for :attr:`Start.LINEAR`, from the linear
    layer's input); a chunk holds at most ``budget`` coefficient entries of
    ``row_elems`` each.  ``progress``: the label of a progress bar over the chunks (``None``: none).

    With the node's value at the box ``centre`` (the model's own value there; given for a node
    whose users have a single kink ``k``, e.g. a ReLU's 0, see :func:`single_kink`): a neuron's
    relaxation only needs the side of ``k`` it is on once one bound shows it is stable.  A first
    lower-only pass bounds the side that would show it — ``x ≥ k`` where the centre value is at or
    above ``k``, else ``x ≤ k`` (a stable neuron's every value is on its side) — and a second pass
    bounds the other side only for the neurons still undecided.  A stable neuron keeps its interval bound on the side not
    computed; its relaxation, and so the bounds built on it, are unchanged.  Each pass carries
    lower rows only: about half the work of a two-sided pass.
    """
    x_lower = args["x_lower"]
    B, n = x_lower.shape[0], math.prod(shape)
    lower, upper = interval.lower.reshape(B, n), interval.upper.reshape(B, n)  # (an empty batch has no -1)
    todo = undecided(interval, kinks)

    def start_of(idx: Tensor, sign: Tensor | None):
        return start_rows(x_lower, shape, idx, start, weight, bias, sign)

    chunk = max(1, budget // max(1, B * row_elems))
    if torch.jit.is_tracing():  # static shapes for export: a row for every neuron, masked per sample
        order = torch.ones_like(todo, dtype=torch.long).cumsum(1) - 1  # 0..n-1 per sample, computed at run time
        rows, chunk = _Rows(order, todo), max(1, budget // max(1, row_elems))
    elif centre is not None and single_kink(kinks) is not None:
        k = single_kink(kinks)
        sign = first_side(centre.reshape(B, n), k)
        for side in (sign, -sign):
            rows = _pick(todo)
            if rows is None:
                break
            got = _run_rows(walk, names, args, rows, chunk, progress, start_of, side).lower
            up = side.gather(1, rows.order) < 0
            below = _Rows(rows.order, rows.valid & ~up)
            above = _Rows(rows.order, rows.valid & up)
            lower = _put(lower, below, got, torch.maximum if intersect else None)
            upper = _put(upper, above, -got, torch.minimum if intersect else None)
            todo = todo & (lower < k) & (upper > k)
        return Interval(lower.reshape((B,) + tuple(shape)), upper.reshape((B,) + tuple(shape)))
    else:
        rows = _pick(todo)
        if rows is None:
            return interval
    out = _run_rows(walk, names, args, rows, chunk, progress, start_of)
    lower = _put(lower, rows, out.lower, torch.maximum if intersect else None)
    upper = _put(upper, rows, out.upper, torch.minimum if intersect else None)
    return Interval(lower.reshape((B,) + tuple(shape)), upper.reshape((B,) + tuple(shape)))


def alpha_optimize(walk: Callable, names: tuple[str, ...], args: dict, start: Coeffs,
                   alphas: dict[str, tuple[str, dict, Interval]], *, iterations: int, lr: float,
                   progress: bool = False) -> Interval:
    """α-CROWN: optimise the free parameters of every relaxation on the pass (per spec row) with Adam.

    ``alphas`` maps each α placeholder of ``walk`` to ``(op, attrs, input bounds)`` of its activation;
    the op table's :class:`~.relaxation.AlphaSpec` gives their number and CROWN's choice, from which
    they start (ReLU-family slopes, tangent points of smooth activations), and its ``project`` (when
    it has one) keeps them in their sound range after each step (the lines are sound for any value
    anyway).  The best parameters seen per bounded quantity are kept, so the result is never looser
    than CROWN.  The final bound is recomputed with the (detached) best parameters and the live
    inputs, so gradients reach the model's parameters.
    """
    rows = (start.lA.shape[1], start.uA.shape[1])  # the upper pass may have none (lower_rows_only)
    init, project, lr_scale = {}, {}, {}
    for name, (op, attrs, b) in alphas.items():
        spec = opdef(op).relaxation.alpha
        lr_scale[name] = spec.lr_scale
        a = spec.init(b.lower.detach(), b.upper.detach(), **attrs).unsqueeze(2)  # (k, B, 1, *shape)
        init[name] = tuple(a.expand(a.shape[:2] + (S,) + a.shape[3:]) for S in rows)
        fn = getattr(spec, "project", None)
        if fn is not None:
            lo, up = b.lower.detach().unsqueeze(1), b.upper.detach().unsqueeze(1)
            project[name] = (fn, lo, up, attrs)
    det = {k: (Interval(v.lower.detach(), v.upper.detach()) if isinstance(v, Interval) else
               (v.detach() if isinstance(v, Tensor) else v)) for k, v in args.items()}
    dstart = Coeffs(*(t.detach() for t in start))
    best_l = best_u = None
    best = {k: (vl.clone(), vu.clone()) for k, (vl, vu) in init.items()}
    with torch.enable_grad():
        params = {k: (vl.clone().requires_grad_(True), vu.clone().requires_grad_(True)) for k, (vl, vu) in init.items()}
        groups = [{"params": list(pair), "lr": lr * lr_scale[k]} for k, pair in params.items()]
        opt = torch.optim.Adam(groups, lr=lr, fused=True) if params else None
        for it in tqdm(range(iterations + 1), desc="alpha-CROWN", unit="step", disable=None if progress else True,
                       leave=False):
            out = _call_walk(walk, names, det, start=dstart, **params)
            lo, up = out.lower.detach(), out.upper.detach()
            if best_l is None:
                best_l, best_u = lo, up
                better_l, better_u = torch.ones_like(lo, dtype=torch.bool), torch.ones_like(up, dtype=torch.bool)
            else:
                better_l, better_u = lo > best_l, up < best_u
                best_l, best_u = torch.maximum(best_l, lo), torch.minimum(best_u, up)
            for k, (pl, pu) in params.items():
                ml = better_l.reshape((1,) + better_l.shape + (1,) * (pl.dim() - 3))
                mu = better_u.reshape((1,) + better_u.shape + (1,) * (pu.dim() - 3))
                best[k] = (torch.where(ml, pl.detach(), best[k][0]), torch.where(mu, pu.detach(), best[k][1]))
            if it == iterations or opt is None:
                break
            if _deadline and time.monotonic() > min(_deadline):
                break  # the best parameters so far give a sound bound; stop optimising
            loss = out.upper.sum() - out.lower.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for k, (fn, lo_b, up_b, attrs) in project.items():
                    for p in params[k]:
                        p.copy_(fn(p, lo_b, up_b, **attrs))
    return _call_walk(walk, names, args, start=start, **best)


def unflatten_output(t: Tensor, shape: tuple[int, ...]) -> Tensor:
    """(B, S) bounds of an output of per-sample ``shape`` back to (B, *shape)."""
    return t.reshape((t.shape[0],) + tuple(shape))


__all__ = ["alpha_optimize", "backward_bounds", "box_centre", "check_deadline", "deadline", "first_side",
           "lower_rows_only", "single_kink", "start_identity", "start_rows", "start_spec",
           "start_spec_linear", "unbounded_above", "unflatten_output"]
