"""Optional Triton import: the kernel modules import ``triton``/``tl`` from here.

On machines without Triton the names are stand-ins whose decorators return the
function unchanged, so the kernel modules (and their pure-torch references) still
import; the host wrappers call :func:`require_triton` before launching anything.
"""

from __future__ import annotations

import os
from typing import Any

from boundc.errors import BoundcError

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
    _IMPORT_ERROR = ""
except ImportError as err:  # pragma: no cover - exercised only without triton
    HAS_TRITON = False
    _IMPORT_ERROR = str(err)

    class _Shim:
        """Stand-in for ``triton`` / ``triton.language`` when Triton is missing."""

        constexpr = Any
        float32 = None

        @staticmethod
        def jit(fn: Any = None, **_: Any) -> Any:
            """Return the function unchanged."""
            return fn if fn is not None else (lambda f: f)

        @staticmethod
        def autotune(*_: Any, **__: Any) -> Any:
            """Return a decorator that returns the function unchanged."""
            return lambda f: f

        @staticmethod
        def Config(*_: Any, **__: Any) -> None:  # noqa: N802 - mirrors triton.Config
            """No configs without Triton."""
            return None

    triton = _Shim()  # type: ignore[assignment]
    tl = _Shim()  # type: ignore[assignment]


def interpreting() -> bool:
    """True when the Triton interpreter (``TRITON_INTERPRET=1``) runs kernels on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def require_triton() -> None:
    """Raise a clear error when Triton cannot be imported."""
    if not HAS_TRITON:
        raise BoundcError(f"Triton kernels need the 'triton' package (pip install boundc[gpu]): {_IMPORT_ERROR}")


def check_device(*tensors: Any) -> None:
    """All tensors on one CUDA device (or on the CPU under the Triton interpreter)."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) != 1:
        raise BoundcError(f"Triton interval kernels need all tensors on one device, got {sorted(map(str, devices))}")
    dev = devices.pop()
    if dev.type != "cuda" and not (dev.type == "cpu" and interpreting()):
        raise BoundcError(f"Triton interval kernels run on CUDA tensors (or on the CPU with TRITON_INTERPRET=1); "
                          f"got tensors on {dev}")


SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")


def check_dtype(name: str, t: Any) -> None:
    """fp32/fp16/bf16 only (accumulation is fp32 either way)."""
    if t is not None and str(t.dtype).removeprefix("torch.") not in SUPPORTED_DTYPES:
        raise BoundcError(f"Triton interval kernels support {', '.join(SUPPORTED_DTYPES)}; {name} is {t.dtype}")


def dot_precision(flag: bool) -> str:
    """``tl.dot`` input precision mirroring torch's TF32 flag (``"ieee"`` under the interpreter)."""
    return "tf32" if flag and not interpreting() else "ieee"


def num_sms(device: Any) -> int:
    """Streaming multiprocessors of ``device`` (a small stand-in under the interpreter)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4
