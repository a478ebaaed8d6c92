"""The rule registry: per-op functions per domain, explicit or derived from the op table.

A *domain* is a way of evaluating an IR op: ``"eval"`` computes the op on
concrete tensors (constants, the clean path); ``"interval"`` maps input
intervals to an output interval; ``"backward"`` / ``"forward"`` are the linear
relaxations.  :func:`get_rule` returns the rule registered explicitly for an op
(``@rule("linear", "interval")``, written only where it pays: linear, conv,
spec, pooling, binary ops) or else one derived from the op's
:class:`~.ops.OpDef` by the domain's *deriver* (``@deriver("interval")``):
its ``eval`` for ``"eval"``, end-point mapping for monotone ops, the
relaxation's lines for activations.  ``None`` means the op has no rule there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from .ops import OpDef

F = TypeVar("F", bound=Callable)

_RULES: dict[tuple[str, str], Callable] = {}
_DERIVERS: dict[str, Callable[[OpDef], Callable | None]] = {}
_DERIVED: dict[tuple[str, str], Callable | None] = {}


def rule(ops: str | tuple[str, ...], domain: str) -> Callable[[F], F]:
    """Register the decorated function as the explicit rule for ``ops`` in ``domain``."""
    names = (ops,) if isinstance(ops, str) else ops

    def register(fn: F) -> F:
        for op in names:
            key = (op, domain)
            if key in _RULES:
                raise ValueError(f"rule for op {op!r} in domain {domain!r} registered twice")
            _RULES[key] = fn
            _DERIVED.pop(key, None)
        return fn

    return register


def owns_result(fn: F) -> F:
    """Mark a reverse-domain rule (or a sum of contributions) whose result holds coefficient tensors that no
    other value of the walk holds: freshly allocated, or taken over from a state it was allowed to consume.
    What :mod:`boundc.passes.graph.consume` builds its proof of ownership from."""
    fn.owns_result = True
    return fn


def consumes_state(fn: F) -> F:
    """Mark a reverse-domain rule that takes ``consume=True``: it may then form its result in the buffers of
    the state it is given, which the walk then holds nowhere else."""
    fn.consumes_state = True
    return fn


def commutes(fn: F) -> F:
    """Mark a :func:`consumes_state` sum of two states whose arguments may come in either order: the fx pass
    swaps them when only the second is owned, so the owned one is consumed."""
    fn.commutes = True
    return fn


def forwards_state(fn: F) -> F:
    """Mark a rule (or a hook over a rule's result) whose result holds views of the coefficient tensors of its
    first argument or fresh tensors, never another value's: its result is owned when that argument is
    (:mod:`boundc.passes.graph.consume`)."""
    fn.forwards_state = True
    return fn


def deriver(domain: str) -> Callable[[Callable[[OpDef], Callable | None]], Callable[[OpDef], Callable | None]]:
    """Register the decorated ``make(opdef) -> rule or None`` as the way ``domain`` derives rules."""

    def register(fn: Callable[[OpDef], Callable | None]) -> Callable[[OpDef], Callable | None]:
        _DERIVERS[domain] = fn
        return fn

    return register


def _load_domains() -> None:
    """Import every rule library once (importing one registers its rules and deriver)."""
    from . import backward, concrete, forward_linear, interval, ops, patches  # noqa: F401


@deriver("eval")
def _eval(d: OpDef) -> Callable | None:
    return d.eval


def get_rule(op: str, domain: str) -> Callable | None:
    """The rule for ``op`` in ``domain`` (explicit, else derived from the op table), or ``None``."""
    fn = _RULES.get((op, domain))
    if fn is not None:
        return fn
    key = (op, domain)
    if key not in _DERIVED:
        _load_domains()
        from .ops import OPS

        fn = _RULES.get(key)
        if fn is not None:
            return fn
        d, make = OPS.get(op), _DERIVERS.get(domain)
        _DERIVED[key] = make(d) if d is not None and make is not None else None
    return _DERIVED[key]


def forget(op: str) -> None:
    """Drop the derived rules of ``op`` (called when the op table gains ``op``)."""
    for key in [k for k in _DERIVED if k[0] == op]:
        del _DERIVED[key]


def ops_with_rule(domain: str) -> set[str]:
    """All ops that have a rule (explicit or derived) in ``domain``."""
    _load_domains()
    from .ops import OPS

    return {op for op, d in _RULES if d == domain} | {op for op in OPS if get_rule(op, domain) is not None}
