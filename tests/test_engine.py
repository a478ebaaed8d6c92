"""The backward engine: patches form against the dense form, row selection, chunking, soundness."""

from __future__ import annotations

import pytest
import torch
from boundc.passes.rules import engine, linalg
from boundc.passes.rules.interval import Interval
from soundness import check_sound
from torch import nn

import boundc
from boundc import examples
from boundc.options import CompileOptions, LinearOptions


class ConvZoo(nn.Module):
    """Every conv-path op the patches form handles: strides, padding, dilation, groups, BN, avg-pool, skips."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 6, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=3)
        self.c3 = nn.Conv2d(6, 6, 1)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)
        self.c4 = nn.Conv2d(6, 4, (3, 2), stride=(1, 2))
        self.fc = nn.Linear(4 * 3 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.c1(x)))
        h = torch.relu(self.c2(h) + h)               # identity skip
        h = torch.tanh(self.c3(h) - 0.5 * h)         # sub of a scaled copy, curved activation
        h = torch.relu(self.pool(h))
        h = torch.nn.functional.leaky_relu(self.c4(h), 0.1)
        return self.fc(h.flatten(1))


def _model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    if name == "conv_zoo":
        torch.manual_seed(0)
        m = ConvZoo().eval()
        with torch.no_grad():
            m.bn.running_mean.normal_(0, 0.1)
            m.bn.running_var.uniform_(0.5, 1.5)
        return m, (2, 10, 10)
    shape = (1, 12, 12) if name != "small" else (1, 28, 28)
    return examples.build(name, in_shape=shape), shape


def _bounds(model: nn.Module, x: torch.Tensor, eps: float, method: str, **linear) -> tuple[torch.Tensor, ...]:
    opts = CompileOptions(linear=LinearOptions(**linear))
    bm = boundc.compile(model, x[:1], method=method, options=opts)
    xl, xu = boundc.linf_box(x, eps)
    with torch.no_grad():
        return bm(xl, xu)


@pytest.mark.parametrize("name", ["small", "resnet", "pool", "conv_zoo"])
@pytest.mark.parametrize("method", ["crown", "fast-lin"])
def test_patches_equal_dense(name: str, method: str) -> None:
    """Patches and dense backward passes are the same linear bounds: equal up to float rounding."""
    model, shape = _model(name)
    x = torch.rand((3,) + shape)
    lp, up = _bounds(model, x, 0.02, method, patches=True)
    ld, ud = _bounds(model, x, 0.02, method, patches=False)
    scale = 1 + ld.abs().max()
    assert torch.allclose(lp, ld, atol=1e-5 * scale, rtol=1e-5)
    assert torch.allclose(up, ud, atol=1e-5 * scale, rtol=1e-5)


@pytest.mark.parametrize("name", ["resnet", "conv_zoo"])
def test_patches_sound_and_exact_at_zero_eps(name: str) -> None:
    """Sound by sampling and PGD; eps = 0 reproduces the model."""
    model, shape = _model(name)
    x = torch.rand((2,) + shape)
    bm = boundc.compile(model, x[:1], method="crown")
    xl, xu = boundc.linf_box(x, 0.03)
    check_sound(bm, model, xl, xu, method_name=f"crown/{name}", ibp_factor=1.01 if name == "resnet" else None)
    xl, xu = boundc.linf_box(x, 0.0)
    with torch.no_grad():
        lo, up = bm(xl, xu)
        y = model(x)
    assert torch.allclose(lo, y, atol=1e-4) and torch.allclose(up, y, atol=1e-4)


def test_small_chunks_change_nothing() -> None:
    """A budget of one row per chunk gives the same bounds as one big chunk."""
    model, shape = _model("conv_zoo")
    x = torch.rand((2,) + shape)
    l1, u1 = _bounds(model, x, 0.02, "crown", chunk_budget=1)
    l2, u2 = _bounds(model, x, 0.02, "crown")
    assert torch.allclose(l1, l2, atol=1e-5) and torch.allclose(u1, u2, atol=1e-5)


@pytest.mark.parametrize("name", ["small", "resnet", "conv_zoo", "conv_zoo-float64"])
@pytest.mark.parametrize("upper", [True, False])
def test_row_blocks_change_nothing(monkeypatch: pytest.MonkeyPatch, name: str, upper: bool) -> None:
    """Rules that work by blocks of rows (relaxations in patches and dense form, the input's windows, the
    GEMM + fold transpose of a one-channel convolution) give the bounds of one pass over all rows."""
    name, _, dtype = name.partition("-")
    model, shape = _model(name)
    model = model.to(getattr(torch, dtype or "float32"))
    x = torch.rand((3,) + shape, dtype=getattr(torch, dtype or "float32"))
    whole = _bounds(model, x, 0.02, "crown", output_upper=upper)
    monkeypatch.setattr(linalg, "_BLOCK_ENTRIES", 40)  # blocks of a few rows, every tensor split
    blocked = _bounds(model, x, 0.02, "crown", output_upper=upper)
    for a, b in zip(whole, blocked):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5, equal_nan=True)


def test_stable_neurons_skipped_without_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skipping neurons the interval already decides never loosens the bounds (it can only tighten them)."""
    model, shape = _model("small")
    x = torch.rand((2,) + shape)
    ls, us = _bounds(model, x, 0.01, "crown")
    monkeypatch.setattr(engine, "undecided", lambda b, kinks: torch.ones_like(b.lower.flatten(1), dtype=torch.bool))
    la, ua = _bounds(model, x, 0.01, "crown")
    assert (ls >= la - 1e-5).all() and (us <= ua + 1e-5).all()


def test_undecided_rows() -> None:
    """A neuron needs a backward bound only when a break point of its users lies strictly inside its interval."""
    b = Interval(torch.tensor([[-1.0, 0.0, 0.5, -2.0]]), torch.tensor([[1.0, 2.0, 3.0, 0.0]]))
    assert engine.undecided(b, (0.0,)).tolist() == [[True, False, False, False]]
    assert engine.undecided(b, (0.0, 1.0)).tolist() == [[True, True, True, False]]
    assert engine.undecided(b, None).all()


@pytest.mark.parametrize("model", ["bn_pool", "sigmoid_tanh"])
@pytest.mark.parametrize("method", ["crown-ibp", "crown", "fast-lin", "alpha-crown"])
def test_lower_only_output_keeps_every_lower_bound(method: str, model: str) -> None:
    """``output_upper=False`` skips the upper side of the final pass (and its relaxation lines): the same
    lower bounds, upper +inf, and the lower bound is still sound under sampling."""
    torch.manual_seed(3)
    m = examples.build(model).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        C = boundc.margin_spec(m(x).argmax(1), 10)
    xl, xu = boundc.linf_box(x, 0.02)
    lin = dict(alpha_iterations=4)
    both = boundc.compile(m, x[:2], method=method, options=CompileOptions(linear=LinearOptions(**lin)))
    lower_only = boundc.compile(m, x[:2], method=method,
                                options=CompileOptions(linear=LinearOptions(output_upper=False, **lin)))
    with torch.no_grad():
        lo, hi = both(xl, xu, C)
        lo2, hi2 = lower_only(xl, xu, C)
    torch.testing.assert_close(lo2, lo, rtol=1e-6, atol=1e-6)
    assert torch.isinf(hi2).all() and (hi2 > 0).all() and torch.isfinite(hi).all()
    samples = xl + (xu - xl) * torch.rand((64,) + x.shape)
    with torch.no_grad():
        margins = torch.einsum("nbk,bsk->nbs", m(samples.flatten(0, 1)).reshape(64, 3, 10), C)
    assert (margins >= lo2 - 1e-5).all()


def test_training_cache_compiles_lower_only() -> None:
    """The training losses read only margin lower bounds: their cache compiles without the upper side."""
    from boundc.train.losses import BoundCache, margin_lower_bounds

    torch.manual_seed(4)
    m = examples.build("small").eval()
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    cache = BoundCache(m, x)
    bm = cache.get("crown-ibp")
    xl, xu = boundc.linf_box(x, 0.01, (0.0, 1.0))
    _, upper = bm(xl, xu, boundc.margin_spec(y, 10))
    assert torch.isinf(upper).all()
    full = boundc.compile(m, x[:2], method="crown-ibp")
    lower, _ = full(xl, xu, boundc.margin_spec(y, 10))
    torch.testing.assert_close(margin_lower_bounds(bm, x, y, 0.01, (0.0, 1.0), 10), lower, rtol=1e-6, atol=1e-6)


def _relu_input_bounds(model: nn.Module, x: torch.Tensor, eps: float, **linear) -> tuple[dict, torch.Tensor]:
    """CROWN's recorded bounds of every ReLU input, and the logit bounds."""
    from boundc.report import node_bounds

    bm = boundc.compile(model, x[:1], method="crown", options=CompileOptions(linear=LinearOptions(**linear)))
    xl, xu = boundc.linf_box(x, eps)
    relu_in = {n.inputs[0] for n in bm.graph if n.op == "relu" and n.perturbed}
    bounds = node_bounds(bm, xl, xu)
    with torch.no_grad():
        out = torch.cat(bm(xl, xu), 1)
    return {k: v for k, v in bounds.items() if k in relu_in}, out


@pytest.mark.parametrize("name", ["small", "resnet", "conv_zoo"])
@pytest.mark.parametrize("wrong_guess", [False, True])
def test_skipping_the_stable_side_keeps_every_relaxation(name: str, wrong_guess: bool,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """One bound that shows a ReLU input stable spares the other side's pass: each neuron is stable on
    the same side as with both sides computed, an unstable one has the same two bounds, so the output
    bounds are equal.  The first side is only a guess: guessing every neuron wrong changes nothing
    either (it only costs the second pass).  And the skipping is real: with the midpoint guess some
    stable neurons keep their looser interval bound on the side never computed."""
    model, shape = _model(name)
    x = torch.rand((3,) + shape)
    both, out_both = _relu_input_bounds(model, x, 0.02, skip_stable_side=False)
    if wrong_guess:
        first = engine.first_side
        monkeypatch.setattr(engine, "first_side", lambda point, k: -first(point, k))
    one, out_one = _relu_input_bounds(model, x, 0.02)
    assert both.keys() == one.keys() and len(both) >= 2
    torch.testing.assert_close(out_one, out_both, rtol=1e-6, atol=1e-6)
    looser = 0
    for k, b in both.items():
        o = one[k]
        assert torch.equal(b.lower >= 0, o.lower >= 0) and torch.equal(b.upper <= 0, o.upper <= 0), k
        unstable = (b.lower < 0) & (b.upper > 0)
        torch.testing.assert_close(o.lower[unstable], b.lower[unstable], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(o.upper[unstable], b.upper[unstable], rtol=1e-6, atol=1e-6)
        looser += int(((o.upper > b.upper + 1e-6) & (b.lower >= 0)).sum()
                      + ((o.lower < b.lower - 1e-6) & (b.upper <= 0)).sum())
    # a wrong first side proves nothing, so every neuron gets both passes: nothing is looser then
    assert (looser == 0) if wrong_guess else (looser > 0)


@pytest.mark.parametrize("method", boundc.methods())
def test_an_empty_batch_gives_empty_bounds(method: str) -> None:
    """A batch of no samples (the last batch of a loader can be one) gives empty bounds, with and
    without a spec, under every method (a CNN with max pooling)."""
    m = examples.build("pool")
    x = torch.rand(2, 1, 28, 28)
    bm = boundc.compile(m, x, method=method)
    xl, xu = boundc.linf_box(x[:0], 0.01)
    lo, up = bm(xl, xu)
    assert lo.shape == up.shape == (0, 10)
    lo, up = bm(xl, xu, boundc.margin_spec(torch.zeros(0, dtype=torch.long), 10))
    assert lo.shape == up.shape == (0, 9)
