"""ONNX certifier export: every method exports, onnxruntime matches the torch BoundModule, dynamic batch,
and the certifier stays within 3x the model's parameter bytes (no dense pooling / conv / transpose matrices)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared_path

import boundc
from boundc import examples
from boundc.errors import BoundcError

EXPORTABLE = [m for m in boundc.methods() if m != "alpha-crown"]
MODELS = ["mlp", "pool", "resnet"]


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def _check(bm, path, spec, batch=3):
    import onnxruntime as ort

    bm.export_onnx(path, spec=spec)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(batch, *bm.input_shape)
    lo, hi = x - 0.01, x + 0.01
    feeds = {"x_lower": lo.numpy(), "x_upper": hi.numpy()}
    k = bm.output_shape[-1]
    if spec == "margin":
        labels = torch.arange(batch) % k
        feeds["labels"] = labels.numpy()
        ref = bm(lo, hi, boundc.margin_spec(labels, k))
    elif spec == "C":
        C = torch.randn(batch, 4, k)
        feeds["C"] = C.numpy()
        ref = bm(lo, hi, C)
    else:
        ref = bm(lo, hi)
    out = sess.run(None, feeds)
    assert [i.name for i in sess.get_outputs()] == ["lower", "upper"]
    for o, r in zip(out, ref):
        np.testing.assert_allclose(o, r.detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", EXPORTABLE)
def test_every_method_exports(tmp_path, model, method):
    """Margin certifier of each method on an MLP, a CNN with avg-pool and the ResNet: equal to torch at
    1e-5 for two batch sizes, and at most 3x the parameter bytes."""
    net = examples.build(model)
    bm = boundc.compile(net, torch.rand(2, 1, 28, 28), method=method)
    path = tmp_path / "c.onnx"
    _check(bm, path, "margin", batch=3)
    _check(bm, path, "margin", batch=5)
    size, params = path.stat().st_size, _param_bytes(net)
    data = _data_bytes(path)
    assert data <= 3 * params, f"{method} certifier of {model}: {data} bytes of tensors for {params} parameter bytes"
    # The graph itself is small except for backward passes through a deep net with little weight: the
    # 21 kB ResNet's five unrolled CROWN passes are ~5k nodes (~11x its parameters); everything else is <= 3x.
    limit = 12 if (model, method) in {("resnet", "crown"), ("resnet", "fast-lin")} else 3
    assert size <= limit * params, f"{method} certifier of {model}: {size} bytes for {params} parameter bytes"


def _data_bytes(path) -> int:
    """Bytes of every tensor in an ONNX file: initializers and Constant nodes (dense matrices would show here)."""
    import onnx

    m = onnx.load(str(path))
    consts = [a.t for n in m.graph.node if n.op_type == "Constant" for a in n.attribute if a.HasField("t")]
    return sum(len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes for t in list(m.graph.initializer) + consts)


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "forward"])
@pytest.mark.parametrize("spec", [None, "C"])
def test_spec_variants(tmp_path, method, spec):
    bm = boundc.compile(examples.build("pool").eval(), torch.rand(2, 1, 28, 28), method=method)
    _check(bm, tmp_path / "c.onnx", spec, batch=3)


def test_alpha_crown_names_the_alternative(tmp_path):
    bm = boundc.compile(examples.build("mlp"), torch.rand(2, 1, 28, 28), method="alpha-crown")
    with pytest.raises(BoundcError, match="method='crown'"):
        bm.export_onnx(tmp_path / "c.onnx", spec="margin")


def test_export_patches_nothing():
    """Every backward rule is plain torch ops, so the exporter needs no swap."""
    from boundc.passes.rules import backward

    grads = (torch.nn.grad.conv1d_input, torch.nn.grad.conv2d_input, torch.nn.grad.conv3d_input)
    assert not any(f in grads for f in getattr(backward, "_CONV_INPUT", {}).values())


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
@pytest.mark.parametrize("spec", [None, "margin"])
def test_zoo_export(tmp_path, method, spec):
    bm = boundc.compile(examples.build("mlp").eval(), torch.rand(2, 1, 28, 28), method=method)
    _check(bm, tmp_path / "c.onnx", spec, batch=3)
    _check(bm, tmp_path / "c.onnx", spec, batch=5)


@pytest.mark.parametrize("model", ["verivital/Convnet_maxpool.onnx", "acasxu/ACASXU_run2a_1_1_batch_2000.onnx"])
def test_vnncomp_export_ibp(tmp_path, model):
    bm = boundc.compile(str(shared_path("vnncomp", model)), method="ibp")
    _check(bm, tmp_path / "c.onnx", "margin" if "Convnet" in model else None)
