"""Verdicts and the verification cascade shared by ``boundc verify`` and the evaluation metrics.

A cascade decides ``n`` items (samples, input boxes) with a sequence of
:class:`Stage` s, cheap ones first: each stage sees only the items still open
and answers a :class:`Verdict` for each; an item is settled by the first stage
that does not answer ``unknown``.  :func:`run_cascade` does the bookkeeping
(which stage decided what, counts, seconds, an optional deadline and an early
stop), the stages hold the method-specific work (bounds, attacks, input
splitting, MILP).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import torch
from torch import Tensor

from boundc.errors import BoundcInternalError


class Verdict(str, Enum):
    """The outcome for one item: the property holds, a counterexample exists, or undecided."""

    VERIFIED = "verified"
    FALSIFIED = "falsified"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value

    @property
    def vnncomp(self) -> str:
        """The VNN-COMP word: ``unsat`` (verified: the unsafe set is empty), ``sat`` or ``unknown``."""
        return {"verified": "unsat", "falsified": "sat", "unknown": "unknown"}[self.value]

    @property
    def code(self) -> int:
        """A small integer (1 verified, -1 falsified, 0 unknown), as stored in verdict tensors."""
        return {"verified": 1, "falsified": -1, "unknown": 0}[self.value]

    @classmethod
    def from_code(cls, code: int) -> Verdict:
        """The verdict of :attr:`code`."""
        return {1: cls.VERIFIED, -1: cls.FALSIFIED, 0: cls.UNKNOWN}[int(code)]


def verdicts(verified: Tensor | None = None, falsified: Tensor | None = None) -> Tensor:
    """A verdict-code tensor (int8) from boolean masks (falsified wins where both are set)."""
    ref = verified if verified is not None else falsified
    if ref is None:
        raise TypeError("verdicts() needs at least one mask")
    out = torch.zeros(ref.shape, dtype=torch.int8)
    if verified is not None:
        out[verified.cpu()] = Verdict.VERIFIED.code
    if falsified is not None:
        out[falsified.cpu()] = Verdict.FALSIFIED.code
    return out


@dataclass
class Stage:
    """One step of a cascade.

    ``decide(open_)`` gets the indices (1-d long tensor) of the open items and returns
    their verdict codes (int tensor of the same length, see :meth:`Verdict.code`).
    """

    name: str
    decide: Callable[[Tensor], Tensor]


@dataclass
class CascadeResult:
    """What a cascade decided.

    Attributes:
        codes: (n,) verdict codes per item (see :meth:`Verdict.code`).
        decided_by: per item, the name of the stage that settled it (None when open).
        counts: per stage, how many items it verified and falsified.
        seconds: per stage, the time it took.
        stopped: why the cascade stopped before its last stage ('' when it did not).
    """

    codes: Tensor
    decided_by: list[str | None]
    counts: dict[str, dict[Verdict, int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    stopped: str = ""

    def verdict(self, i: int) -> Verdict:
        """The verdict of item ``i``."""
        return Verdict.from_code(int(self.codes[i]))

    def count(self, verdict: Verdict) -> int:
        """How many items have ``verdict``."""
        return int((self.codes == verdict.code).sum())


def run_cascade(n: int, stages: Sequence[Stage], *, stop_on_falsified: bool = False,
                deadline: float | None = None) -> CascadeResult:
    """Run ``stages`` in order over the ``n`` items; each stage sees the items still open.

    ``stop_on_falsified``: stop after the first stage that falsifies an item (a
    property with several input boxes is falsified by any of them).  ``deadline``
    (``time.monotonic()`` seconds): stages after it are not started.
    """
    res = CascadeResult(torch.zeros(n, dtype=torch.int8), [None] * n)
    for stage in stages:
        open_ = torch.nonzero(res.codes == Verdict.UNKNOWN.code).flatten()
        if not len(open_):
            break
        if deadline is not None and time.monotonic() > deadline:
            res.stopped = f"timeout before {stage.name}"
            break
        t = time.perf_counter()
        got = torch.as_tensor(stage.decide(open_), dtype=torch.int8).reshape(-1)
        if got.shape[0] != len(open_):
            raise BoundcInternalError(f"cascade stage {stage.name!r} answered {got.shape[0]} verdicts "
                                      f"for {len(open_)} open items")
        res.seconds[stage.name] = res.seconds.get(stage.name, 0.0) + time.perf_counter() - t
        res.codes[open_] = got
        counts = res.counts.setdefault(stage.name, {Verdict.VERIFIED: 0, Verdict.FALSIFIED: 0})
        for i, c in zip(open_.tolist(), got.tolist()):
            if c != Verdict.UNKNOWN.code:
                res.decided_by[i] = stage.name
                counts[Verdict.from_code(c)] += 1
        if stop_on_falsified and counts[Verdict.FALSIFIED]:
            res.stopped = f"falsified by {stage.name}"
            break
    return res
