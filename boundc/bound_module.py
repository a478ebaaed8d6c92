"""The compiled bound network."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import Tensor, nn

from boundc.ir import Graph
from boundc.options import CompileOptions
from boundc.specs import check_box, check_spec


class BoundModule(nn.Module):
    """Sound bounds of a network over an input box, as a differentiable module.

    ``bm(x_lower, x_upper)`` returns ``(lower, upper)`` on the logits;
    ``bm(x_lower, x_upper, C)`` returns bounds on ``C @ logits`` (spec of shape
    (B, S, K)), with the last linear layer folded into ``C``.  Parameters are
    the live parameters of the source model.  ``x`` (keyword) is the clean
    input for batch-norm statistics in training mode (default: box centre).
    """

    def __init__(self, graph: Graph, method: str, options: CompileOptions,
                 logits_net: fx.GraphModule, spec_net: fx.GraphModule) -> None:
        super().__init__()
        self.graph = graph
        self.method = method
        self.options = options
        self.logits_net = logits_net
        self.spec_net = spec_net
        self.input_shape = tuple(graph.input.shape[1:])
        self.output_shape = tuple(graph.output.shape[1:])
        self._needs_clean = any(n.op == "clean_input" for n in graph)

    def forward(self, x_lower: Tensor, x_upper: Tensor, C: Tensor | None = None, *,
                x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Bounds ``(lower, upper)`` on the outputs (or on ``C @ outputs``)."""
        if self.options.check_inputs:
            check_box(x_lower, x_upper, self.input_shape)
            if C is not None:
                check_spec(C, x_lower.shape[0], self.output_shape[-1] if self.output_shape else 1)
        if x_lower.shape[0] == 0:  # nothing to bound (the last batch of a loader may be empty)
            empty = x_lower.new_empty((0, C.shape[1]) if C is not None else (0,) + self.output_shape)
            return empty, empty.clone()
        kwargs = {}
        if self._needs_clean:
            kwargs["x_clean"] = (x_lower + x_upper) / 2 if x is None else x
        if C is None:
            return self.logits_net(x_lower, x_upper, **kwargs)
        return self.spec_net(x_lower, x_upper, C, **kwargs)

    @property
    def needs_clean_input(self) -> bool:
        """Whether the generated networks take the clean input ``x_clean`` (batch-norm statistics in training)."""
        return self._needs_clean

    def bound_network(self, spec: bool = False) -> fx.GraphModule:
        """The generated GraphModule: bounds on the outputs (``spec=False``) or on ``C @ outputs`` (``spec=True``).

        Its signature is ``(x_lower, x_upper[, C], x_clean=None)``; it skips the input
        validation of :meth:`forward`.  For tools that trace or interpret the generated
        code (ONNX export, per-node reports); everyone else calls the module itself.
        """
        return self.spec_net if spec else self.logits_net

    @property
    def code(self) -> str:
        """The generated Python of both bound networks (logits and spec)."""
        return (f"# boundc bound network, method={self.method!r}\n"
                f"# --- bounds on the outputs: bm(x_lower, x_upper)\n{self.logits_net.code.strip()}\n\n"
                f"# --- bounds on C @ outputs: bm(x_lower, x_upper, C)\n{self.spec_net.code.strip()}\n")

    def table(self) -> str:
        """Per-node table of the analysed IR (op, shape, perturbed or constant, source)."""
        return self.graph.table()

    def report(self, x_lower: Tensor, x_upper: Tensor) -> str:
        """Per-node bound widths and unstable ReLU counts of this method on a box (see :mod:`boundc.report`)."""
        from boundc.report import report

        return report(self, x_lower, x_upper)

    @torch.no_grad()
    def certify(self, x_lower: Tensor, x_upper: Tensor, C: Tensor) -> Tensor:
        """Per-sample verified flags: every row of ``C @ y`` has a positive lower bound."""
        lower, _ = self(x_lower, x_upper, C)
        return (lower > 0).all(dim=1)

    def export_onnx(self, path, spec: str | None = None) -> None:
        """Write an ONNX certifier (inputs x_lower, x_upper[, C | labels]; outputs lower, upper).

        ``spec``: ``None`` (logit bounds), ``"C"`` or ``"margin"``; see :mod:`boundc.export.certifier`.
        """
        from boundc.export import export_onnx

        export_onnx(self, path, spec=spec)
