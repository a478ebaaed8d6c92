"""Analysis passes: which values are perturbed, an eager walk of the graph, and rule coverage."""

from __future__ import annotations

import torch
from boundc.passes.rules.ops import OPS, has
from boundc.passes.rules.registry import get_rule

from boundc.errors import UnsupportedOpError
from boundc.ir import Graph


def mark_perturbed(g: Graph) -> Graph:
    """Set ``node.perturbed`` (depends on the input) and ``node.batched``."""
    for n in g:
        ins = [g[i] for i in n.inputs if i is not None]
        if n.op == "input":
            n.perturbed, n.batched = True, True
        elif has(n.op, "source"):
            n.perturbed, n.batched = False, n.op != "param"
        else:
            n.perturbed = any(i.perturbed for i in ins)
            n.batched = any(i.batched for i in ins) and not has(n.op, "batch_reduction")
    return g


def evaluate(g: Graph, x, extra: dict[str, torch.Tensor] | None = None, domain: str = "eval",
             clean: torch.Tensor | None = None) -> dict:
    """Run the graph at ``x``; returns every node's value.

    Perturbed nodes use the rules of ``domain`` (``"eval"``: concrete tensors;
    ``"interval"``: ``x`` is an :class:`~boundc.passes.rules.interval.Interval` and
    this is plain IBP), constant nodes always the concrete ones.  ``clean`` is
    the value of ``clean_input`` (default: ``x`` itself).
    """
    from boundc.interpreter import Interpreter

    seeds = {"input": x, "clean_input": x if clean is None else clean}
    if extra and "C" in extra:
        seeds["spec_matrix"] = extra["C"]
    return Interpreter(g, domain, seeds).run()


def check_rules(g: Graph, domains: tuple[str, ...]) -> None:
    """Fail with one error listing every perturbed node that has no rule in ``domains``.

    A node is covered when one of the given domains has a rule for its op.
    Constant nodes need a concrete (``eval``) rule.
    """
    problems = []
    for n in g:
        if n.op == "input" or has(n.op, "source"):
            continue
        spec = OPS.get(n.op)
        bad = spec.check(n.attrs) if n.perturbed and spec is not None and spec.check is not None else None
        if bad:
            problems.append(f"{bad}: {n.where()}")
        elif n.perturbed:
            if not any(get_rule(n.op, d) for d in domains):
                problems.append(f"op '{n.op}' has no {'/'.join(domains)} rule: {n.where()}")
            elif has(n.op, "bilinear") and all(g[i].perturbed for i in n.inputs):
                if not all(get_rule(n.op, d) for d in domains):
                    problems.append(f"product of two input-dependent values: {n.where()}")
        elif get_rule(n.op, "eval") is None:
            problems.append(f"op '{n.op}' has no concrete rule: {n.where()}")
    if problems:
        raise UnsupportedOpError(problems)
