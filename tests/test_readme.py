"""Every ``boundc …`` command of README.md's ```bash blocks runs as written (shortened where a flag allows).

Each command runs in-process (``boundc.cli.main``) in a fresh temporary directory with
rc 0 and no traceback.  Shortening only changes sizes (epochs, images, PGD steps,
time-outs), never what a command does.  A command reading a checkpoint first runs the
README's ``train`` command that writes it; commands that need ``../shared`` (the project's
data folder beside the repository, see the README) skip without it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import SHARED, shared_path

from boundc.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: Flags set to a small value when the command has them, added when it accepts them and they are absent.
SHORTEN: dict[str, dict[str, str]] = {
    "demo": {"--epochs": "1"},
    "train": {"--epochs": "1", "--max-train": "300", "--eval-limit": "40"},
    "evaluate": {"--limit": "10", "--pgd-limit": "10", "--pgd-steps": "3", "--restarts": "1",
                 "--milp-time-limit": "1"},
    "verify": {"--timeout": "5"},
    "verify --instances": {"--timeout": "2", "--limit": "2"},
}

#: A user model for ``boundc compile net.py:make_model`` (written into the working directory).
NET_PY = '''import torch
from torch import nn


def make_model():
    return nn.Sequential(nn.Conv2d(1, 4, 4, 2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 13 * 13, 10))
'''


def readme_commands() -> list[str]:
    """Every ``boundc …`` command of the README's ```bash blocks (also inside ``a && b`` chains), comments cut."""
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        block = re.sub(r"\\\n\s*", " ", block)           # join continued lines
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("#"):
                continue
            cmds += [part.strip() for part in line.split("&&") if part.strip().startswith("boundc ")]
    return cmds


def _opt(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def shorten(cmd: str) -> list[str]:
    """The command's argv (without ``boundc``), sizes made small and ``../shared`` made absolute."""
    argv = [a.replace("../shared", str(SHARED)) for a in shlex.split(cmd)[1:]]
    key = "verify --instances" if argv[0] == "verify" and "--instances" in argv else argv[0]
    for flag, value in SHORTEN.get(key, {}).items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


def needs_shared(cmd: str) -> str | None:
    """The ``../shared`` path a command needs, if any."""
    m = re.search(r"\.\./shared/(\S+)", cmd)
    if m:
        return m.group(1)
    if "--dataset mnist" in cmd:
        return "data/mnist"
    return None


COMMANDS = readme_commands()


def test_readme_has_the_documented_commands():
    names = {shlex.split(c)[1] for c in COMMANDS}
    assert {"demo", "compile", "export", "verify", "train", "evaluate", "methods", "ops"} <= names, names


def _run(argv: list[str], capsys) -> str:
    rc = main(argv)
    out = capsys.readouterr()
    text = out.out + out.err
    assert rc == 0, f"boundc {' '.join(argv)} -> rc {rc}\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    return text


def _writer_of(checkpoint: str) -> str:
    """The README's train command whose --out holds ``checkpoint``."""
    out = str(Path(checkpoint).parent)
    for c in COMMANDS:
        argv = shlex.split(c)
        if argv[1] == "train" and _opt(argv, "--out") == out:
            return c
    raise AssertionError(f"no README train command writes {checkpoint}")


SLOW = ("demo", "evaluate")


@pytest.mark.parametrize("cmd", [pytest.param(c, marks=pytest.mark.slow if shlex.split(c)[1] in SLOW else ())
                                 for c in COMMANDS], ids=[f"{i}-{shlex.split(c)[1]}" for i, c in enumerate(COMMANDS)])
def test_readme_command_runs(cmd, tmp_path, monkeypatch, capsys):
    for c in (cmd, _writer_of(shlex.split(cmd)[2]) if shlex.split(cmd)[1] == "evaluate" else ""):
        need = needs_shared(c) if c else None
        if need:
            shared_path(*need.split("/"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(NET_PY)
    argv = shorten(cmd)
    if argv[0] == "evaluate":
        _run(shorten(_writer_of(argv[1])), capsys)
    text = _run(argv, capsys)
    if argv[0] == "train":
        assert (tmp_path / (_opt(argv, "--out") or "boundc_runs/run") / "checkpoint.pt").exists()
    if argv[0] == "demo":
        assert "onnxruntime vs torch" in text


def test_ci_runs_the_readme_test_command():
    readme, ci = README.read_text(), (ROOT / ".ci" / "run").read_text()
    setup = re.search(r"pip install torch==2\.13\.0 -e '\.\[test\]' && (python -m pytest[^\n`]*)", readme)
    assert setup, "the README's test command"
    assert setup.group(1).strip() in ci and "ruff check ." in ci and "-e '.[test]'" in ci
