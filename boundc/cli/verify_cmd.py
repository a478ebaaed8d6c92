"""``boundc verify``: one VNN-LIB property, or a whole benchmark (``--instances``)."""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

from boundc.cli.common import add_command, any_int, existing_file, method_names, note, positive_float, positive_int, progress
from boundc.errors import BoundcError

#: The default: the tightest method boundc has.
DEFAULT_METHOD = "alpha-crown"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``verify`` sub-command."""
    p = add_command(sub, "verify", help="verify a VNN-LIB property of an ONNX model (VNN-COMP result format)",
                    description="Decide a VNN-LIB property of an ONNX model: unsat (verified), sat (a counterexample "
                    "confirmed in onnxruntime) or unknown.\nAttack first, then bound with --method, splitting the "
                    "input box of low-dimensional inputs.")
    p.add_argument("model", nargs="?", type=existing_file, help="model.onnx")
    p.add_argument("prop", nargs="?", type=existing_file, help="property.vnnlib (or .vnnlib.gz)")
    p.add_argument("--instances", type=existing_file,
                   help="a benchmark's instances.csv (onnx, vnnlib, timeout per row) to run instead of one property")
    default = DEFAULT_METHOD if DEFAULT_METHOD in method_names() else "ibp"
    p.add_argument("--method", default=default, choices=method_names(),
                   help="bound method; the default is the tightest one boundc has (see `boundc methods`)")
    p.add_argument("--timeout", type=positive_float, default=None,
                   help="seconds per property (default 60; with --instances: a cap on each row's listed timeout)")
    p.add_argument("--out", help="write the result here (single property; default: stdout only), or the results "
                   "CSV (--instances; default: BENCH_METHOD_results.csv in the current directory)")
    p.add_argument("--limit", type=positive_int, default=None, help="with --instances: only the first N instances")
    p.add_argument("--seed", type=any_int, default=0, help="attack seed")
    p.add_argument("--complete", action="store_true",
                   help="decide boxes too large to split with an exact MILP (HiGHS); ReLU networks")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar for --instances (it is drawn only on a terminal anyway)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run one property or a benchmark."""
    if args.instances:
        if args.model or args.prop:
            raise BoundcError("give either MODEL.onnx PROP.vnnlib or --instances, not both")
        return run_instances(args)
    if not args.model or not args.prop:
        raise BoundcError("give MODEL.onnx PROP.vnnlib, or --instances DIR/instances.csv")
    from boundc.verify import VerifyOptions, verify

    opts = VerifyOptions(method=args.method, timeout=args.timeout or 60.0, complete=args.complete, seed=args.seed)
    res = verify(args.model, args.prop, opts)
    text = res.vnncomp()
    if args.out:
        Path(args.out).write_text(text)
    sys.stdout.write(text)
    print(f"# {res.status} in {res.time:.2f} s (method {res.method}, {res.boxes} boxes) {res.detail}",
          file=sys.stderr)
    return 0


def _known(csv_dir: Path) -> dict[tuple[str, str], str]:
    path = csv_dir / "known_results.csv"
    if not path.exists():
        return {}
    with open(path) as fh:
        return {(os.path.normpath(r["onnx"]), os.path.normpath(r["vnnlib"])): r["result"] for r in csv.DictReader(fh)}


def run_instances(args: argparse.Namespace) -> int:
    """Every instance of a benchmark with a progress bar; writes a results CSV."""
    from boundc.verify import VerifierModel, VerifyOptions, verify

    csv_path = Path(args.instances)
    root = csv_path.parent
    with open(csv_path) as fh:
        rows = [r for r in csv.reader(fh) if r and r[0].strip()]
    for i, r in enumerate(rows):
        if len(r) < 2:
            raise BoundcError(f"{csv_path}, row {i + 1}: expected onnx,vnnlib[,timeout], got {','.join(r)!r}")
    if args.limit:
        rows = rows[:args.limit]
    known = _known(root)
    out = Path(args.out or f"{root.name}_{args.method}_results.csv")
    note(f"{len(rows)} instances of {root.name} with {args.method!r}; results -> {out}")
    models: dict[str, VerifierModel] = {}
    counts: dict[str, int] = {"unsat": 0, "sat": 0, "unknown": 0, "error": 0}
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["onnx", "vnnlib", "result", "time_s", "known", "method", "detail"])
        bar = progress(rows, args.progress, desc=f"{root.name} [{args.method}]", unit="inst")
        for onnx_rel, prop_rel, *rest in bar:
            onnx_rel, prop_rel = onnx_rel.strip(), prop_rel.strip()
            try:
                limit = float(rest[0]) if rest and rest[0].strip() else 60.0
            except ValueError:
                raise BoundcError(f"{csv_path}: bad timeout {rest[0]!r} for {onnx_rel}, {prop_rel}") from None
            timeout = min(limit, args.timeout) if args.timeout else limit
            t0 = time.monotonic()
            try:
                key = os.fspath(root / onnx_rel)
                if key not in models:
                    models[key] = VerifierModel(key, args.method)
                res = verify(models[key], root / prop_rel, VerifyOptions(
                    method=args.method, timeout=timeout, complete=args.complete, seed=args.seed))
                status, detail, method = res.status, res.detail, res.method
            except (BoundcError, OSError) as err:
                status, detail, method = "error", str(err).splitlines()[0], args.method
            dt = time.monotonic() - t0
            counts[status] += 1
            truth = known.get((os.path.normpath(onnx_rel), os.path.normpath(prop_rel)), "")
            w.writerow([onnx_rel, prop_rel, status, f"{dt:.3f}", truth, method, detail])
            fh.flush()
            bar.set_postfix(counts)
    print(f"{root.name}: {counts} -> {out}")
    return 0
