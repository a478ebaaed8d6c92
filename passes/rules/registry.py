"""The rule registry: one table of per-op functions per domain.

A *domain* is a way of evaluating an IR op: ``"eval"`` computes the op on
concrete tensors (constants, the clean path); ``"interval"`` maps input
intervals to an output interval; the linear-relaxation domains add their own.
Rules are registered with a decorator, so adding an op means adding its rules::

    @rule("relu", "interval")
    def relu(x: Interval) -> Interval: ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

_RULES: dict[tuple[str, str], Callable] = {}


def rule(ops: str | tuple[str, ...], domain: str) -> Callable[[F], F]:
    """Register the decorated function as the rule for ``ops`` in ``domain``."""
    names = (ops,) if isinstance(ops, str) else ops

    def register(fn: F) -> F:
        for op in names:
            key = (op, domain)
            if key in _RULES:
                raise ValueError(f"rule for op {op!r} in domain {domain!r} registered twice")
            _RULES[key] = fn
        return fn

    return register


def get_rule(op: str, domain: str) -> Callable | None:
    """The rule for ``op`` in ``domain``, or ``None`` when there is none."""
    return _RULES.get((op, domain))


def ops_with_rule(domain: str) -> set[str]:
    """All ops that have a rule in ``domain``."""
    return {op for op, d in _RULES if d == domain}
