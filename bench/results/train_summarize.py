"""Summarise the certified-training result files (train_mnist_*.json) into train_summary.md."""

from __future__ import annotations

import glob
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def _pct(acc: float | None) -> str:
    return "" if acc is None else f"{100 * (1 - acc):.2f}"


def main() -> None:
    """One row per run: schedule, wall clock, and the errors (%) of its most complete evaluation."""
    lines = ["# Certified training on MNIST (IBP paper's small CNN), this 2-core CPU", "",
             "Errors in %. PGD: 200 steps x 10 restarts on the first 1000 test images; every verified "
             "column on the full 10k test set. `best bound`: per margin the highest lower bound of IBP, "
             "CROWN-IBP and alpha-CROWN (alpha-CROWN only on samples still open). `complete`: then PGD and "
             "the exact MILP (HiGHS, 60 s per margin; time-outs count as not verified), the protocol of "
             "the paper's verified column. Training: one thread each, two runs side by side (some runs also "
             "beside an evaluation; each file's train_command says).", "",
             "| file | eps | eps_train | epochs | train min | clean | PGD | IBP | CROWN-IBP | best bound | complete "
             "| MILP undecided |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(glob.glob(f"{HERE}/train_mnist_*.json")):
        d = json.load(open(path))
        evals = d.get("evaluations") or [d["evaluation"]]
        ev = max(evals, key=lambda e: len(e.get("verified", {})))
        cfg = ev["train_config"]
        v = ev["verified"]
        lines.append(f"| {os.path.basename(path)} | {ev['eps']:g} | {cfg['eps_train']:g} | {cfg['epochs']} | "
                     f"{d['train_wall_clock_seconds'] / 60:.1f} | {_pct(ev['clean'])} | {_pct(ev['pgd'])} | "
                     f"{_pct(v.get('ibp'))} | {_pct(v.get('crown-ibp'))} | {_pct(v.get('best bound'))} | "
                     f"{_pct(v.get('complete MILP'))} | {ev.get('cascade', {}).get('undecided (time-outs)', '')} |")
    open(f"{HERE}/train_summary.md", "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
