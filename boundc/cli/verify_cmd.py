"""``boundc verify``: one VNN-LIB property, or a whole benchmark (``--instances``).

With ``--instances`` the results CSV has one row per instance and the columns
:data:`RESULT_COLUMNS`; :func:`run_instances_csv` is the code path ``bench/vnncomp.py`` uses too.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boundc.cli.common import add_command, any_int, existing_file, method_names, note, positive_float, positive_int, progress
from boundc.errors import BoundcError
from boundc.verify.verifier import DEFAULT_METHOD

#: Columns of the ``--instances`` results CSV, in order.
RESULT_COLUMNS = ["instance", "result", "time", "method", "error", "onnx", "vnnlib", "timeout", "known", "detail"]

#: The values of the ``result`` column, in the order the summary lists them.
RESULTS = ["unsat", "sat", "unknown", "timeout", "error"]

#: Timeout of a row of instances.csv without one (seconds).
DEFAULT_ROW_TIMEOUT = 60.0

#: The ``error`` text of an out-of-memory failure.
OUT_OF_MEMORY = "out of memory"

INSTANCES_HELP = """\
--instances results CSV (--out; default BENCH_METHOD_results.csv), one row per instance, columns:
  instance  ONNX_STEM-VNNLIB_STEM (the VNN-COMP scoring's instance name)
  result    unsat (verified) | sat (counterexample) | unknown | timeout (unknown: ran out of time) | error
  time      seconds for the instance, wall clock (includes compiling the model on its first instance)
  method    bound method used
  error     the one-line error message when result is error ("out of memory" for OOM), else empty
  onnx, vnnlib  the paths as listed in instances.csv (relative to its folder)
  timeout   the seconds allowed (the row's timeout, capped by --timeout)
  known     the known result from known_results.csv beside instances.csv (empty if none)
  detail    the verifier's note (why unknown, or how sat was found)
Instances are run grouped by ONNX model (first-appearance order); only the current model is kept in memory."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``verify`` sub-command."""
    p = add_command(sub, "verify", help="verify a VNN-LIB property of an ONNX model (VNN-COMP result format)",
                    description="Decide a VNN-LIB property of an ONNX model: unsat (verified), sat (a counterexample "
                    "confirmed in onnxruntime) or unknown.\nAttack first, then bound with --method, splitting the "
                    "input box of low-dimensional inputs.", epilog=INSTANCES_HELP)
    p.add_argument("model", nargs="?", type=existing_file, help="model.onnx")
    p.add_argument("prop", nargs="?", type=existing_file, help="property.vnnlib (or .vnnlib.gz)")
    p.add_argument("--instances", type=existing_file,
                   help="a benchmark's instances.csv (onnx, vnnlib, timeout per row) to run instead of one property")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=method_names(),
                   help="bound method; the default is the tightest one boundc has (see `boundc methods`)")
    p.add_argument("--timeout", type=positive_float, default=None,
                   help="seconds per property (default 60; with --instances: a cap on each row's listed timeout)")
    p.add_argument("--out", help="write the result here (single property; default: stdout only), or the results "
                   "CSV (--instances; default: BENCH_METHOD_results.csv in the current directory)")
    p.add_argument("--limit", type=positive_int, default=None, help="with --instances: only the first N instances")
    p.add_argument("--seed", type=any_int, default=0, help="attack seed")
    p.add_argument("--complete", action="store_true",
                   help="decide boxes too large to split with an exact MILP (HiGHS); ReLU networks")
    p.add_argument("--device", default="cpu", help="where the bounds are computed: cpu, cuda or auto (attacks run on "
                   "the CPU)")
    p.add_argument("--precision", default="float64", choices=["float64", "float32"],
                   help="dtype of the bounds (float32: faster, with a safety margin on every bound)")
    p.add_argument("--branching", default="fsb", choices=["fsb", "babsr"],
                   help="branch-and-bound neuron choice: filtered smart branching or the BaBSR score alone")
    p.add_argument("--batch", type=positive_int, default=512, help="input boxes bounded per call (input splitting)")
    p.add_argument("--bab-batch", type=positive_int, default=128, help="branch-and-bound domains split per round")
    p.add_argument("--no-bab", dest="bab", action="store_false",
                   help="no branch and bound on ReLU splits for inputs too large to split")
    p.add_argument("--no-tiles", dest="tiles", action="store_false",
                   help="no tiled MILP bounds before branch and bound (networks with one hidden conv ReLU layer)")
    p.add_argument("--shard", type=shard_spec, default=None, metavar="K/N",
                   help="with --instances: only the instances whose index is K modulo N (parallel sweeps)")
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
    if args.shard is not None:
        raise BoundcError("--shard K/N selects instances of --instances; a single property has none to select")
    from boundc.verify import verify

    opts = verify_options(args, args.timeout or 60.0)
    res = verify(args.model, args.prop, opts)
    text = res.vnncomp()
    if args.out:
        Path(args.out).write_text(text)
    sys.stdout.write(text)
    print(f"# {res.status} in {res.time:.2f} s (method {res.method}, {res.boxes} boxes) {res.detail}",
          file=sys.stderr)
    return 0


def shard_spec(text: str) -> tuple[int, int]:
    """``K/N`` with ``0 <= K < N`` (an argparse type)."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K/N, got {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"K/N needs 0 <= K < N, got {text!r}")
    return k, n


def verify_options(args: argparse.Namespace, timeout: float) -> Any:
    """The :class:`~boundc.verify.VerifyOptions` the flags describe."""
    from boundc.verify import VerifyOptions
    from boundc.verify.bab import BabOptions, Branching

    return VerifyOptions(method=args.method, timeout=timeout, complete=args.complete, seed=args.seed,
                         precision=args.precision, device=args.device, bab=args.bab, batch=args.batch,
                         tile_share=VerifyOptions.tile_share if args.tiles else 0.0,
                         bab_options=BabOptions(branching=Branching(args.branching), progress=args.progress,
                                                batch=args.bab_batch))


# ---------------------------------------------------------------- benchmarks (--instances)

@dataclass(frozen=True)
class Instance:
    """One row of ``instances.csv``: paths relative to its folder and the timeout in seconds."""

    onnx: str
    vnnlib: str
    timeout: float

    @property
    def name(self) -> str:
        """``ONNX_STEM-VNNLIB_STEM``, the VNN-COMP scoring's name of the instance."""
        return instance_name(self.onnx, self.vnnlib)


def instance_name(onnx: str, vnnlib: str) -> str:
    """``ONNX_STEM-VNNLIB_STEM`` (``.gz`` dropped), the instance name VNN-COMP's scoring prints."""
    def stem(p: str) -> str:
        name = os.path.basename(p.strip())
        name = name[:-3] if name.endswith(".gz") else name
        return os.path.splitext(name)[0]
    return f"{stem(onnx)}-{stem(vnnlib)}"


def read_instances(csv_path: str | os.PathLike, limit: int | None = None) -> list[Instance]:
    """The rows of a benchmark's ``instances.csv`` (the first ``limit`` when given)."""
    rows: list[Instance] = []
    with open(csv_path, newline="") as fh:
        for i, r in enumerate(csv.reader(fh)):
            if not r or not r[0].strip():
                continue
            if len(r) < 2:
                raise BoundcError(f"{csv_path}, row {i + 1}: expected onnx,vnnlib[,timeout], got {','.join(r)!r}")
            onnx, prop = r[0].strip(), r[1].strip()
            try:
                limit_s = float(r[2]) if len(r) > 2 and r[2].strip() else DEFAULT_ROW_TIMEOUT
            except ValueError:
                raise BoundcError(f"{csv_path}, row {i + 1}: bad timeout {r[2]!r} for {onnx}, {prop}") from None
            rows.append(Instance(onnx, prop, limit_s))
    return rows[:limit] if limit else rows


def read_known(csv_dir: str | os.PathLike) -> dict[tuple[str, str], str]:
    """``(onnx, vnnlib) -> result`` from ``known_results.csv`` in ``csv_dir`` (normalised paths, a ``.gz`` suffix
    dropped, so ``X.vnnlib`` in instances.csv finds ``X.vnnlib.gz``; empty if absent)."""
    path = Path(csv_dir) / "known_results.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as fh:
        return {instance_key(r["onnx"], r["vnnlib"]): r["result"] for r in csv.DictReader(fh)}


def instance_key(onnx: str, vnnlib: str) -> tuple[str, str]:
    """The key of an instance in :func:`read_known` (normalised paths without a ``.gz`` suffix)."""
    def norm(p: str) -> str:
        p = os.path.normpath(p.strip())
        return p[:-3] if p.endswith(".gz") else p

    return norm(onnx), norm(vnnlib)


def is_unsound(result: str, known: str) -> bool:
    """True for a wrong definite answer: ``unsat`` on a known ``sat`` instance, or ``sat`` on a known ``unsat`` one."""
    return (result, known) in (("unsat", "sat"), ("sat", "unsat"))


def _oom_types() -> tuple[type[BaseException], ...]:
    import torch

    types: list[type[BaseException]] = [MemoryError]
    for owner in (torch, torch.cuda):
        t = getattr(owner, "OutOfMemoryError", None)
        if isinstance(t, type) and t not in types:
            types.append(t)
    return tuple(types)


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception as one line (multi-line messages joined with ``; ``, at most ``limit`` characters)."""
    lines = [s.strip(" -") for s in str(err).splitlines() if s.strip()]
    text = "; ".join(lines) or type(err).__name__
    if not isinstance(err, (BoundcError, OSError)):
        text = f"{type(err).__name__}: {text}"
    return text if len(text) <= limit else text[:limit - 1] + "…"


class LastModel:
    """Compiles ``VerifierModel`` s one at a time, keeping only the most recent one (or its error)."""

    def __init__(self, method: str, precision: str = "float64", device: str = "cpu") -> None:
        self.method, self.precision, self.device = method, precision, device
        self.path: str | None = None
        self.model: Any = None
        self.error: BaseException | None = None

    def get(self, path: str) -> Any:
        """The compiled model of ``path`` (re-raising the error if compiling it failed)."""
        from boundc.verify import VerifierModel

        if path != self.path:
            self.drop()
            self.path = path
            try:
                self.model = VerifierModel(path, self.method, self.precision, self.device)
            except Exception as err:
                self.error = err
                raise
        if self.error is not None:
            raise self.error
        return self.model

    def drop(self) -> None:
        """Forget the current model and free its memory."""
        self.path, self.model, self.error = None, None, None
        _free_memory()


def select_instances(csv_path: str | os.PathLike, limit: int | None = None,
                     shard: tuple[int, int] | None = None) -> list[Instance]:
    """The rows of ``instances.csv`` to run: the first ``limit``, then (``shard = (k, n)``) those whose
    index is ``k`` modulo ``n``."""
    rows = read_instances(csv_path, limit)
    return rows[shard[0]::shard[1]] if shard is not None else rows


def run_instances_csv(csv_path: str | os.PathLike, out: str | os.PathLike, options: Any, *,
                      timeout_cap: float | None = None, limit: int | None = None,
                      shard: tuple[int, int] | None = None, show_progress: bool = True,
                      debug: bool = False) -> Counter:
    """Run the instances of a benchmark (:func:`select_instances`) and write the results CSV
    (:data:`RESULT_COLUMNS`).

    ``options``: the :class:`~boundc.verify.VerifyOptions` of every instance (its timeout is replaced
    by the row's, capped at ``timeout_cap``).  Instances run grouped by ONNX model, compiling each
    model once and keeping only the current one.  A failure of one instance (bad input, out of
    memory, or an internal error when ``debug`` is False) is a row with result ``error`` and its
    one-line message; the run goes on.  Returns the count of each result, plus ``unsound`` (wrong
    definite answers against ``known_results.csv``).
    """
    from boundc.verify import verify

    csv_path = Path(csv_path)
    root = csv_path.parent
    method = options.method
    rows = select_instances(csv_path, limit, shard)
    order = {}
    for inst in rows:
        order.setdefault(inst.onnx, len(order))
    rows = sorted(rows, key=lambda inst: order[inst.onnx])  # stable: keeps the listed order within a model
    known = read_known(root)
    oom = _oom_types()
    models = LastModel(method, str(options.precision), str(options.device))
    counts: Counter = Counter({r: 0 for r in RESULTS})
    counts["unsound"] = 0
    log_lines = not sys.stderr.isatty()
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(RESULT_COLUMNS)
        bar = progress(rows, show_progress, desc=f"{root.name} [{method}]", unit="inst")
        for k, inst in enumerate(bar):
            timeout = min(inst.timeout, timeout_cap) if timeout_cap else inst.timeout
            t0 = time.monotonic()
            used, detail, error = method, "", ""
            try:
                model = models.get(os.fspath(root / inst.onnx))
                res = verify(model, root / inst.vnnlib, dataclasses.replace(options, timeout=timeout))
                status, detail, used = res.status, res.detail, res.method or method
                if status == "unknown" and (detail.startswith("timeout") or res.time >= timeout):
                    status = "timeout"
            except oom:
                models.drop()
                status, error = "error", OUT_OF_MEMORY
            except (BoundcError, OSError) as err:
                status, error = "error", one_line(err)
            except Exception as err:  # noqa: BLE001  one broken instance must not end a sweep
                if debug:
                    raise
                status, error = "error", "internal error: " + one_line(err)
            dt = time.monotonic() - t0
            truth = known.get(instance_key(inst.onnx, inst.vnnlib), "")
            counts[status] += 1
            counts["unsound"] += is_unsound(status, truth)
            w.writerow([inst.name, status, f"{dt:.3f}", used, error, inst.onnx, inst.vnnlib, f"{timeout:g}", truth,
                        detail])
            fh.flush()
            bar.set_postfix({r: n for r, n in counts.items() if n})
            if log_lines:
                flag = "  UNSOUND" if is_unsound(status, truth) else ""
                print(f"[{k + 1}/{len(rows)}] {inst.name}: {status} in {dt:.2f} s"
                      f"{f' (known {truth})' if truth else ''}{flag}{f' -- {error}' if error else ''}",
                      file=sys.stderr, flush=True)
    models.drop()
    return counts


def summary_lines(counts: Counter, times: dict[str, float] | None = None) -> list[str]:
    """One line per result (count, and total seconds when ``times`` is given), then unsound answers if any."""
    total = sum(counts[r] for r in RESULTS)
    lines = []
    for r in RESULTS:
        secs = f"  {times.get(r, 0.0):8.1f} s" if times is not None else ""
        lines.append(f"  {r:<8} {counts[r]:5d} / {total}{secs}")
    if counts.get("unsound"):
        lines.append(f"  UNSOUND  {counts['unsound']:5d} (unsat on known sat, or sat on known unsat)")
    return lines


def run_instances(args: argparse.Namespace) -> int:
    """Every instance of a benchmark with a progress bar; writes a results CSV and prints a summary."""
    csv_path = Path(args.instances)
    out = Path(args.out or f"{csv_path.parent.name}_{args.method}_results.csv")
    n = len(select_instances(csv_path, args.limit, args.shard))
    note(f"{n} instances of {csv_path.parent.name} with {args.method!r}; results -> {out}")
    counts = run_instances_csv(csv_path, out, verify_options(args, DEFAULT_ROW_TIMEOUT), timeout_cap=args.timeout,
                               limit=args.limit, shard=args.shard, show_progress=args.progress,
                               debug=bool(getattr(args, "debug", False)))
    times: dict[str, float] = {}
    with open(out, newline="") as fh:
        for r in csv.DictReader(fh):
            times[r["result"]] = times.get(r["result"], 0.0) + float(r["time"])
    print(f"{csv_path.parent.name} [{args.method}] -> {out}")
    print("\n".join(summary_lines(counts, times)))
    return 0
