"""ONNX operator coverage for VNN-COMP networks: each op in a small model, checked against onnxruntime.

For every model: (1) the bound network at eps = 0 reproduces onnxruntime, (2) with every method the bounds
contain onnxruntime's outputs at sampled points and vertices of the box, (3) the bounds are finite.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

import boundc
from boundc.errors import UnsupportedOpError
from tests.soundness import check_sound

METHODS = ["ibp", "crown-ibp", "crown", "fast-lin", "alpha-crown", "forward"]


def _init(name: str, arr) -> onnx.TensorProto:
    a = np.asarray(arr)
    if a.dtype == np.float64:
        a = a.astype(np.float32)
    return nh.from_array(a, name)


def _rand(*shape: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _model(nodes: list, inputs: dict[str, list], outputs: list[str], inits: list, opset: int = 13) -> onnx.ModelProto:
    ins = [h.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()]
    outs = [h.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs]
    graph = h.make_graph(nodes, "g", ins, outs, inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])


class _Ort:
    """onnxruntime as a function of the flat (concatenated) input, returning the flat (concatenated) outputs."""

    def __init__(self, model: onnx.ModelProto) -> None:
        import onnxruntime as ort

        self.sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        self.inputs = self.sess.get_inputs()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        if B > 1 and any(i.shape[0] == 1 for i in self.inputs):  # a fixed batch of 1: one row at a time
            return torch.cat([self(x[k:k + 1]) for k in range(B)])
        flat = x.reshape(B, -1).detach().numpy().astype(np.float32)
        feed, start = {}, 0
        for i in self.inputs:
            per = [d for d in i.shape[1:]]
            n = int(np.prod(per))
            feed[i.name] = flat[:, start:start + n].reshape([B, *per])
            start += n
        outs = self.sess.run(None, feed)
        return torch.from_numpy(np.concatenate([o.reshape(B, -1) for o in outs], 1))


def _check(model: onnx.ModelProto, eps: float = 0.1, centre: float = 0.0, methods=METHODS, seed: int = 3) -> None:
    """eps = 0 matches onnxruntime; every method sound (sampling and vertices) and finite on a box."""
    f = _Ort(model)
    bms = {m: boundc.compile(model, method=m) for m in methods}
    shape = next(iter(bms.values())).input_shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((2, *shape), generator=g) * 0.5 + centre
    y = f(x)
    for m, bm in bms.items():
        with torch.no_grad():
            lo, up = bm(x, x)
        torch.testing.assert_close(lo.reshape(y.shape), y, rtol=1e-4, atol=1e-4, msg=lambda s, m=m: f"{m}: {s}")
        torch.testing.assert_close(up.reshape(y.shape), y, rtol=1e-4, atol=1e-4, msg=lambda s, m=m: f"{m}: {s}")
        xl, xu = x - eps, x + eps
        check_sound(bm, f, xl, xu, samples=48, pgd_steps=0, method_name=m)


# -- structural ops ----------------------------------------------------------------------------

def test_slice():
    """Slice with axes / negative ends / steps on a 4-d value, and the opset-9 attribute form."""
    nodes = [h.make_node("Relu", ["x"], ["r"]),
             h.make_node("Slice", ["r", "st", "en", "ax", "sp"], ["s"]),
             h.make_node("Flatten", ["s"], ["f"]),
             h.make_node("Gemm", ["f", "w"], ["y"], transB=1)]
    inits = [_init("st", np.array([1, 0], np.int64)), _init("en", np.array([3, -1], np.int64)),
             _init("ax", np.array([1, 3], np.int64)), _init("sp", np.array([1, 2], np.int64)),
             _init("w", _rand(3, 2 * 4 * 2))]
    _check(_model(nodes, {"x": ["N", 3, 4, 5]}, ["y"], inits))
    nodes9 = [h.make_node("Slice", ["x"], ["s"], starts=[1], ends=[100], axes=[1]),
              h.make_node("Sigmoid", ["s"], ["y"])]
    _check(_model(nodes9, {"x": ["N", 6]}, ["y"], [], opset=9))


def test_split_gather_concat():
    """Split into unequal parts, Gather with a 2-d and a scalar index, Concat of batched pieces."""
    nodes = [h.make_node("Gemm", ["x", "w1"], ["a"], transB=1),
             h.make_node("Split", ["a", "parts"], ["p", "q"], axis=1),
             h.make_node("Relu", ["p"], ["rp"]),
             h.make_node("Gather", ["q", "idx"], ["gq"], axis=1),      # (N, 2, 2)
             h.make_node("Flatten", ["gq"], ["fq"]),
             h.make_node("Gather", ["q", "one"], ["g1"], axis=1),      # (N,)
             h.make_node("Unsqueeze", ["g1", "ax1"], ["u1"]),
             h.make_node("Concat", ["fq", "rp", "u1"], ["c"], axis=1),
             h.make_node("Gemm", ["c", "w2"], ["y"], transB=1)]
    inits = [_init("w1", _rand(10, 6)), _init("parts", np.array([4, 6], np.int64)),
             _init("idx", np.array([[0, 5], [-1, 2]], np.int64)), _init("one", np.array(3, np.int64)),
             _init("ax1", np.array([1], np.int64)), _init("w2", _rand(3, 9, seed=1))]
    _check(_model(nodes, {"x": ["N", 6]}, ["y"], inits))


def test_split_equal_opset18():
    nodes = [h.make_node("Split", ["x"], ["a", "b", "c"], axis=1, num_outputs=3),
             h.make_node("Sub", ["a", "c"], ["d"]), h.make_node("Add", ["d", "b"], ["y"])]
    _check(_model(nodes, {"x": ["N", 9]}, ["y"], [], opset=18))


@pytest.mark.parametrize("batched", [True, False])
def test_concat_with_constants(batched: bool):
    """Concat of one perturbed value with constants before and after it (batched and rank-1 inputs)."""
    lead = [1] if batched else []
    nodes = [h.make_node("Relu", ["x"], ["r"]),
             h.make_node("Concat", ["c1", "r", "c2"], ["c"], axis=-1),
             h.make_node("Tanh", ["c"], ["y"])]
    inits = [_init("c1", _rand(*lead, 2, seed=4)), _init("c2", _rand(*lead, 3, seed=5))]
    x_shape = [1, 5] if batched else [5]
    model = _model(nodes, {"x": x_shape}, ["y"], inits)
    if batched:
        _check(model)
    else:  # a rank-1 input: one example, no batch dimension (checked at eps = 0 and by sampling one by one)
        bm = boundc.compile(model, method="crown")
        import onnxruntime as ort

        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        x = torch.randn(1, 5)
        ref = sess.run(None, {"x": x[0].numpy()})[0]
        lo, up = bm(x, x)
        np.testing.assert_allclose(lo.numpy().reshape(-1), ref, atol=1e-5)
        lo, up = bm(x - 0.2, x + 0.2)
        for _ in range(20):
            p = (x - 0.2 + 0.4 * torch.rand(1, 5))[0].numpy()
            v = sess.run(None, {"x": p})[0]
            assert (lo.numpy().reshape(-1) <= v + 1e-5).all() and (v <= up.numpy().reshape(-1) + 1e-5).all()


def test_reduce_sum_mean():
    """ReduceSum (axes input, keepdims=0) and ReduceMean (axes attribute, keepdims=1)."""
    nodes = [h.make_node("Relu", ["x"], ["r"]),
             h.make_node("ReduceSum", ["r", "ax"], ["s"], keepdims=0),           # (N, 3)
             h.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=1),      # (N, 1, 4)
             h.make_node("Flatten", ["m"], ["fm"]),
             h.make_node("Concat", ["s", "fm"], ["c"], axis=1),
             h.make_node("Gemm", ["c", "w"], ["y"], transB=1)]
    inits = [_init("ax", np.array([2], np.int64)), _init("w", _rand(2, 7))]
    _check(_model(nodes, {"x": ["N", 3, 4]}, ["y"], inits))
    nodes18 = [h.make_node("ReduceMean", ["x", "ax"], ["y"], keepdims=0)]
    _check(_model(nodes18, {"x": ["N", 3, 4, 2]}, ["y"], [_init("ax", np.array([-1, 1], np.int64))], opset=18))
    nodes_all = [h.make_node("ReduceSum", ["x"], ["y"], keepdims=1)]  # every axis, the batch kept
    _check(_model(nodes_all, {"x": [1, 3, 4]}, ["y"], []))


def test_where_constant_condition():
    """Where between a perturbed value and a constant, and between two perturbed values."""
    rng = np.random.default_rng(0)
    nodes = [h.make_node("Gemm", ["x", "w1"], ["a"], transB=1),
             h.make_node("Where", ["c1", "a", "k"], ["b"]),
             h.make_node("Relu", ["b"], ["r"]),
             h.make_node("Where", ["c2", "r", "a"], ["d"]),
             h.make_node("Where", ["c3", "k", "d"], ["e"]),
             h.make_node("Gemm", ["e", "w2"], ["y"], transB=1)]
    inits = [_init("w1", _rand(6, 4)), _init("w2", _rand(3, 6, seed=2)), _init("k", _rand(6, seed=3)),
             nh.from_array(rng.random((1, 6)) > 0.5, "c1"), nh.from_array(rng.random(6) > 0.5, "c2"),
             nh.from_array(rng.random(6) > 0.5, "c3")]
    _check(_model(nodes, {"x": ["N", 4]}, ["y"], inits))


# -- elementwise functions ------------------------------------------------------------------------

def test_pow_and_sqrt():
    """Pow with exponents 2 and 3, Sqrt / Pow 0.5 of a non-negative value."""
    nodes = [h.make_node("Gemm", ["x", "w1"], ["a"], transB=1),
             h.make_node("Pow", ["a", "two"], ["p2"]),
             h.make_node("Pow", ["a", "three"], ["p3"]),
             h.make_node("Relu", ["a"], ["r"]),
             h.make_node("Add", ["r", "eps"], ["rp"]),
             h.make_node("Pow", ["rp", "half"], ["sq"]),
             h.make_node("Sqrt", ["rp"], ["sq2"]),
             h.make_node("Concat", ["p2", "p3", "sq", "sq2"], ["c"], axis=1),
             h.make_node("Gemm", ["c", "w2"], ["y"], transB=1)]
    inits = [_init("w1", _rand(4, 3, scale=0.7)), _init("two", np.array(2.0, np.float32)),
             _init("three", np.array(3.0, np.float32)), _init("half", np.array(0.5, np.float32)),
             _init("eps", np.array(0.1, np.float32)), _init("w2", _rand(2, 16, seed=1))]
    _check(_model(nodes, {"x": ["N", 3]}, ["y"], inits))


def test_pow_unsupported_exponent_is_clear():
    nodes = [h.make_node("Pow", ["x", "e"], ["y"])]
    model = _model(nodes, {"x": ["N", 3]}, ["y"], [_init("e", np.array(1.5, np.float32))])
    with pytest.raises(UnsupportedOpError, match="exponent 1.5"):
        boundc.compile(model)


def test_sign_floor_ceil():
    """Step functions: Sign, Floor, Ceil (exact away from their steps, constant lines across them)."""
    nodes = [h.make_node("Gemm", ["x", "w1"], ["a"], transB=1),
             h.make_node("Sign", ["a"], ["s"]),
             h.make_node("Floor", ["a"], ["f"]),
             h.make_node("Ceil", ["a"], ["c"]),
             h.make_node("Concat", ["s", "f", "c"], ["k"], axis=1),
             h.make_node("Gemm", ["k", "w2"], ["y"], transB=1)]
    inits = [_init("w1", _rand(5, 4, scale=2.0)), _init("w2", _rand(3, 15, seed=1))]
    _check(_model(nodes, {"x": ["N", 4]}, ["y"], inits), eps=0.05)


@pytest.mark.parametrize("eps", [0.05, 1.0, 5.0])
def test_sin_cos(eps: float):
    """Sin and Cos (boxes within a convexity region, across several, and wider than a period)."""
    nodes = [h.make_node("Gemm", ["x", "w1"], ["a"], transB=1),
             h.make_node("Sin", ["a"], ["s"]),
             h.make_node("Gemm", ["s", "w2"], ["b"], transB=1),
             h.make_node("Cos", ["b"], ["c"]),
             h.make_node("Gemm", ["c", "w3"], ["y"], transB=1)]
    inits = [_init("w1", _rand(6, 4, scale=1.5)), _init("w2", _rand(6, 6, seed=1)),
             _init("w3", _rand(3, 6, seed=2))]
    _check(_model(nodes, {"x": ["N", 4]}, ["y"], inits), eps=eps)


def test_exp():
    nodes = [h.make_node("Gemm", ["x", "w1"], ["a"], transB=1), h.make_node("Exp", ["a"], ["e"]),
             h.make_node("Gemm", ["e", "w2"], ["y"], transB=1)]
    _check(_model(nodes, {"x": ["N", 4]}, ["y"], [_init("w1", _rand(5, 4, scale=0.5)), _init("w2", _rand(2, 5))]))


@pytest.mark.parametrize("opset,axis,shape", [(13, -1, ["N", 5]), (13, 1, ["N", 3, 4]), (11, 1, ["N", 2, 3])])
def test_softmax(opset: int, axis: int, shape: list):
    """Softmax on the last axis, on an inner axis, and with opset < 13's flattening semantics."""
    nodes = [h.make_node("Mul", ["x", "k"], ["a"]), h.make_node("Softmax", ["a"], ["s"], axis=axis),
             h.make_node("Flatten", ["s"], ["y"])]
    _check(_model(nodes, {"x": shape}, ["y"], [_init("k", np.array(2.0, np.float32))], opset=opset), eps=0.2)


def test_softmax_after_gemm_wide_box():
    nodes = [h.make_node("Gemm", ["x", "w1"], ["a"], transB=1), h.make_node("Softmax", ["a"], ["y"], axis=1)]
    _check(_model(nodes, {"x": ["N", 4]}, ["y"], [_init("w1", _rand(4, 4, scale=2.0))]), eps=1.0)


# -- resizing and transposed convolution ---------------------------------------------------------

@pytest.mark.parametrize("mode,kw,how", [("nearest", {}, "scales"), ("linear", {}, "scales"),
                                         ("linear", {"coordinate_transformation_mode": "align_corners"}, "sizes"),
                                         ("nearest", {"coordinate_transformation_mode": "asymmetric",
                                                      "nearest_mode": "floor"}, "sizes")])
def test_resize(mode: str, kw: dict, how: str):
    """Resize (nearest / linear, scales / sizes) of an NCHW value, then Relu and Gemm."""
    if how == "scales":
        inits = [_init("sc", np.array([1, 1, 2, 1.5], np.float32))]
        ins = ["x", "", "sc"]
        out_hw = (6, 6)
    else:
        inits = [_init("sz", np.array([1, 2, 5, 7], np.int64))]
        ins = ["x", "", "", "sz"]
        out_hw = (5, 7)
    nodes = [h.make_node("Resize", ins, ["r"], mode=mode, **kw), h.make_node("Relu", ["r"], ["a"]),
             h.make_node("Flatten", ["a"], ["f"]), h.make_node("Gemm", ["f", "w"], ["y"], transB=1)]
    inits.append(_init("w", _rand(3, 2 * out_hw[0] * out_hw[1], scale=0.3)))
    _check(_model(nodes, {"x": [1, 2, 3, 4]}, ["y"], inits, opset=13))


def test_upsample_opset9():
    nodes = [h.make_node("Upsample", ["x", "sc"], ["u"], mode="nearest"), h.make_node("Flatten", ["u"], ["y"])]
    _check(_model(nodes, {"x": [1, 1, 2, 3]}, ["y"], [_init("sc", np.array([1, 1, 2, 2], np.float32))], opset=9))


@pytest.mark.parametrize("strides,pads,output_padding,group", [([2, 2], [1, 1, 1, 1], [1, 1], 1),
                                                               ([1, 1], [0, 0, 0, 0], [0, 0], 2)])
def test_conv_transpose(strides, pads, output_padding, group):
    """ConvTranspose (stride, padding, output padding, groups, bias), then Relu and Gemm."""
    w = _rand(4, 6 // group, 3, 3, scale=0.5)
    x = torch.zeros(1, 4, 3, 3)
    out = torch.nn.functional.conv_transpose2d(x, torch.from_numpy(w), None, strides, pads[:2], output_padding, group)
    n = out[0].numel()
    nodes = [h.make_node("ConvTranspose", ["x", "w", "b"], ["c"], strides=strides, pads=pads,
                         output_padding=output_padding, group=group),
             h.make_node("Relu", ["c"], ["r"]), h.make_node("Flatten", ["r"], ["f"]),
             h.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    inits = [_init("w", w), _init("b", _rand(6, seed=1)), _init("w2", _rand(3, n, seed=2, scale=0.2))]
    _check(_model(nodes, {"x": ["N", 4, 3, 3]}, ["y"], inits))


# -- several inputs and outputs -----------------------------------------------------------------

def test_multi_input_output():
    """Two inputs (flat IR input = their concatenation) and two outputs (concatenated, flattened)."""
    nodes = [h.make_node("Gemm", ["a", "w1"], ["ga"], transB=1),
             h.make_node("Flatten", ["b"], ["fb"]),
             h.make_node("Add", ["ga", "fb"], ["s"]),
             h.make_node("Relu", ["s"], ["y1"]),
             h.make_node("Reshape", ["s", "shp"], ["y2pre"]),
             h.make_node("Sigmoid", ["y2pre"], ["y2"])]
    inits = [_init("w1", _rand(4, 3)), _init("shp", np.array([-1, 2, 2], np.int64))]
    model = _model(nodes, {"a": ["N", 3], "b": ["N", 2, 2]}, ["y1", "y2"], inits)
    bm = boundc.compile(model)
    assert bm.input_shape == (7,)
    _check(model)


# -- errors ---------------------------------------------------------------------------------------

def test_every_unsupported_op_listed():
    """One error lists every op without a lowering, also those downstream of another unsupported one."""
    nodes = [h.make_node("Relu", ["x"], ["r"], name="r"), h.make_node("Asin", ["r"], ["a"], name="asin1"),
             h.make_node("Acos", ["a"], ["b"], name="acos1"), h.make_node("Atan", ["x"], ["c"], name="atan1"),
             h.make_node("Pow", ["x", "e"], ["p"], name="pow1"),
             h.make_node("Add", ["b", "c"], ["d"], name="add"), h.make_node("Add", ["d", "p"], ["y"], name="add2")]
    model = _model(nodes, {"x": ["N", 4]}, ["y"], [_init("e", np.array(-1.0, np.float32))])
    with pytest.raises(UnsupportedOpError) as info:
        boundc.compile(model)
    msg = str(info.value)
    for part in ("Asin at ONNX node 'asin1'", "Acos at ONNX node 'acos1'", "Atan at ONNX node 'atan1'",
                 "Pow at ONNX node 'pow1'"):
        assert part in msg, msg
    assert len(info.value.problems) == 4


@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_conv_net_new_activations(method: str):
    """Conv -> Sin -> Conv -> Sign / Exp: backward passes over feature maps (patches form where it applies)."""
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), h.make_node("Sin", ["c1"], ["s"]),
             h.make_node("Conv", ["s", "w2"], ["c2"]), h.make_node("Exp", ["c2"], ["e"]),
             h.make_node("Sign", ["c2"], ["g"]), h.make_node("Add", ["e", "g"], ["a"]),
             h.make_node("Flatten", ["a"], ["f"]), h.make_node("Gemm", ["f", "w3"], ["y"], transB=1)]
    inits = [_init("w1", _rand(3, 1, 3, 3, scale=0.5)), _init("w2", _rand(2, 3, 3, 3, seed=1, scale=0.3)),
             _init("w3", _rand(3, 2 * 3 * 3, seed=2, scale=0.3))]
    _check(_model(nodes, {"x": ["N", 1, 5, 5]}, ["y"], inits), eps=0.05, methods=[method])


# -- the torch frontend -----------------------------------------------------------------------------

class _TorchNet(torch.nn.Module):
    """Slices, select, softmax, sin / cos, powers and several outputs through the torch frontend."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x: torch.Tensor):
        h = self.fc(x)
        return (torch.relu(h[:, 1:4]), torch.softmax(torch.sin(h), -1), h[:, 2:3] ** 2,
                torch.sqrt(torch.relu(h) + 1).reshape(-1, 5, 1), torch.cos(h.reshape(-1, 5, 1)[:, 3]))


@pytest.mark.parametrize("method", METHODS)
def test_torch_frontend_new_ops(method: str):
    torch.manual_seed(0)
    model = _TorchNet()
    x = torch.randn(2, 4)

    def f(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([o.reshape(t.shape[0], -1) for o in model(t)], 1)

    bm = boundc.compile(model, x, method=method)
    with torch.no_grad():
        lo, up = bm(x, x)
        y = f(x)
    torch.testing.assert_close(lo, y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(up, y, rtol=1e-5, atol=1e-5)
    check_sound(bm, f, x - 0.3, x + 0.3, samples=32, pgd_steps=5, method_name=method)
