"""Bundle one `boundc train` run and its `boundc evaluate --json` files into a bench/results JSON.

    python bench/collect_train_run.py RUN_DIR OUT.json EVAL.json [EVAL.json ...] --note "..."

RUN_DIR is the training `--out` directory: it holds `train.json` (written by the trainer) and the
`command.txt` the run was started with. Afterwards run `python bench/results/train_summarize.py`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PER_EPOCH_KEYS = ("epoch", "test_clean", "test_verified", "eps_train", "kappa")


def collect(run_dir: Path, evals: list[Path], note: str) -> dict:
    """The result record: command, wall clock, schedule, per-epoch curve and every evaluation."""
    summary = json.loads((run_dir / "train.json").read_text())
    history = summary["history"]
    return {
        "train_command": (run_dir / "command.txt").read_text().strip(),
        "train_wall_clock_seconds": summary["train_seconds"],
        "schedule": summary.get("schedule"),
        "per_epoch": [{k: h[k] for k in PER_EPOCH_KEYS if k in h} for h in history],
        "per_epoch_note": "test_clean / test_verified (IBP) on the first 1000 MNIST test images at the evaluation eps",
        "note": note,
        "evaluations": [json.loads(p.read_text()) for p in evals],
    }


def main() -> None:
    """Parse the command line and write the bundle."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("evals", type=Path, nargs="+")
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    args.out.write_text(json.dumps(collect(args.run_dir, args.evals, args.note), indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
