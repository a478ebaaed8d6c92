"""Soundness checks used by every bound-method test: sampling and PGD inside the box.

``check_sound(bm, model, x_lower, x_upper, C)`` computes the bounds, then
verifies that (a) random points and box vertices and (b) points found by PGD
(minimising and maximising every output) give outputs inside ``[lower, upper]``.

Soundness alone is passed by ``(-inf, inf)``, so there is a tightness floor as well:
the bounds must be finite, and with ``ibp_factor`` the width must not exceed the IBP
width of the same model times ``ibp_factor`` (plus ``ATOL``) — for methods where that
is expected, e.g. CROWN on ReLU networks.
"""

from __future__ import annotations

import torch

from boundc.verify.attacks import pgd_box

#: Slack for floating-point rounding, relative to the output magnitude.
RTOL = 1e-5
ATOL = 1e-5


def _outputs(model, x, C):
    """``model(x)`` or ``C @ model(x)``; ``x`` may repeat each sample (PGD attacks columns separately)."""
    y = model(x)
    if C is None:
        return y
    return torch.einsum("bsk,bk->bs", C.repeat_interleave(x.shape[0] // C.shape[0], 0), y)


def check_sound(bm, model, xl, xu, C=None, *, samples: int = 64, pgd_steps: int = 20, restarts: int = 1,
                method_name: str = "", ibp_factor: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Assert that the bounds are finite (and, with ``ibp_factor``, at most that many times as wide as IBP's)
    and that sampled and attacked outputs lie within them; returns the bounds."""
    with torch.no_grad():
        lower, upper = bm(xl, xu, C)
    assert torch.all(lower <= upper + ATOL), f"{method_name}: lower > upper"
    assert bool(torch.isfinite(lower).all() and torch.isfinite(upper).all()), f"{method_name}: non-finite bounds"
    if ibp_factor is not None:
        import boundc

        with torch.no_grad():
            il, iu = boundc.compile(model, xl, method="ibp")(xl, xu, C)
        excess = (upper - lower) - (ibp_factor * (iu - il) + ATOL)
        assert not bool((excess > 0).any()), (f"{method_name}: bounds looser than {ibp_factor} x IBP's by up to "
                                              f"{excess.max().item():.3g}")
    g = torch.Generator().manual_seed(1)
    worst_low = torch.full_like(lower, float("inf"))
    worst_up = torch.full_like(upper, float("-inf"))
    with torch.no_grad():
        for k in range(samples):
            u = torch.rand(xl.shape, generator=g)
            if k % 4 == 3:  # vertices of the box
                u = (u > 0.5).to(xl.dtype)
            y = _outputs(model, xl + (xu - xl) * u, C)
            worst_low = torch.minimum(worst_low, y)
            worst_up = torch.maximum(worst_up, y)
    if pgd_steps:
        worst_low = torch.minimum(worst_low, pgd_box(lambda x: _outputs(model, x, C), xl, xu, steps=pgd_steps,
                                                     restarts=restarts, generator=g))
        worst_up = torch.maximum(worst_up, -pgd_box(lambda x: -_outputs(model, x, C), xl, xu, steps=pgd_steps,
                                                    restarts=restarts, generator=g))
    tol_l = ATOL + RTOL * worst_low.abs()
    tol_u = ATOL + RTOL * worst_up.abs()
    bad_l = (lower > worst_low + tol_l)
    bad_u = (upper < worst_up - tol_u)
    assert not bad_l.any(), (f"{method_name}: lower bound above a reachable output by "
                             f"{(lower - worst_low)[bad_l].max().item():.3g}")
    assert not bad_u.any(), (f"{method_name}: upper bound below a reachable output by "
                             f"{(worst_up - upper)[bad_u].max().item():.3g}")
    return lower, upper
