"""Backward walks that overwrite coefficient states nothing else reads (passes/graph/consume.py).

The fx pass marks an activation's (or a sum's) rule call ``consume=True`` only where it can prove the state
is read by that call alone and shares no tensor with another value; the rule then forms its result in the
state's buffer.  These tests check that the marks land where the proof holds and nowhere else, that they
change no bound, and that the run-time guard keeps a state whose gradient is recorded intact.
"""

from __future__ import annotations

import operator

import pytest
import torch
import torch.fx as fx
from boundc.passes.graph import consume
from boundc.passes.rules import engine, linalg, patches
from boundc.passes.rules.interval import Interval
from boundc.passes.rules.registry import commutes, consumes_state, forwards_state, owns_result
from test_engine import _model
from torch import nn

import boundc
from boundc import codegen
from boundc.errors import BoundcInternalError
from boundc.options import CompileOptions, LinearOptions


def _marks(bm: nn.Module) -> int:
    """How many rule calls of the compiled bound network (walk modules included) were marked."""
    return sum(bool(n.kwargs.get("consume")) for m in bm.modules() if isinstance(m, fx.GraphModule)
               for n in m.graph.nodes)


def _compile_and_bound(model: nn.Module, x: torch.Tensor, method: str, upper: bool) -> tuple:
    opts = CompileOptions(linear=LinearOptions(output_upper=upper, alpha_iterations=3))
    bm = boundc.compile(model, x[:1], method=method, options=opts)
    xl, xu = boundc.linf_box(x, 0.03)
    with torch.no_grad():
        return bm(xl, xu), _marks(bm)


def _mlp() -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)), (20,)


@pytest.mark.parametrize("name", ["mlp", "small", "bn_pool", "resnet", "conv_zoo"])
@pytest.mark.parametrize("method", ["crown", "crown-ibp", "fast-lin", "alpha-crown"])
@pytest.mark.parametrize("upper", [False, True])
def test_consuming_changes_no_bound(monkeypatch: pytest.MonkeyPatch, name: str, method: str, upper: bool) -> None:
    """Bounds with the marks equal those without (the same arithmetic in another buffer: equal up to the
    rounding of reductions laid out differently), also with every relaxation split into blocks of a few
    rows; the marks exist (the test cannot pass by marking nothing)."""
    model, shape = _mlp() if name == "mlp" else _model(name)
    x = torch.rand((3,) + shape)
    (mine, marked) = _compile_and_bound(model, x, method, upper)
    monkeypatch.setattr(linalg, "_BLOCK_ENTRIES", 40)
    (blocked, _) = _compile_and_bound(model, x, method, upper)
    monkeypatch.setattr(codegen, "mark_consumers", lambda graph: 0)
    (plain, unmarked) = _compile_and_bound(model, x, method, upper)
    assert unmarked == 0
    if method != "crown-ibp" or name in ("mlp", "small"):  # (CROWN-IBP's only pass is the output's)
        assert marked > 0
    tol = 1e-5 if method == "alpha-crown" else 1e-6  # (Adam's steps carry the first rounding differences on)
    for a, b, c in zip(mine, blocked, plain):
        assert torch.allclose(a, c, atol=tol, rtol=tol, equal_nan=True), (a - c).abs().max()
        assert torch.allclose(b, c, atol=1e-5, rtol=1e-5, equal_nan=True)


# -- the proof of ownership on hand-built graphs ------------------------------------------------

@owns_result
def _fresh(state, *args):
    return (state,)


def _passing(state, *args):
    return (state,)


@forwards_state
def _hook(result, extra):
    return result


@consumes_state
def _relax(state, *args, consume=False):
    return (state,)


def _graph(producer, *, tap: bool = False, hook: bool = False, twice: bool = False) -> fx.Graph:
    g = fx.Graph()
    start = g.placeholder("start")
    res = g.call_function(producer, (start,))
    if hook:
        res = g.call_function(_hook, (res, None))
    state = g.call_function(operator.getitem, (res, 0))
    outs = [g.call_function(_relax, (state,))]
    if tap:
        outs.append(g.call_function(getattr, (state, "lA")))
    if twice:
        outs.append(g.call_function(operator.getitem, (res, 1)))
    g.output(tuple(outs))
    return g


@pytest.mark.parametrize(("producer", "options", "expected"), [
    (_fresh, {}, 1),                  # a fresh result read once
    (_fresh, {"hook": True}, 1),      # ... through a hook that forwards it
    (_passing, {}, 0),                # a rule that may hand its input on: not proved
    (_fresh, {"tap": True}, 0),       # the state is also tapped
    (_fresh, {"twice": True}, 0),     # the result is read twice (two inputs may share its tensors)
])
def test_marks_only_where_ownership_is_proved(producer, options: dict, expected: int) -> None:
    g = _graph(producer, **options)
    assert consume.mark_consumers(g) == expected
    relax = next(n for n in g.nodes if n.target is _relax)
    assert relax.kwargs.get("consume", False) is bool(expected)


def test_a_placeholder_is_never_consumed() -> None:
    g = fx.Graph()
    start = g.placeholder("start")
    g.output(g.call_function(_relax, (start,)))
    assert consume.mark_consumers(g) == 0


# -- the run-time guard ----------------------------------------------------------------------------

def _patches_state(requires_grad: bool) -> tuple[patches.Patches, Interval]:
    torch.manual_seed(1)
    x = torch.zeros(2, 3, 6, 6)
    idx = torch.arange(5).repeat(2, 1)
    p = patches.start_rows(x, (3, 6, 6), idx)
    lA = torch.randn(2, 5, 3, 3, 3, requires_grad=requires_grad)
    p = p._replace(lA=lA, uA=lA[:, :0], ub=p.ub[:, :0], pos=p.pos, padding=(1, 1))
    lo = torch.randn(2, 3, 6, 6)
    return p, Interval(lo, lo + torch.rand(2, 3, 6, 6))


def test_consumed_buffer_is_reused_without_gradient() -> None:
    p, b = _patches_state(False)
    with torch.no_grad():
        want = patches.relax_patches(p._replace(lA=p.lA.clone()), b, op="relu")
        got = patches.relax_patches(p, b, op="relu", consume=True)
    assert got.lA.data_ptr() == p.lA.data_ptr()
    assert torch.equal(got.lA, want.lA) and torch.equal(got.lb, want.lb)


def test_a_recorded_state_is_never_overwritten() -> None:
    p, b = _patches_state(True)
    before = p.lA.detach().clone()
    out = patches.relax_patches(p, b, op="relu", consume=True)
    out.lA.sum().backward()
    assert torch.equal(p.lA.detach(), before) and out.lA.data_ptr() != p.lA.data_ptr()


@consumes_state
@commutes
def _sum(a, b, consume=False):
    return a


def test_a_sum_consumes_whichever_state_is_owned() -> None:
    """Of a sum's two states only the second is owned: they are swapped, and the sum consumes it."""
    g = fx.Graph()
    start = g.placeholder("start")
    owned_state = g.call_function(operator.getitem, (g.call_function(_fresh, (start,)), 0))
    total = g.call_function(_sum, (start, owned_state))
    g.output(total)
    assert consume.mark_consumers(g) == 1
    assert total.args == (owned_state, start) and total.kwargs["consume"] is True


def test_start_rows_are_owned_only_out_of_a_box() -> None:
    rows = engine.start_rows(torch.zeros(2, 4), (4,), torch.tensor([[0, 1], [2, 3]]), engine.Start.IDENTITY, None, None)
    box = [rows]
    assert engine.take_start(box) is rows and box == []
    with pytest.raises(BoundcInternalError, match="one-element list"):
        engine.take_start(rows)


def test_a_sum_into_an_owned_window_spanning_both() -> None:
    """The other contribution's narrower windows are added into their place inside the owned ones."""
    torch.manual_seed(2)
    p, _ = _patches_state(False)
    wide, narrow = torch.randn(2, 5, 3, 5, 5), torch.randn(1, 5, 3, 3, 3)
    wide = p._replace(lA=wide, uA=wide[:, :0], padding=(2, 2))
    narrow = p._replace(lA=narrow, uA=narrow[:, :0], padding=(1, 1), lb=torch.randn(2, 5))
    copy = wide.lA.clone()
    want = patches.add_patches(wide._replace(lA=copy, uA=copy[:, :0]), narrow)
    with torch.no_grad():
        got = patches.add_patches(wide, narrow, consume=True)
    assert got.lA.data_ptr() == wide.lA.data_ptr() and got.padding == want.padding == (2, 2)
    assert torch.equal(got.lA, want.lA) and torch.equal(got.lb, want.lb)
