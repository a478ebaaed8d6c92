"""boundc verify: soundness against known results on a small subset; sat answers confirmed by onnxruntime."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import shared_path

from boundc.cli import main
from boundc.errors import BoundcError
from boundc.verify import VerifierModel, VerifyOptions, verify

SUBSET = [("test", None), ("acasxu", [0, 46, 50]), ("mnistfc", [0, 1, 2, 3]), ("eran", [0, 40]),
          ("verivital", [0, 30])]


def _rows(bench):
    root = shared_path("vnncomp", bench)
    with open(root / "known_results.csv") as fh:
        known = {(r["onnx"], r["vnnlib"]): r["result"] for r in csv.DictReader(fh)}
    with open(root / "instances.csv") as fh:
        rows = [[c.strip() for c in r] for r in csv.reader(fh) if r]
    return root, known, rows


@pytest.mark.parametrize("bench,idx", SUBSET)
def test_sound_on_subset(bench, idx):
    import onnxruntime as ort
    from boundc.frontends.vnnlib import read_vnnlib

    root, known, rows = _rows(bench)
    for i in idx if idx is not None else range(len(rows)):
        onnx_rel, prop = rows[i][:2]
        res = verify(VerifierModel(str(root / onnx_rel), "ibp"), root / prop, VerifyOptions(timeout=3))
        truth = known.get((onnx_rel, prop))
        if res.status == "unsat":
            assert truth != "sat", f"unsound: unsat on known-sat {onnx_rel} {prop}"
        if res.status == "sat":
            assert truth != "unsat", f"sat on known-unsat {onnx_rel} {prop}"
            x, y = res.counterexample
            sess = ort.InferenceSession(str(root / onnx_rel), providers=["CPUExecutionProvider"])
            inp = sess.get_inputs()[0]
            shape = [d if isinstance(d, int) else 1 for d in inp.shape]
            y2 = sess.run(None, {inp.name: x.reshape(shape).astype(np.float32)})[0].reshape(-1)
            _, _, specs = read_vnnlib(root / prop)
            assert any(np.all(s.lower.numpy() <= x) and np.all(x <= s.upper.numpy())
                       and any(np.all(C.numpy() @ y2 <= d.numpy()) for C, d in s.disjuncts) for s in specs)
            assert res.vnncomp().startswith("sat\n((X_0 ")


def test_cli_single_and_instances(tmp_path, capsys):
    root = shared_path("vnncomp", "test")
    out = tmp_path / "r.txt"
    assert main(["verify", str(root / "test_sat.onnx"), str(root / "test_prop.vnnlib"), "--timeout", "5",
                 "--out", str(out)]) == 0
    assert out.read_text().startswith("sat\n")
    res = tmp_path / "res.csv"
    assert main(["verify", "--instances", str(root / "instances.csv"), "--timeout", "1", "--out", str(res)]) == 0
    rows = list(csv.DictReader(open(res)))
    assert len(rows) == 5 and all(r["result"] in ("sat", "unsat", "unknown") for r in rows)


def test_variable_count_mismatch():
    root = shared_path("vnncomp")
    with pytest.raises(BoundcError, match="declares 784 inputs"):
        verify(str(root / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx"), root / "mnistfc" / "prop_0_0.03.vnnlib")
