"""Triton interval kernels vs their pure-torch references, on the CPU via the Triton interpreter.

``TRITON_INTERPRET=1`` is set before the kernel modules are imported (they are reloaded if an
earlier test imported them without it).  Shapes are tiny but cover tile multiples and
non-multiples (interpreter tiles are 16/32), batch 1 to 300, with and without the ReLU prologue.
"""

from __future__ import annotations

import importlib
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from boundc.kernels import dispatch  # noqa: E402
from boundc.passes.graph.fuse import fuse_relu_affine  # noqa: E402
from boundc.passes.rules.interval import Interval  # noqa: E402

import boundc  # noqa: E402
from boundc import codegen, examples  # noqa: E402
from boundc.errors import BoundcError  # noqa: E402
from boundc.options import CompileOptions  # noqa: E402

try:
    import triton  # noqa: F401

    HAS_TRITON, WHY = True, ""
except ImportError as err:  # pragma: no cover
    HAS_TRITON, WHY = False, f"triton cannot be imported: {err}"

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason=WHY or "triton cannot be imported")

if HAS_TRITON:
    for _name in ("boundc.kernels._compat", "boundc.kernels.interval_affine", "boundc.kernels.interval_conv"):
        if _name in sys.modules:
            importlib.reload(sys.modules[_name])
    from boundc.kernels.interval_affine import interval_affine, interval_affine_reference
    from boundc.kernels.interval_conv import interval_conv, interval_conv_reference


def _box(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Random leaf bounds ``l <= u`` straddling zero (so the ReLU prologue matters)."""
    x, r = torch.randn(shape), torch.rand(shape) * 0.5
    return (x - r).to(dtype).requires_grad_(), (x + r).to(dtype).requires_grad_()


def _compare(fused, ref, leaves, atol: float = 2e-4) -> None:
    """Outputs and the gradients of a random cotangent w.r.t. every leaf agree."""
    assert all(o.dtype == torch.float32 for o in fused)
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=atol)
    cot = [torch.randn_like(fused[0]), torch.randn_like(fused[1])]
    ga = torch.autograd.grad(fused, leaves, cot)
    gb = torch.autograd.grad(ref, leaves, [c.to(ref[0].dtype) for c in cot])
    for name, a, b in zip("lower upper weight bias".split(), ga, gb):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=1e-4, atol=atol * scale, msg=f"gradient w.r.t. {name}")


@needs_triton
@pytest.mark.parametrize("batch,k,n,relu,output,bias", [
    (1, 32, 32, False, "bounds", True),              # tile multiples
    (1, 37, 45, True, "bounds", True),               # non-multiples
    (37, 16, 64, True, "centre_radius", True),
    (37, 37, 45, False, "centre_radius", False),
    (300, 20, 33, True, "bounds", True),
    (300, 48, 32, False, "bounds", False),
])
def test_affine_matches_reference(batch, k, n, relu, output, bias):
    """Forward and all gradients (lower, upper, W through W and |W|, b) of the fused linear kernel."""
    lo, up = _box((batch, k))
    w = torch.randn(n, k, requires_grad=True)
    b = torch.randn(n, requires_grad=True) if bias else None
    leaves = [lo, up, w] + ([b] if bias else [])
    kw = dict(relu_input=relu, output=output)
    _compare(interval_affine(lo, up, w, b, **kw), interval_affine_reference(lo, up, w, b, **kw), leaves)


@needs_triton
def test_affine_leading_dims_and_zero_weights():
    """``(..., in)`` inputs and exact zeros in ``W`` (``sign(0) = 0`` in the |W| gradient)."""
    lo, up = _box((2, 3, 19))
    w = torch.randn(7, 19)
    w[:, ::3] = 0
    w.requires_grad_()
    _compare(interval_affine(lo, up, w, None, relu_input=True),
             interval_affine_reference(lo, up, w, None, relu_input=True), [lo, up, w])


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_affine_low_precision_inputs_fp32_output(dtype):
    """fp16/bf16 inputs are upcast exactly; the fp32 output encloses the exact (fp64) interval."""
    lo, up = _box((37, 40), dtype)
    w = torch.randn(24, 40).to(dtype)
    b = torch.randn(24).to(dtype)
    out_l, out_u = interval_affine(lo, up, w, b, relu_input=True)
    assert out_l.dtype == out_u.dtype == torch.float32
    ref_l, ref_u = interval_affine_reference(lo.double(), up.double(), w.double(), b.double(), relu_input=True)
    torch.testing.assert_close(out_l.double(), ref_l, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out_u.double(), ref_u, rtol=1e-5, atol=1e-4)
    assert (out_l <= out_u).all()


@needs_triton
@pytest.mark.parametrize("batch,c,hw,oc,k,stride,pad,dil,relu,output,bias", [
    (1, 3, (7, 8), 5, 3, 1, 1, 1, False, "bounds", True),
    (37, 2, (6, 5), 3, 3, 2, 1, 1, True, "bounds", True),
    (3, 4, (9, 9), 17, 4, 2, 0, 1, True, "centre_radius", False),
    (2, 16, (4, 4), 32, 1, 1, 0, 1, False, "bounds", True),     # 1x1, tile multiples
    (2, 3, (8, 9), 4, 3, 1, 2, 2, False, "bounds", True),       # dilation
    (300, 1, (3, 3), 2, 2, 1, 0, 1, True, "bounds", True),
])
def test_conv_matches_reference(batch, c, hw, oc, k, stride, pad, dil, relu, output, bias):
    """Forward and all gradients of the implicit-GEMM conv kernels."""
    lo, up = _box((batch, c, *hw))
    w = torch.randn(oc, c, k, k, requires_grad=True)
    b = torch.randn(oc, requires_grad=True) if bias else None
    leaves = [lo, up, w] + ([b] if bias else [])
    kw = dict(stride=stride, padding=pad, dilation=dil, relu_input=relu, output=output)
    _compare(interval_conv(lo, up, w, b, **kw), interval_conv_reference(lo, up, w, b, **kw), leaves)


@needs_triton
def test_host_wrappers_check_inputs():
    """Shape, dtype and geometry errors name the offending tensor."""
    lo, up = torch.zeros(4, 5), torch.ones(4, 5)
    with pytest.raises(BoundcError, match="last dim must be 6"):
        interval_affine(lo, up, torch.zeros(3, 6))
    with pytest.raises(BoundcError, match="upper"):
        interval_affine(lo, torch.ones(4, 6), torch.zeros(3, 5))
    with pytest.raises(BoundcError, match="bias must have shape"):
        interval_affine(lo, up, torch.zeros(3, 5), torch.zeros(4))
    with pytest.raises(BoundcError, match="float64"):
        interval_affine(lo.double(), up.double(), torch.zeros(3, 5).double())
    with pytest.raises(BoundcError, match="groups=1"):
        interval_conv(torch.zeros(1, 4, 5, 5), torch.ones(1, 4, 5, 5), torch.zeros(4, 2, 3, 3), groups=2)


def _torch_rule_linear(x: Interval, w, b) -> Interval:
    """The interval linear rule as it was before dispatch (the bit-for-bit contract)."""
    c, r = (x.upper + x.lower) / 2, (x.upper - x.lower) / 2
    cc, rr = F.linear(c, w, b), F.linear(r, w.abs())
    return Interval(cc - rr, cc + rr)


def test_dispatch_cpu_is_torch_rule_bit_for_bit():
    """On the CPU ``backend="auto"`` runs the torch rules: results equal the original rules exactly."""
    lo, up = _box((5, 11))
    x = Interval(lo.detach(), up.detach())
    w, b = torch.randn(7, 11), torch.randn(7)
    for got, want in [(dispatch.interval_linear(x, w, b), _torch_rule_linear(x, w, b)),
                      (dispatch.interval_linear(x, w, b, relu_input=True),
                       _torch_rule_linear(Interval(x.lower.relu(), x.upper.relu()), w, b))]:
        assert torch.equal(got.lower, want.lower) and torch.equal(got.upper, want.upper)
    xc = Interval(torch.randn(2, 3, 6, 6) - 0.2, torch.randn(2, 3, 6, 6) * 0 + 3)
    wc, bc = torch.randn(4, 3, 3, 3), torch.randn(4)
    kw = dict(stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=1)
    got = dispatch.interval_conv(xc, wc, bc, **kw)
    c, r = (xc.upper + xc.lower) / 2, (xc.upper - xc.lower) / 2
    cc, rr = F.conv2d(c, wc, bc, **kw), F.conv2d(r, wc.abs(), None, **kw)
    assert torch.equal(got.lower, cc - rr) and torch.equal(got.upper, cc + rr)
    assert not dispatch.use_triton("auto", (xc.lower, wc))


def test_dispatch_backend_errors(monkeypatch):
    """A bad backend name, or ``"triton"`` on CPU tensors without the interpreter, raise clearly."""
    x = Interval(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(BoundcError, match="backend must be one of"):
        dispatch.interval_linear(x, torch.zeros(4, 3), None, backend="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if HAS_TRITON:
        with pytest.raises(BoundcError, match="needs CUDA tensors"):
            dispatch.interval_linear(x, torch.zeros(4, 3), None, backend="triton")


@needs_triton
def test_dispatch_triton_backend_under_interpreter():
    """``backend="triton"`` on CPU under the interpreter agrees with the torch path (conv and linear)."""
    lo, up = _box((3, 2, 5, 5))
    x = Interval(lo.detach(), up.detach())
    w, b = torch.randn(4, 2, 3, 3), torch.randn(4)
    kw = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, relu_input=True)
    a = dispatch.interval_conv(x, w, b, backend="triton", **kw)
    t = dispatch.interval_conv(x, w, b, backend="torch", **kw)
    torch.testing.assert_close(a, t, rtol=1e-4, atol=1e-4)
    with pytest.raises(BoundcError, match="no Triton kernel"):
        dispatch.interval_conv(x, w[:, :1], b, backend="triton", **{**kw, "groups": 2})


def test_fuse_pass_bit_for_bit_on_cpu():
    """The fused IBP network of the small CNN equals the unfused one exactly on the CPU; relus are gone."""
    model, x = examples.build("small"), torch.rand(3, 1, 28, 28)
    g = boundc.lower(model, x)
    f = fuse_relu_affine(g)
    assert not any(n.op == "relu" for n in f) and any(n.attrs.get("relu_input") for n in f)
    assert any(n.op == "relu" for n in g)                      # input graph untouched
    a, b = (codegen.build(h, "ibp", CompileOptions()) for h in (g, f))
    for p, q in zip(a(x - 0.05, x + 0.05), b(x - 0.05, x + 0.05)):
        assert torch.equal(p, q)


def test_fuse_pass_keeps_shared_relu():
    """A relu with two readers (or a graph output) is not folded."""

    class Two(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = torch.nn.Linear(4, 5), torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.b(h) + self.c(h)

    f = fuse_relu_affine(boundc.lower(Two(), torch.rand(2, 4)))
    assert any(n.op == "relu" for n in f) and not any(n.attrs.get("relu_input") for n in f)


@needs_triton
def test_ibp_network_with_triton_backend_matches_torch():
    """End to end: an MLP's IBP bounds and parameter gradients with kernels="triton" (interpreter) vs torch."""
    model = examples.mlp(in_shape=(1, 5, 5), hidden=(20, 19), num_classes=6)
    x = torch.rand(37, 1, 5, 5)
    g = boundc.lower(model, x)
    out = {}
    for backend in ("torch", "triton"):
        net = codegen.build(fuse_relu_affine(g, backend), "ibp", CompileOptions(kernels=backend))
        model.zero_grad()
        lo, up = net(x - 0.1, x + 0.1)
        (up - lo).sum().backward()
        out[backend] = (lo.detach(), up.detach(), [p.grad.clone() for p in model.parameters()])
    for a, b in zip(out["triton"][:2], out["torch"][:2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for a, b in zip(out["triton"][2], out["torch"][2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
