"""Run-time drivers of the backward linear relaxation: start states, chunked intermediate bounds, α-CROWN.

The per-op backward rules live in :mod:`.backward`; the generated code calls
these drivers to start a backward pass (from an identity chunk, rows of a
weight, or the spec), to bound every neuron of a node by chunked passes, and to
optimise the free relaxation parameters (α-CROWN).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .backward import Coeffs
from .interval import Interval

# -- start states -------------------------------------------------------------------

def start_identity(x_lower: Tensor, shape: tuple[int, ...], start: int = 0, stop: int | None = None) -> Coeffs:
    """Identity coefficients for neurons ``start:stop`` of a node of per-sample ``shape`` (a chunk)."""
    n = 1
    for d in shape:
        n *= d
    stop = n if stop is None else stop
    B = x_lower.shape[0]
    eye = torch.zeros(stop - start, n, dtype=x_lower.dtype, device=x_lower.device)
    eye[torch.arange(stop - start), torch.arange(start, stop)] = 1
    A = eye.reshape((1, stop - start) + tuple(shape)).expand((B, stop - start) + tuple(shape))
    zero = torch.zeros(B, stop - start, dtype=x_lower.dtype, device=x_lower.device)
    return Coeffs(A, A, zero, zero)


def start_linear(x_lower: Tensor, weight: Tensor, bias: Tensor | None, start: int = 0,
                 stop: int | None = None) -> Coeffs:
    """Structured start at the *input* of a linear layer: rows ``start:stop`` of its weight (no identity)."""
    B = x_lower.shape[0]
    w = weight[start:stop]
    A = w.unsqueeze(0).expand((B,) + tuple(w.shape))
    b = (torch.zeros(w.shape[0], dtype=w.dtype, device=w.device) if bias is None else bias[start:stop])
    b = b.unsqueeze(0).expand(B, w.shape[0])
    return Coeffs(A, A, b, b)


def start_spec(C: Tensor) -> Coeffs:
    """Start at the logits from the spec ``C`` (B, S, K): the spec is never bounded via the logits."""
    zero = torch.zeros(C.shape[:2], dtype=C.dtype, device=C.device)
    return Coeffs(C, C, zero, zero)


def start_spec_linear(C: Tensor, weight: Tensor, bias: Tensor | None) -> Coeffs:
    """Start at the input of an elided last layer: ``C·W`` and bias ``C·b``."""
    A = torch.einsum("bsk,ki->bsi", C, weight)
    b = torch.zeros(C.shape[:2], dtype=C.dtype, device=C.device) if bias is None else torch.einsum("bsk,k->bs", C,
                                                                                                     bias)
    return Coeffs(A, A, b, b)


# -- drivers: run a generated backward walk over chunks / with optimised slopes -----------

def _call_walk(walk: Callable, names: tuple[str, ...], args: dict, **extra) -> Interval:
    """Call a generated walk module with its placeholders filled by name."""
    return Interval(*walk(*[extra[n] if n in extra else args.get(n) for n in names]))


def backward_bounds(walk: Callable, names: tuple[str, ...], args: dict, *, shape: tuple[int, ...], start: str,
                    chunk_size: int, weight: Tensor | None = None, bias: Tensor | None = None,
                    ibp: Interval | None = None) -> Interval:
    """Bounds of every neuron of a node by backward passes over chunks of its neurons.

    ``walk`` is the generated backward pass from the node (or, for ``start="linear"``,
    from the linear layer's input, started from rows of ``weight``).  With ``ibp``
    the result is intersected with it and only neurons IBP leaves unstable
    (``l < 0 < u``) are computed.
    """
    x_lower = args["x_lower"]
    n = 1
    for d in shape:
        n *= d
    B = x_lower.shape[0]
    if ibp is not None:
        lower, upper = ibp.lower.reshape(B, n), ibp.upper.reshape(B, n)
        unstable = ((lower < 0) & (upper > 0)).any(0).nonzero().flatten()
    else:
        lower = upper = None
        unstable = None
    todo = n if unstable is None else int(unstable.numel())
    lows, ups = [], []
    for s in range(0, todo, max(1, chunk_size)):
        e = min(todo, s + chunk_size)
        if unstable is None:
            st = (start_linear(x_lower, weight, bias, s, e) if start == "linear"
                  else start_identity(x_lower, shape, s, e))
        else:
            idx = unstable[s:e]
            st = _start_rows(x_lower, shape, idx, start, weight, bias)
        out = _call_walk(walk, names, args, start=st)
        lows.append(out.lower)
        ups.append(out.upper)
    if unstable is None:
        return Interval(torch.cat(lows, 1).reshape((B,) + tuple(shape)), torch.cat(ups, 1).reshape((B,) + tuple(shape)))
    if todo:
        lower = lower.index_copy(1, unstable, torch.maximum(torch.cat(lows, 1), lower[:, unstable]))
        upper = upper.index_copy(1, unstable, torch.minimum(torch.cat(ups, 1), upper[:, unstable]))
    return Interval(lower.reshape((B,) + tuple(shape)), upper.reshape((B,) + tuple(shape)))


def _start_rows(x_lower: Tensor, shape: tuple[int, ...], idx: Tensor, start: str, weight: Tensor | None,
                bias: Tensor | None) -> Coeffs:
    """Start coefficients for the selected neurons ``idx`` of a node."""
    B, k = x_lower.shape[0], idx.numel()
    zero = torch.zeros(B, k, dtype=x_lower.dtype, device=x_lower.device)
    if start == "linear":
        w = weight[idx].unsqueeze(0).expand((B,) + (k, weight.shape[1]))
        b = zero if bias is None else bias[idx].unsqueeze(0).expand(B, k)
        return Coeffs(w, w, b, b)
    n = 1
    for d in shape:
        n *= d
    eye = torch.zeros(k, n, dtype=x_lower.dtype, device=x_lower.device)
    eye[torch.arange(k), idx] = 1
    A = eye.reshape((1, k) + tuple(shape)).expand((B, k) + tuple(shape))
    return Coeffs(A, A, zero, zero)


def alpha_optimize(walk: Callable, names: tuple[str, ...], args: dict, start: Coeffs, relu_bounds: dict, *,
                   iterations: int, lr: float) -> Interval:
    """α-CROWN: optimise the lower slopes of unstable ReLUs (per spec row) with Adam, clamped to [0, 1].

    Slopes start at the adaptive CROWN choice and the best slopes seen per bounded
    quantity are kept, so the result is never looser than CROWN; any slope in
    [0, 1] is sound.  The final bound is recomputed with the (detached) best slopes
    and the live inputs, so gradients reach the model's parameters.
    """
    S = start.lA.shape[1]
    init = {}
    for name, b in relu_bounds.items():
        a = (b.upper > -b.lower).to(b.lower.dtype).unsqueeze(1)
        init[name] = a.expand((a.shape[0], S) + tuple(a.shape[2:]))
    det = {k: (Interval(v.lower.detach(), v.upper.detach()) if isinstance(v, Interval) else
               (v.detach() if isinstance(v, Tensor) else v)) for k, v in args.items()}
    dstart = Coeffs(*(t.detach() for t in start))
    best_l = best_u = None
    best = {k: (v.clone(), v.clone()) for k, v in init.items()}
    with torch.enable_grad():
        params = {k: (v.clone().requires_grad_(True), v.clone().requires_grad_(True)) for k, v in init.items()}
        opt = torch.optim.Adam([p for pair in params.values() for p in pair], lr=lr) if params else None
        for it in range(iterations + 1):
            out = _call_walk(walk, names, det, start=dstart, **params)
            lo, up = out.lower.detach(), out.upper.detach()
            if best_l is None:
                best_l, best_u = lo, up
                better_l = better_u = torch.ones_like(lo, dtype=torch.bool)
            else:
                better_l, better_u = lo > best_l, up < best_u
                best_l, best_u = torch.maximum(best_l, lo), torch.minimum(best_u, up)
            for k, (pl, pu) in params.items():
                ml = better_l.reshape(better_l.shape + (1,) * (pl.dim() - 2))
                mu = better_u.reshape(better_u.shape + (1,) * (pu.dim() - 2))
                best[k] = (torch.where(ml, pl.detach(), best[k][0]), torch.where(mu, pu.detach(), best[k][1]))
            if it == iterations or opt is None:
                break
            loss = out.upper.sum() - out.lower.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for pl, pu in params.values():
                    pl.clamp_(0, 1)
                    pu.clamp_(0, 1)
    return _call_walk(walk, names, args, start=start, **best)


def unflatten_output(t: Tensor, shape: tuple[int, ...]) -> Tensor:
    """(B, S) bounds of an output of per-sample ``shape`` back to (B, *shape)."""
    return t.reshape((t.shape[0],) + tuple(shape))


__all__ = ["alpha_optimize", "backward_bounds", "start_identity", "start_linear", "start_spec", "start_spec_linear",
           "unflatten_output"]
