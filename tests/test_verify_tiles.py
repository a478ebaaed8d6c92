"""Tiled MILP bounds (:mod:`boundc.verify.tiles`) on networks with one hidden convolutional ReLU layer."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import shared_path

from boundc.verify import VerifierModel, VerifyOptions, verify
from boundc.verify.milp import MilpOptions
from boundc.verify.tiles import OneLayerForm, tile_bound


def _conv_onnx(path, seed: int = 0, second_relu: bool = False, maxpool: bool = False):
    """conv 1→3 (2×2) → relu → avg-pool 2 → flatten → gemm 3 (or a second relu / a max-pool) on a 7×7 input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    Wc = rng.normal(0, 1, (3, 1, 2, 2)).astype(np.float32)
    bc = rng.normal(0, 0.3, 3).astype(np.float32)
    Wo = rng.normal(0, 1, (3, 27)).astype(np.float32)
    bo = rng.normal(0, 0.1, 3).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((Wc, "Wc"), (bc, "bc"), (Wo, "Wo"), (bo, "bo"))]
    pool = helper.make_node("MaxPool" if maxpool else "AveragePool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2])
    nodes = [helper.make_node("Conv", ["X", "Wc", "bc"], ["c"]), helper.make_node("Relu", ["c"], ["r"]), pool,
             helper.make_node("Flatten", ["p"], ["f"], axis=1), helper.make_node("Gemm", ["f", "Wo", "bo"], ["g"], transB=1)]
    nodes.append(helper.make_node("Relu", ["g"], ["Y"]) if second_relu else helper.make_node("Identity", ["g"], ["Y"]))
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, 7, 7])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)

    def forward(x):  # x (N, 49) float64
        x = torch.as_tensor(x, dtype=torch.float64).reshape(-1, 1, 7, 7)
        h = torch.relu(torch.nn.functional.conv2d(x, torch.from_numpy(Wc).double(), torch.from_numpy(bc).double()))
        h = torch.nn.functional.avg_pool2d(h, 2).flatten(1)
        return (h @ torch.from_numpy(Wo).double().T + torch.from_numpy(bo).double()).numpy()
    return forward


def test_one_layer_form_reproduces_the_network(tmp_path):
    forward = _conv_onnx(tmp_path / "n.onnx")
    form = OneLayerForm.of(VerifierModel(str(tmp_path / "n.onnx"), "crown").graph)
    assert form is not None and form.shape == (3, 6, 6)
    x = np.random.default_rng(1).uniform(-1, 1, (20, 49))
    z = x @ form.W.toarray().T + form.b
    np.testing.assert_allclose(np.maximum(z, 0) @ form.L.T + form.h, forward(x), atol=1e-5)
    assert form.W.nnz == 3 * 36 * 4  # each neuron reads its 2×2 patch only


@pytest.mark.parametrize("kw", [dict(second_relu=True), dict(maxpool=True)])
def test_networks_of_another_form_are_refused(tmp_path, kw):
    _conv_onnx(tmp_path / "n.onnx", **kw)
    assert OneLayerForm.of(VerifierModel(str(tmp_path / "n.onnx"), "crown").graph) is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tile_bounds_are_sound_and_tighten_with_the_tile(tmp_path, seed):
    """Every tiling's bound is below the sampled minimum; nested tilings tighten (tiles of 1 ⊂ 2 ⊂ all),
    and the whole-layer MILP is at least CROWN's LP bound."""
    forward = _conv_onnx(tmp_path / "n.onnx", seed)
    model = VerifierModel(str(tmp_path / "n.onnx"), "crown")
    form = OneLayerForm.of(model.graph)
    rng = np.random.default_rng(seed)
    x0, eps = rng.uniform(0, 1, 49), 0.3
    lo, hi = torch.from_numpy(x0 - eps), torch.from_numpy(x0 + eps)
    xs = rng.uniform(x0 - eps, x0 + eps, (40000, 49))
    xs[:2000] = np.where(rng.random((2000, 49)) < 0.5, x0 - eps, x0 + eps)  # vertices too
    ys = forward(xs)
    for r in range(3):
        c = torch.zeros(3, dtype=torch.float64)
        c[r], c[(r + 1) % 3] = 1.0, -1.0
        sampled = float((ys @ c.numpy()).min())
        bounds = [form.row_minimum(lo.numpy(), hi.numpy(), c.numpy(), t, time.monotonic() + 60, MilpOptions())
                  for t in (1, 2, 6)]
        assert tile_bound(form, lo, hi, c, 0.0, time.monotonic() + 60, first_tile=1)[0] >= bounds[0] - 1e-9
        crown = float(model.bounds(lo[None], hi[None], c[None]))
        assert all(b <= sampled + 1e-6 for b in bounds), (bounds, sampled)
        assert bounds[0] <= bounds[1] + 1e-6 and bounds[1] <= bounds[2] + 1e-6, bounds
        assert bounds[2] >= crown - 1e-6, (bounds, crown)


def test_tiles_prove_what_branch_and_bound_could_not():
    """verivital's Convnet_avgpool, property 7 at eps 0.04: α-CROWN leaves two disjuncts at -0.45 and -0.49
    and branch and bound stalled at -0.26 after 300 s; tiles of 12 prove both in seconds."""
    root = shared_path("vnncomp", "verivital")
    res = verify(str(root / "Convnet_avgpool.onnx"), root / "specs" / "avgpool_specs" / "prop_7_0.04.vnnlib",
                 VerifyOptions(method="crown", timeout=120, steps=5))
    assert res.status == "unsat", res.detail


def test_cli_no_tiles_leaves_it_to_branch_and_bound(tmp_path):
    """``--no-tiles`` turns the stage off: within 8 s branch and bound alone cannot prove property 7."""
    from boundc.cli import main

    root = shared_path("vnncomp", "verivital")
    out = tmp_path / "r.txt"
    assert main(["verify", str(root / "Convnet_avgpool.onnx"), str(root / "specs/avgpool_specs/prop_7_0.04.vnnlib"),
                 "--method", "crown", "--timeout", "8", "--no-tiles", "--out", str(out)]) == 0
    assert out.read_text().strip() == "unknown"


def test_a_product_of_two_perturbed_values_is_not_taken_for_affine(tmp_path):
    """``mul`` is affine only with one constant factor: a network ending in ``relu(z) * relu(z)`` depends on
    the input only through the ReLU but is not affine after it, so it must be refused (a Jacobian at one
    point would be no bound at all)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (1, 1, 2, 2)).astype(np.float32), "Wc"),
             numpy_helper.from_array(rng.normal(0, 1, (3, 36)).astype(np.float32), "Wo")]
    nodes = [helper.make_node("Conv", ["X", "Wc"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Mul", ["r", "r"], ["m"]), helper.make_node("Flatten", ["m"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "Wo"], ["Y"], transB=1)]
    graph = helper.make_graph(nodes, "mul", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, 7, 7])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), tmp_path / "m.onnx")
    assert OneLayerForm.of(VerifierModel(str(tmp_path / "m.onnx"), "ibp").graph) is None
