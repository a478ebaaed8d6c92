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
    assert len(rows) == 5 and all(r["result"] in ("sat", "unsat", "unknown", "timeout") for r in rows)


def test_variable_count_mismatch():
    root = shared_path("vnncomp")
    with pytest.raises(BoundcError, match="declares 784 inputs"):
        verify(str(root / "acasxu" / "ACASXU_run2a_1_1_batch_2000.onnx"), root / "mnistfc" / "prop_0_0.03.vnnlib")


def _tiny_onnx(path, seed: int = 0):
    """A 10-16-16-3 ReLU MLP as ONNX (Gemm/Relu), plus its numpy forward."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    sizes = [10, 16, 16, 3]
    Ws = [rng.normal(0, 1 / np.sqrt(a), (b, a)).astype(np.float32) for a, b in zip(sizes, sizes[1:])]
    bs = [rng.normal(0, 0.1, b).astype(np.float32) for b in sizes[1:]]
    nodes, inits, prev = [], [], "X"
    for i, (W, b) in enumerate(zip(Ws, bs)):
        inits += [numpy_helper.from_array(W, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "Y" if i == len(Ws) - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"], [out], transB=1))
        if i < len(Ws) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            out = f"r{i}"
        prev = out
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 10])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)

    def forward(x):
        for i, (W, b) in enumerate(zip(Ws, bs)):
            x = x @ W.T + b
            x = np.maximum(x, 0) if i < len(Ws) - 1 else x
        return x
    return forward


def test_complete_mode_decides_what_bounds_cannot(tmp_path):
    """With input splitting off, ``complete`` (the MILP) and branch and bound each settle boxes the bounds
    leave open; answers agree with sampling and with each other."""
    forward = _tiny_onnx(tmp_path / "tiny.onnx")
    x0 = np.linspace(0.2, 0.8, 10)
    label = int(forward(x0[None].astype(np.float32)).argmax())
    others = [j for j in range(3) if j != label]
    rng = np.random.default_rng(1)
    seen = []
    for eps in (0.02, 0.1, 0.3, 0.6, 1.0):
        lines = [f"(declare-const X_{i} Real)" for i in range(10)] + [f"(declare-const Y_{j} Real)" for j in range(3)]
        for i, v in enumerate(x0):
            lines += [f"(assert (>= X_{i} {v - eps}))", f"(assert (<= X_{i} {v + eps}))"]
        lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in others) + "))")
        prop = tmp_path / f"p{eps}.vnnlib"
        prop.write_text("\n".join(lines))
        plain = verify(str(tmp_path / "tiny.onnx"), prop, VerifyOptions(method="ibp", timeout=30, max_split_dim=0, steps=0,
                                                                         bab=False))
        full = verify(str(tmp_path / "tiny.onnx"), prop, VerifyOptions(method="ibp", timeout=30, max_split_dim=0, steps=0,
                                                                        complete=True, bab=False))
        bab = verify(str(tmp_path / "tiny.onnx"), prop, VerifyOptions(method="ibp", timeout=30, max_split_dim=0,
                                                                       steps=0))
        assert bab.status == full.status, (eps, bab.detail, full.detail)
        ys = forward((x0 + eps * rng.uniform(-1, 1, (50000, 10))).astype(np.float32))
        hit = bool((ys[:, others].max(1) >= ys[:, label]).any())
        assert full.status != "unknown", (eps, full.detail)
        assert full.status == ("sat" if hit else "unsat") or (full.status == "sat" and not hit)
        if plain.status != "unknown":
            assert plain.status == full.status
        seen.append((plain.status, full.status))
    assert ("unknown", "unsat") in seen or ("unknown", "sat") in seen, seen


def test_counterexample_at_a_pinned_input_float32_cannot_represent_is_accepted(tmp_path):
    """Inputs pinned to ``lo == hi`` at values float32 cannot represent (0.1, ...): the nearest float32
    point is accepted as VNN-COMP does (within 1e-4 of the box), so a real violation is ``sat``."""
    forward = _tiny_onnx(tmp_path / "tiny.onnx")
    x0 = np.round(np.linspace(0.1, 0.9, 10), 3)
    assert any(float(np.float32(v)) != v for v in x0)
    y0 = forward(x0[None].astype(np.float32))[0]
    lines = [f"(declare-const X_{i} Real)" for i in range(10)] + [f"(declare-const Y_{j} Real)" for j in range(3)]
    for i, v in enumerate(x0):
        lines += [f"(assert (>= X_{i} {float(v)!r}))", f"(assert (<= X_{i} {float(v)!r}))"]
    lines.append(f"(assert (<= Y_0 {float(y0[0]) + 0.01!r}))")  # the pinned point itself is unsafe
    prop = tmp_path / "pinned.vnnlib"
    prop.write_text("\n".join(lines))
    res = verify(str(tmp_path / "tiny.onnx"), prop, VerifyOptions(timeout=20))
    assert res.status == "sat", res.detail
    x, y = res.counterexample
    assert np.all(np.abs(x.astype(np.float64) - x0) <= 1e-4)
    assert y[0] <= float(y0[0]) + 0.01
    # and a property the pinned point does not violate is not "sat"
    lines[-1] = f"(assert (<= Y_0 {float(y0[0]) - 0.01!r}))"
    prop.write_text("\n".join(lines))
    assert verify(str(tmp_path / "tiny.onnx"), prop, VerifyOptions(timeout=20)).status == "unsat"


def test_model_with_several_inputs_and_outputs(tmp_path):
    """X_i run over the inputs flattened in order, Y_j over the outputs; onnxruntime is fed each input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    W1 = rng.normal(0, 0.5, (4, 5)).astype(np.float32)
    W2 = rng.normal(0, 0.5, (3, 4)).astype(np.float32)
    inits = [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(W2, "W2"),
             numpy_helper.from_array(np.array([2, 1], dtype=np.int64), "sizes")]
    nodes = [helper.make_node("Concat", ["A", "B"], ["AB"], axis=1),
             helper.make_node("Gemm", ["AB", "W1"], ["H"], transB=1),
             helper.make_node("Relu", ["H"], ["R"]),
             helper.make_node("Gemm", ["R", "W2"], ["Y"], transB=1),
             helper.make_node("Split", ["Y", "sizes"], ["Y1", "Y2"], axis=1)]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, 3]),
                                             helper.make_tensor_value_info("B", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("Y1", TensorProto.FLOAT, [1, 2]),
                               helper.make_tensor_value_info("Y2", TensorProto.FLOAT, [1, 1])], inits)
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)

    def forward(x):
        return np.maximum(x @ W1.T, 0) @ W2.T

    x0 = np.array([0.1, -0.2, 0.3, 0.4, -0.5])
    eps = 0.05
    ys = forward(x0 + eps * rng.uniform(-1, 1, (20000, 5)))
    for threshold, expect in ((float(ys[:, 2].min()) - 0.05, "unsat"), (float(ys[:, 2].max()) - 1e-3, "sat")):
        lines = [f"(declare-const X_{i} Real)" for i in range(5)] + [f"(declare-const Y_{j} Real)" for j in range(3)]
        for i, v in enumerate(x0):
            lines += [f"(assert (>= X_{i} {float(v - eps)!r}))", f"(assert (<= X_{i} {float(v + eps)!r}))"]
        lines.append(f"(assert (<= Y_2 {threshold!r}))")  # Y_2: the second output's only entry
        prop = tmp_path / "p.vnnlib"
        prop.write_text("\n".join(lines))
        res = verify(str(path), prop, VerifyOptions(timeout=20))
        assert res.status == expect, (threshold, res.detail)
        if expect == "sat":
            x, y = res.counterexample
            assert np.allclose(y, forward(x.astype(np.float64)), atol=1e-4) and y[2] <= threshold


def _linear_onnx(path, W: np.ndarray, b: np.ndarray):
    """``Y = W X + b`` as one ONNX Gemm."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(W.astype(np.float32), "W"), numpy_helper.from_array(b.astype(np.float32), "b")]
    graph = helper.make_graph([helper.make_node("Gemm", ["X", "W", "b"], ["Y"], transB=1)], "lin",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, W.shape[1]])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, W.shape[0]])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)


def test_input_split_score_is_the_bound_coefficient_times_width(tmp_path):
    """On a linear network CROWN's bound is exact, ``L = Σ_i min(a_i lo_i, a_i hi_i) + c``: the split score
    must be ``|a_i| (hi_i - lo_i)`` (α,β-CROWN's sb score), and the bound's corner must be the minimiser."""
    import time

    import torch
    from boundc.frontends.vnnlib import read_vnnlib

    from boundc.verify.verifier import _Search

    rng = np.random.default_rng(0)
    W = rng.normal(0, 1, (3, 6)).astype(np.float32)
    W[0, 2] = 0.0  # an input the bound does not depend on: score ~ 0 however wide it is
    b = rng.normal(0, 1, 3).astype(np.float32)
    _linear_onnx(tmp_path / "lin.onnx", W, b)
    lo = np.array([-1.0, 0.0, -50.0, 0.5, -0.2, 1.0])
    hi = np.array([1.0, 3.0, 50.0, 0.7, 0.2, 1.5])
    a = W[0].astype(np.float64)
    low = float(np.minimum(a * lo, a * hi).sum() + b[0])
    lines = [f"(declare-const X_{i} Real)" for i in range(6)] + [f"(declare-const Y_{j} Real)" for j in range(3)]
    lines += [f"(assert (>= X_{i} {float(v)!r}))" for i, v in enumerate(lo)]
    lines += [f"(assert (<= X_{i} {float(v)!r}))" for i, v in enumerate(hi)]
    lines.append(f"(assert (<= Y_0 {low + 1.0!r}))")  # reachable, so the row stays open
    prop = tmp_path / "p.vnnlib"
    prop.write_text("\n".join(lines))
    model = VerifierModel(str(tmp_path / "lin.onnx"), "crown")
    _, _, specs = read_vnnlib(prop)
    search = _Search(model, specs[0], VerifyOptions(), time.monotonic() + 60, torch.Generator().manual_seed(0))
    open_, score, corner = search.bound_boxes(specs[0].lower[None], specs[0].upper[None])
    assert open_.tolist() == [[True]]
    expect = np.abs(a) * (hi - lo)
    np.testing.assert_allclose(score[0].numpy(), expect, rtol=1e-6, atol=1e-4)
    assert int(score.argmax()) == int(np.argmax(expect)) and int(score.argmax()) != 2
    x = corner[0].numpy()
    moves = a != 0  # inputs the bound depends on sit at a vertex, the others at the centre
    assert np.all(((x == lo) | (x == hi))[moves]) and np.all(x[~moves] == ((lo + hi) / 2)[~moves])
    np.testing.assert_allclose(float(W[0].astype(np.float64) @ x + b[0]), low, atol=1e-5)
    nlo, nhi = search.split(specs[0].lower[None], specs[0].upper[None], score)
    k = int(np.argmax(expect))
    assert float(nhi[0, k]) == float(nlo[1, k]) == (lo[k] + hi[k]) / 2


def test_input_splitting_proves_acasxu_property_one_in_few_boxes():
    """ACAS Xu net 3_3, property 1: bisecting by the bound's own input coefficients proves it in a few
    hundred boxes (splitting by the concrete gradient at the centre left 3134 boxes open after 116 s)."""
    root = shared_path("vnncomp", "acasxu")
    res = verify(str(root / "ACASXU_run2a_3_3_batch_2000.onnx"), root / "prop_1.vnnlib",
                 VerifyOptions(method="crown", timeout=120))
    assert res.status == "unsat", res.detail
    assert res.boxes < 2000, res.boxes
