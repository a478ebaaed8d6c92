"""Fused interval affine (linear) layer: Triton forward/backward kernels and a torch reference.

For incoming bounds ``l <= x <= u`` (optionally through a ReLU first) the
interval linear layer is ``c = (u + l) / 2``, ``r = (u - l) / 2``,
``C = W·c + b``, ``R = |W|·r`` and the output is ``[C - R, C + R]``.

The forward kernel is a tiled GEMM (after Triton tutorial 03) with two fp32
accumulators: each program loads an ``l``/``u`` tile once, applies the ReLU and
forms ``c``/``r`` in registers, loads a ``W`` tile once and uses both ``W`` and
``|W|`` from registers (``|W|`` is never written to memory), and writes
lower/upper — or centre/radius — in its epilogue.  fp16/bf16 inputs are upcast
exactly in registers; the output is always fp32 so the bound is as sound as the
fp32 torch rule.

The backward is two more fused kernels: ``dX`` (``gC·W`` and ``gR·|W|``, mapped
back to ``l``/``u`` through the centre/radius and ReLU Jacobians) and ``dW``
(``gCᵀ·c + sign(W) ⊙ gRᵀ·r`` plus the bias gradient), the latter split over
the batch for parallelism.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from boundc.errors import BoundcError

from ._compat import (
    check_device,
    check_dtype,
    dot_precision,
    interpreting,
    num_sms,
    require_triton,
    tl,
    triton,
)

OUTPUTS = ("bounds", "centre_radius")


# -- pure-torch reference ----------------------------------------------------------

def interval_affine_reference(lower: Tensor, upper: Tensor, weight: Tensor, bias: Tensor | None = None, *,
                              relu_input: bool = False, output: str = "bounds") -> tuple[Tensor, Tensor]:
    """The unfused torch rule: ``[W·c + b - |W|·r, W·c + b + |W|·r]`` (or ``(C, R)``).

    Bit-for-bit the ``relu`` then ``linear`` interval rules of ``boundc.passes.rules.interval``.
    """
    if output not in OUTPUTS:
        raise BoundcError(f"output must be one of {OUTPUTS}, got {output!r}")
    if relu_input:
        lower, upper = torch.relu(lower), torch.relu(upper)
    c, r = (upper + lower) / 2, (upper - lower) / 2
    centre, radius = F.linear(c, weight, bias), F.linear(r, weight.abs())
    return (centre, radius) if output == "centre_radius" else (centre - radius, centre + radius)


# -- Triton kernels -------------------------------------------------------------------

def _configs(interp_cfg: dict, cfgs: list[tuple[int, int, int, int, int]], names: tuple[str, str, str]) -> list:
    """Autotune configs (a single small one under the interpreter)."""
    if interpreting():
        return [triton.Config(dict(interp_cfg), num_warps=1, num_stages=1)]
    return [triton.Config({names[0]: a, names[1]: b, names[2]: c}, num_warps=w, num_stages=s)
            for a, b, c, w, s in cfgs]


_GEMM_CFGS = [  # (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages): two accumulators, so no 256-wide tiles
    (128, 128, 32, 8, 3), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (64, 64, 32, 4, 4),
    (64, 64, 64, 4, 3), (32, 64, 32, 4, 4), (32, 128, 64, 4, 3), (16, 128, 64, 4, 3),
]
_INTERP = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16}


@triton.jit
def store_epilogue(o1_ptr, o2_ptr, off, mask, acc_c, acc_r, BOUNDS: tl.constexpr):
    """Fused epilogue: write ``(c - r, c + r)`` when ``BOUNDS`` else ``(c, r)``."""
    if BOUNDS:
        tl.store(o1_ptr + off, acc_c - acc_r, mask=mask)
        tl.store(o2_ptr + off, acc_c + acc_r, mask=mask)
    else:
        tl.store(o1_ptr + off, acc_c, mask=mask)
        tl.store(o2_ptr + off, acc_r, mask=mask)


@triton.autotune(configs=_configs(_INTERP, _GEMM_CFGS, ("BLOCK_M", "BLOCK_N", "BLOCK_K")), key=["M", "N", "K"])
@triton.jit
def _affine_fwd(l_ptr, u_ptr, w_ptr, b_ptr, o1_ptr, o2_ptr, M, N, K,
                s_xm, s_xk, s_wn, s_wk, s_om, s_on,
                HAS_BIAS: tl.constexpr, RELU: tl.constexpr, BOUNDS: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr = 8):
    """One (BLOCK_M, BLOCK_N) output tile: ``C = c·Wᵀ + b``, ``R = r·|W|ᵀ``."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n                       # grouped ordering for L2 reuse (tutorial 03)
    first_m = (pid // group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc_c = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_r = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        xmask = (rm[:, None] < M) & (kk[None, :] < K)
        xoff = rm[:, None] * s_xm + kk[None, :] * s_xk
        lo = tl.load(l_ptr + xoff, mask=xmask, other=0.0).to(tl.float32)
        up = tl.load(u_ptr + xoff, mask=xmask, other=0.0).to(tl.float32)
        if RELU:
            lo = tl.maximum(lo, 0.0)
            up = tl.maximum(up, 0.0)
        c = (up + lo) * 0.5
        r = (up - lo) * 0.5
        wmask = (kk[:, None] < K) & (rn[None, :] < N)
        w = tl.load(w_ptr + rn[None, :] * s_wn + kk[:, None] * s_wk, mask=wmask, other=0.0).to(tl.float32)
        acc_c = tl.dot(c, w, acc_c, input_precision=PRECISION)
        acc_r = tl.dot(r, tl.abs(w), acc_r, input_precision=PRECISION)
    if HAS_BIAS:
        acc_c += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    omask = (rm[:, None] < M) & (rn[None, :] < N)
    ooff = rm[:, None] * s_om + rn[None, :] * s_on
    store_epilogue(o1_ptr, o2_ptr, ooff, omask, acc_c, acc_r, BOUNDS)


@triton.autotune(configs=_configs(_INTERP, _GEMM_CFGS, ("BLOCK_M", "BLOCK_N", "BLOCK_K")), key=["M", "N", "K"])
@triton.jit
def _affine_dx(g1_ptr, g2_ptr, w_ptr, l_ptr, u_ptr, gl_ptr, gu_ptr, M, N, K,
               s_gm, s_gn, s_wn, s_wk, s_xm, s_xk,
               RELU: tl.constexpr, BOUNDS: tl.constexpr, PRECISION: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Gradient w.r.t. the incoming bounds for one (BLOCK_M, BLOCK_K) tile (reduction over N)."""
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rn0 = tl.arange(0, BLOCK_N)
    acc_c = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    acc_r = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + rn0
        gmask = (rm[:, None] < M) & (rn[None, :] < N)
        goff = rm[:, None] * s_gm + rn[None, :] * s_gn
        g1 = tl.load(g1_ptr + goff, mask=gmask, other=0.0).to(tl.float32)
        g2 = tl.load(g2_ptr + goff, mask=gmask, other=0.0).to(tl.float32)
        if BOUNDS:                                # lower = C - R, upper = C + R
            gc = g2 + g1
            gr = g2 - g1
        else:
            gc = g1
            gr = g2
        wmask = (rn[:, None] < N) & (rk[None, :] < K)
        w = tl.load(w_ptr + rn[:, None] * s_wn + rk[None, :] * s_wk, mask=wmask, other=0.0).to(tl.float32)
        acc_c = tl.dot(gc, w, acc_c, input_precision=PRECISION)
        acc_r = tl.dot(gr, tl.abs(w), acc_r, input_precision=PRECISION)
    gl = (acc_c - acc_r) * 0.5                    # c = (u + l) / 2, r = (u - l) / 2
    gu = (acc_c + acc_r) * 0.5
    xmask = (rm[:, None] < M) & (rk[None, :] < K)
    xoff = rm[:, None] * s_xm + rk[None, :] * s_xk
    if RELU:
        lo = tl.load(l_ptr + xoff, mask=xmask, other=0.0)
        up = tl.load(u_ptr + xoff, mask=xmask, other=0.0)
        gl = tl.where(lo > 0, gl, 0.0)
        gu = tl.where(up > 0, gu, 0.0)
    tl.store(gl_ptr + xoff, gl.to(gl_ptr.dtype.element_ty), mask=xmask)
    tl.store(gu_ptr + xoff, gu.to(gu_ptr.dtype.element_ty), mask=xmask)


_DW_CFGS = [(64, 64, 32, 4, 4), (128, 64, 32, 8, 3), (64, 128, 32, 8, 3), (32, 32, 64, 4, 3), (64, 64, 64, 4, 3)]
_DW_INTERP = {"BLOCK_N": 16, "BLOCK_K": 32, "BLOCK_M": 16}


@triton.autotune(configs=_configs(_DW_INTERP, _DW_CFGS, ("BLOCK_N", "BLOCK_K", "BLOCK_M")),
                 key=["M", "N", "K", "SPLIT"])
@triton.jit
def _affine_dw(g1_ptr, g2_ptr, l_ptr, u_ptr, w_ptr, gw_ptr, gb_ptr, M, N, K, SPLIT, CHUNK,
               s_gm, s_gn, s_xm, s_xk, s_wn, s_wk,
               HAS_BIAS: tl.constexpr, RELU: tl.constexpr, BOUNDS: tl.constexpr, PRECISION: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr):
    """Partial ``dW = gCᵀ·c + sign(W) ⊙ gRᵀ·r`` (and ``db = Σ gC``) over one batch chunk."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_s = tl.program_id(2)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rm0 = tl.arange(0, BLOCK_M)
    acc_c = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc_r = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_N,), dtype=tl.float32)
    m_lo = pid_s * CHUNK
    m_hi = min(m_lo + CHUNK, M)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        rm = m0 + rm0
        gmask = (rn[:, None] < N) & (rm[None, :] < m_hi)
        goff = rm[None, :] * s_gm + rn[:, None] * s_gn        # (BLOCK_N, BLOCK_M): gᵀ
        g1 = tl.load(g1_ptr + goff, mask=gmask, other=0.0).to(tl.float32)
        g2 = tl.load(g2_ptr + goff, mask=gmask, other=0.0).to(tl.float32)
        if BOUNDS:
            gc = g2 + g1
            gr = g2 - g1
        else:
            gc = g1
            gr = g2
        xmask = (rm[:, None] < m_hi) & (rk[None, :] < K)
        xoff = rm[:, None] * s_xm + rk[None, :] * s_xk
        lo = tl.load(l_ptr + xoff, mask=xmask, other=0.0).to(tl.float32)
        up = tl.load(u_ptr + xoff, mask=xmask, other=0.0).to(tl.float32)
        if RELU:
            lo = tl.maximum(lo, 0.0)
            up = tl.maximum(up, 0.0)
        acc_c = tl.dot(gc, (up + lo) * 0.5, acc_c, input_precision=PRECISION)
        acc_r = tl.dot(gr, (up - lo) * 0.5, acc_r, input_precision=PRECISION)
        if HAS_BIAS:
            acc_b += tl.sum(gc, axis=1)
    wmask = (rn[:, None] < N) & (rk[None, :] < K)
    w = tl.load(w_ptr + rn[:, None] * s_wn + rk[None, :] * s_wk, mask=wmask, other=0.0).to(tl.float32)
    sign = tl.where(w > 0, 1.0, tl.where(w < 0, -1.0, 0.0))
    gw = acc_c + acc_r * sign
    tl.store(gw_ptr + pid_s * N * K + rn[:, None] * K + rk[None, :], gw, mask=wmask)
    if HAS_BIAS:
        if pid_k == 0:
            tl.store(gb_ptr + pid_s * N + rn, acc_b, mask=rn < N)


# -- host side ----------------------------------------------------------------------------

def _check(lower: Tensor, upper: Tensor, weight: Tensor, bias: Tensor | None, output: str) -> None:
    """Validate shapes, dtypes and devices with messages that name the offending tensor."""
    require_triton()
    if output not in OUTPUTS:
        raise BoundcError(f"output must be one of {OUTPUTS}, got {output!r}")
    if lower.shape != upper.shape:
        raise BoundcError(f"interval_affine: lower {tuple(lower.shape)} and upper {tuple(upper.shape)} differ")
    if weight.dim() != 2:
        raise BoundcError(f"interval_affine: weight must be 2-d (out, in), got {tuple(weight.shape)}")
    if lower.dim() < 1 or lower.shape[-1] != weight.shape[1]:
        raise BoundcError(f"interval_affine: input {tuple(lower.shape)} does not match weight "
                          f"{tuple(weight.shape)} (last dim must be {weight.shape[1]})")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise BoundcError(f"interval_affine: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    for name, t in (("lower", lower), ("upper", upper), ("weight", weight), ("bias", bias)):
        check_dtype(name, t)
        if t is not None and t.numel() >= 2**31:
            raise BoundcError(f"interval_affine: {name} has {t.numel()} elements; the kernels use 32-bit offsets")
    check_device(lower, upper, weight, bias)


def _split(m: int, tiles: int, device: torch.device) -> tuple[int, int]:
    """Batch chunks for the dW kernel: enough programs to fill the device; chunks are multiples of 128."""
    want = max(1, (4 * num_sms(device)) // max(tiles, 1))
    split = max(1, min(want, triton.cdiv(m, 128)))
    chunk = triton.cdiv(triton.cdiv(m, split), 128) * 128
    return triton.cdiv(m, chunk), chunk


class _IntervalAffine(torch.autograd.Function):
    """Autograd wrapper around the fused forward and backward kernels."""

    @staticmethod
    def forward(ctx, lower, upper, weight, bias, relu_input, bounds):  # noqa: D102
        lead, k = lower.shape[:-1], lower.shape[-1]
        x_l, x_u = lower.reshape(-1, k), upper.reshape(-1, k)
        if x_l.stride() != x_u.stride():
            x_l, x_u = x_l.contiguous(), x_u.contiguous()
        m, n = x_l.shape[0], weight.shape[0]
        o1 = torch.empty((m, n), device=lower.device, dtype=torch.float32)
        o2 = torch.empty_like(o1)
        prec = dot_precision(torch.backends.cuda.matmul.allow_tf32)
        if m > 0 and n > 0:
            grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
            _affine_fwd[grid](x_l, x_u, weight, bias if bias is not None else o1, o1, o2, m, n, k,
                              x_l.stride(0), x_l.stride(1), weight.stride(0), weight.stride(1),
                              o1.stride(0), o1.stride(1),
                              HAS_BIAS=bias is not None, RELU=relu_input, BOUNDS=bounds, PRECISION=prec)
        ctx.save_for_backward(x_l, x_u, weight, bias)
        ctx.relu, ctx.bounds, ctx.prec, ctx.shape = relu_input, bounds, prec, lower.shape
        return o1.reshape(*lead, n), o2.reshape(*lead, n)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g1, g2):  # noqa: D102
        x_l, x_u, weight, bias = ctx.saved_tensors
        m, k = x_l.shape
        n = weight.shape[0]
        g1, g2 = g1.reshape(m, n).contiguous(), g2.reshape(m, n).contiguous()
        gl = gu = gw = gb = None
        need_x = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        if need_x and m > 0 and k > 0:
            gl, gu = torch.empty_like(x_l), torch.empty_like(x_u)
            grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(k, meta["BLOCK_K"]))  # noqa: E731
            _affine_dx[grid](g1, g2, weight, x_l, x_u, gl, gu, m, n, k,
                             g1.stride(0), g1.stride(1), weight.stride(0), weight.stride(1),
                             x_l.stride(0), x_l.stride(1),
                             RELU=ctx.relu, BOUNDS=ctx.bounds, PRECISION=ctx.prec)
            gl, gu = gl.reshape(ctx.shape), gu.reshape(ctx.shape)
        elif need_x:
            gl = torch.zeros(ctx.shape, dtype=x_l.dtype, device=x_l.device)
            gu = torch.zeros_like(gl)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            split, chunk = _split(max(m, 1), triton.cdiv(n, 64) * triton.cdiv(k, 64), x_l.device)
            pw = torch.zeros((split, n, k), device=x_l.device, dtype=torch.float32)
            pb = torch.zeros((split, n), device=x_l.device, dtype=torch.float32)
            if m > 0:
                grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(k, meta["BLOCK_K"]),  # noqa: E731
                                     split)
                _affine_dw[grid](g1, g2, x_l, x_u, weight, pw, pb, m, n, k, split, chunk,
                                 g1.stride(0), g1.stride(1), x_l.stride(0), x_l.stride(1),
                                 weight.stride(0), weight.stride(1),
                                 HAS_BIAS=bias is not None, RELU=ctx.relu, BOUNDS=ctx.bounds, PRECISION=ctx.prec)
            gw = (pw[0] if split == 1 else pw.sum(0)).to(weight.dtype)
            if bias is not None and ctx.needs_input_grad[3]:
                gb = (pb[0] if split == 1 else pb.sum(0)).to(bias.dtype)
        return gl, gu, gw, gb, None, None


def interval_affine(lower: Tensor, upper: Tensor, weight: Tensor, bias: Tensor | None = None, *,
                    relu_input: bool = False, output: str = "bounds") -> tuple[Tensor, Tensor]:
    """Fused Triton interval linear layer (differentiable); see :func:`interval_affine_reference`.

    ``lower``/``upper`` are ``(..., in)``, ``weight`` ``(out, in)``, ``bias`` ``(out,)`` or ``None``;
    fp32/fp16/bf16 on one CUDA device (or the CPU under ``TRITON_INTERPRET=1``).  Returns two fp32
    tensors ``(..., out)``: lower/upper (``output="bounds"``) or centre/radius (``"centre_radius"``).
    """
    _check(lower, upper, weight, bias, output)
    return _IntervalAffine.apply(lower, upper, weight, bias, bool(relu_input), output == "bounds")


__all__ = ["interval_affine", "interval_affine_reference"]
