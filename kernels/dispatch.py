"""Choose between the fused Triton kernels and the pure-torch interval rules.

``backend="auto"`` uses Triton when every tensor is on CUDA, Triton can be
imported and the op is supported (fp32/fp16/bf16; 2-d ``groups=1`` convs);
``"torch"`` always uses the torch rules; ``"triton"`` insists on the kernels and
raises when they cannot run (CPU tensors are accepted under
``TRITON_INTERPRET=1``, for tests).  While exporting (ONNX, ``torch.export``,
``torch.compile`` tracing, ``torch.jit`` tracing) the torch rules are always
used, so exported graphs contain only standard ops.  The torch path is the
exact code of the interval rules, so on the CPU results are bit-for-bit those
of ``boundc.passes.rules.interval``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from functools import lru_cache, partial

import torch
import torch.nn.functional as F
from boundc.passes.rules import concrete
from boundc.passes.rules.values import Interval, as_interval
from torch import Tensor

from boundc.errors import BoundcError

BACKENDS = ("auto", "torch", "triton")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether Triton can be imported (imported lazily, on first CUDA use only)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install counts as unavailable
        return False
    return True


def exporting() -> bool:
    """True while an exporter or tracer records the graph (then only torch ops may run)."""
    compiler = getattr(torch, "compiler", None)
    return bool(torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()
                or (compiler is not None and (compiler.is_compiling()
                                              or getattr(compiler, "is_exporting", lambda: False)())))


def _interpreting() -> bool:
    """``TRITON_INTERPRET=1`` (kernels run on the CPU)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(backend: str, tensors: tuple[Tensor | None, ...], supported: bool = True, what: str = "op") -> bool:
    """Decide the path for one call; raises for ``backend="triton"`` when the kernels cannot run."""
    if backend not in BACKENDS:
        raise BoundcError(f"kernels backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch" or exporting():
        return False
    ts = [t for t in tensors if t is not None]
    on_cuda = all(t.is_cuda for t in ts)
    dtypes_ok = all(t.dtype in _DTYPES for t in ts)
    if backend == "auto":
        return on_cuda and supported and dtypes_ok and triton_available()
    if not triton_available():
        raise BoundcError("kernels='triton' but Triton cannot be imported (pip install boundc[gpu])")
    if not (on_cuda or _interpreting()):
        raise BoundcError(f"kernels='triton' needs CUDA tensors (or TRITON_INTERPRET=1); the {what} inputs are on "
                          f"{sorted({str(t.device) for t in ts})}")
    if not supported or not dtypes_ok:
        raise BoundcError(f"kernels='triton': no Triton kernel for this {what} "
                          f"(dtypes {sorted({str(t.dtype) for t in ts})}); use kernels='auto' to fall back to torch")
    return True


def interval_linear(x: Interval | Tensor, weight: Tensor, bias: Tensor | None, *, relu_input: bool = False,
                    backend: str = "auto") -> Interval:
    """Interval linear layer ``W·c + b ± |W|·r``, with the preceding ReLU fused when ``relu_input``."""
    x = as_interval(x)
    if use_triton(backend, (x.lower, x.upper, weight, bias), what="linear"):
        from .interval_affine import interval_affine

        return Interval(*interval_affine(x.lower, x.upper, weight, bias, relu_input=relu_input))
    return _torch_affine(F.linear, x, weight, bias, relu_input)


def interval_conv(x: Interval | Tensor, weight: Tensor, bias: Tensor | None, *, stride: tuple, padding: tuple,
                  dilation: tuple, groups: int, relu_input: bool = False, backend: str = "auto") -> Interval:
    """Interval N-d convolution in centre/radius form (Triton for 2-d ``groups=1``), optional fused ReLU."""
    x = as_interval(x)
    supported = weight.dim() == 4 and groups == 1 and not isinstance(padding, str)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    if use_triton(backend, (x.lower, x.upper, weight, bias), supported, what="conv"):
        from .interval_conv import interval_conv as fused

        return Interval(*fused(x.lower, x.upper, weight, bias, relu_input=relu_input, **kw))
    return _torch_affine(partial(concrete.conv, **kw), x, weight, bias, relu_input)


def _torch_affine(apply: Callable[[Tensor, Tensor, Tensor | None], Tensor], x: Interval, weight: Tensor,
                  bias: Tensor | None, relu_input: bool) -> Interval:
    """The torch path of an interval affine op ``apply(input, weight, bias)``.

    ``W·c + b`` and ``|W|·r`` are computed as ``(W/2)·(u + l) + b`` and
    ``(|W|/2)·(u - l)``: halving the (small) weight instead of the (large)
    activations saves two elementwise passes and is bit-for-bit the same (a
    power-of-two scaling is exact).  The upper bound is formed in place in the
    freshly computed centre, which linear/conv do not keep for their backward.
    """
    lower, upper = (torch.relu(x.lower), torch.relu(x.upper)) if relu_input else (x.lower, x.upper)
    centre = apply(upper + lower, weight * 0.5, bias)
    radius = apply(upper - lower, weight.abs() * 0.5, None)
    lower = centre - radius
    upper = centre + radius if exporting() else centre.add_(radius)
    return Interval(lower, upper)


__all__ = ["BACKENDS", "exporting", "interval_conv", "interval_linear", "triton_available", "use_triton"]
