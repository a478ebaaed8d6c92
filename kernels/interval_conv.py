"""Fused interval conv2d: implicit-GEMM Triton kernels (forward, dX, dW) and a torch reference.

Design: an implicit GEMM, the convolution analogue of :mod:`.interval_affine`.
The GEMM view is ``M = B·OH·OW`` (output pixels), ``N = OC``, ``K = C·KH·KW``;
each program gathers its ``l``/``u`` patch tile straight from the NCHW input
(no im2col buffer), applies the optional ReLU and forms centre/radius in
registers, loads the weight tile once and uses ``W`` and ``|W|`` from registers,
and writes lower/upper (or centre/radius) in NCHW in its epilogue.  Nothing of
size ``|W|``, ``c`` or ``r`` is written to memory, in either direction:

* ``dX`` is the transposed convolution as a gather: for input pixel
  ``(b, ih, iw)`` and input channel ``ci`` it reduces over ``(oc, kh, kw)``,
  keeping the terms whose output position ``(ih + p - kh·d) / s`` is integral
  and in range, then applies the centre/radius and ReLU Jacobians;
* ``dW`` gathers patches like the forward and reduces over output pixels (split
  over the batch for parallelism), combining ``gCᵀ·c + sign(W) ⊙ gRᵀ·r``.

The alternative — one cuDNN call on ``cat([c, r])`` with ``groups=2`` and
``cat([W, |W|])`` — needs no Triton but materialises ``c``, ``r``, ``|W|`` and the
concatenations (about 3× the activation traffic of the fused gather); which is
faster on a given GPU is what ``bench/kernels.py`` measures.  2-d, ``groups=1``
convolutions only; the dispatcher uses the torch rule for anything else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from boundc.errors import BoundcError

from ._compat import check_device, check_dtype, dot_precision, num_sms, require_triton, tl, triton
from .interval_affine import _DW_CFGS, _DW_INTERP, _GEMM_CFGS, _INTERP, OUTPUTS, _configs, store_epilogue


def _pair(v: int | tuple) -> tuple[int, int]:
    """``v`` as a pair of ints."""
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def interval_conv_reference(lower: Tensor, upper: Tensor, weight: Tensor, bias: Tensor | None = None, *,
                            stride: int | tuple = 1, padding: int | tuple = 0, dilation: int | tuple = 1,
                            groups: int = 1, relu_input: bool = False,
                            output: str = "bounds") -> tuple[Tensor, Tensor]:
    """The unfused torch rule: ``conv(c, W) + b ± conv(r, |W|)`` (or ``(C, R)``).

    Bit-for-bit the ``relu`` then ``conv`` interval rules of ``boundc.passes.rules.interval`` (2-d).
    """
    if output not in OUTPUTS:
        raise BoundcError(f"output must be one of {OUTPUTS}, got {output!r}")
    if relu_input:
        lower, upper = torch.relu(lower), torch.relu(upper)
    c, r = (upper + lower) / 2, (upper - lower) / 2
    centre = F.conv2d(c, weight, bias, stride, padding, dilation, groups)
    radius = F.conv2d(r, weight.abs(), None, stride, padding, dilation, groups)
    return (centre, radius) if output == "centre_radius" else (centre - radius, centre + radius)


@triton.autotune(configs=_configs(_INTERP, _GEMM_CFGS, ("BLOCK_M", "BLOCK_N", "BLOCK_K")), key=["M", "N", "K"])
@triton.jit
def _conv_fwd(l_ptr, u_ptr, w_ptr, b_ptr, o1_ptr, o2_ptr, M, N, K,
              C, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW,
              HAS_BIAS: tl.constexpr, RELU: tl.constexpr, BOUNDS: tl.constexpr, PRECISION: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr = 8):
    """One (output pixels × output channels) tile of ``conv(c, W) + b`` and ``conv(r, |W|)``."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    P = OH * OW
    bb = rm // P
    oh = (rm % P) // OW
    ow = rm % OW
    acc_c = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_r = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        ci = kk // (KH * KW)
        kh = (kk % (KH * KW)) // KW
        kw = kk % KW
        ih = oh[:, None] * SH - PH + kh[None, :] * DH
        iw = ow[:, None] * SW - PW + kw[None, :] * DW
        xmask = (rm[:, None] < M) & (kk[None, :] < K) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xoff = ((bb[:, None] * C + ci[None, :]) * H + ih) * W + iw
        lo = tl.load(l_ptr + xoff, mask=xmask, other=0.0).to(tl.float32)
        up = tl.load(u_ptr + xoff, mask=xmask, other=0.0).to(tl.float32)
        if RELU:
            lo = tl.maximum(lo, 0.0)
            up = tl.maximum(up, 0.0)
        wmask = (kk[:, None] < K) & (rn[None, :] < N)
        w = tl.load(w_ptr + rn[None, :] * K + kk[:, None], mask=wmask, other=0.0).to(tl.float32)
        acc_c = tl.dot((up + lo) * 0.5, w, acc_c, input_precision=PRECISION)
        acc_r = tl.dot((up - lo) * 0.5, tl.abs(w), acc_r, input_precision=PRECISION)
    if HAS_BIAS:
        acc_c += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    omask = (rm[:, None] < M) & (rn[None, :] < N)
    ooff = (bb[:, None] * N + rn[None, :]) * P + (rm % P)[:, None]
    store_epilogue(o1_ptr, o2_ptr, ooff, omask, acc_c, acc_r, BOUNDS)


@triton.autotune(configs=_configs(_INTERP, _GEMM_CFGS, ("BLOCK_M", "BLOCK_N", "BLOCK_K")), key=["M", "N", "K"])
@triton.jit
def _conv_dx(g1_ptr, g2_ptr, w_ptr, l_ptr, u_ptr, gl_ptr, gu_ptr, M, N, K,
             C, H, W, OC, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW,
             RELU: tl.constexpr, BOUNDS: tl.constexpr, PRECISION: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Gradient w.r.t. the input bounds: rows = input pixels (M), cols = input channels (K), reduce over N."""
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ci = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    HW = H * W
    bb = rm // HW
    ih = (rm % HW) // W
    iw = rm % W
    acc_c = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    acc_r = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rr = n0 + tl.arange(0, BLOCK_N)                      # (oc, kh, kw)
        oc = rr // (KH * KW)
        kh = (rr % (KH * KW)) // KW
        kw = rr % KW
        hn = ih[:, None] + PH - kh[None, :] * DH
        wn = iw[:, None] + PW - kw[None, :] * DW
        oh = hn // SH
        ow = wn // SW
        gmask = ((rm[:, None] < M) & (rr[None, :] < N) & (hn >= 0) & (wn >= 0) & (hn % SH == 0)
                 & (wn % SW == 0) & (oh < OH) & (ow < OW))
        goff = ((bb[:, None] * OC + oc[None, :]) * OH + oh) * OW + ow
        g1 = tl.load(g1_ptr + goff, mask=gmask, other=0.0).to(tl.float32)
        g2 = tl.load(g2_ptr + goff, mask=gmask, other=0.0).to(tl.float32)
        if BOUNDS:
            gc = g2 + g1
            gr = g2 - g1
        else:
            gc = g1
            gr = g2
        wmask = (rr[:, None] < N) & (ci[None, :] < K)
        woff = ((oc[:, None] * K + ci[None, :]) * KH + kh[:, None]) * KW + kw[:, None]
        w = tl.load(w_ptr + woff, mask=wmask, other=0.0).to(tl.float32)
        acc_c = tl.dot(gc, w, acc_c, input_precision=PRECISION)
        acc_r = tl.dot(gr, tl.abs(w), acc_r, input_precision=PRECISION)
    gl = (acc_c - acc_r) * 0.5
    gu = (acc_c + acc_r) * 0.5
    xmask = (rm[:, None] < M) & (ci[None, :] < K)
    xoff = (bb[:, None] * K + ci[None, :]) * HW + (rm % HW)[:, None]
    if RELU:
        lo = tl.load(l_ptr + xoff, mask=xmask, other=0.0)
        up = tl.load(u_ptr + xoff, mask=xmask, other=0.0)
        gl = tl.where(lo > 0, gl, 0.0)
        gu = tl.where(up > 0, gu, 0.0)
    tl.store(gl_ptr + xoff, gl.to(gl_ptr.dtype.element_ty), mask=xmask)
    tl.store(gu_ptr + xoff, gu.to(gu_ptr.dtype.element_ty), mask=xmask)


@triton.autotune(configs=_configs(_DW_INTERP, _DW_CFGS, ("BLOCK_N", "BLOCK_K", "BLOCK_M")),
                 key=["M", "N", "K", "SPLIT"])
@triton.jit
def _conv_dw(g1_ptr, g2_ptr, l_ptr, u_ptr, w_ptr, gw_ptr, gb_ptr, M, N, K, SPLIT, CHUNK,
             C, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW,
             HAS_BIAS: tl.constexpr, RELU: tl.constexpr, BOUNDS: tl.constexpr, PRECISION: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr):
    """Partial ``dW`` (N = OC, K = C·KH·KW) and ``db`` over one chunk of output pixels."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_s = tl.program_id(2)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    kk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    ci = kk // (KH * KW)
    kh = (kk % (KH * KW)) // KW
    kw = kk % KW
    P = OH * OW
    acc_c = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc_r = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_N,), dtype=tl.float32)
    m_lo = pid_s * CHUNK
    m_hi = min(m_lo + CHUNK, M)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        bb = rm // P
        oh = (rm % P) // OW
        ow = rm % OW
        gmask = (rn[:, None] < N) & (rm[None, :] < m_hi)
        goff = (bb[None, :] * N + rn[:, None]) * P + (rm % P)[None, :]
        g1 = tl.load(g1_ptr + goff, mask=gmask, other=0.0).to(tl.float32)
        g2 = tl.load(g2_ptr + goff, mask=gmask, other=0.0).to(tl.float32)
        if BOUNDS:
            gc = g2 + g1
            gr = g2 - g1
        else:
            gc = g1
            gr = g2
        ih = oh[:, None] * SH - PH + kh[None, :] * DH
        iw = ow[:, None] * SW - PW + kw[None, :] * DW
        xmask = (rm[:, None] < m_hi) & (kk[None, :] < K) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xoff = ((bb[:, None] * C + ci[None, :]) * H + ih) * W + iw
        lo = tl.load(l_ptr + xoff, mask=xmask, other=0.0).to(tl.float32)
        up = tl.load(u_ptr + xoff, mask=xmask, other=0.0).to(tl.float32)
        if RELU:
            lo = tl.maximum(lo, 0.0)
            up = tl.maximum(up, 0.0)
        acc_c = tl.dot(gc, (up + lo) * 0.5, acc_c, input_precision=PRECISION)
        acc_r = tl.dot(gr, (up - lo) * 0.5, acc_r, input_precision=PRECISION)
        if HAS_BIAS:
            acc_b += tl.sum(gc, axis=1)
    wmask = (rn[:, None] < N) & (kk[None, :] < K)
    w = tl.load(w_ptr + rn[:, None] * K + kk[None, :], mask=wmask, other=0.0).to(tl.float32)
    sign = tl.where(w > 0, 1.0, tl.where(w < 0, -1.0, 0.0))
    tl.store(gw_ptr + pid_s * N * K + rn[:, None] * K + kk[None, :], acc_c + acc_r * sign, mask=wmask)
    if HAS_BIAS:
        if pid_k == 0:
            tl.store(gb_ptr + pid_s * N + rn, acc_b, mask=rn < N)


def supported(weight: Tensor, groups: int) -> bool:
    """Whether the Triton conv kernels handle this convolution (2-d, ``groups == 1``)."""
    return weight.dim() == 4 and groups == 1


def _check(lower: Tensor, upper: Tensor, weight: Tensor, bias: Tensor | None, groups: int, output: str) -> None:
    """Validate shapes, dtypes and devices with messages that name the offending tensor."""
    require_triton()
    if output not in OUTPUTS:
        raise BoundcError(f"output must be one of {OUTPUTS}, got {output!r}")
    if not supported(weight, groups):
        raise BoundcError(f"interval_conv kernels support 2-d convolutions with groups=1; got weight "
                          f"{tuple(weight.shape)}, groups={groups}")
    if lower.shape != upper.shape:
        raise BoundcError(f"interval_conv: lower {tuple(lower.shape)} and upper {tuple(upper.shape)} differ")
    if lower.dim() != 4 or lower.shape[1] != weight.shape[1]:
        raise BoundcError(f"interval_conv: input {tuple(lower.shape)} must be (B, {weight.shape[1]}, H, W) "
                          f"for weight {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise BoundcError(f"interval_conv: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    for name, t in (("lower", lower), ("upper", upper), ("weight", weight), ("bias", bias)):
        check_dtype(name, t)
        if t is not None and t.numel() >= 2**31:
            raise BoundcError(f"interval_conv: {name} has {t.numel()} elements; the kernels use 32-bit offsets")
    check_device(lower, upper, weight, bias)


class _IntervalConv(torch.autograd.Function):
    """Autograd wrapper around the implicit-GEMM forward and backward kernels."""

    @staticmethod
    def forward(ctx, lower, upper, weight, bias, geom, relu_input, bounds):  # noqa: D102
        (sh, sw), (ph, pw), (dh, dw) = geom
        lower, upper, weight = lower.contiguous(), upper.contiguous(), weight.contiguous()
        b, c, h, w = lower.shape
        oc, _, kh, kw = weight.shape
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if oh <= 0 or ow <= 0:
            raise BoundcError(f"interval_conv: input {tuple(lower.shape)} is smaller than the kernel {(kh, kw)}")
        o1 = torch.empty((b, oc, oh, ow), device=lower.device, dtype=torch.float32)
        o2 = torch.empty_like(o1)
        prec = dot_precision(torch.backends.cudnn.allow_tf32)
        m, n, k = b * oh * ow, oc, c * kh * kw
        if m > 0:
            grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
            _conv_fwd[grid](lower, upper, weight, bias if bias is not None else o1, o1, o2, m, n, k,
                            c, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw,
                            HAS_BIAS=bias is not None, RELU=relu_input, BOUNDS=bounds, PRECISION=prec)
        ctx.save_for_backward(lower, upper, weight, bias)
        ctx.geom, ctx.relu, ctx.bounds, ctx.prec, ctx.out = geom, relu_input, bounds, prec, (oh, ow)
        return o1, o2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g1, g2):  # noqa: D102
        lower, upper, weight, bias = ctx.saved_tensors
        (sh, sw), (ph, pw), (dh, dw) = ctx.geom
        b, c, h, w = lower.shape
        oc, _, kh, kw = weight.shape
        oh, ow = ctx.out
        g1, g2 = g1.contiguous(), g2.contiguous()
        gl = gu = gw = gb = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            gl, gu = torch.zeros_like(lower), torch.zeros_like(upper)
            m, n = b * h * w, oc * kh * kw
            if m > 0:
                grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(c, meta["BLOCK_K"]))  # noqa: E731
                _conv_dx[grid](g1, g2, weight, lower, upper, gl, gu, m, n, c,
                               c, h, w, oc, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw,
                               RELU=ctx.relu, BOUNDS=ctx.bounds, PRECISION=ctx.prec)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            m, n, k = b * oh * ow, oc, c * kh * kw
            want = max(1, 4 * num_sms(lower.device) // (triton.cdiv(n, 64) * triton.cdiv(k, 64)))
            split = max(1, min(want, triton.cdiv(m, 512)))
            chunk = triton.cdiv(triton.cdiv(max(m, 1), split), 128) * 128
            split = triton.cdiv(max(m, 1), chunk)
            pw_ = torch.zeros((split, n, k), device=lower.device, dtype=torch.float32)
            pb = torch.zeros((split, n), device=lower.device, dtype=torch.float32)
            if m > 0:
                grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(k, meta["BLOCK_K"]),  # noqa: E731
                                     split)
                _conv_dw[grid](g1, g2, lower, upper, weight, pw_, pb, m, n, k, split, chunk,
                               c, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw,
                               HAS_BIAS=bias is not None, RELU=ctx.relu, BOUNDS=ctx.bounds, PRECISION=ctx.prec)
            gw = pw_.sum(0).reshape(weight.shape).to(weight.dtype)
            if bias is not None and ctx.needs_input_grad[3]:
                gb = pb.sum(0).to(bias.dtype)
        return gl, gu, gw, gb, None, None, None


def interval_conv(lower: Tensor, upper: Tensor, weight: Tensor, bias: Tensor | None = None, *,
                  stride: int | tuple = 1, padding: int | tuple = 0, dilation: int | tuple = 1, groups: int = 1,
                  relu_input: bool = False, output: str = "bounds") -> tuple[Tensor, Tensor]:
    """Fused Triton interval conv2d (differentiable); see :func:`interval_conv_reference`.

    ``lower``/``upper`` are NCHW, ``weight`` ``(OC, C, KH, KW)``; fp32/fp16/bf16 on one CUDA device (or
    the CPU under ``TRITON_INTERPRET=1``).  Returns two fp32 NCHW tensors: lower/upper or centre/radius.
    """
    _check(lower, upper, weight, bias, groups, output)
    if isinstance(padding, str):
        raise BoundcError("interval_conv: string padding is not supported; pass explicit padding")
    geom = (_pair(stride), _pair(padding), _pair(dilation))
    return _IntervalConv.apply(lower, upper, weight, bias, geom, bool(relu_input), output == "bounds")


__all__ = ["interval_conv", "interval_conv_reference", "supported"]
