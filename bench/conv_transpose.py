"""Transposed 2-d convolution on CPU: ``conv_transpose2d``, one GEMM + ``fold`` (col2im), and (stride 1)
a convolution with the flipped kernel, side by side.

``python bench/conv_transpose.py [--threads 1]`` times the forms on the convolutions of the example
models (rows = backward rows × batch) in float32 and float64 and prints the time of each and the ratios.
It is the evidence behind ``passes.rules.transpose.FOLD_MAX_CHANNELS``: the fold form wins for narrow
outputs (1-3 input channels of the convolution) in float32 and loses for wide ones.  The flipped-kernel
convolution is kept here as the form measured and dropped: with the tuned allocator it loses to
``conv_transpose2d`` on every case, and inside the bound passes it was no faster.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from boundc.passes.rules.transpose import conv2d_input_fold

from boundc.runtime import tune_allocator

#: (name, out channels, in channels, kernel, stride, padding, input size, rows)
CASES = [("small conv1", 16, 1, 4, 2, 0, 28, 1600), ("small conv2", 32, 16, 4, 1, 0, 13, 1600),
         ("medium conv1", 32, 1, 3, 1, 0, 28, 2048), ("medium conv2", 32, 32, 4, 2, 0, 26, 2048),
         ("resnet stem", 8, 1, 3, 1, 1, 28, 640), ("resnet block", 8, 8, 3, 1, 1, 28, 640),
         ("cifar conv1", 16, 3, 4, 2, 1, 32, 640)]


def _flipped(A: torch.Tensor, w: torch.Tensor, p: int) -> torch.Tensor:
    """The transpose of a stride-1 convolution as a convolution with the kernel flipped in space and its channel
    axes swapped, padded by ``k - 1 - p`` (the same map as ``conv_transpose2d``)."""
    return F.conv2d(A, w.flip(2, 3).transpose(0, 1), padding=w.shape[-1] - 1 - p)


def _time(fn, repeat: int = 3) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat * 1e3


def main() -> None:
    """Print one line per (dtype, case): the times in ms and conv_transpose / fold, conv_transpose / flip."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--repeat", type=int, default=3, help="timed calls per form (the mean is printed)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tune_allocator()  # as the command line and bench/linear.py run: fresh mmaps would be timed otherwise
    print(f"{'dtype':8s} {'case':14s} {'Ci':>3s} {'conv_t ms':>10s} {'fold ms':>9s} {'flip ms':>9s} "
          f"{'conv_t/fold':>11s} {'conv_t/flip':>11s}")
    for dtype in (torch.float32, torch.float64):
        for name, co, ci, k, s, p, hw, rows in CASES:
            torch.manual_seed(0)
            w = torch.randn(co, ci, k, k, dtype=dtype)
            ho = (hw + 2 * p - k) // s + 1
            A = torch.randn(rows, co, ho, ho, dtype=dtype)
            extra = hw - ((ho - 1) * s - 2 * p + k)
            t_ct = _time(lambda A=A, w=w, s=s, p=p, extra=extra: F.conv_transpose2d(A, w, None, s, p, extra), a.repeat)
            t_fold = _time(lambda A=A, w=w, s=s, p=p, hw=hw: conv2d_input_fold(A, w, (hw, hw), (s, s), (p, p)),
                           a.repeat)
            t_flip = (_time(lambda A=A, w=w, p=p: _flipped(A, w, p), a.repeat) if s == 1 else None)
            flip, ratio = ("-", "-") if t_flip is None else (f"{t_flip:.1f}", f"{t_ct / t_flip:.2f}")
            print(f"{str(dtype)[6:]:8s} {name:14s} {ci:3d} {t_ct:10.1f} {t_fold:9.1f} {flip:>9s} {t_ct / t_fold:11.2f} "
                  f"{ratio:>11s}", flush=True)


if __name__ == "__main__":
    main()
