"""Export a compiled bound network as an ONNX *certifier*.

The exported graph has inputs ``x_lower``, ``x_upper`` (the input box, batch
first) and, depending on ``spec``:

* ``None``: no third input; outputs bounds on the logits;
* ``"C"``: a spec matrix ``C`` of shape (B, S, K); outputs bounds on ``C·y``;
* ``"margin"``: ``labels`` (B,) int64; outputs bounds on the margins
  ``y_label - y_j`` for the K-1 other classes (boundc's :func:`margin_spec`
  order), so a sample is certified iff every ``lower`` entry is > 0.

Outputs are ``lower`` and ``upper``; every batch dimension is dynamic.  The
generated GraphModules are traced directly (TorchScript exporter), skipping
the Python-side input validation of ``BoundModule.forward``.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from boundc.bound_module import BoundModule
from boundc.errors import BoundcError
from boundc.specs import margin_rows, other_classes

SPECS = (None, "C", "margin")


class Certifier(nn.Module):
    """The bound network with a fixed calling convention for export."""

    def __init__(self, bm: BoundModule, spec: str | None = None, identity_spec: bool = False) -> None:
        super().__init__()
        if spec not in SPECS:
            raise BoundcError(f"spec must be one of {SPECS}, got {spec!r}")
        self.spec = spec
        self.identity_spec = identity_spec and spec is None
        self.net = bm.bound_network(spec=spec is not None or self.identity_spec)
        self.needs_clean = bm.needs_clean_input
        k = int(torch.tensor(bm.output_shape).prod()) if bm.output_shape else 1
        self.num_classes = k
        if spec == "margin":
            self.register_buffer("others", other_classes(k), persistent=False)
            self.register_buffer("eye", torch.eye(k), persistent=False)

    def spec_matrix(self, labels: Tensor) -> Tensor:
        """Margin spec (B, K-1, K): rows ``e_label - e_j`` for ``j != label``."""
        return margin_rows(labels, self.eye.to(torch.float32), self.others)

    def forward(self, x_lower: Tensor, x_upper: Tensor, extra: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(lower, upper)`` for the box (and spec)."""
        kwargs = {"x_clean": (x_lower + x_upper) / 2} if self.needs_clean else {}
        if self.identity_spec:  # logit bounds as bounds on I·y
            eye = torch.eye(self.num_classes, dtype=x_lower.dtype, device=x_lower.device)
            return tuple(self.net(x_lower, x_upper, eye.expand(x_lower.shape[0], -1, -1), **kwargs))
        if self.spec is None:
            return tuple(self.net(x_lower, x_upper, **kwargs))
        C = self.spec_matrix(extra).to(x_lower.dtype) if self.spec == "margin" else extra
        return tuple(self.net(x_lower, x_upper, C, **kwargs))


def traceable_vjp_transpose(fn: Callable[[Tensor], Tensor], A: Tensor, in_shape: tuple[int, ...]) -> Tensor:
    """Transpose of the linear part of ``fn`` applied to ``A`` (B, S, *out), by its explicit matrix.

    Same result as :func:`boundc.passes.rules.backward.vjp_transpose`, but built from
    ordinary ops (no ``torch.func``), so the TorchScript exporter can trace it.
    """
    n = math.prod(in_shape)
    eye = torch.eye(n, dtype=A.dtype, device=A.device).reshape((n, *in_shape))
    zero = torch.zeros((1, *in_shape), dtype=A.dtype, device=A.device)
    L = (fn(eye) - fn(zero)).reshape(n, -1)  # (n_in, n_out)
    B, S = A.shape[:2]
    return torch.matmul(A.reshape(B, S, -1), L.t()).reshape((B, S, *in_shape))


def _conv_input(nd: int) -> Callable[..., Tensor]:
    """A traceable ``torch.nn.grad.conv{nd}d_input`` (a transposed convolution with output padding)."""
    transpose = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]

    def conv_input(input_size, weight: Tensor, grad_output: Tensor, stride=1, padding=0, dilation=1,
                   groups: int = 1) -> Tensor:
        st, pd, dl = (tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd for v in (stride, padding, dilation))
        out = [int(d) for d in grad_output.shape[-nd:]]
        want = [int(d) for d in tuple(input_size)[-nd:]]
        extra = [want[i] - ((out[i] - 1) * st[i] - 2 * pd[i] + dl[i] * (weight.shape[2 + i] - 1) + 1)
                 for i in range(nd)]
        return transpose(grad_output, weight, None, st, pd, tuple(extra), groups, dl)

    return conv_input


@contextlib.contextmanager
def _traceable() -> Iterator[None]:
    """Swap ``torch.func``-based helpers of the backward rules for traceable ones while exporting."""
    try:
        from boundc.passes.rules import backward
    except ImportError:  # no linear-relaxation methods installed
        yield
        return
    saved, saved_conv = backward.vjp_transpose, dict(backward._CONV_INPUT)
    backward.vjp_transpose = traceable_vjp_transpose
    backward._CONV_INPUT.update({nd: _conv_input(nd) for nd in (1, 2, 3)})
    try:
        yield
    finally:
        backward.vjp_transpose = saved
        backward._CONV_INPUT.update(saved_conv)


def export_onnx(bm: BoundModule, path: str | os.PathLike | io.BytesIO, spec: str | None = None,
                opset: int = 17) -> None:
    """Write the ONNX certifier of ``bm`` (see the module docstring) to ``path``."""
    try:
        _export(Certifier(bm, spec).eval(), bm, path, spec, opset)
    except BoundcError:
        if spec is not None:
            raise
        _export(Certifier(bm, spec, identity_spec=True).eval(), bm, path, spec, opset)


def _export(cert: Certifier, bm: BoundModule, path: str | os.PathLike | io.BytesIO, spec: str | None,
            opset: int) -> None:
    """Trace ``cert`` with the TorchScript exporter."""
    shape = tuple(bm.input_shape)
    x = torch.zeros(2, *shape)
    args: tuple = (x - 0.01, x + 0.01)
    names = ["x_lower", "x_upper"]
    axes: dict[str, dict[int, str]] = {"x_lower": {0: "batch"}, "x_upper": {0: "batch"},
                                       "lower": {0: "batch"}, "upper": {0: "batch"}}
    if spec == "C":
        args += (torch.eye(cert.num_classes).unsqueeze(0).repeat(2, 1, 1),)
        names.append("C")
        axes["C"] = {0: "batch", 1: "specs"}
        axes["lower"][1] = axes["upper"][1] = "specs"
    elif spec == "margin":
        args += (torch.tensor([0, cert.num_classes - 1]),)
        names.append("labels")
        axes["labels"] = {0: "batch"}
    target = os.fspath(path) if not isinstance(path, io.BytesIO) else path
    with warnings.catch_warnings(), _traceable(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(cert, args, target, input_names=names, output_names=["lower", "upper"],
                              dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)
        except Exception as err:  # noqa: BLE001 - report the exporter's reason
            raise BoundcError(f"ONNX export of the bound network failed: {type(err).__name__}: {err}") from err
