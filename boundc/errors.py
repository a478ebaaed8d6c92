"""Exceptions raised by boundc.  Every message names the node and its source."""

from __future__ import annotations


class BoundcError(ValueError):
    """Base class: bad input to boundc (a model, an input set, a file)."""


class UnsupportedOpError(BoundcError):
    """The model uses operations boundc has no rule for; lists every one."""

    def __init__(self, problems: list[str], what: str = "operation") -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"boundc cannot compile this model: {len(problems)} unsupported {what}(s):\n{lines}")


class BoundcInternalError(RuntimeError):
    """A bug in boundc: an internal invariant failed.  Not a user error, so never caught as :class:`BoundcError`."""


class DeadlineExceeded(BoundcError):
    """The time given to a computation (a verification's ``--timeout``) ran out inside it."""
