"""The README's main job runs end to end (shortened): train, evaluate, export + onnxruntime check, plot."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "boundc.cli", "demo", "--epochs", "2", "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "verified (ibp)" in proc.stdout and "onnxruntime vs torch" in proc.stdout
    for name in ("checkpoint.pt", "train.json", "eval.json", "curves.png", "certifier.onnx"):
        assert (out / name).exists(), name
    diff = float(proc.stdout.split("max |diff| = ")[1].split(";")[0])
    assert diff < 1e-4
    assert json.loads((out / "train.json").read_text())["epochs_done"] == 2
