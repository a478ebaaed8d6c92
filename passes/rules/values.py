"""The value type of the interval domain, shared by the rules and the kernels that implement them.

It lives apart from :mod:`.interval` so that ``boundc.kernels.dispatch`` (which the
interval rules call) can import it without an import cycle.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class Interval(NamedTuple):
    """Elementwise bounds ``lower <= x <= upper`` of a batched value."""

    lower: Tensor
    upper: Tensor


def as_interval(x: Interval | Tensor) -> Interval:
    """Promote a constant tensor to the degenerate interval ``[x, x]``."""
    return x if isinstance(x, Interval) else Interval(x, x)


def centre_radius(x: Interval) -> tuple[Tensor, Tensor]:
    """``((l + u) / 2, (u - l) / 2)``."""
    return (x.upper + x.lower) / 2, (x.upper - x.lower) / 2


def from_centre_radius(c: Tensor, r: Tensor) -> Interval:
    """``[c - r, c + r]``."""
    return Interval(c - r, c + r)


__all__ = ["Interval", "as_interval", "centre_radius", "from_centre_radius"]
