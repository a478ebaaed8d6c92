"""Per-node bound report of a compiled bound network (widths, unstable ReLUs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.fx as fx
from torch import Tensor

from boundc.passes.rules.engine import relaxation_kinks
from boundc.passes.rules.interval import Interval

if TYPE_CHECKING:
    from boundc.bound_module import BoundModule


class _Recorder(fx.Interpreter):
    """Runs a generated bound network and keeps every intermediate Interval by fx node name."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.seen: dict[str, Interval] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if isinstance(out, Interval) and isinstance(out.lower, Tensor):
            self.seen[n.meta.get("boundc_bounds", n.name)] = out
        return out


def node_bounds(bm: BoundModule, x_lower: Tensor, x_upper: Tensor) -> dict[str, Interval]:
    """Concrete bounds of every IR node the method bounded (intermediate and output), keyed by IR node name."""
    rec = _Recorder(bm.bound_network())
    x_clean = (x_lower + x_upper) / 2 if bm.needs_clean_input else None
    with torch.no_grad():
        lower, upper = rec.run(x_lower, x_upper, None, x_clean)
    names = set(bm.graph.nodes)
    out: dict[str, Interval] = {}
    for k, v in rec.seen.items():
        if k in names and v.lower.shape[1:] == tuple(bm.graph[k].shape[1:]):
            out[k] = v
    out[bm.graph.output.name] = Interval(lower, upper)
    return out


def interval_node_bounds(g, x_lower: Tensor, x_upper: Tensor) -> dict[str, Interval]:
    """IBP bounds of every perturbed node of the IR ``g``, walking it with the interval rules
    directly (no generated code, so no fused node is missing); in the graph's dtype."""
    from boundc.passes.graph.analysis import evaluate

    dtype = g.float_dtype(x_lower.dtype)
    xl, xu = x_lower.to(dtype), x_upper.to(dtype)
    values = evaluate(g, Interval(xl, xu), domain="interval", clean=(xl + xu) / 2)
    return {k: v for k, v in values.items() if isinstance(v, Interval)}


def meet(*bounds: dict[str, Interval]) -> dict[str, Interval]:
    """Node-wise intersection of several sound bound dictionaries."""
    out: dict[str, Interval] = {}
    for d in bounds:
        for k, v in d.items():
            if k in out:
                lo, hi = out[k]
                out[k] = Interval(torch.maximum(lo, v.lower.to(lo.dtype)), torch.minimum(hi, v.upper.to(hi.dtype)))
            else:
                out[k] = v
    return out


def intersect_node_bounds(bound_modules: Sequence[BoundModule], x_lower: Tensor, x_upper: Tensor) -> dict[str, Interval]:
    """Per-node bounds: IBP over the IR met with every given method's recorded bounds (all sound)."""
    g = bound_modules[0].graph
    return meet(interval_node_bounds(g, x_lower, x_upper), *(node_bounds(bm, x_lower, x_upper)
                                                             for bm in bound_modules))


def report(bm: BoundModule, x_lower: Tensor, x_upper: Tensor) -> str:
    """A table: node, op, mean / max bound width, unstable ReLU inputs (l < 0 < u) per node and in total.

    The widths are the compiled method's own bounds: with ``LinearOptions.skip_stable_side`` (the
    default) a stable ReLU input's far side keeps its interval bound, so widths can exceed the
    textbook CROWN ones; the unstable counts are the same either way."""
    bounds = node_bounds(bm, x_lower, x_upper)
    g = bm.graph
    relu_inputs = {n.inputs[0] for n in g if n.perturbed and relaxation_kinks(n.op, n.attrs) == (0.0,)}
    rows = [("node", "op", "mean width", "max width", "unstable")]
    total = 0
    for n in g:
        if n.name not in bounds:
            continue
        b = bounds[n.name]
        w = b.upper - b.lower
        unstable = ""
        if n.name in relu_inputs:
            k = int(((b.lower < 0) & (b.upper > 0)).sum())
            total += k
            unstable = str(k)
        rows.append((n.name, n.op, f"{w.mean().item():.4g}", f"{w.max().item():.4g}", unstable))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"method {bm.method!r}: {total} unstable ReLU neurons over a batch of {x_lower.shape[0]}")
    return "\n".join(lines)
