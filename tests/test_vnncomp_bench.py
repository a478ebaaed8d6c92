"""VNN-COMP sweeps: the ``verify --instances`` results CSV, the official-results counting and the summary."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import shared_path

from boundc.cli import main
from boundc.cli.verify_cmd import OUT_OF_MEMORY, RESULT_COLUMNS, is_unsound, read_instances

REPO = Path(__file__).resolve().parents[1]


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_vnncomp", REPO / "bench" / "vnncomp.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_vnncomp", mod)
    spec.loader.exec_module(mod)
    return mod


vnncomp = _bench_module()


# ---------------------------------------------------------------- boundc verify --instances

def test_instances_csv_columns_and_known_results(tmp_path, capsys):
    root = shared_path("vnncomp", "test")
    out = tmp_path / "res.csv"
    assert main(["verify", "--instances", str(root / "instances.csv"), "--method", "crown", "--timeout", "10",
                 "--out", str(out), "--no-progress"]) == 0
    with open(out, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == RESULT_COLUMNS
        rows = list(reader)
    listed = read_instances(root / "instances.csv")
    assert sorted((r["onnx"], r["vnnlib"]) for r in rows) == sorted((i.onnx, i.vnnlib) for i in listed)
    for r in rows:
        assert r["instance"] == f"{Path(r['onnx']).stem}-{Path(r['vnnlib']).stem}"
        assert r["known"] in ("sat", "unsat"), r
        assert r["result"] == r["known"], r  # the test benchmark is easy: every instance decided, and right
        assert not is_unsound(r["result"], r["known"])
        assert r["error"] == "" and r["method"] == "crown" and float(r["time"]) >= 0 and r["timeout"] == "10"
    printed = capsys.readouterr().out
    assert "unsat        4 / 5" in printed and "sat          1 / 5" in printed and "UNSOUND" not in printed


def test_instances_errors_are_rows(tmp_path, monkeypatch, capsys):
    """A missing model and an out-of-memory failure are `error` rows with a one-line message; the run goes on."""
    from boundc.cli import verify_cmd

    root = shared_path("vnncomp", "test")
    bench = tmp_path / "bench"
    bench.mkdir()
    for name in ("test_sat.onnx", "test_prop.vnnlib", "test_unsat.onnx"):
        (bench / name).write_bytes((root / name).read_bytes())
    (bench / "instances.csv").write_text("missing.onnx,test_prop.vnnlib,5\ntest_sat.onnx,test_prop.vnnlib,5\n"
                                         "test_unsat.onnx,test_prop.vnnlib,5\n")
    real = verify_cmd.LastModel.get

    def get(self, path):
        if path.endswith("test_unsat.onnx"):
            raise MemoryError()
        return real(self, path)

    monkeypatch.setattr(verify_cmd.LastModel, "get", get)
    out = tmp_path / "res.csv"
    assert main(["verify", "--instances", str(bench / "instances.csv"), "--method", "ibp", "--out", str(out)]) == 0
    rows = {r["onnx"]: r for r in csv.DictReader(open(out, newline=""))}
    assert rows["missing.onnx"]["result"] == "error" and "\n" not in rows["missing.onnx"]["error"]
    assert rows["missing.onnx"]["error"]
    assert rows["test_sat.onnx"]["result"] == "sat" and rows["test_sat.onnx"]["error"] == ""
    assert rows["test_unsat.onnx"]["result"] == "error" and rows["test_unsat.onnx"]["error"] == OUT_OF_MEMORY


def test_only_the_current_model_is_kept(monkeypatch):
    from boundc.cli import verify_cmd
    from boundc.verify import verifier

    built = []

    class Fake:
        def __init__(self, path, method, precision="float64", device="cpu"):
            built.append(path)

    monkeypatch.setattr(verifier, "VerifierModel", Fake)
    monkeypatch.setattr("boundc.verify.VerifierModel", Fake)
    cache = verify_cmd.LastModel("ibp")
    a = cache.get("a.onnx")
    assert cache.get("a.onnx") is a and built == ["a.onnx"]
    cache.get("b.onnx")
    assert cache.path == "b.onnx" and built == ["a.onnx", "b.onnx"]
    assert cache.get("a.onnx") is not a  # a was dropped, so it is compiled again


# ---------------------------------------------------------------- official results

def _official_csv(path: Path, rows: list[tuple[str, str, str, str]]) -> None:
    """rows: (benchmark, onnx, vnnlib, result) in the VNN-COMP 2021 results_csv layout (CRLF like the originals)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\r\n")
        for bench, onnx, prop, res in rows:
            w.writerow([bench, f"./benchmarks/{bench}/{onnx}", f"./benchmarks/{bench}/{prop}", "1.0", res, "2.5"])


def test_official_counting(tmp_path):
    d = tmp_path / "results_csv"
    d.mkdir()
    nano = ("b", "../test/test_nano.onnx", "../test/test_nano.vnnlib", "holds")  # overhead row: ignored
    # i1: every tool agrees; i2: A and B say holds, C says violated (C is the odd one out: penalised);
    # i3: two holds, two violated (a conflict: nobody counts); i4: only C answers; i5: A times out.
    _official_csv(d / "A.csv", [nano, ("b", "n.onnx", "p1.vnnlib", "holds"), ("b", "n.onnx", "p2.vnnlib", "UNSAT"),
                                ("b", "n.onnx", "p3.vnnlib", "holds"), ("b", "n.onnx", "p4.vnnlib", "timeout"),
                                ("b", "n.onnx", "p5.vnnlib", "run_instance_timeout"),
                                ("test", "t.onnx", "t.vnnlib", "holds")])
    _official_csv(d / "B.csv", [nano, ("b", "n.onnx", "p1.vnnlib", "holds"), ("b", "n.onnx", "p2.vnnlib", "holds"),
                                ("b", "n.onnx", "p3.vnnlib", "violated"), ("b", "n.onnx", "p4.vnnlib", ""),
                                ("b", "n.onnx", "p5.vnnlib", "SAT")])
    _official_csv(d / "C.csv", [nano, ("b", "n.onnx", "p1.vnnlib", "holds"), ("b", "n.onnx", "p2.vnnlib", "violated"),
                                ("b", "n.onnx", "p3.vnnlib", "violated"), ("b", "n.onnx", "p4.vnnlib", "holds"),
                                ("b", "n.onnx", "p5.vnnlib", "error_exit_code_1")])
    _official_csv(d / "D.csv", [("b", "n.onnx", "p3.vnnlib", "holds"), ("b", "n.onnx", "p1.vnnlib", "unknown")])
    _official_csv(d / "E.csv", [("b", "n.onnx", "p1.vnnlib", "prepare_instance_error_1")])  # never answers
    off = vnncomp.load_official(d)
    assert set(off) == {"b"}  # the test category is not scored
    tools = off["b"]
    assert set(tools) == {"A", "B", "C", "D"}  # E did not enter
    assert set(tools["A"]) == {f"n-p{i}" for i in range(1, 6)}
    assert vnncomp.solved_counts(tools) == {"A": 2, "B": 3, "C": 2, "D": 0}
    assert vnncomp.solved_counts(tools, {"n-p1", "n-p2"}) == {"A": 2, "B": 2, "C": 1, "D": 0}
    oc = vnncomp.official_counts({"b": ("2021", tools)}, "b")
    assert (oc.abcrown, oc.median, oc.tools, oc.total) == (None, 2, 4, 5)


def test_official_judging_rules():
    j = vnncomp.judged_correct
    assert j("holds", 3, 0) and j("violated", 0, 1)
    assert not j("holds", 1, 1) and not j("holds", 2, 2) and not j("violated", 3, 2)  # ties and conflicts
    assert not j("violated", 3, 1) and j("holds", 3, 1)  # the odd one out is wrong
    assert not j("timeout", 3, 0)
    assert j("violated", 1, 2, randgen_violated=True) and not j("holds", 1, 2, randgen_violated=True)


def test_official_mnistfc_matches_the_published_table():
    root = shared_path("vnncomp", "_official_results", "vnncomp2021_results_csv")
    solved = vnncomp.solved_counts(vnncomp.load_official(root)["mnistfc"])
    # Verified + Falsified of the mnistfc table in vnncomp2021_output_singleoverhead.txt
    assert solved == {"a-b-CROWN": 70, "VeriNet": 60, "Debona": 59, "oval": 58, "ERAN": 56, "Marabou": 54,
                      "nnenum": 47, "venus2": 47, "nnv": 27, "DNNF": 7}


# ---------------------------------------------------------------- summary

def _results_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    """rows: (result, known)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(RESULT_COLUMNS)
        for i, (res, known) in enumerate(rows):
            w.writerow([f"n-p{i}", res, "1.5", "ibp", "out of memory" if res == "error" else "", "n.onnx",
                        f"p{i}.vnnlib", "10", known, ""])


def test_summary_counts_unsound(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _results_csv(out / "b.csv", [("unsat", "unsat"), ("unsat", "sat"), ("sat", "unsat"), ("sat", "sat"),
                                 ("unknown", "sat"), ("timeout", "unsat"), ("error", "sat"), ("unsat", ""),
                                 ("sat", "unknown")])
    c = vnncomp.count_results(out / "b.csv")
    assert (c.instances, c.unsound, c.solved, c.results["timeout"], c.results["error"]) == (9, 2, 6, 1, 1)
    assert c.time == pytest.approx(13.5)
    root = tmp_path / "vnncomp"
    d = root / "_official_results" / "vnncomp2021_results_csv"
    d.mkdir(parents=True)
    _official_csv(d / "a-b-CROWN.csv", [("b", "n.onnx", f"p{i}.vnnlib", "holds") for i in range(12)])
    _official_csv(d / "X.csv", [("b", "n.onnx", f"p{i}.vnnlib", "holds" if i < 3 else "timeout") for i in range(12)])
    summary = tmp_path / "summary.md"
    text = vnncomp.write_summary(out, root, summary)
    assert summary.read_text() == text
    row = next(line for line in text.splitlines() if line.startswith("| b |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = next(line for line in text.splitlines() if line.startswith("| benchmark"))
    named = dict(zip([h.strip() for h in header.strip("|").split("|")], cells))
    assert named["instances run"] == "9" and named["**unsound**"] == "**2**" and named["solved"] == "6"
    assert named["unsat"] == "3" and named["sat"] == "3" and named["unknown"] == "1" and named["error"] == "1"
    # official: on the 9 instances run here a-b-CROWN solved 9 (12 on the whole benchmark), X 3 of 3
    assert named["α,β-CROWN solved"] == "9 of 12" and named["median tool solved"] == "6 of 7.5"


def test_summarize_only_without_results(tmp_path, capsys):
    summary = tmp_path / "s.md"
    assert vnncomp.main(["--summarize-only", "--out-dir", str(tmp_path), "--root", str(tmp_path),
                         "--summary", str(summary)]) == 0
    assert summary.read_text().startswith("# VNN-COMP sweep")


def test_verify_command_uses_the_cli():
    cmd = vnncomp.verify_command("mnistfc", Path("/r"), Path("/o/mnistfc.csv"), "crown", 10.0, 5)
    assert cmd[1:5] == ["-m", "boundc", "verify", "--instances"]
    assert cmd[5] == str(Path("/r/mnistfc/instances.csv"))
    assert ["--method", "crown"] == cmd[cmd.index("--method"):cmd.index("--method") + 2]
    assert "--timeout" in cmd and cmd[cmd.index("--timeout") + 1] == "10"
    assert cmd[cmd.index("--limit") + 1] == "5"
