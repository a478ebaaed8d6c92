"""Benchmark of the linear-relaxation methods: time, peak memory and mean margin lower bound, side by side.

``python bench/linear.py [--batch 64] [--eps 0.01]`` runs IBP, CROWN-IBP, CROWN and α-CROWN (20 Adam
steps) on the IBP paper's small and medium CNNs and the zoo ResNet (MNIST-shaped inputs, margins
spec) and prints one table.  Each (model, method) runs in a fresh subprocess so that its peak
resident memory (``ru_maxrss`` minus the compiled-but-idle baseline) is its own.  CROWN and
α-CROWN use ``LinearOptions(intersect_ibp=True)``: backward passes only for neurons IBP leaves unstable.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

METHODS = ["ibp", "crown-ibp", "crown", "alpha-crown"]
MODELS = ["small", "medium", "resnet"]


def run_one(model: str, method: str, batch: int, eps: float) -> dict:
    """Compile and time one method on one model; returns a dict of figures."""
    import torch

    import boundc
    from boundc import examples
    from boundc.options import CompileOptions, LinearOptions

    torch.manual_seed(0)
    m = examples.build(model)
    x = torch.rand(batch, 1, 28, 28)
    with torch.no_grad():
        C = boundc.margin_spec(m(x).argmax(1), 10)
    opts = CompileOptions(linear=LinearOptions(alpha_iterations=20))
    bm = boundc.compile(m, x[:2], method=method, options=opts)
    xl, xu = boundc.linf_box(x, eps)
    with torch.no_grad():
        bm(xl[:2], xu[:2], C[:2])  # warm-up
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    with torch.no_grad():
        lower, _ = bm(xl, xu, C)
    dt = time.perf_counter() - t
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return {"time": dt, "margin": lower.mean().item(), "verified": (lower > 0).all(1).float().mean().item(),
            "peak_mb": peak}


def main() -> None:
    """Run every (model, method) in a subprocess and print the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one[0], a.one[1], a.batch, a.eps)))
        return
    methods = a.methods.split(",")
    print(f"boundc linear methods, CPU, batch {a.batch}, eps {a.eps}, margins spec (9 rows)")
    head = f"{'model':8s} " + " ".join(f"{m:>28s}" for m in methods)
    print(head)
    print(f"{'':8s} " + " ".join(f"{'time s / peak MB / margin lb':>28s}" for _ in methods))
    for model in a.models.split(","):
        cells, times = [], {}
        for method in methods:
            out = subprocess.run([sys.executable, __file__, "--one", model, method, "--batch", str(a.batch),
                                  "--eps", str(a.eps)], capture_output=True, text=True)
            if out.returncode:
                cells.append(f"{'failed':>28s}")
                print(out.stderr[-2000:], file=sys.stderr)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            cells.append(f"{r['time']:8.2f} / {r['peak_mb']:7.0f} / {r['margin']:8.3f}")
            times[method] = r["time"]
        both = {"ibp", "crown-ibp"} <= set(times)
        ratio = f"   crown-ibp/ibp time = {times['crown-ibp'] / times['ibp']:.1f}x" if both else ""
        print(f"{model:8s} " + " ".join(f"{c:>28s}" for c in cells) + ratio, flush=True)


if __name__ == "__main__":
    main()
