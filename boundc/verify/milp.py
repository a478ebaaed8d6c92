"""Complete verification of piecewise-linear networks by mixed-integer linear programming.

The MILP of Tjeng et al. (the verifier Gowal et al. report their verified errors
with): every value of the IR graph is a vector of variables; affine ops are
equality constraints (their matrices are Jacobians taken once with ``torch.func``,
never written by hand); a ReLU whose input bounds ``[l, u]`` straddle 0 gets a
binary ``δ`` and

    a ≥ 0,  a ≥ z,  a ≤ z − l·(1 − δ),  a ≤ u·δ

while stable ReLUs are fixed (``a = z`` or ``a = 0``).  The big-M constants
``l, u`` are boundc's own bounds (the intersection of several methods).  HiGHS
(through :func:`scipy.optimize.milp`) then minimises ``c·y`` for one
specification row ``c`` under the extra cut ``c·y ≤ τ`` (a zero objective
leaves the dual simplex fully degenerate; minimising is much faster):

* infeasible → the row is **verified** (``min c·y > τ > 0``);
* a solver point whose network output really has ``c·y < 0`` → **falsified**,
  with that counterexample (always re-checked on the network itself);
* a time-out, or a point the network does not confirm → **unknown**.

Only small networks are practical (the Jacobians are formed densely, then made
sparse); the encoder (:class:`MilpEncoding`, a walk of
:class:`boundc.interpreter.Interpreter`) refuses ops that are not piecewise
linear, naming the node.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from boundc.errors import BoundcError
from boundc.interpreter import Interpreter
from boundc.ir import Graph, Node
from boundc.passes.graph.analysis import evaluate
from boundc.passes.rules.interval import Interval
from boundc.passes.rules.ops import has
from boundc.passes.rules.registry import get_rule
from boundc.verify.cascade import Verdict

#: Relative widening of the given node bounds before they become big-M constants.
BOUND_SLACK = 1e-6


@dataclass(frozen=True)
class MilpOptions:
    """How the MILP is built and solved.

    ``bound_methods``: boundc methods whose intermediate bounds are intersected
    for the big-M constants (tighter bounds, fewer binaries).
    ``time_limit``: seconds HiGHS may spend on one specification row.
    ``tolerance``: a row counts as verified only if ``c·y ≤ tolerance`` is
    infeasible, a margin for solver and float32 rounding.
    ``max_jacobian``: refuse affine ops whose dense Jacobian has more entries.
    ``disp``: show HiGHS's log.
    """

    bound_methods: tuple[str, ...] = ("crown-ibp", "crown")
    time_limit: float = 60.0
    tolerance: float = 1e-3
    max_jacobian: int = 50_000_000
    disp: bool = False


@dataclass
class RowResult:
    """Outcome for one specification row of one sample."""

    status: Verdict
    seconds: float
    binaries: int
    counterexample: Tensor | None = None
    #: ``min c·y`` over the box when HiGHS proved it optimal (and it is ≤ τ), else None.
    minimum: float | None = None
    #: The input of the solver's best point (clipped to the box), when it has one.
    point: Tensor | None = None


@dataclass
class _Layout:
    """Variable offsets of every perturbed node, in graph order."""

    offset: dict[str, int] = field(default_factory=dict)
    size: dict[str, int] = field(default_factory=dict)
    total: int = 0

    def add(self, name: str, n: int) -> None:
        self.offset[name], self.size[name] = self.total, n
        self.total += n

    def slice(self, name: str) -> slice:
        return slice(self.offset[name], self.offset[name] + self.size[name])

    def indices(self, name: str) -> np.ndarray:
        return np.arange(self.offset[name], self.offset[name] + self.size[name])


def _numel(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[1:], dtype=np.int64))


class MilpEncoding(Interpreter):
    """The MILP encoding as a walk of the graph (in float64, evaluated at the input 0).

    Each perturbed node is classified by the op table's traits: the ``input`` and every encodable node
    get one variable per entry (:class:`_Layout`, in graph order); an ``affine`` op (one that does not
    read the specification) is listed for equality constraints (its Jacobians at the walk's values); a
    ``piecewise_linear`` op is encoded only if it is a ReLU: the big-M constraints and the one binary per
    unstable neuron of this encoding are ReLU's (other piecewise-linear activations are refused, as are
    ops that are not piecewise linear).  ``problems`` lists every node that cannot be encoded.
    """

    def __init__(self, g: Graph) -> None:
        x = torch.zeros((1, *g.input.shape[1:]), dtype=torch.float64)
        super().__init__(_double(g), "eval", {"input": x, "clean_input": x})
        self.layout = _Layout()
        self.relus: list[str] = []   # ReLUs (binaries for their unstable neurons)
        self.affine: list[str] = []  # affine nodes (equality constraints)
        self.problems: list[str] = []

    def step(self, node: Node) -> Any:
        """Encode a perturbed node, then evaluate it (not any more once a node cannot be encoded)."""
        if node.perturbed and not has(node.op, "source"):
            self.encode(node)
            if self.problems:
                self.values[node.name] = None
                return None
        return super().step(node)

    def encode(self, n: Node) -> None:
        """Give ``n`` its variables and its kind of constraints, or record why it cannot be encoded."""
        if has(n.op, "affine") and not has(n.op, "reads_spec"):
            pert = [i for i in n.inputs if i is not None and self.g[i].perturbed]
            if has(n.op, "bilinear") and len(pert) != 1:
                self.problems.append(f"{n.where()}: a product of two perturbed values is not linear")
                return
            self.affine.append(n.name)
        elif has(n.op, "piecewise_linear") and n.op == "relu":  # the big-M constraints of `exclude` are ReLU's
            self.relus.append(n.name)
        elif n.op != "input":
            self.problems.append(f"{n.where()}: op {n.op!r} has no MILP encoding (ReLU networks only)")
            return
        self.layout.add(n.name, _numel(n.shape))


class MilpVerifier:
    """The MILP encoding of one canonical IR graph (``BoundModule.graph``); affine blocks are built once.

    The Jacobians are a snapshot of the parameters at construction: build a new
    verifier after the model changes.  ``verify_row(x_lower, x_upper, c, bounds)``
    decides one specification row for one sample (batch of 1), ``exclude`` a
    conjunction ``A·y ≤ b``; ``bounds`` are per-node intervals over the box
    (``boundc.report.intersect_node_bounds``).
    """

    def __init__(self, graph: Graph, options: MilpOptions | None = None) -> None:
        try:
            import scipy.optimize  # noqa: F401
            import scipy.sparse  # noqa: F401
        except ImportError as err:  # pragma: no cover - scipy is a dependency
            raise BoundcError(f"complete verification needs scipy (HiGHS): {err}") from err
        self.graph = graph
        self.options = options or MilpOptions()
        self.layout = _Layout()
        self.relus: list[Node] = []
        self._build()

    # -- encoding (once per graph) -----------------------------------------------------------
    def _build(self) -> None:
        g = self.graph
        enc = MilpEncoding(g)
        enc.run()
        if enc.problems:
            raise BoundcError("complete verification cannot encode this network:\n  - " + "\n  - ".join(enc.problems))
        self.layout, self.relus = enc.layout, [g[r] for r in enc.relus]
        g_out = g.output
        if g_out.name not in self.layout.offset:
            raise BoundcError(f"{g_out.where()}: the output does not depend on the input")
        #: Every affine node as ``out − Σ_i J_i·in_i = b``: one sparse matrix over all variables, and ``b``.
        self.equalities, self.equality_rhs = self._affine_equalities(enc)

    def _affine_equalities(self, enc: MilpEncoding) -> tuple[Any, np.ndarray]:
        """The equality block of every affine node, from the Jacobians at the walk's evaluation point."""
        import scipy.sparse as sp

        g, lay, values = enc.g, self.layout, enc.values
        mats, rhs = [], []
        for name in enc.affine:
            n = g[name]
            pert = [i for i in n.inputs if i is not None and g[i].perturbed]
            out_n = lay.size[name]
            jacs = []
            for p in pert:
                in_n = lay.size[p]
                if in_n * out_n > self.options.max_jacobian:
                    raise BoundcError(f"{n.where()}: a {out_n}×{in_n} Jacobian is too large for the MILP "
                                      f"(max_jacobian={self.options.max_jacobian})")
                jacs.append(sp.csr_matrix(_jacobian(n, p, values)))
            bias = values[name].reshape(-1).numpy() - sum(
                (J @ values[p].reshape(-1).numpy() for J, p in zip(jacs, pert)), np.zeros(out_n))
            blocks = [(name, sp.identity(out_n, format="coo"))] + [(p, -J.tocoo()) for p, J in zip(pert, jacs)]
            r = np.concatenate([M.row for _, M in blocks])
            c = np.concatenate([M.col + lay.offset[p] for p, M in blocks])
            v = np.concatenate([M.data for _, M in blocks])
            mats.append(sp.csr_matrix((v, (r, c)), shape=(out_n, lay.total)))
            rhs.append(bias)
        return sp.vstack(mats, format="csr"), np.concatenate(rhs)

    # -- one problem -----------------------------------------------------------------------
    def verify_row(self, x_lower: Tensor, x_upper: Tensor, c: Tensor, bounds: dict[str, Interval]) -> RowResult:
        """Decide ``c·y > 0`` over the box for one sample (``x_lower`` of batch 1).

        ``bounds`` maps node names to intervals (batch 1) that hold over the box;
        every ReLU input needs finite ones.  ``minimum`` is ``min c·y`` when solved.
        """
        zero = torch.zeros(1, dtype=torch.float64)
        return self.exclude(x_lower, x_upper, c.reshape(1, -1), zero, bounds)

    def exclude(self, x_lower: Tensor, x_upper: Tensor, A: Tensor, b: Tensor, bounds: dict[str, Interval],
                time_limit: float | None = None) -> RowResult:
        """Show that no input of the box has ``A·y ≤ b`` (all rows): ``verified`` when excluded,
        ``falsified`` with a point the network confirms, else ``unknown``.

        Solved as ``min t`` subject to ``A·y − b ≤ t`` and ``t ≤ τ``; ``minimum`` is
        the optimal ``t`` (``max_i (A·y − b)_i`` at the best input) when proved.
        """
        import scipy.optimize as so
        import scipy.sparse as sp

        t0 = time.perf_counter()
        lay, g = self.layout, self.graph
        nv = lay.total
        lb, ub = np.full(nv, -np.inf), np.full(nv, np.inf)
        xs = lay.slice(g.input.name)
        lb[xs] = x_lower.detach().double().reshape(-1).numpy()
        ub[xs] = x_upper.detach().double().reshape(-1).numpy()
        for name, box in bounds.items():  # widened by a rounding slack: bounds may come from float32
            if name in lay.offset and name != g.input.name:
                s = lay.slice(name)
                lo_b, hi_b = box.lower.detach().double().reshape(-1).numpy(), box.upper.detach().double().reshape(-1).numpy()
                lb[s] = np.maximum(lb[s], lo_b - BOUND_SLACK * (1 + np.abs(lo_b)))
                ub[s] = np.minimum(ub[s], hi_b + BOUND_SLACK * (1 + np.abs(hi_b)))
        eq, eq_rhs = self.equalities, self.equality_rhs
        lo, hi = [eq_rhs], [eq_rhs]
        terms: list[tuple[list, float | np.ndarray, float | np.ndarray]] = []
        n_bin = 0
        for r in self.relus:
            z_idx, a_idx = lay.indices(r.inputs[0]), lay.indices(r.name)
            lz, uz = lb[z_idx], ub[z_idx]
            if not (np.isfinite(lz).all() and np.isfinite(uz).all()):
                raise BoundcError(f"{r.where()}: no finite bounds on its input for the MILP big-M")
            lb[a_idx], ub[a_idx] = np.maximum(lz, 0), np.maximum(uz, 0)
            k = np.flatnonzero(lz >= 0)                           # active: a − z = 0
            terms.append(([(a_idx[k], 1.0), (z_idx[k], -1.0)], 0.0, 0.0))
            k = np.flatnonzero((lz < 0) & (uz > 0))               # unstable: a binary each
            d_idx = nv + n_bin + np.arange(k.size)
            n_bin += k.size
            l, u = lz[k], uz[k]
            terms.append(([(a_idx[k], 1.0), (z_idx[k], -1.0)], 0.0, np.inf))                # a ≥ z
            terms.append(([(a_idx[k], 1.0), (z_idx[k], -1.0), (d_idx, -l)], -np.inf, -l))   # a ≤ z − l(1 − δ)
            terms.append(([(a_idx[k], 1.0), (d_idx, -u)], -np.inf, 0.0))                    # a ≤ u·δ
        ncol = nv + n_bin + 1  # continuous variables, binaries, then the objective variable t
        mats = [sp.hstack([eq, sp.csr_matrix((eq.shape[0], n_bin + 1))], format="csr")]
        for cols, t_lo, t_hi in terms:
            m = cols[0][0].size
            if m:
                mats.append(_rows(m, ncol, cols))
                lo.append(np.broadcast_to(np.asarray(t_lo, dtype=np.float64), (m,)))
                hi.append(np.broadcast_to(np.asarray(t_hi, dtype=np.float64), (m,)))
        # the specification: A·y − t ≤ b with the objective variable t ≤ τ as the last column
        A_np, b_np = A.detach().double().reshape(A.shape[0], -1).numpy(), b.detach().double().reshape(-1).numpy()
        spec = np.zeros((A_np.shape[0], ncol))
        spec[:, lay.slice(g.output.name)] = A_np
        spec[:, -1] = -1.0
        mats.append(sp.csr_matrix(spec))
        lo.append(np.full(A_np.shape[0], -np.inf))
        hi.append(b_np)
        cost = np.zeros(ncol)
        cost[-1] = 1.0
        limit = self.options.time_limit if time_limit is None else max(time_limit, 0.1)
        with quiet_stdout(not self.options.disp):
            res = so.milp(cost, integrality=np.concatenate([np.zeros(nv), np.ones(n_bin), [0]]),
                          bounds=so.Bounds(np.concatenate([lb, np.zeros(n_bin), [-np.inf]]),
                                           np.concatenate([ub, np.ones(n_bin), [self.options.tolerance]])),
                          constraints=so.LinearConstraint(sp.vstack(mats, format="csr"), np.concatenate(lo),
                                                          np.concatenate(hi)),
                          options={"time_limit": limit, "disp": self.options.disp})
        seconds = time.perf_counter() - t0
        if res.status == 2:  # infeasible: no input of the box reaches A·y ≤ b + τ
            return RowResult(Verdict.VERIFIED, seconds, n_bin)
        minimum = float(res.fun) if res.status == 0 else None
        if res.x is not None:
            x = torch.from_numpy(res.x[xs]).to(x_lower.dtype).reshape(x_lower.shape)
            x = torch.minimum(torch.maximum(x, x_lower), x_upper)
            with torch.no_grad():
                y = evaluate(g, x.to(g.float_dtype(x.dtype)))[g.output.name].reshape(-1).double()
            if bool((torch.from_numpy(A_np) @ y <= torch.from_numpy(b_np)).all()):
                return RowResult(Verdict.FALSIFIED, seconds, n_bin, x, minimum, x)
            return RowResult(Verdict.UNKNOWN, seconds, n_bin, None, minimum, x)
        return RowResult(Verdict.UNKNOWN, seconds, n_bin)

    def verify_spec(self, x_lower: Tensor, x_upper: Tensor, C: Tensor, bounds: dict[str, Interval],
                    known_lower: Tensor | None = None) -> tuple[Verdict, list[RowResult]]:
        """Decide every row of ``C`` (S, K) for one sample: verified if all rows are.

        Rows whose ``known_lower`` bound is already > 0 are skipped; the others are
        tried from the lowest bound up, stopping at the first counterexample.
        """
        order = range(C.shape[0]) if known_lower is None else known_lower.reshape(-1).argsort().tolist()
        results = []
        for r in order:
            if known_lower is not None and float(known_lower.reshape(-1)[r]) > 0:
                continue
            res = self.verify_row(x_lower, x_upper, C[r], bounds)
            results.append(res)
            if res.status is Verdict.FALSIFIED:
                return Verdict.FALSIFIED, results
        verified = all(r.status is Verdict.VERIFIED for r in results)
        return (Verdict.VERIFIED if verified else Verdict.UNKNOWN), results


def _rows(m: int, ncol: int, terms: list[tuple[np.ndarray, np.ndarray | float]]):
    """An ``m``-row sparse matrix with, in row i, coefficient ``v[i]`` at column ``cols[i]`` per term."""
    import scipy.sparse as sp

    r = np.concatenate([np.arange(m)] * len(terms))
    c = np.concatenate([cols for cols, _ in terms])
    v = np.concatenate([np.broadcast_to(np.asarray(val, dtype=np.float64), (m,)) for _, val in terms])
    return sp.csr_matrix((v, (r, c)), shape=(m, ncol))


@contextmanager
def quiet_stdout(on: bool):
    """Silence C-level stdout (HiGHS prints solver diagnostics there even with ``disp=False``)."""
    if not on:
        yield
        return
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def _jacobian(n: Node, wrt: str, values: dict[str, Tensor]) -> np.ndarray:
    """Dense Jacobian (out_numel × in_numel) of node ``n``'s eval rule in its input ``wrt``."""
    fn = get_rule(n.op, "eval")

    def f(v: Tensor) -> Tensor:
        args = [v.reshape(values[i].shape) if i == wrt else (values[i] if i is not None else None) for i in n.inputs]
        return fn(*args, **n.attrs).reshape(-1)

    return torch.func.jacrev(f)(values[wrt].reshape(-1)).numpy()


def _double(g: Graph) -> Graph:
    """A copy of ``g`` whose tensors are float64 (for exact Jacobians)."""
    h = g.copy()
    h.tensors = {k: (v.detach().double() if v.is_floating_point() else v) for k, v in g.tensors.items()}
    return h
