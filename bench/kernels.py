"""Fused Triton interval kernels vs the unfused torch rules, on a CUDA device.

Run: ``python bench/kernels.py [--quick] [--batches 128,512,2048] [--widths 256,1024,4096,8192]``.
Prints, per shape: forward and forward+backward time of the fused kernel and of
the unfused torch rule (two GEMMs/convs plus elementwise ops), the speed-up, the
fused op's achieved bandwidth (ideal traffic: read l, u, W, b once, write two
outputs) and TFLOP/s (``4·M·N·K`` forward) against the device's peak; then, for
the IBP paper's large CNN (``boundc.examples.build("large")``), the IBP bound
forward+backward time divided by a clean forward+backward, with either backend.

Without CUDA it prints why and exits 0; ``--interpret-check`` then runs a tiny
Triton-interpreter correctness check on the CPU instead.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

#: Where the benchmark runs (a CPU smoke test under TRITON_INTERPRET=1 may set "cpu").
DEVICE = "cuda"

#: (HBM GB/s, fp32 TFLOP/s, tf32 dense TFLOP/s) by device-name fragment; override with --peak-gbs/--peak-tflops.
PEAKS = {
    "H200": (4800.0, 67.0, 494.0), "H100 PCIe": (2000.0, 51.0, 378.0), "H100": (3350.0, 67.0, 494.0),
    "A100-SXM4-80GB": (2039.0, 19.5, 156.0), "A100": (1555.0, 19.5, 156.0), "L4": (300.0, 30.3, 60.0),
    "A10": (600.0, 31.2, 62.5), "RTX 4090": (1008.0, 82.6, 82.6),
}


def _peaks(name: str, args: argparse.Namespace) -> tuple[float, float]:
    """(GB/s, TFLOP/s) peak of the device for the precision torch uses for fp32 matmul."""
    gbs, f32, tf32 = next((v for k, v in PEAKS.items() if k in name), (float("nan"),) * 3)
    flops = tf32 if torch.backends.cuda.matmul.allow_tf32 else f32
    return args.peak_gbs or gbs, args.peak_tflops or flops


def _ms(fn: Callable[[], object]) -> float:
    """Median milliseconds of ``fn`` (Triton's do_bench: warm-up, L2 flush, CUDA events)."""
    from triton.testing import do_bench

    return do_bench(fn, return_mode="median")


def _fwd_bwd(fn: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], None]:
    """Forward, then backward of ``sum(upper - lower)``."""
    def run() -> None:
        lo, up = fn()
        (up - lo).sum().backward()
    return run


def _time(fused: Callable, ref: Callable) -> tuple[float, float, float, float]:
    """(fused fwd, torch fwd, fused fwd+bwd, torch fwd+bwd) in ms."""
    with torch.no_grad():
        tf, tt = _ms(fused), _ms(ref)
    return tf, tt, _ms(_fwd_bwd(fused)), _ms(_fwd_bwd(ref))


def _leaves(*shapes: tuple[int, ...]) -> list[torch.Tensor]:
    """Random CUDA leaves requiring grad."""
    return [torch.randn(s, device=DEVICE).requires_grad_() for s in shapes]


def bench_linear(batches: list[int], widths: list[int], peak: tuple[float, float]) -> None:
    """Square linear layers ``width -> width`` with the ReLU prologue."""
    from boundc.kernels.interval_affine import interval_affine, interval_affine_reference

    print(f"\n== interval linear (ReLU prologue), fp32; peaks {peak[0]:.0f} GB/s, {peak[1]:.0f} TFLOP/s")
    print(f"{'batch':>6} {'width':>6} {'fused ms':>9} {'torch ms':>9} {'speedup':>8} {'GB/s':>8} {'%bw':>5} "
          f"{'TFLOP/s':>8} {'%pk':>5} | {'f+b fused':>9} {'f+b torch':>9} {'speedup':>8}")
    for m in batches:
        for k in widths:
            n = k
            x, r, w, b = _leaves((m, k), (m, k), (n, k), (n,))
            lo, up = (x - r.abs()).detach().requires_grad_(), (x + r.abs()).detach().requires_grad_()
            tf, tt, bf, bt = _time(partial(interval_affine, lo, up, w, b, relu_input=True),
                                   partial(interval_affine_reference, lo, up, w, b, relu_input=True))
            gbs = 4 * (2 * m * k + n * k + n + 2 * m * n) / tf / 1e6
            tfl = 4 * m * n * k / tf / 1e9
            print(f"{m:6d} {k:6d} {tf:9.3f} {tt:9.3f} {tt / tf:7.2f}x {gbs:8.0f} {100 * gbs / peak[0]:4.0f}% "
                  f"{tfl:8.1f} {100 * tfl / peak[1]:4.0f}% | {bf:9.3f} {bt:9.3f} {bt / bf:7.2f}x")


#: The large CNN's conv layers on 28x28 MNIST: (C, OC, H, stride).
LARGE_CONVS = [(1, 64, 28, 1), (64, 64, 28, 1), (64, 128, 28, 2), (128, 128, 14, 1)]


def bench_conv(batches: list[int], peak: tuple[float, float]) -> None:
    """The large CNN's 3x3 convolutions (padding 1) with the ReLU prologue."""
    from boundc.kernels.interval_conv import interval_conv, interval_conv_reference

    print(f"\n== interval conv2d 3x3 (large CNN layers, ReLU prologue), fp32; "
          f"cudnn tf32={torch.backends.cudnn.allow_tf32}")
    print(f"{'batch':>6} {'C->OC':>8} {'HxW':>5} {'s':>2} {'fused ms':>9} {'torch ms':>9} {'speedup':>8} {'GB/s':>8} "
          f"{'%bw':>5} {'TFLOP/s':>8} {'%pk':>5} | {'f+b fused':>9} {'f+b torch':>9} {'speedup':>8}")
    for m in batches:
        for c, oc, h, s in LARGE_CONVS:
            oh = (h - 1) // s + 1
            lo, up, w, b = _leaves((m, c, h, h), (m, c, h, h), (oc, c, 3, 3), (oc,))
            with torch.no_grad():
                up.copy_(lo + 0.1)
            kw = dict(stride=s, padding=1, relu_input=True)
            tf, tt, bf, bt = _time(partial(interval_conv, lo, up, w, b, **kw),
                                   partial(interval_conv_reference, lo, up, w, b, **kw))
            gbs = 4 * (2 * m * c * h * h + oc * c * 9 + 2 * m * oc * oh * oh) / tf / 1e6
            tfl = 4 * m * oh * oh * oc * c * 9 / tf / 1e9
            print(f"{m:6d} {c:3d}->{oc:<4d} {h:5d} {s:2d} {tf:9.3f} {tt:9.3f} {tt / tf:7.2f}x {gbs:8.0f} "
                  f"{100 * gbs / peak[0]:4.0f}% {tfl:8.1f} {100 * tfl / peak[1]:4.0f}% | "
                  f"{bf:9.3f} {bt:9.3f} {bt / bf:7.2f}x")


def bench_ibp_ratio(batches: list[int]) -> None:
    """IBP bound forward+backward over clean forward+backward, large CNN, torch vs Triton rules."""
    from boundc.passes.graph.fuse import fuse_relu_affine

    import boundc
    from boundc import codegen, examples
    from boundc.options import CompileOptions

    model = examples.build("large").to(DEVICE)
    g = boundc.lower(model, torch.rand(2, 1, 28, 28, device=DEVICE))
    nets = {k: codegen.build(fuse_relu_affine(g, k), "ibp", CompileOptions(kernels=k)) for k in ("torch", "triton")}
    print("\n== IBP training-step overhead, large CNN: (bounds fwd+bwd) / (clean fwd+bwd); target <= 2.5x")
    print(f"{'batch':>6} {'clean ms':>9} {'ibp torch ms':>13} {'ratio':>6} {'ibp triton ms':>14} {'ratio':>6}")
    for m in batches:
        x = torch.rand(m, 1, 28, 28, device=DEVICE)
        y = torch.randint(0, 10, (m,), device=DEVICE)

        def clean(x: torch.Tensor = x, y: torch.Tensor = y) -> None:
            F.cross_entropy(model(x), y).backward()

        t_clean = _ms(clean)
        row = [f"{m:6d} {t_clean:9.3f}"]
        for k, net in nets.items():
            t = _ms(_fwd_bwd(partial(net, x - 0.1, x + 0.1)))
            row.append(f"{t:{13 if k == 'torch' else 14}.3f} {t / t_clean:5.2f}x")
        print(" ".join(row))


def interpret_check() -> int:
    """Run the kernel tests' quickest cases under the Triton interpreter in a subprocess."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = ("import torch; from boundc.kernels.interval_affine import interval_affine as f, "
            "interval_affine_reference as r; torch.manual_seed(0); l=torch.randn(37,45); u=l+torch.rand(37,45); "
            "w=torch.randn(33,45); b=torch.randn(33); a=f(l,u,w,b,relu_input=True); e=r(l,u,w,b,relu_input=True); "
            "err=max((p-q).abs().max().item() for p,q in zip(a,e)); print(f'interpreter sanity check: max |fused - "
            "reference| = {err:.2e}'); assert err < 1e-3")
    return subprocess.call([sys.executable, "-c", code], env=env)


def main() -> int:
    """Parse arguments and print the tables (or explain why there are none)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="128,512,2048")
    p.add_argument("--widths", default="256,1024,4096,8192")
    p.add_argument("--quick", action="store_true", help="batches 128,512 and widths 256,1024,4096 only")
    p.add_argument("--peak-gbs", type=float, default=0.0)
    p.add_argument("--peak-tflops", type=float, default=0.0)
    p.add_argument("--interpret-check", action="store_true", help="without CUDA: tiny CPU interpreter check")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("bench/kernels.py: no CUDA device available - the GPU benchmark needs one; no figures produced.")
        return interpret_check() if args.interpret_check else 0
    try:
        import triton
    except ImportError as err:
        print(f"bench/kernels.py: Triton cannot be imported ({err}); install boundc[gpu]. No figures produced.")
        return 0
    batches = [128, 512] if args.quick else [int(b) for b in args.batches.split(",")]
    widths = [256, 1024, 4096] if args.quick else [int(w) for w in args.widths.split(",")]
    name = torch.cuda.get_device_name()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"{name}; torch {torch.__version__}, triton {triton.__version__}; commit {commit or '?'}; "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; "
          f"matmul tf32={torch.backends.cuda.matmul.allow_tf32}")
    peak = _peaks(name, args)
    bench_linear(batches, widths, peak)
    bench_conv(batches, peak)
    bench_ibp_ratio(batches)
    return 0


if __name__ == "__main__":
    sys.exit(main())
