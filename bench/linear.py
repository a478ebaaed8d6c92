"""Scoreboard of the linear-relaxation engine: time, peak memory and mean margin bound, side by side.

``python bench/linear.py [--batches 16,64] [--eps 0.01] [--models ...] [--methods ...]`` compiles
each model (MNIST-shaped input, random weights, margins spec with 9 rows) with IBP, CROWN-IBP,
CROWN and α-CROWN (20 Adam steps) and prints, per batch size, one row per (model, method):

* ``cold s``: the first bound call at the full batch (after a warm-up call on 2 samples: it also
  pays for growing the heap to its working size);
* ``warm s``: the median of further calls (up to ``--repeat``, while they take under 20 s in
  all), what a verifier or a training loop sees, and the same as a multiple of one clean forward
  of the model at that batch size (``× fwd``, itself the mean of 10 warm calls);
* ``peak MB``: the peak of memory in use during the call above its level before: on CPU the C
  heap's bytes in use (glibc ``mallinfo2``) read after every aten op in a second, untimed call
  under a dispatch mode (where glibc is missing: resident-memory growth of the timed call,
  ``ru_maxrss``, which misses memory the heap had already grown to; every (model, method, batch)
  runs in a fresh subprocess); with ``--device cuda`` the CUDA allocator's exact peak;
* ``coef MB``: the largest tensor of rank ≥ 3 the call creates (coefficient tensors are
  ``(batch, rows, ...)``), found in that same untimed call;
* ``margin``: the mean lower bound of the margins ``y_true − y_j`` (higher is tighter);
* ``GMAC``: the multiply-adds of the call's matrix products and convolutions (``torch.utils.flop_counter``,
  another untimed call; elementwise work, ``fold`` and ``unfold`` are not counted), and ``GMAC/s``, that
  count over the warm time.  The forward's count gives ``MAC x fwd``: the part of ``x fwd`` that is work
  rather than speed.  A target ratio of times cannot hold where the same ratio of MACs is above it
  and the method runs its products no faster per MAC than the forward (``work`` lines below the targets).

The linear methods bound the margins from below only (``LinearOptions(output_upper=False)``, what
certification and certified training read); ``--upper`` bounds both sides (IBP always does).

Then the targets of the engine issue as ratios of warm times inside this run: CROWN / forward ≤ 300,
α-CROWN / CROWN ≤ 30, CROWN-IBP / IBP ≤ 4, peak / largest coefficient tensor ≤ 2, and below them the
same ratios of MACs.
Run it with one torch thread on a shared CPU (``--threads``, default 1).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

METHODS = ["ibp", "crown-ibp", "crown", "alpha-crown"]
MODELS = ["small", "medium", "resnet", "bn_pool"]


def _heap_in_use() -> Callable[[], int] | None:
    """Bytes the C heap has handed out now (glibc ``mallinfo2``: small blocks plus mmapped ones), or
    ``None`` where that call does not exist."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        info = libc.mallinfo2
    except (OSError, AttributeError):
        return None

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    info.restype = MallInfo2

    def in_use() -> int:
        m = info()
        return m.uordblks + m.hblkhd

    return in_use


def _tensor_memory_mb(fn) -> tuple[float, float | None]:
    """While ``fn()`` runs: MB of the largest rank >= 3 tensor any aten op returns, and the peak of heap
    memory in use above its level before the call, read after every op (``None`` without glibc)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    in_use = _heap_in_use()
    base = in_use() if in_use else 0

    class Watch(TorchDispatchMode):
        biggest = 0
        peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dim() >= 3:
                    Watch.biggest = max(Watch.biggest, t.numel() * t.element_size())
            if in_use:
                Watch.peak = max(Watch.peak, in_use() - base)
            return out

    with Watch():
        fn()
    return Watch.biggest / 2**20, (Watch.peak / 2**20 if in_use else None)


def _gmac(fn) -> float:
    """Billions of multiply-adds in the matrix products and convolutions ``fn()`` runs."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as count:
        fn()
    return count.get_total_flops() / 2e9


def run_one(model: str, method: str, batch: int, eps: float, threads: int, device: str = "cpu",
            upper: bool = False, repeat: int = 5) -> dict:
    """Compile and time one method on one model; returns a dict of figures."""
    import torch

    import boundc
    from boundc import examples
    from boundc.options import CompileOptions, LinearOptions
    from boundc.runtime import tune_allocator

    tune_allocator()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = examples.build(model).to(device)
    x = torch.rand(batch, 1, 28, 28, device=device)
    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    with torch.no_grad():
        C = boundc.margin_spec(m(x).argmax(1), 10)
    opts = CompileOptions(linear=LinearOptions(alpha_iterations=20, output_upper=upper))
    bm = boundc.compile(m, x[:2], method=method, options=opts)
    xl, xu = boundc.linf_box(x, eps)
    with torch.no_grad():
        bm(xl[:2], xu[:2], C[:2])  # warm-up
        if cuda:  # Triton kernels compile (and autotune) per shape: warm up at the timed shape too
            bm(xl, xu, C)
        m(x)
        sync()
        t = time.perf_counter()
        for _ in range(10):
            m(x)
        sync()
        forward = (time.perf_counter() - t) / 10
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    t = time.perf_counter()
    with torch.no_grad():
        lower, _ = bm(xl, xu, C)
    sync()
    dt = time.perf_counter() - t
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    if cuda:  # exact on CUDA: the allocator's peak over what was allocated before the call
        peak = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    warm: list[float] = []
    with torch.no_grad():
        while len(warm) < repeat and sum(warm) + dt < 20:
            t = time.perf_counter()
            bm(xl, xu, C)
            sync()
            warm.append(time.perf_counter() - t)
    warm_time = sorted(warm)[len(warm) // 2] if warm else dt
    with torch.no_grad():
        coef, live = _tensor_memory_mb(lambda: bm(xl, xu, C))
    if live is not None and not cuda:
        peak = live
    with torch.no_grad():
        gmac, forward_gmac = _gmac(lambda: bm(xl, xu, C)), _gmac(lambda: m(x))
    return {"time": warm_time, "cold": dt, "warm_calls": len(warm), "forward": forward,
            "gmac": gmac, "forward_gmac": forward_gmac,
            "margin": lower.mean().item(), "peak_mb": peak, "coef_mb": coef,
            "verified": (lower > 0).all(1).float().mean().item()}


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.1f}"


def main() -> None:
    """Run every (batch, model, method) in a subprocess and print the table and the target ratios."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="16,64", help="comma-separated batch sizes")
    ap.add_argument("--eps", type=float, default=0.01, help="L-inf radius of the input box")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--device", default="cpu", help="torch device (on cuda, peak MB is the allocator's exact peak)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--upper", action="store_true", help="linear methods also bound the margins from above")
    ap.add_argument("--repeat", type=int, default=5, help="warm calls timed after the cold one (median reported)")
    ap.add_argument("--json", help="also write every figure to this JSON file")
    ap.add_argument("--one", nargs=3, metavar=("MODEL", "METHOD", "BATCH"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one[0], a.one[1], int(a.one[2]), a.eps, a.threads, a.device, a.upper,
                                 a.repeat)))
        return
    methods = a.methods.split(",")
    results = []
    where = f"CPU, {a.threads} torch thread(s)" if a.device == "cpu" else a.device
    sides = "lower and upper" if a.upper else "lower"
    print(f"boundc linear methods, {where}, eps {a.eps}, margins spec (9 rows), {sides} bounds")
    for batch in (int(b) for b in a.batches.split(",")):
        print(f"\nbatch {batch}")
        print(f"{'model':8s} {'method':12s} {'cold s':>9s} {'warm s':>9s} {'x fwd':>8s} {'peak MB':>8s} {'coef MB':>8s} "
              f"{'peak/coef':>9s} {'margin':>10s} {'GMAC':>8s} {'GMAC/s':>7s} {'MAC x fwd':>9s}")
        for model in a.models.split(","):
            times, per_fwd, work = {}, {}, {}
            for method in methods:
                out = subprocess.run([sys.executable, __file__, "--one", model, method, str(batch), "--eps",
                                      str(a.eps), "--threads", str(a.threads), "--device", a.device,
                                      "--repeat", str(a.repeat)]
                                     + (["--upper"] if a.upper else []),
                                     capture_output=True, text=True)
                if out.returncode:
                    print(f"{model:8s} {method:12s} failed: {out.stderr.strip().splitlines()[-1]}", flush=True)
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                r.update(model=model, method=method, batch=batch)
                results.append(r)
                times[method] = r["time"]
                per_fwd[method] = r["time"] / r["forward"]
                work[method] = r["gmac"]
                print(f"{model:8s} {method:12s} {r['cold']:9.3f} {r['time']:9.3f} {r['time'] / r['forward']:8.0f} "
                      f"{r['peak_mb']:8.0f} {r['coef_mb']:8.1f} {_ratio(r['peak_mb'], r['coef_mb']):>9s} "
                      f"{r['margin']:10.4f} {r['gmac']:8.3f} {r['gmac'] / r['time']:7.1f} "
                      f"{r['gmac'] / r['forward_gmac']:9.0f}", flush=True)
                work["forward"] = r["forward_gmac"]
            print(f"{'':8s} targets: crown/fwd {_ratio(per_fwd.get('crown'), 1.0)} (<= 300)   "
                  f"alpha/crown {_ratio(times.get('alpha-crown'), times.get('crown'))} (<= 30)   "
                  f"crown-ibp/ibp {_ratio(times.get('crown-ibp'), times.get('ibp'))} (<= 4)", flush=True)
            print(f"{'':8s} work:    crown/fwd {_ratio(work.get('crown'), work.get('forward'))}            "
                  f"alpha/crown {_ratio(work.get('alpha-crown'), work.get('crown'))}           "
                  f"crown-ibp/ibp {_ratio(work.get('crown-ibp'), work.get('ibp'))}  (ratios of MACs)", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
