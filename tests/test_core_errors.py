"""Bad input gets one clear error naming what and where."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from soundness import check_sound
from torch import nn

import boundc
from boundc import examples
from boundc.errors import UnsupportedOpError


class _Unsupported(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.atan(self.fc(torch.cumsum(x, 1)))


def test_unsupported_ops_are_all_listed_with_their_source():
    with pytest.raises(UnsupportedOpError) as info:
        boundc.compile(_Unsupported(), torch.rand(2, 4))
    msg = str(info.value)
    assert "2 unsupported" in msg and "aten.cumsum" in msg and "aten.atan" in msg
    assert "test_core_errors.py" in msg or "module" in msg


def test_product_of_two_perturbed_values_is_bounded_soundly_by_ibp():
    class Square(nn.Module):
        def forward(self, x):
            return x * x

    bm = boundc.compile(Square(), torch.rand(2, 3))  # IBP has an interval product
    x = torch.tensor([[-0.5, 0.05, 1.0]] * 2)
    lower, _ = check_sound(bm, Square(), *boundc.linf_box(x, 0.1), samples=16, pgd_steps=5)
    assert lower[0, 1] < 0  # x in [-0.05, 0.15]: the interval product is sound but not tight


@pytest.fixture(scope="module")
def bm():
    return boundc.compile(examples.build("small"), torch.rand(2, 1, 28, 28))


def test_negative_or_nan_eps(bm):
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        boundc.linf_box(x, -0.1)
    with pytest.raises(ValueError, match="eps must be finite"):
        boundc.linf_box(x, float("nan"))
    with pytest.raises(ValueError, match="clip"):
        boundc.linf_box(x, 0.1, clip=(1.0, 0.0))


def test_bad_boxes(bm):
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match=r"x_lower > x_upper"):
        bm(x + 0.1, x)
    bad = x.clone()
    bad[1, 0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        bm(bad, x + 1)
    with pytest.raises(ValueError, match="NaN or Inf"):
        boundc.linf_box(bad, 0.1)
    with pytest.raises(ValueError, match=r"expected \[batch, 1, 28, 28\]"):
        bm(torch.rand(2, 784), torch.rand(2, 784))
    with pytest.raises(ValueError, match="differ in shape"):
        bm(x, torch.rand(3, 1, 28, 28))


def test_bad_spec(bm):
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match="spec C must have shape"):
        bm(x, x, torch.rand(2, 9, 11))
    with pytest.raises(ValueError, match="labels must lie in"):
        boundc.margin_spec(torch.tensor([0, 10]), 10)


def test_bad_model_and_example():
    with pytest.raises(ValueError, match="example input"):
        boundc.compile(examples.build("mlp"))
    with pytest.raises(ValueError, match="cannot compile a"):
        boundc.compile(42)
    with pytest.raises(ValueError, match="torch.export could not trace"):
        boundc.compile(examples.build("mlp"), torch.rand(2, 3, 5))
    with pytest.raises(ValueError, match="unknown method"):
        boundc.compile(examples.build("mlp"), torch.rand(2, 1, 28, 28), method="magic")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "boundc.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_compile_example_prints_code_table_and_bounds():
    out = _cli("compile", "--example", "resnet", "--emit-code")
    assert out.returncode == 0, out.stderr
    assert "def forward(self, x_lower, x_upper" in out.stdout
    assert "perturbed" in out.stdout and "lower :" in out.stdout


def test_cli_compile_factory_file_and_errors(tmp_path):
    f = tmp_path / "net.py"
    f.write_text("import torch\n\ndef make():\n    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())\n")
    out = _cli("compile", f"{f}:make", "--input-shape", "3")
    assert out.returncode == 0, out.stderr
    assert "linear" in out.stdout
    bad = _cli("compile", f"{f}:nope", "--input-shape", "3")
    assert bad.returncode == 2 and "has no callable 'nope'" in bad.stderr
    bad = _cli("compile", "missing.py:make")
    assert bad.returncode == 2 and "no such file" in bad.stderr
