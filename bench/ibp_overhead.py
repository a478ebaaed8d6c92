"""IBP overhead: time of the bound network ``bm(xl, xu)`` over the clean ``model(x)``.

Run: ``python bench/ibp_overhead.py [--batch 256] [--repeats 20]``.  Both are
timed side by side in this one run (interleaved, median of the repeats) for the
IBP paper's medium and large CNNs, plus the compile time (the first compile in
a process includes torch.export's one-time start-up, reported separately).
Two GEMMs per affine layer make 2.0 the floor of the ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import boundc
from boundc import examples


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _measure(name: str, batch: int, repeats: int) -> str:
    """One table row: clean vs bound times (inference and training step) and compile time."""
    model = examples.build(name)
    x = torch.rand(batch, 1, 28, 28)
    t0 = time.perf_counter()
    bm = boundc.compile(model, x[:2])
    compile_s = time.perf_counter() - t0
    xl, xu = boundc.linf_box(x, 0.1, clip=(0.0, 1.0))
    C = boundc.margin_spec(torch.randint(0, 10, (batch,)), 10)
    with torch.no_grad():
        for _ in range(3):  # warm up
            model(x), bm(xl, xu), bm(xl, xu, C)
        t_model, t_bound, t_spec = [], [], []
        for _ in range(repeats):  # interleaved so both see the same machine state
            t_model.append(_median_time(lambda: model(x), 1))
            t_bound.append(_median_time(lambda: bm(xl, xu), 1))
            t_spec.append(_median_time(lambda: bm(xl, xu, C), 1))
    tm, tb, ts = (statistics.median(t) for t in (t_model, t_bound, t_spec))

    def clean_step():
        model.zero_grad()
        model(x).sum().backward()

    def bound_step():
        model.zero_grad()
        bm(xl, xu, C)[0].sum().backward()

    clean_step(), bound_step()
    t_clean_train, t_bound_train = [], []
    for _ in range(max(3, repeats // 4)):
        t_clean_train.append(_median_time(clean_step, 1))
        t_bound_train.append(_median_time(bound_step, 1))
    train_ratio = statistics.median(t_bound_train) / statistics.median(t_clean_train)
    return (f"{name:8} {batch:5d} {tm * 1e3:12.1f} {tb * 1e3:13.1f} {tb / tm:6.2f} {ts / tm:8.2f} "
            f"{train_ratio:12.2f} {compile_s:10.2f}")


def main() -> None:
    """Print the overhead table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--models", default="medium,large")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    t0 = time.perf_counter()
    boundc.compile(examples.build("small"), torch.rand(2, 1, 28, 28))
    print(f"first compile in this process (small CNN, includes torch.export start-up): {time.perf_counter() - t0:.2f} s\n")
    print(f"{'model':8} {'batch':>5} {'model(x) ms':>12} {'bm(xl,xu) ms':>13} {'ratio':>6} "
          f"{'ratio C':>8} {'train ratio':>12} {'compile s':>10}")
    for name in args.models.split(","):
        print(_measure(name, args.batch, args.repeats))
    print("\nratio = bm(xl, xu) / model(x); ratio C = bm(xl, xu, C) (margins, elided) / model(x); "
          "train ratio = (bound fwd+bwd) / (clean fwd+bwd)")


if __name__ == "__main__":
    main()
