"""The explicit transposes of the structural ops are exact adjoints: <A, f(x) - f(0)> == <f^T(A), x>."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from boundc.passes.rules import backward as bw
from boundc.passes.rules import transpose as tp
from boundc.passes.rules.registry import get_rule

B, S = 2, 3


def _adjoint(f, t, in_shape, dtype=torch.float64):
    """Check the adjoint identity for ``f`` (per-sample op on (B, *in)) and transpose ``t`` (A -> (B, S, *in))."""
    torch.manual_seed(0)
    x = torch.randn((B,) + in_shape, dtype=dtype)
    zero = torch.zeros_like(x)
    y = f(x) - f(zero)
    A = torch.randn((B, S) + tuple(y.shape[1:]), dtype=dtype)
    lhs = torch.einsum("bs...,b...->bs", A, y)
    At = t(A)
    assert At.shape == (B, S) + in_shape
    rhs = torch.einsum("bs...,b...->bs", At, x)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape,target", [((3, 4, 5), (-1, 60)), ((12,), (-1, 3, 4)), ((2, 3, 4), (-1, 4, 6))])
def test_reshape(shape, target):
    _adjoint(lambda x: x.reshape(target), lambda A: tp.reshape_t(A, shape), shape)


@pytest.mark.parametrize("dims", [p for p in itertools.permutations(range(1, 4))])
def test_permute(dims):
    dims = (0,) + dims
    _adjoint(lambda x: x.permute(dims), lambda A: tp.permute_t(A, dims), (2, 3, 4))
    neg = tuple(d - 4 for d in dims)  # negative dims
    _adjoint(lambda x: x.permute(neg), lambda A: tp.permute_t(A, neg), (2, 3, 4))


_PADS = [(1, 2), (0, 3), (2, 0), (1, 1, 2, 0), (0, 0, 1, 2), (2, 1, 1, 2)]


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("pad", _PADS)
def test_pad(mode, pad):
    shape = (2, 4, 5) if len(pad) == 4 or mode == "constant" else (4, 5)
    _adjoint(lambda x: F.pad(x, pad, mode=mode), lambda A: tp.pad_t(A, pad, mode), shape)


@pytest.mark.parametrize("pad", [(-1, 2), (1, -2, -1, 0), (-2, -1, 1, 1), (0, 0, 0, 0, 1, 1)])
def test_pad_constant_negative(pad):
    _adjoint(lambda x: F.pad(x, pad), lambda A: tp.pad_t(A, pad, "constant"), (3, 4, 5))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_pad_1d(mode):
    _adjoint(lambda x: F.pad(x, (2, 3), mode=mode), lambda A: tp.pad_t(A, (2, 3), mode), (3, 6))


_POOLS = [
    # kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, (H, W)
    ((2, 2), (2, 2), (0, 0), False, True, None, (8, 8)),
    ((2, 2), (2, 2), (0, 0), False, True, None, (7, 9)),
    ((3, 3), (2, 2), (1, 1), False, True, None, (7, 8)),
    ((3, 3), (2, 2), (1, 1), False, False, None, (7, 8)),
    ((3, 2), (2, 3), (1, 0), True, True, None, (7, 8)),
    ((3, 3), (2, 2), (1, 1), True, False, None, (6, 6)),
    ((2, 2), (3, 3), (1, 1), True, True, None, (7, 7)),
    ((2, 2), (3, 3), (1, 1), True, False, None, (8, 7)),
    ((3, 3), (1, 1), (1, 1), False, True, 5, (5, 6)),
    ((3, 3), (2, 2), (1, 1), True, False, 4, (6, 7)),
    ((4, 4), (1, 2), (2, 1), True, False, None, (5, 6)),
    ((5, 5), (5, 5), (0, 0), True, True, None, (7, 12)),
    ((2, 3), (2, 3), (0, 0), False, True, None, (6, 9)),   # k == s, not square: the window copy
]


@pytest.mark.parametrize("k,s,p,ceil,cip,div,hw", _POOLS)
def test_avg_pool2d(k, s, p, ceil, cip, div, hw):
    shape = (3,) + hw
    kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=cip, divisor_override=div)
    _adjoint(lambda x: F.avg_pool2d(x, k, s, p, ceil, cip, div), lambda A: tp.avg_pool2d_t(A, shape, **kw), shape)


@pytest.mark.parametrize("k,s,p,ceil,cip,div,hw", _POOLS)
def test_avg_pool2d_float32_paths(k, s, p, ceil, cip, div, hw):
    """The float32 CPU forms (window copy for k == s, GEMM + fold otherwise) equal the float64 transpose."""
    shape = (3,) + hw
    kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=cip, divisor_override=div)
    y = F.avg_pool2d(torch.zeros((1,) + shape), k, s, p, ceil, cip, div)
    A = torch.randn((B, S) + tuple(y.shape[1:]), dtype=torch.float64)
    want = tp.avg_pool2d_t(A, shape, **kw)
    torch.testing.assert_close(tp.avg_pool2d_t(A.float(), shape, **kw), want.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hw,out", [((8, 8), (1, 1)), ((7, 9), (3, 4)), ((5, 5), (5, 5)), ((6, 10), (4, 3)),
                                    ((3, 4), (5, 7))])
def test_adaptive_avg_pool2d(hw, out):
    shape = (2,) + hw
    _adjoint(lambda x: F.adaptive_avg_pool2d(x, out), lambda A: tp.adaptive_avg_pool2d_t(A, shape), shape)


@pytest.mark.parametrize("nd,stride,padding,dilation,groups,size", [
    (2, 1, 1, 1, 1, 9), (2, 2, 1, 1, 1, 9), (2, 2, 0, 1, 1, 8), (2, 3, 2, 2, 2, 11), (1, 2, 1, 1, 1, 10),
    (3, 2, 1, 1, 1, 5)])
def test_conv_input(nd, stride, padding, dilation, groups, size):
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    torch.manual_seed(1)
    w = torch.randn((4, 4 // groups) + (3,) * nd, dtype=torch.float64)
    shape = (4,) + (size,) * nd
    fn = tp.conv_input(nd)

    def t(A):
        g = fn((B * S,) + shape, w, A.reshape((B * S,) + tuple(A.shape[2:])), stride, padding, dilation, groups)
        return g.reshape((B, S) + shape)

    _adjoint(lambda x: conv(x, w, None, stride, padding, dilation, groups), t, shape)


@pytest.mark.parametrize("cin,k,stride,padding,size", [(1, 4, 2, 0, 28), (3, 3, 1, 1, 9), (1, 3, 2, 1, 10),
                                                       (4, 4, 3, 2, 11), (2, 5, 1, 0, 7)])
def test_conv_input_fold_is_conv_transpose(cin, k, stride, padding, size):
    """The float32 CPU fold path (narrow outputs) is the same map as ``conv_transpose2d``, and is taken."""
    torch.manual_seed(2)
    w = torch.randn(6, cin, k, k)
    out = (size + 2 * padding - k) // stride + 1
    A = torch.randn(5, 6, out, out)
    assert tp.fold_path(w, A, (1, 1), 1)
    got = tp.conv_input(2)((5, cin, size, size), w, A, stride, padding)
    extra = size - ((out - 1) * stride - 2 * padding + k)
    want = F.conv_transpose2d(A, w, None, stride, padding, extra)
    assert got.shape == (5, cin, size, size)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not tp.fold_path(w.double(), A.double(), (1, 1), 1)
    assert not tp.fold_path(torch.randn(6, 8, k, k), A, (1, 1), 1)


@pytest.mark.parametrize("mode,value", [("constant", 0.0), ("constant", 0.7), ("reflect", 0.0)])
def test_pad_rule_with_bias(mode, value):
    """The registered backward rule: bias = A·f(0) (a non-zero pad value), coefficients transposed."""
    shape, pad = (2, 4, 5), (1, 2, 2, 1)
    torch.manual_seed(2)
    x = torch.randn((B,) + shape, dtype=torch.float64)
    y = F.pad(x, pad, mode=mode, value=value) if mode == "constant" else F.pad(x, pad, mode=mode)
    A = torch.randn((B, S) + tuple(y.shape[1:]), dtype=torch.float64)
    zero = torch.zeros(B, S, dtype=torch.float64)
    (out,) = get_rule("pad", "backward")(bw.Coeffs(A, A, zero, zero), "perturbed", in_shapes=(shape,), pad=pad,
                                         mode=mode, value=value)
    want = torch.einsum("bs...,b...->bs", A, y)
    got = torch.einsum("bs...,b...->bs", out.lA, x) + out.lb
    torch.testing.assert_close(got, want)


def test_no_torch_func_in_rules():
    """The backward rules never call torch.func / autograd at run time."""
    import inspect

    src = inspect.getsource(bw) + inspect.getsource(tp)
    assert "torch.func" not in src.replace("``torch.func``", "").replace(":mod:`torch.func`", "")


@pytest.mark.parametrize("dim,index", [(1, (0, 2)), (2, (3, 3, 1)), (3, (4, 0, 2, 1)), (2, (1,))])
def test_gather(dim, index):
    idx = torch.tensor(index)
    _adjoint(lambda x: x.index_select(dim, idx), lambda A: tp.gather_t(A, (3, 4, 5), dim, index), (3, 4, 5))


@pytest.mark.parametrize("dims,keepdim,scale", [((1,), False, 1.0), ((2, 3), True, 0.5), ((1, 3), False, 0.25),
                                                ((3,), True, 2.0)])
def test_reduce_sum(dims, keepdim, scale):
    _adjoint(lambda x: x.sum(dims, keepdim=keepdim) * scale,
             lambda A: tp.reduce_sum_t(A, (3, 4, 5), dims, keepdim, scale), (3, 4, 5))


@pytest.mark.parametrize("stride,padding,output_padding,dilation,groups",
                         [(1, 0, 0, 1, 1), (2, 1, 1, 1, 1), (2, 0, 0, 2, 2), (3, 1, 2, 1, 1)])
def test_conv_transpose(stride, padding, output_padding, dilation, groups):
    torch.manual_seed(1)
    w = torch.randn(4, 6 // groups, 3, 2, dtype=torch.float64)
    kw = dict(stride=(stride,) * 2, padding=(padding,) * 2, dilation=(dilation,) * 2, groups=groups)
    _adjoint(lambda x: F.conv_transpose2d(x, w, None, kw["stride"], kw["padding"], (output_padding,) * 2, groups,
                                          kw["dilation"]),
             lambda A: tp.conv_transpose_t(A, (4, 5, 6), w, **kw), (4, 5, 6))


@pytest.mark.parametrize("window,cin,kernel,stride,groups", [
    (3, 8, 4, 2, 1),   # a basis entry touches 1/4 of the output window: one GEMM on CPU
    (6, 8, 4, 2, 1),   # 16/196: the transposed convolution (the GEMM would do 12x the work)
    (4, 1, 4, 2, 1),   # a first layer (one input channel): the GEMM, up to a 16-fold excess
    (3, 8, 3, 1, 2),   # grouped
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float32 on CPU may take the fold path
def test_window_transpose_is_conv_transpose(window, cin, kernel, stride, groups, dtype):
    """Every path of the patches transpose (basis GEMM, fold, oneDNN) is ``conv_transpose2d`` of the windows."""
    from boundc.passes.rules import patches

    torch.manual_seed(0)
    cout = 4 * groups
    weight = torch.randn(cout, cin // groups, kernel, kernel, dtype=dtype)
    A = torch.randn(2, 700, cout, window, window, dtype=dtype)  # more rows than basis entries
    apply, size = patches._window_transpose((cout, window, window), weight, (stride, stride), (1, 1), groups,
                                            A.shape[0] * A.shape[1])
    want = F.conv_transpose2d(A.flatten(0, 1), weight, stride=stride, groups=groups)
    assert tuple(want.shape[-2:]) == size
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(apply(A), want.reshape(A.shape[:2] + want.shape[1:]), rtol=tol, atol=tol)


@pytest.mark.parametrize("rows,batch_A,batch_v", [(9, 4, 4), (1, 4, 4), (5, 1, 4), (5, 4, 1)])
def test_linalg_products_equal_einsum(rows, batch_A, batch_v):
    """The BLAS-friendly products equal their einsum, broadcasting a batch of one either side."""
    from boundc.passes.rules import linalg

    torch.manual_seed(0)
    A = torch.randn(batch_A, rows, 37, dtype=torch.float64)
    v = torch.randn(batch_v, 37, dtype=torch.float64)
    torch.testing.assert_close(linalg.matvec(A, v), torch.einsum("bse,be->bs", A, v))
    w = torch.randn(batch_v, rows, dtype=torch.float64)
    torch.testing.assert_close(linalg.vecmat(w, A), torch.einsum("bn,bnk->bk", w, A))
    t = torch.randn(batch_v, rows, 37, dtype=torch.float64)
    torch.testing.assert_close(linalg.rowdot(A, t), torch.einsum("bse,bse->bs", A, t))
    torch.testing.assert_close(linalg.rowdot(A, v.unsqueeze(1)), torch.einsum("bse,be->bs", A, v))
