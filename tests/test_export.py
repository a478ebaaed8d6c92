"""ONNX certifier export: onnxruntime matches the torch BoundModule, dynamic batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared_path

import boundc
from boundc import examples


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
    else:
        ref = bm(lo, hi)
    out = sess.run(None, feeds)
    assert [i.name for i in sess.get_outputs()] == ["lower", "upper"]
    for o, r in zip(out, ref):
        np.testing.assert_allclose(o, r.detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
@pytest.mark.parametrize("spec", [None, "margin"])
def test_zoo_export(tmp_path, method, spec):
    if method not in boundc.methods():
        pytest.skip(f"{method} not available")
    bm = boundc.compile(examples.build("mlp").eval(), torch.rand(2, 1, 28, 28), method=method)
    _check(bm, tmp_path / "c.onnx", spec, batch=3)
    _check(bm, tmp_path / "c.onnx", spec, batch=5)


@pytest.mark.parametrize("model", ["verivital/Convnet_maxpool.onnx", "acasxu/ACASXU_run2a_1_1_batch_2000.onnx"])
def test_vnncomp_export_ibp(tmp_path, model):
    bm = boundc.compile(str(shared_path("vnncomp", model)), method="ibp")
    _check(bm, tmp_path / "c.onnx", "margin" if "Convnet" in model else None)
