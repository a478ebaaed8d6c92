"""Typed options for :func:`boundc.compile` (no keyword soup)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from boundc.errors import BoundcError


class Kernels(str, Enum):
    """Which implementation the interval rules of linear and conv use."""

    AUTO = "auto"      # Triton kernels for CUDA tensors when Triton is available, else torch
    TORCH = "torch"    # always the pure-torch rules
    TRITON = "triton"  # insist on the kernels (an error where they cannot run)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class LinearOptions:
    """Options of the linear-relaxation methods (crown, fast-lin, crown-ibp, forward, alpha-crown).

    Attributes:
        chunk_budget: coefficient entries one chunk of backward rows may hold
            (``batch × rows × entries per row``); ``None``: 2**25 (128 MB in float32).
        progress: show progress bars (only on a terminal) over the backward passes of each
            intermediate bound and over the α-CROWN steps.
        patches: run backward passes that start at a feature map in patches form
            (each row a window of the map, as auto_LiRPA does) where every op on
            the way allows it; the bounds are the same as the dense form's.
        alpha_iterations: Adam steps of alpha-CROWN on the lower ReLU slopes.
        alpha_lr: Adam learning rate of alpha-CROWN.
        intersect_ibp: intersect backward intermediate bounds with the interval
            bounds (IBP from the tightened bounds before each node): sound and
            never looser, but no longer the textbook CROWN bound.  Either way,
            only neurons that interval leaves undecided get backward passes.
        skip_stable_side: a neuron with one kinked user (a ReLU) whose first backward
            bound shows it stable (a lower bound ≥ 0 or an upper bound ≤ 0; the first side
            is the one the model's value at the box centre is on) gets no pass for its other
            side, which keeps its interval bound.  Its relaxation is the same either way, so the
            bounds built on it are too, at about half the backward rows where most neurons
            are stable; only that side of the intermediate bound (a report's widths, the
            intervals of later nodes that decide which neurons get rows) is looser.
            ``False``: both sides for every undecided neuron (the textbook CROWN bounds).
        output_upper: also bound the outputs (or spec rows) from above.  ``False``:
            the final backward pass carries lower rows only (about half its cost
            after the first activation, and α-CROWN optimises only the lower side)
            and the returned upper bound is ``+inf``.  Certification and certified
            training read only the lower bounds of margins.
    """

    chunk_budget: int | None = None
    patches: bool = True
    progress: bool = False
    alpha_iterations: int = 20
    alpha_lr: float = 0.5
    intersect_ibp: bool = False
    skip_stable_side: bool = True
    output_upper: bool = True


@dataclass(frozen=True)
class CompileOptions:
    """How the bound network is generated and run.

    Attributes:
        check_inputs: validate boxes and specs on every call (shapes, NaN/Inf,
            ``lower <= upper``); turn off inside tight training loops on GPU to
            avoid host synchronisation.
        elide_last_layer: fold the spec ``C`` into a trailing linear layer.
        kernels: a :class:`Kernels` (or its name): ``auto`` uses Triton kernels for CUDA
            tensors when available, ``torch`` always the pure-torch rules, ``triton`` insists on kernels.
        linear: options of the linear-relaxation methods (:class:`LinearOptions`).
    """

    check_inputs: bool = True
    elide_last_layer: bool = True
    kernels: Kernels = Kernels.AUTO
    linear: LinearOptions = field(default_factory=LinearOptions)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kernels", Kernels(self.kernels))
        except ValueError:
            raise BoundcError(f"kernels must be one of {[k.value for k in Kernels]}, got {self.kernels!r}") from None
