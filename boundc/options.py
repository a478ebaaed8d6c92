"""Typed options for :func:`boundc.compile` (no keyword soup)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class CompileOptions:
    """How the bound network is generated and run.

    Attributes:
        check_inputs: validate boxes and specs on every call (shapes, NaN/Inf,
            ``lower <= upper``); turn off inside tight training loops on GPU to
            avoid host synchronisation.
        elide_last_layer: fold the spec ``C`` into a trailing linear layer.
        kernels: ``"auto"`` uses Triton kernels for CUDA tensors when available,
            ``"torch"`` always the pure-torch rules, ``"triton"`` insists on kernels.
    """

    check_inputs: bool = True
    elide_last_layer: bool = True
    kernels: Literal["auto", "torch", "triton"] = "auto"
