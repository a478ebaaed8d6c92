"""Lower bounds by tiles for networks with one hidden ReLU layer of convolution type.

When a network is ``y = L·relu(z) + h`` with ``z = W·x + b`` (one ReLU layer, everything else
affine), one specification row is a sum over the hidden neurons,

    c·y(x) = Σ_k g_k · relu(z_k(x)) + c·h,          g = Lᵀc,

and the minimum of a sum over a box is at least the sum of the minima of its parts.  Grouping
the neurons of a convolution's output into spatial tiles (all channels of a T×T window), each
part depends only on the few inputs under its tile, so its minimum over the box is a small MILP
that HiGHS solves exactly: binaries only for unstable neurons with ``g_k < 0`` (where ``g_k > 0``
the LP relaxation is exact, since minimising pushes ``relu(z)`` down onto ``max(z, 0)``).  The
sum is a sound lower bound for any tiling; it is exact inside each tile and only decouples the
inputs that neighbouring tiles share, which on shallow convolutional networks (VNN-COMP's
verivital ``Convnet_avgpool``: 23k ReLUs, 5k unstable) is far tighter than the LP relaxation
α-CROWN and branch and bound work with.  :func:`tile_bound` doubles the tile until the bound is
positive or the time is up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from boundc.interpreter import Interpreter
from boundc.ir import Graph
from boundc.passes.graph.planning import ancestors
from boundc.verify.milp import BOUND_SLACK, MilpEncoding, MilpOptions, quiet_stdout

#: Entries the dense Jacobians taken while building a :class:`OneLayerForm` may have.
MAX_DENSE = 50_000_000


#: Seconds each tile's MILP gets in the first round of :meth:`OneLayerForm.row_minimum` (4× more per round).
FIRST_LIMIT = 2.0

#: Side of the first tiles (neuron positions): on verivital's Convnet_avgpool (4×4 pooling) tiles of 8
#: leave some rows below 0 that tiles of 12 prove, each tile's MILP still solved in seconds.
FIRST_TILE = 12


@dataclass
class OneLayerForm:
    """``y = L·relu(z) + h``, ``z = W·x + b``: a network with one hidden ReLU layer of shape (C, H, W).

    ``W`` is sparse (``scipy.sparse.csr_matrix``, neurons × inputs), ``b`` the neurons' offsets,
    ``L`` (outputs × neurons) and ``h`` the affine map after the ReLU, all float64.
    """

    W: object
    b: np.ndarray
    L: np.ndarray
    h: np.ndarray
    shape: tuple[int, int, int]

    @classmethod
    def of(cls, g: Graph) -> OneLayerForm | None:
        """The form of ``g`` (float32 or float64 tensors), or ``None`` when ``g`` is not of it."""
        import scipy.sparse as sp

        enc = MilpEncoding(g)  # classifies every perturbed node by the op table, as the MILP does
        enc.run()
        if enc.problems or len(enc.relus) != 1:
            return None
        relu = g[enc.relus[0]]
        z_name = relu.inputs[0]
        shape = tuple(g[z_name].shape[1:])
        n_out = int(np.prod(g.output.shape[1:])) if g.output.shape else 0
        n_in, n_hidden = int(np.prod(g.input.shape[1:])), int(np.prod(shape))
        if len(shape) != 3 or not n_out or max(n_out, n_in) * n_hidden > MAX_DENSE:
            return None
        before = set(ancestors(g, z_name))  # perturbed ones, z included
        after = [n for n in g if n.perturbed and n.name not in before and n.name != relu.name]
        # after the ReLU, perturbed values may depend on the input only through it
        if any(i in before for n in after for i in n.inputs if i is not None and g[i].perturbed):
            return None
        g64 = enc.g
        x0 = torch.zeros((1, *g.input.shape[1:]), dtype=torch.float64)

        def pre(x: Tensor) -> Tensor:
            return Interpreter(g64, "eval", {"input": x, "clean_input": x}).run()[z_name].reshape(-1)

        def post(a: Tensor) -> Tensor:
            walk = Interpreter(g64, "eval", {"input": x0, "clean_input": x0})
            walk.values[relu.name] = a.reshape((1, *shape))
            return walk.run()[g.output.name].reshape(-1)

        with torch.no_grad():
            b = pre(x0)
            h = post(torch.zeros(b.numel(), dtype=torch.float64))
        W = torch.func.jacfwd(pre)(x0).reshape(b.numel(), -1)
        L = torch.func.jacrev(post)(torch.zeros(b.numel(), dtype=torch.float64))
        return cls(sp.csr_matrix(W.numpy()), b.numpy(), L.numpy(), h.numpy(), shape)

    def row_minimum(self, x_lower: np.ndarray, x_upper: np.ndarray, c: np.ndarray, tile: int,
                    deadline: float, options: MilpOptions, target: float | None = None) -> float:
        """A lower bound on ``min c·y`` over the box: the sum of the ``tile``×``tile`` tiles' minima.

        Each tile's MILP gets :data:`FIRST_LIMIT` seconds, then four times more per round, the tiles
        with the widest gap between HiGHS's dual bound and its best point first, until the sum of the
        dual bounds (the returned bound) exceeds ``target``, or the sum of the best points (above this
        tiling's bound) is at most ``target`` so that no time can make it exceed it, or every tile is
        solved, or the deadline (``-inf`` while some tile has no bound yet).
        """
        g = self.L.T @ c
        const = float(c @ self.h)
        C, H, Wd = self.shape
        idx = np.arange(C * H * Wd).reshape(C, H, Wd)
        tiles = [idx[:, i:i + tile, j:j + tile].reshape(-1) for i in range(0, H, tile) for j in range(0, Wd, tile)]
        tiles = [k[g[k] != 0] for k in tiles]
        tiles = [k for k in tiles if k.size]
        dual, primal = np.full(len(tiles), -np.inf), np.full(len(tiles), np.inf)
        solved = np.zeros(len(tiles), dtype=bool)
        limit = FIRST_LIMIT
        while True:
            for t in np.argsort(dual - primal):  # widest gap first (unsolved tiles: infinite gap)
                left = deadline - time.monotonic()
                if left <= 0 or solved[t]:
                    continue
                lo_t, hi_t, solved[t] = self._tile_minimum(tiles[t], g[tiles[t]], x_lower, x_upper,
                                                           min(limit, left), options)
                dual[t], primal[t] = max(dual[t], lo_t), min(primal[t], hi_t)
            bound, best = const + dual.sum(), const + primal.sum()
            settled = target is not None and (bound > target or best <= target)
            if settled or solved.all() or time.monotonic() >= deadline:
                return bound
            limit *= 4

    def _tile_minimum(self, k: np.ndarray, gk: np.ndarray, x_lower: np.ndarray, x_upper: np.ndarray,
                      time_limit: float, options: MilpOptions) -> tuple[float, float, bool]:
        """``min Σ gk·relu(z_k)`` over the box, as a MILP over the inputs the neurons ``k`` read:
        ``(lower, upper, solved)``, HiGHS's dual bound, its best point's value (``±inf`` when it has
        none) and whether it finished (within its default relative gap)."""
        import scipy.optimize as so
        import scipy.sparse as sp

        Wk = self.W[k]
        cols = np.unique(Wk.indices)
        Wk = Wk[:, cols].toarray()
        xl, xu = x_lower[cols], x_upper[cols]
        bk = self.b[k]
        zl = np.minimum(Wk * xl, Wk * xu).sum(1) + bk
        zu = np.maximum(Wk * xl, Wk * xu).sum(1) + bk
        zl, zu = zl - BOUND_SLACK * (1 + np.abs(zl)), zu + BOUND_SLACK * (1 + np.abs(zu))
        const = 0.0
        cost_x = np.zeros(cols.size)
        active = zl >= 0  # relu(z) = z: a linear term
        cost_x += gk[active] @ Wk[active]
        const += float(gk[active] @ bk[active])
        u = np.flatnonzero((zl < 0) & (zu > 0))  # unstable: a variable a ≥ max(z, 0), capped where gk < 0
        neg = u[gk[u] < 0]
        nx, na, nb = cols.size, u.size, neg.size
        ncol = nx + na + nb
        a_of = {int(n): nx + t for t, n in enumerate(u)}
        rows, lo, hi = [], [], []

        def row(entries: list[tuple[int | np.ndarray, np.ndarray | float]], lower: float, upper: float) -> None:
            r = np.zeros(ncol)
            for at, v in entries:
                r[at] += v
            rows.append(r)
            lo.append(lower)
            hi.append(upper)

        for n in u:  # a ≥ z
            row([(np.arange(nx), Wk[n]), (a_of[int(n)], -1.0)], -np.inf, -bk[n])
        for t, n in enumerate(neg):  # a ≤ z − l(1 − δ), a ≤ u·δ
            d = nx + na + t
            row([(a_of[int(n)], 1.0), (np.arange(nx), -Wk[n]), (d, -zl[n])], -np.inf, bk[n] - zl[n])
            row([(a_of[int(n)], 1.0), (d, -zu[n])], -np.inf, 0.0)
        cost = np.concatenate([cost_x, gk[u], np.zeros(nb)])
        bounds = so.Bounds(np.concatenate([xl, np.zeros(na), np.zeros(nb)]),
                           np.concatenate([xu, np.maximum(zu[u], 0), np.ones(nb)]))
        constraints = so.LinearConstraint(sp.csr_matrix(np.array(rows)), lo, hi) if rows else ()
        with quiet_stdout(not options.disp):
            res = so.milp(cost, integrality=np.concatenate([np.zeros(nx + na), np.ones(nb)]), bounds=bounds,
                          constraints=constraints, options={"time_limit": max(time_limit, 0.1), "disp": options.disp})
        found = float(res.fun) if res.x is not None and res.fun is not None else np.inf
        dual = getattr(res, "mip_dual_bound", None)
        dual = -np.inf if dual is None or not np.isfinite(dual) else min(float(dual), found)
        return const + dual, const + found, res.status == 0


def tile_bound(form: OneLayerForm, x_lower: Tensor, x_upper: Tensor, c: Tensor, d: float, deadline: float,
               options: MilpOptions | None = None, first_tile: int = FIRST_TILE) -> tuple[float, int]:
    """The best tiled lower bound on ``min c·y − d`` over the box within the deadline: tiles of
    ``first_tile``, doubled while the bound is not above ``options.tolerance``.  Returns
    ``(bound, tile)``; the bound is ``-inf`` when no tiling finished in time."""
    options = options or MilpOptions()
    xl = x_lower.detach().double().reshape(-1).numpy()
    xu = x_upper.detach().double().reshape(-1).numpy()
    cn = c.detach().double().reshape(-1).numpy()
    best, tile = -np.inf, first_tile
    while time.monotonic() < deadline:
        best = max(best, form.row_minimum(xl, xu, cn, tile, deadline, options, target=d + options.tolerance) - d)
        if best > options.tolerance or tile >= max(form.shape[1:]):
            return best, tile
        tile *= 2
    return best, tile
