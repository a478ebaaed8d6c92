"""Concrete semantics of every IR op (domain ``"eval"``).

These run on ordinary tensors: for constant sub-graphs (parameters folded by
canonicalisation, batch statistics) and to check a frontend against the model.
Each takes the node's inputs positionally and its attrs as keywords.  The op
table (:mod:`.ops`) names them as each op's ``eval``; the registry serves them
as the ``"eval"`` rules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .linalg import matvec


def identity(x: Tensor) -> Tensor:
    """Return ``x``."""
    return x


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight.T + bias``."""
    return F.linear(x, weight, bias)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def conv(x: Tensor, weight: Tensor, bias: Tensor | None, *, stride: tuple, padding: tuple,
         dilation: tuple, groups: int) -> Tensor:
    """N-d convolution (N from the weight's rank)."""
    return _CONV[weight.dim() - 2](x, weight, bias, stride, padding, dilation, groups)


def scale_shift(x: Tensor, scale: Tensor | None, shift: Tensor | None) -> Tensor:
    """``x * scale + shift`` with broadcasting; either may be absent."""
    if scale is not None:
        x = x * scale
    if shift is not None:
        x = x + shift
    return x


def add(x: Tensor, y: Tensor) -> Tensor:
    """``x + y``."""
    return x + y


def sub(x: Tensor, y: Tensor) -> Tensor:
    """``x - y``."""
    return x - y


def mul(x: Tensor, y: Tensor) -> Tensor:
    """``x * y``."""
    return x * y


def relu(x: Tensor) -> Tensor:
    """max(x, 0)."""
    return torch.relu(x)


def leaky_relu(x: Tensor, *, negative_slope: float) -> Tensor:
    """Leaky ReLU."""
    return F.leaky_relu(x, negative_slope)


def sigmoid(x: Tensor) -> Tensor:
    """Logistic sigmoid."""
    return torch.sigmoid(x)


def tanh(x: Tensor) -> Tensor:
    """Hyperbolic tangent."""
    return torch.tanh(x)


def abs_(x: Tensor) -> Tensor:
    """``|x|``."""
    return x.abs()


def erf(x: Tensor) -> Tensor:
    """The error function."""
    return torch.erf(x)


def softsign(x: Tensor) -> Tensor:
    """``x / (1 + |x|)``."""
    return F.softsign(x)


def gelu(x: Tensor, *, approximate: str = "none") -> Tensor:
    """GELU ``x * Phi(x)`` (``approximate="tanh"``: the tanh formula)."""
    return F.gelu(x, approximate=approximate)


def silu(x: Tensor) -> Tensor:
    """SiLU / swish ``x * sigmoid(x)``."""
    return F.silu(x)


def hardtanh(x: Tensor, *, min_val: float, max_val: float) -> Tensor:
    """Clamp to [min_val, max_val] (either may be +-inf)."""
    return torch.clamp(x, min_val, max_val)


def softplus(x: Tensor, *, beta: float, threshold: float) -> Tensor:
    """Softplus ``log(1 + exp(beta x)) / beta``."""
    return F.softplus(x, beta, threshold)


def reshape(x: Tensor, *, shape: tuple) -> Tensor:
    """Reshape (a leading -1 keeps the batch)."""
    return x.reshape(shape)


def permute(x: Tensor, *, dims: tuple) -> Tensor:
    """Permute dimensions."""
    return x.permute(dims)


def avg_pool2d(x: Tensor, *, kernel_size: tuple, stride: tuple, padding: tuple, ceil_mode: bool,
               count_include_pad: bool, divisor_override: int | None) -> Tensor:
    """2-d average pooling."""
    return F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def adaptive_avg_pool2d(x: Tensor, *, output_size: tuple) -> Tensor:
    """2-d adaptive average pooling."""
    return F.adaptive_avg_pool2d(x, output_size)


def max_pool2d(x: Tensor, *, kernel_size: tuple, stride: tuple, padding: tuple, dilation: tuple,
               ceil_mode: bool) -> Tensor:
    """2-d max pooling."""
    return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)


def concat(*xs: Tensor, dim: int) -> Tensor:
    """Concatenate along ``dim``."""
    return torch.cat(xs, dim)


def pad(x: Tensor, *, pad: tuple, mode: str, value: float) -> Tensor:
    """Pad (``pad`` in torch's last-dimension-first order)."""
    return F.pad(x, pad, mode=mode, value=value) if mode == "constant" else F.pad(x, pad, mode=mode)


def batch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, running_mean: Tensor | None,
               running_var: Tensor | None, *, training: bool, eps: float) -> Tensor:
    """Batch normalisation without updating running statistics."""
    if training or running_mean is None:
        dims = [0] + list(range(2, x.dim()))
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
    else:
        mean, var = running_mean, running_var
    return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)


def batch_mean(x: Tensor) -> Tensor:
    """Per-channel (dim 1) mean over batch and spatial dimensions."""
    return x.mean([0] + list(range(2, x.dim())))


def batch_var(x: Tensor) -> Tensor:
    """Per-channel (dim 1) biased variance over batch and spatial dimensions."""
    return x.var([0] + list(range(2, x.dim())), unbiased=False)


def spec(y: Tensor, C: Tensor) -> Tensor:
    """``C @ y`` for ``C`` of shape (B, S, K) and ``y`` of shape (B, K)."""
    return matvec(C, y)


def spec_linear(x: Tensor, weight: Tensor, bias: Tensor | None, C: Tensor) -> Tensor:
    """``C @ (x @ weight.T + bias)``."""
    return spec(F.linear(x, weight, bias), C)


# -- helpers used by canonicalisation to build constant sub-graphs ------------

def bn_scale(weight: Tensor | None, var: Tensor, *, eps: float) -> Tensor:
    """Per-channel BN scale ``weight / sqrt(var + eps)``."""
    s = torch.rsqrt(var + eps)
    return s if weight is None else weight * s


def bn_shift(bias: Tensor | None, mean: Tensor, scale: Tensor) -> Tensor:
    """Per-channel BN shift ``bias - mean * scale``."""
    t = -mean * scale
    return t if bias is None else bias + t


def fold_weight(weight: Tensor, scale: Tensor) -> Tensor:
    """Scale a linear/conv weight per output channel (``scale`` has 1 or ``out`` entries)."""
    return weight * scale.reshape((-1,) + (1,) * (weight.dim() - 1))


def fold_bias(bias: Tensor | None, scale: Tensor | None, shift: Tensor | None, *, out_channels: int) -> Tensor:
    """The bias after a per-output-channel affine: ``bias * scale + shift``."""
    out = bias
    if out is None:
        ref = scale if scale is not None else shift
        out = torch.zeros(out_channels, dtype=ref.dtype, device=ref.device)
    if scale is not None:
        out = out * scale.reshape(-1)
    if shift is not None:
        out = out + shift.reshape(-1)
    return out.expand(out_channels)


def matmul_weights(w2: Tensor, w1: Tensor) -> Tensor:
    """Weight of two chained linear layers: ``w2 @ w1``."""
    return w2 @ w1


def chain_bias(w2: Tensor, b1: Tensor | None, b2: Tensor | None) -> Tensor | None:
    """Bias of two chained linear layers: ``w2 @ b1 + b2``."""
    if b1 is None:
        return b2
    out = w2 @ b1
    return out if b2 is None else out + b2


def compose_scale(s1: Tensor | None, s2: Tensor | None) -> Tensor | None:
    """Scale of ``(x * s1 + t1) * s2 + t2``: ``s1 * s2``."""
    if s1 is None:
        return s2
    return s1 if s2 is None else s1 * s2


def compose_shift(t1: Tensor | None, s2: Tensor | None, t2: Tensor | None) -> Tensor | None:
    """Shift of ``(x * s1 + t1) * s2 + t2``: ``t1 * s2 + t2``."""
    if t1 is not None and s2 is not None:
        t1 = t1 * s2
    if t1 is None:
        return t2
    return t1 if t2 is None else t1 + t2


def neg(x: Tensor) -> Tensor:
    """``-x``."""
    return -x


def reciprocal(x: Tensor) -> Tensor:
    """``1 / x``."""
    return 1.0 / x


# -- ops added for VNN-COMP coverage ----------------------------------------------------------

def gather(x: Tensor, *, dim: int, index: tuple[int, ...]) -> Tensor:
    """Entries ``index`` (non-negative, constant) of ``x`` along ``dim`` (slices, splits and gathers)."""
    return x.index_select(dim, torch.tensor(index, dtype=torch.long, device=x.device))


def reduce_sum(x: Tensor, *, dims: tuple[int, ...], keepdim: bool, scale: float) -> Tensor:
    """``scale * x.sum(dims)`` (``scale = 1 / n`` for a mean)."""
    out = x.sum(dim=tuple(dims), keepdim=keepdim)
    return out if scale == 1.0 else out * scale


def conv_transpose(x: Tensor, weight: Tensor, bias: Tensor | None, *, stride: tuple, padding: tuple,
                   output_padding: tuple, dilation: tuple, groups: int) -> Tensor:
    """N-d transposed convolution (N from the weight's rank)."""
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[weight.dim() - 2]
    return fn(x, weight, bias, stride, padding, output_padding, groups, dilation)


def exp(x: Tensor) -> Tensor:
    """``e^x``."""
    return torch.exp(x)


def reciprocal_pos(x: Tensor, *, floor: float) -> Tensor:
    """``1 / max(x, floor)``: the reciprocal of a value known to be ``>= floor > 0``."""
    return 1.0 / x.clamp(min=floor)


def power(x: Tensor, *, exponent: float) -> Tensor:
    """``x ** exponent`` for an integer exponent >= 2; ``sqrt(max(x, 0))`` for 0.5."""
    if exponent == 0.5:
        return torch.sqrt(x.clamp(min=0))
    return x ** int(exponent)


def sign(x: Tensor) -> Tensor:
    """-1, 0 or 1."""
    return torch.sign(x)


def floor(x: Tensor) -> Tensor:
    """Round down."""
    return torch.floor(x)


def ceil(x: Tensor) -> Tensor:
    """Round up."""
    return torch.ceil(x)


def sin(x: Tensor) -> Tensor:
    """Sine."""
    return torch.sin(x)


def cos(x: Tensor) -> Tensor:
    """Cosine."""
    return torch.cos(x)
