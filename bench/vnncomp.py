"""VNN-COMP sweep: ``boundc verify --instances`` over benchmark folders, and a summary table.

Run: ``python bench/vnncomp.py [--benchmarks mnistfc,acasxu] [--limit N] [--timeout-cap S] [--method M]
[--jobs N] [--threads T] [--complete]`` or ``python bench/vnncomp.py --summarize-only``.

Each benchmark runs as its own ``python -m boundc verify --instances DIR/instances.csv`` process
(the CLI's code path, :func:`boundc.cli.verify_cmd.run_instances_csv`), ``--jobs`` of them at a
time, each with ``--threads`` torch/OpenMP threads.  Results go to
``bench/results/vnncomp/<bench>.csv`` (columns: see ``boundc verify --help``), the process log
to ``<bench>.log`` and how it was run to ``<bench>.json``.  The summary
``bench/results/vnncomp_summary.md`` has one row per results CSV: counts per result,
``unsound`` (``unsat`` on a known ``sat`` instance or ``sat`` on a known ``unsat`` one, from
``known_results.csv``), ``solved`` (= unsat + sat), and for comparison the number of instances
α,β-CROWN and the median tool solved in VNN-COMP 2021 (2022 for benchmarks only in 2022).

Official counts follow the competition's scoring script (``process_results.py``, as described
in ``_official_results/vnncomp2021_results_README.md`` and visible in
``vnncomp2021_output_singleoverhead.txt``): result words normalised (``unsat``/``holds`` →
holds, ``sat``/``violated`` → violated, anything else unsolved); the ``test_nano``/``test_tiny``
overhead rows, the ``test`` category and the results the scoring removed (:data:`OFFICIAL_SKIP`)
dropped; a tool *entered* a benchmark when it has at least one holds/violated result there; per instance, with ``h``
holds and ``v`` violated answers among the tools, an answer counts as solved unless ``h == v``,
or both ``h > 1`` and ``v > 1`` (conflict: ignored), or it is the minority answer (penalised:
the odd one out is wrong); a randgen counterexample makes ``violated`` correct.  Counting these
reproduces the Verified + Falsified columns of the official tables (e.g. mnistfc: α,β-CROWN 70).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from boundc.cli.verify_cmd import RESULT_COLUMNS, instance_name, is_unsound  # noqa: E402

SHARED = Path(os.environ.get("BOUNDC_SHARED", REPO.parent / "shared"))
DEFAULT_ROOT = SHARED / "vnncomp"
DEFAULT_OUT = REPO / "bench" / "results" / "vnncomp"
DEFAULT_SUMMARY = REPO / "bench" / "results" / "vnncomp_summary.md"

#: Official results folders, in order of preference: a benchmark is compared with the first year that has it.
OFFICIAL_DIRS = [("2021", "vnncomp2021_results_csv"), ("2022", "vnncomp2022_results_csv")]
#: α,β-CROWN's tool name in each year's CSVs.
ABCROWN = {"a-b-CROWN", "alpha_beta_crown"}
#: Results the official scoring removed (tool -> benchmarks): RPM's mnistfc in 2021 (a VNN-LIB parsing bug);
#: marabou's sri_resnet_a/b in 2022 (every answer ``unsat``; not among the scored tools there).
OFFICIAL_SKIP = {"RPM": {"mnistfc"}, "marabou": {"sri_resnet_a", "sri_resnet_b"}}
HOLDS, VIOLATED = "holds", "violated"


# ---------------------------------------------------------------- official results

def normalise_result(text: str) -> str:
    """An official result word as ``holds``, ``violated``, ``timeout`` or ``unknown`` (errors included)."""
    word = text.strip().lower()
    if word in ("unsat", "holds"):
        return HOLDS
    if word in ("sat", "violated"):
        return VIOLATED
    if word in ("timeout", "run_instance_timeout"):
        return "timeout"
    return "unknown"


def load_official(csv_dir: str | os.PathLike) -> dict[str, dict[str, dict[str, str]]]:
    """Per-tool results of one VNN-COMP year: ``benchmark -> tool -> instance name -> result``.

    Reads every ``*.csv`` of ``csv_dir`` (rows ``benchmark, onnx, vnnlib, prepare time,
    result, run time``; the tool is the file name, or its part before ``__`` as in
    ``alpha_beta_crown__sri_resnet_a.csv``), drops the ``test`` category, the
    ``test_nano``/``test_tiny`` overhead rows and :data:`OFFICIAL_SKIP`, and keeps only the
    benchmarks a tool entered (at least one holds/violated there).
    """
    out: dict[str, dict[str, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
    for path in sorted(Path(csv_dir).glob("*.csv")):
        tool = path.stem.split("__", 1)[0]
        with open(path, newline="") as fh:
            for row in csv.reader(fh):
                if len(row) < 5 or not row[0].strip():
                    continue
                bench, onnx, vnnlib = row[0].strip(), row[1].strip(), row[2].strip()
                stem = os.path.basename(onnx)
                if bench == "test" or stem.startswith(("test_nano", "test_tiny")):
                    continue
                if bench in OFFICIAL_SKIP.get(tool, ()):
                    continue
                out[bench][tool][instance_name(onnx, vnnlib)] = normalise_result(row[4])
    return {b: {t: res for t, res in tools.items() if any(r in (HOLDS, VIOLATED) for r in res.values())}
            for b, tools in out.items()}


def judged_correct(result: str, n_holds: int, n_violated: int, randgen_violated: bool = False) -> bool:
    """Whether the official scoring counts ``result`` as a correct answer, given all tools' answers.

    ``n_holds``/``n_violated``: how many entered tools answered holds/violated on the instance.
    """
    if result not in (HOLDS, VIOLATED) or n_holds == n_violated:
        return False
    if n_holds > 1 and n_violated > 1:  # "odd_one_out": a real conflict is ignored
        return False
    if randgen_violated:  # a random input violated the property
        return result == VIOLATED
    return (result == HOLDS) == (n_holds > n_violated)


def solved_counts(tools: dict[str, dict[str, str]], instances: set[str] | None = None) -> dict[str, int]:
    """Correct (not penalised) holds/violated answers per entered tool, over ``instances`` (default: all)."""
    keys = set().union(*(r.keys() for r in tools.values())) if tools else set()
    if instances is not None:
        keys &= instances
    solved = {t: 0 for t in tools}
    for key in keys:
        answers = {t: r[key] for t, r in tools.items() if r.get(key) in (HOLDS, VIOLATED)}
        n_h = sum(a == HOLDS for a in answers.values())
        n_v = len(answers) - n_h
        randgen = answers.get("randgen") == VIOLATED
        for t, a in answers.items():
            solved[t] += judged_correct(a, n_h, n_v, randgen)
    return solved


@dataclass
class OfficialCounts:
    """α,β-CROWN's and the median entered tool's solved count on one benchmark."""

    year: str
    abcrown: int | None
    median: float
    tools: int
    total: int  # instances in the official results


def official_counts(official: dict[str, tuple[str, dict]], bench: str,
                    instances: set[str] | None = None) -> OfficialCounts | None:
    """Counts for ``bench`` from ``{benchmark: (year, tools)}`` (None when no year has it)."""
    if bench not in official:
        return None
    year, tools = official[bench]
    solved = solved_counts(tools, instances)
    ab = next((solved[t] for t in solved if t in ABCROWN), None)
    keys = set().union(*(r.keys() for r in tools.values())) if tools else set()
    total = len(keys if instances is None else keys & instances)
    return OfficialCounts(year, ab, statistics.median(solved.values()) if solved else 0.0, len(solved), total)


def load_all_official(root: str | os.PathLike) -> dict[str, tuple[str, dict]]:
    """``benchmark -> (year, tools)`` from ``root/_official_results`` (earliest year first)."""
    found: dict[str, tuple[str, dict]] = {}
    for year, sub in OFFICIAL_DIRS:
        d = Path(root) / "_official_results" / sub
        if d.is_dir():
            for bench, tools in load_official(d).items():
                found.setdefault(bench, (year, tools))
    return found


# ---------------------------------------------------------------- our results

@dataclass
class BenchCounts:
    """Counts of one results CSV."""

    instances: int = 0
    results: Counter = field(default_factory=Counter)
    unsound: int = 0
    time: float = 0.0
    names: set[str] = field(default_factory=set)
    methods: Counter = field(default_factory=Counter)

    @property
    def solved(self) -> int:
        """unsat + sat."""
        return self.results["unsat"] + self.results["sat"]


def count_results(csv_path: str | os.PathLike) -> BenchCounts:
    """Count the results of a ``boundc verify --instances`` CSV (unsound against its ``known`` column)."""
    c = BenchCounts()
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [k for k in ("instance", "result", "time", "known") if k not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: not a results CSV of this boundc (no column {', '.join(missing)}; "
                             f"expected {','.join(RESULT_COLUMNS)})")
        for r in reader:
            c.instances += 1
            c.results[r["result"]] += 1
            c.unsound += is_unsound(r["result"], r["known"])
            c.time += float(r["time"] or 0.0)
            c.names.add(r["instance"])
            c.methods[r.get("method") or "?"] += 1
    return c


def summary_table(out_dir: str | os.PathLike, root: str | os.PathLike,
                  benches: list[str] | None = None) -> list[str]:
    """The markdown table rows (with header) for the results CSVs in ``out_dir``."""
    official = load_all_official(root)
    paths = sorted(Path(out_dir).glob("*.csv"))
    if benches:
        paths = [p for p in paths if p.stem in benches]
    lines = ["| benchmark | instances run | unsat | sat | unknown | timeout | error | **unsound** | solved "
             "| time (s) | α,β-CROWN solved | median tool solved | tools |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    years = set()
    for p in paths:
        c = count_results(p)
        full = official_counts(official, p.stem)
        sub = official_counts(official, p.stem, c.names)
        if full is None or sub is None:
            ab = med = tools = "—"
        else:
            years.add(full.year)
            mark = "" if full.year == "2021" else f" ({full.year})"
            partial = sub.total < full.total
            ab = "—" if full.abcrown is None else (f"{sub.abcrown} of {full.abcrown}" if partial else f"{full.abcrown}")
            med = f"{sub.median:g} of {full.median:g}" if partial else f"{full.median:g}"
            ab, tools = ab + mark, f"{full.tools}{mark}"
            med += mark
        r = c.results
        lines.append(f"| {p.stem} | {c.instances} | {r['unsat']} | {r['sat']} | {r['unknown']} | {r['timeout']} "
                     f"| {r['error']} | {'**' + str(c.unsound) + '**' if c.unsound else 0} | {c.solved} "
                     f"| {c.time:.1f} | {ab} | {med} | {tools} |")
    return lines


# ---------------------------------------------------------------- running

def list_benchmarks(root: str | os.PathLike, include_test: bool = False) -> list[str]:
    """Every folder of ``root`` with an ``instances.csv`` (``test`` only when asked), sorted."""
    names = sorted(p.parent.name for p in Path(root).glob("*/instances.csv"))
    return [n for n in names if include_test or n != "test"]


def verify_command(bench: str, root: Path, out_csv: Path, method: str | None, cap: float | None,
                   limit: int | None, complete: bool = False, seed: int = 0, shard: tuple[int, int] | None = None,
                   extra: list[str] | None = None) -> list[str]:
    """The ``python -m boundc verify --instances`` command line of one benchmark (or one shard of it)."""
    cmd = [sys.executable, "-m", "boundc", "verify", "--instances", str(root / bench / "instances.csv"),
           "--out", str(out_csv), "--no-progress", "--seed", str(seed)]
    if shard is not None and shard[1] > 1:
        cmd += ["--shard", f"{shard[0]}/{shard[1]}"]
    cmd += list(extra or [])
    if method:
        cmd += ["--method", method]
    if cap:
        cmd += ["--timeout", f"{cap:g}"]
    if limit:
        cmd += ["--limit", str(limit)]
    if complete:
        cmd.append("--complete")
    return cmd


def git_commit() -> str:
    """``HEAD``'s short hash, with ``+changes`` when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_info() -> str:
    """CPU model and core count."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores"


def run_one(bench: str, args: argparse.Namespace, threads: int, shard: tuple[int, int] = (0, 1)) -> dict:
    """Run one benchmark (or shard ``k/n`` of it) in a subprocess; write its CSV, ``.log`` and ``.json``
    (``<bench>.csv`` or ``<bench>.shard-k.csv``, ...); return the run record."""
    out_dir = Path(args.out_dir).resolve()
    name = bench if shard[1] == 1 else f"{bench}.shard-{shard[0]}"
    out_csv = out_dir / f"{name}.csv"
    extra = ["--device", args.device, "--precision", args.precision, *args.verify_args.split()]
    cmd = verify_command(bench, Path(args.root).resolve(), out_csv, args.method, args.timeout_cap, args.limit,
                         args.complete, args.seed, shard, extra)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    record = {"benchmark": bench, "command": " ".join(cmd[1:]), "method": args.method or "default",
              "timeout_cap": args.timeout_cap, "limit": args.limit, "threads": threads, "commit": git_commit(),
              "date": _dt.datetime.now().isoformat(timespec="seconds"), "cpu": cpu_info()}
    print(f"[{name}] start: {' '.join(cmd[1:])}", flush=True)
    t0 = time.monotonic()
    with open(out_dir / f"{name}.log", "w") as log:
        # run outside the repository: ``python -m boundc`` then imports the installed package, not ./boundc
        rc = subprocess.run(cmd, cwd=out_dir, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    record.update(rc=rc, wall_s=round(time.monotonic() - t0, 1), device=args.device, precision=args.precision,
                  shards=shard[1])
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    status = "done" if rc == 0 else f"FAILED (exit {rc}; see {out_dir / (name + '.log')})"
    print(f"[{name}] {status} in {record['wall_s']:.0f} s", flush=True)
    return record


def merge_shards(out_dir: Path, bench: str, records: list[dict]) -> dict:
    """Join the shard CSVs of ``bench`` into ``<bench>.csv`` (rows in instances.csv order) and write its
    ``.json`` (wall time: the slowest shard; exit code: the worst); the shard files are removed."""
    parts = sorted(out_dir.glob(f"{bench}.shard-*.csv"))
    rows: list[dict] = []
    for p in parts:
        with open(p, newline="") as fh:
            rows += list(csv.DictReader(fh))
    with open(out_dir / f"{bench}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=RESULT_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    record = dict(records[0], wall_s=max(r["wall_s"] for r in records), rc=max(r["rc"] for r in records))
    (out_dir / f"{bench}.json").write_text(json.dumps(record, indent=1) + "\n")
    with open(out_dir / f"{bench}.log", "w") as log:
        for p in parts:
            log.write((out_dir / f"{p.stem}.log").read_text())
            for suffix in (".csv", ".log", ".json"):
                (out_dir / f"{p.stem}{suffix}").unlink(missing_ok=True)
    return record


def write_summary(out_dir: str | os.PathLike, root: str | os.PathLike, summary: str | os.PathLike,
                  benches: list[str] | None = None, note: str = "") -> str:
    """Write the markdown summary of the results CSVs in ``out_dir``; returns its text."""
    out_dir = Path(out_dir)
    table = summary_table(out_dir, root, benches)
    runs = []
    for p in sorted(out_dir.glob("*.json")):
        if benches and p.stem not in benches:
            continue
        try:
            r = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if not (out_dir / f"{p.stem}.csv").exists():
            continue
        cap = "listed" if not r.get("timeout_cap") else f"{r['timeout_cap']:g} s"
        method = ", ".join(count_results(out_dir / f"{p.stem}.csv").methods) or r.get("method")
        runs.append(f"| {p.stem} | {method} | {cap} | {r.get('limit') or 'all'} | {r.get('threads')} "
                    f"| {r.get('wall_s')} | {r.get('rc')} | {r.get('commit')} | {r.get('date')} | {r.get('cpu')} |")
    lines = ["# VNN-COMP sweep (`python bench/vnncomp.py`)", "",
             f"Summary written {_dt.datetime.now().isoformat(timespec='seconds')} at commit {git_commit()} "
             f"on {cpu_info()}.", ""]
    if note:
        lines += [note, ""]
    lines += [
        "Per-instance timeout: the benchmark's listed timeout capped at the run's *timeout cap* (see the runs "
        "table). `unknown` excludes `timeout` (unknown because the time ran out). **unsound** counts definite "
        "answers contradicting `known_results.csv` (`unsat` on a known `sat`, or `sat` on a known `unsat`; "
        "must be 0). `solved` = unsat + sat. *α,β-CROWN solved* / *median tool solved*: correct "
        "(not penalised) holds/violated results in the official VNN-COMP 2021 results (2022 where marked), "
        "the median over the *tools* that entered the benchmark; `x of y` = x on the instances run here, y on "
        "the whole benchmark. Those tools ran with the full timeouts (and mostly on GPUs).", ""]
    lines += table
    if runs:
        lines += ["", "Runs:", "",
                  "| benchmark | method | timeout cap | limit | threads | wall (s) | exit | commit | date | CPU |",
                  "|---|---|---|---|---|---|---|---|---|---|", *runs]
    text = "\n".join(lines) + "\n"
    Path(summary).write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    """Command line: run the sweep (or only summarise) and write the summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--root", default=str(DEFAULT_ROOT), help="the vnncomp folder (one sub-folder per benchmark)")
    ap.add_argument("--benchmarks", default="",
                    help="comma-separated benchmark folders (default: every one with an instances.csv except test)")
    ap.add_argument("--method", default=None, help="bound method (default: boundc verify's default)")
    ap.add_argument("--timeout-cap", type=float, default=None,
                    help="cap on each instance's listed timeout, seconds (default: the listed timeouts)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N instances of each benchmark")
    ap.add_argument("--complete", action="store_true", help="pass --complete (MILP) to boundc verify")
    ap.add_argument("--seed", type=int, default=0, help="attack seed")
    ap.add_argument("--jobs", type=int, default=1, help="processes run in parallel (one per benchmark shard)")
    ap.add_argument("--shards", type=int, default=1, help="processes per benchmark (each runs every N-th instance)")
    ap.add_argument("--device", default="cpu", help="boundc verify --device (cpu, cuda, auto)")
    ap.add_argument("--precision", default="float64", choices=["float64", "float32"],
                    help="boundc verify --precision")
    ap.add_argument("--verify-args", default="", help="more boundc verify flags, e.g. '--batch 4096 --bab-batch 1024'")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch/OpenMP threads per process (default: $OMP_NUM_THREADS, else cores / jobs)")
    ap.add_argument("--out-dir", default=str(DEFAULT_OUT), help="where the per-benchmark CSVs, logs and JSON go")
    ap.add_argument("--summary", default=str(DEFAULT_SUMMARY), help="the markdown summary to write")
    ap.add_argument("--summarize-only", action="store_true",
                    help="run nothing; rebuild the summary from the CSVs in --out-dir")
    ap.add_argument("--note", default="", help="a sentence to put in the summary's header")
    args = ap.parse_args(argv)
    root = Path(args.root)
    benches = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    if args.summarize_only:
        text = write_summary(args.out_dir, root, args.summary, benches or None, args.note)
        print(text)
        return 0
    if not root.is_dir():
        ap.error(f"no benchmark folder {root} (set --root or BOUNDC_SHARED)")
    if not benches:
        benches = list_benchmarks(root)
    missing = [b for b in benches if not (root / b / "instances.csv").is_file()]
    if missing:
        ap.error(f"no instances.csv for {', '.join(missing)} in {root} (have {', '.join(list_benchmarks(root, True))})")
    if args.jobs < 1 or args.shards < 1:
        ap.error("--jobs and --shards must be at least 1")
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, (os.cpu_count() or 1) // args.jobs)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    print(f"{len(benches)} benchmark(s), {args.jobs} at a time, {threads} thread(s) each: {', '.join(benches)}")
    units = [(b, (k, args.shards)) for b in benches for k in range(args.shards)]
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(lambda u: run_one(u[0], args, threads, u[1]), units))
    records = done
    if args.shards > 1:
        records = [merge_shards(Path(args.out_dir), b, [r for (ub, _), r in zip(units, done) if ub == b])
                   for b in benches]
    text = write_summary(args.out_dir, root, args.summary, None, args.note)
    print(text)
    return 0 if all(r["rc"] == 0 for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
