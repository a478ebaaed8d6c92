"""The command line, one group of tests per item of issue 13 ("A new user's first hour").

Most tests call ``boundc.cli.main([...])`` in-process (it returns the exit status and never
raises); a few run ``python -m boundc`` where the real entry point, exit codes or
tracebacks matter.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import boundc
from boundc.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["--epochs", "1", "--max-train", "200", "--batch-size", "50", "--eval-limit", "20"]

NET_PY = '''import torch
from torch import nn


def make():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
'''


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_one_line_error(rc: int, err: str, cmd: str, *words: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"boundc {cmd}: error:")]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture
def net_py(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.py").write_text(NET_PY)
    return tmp_path / "f.py"


def tiny_onnx(path: Path) -> Path:
    """A 2-input, 2-output ReLU network as ONNX (MatMul, Add, Relu)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array([[1.0, -1.0], [0.5, 2.0]], dtype=np.float32), "W")
    b = numpy_helper.from_array(np.array([0.1, -0.2], dtype=np.float32), "B")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["z"]),
             helper.make_node("Relu", ["z"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w, b])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


# ---------------------------------------------------------------- 1. README commands that failed as written

def test_export_accepts_example(tmp_path, capsys):
    rc, out, err = run(capsys, "export", "--example", "small", "--method", "ibp", "--spec", "margin",
                       "-o", str(tmp_path / "c.onnx"))
    assert rc == 0, err
    assert (tmp_path / "c.onnx").exists()


def test_train_help_names_the_checkpoint_evaluate_reads(capsys):
    assert run(capsys, "train", "--help")[0] == 0
    _, commands = build_parser()
    train_help, eval_help = commands["train"].format_help(), commands["evaluate"].format_help()
    assert "OUT/checkpoint.pt" in train_help and "boundc_runs/run" in train_help
    assert "boundc_runs/run/checkpoint.pt" in eval_help
    readme = (ROOT / "README.md").read_text()
    assert "runs/last.pt" not in readme and "export --example small" in readme


# ---------------------------------------------------------------- 2. no raw tracebacks

def test_evaluate_missing_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(*run(capsys, "evaluate", "nope.pt")[::2], "evaluate", "nope.pt")


def test_evaluate_garbage_file(tmp_path, capsys):
    f = tmp_path / "garbage.onnx"
    f.write_text("garbage\n")
    assert_one_line_error(*run(capsys, "evaluate", str(f))[::2], "evaluate", "garbage.onnx", "not a boundc")


def test_train_resume_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(*run(capsys, "train", "--resume", "missing.pt")[::2], "train", "missing.pt")


def test_compile_shape_that_does_not_fit(net_py, capsys):
    rc, _, err = run(capsys, "compile", f"{net_py}:make", "--input-shape", "3x16x16")
    assert_one_line_error(rc, err, "compile", "f.py:make", "(3, 16, 16)", "channels")


def test_compile_accepts_x_separated_shape(net_py, capsys):
    rc, out, err = run(capsys, "compile", f"{net_py}:make", "--input-shape", "1x28x28")
    assert rc == 0, err
    assert "lower :" in out


def test_train_model_that_does_not_fit_the_data(net_py, capsys):
    rc, _, err = run(capsys, "train", "--model", f"{net_py}:make", *TINY_TRAIN, "--out", "r")
    assert_one_line_error(rc, err, "train", "f.py:make", "(1, 8, 8)")


def test_subprocess_error_is_one_line_and_debug_shows_traceback(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    plain = subprocess.run([sys.executable, "-m", "boundc", "evaluate", "nope.pt"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == ["boundc evaluate: error: checkpoint: no such file: nope.pt"]
    (tmp_path / "g.pt").write_text("garbage")
    debug = subprocess.run([sys.executable, "-m", "boundc", "--debug", "evaluate", "g.pt"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("boundc evaluate: error:")


def test_unexpected_exception_is_an_internal_error(capsys, monkeypatch):
    import boundc.cli.info_cmd as info

    def boom(args):
        raise KeyError("oops")

    monkeypatch.setattr(info, "run_methods", boom)
    rc, _, err = run(capsys, "methods")
    assert rc == 1 and "internal error" in err and "--debug" in err and "Traceback" not in err


# ---------------------------------------------------------------- 3. consistent validation at parse time

@pytest.mark.parametrize("argv,words", [
    (["verify", "--method", "bogus"], ["--method", "bogus"]),
    (["compile", "--example", "small", "--method", "bogus"], ["--method", "bogus"]),
    (["evaluate", "x.pt", "--methods", "ibp,bogus"], ["--methods", "bogus"]),
    (["train", "--eps", "-0.1"], ["--eps", "-0.1"]),
    (["train", "--epochs", "0"], ["--epochs", "at least 1"]),
    (["train", "--lr", "0"], ["--lr"]),
    (["train", "--kappa-final", "2"], ["--kappa-final", "between 0 and 1"]),
    (["train", "--batch-size", "nan"], ["--batch-size"]),
    (["verify", "--timeout", "-5"], ["--timeout", "-5"]),
    (["evaluate", "x.pt", "--eps", "-1"], ["--eps"]),
    (["evaluate", "x.pt", "--restarts", "0"], ["--restarts"]),
    (["compile", "--example", "small", "--eps", "-0.1"], ["--eps"]),
    (["compile", "--example", "small", "--input-shape", "1,0"], ["--input-shape"]),
    (["demo", "--epochs", "-3"], ["--epochs"]),
])
def test_numeric_and_method_flags_are_validated_at_parse_time(argv, words, capsys):
    rc, out, err = run(capsys, *argv)
    assert_one_line_error(rc, err, argv[0], *words)
    assert out == ""                      # nothing (no node table) printed before the error
    assert f"usage: boundc {argv[0]}" in err


def test_compile_rejects_model_and_example_together(net_py, capsys):
    rc, out, err = run(capsys, "compile", f"{net_py}:make", "--example", "small")
    assert_one_line_error(rc, err, "compile", "not both")
    assert out == ""


def test_missing_dataset_says_where_it_looked(tmp_path, capsys, monkeypatch):
    from boundc.train import data

    monkeypatch.setattr(data, "SHARED_DATA", tmp_path / "nowhere")
    monkeypatch.setenv("BOUNDC_DATA", str(tmp_path / "env"))
    rc, _, err = run(capsys, "train", "--dataset", "cifar10", *TINY_TRAIN, "--out", str(tmp_path / "r"))
    assert_one_line_error(rc, err, "train", "cifar10", "--data", "BOUNDC_DATA", "../shared/data")
    assert "no default" not in err


def test_empty_vnnlib_input_box_warns(tmp_path, capsys):
    model = tiny_onnx(tmp_path / "m.onnx")
    prop = tmp_path / "p.vnnlib"
    prop.write_text("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
                    "(declare-const Y_1 Real)\n(assert (>= X_0 1.0))\n(assert (<= X_0 0.0))\n"
                    "(assert (>= X_1 0.0))\n(assert (<= X_1 1.0))\n(assert (<= Y_0 Y_1))\n")
    rc, out, err = run(capsys, "verify", str(model), str(prop), "--method", "ibp", "--timeout", "5")
    assert rc == 0, err
    assert "boundc verify: warning:" in err and "empty" in err and "X_0" in err


# ---------------------------------------------------------------- 4. data found through --data, $BOUNDC_DATA, ../shared

def _write_idx(path: Path, arr: np.ndarray) -> None:
    code = {np.uint8: 0x08}[arr.dtype.type]
    path.write_bytes(bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())


def _fake_mnist(folder: Path, n: int = 60) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,), dtype=np.uint8))
    return folder


def test_no_absolute_data_path_in_the_package():
    src = (ROOT / "boundc" / "train" / "data.py").read_text()
    assert "/work/" not in src and "/usr/share" not in src


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    from boundc.errors import BoundcError
    from boundc.train import data

    shared = tmp_path / "shared" / "data"
    (shared / "mnist").mkdir(parents=True)
    (tmp_path / "env" / "mnist").mkdir(parents=True)
    monkeypatch.setattr(data, "SHARED_DATA", shared)
    monkeypatch.delenv("BOUNDC_DATA", raising=False)
    assert data.resolve_data_dir("mnist") == (shared / "mnist", "../shared/data beside the repository")
    monkeypatch.setenv("BOUNDC_DATA", str(tmp_path / "env"))
    assert data.resolve_data_dir("mnist") == (tmp_path / "env" / "mnist", "$BOUNDC_DATA")
    assert data.resolve_data_dir("mnist", tmp_path) == (tmp_path, "--data")
    with pytest.raises(BoundcError, match="does not exist"):
        data.resolve_data_dir("mnist", tmp_path / "nope")
    assert data.SHARED_DATA.name == "data" and data.REPO_ROOT == ROOT


def test_train_says_which_data_it_used(tmp_path, capsys, monkeypatch):
    _fake_mnist(tmp_path / "env" / "mnist")
    monkeypatch.setenv("BOUNDC_DATA", str(tmp_path / "env"))
    rc, out, err = run(capsys, "train", "--dataset", "mnist", "--model", "tiny", "--epochs", "1", "--batch-size", "20",
                       "--eval-limit", "10", "--out", str(tmp_path / "r"))
    assert rc == 0, err
    assert f"data: mnist from {tmp_path / 'env' / 'mnist'} ($BOUNDC_DATA)" in err


# ---------------------------------------------------------------- 5. ../shared is explained

def test_shared_is_explained_in_readme_and_skip_reasons(tmp_path, monkeypatch):
    import conftest

    readme = (ROOT / "README.md").read_text()
    assert "**`../shared`.**" in readme and "40 tests skip" in readme and "BOUNDC_DATA" in readme
    monkeypatch.setattr(conftest, "SHARED", tmp_path / "no-shared")
    with pytest.raises(pytest.skip.Exception, match="project's folder beside the repository"):
        conftest.shared_path("vnncomp")


# ---------------------------------------------------------------- 6. no silent long waits

class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _pgd(progress: bool):
    from boundc import examples
    from boundc.train.metrics import pgd_fooled

    torch.manual_seed(0)
    model = examples.mlp((1, 4, 4), 10, hidden=(8,)).eval()
    x, y = torch.rand(6, 1, 4, 4), torch.randint(0, 10, (6,))
    return pgd_fooled(model, x, y, 0.1, (0.0, 1.0), steps=3, restarts=3, batch_size=4, progress=progress)


def test_pgd_progress_only_on_a_terminal(monkeypatch):
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    fooled = _pgd(True)
    assert "PGD 3 steps x 3" in tty.getvalue()
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stderr", plain)
    assert torch.equal(_pgd(True), fooled)
    assert plain.getvalue() == ""
    monkeypatch.setattr(sys, "stderr", tty)
    before = len(tty.getvalue())
    _pgd(False)
    assert len(tty.getvalue()) == before


def test_verify_rows_have_progress(monkeypatch):
    from boundc import examples
    from boundc.train.losses import BoundCache
    from boundc.train.metrics import margin_lowers

    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    model = examples.mlp((1, 4, 4), 10, hidden=(8,)).eval()
    x, y = torch.rand(6, 1, 4, 4), torch.randint(0, 10, (6,))
    margin_lowers(BoundCache(model, x), "ibp", x, y, 0.1, (0.0, 1.0), 10, batch_size=4, progress=True)
    assert "verify [ibp]" in tty.getvalue()


def test_compile_clean_row_needs_no_second_bound_pass(capsys, monkeypatch):
    from boundc.bound_module import BoundModule

    calls = []
    forward = BoundModule.forward

    def counting(self, *a, **kw):
        calls.append(a[0].shape)
        return forward(self, *a, **kw)

    monkeypatch.setattr(BoundModule, "forward", counting)
    rc, out, err = run(capsys, "compile", "--example", "small")
    assert rc == 0, err
    assert len(calls) == 1 and "clean :" in out


def test_compile_says_before_a_slow_method(capsys):
    rc, out, err = run(capsys, "compile", "--example", "mlp", "--method", "crown")
    assert rc == 0 and "bounding 2 demo inputs with 'crown'" in err


# ---------------------------------------------------------------- 7. short training runs

def test_short_run_moves_lr_drops_and_warns(tmp_path, capsys):
    from boundc.train.trainer import TrainConfig

    sched = TrainConfig(epochs=2).schedule_obj(14)
    assert sched.lr_milestones == (22, 25)           # not 7 and 12: the paper's fractions of 28 steps
    assert TrainConfig(epochs=200).schedule_obj(300).lr_milestones == (15000, 25000)
    rc, out, err = run(capsys, "train", *TINY_TRAIN, "--out", str(tmp_path / "r"))
    assert rc == 0, err
    assert "short run" in err and "warning: only 4 training steps" in err


# ---------------------------------------------------------------- 8. help that answers

def test_version_and_python_m_boundc(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"boundc {boundc.__version__}"
    proc = subprocess.run([sys.executable, "-m", "boundc", "--version"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == f"boundc {boundc.__version__}"


def _method_choices(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    return {a.dest: list(a.choices) for a in parser._actions if a.dest in ("method", "mixtrain_method") and a.choices}


def test_every_method_choice_comes_from_boundc_methods():
    methods = boundc.methods()
    _, commands = build_parser()
    for name in ("compile", "verify", "export", "train"):
        choices = _method_choices(commands[name])
        assert choices, name
        for dest, c in choices.items():
            assert c[:len(methods)] == methods, (name, dest, c)
    assert set(_method_choices(commands["train"])["method"]) == {*methods, "mixtrain", "clean"}
    assert {"fast-lin", "forward"} <= set(_method_choices(commands["verify"])["method"])


def test_verify_defaults_to_the_strongest_method():
    _, commands = build_parser()
    action = next(a for a in commands["verify"]._actions if a.dest == "method")
    assert action.default == "alpha-crown"
    assert "tightest" in commands["verify"].format_help()


def test_every_flag_has_help_and_defaults_are_shown():
    parser, commands = build_parser()
    for name, p in commands.items():
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            assert a.help and a.help.strip(), (name, a.dest)
        text = p.format_help()
        if any(a.default not in (None, False, argparse.SUPPRESS) for a in p._actions if a.option_strings):
            assert "(default:" in text, name
    assert "(default: boundc_runs/run)" in commands["train"].format_help()
    assert "(default: boundc_demo)" in commands["demo"].format_help()
    assert "(default: certifier.onnx)" in commands["export"].format_help()


def test_unknown_flag_prints_the_subcommand_usage(capsys):
    rc, out, err = run(capsys, "train", "--bogus")
    assert rc == 2 and "usage: boundc train" in err and "unrecognized arguments: --bogus" in err


def test_methods_command_lists_registered_methods(capsys):
    rc, out, _ = run(capsys, "methods")
    assert rc == 0
    assert [ln.split()[0] for ln in out.splitlines()] == boundc.methods()


def test_ops_command_reads_the_frontend_tables_at_run_time(capsys, monkeypatch):
    from boundc.frontends import torch_export

    monkeypatch.setitem(torch_export._LOWERINGS, "brand_new_op", lambda *a: None)
    rc, out, _ = run(capsys, "ops")
    assert rc == 0
    assert "brand_new_op" in out and "relu" in out and "Relu" in out and "Gemm" in out


# ---------------------------------------------------------------- 9. polish

def test_gitignore_has_the_output_folders():
    lines = (ROOT / ".gitignore").read_text().splitlines()
    assert "boundc_demo/" in lines and "boundc_runs/" in lines


def test_no_carriage_returns_in_logs_and_epoch_lines_with_no_progress(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "boundc", "train", *TINY_TRAIN, "--out", str(tmp_path / "a")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and "\r" not in proc.stdout
    assert "epoch 1:" in proc.stdout


def test_no_progress_keeps_the_epoch_lines(tmp_path, capsys):
    rc, out, err = run(capsys, "train", *TINY_TRAIN, "--no-progress", "--out", str(tmp_path / "r"))
    assert rc == 0, err
    assert "epoch 1: loss" in out


def test_train_verified_curve_is_split_at_the_end_of_the_ramp():
    from boundc.train.trainer import train_verified_series

    hist = [{"epoch": 1, "eps_train": 0.01, "train_verified": 0.59},
            {"epoch": 2, "eps_train": 0.15, "train_verified": 0.2}, {"epoch": 3, "eps_train": 0.15, "train_verified": 0.3}]
    series = train_verified_series(hist, 0.15)
    ramp = next(v for k, v in series.items() if "ramp" in k)
    full = next(v for k, v in series.items() if "0.15" in k)
    assert ramp == ([1], [0.59]) and full == ([2, 3], [0.2, 0.3])


def test_resume_honours_epochs_and_rejects_other_changes(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert run(capsys, "train", *TINY_TRAIN, "--out", out)[0] == 0
    rc, _, err = run(capsys, "train", "--resume", "--out", out, "--epochs", "2")
    assert rc == 0, err
    assert "--epochs 2 instead of the stored 1" in err
    assert json.loads((tmp_path / "r" / "train.json").read_text())["epochs_done"] == 2
    rc, _, err = run(capsys, "train", "--resume", "--out", out, "--model", "small")
    assert_one_line_error(rc, err, "train", "--model", "keeps its config")
