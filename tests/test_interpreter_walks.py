"""The walks moved onto ``boundc.interpreter``: the reverse (backward) walk, the MILP encoding, the ONNX trace."""

from __future__ import annotations

import boundc.frontends.onnx  # noqa: F401  (registers the ONNX lowerings)
import numpy as np
import onnx
import pytest
import torch
from boundc.frontends.onnx_lowering import TRACE_BATCH, Lowerer, Unsupported
from boundc.passes.graph.analysis import evaluate
from boundc.passes.graph.planning import ancestors, needed_bounds
from boundc.passes.rules import backward as bw
from boundc.passes.rules import engine
from boundc.passes.rules.interval import Interval
from boundc.passes.rules.ops import opdef
from onnx import helper as h
from onnx import numpy_helper
from test_milp import _mlp, _Residual  # the same small nets as the MILP tests
from torch import nn

import boundc
from boundc.errors import BoundcError
from boundc.interpreter import Interpreter, ReverseWalk
from boundc.ir import Graph, Node
from boundc.methods_linear import add_split_terms, build_walk
from boundc.verify.milp import MilpEncoding, MilpVerifier


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 5))


def _eager_walk(g: Graph, root: str, start, bounds: dict, xl, xu, mode: str = "crown", **hooks) -> Interval:
    """One backward pass run eagerly by the reverse walk (constants from an eager Interpreter)."""
    def relaxation(n: Node) -> dict:
        return {"mode": mode} if opdef(n.op).relaxation is not None else {}

    walk = ReverseWalk(Interpreter(g, "backward", {"input": xl}), bw.add_coeffs, lambda n, s: bw.concretize(s, xl, xu),
                       bounds=bounds, extra_kwargs=relaxation, **hooks)
    return walk.run(root, start)


def _eager_crown(g: Graph, xl, xu, mode: str = "crown") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """CROWN by eager reverse walks only: every needed intermediate bound by a pass from unit rows."""
    bounds: dict[str, Interval] = {}
    for name in needed_bounds(g):
        shape = tuple(g[name].shape[1:])
        if g[name].op == "input":
            bounds[name] = Interval(xl, xu)
            continue
        res = _eager_walk(g, name, engine.start_identity(xl, shape), bounds, xl, xu, mode)
        bounds[name] = Interval(res.lower.reshape(xl.shape[0], *shape), res.upper.reshape(xl.shape[0], *shape))
    out = g.output
    res = _eager_walk(g, out.name, engine.start_identity(xl, tuple(out.shape[1:])), bounds, xl, xu, mode)
    return res.lower, res.upper, bounds


@pytest.mark.parametrize("factory, shape", [(_mlp, (4,)), (_cnn, (1, 8, 8)), (_Residual, (1, 4, 4))])
@pytest.mark.parametrize("method", ["crown", "fast-lin"])
def test_reverse_walk_eager_equals_compiled(factory, shape, method) -> None:
    """The reverse walk run eagerly gives the compiled module's bounds (which run the same walk emitted)."""
    torch.manual_seed(0)
    model = factory().double().eval()
    x = torch.rand(2, *shape, dtype=torch.float64)
    xl, xu = boundc.linf_box(x, 0.1)
    bm = boundc.compile(model, x, method=method)
    lower, upper = bm(xl, xu)
    lo, up, bounds = _eager_crown(bm.graph, xl, xu, mode=method)
    torch.testing.assert_close(lo, lower.reshape(lo.shape), rtol=0, atol=1e-6)
    torch.testing.assert_close(up, upper.reshape(up.shape), rtol=0, atol=1e-6)
    # and they are bounds, strictly looser than the box is wide (the ReLUs are relaxed, not dropped)
    y = model(xl + (xu - xl) * torch.rand_like(xl))
    assert bool((lo <= y + 1e-9).all() and (y <= up + 1e-9).all())
    assert any(bool(((b.lower < 0) & (b.upper > 0)).any()) for b in bounds.values())


def test_reverse_walk_hooks_match_the_emitted_bab_walk() -> None:
    """β split terms (``after``) and taps (``visit``), eagerly, give what the emitted BaB walk returns."""
    torch.manual_seed(1)
    model = _mlp().double().eval()
    x = torch.rand(1, 4, dtype=torch.float64)
    xl, xu = boundc.linf_box(x, 0.2)
    g = boundc.compile(model, x, method="crown").graph
    _, _, bounds = _eager_crown(g, xl, xu)
    root = g.output.name
    relus = [n.name for n in g if n.op == "relu"]
    taps = (*relus, g.input.name)
    walk, names, bmap, amap = build_walk(g, root, "crown", splits=tuple(relus), taps=taps)
    betas = {r: torch.rand(1, 3, *g[r].shape[1:], dtype=torch.float64) * torch.sign(torch.randn(1, 1, *g[r].shape[1:]))
             for r in relus}
    start = engine.start_identity(xl, tuple(g.output.shape[1:]))
    args = {"x_lower": xl, "x_upper": xu, "start": start, **{p: bounds[n] for p, n in bmap.items()},
            **{p: betas[n] for p, n in amap.items() if p.startswith("beta_")}}
    emitted = walk(*[args.get(n) for n in names])

    tapped: dict[str, torch.Tensor] = {}
    seen: list[str] = []

    def visit(n: Node, state) -> None:
        seen.append(n.name)
        if n.name in taps:
            tapped[n.name] = state.lA

    res = _eager_walk(g, root, start, bounds, xl, xu, after=lambda n, r: add_split_terms(r, betas.get(n.name)),
                      visit=visit)
    assert seen == list(reversed(ancestors(g, root)))
    torch.testing.assert_close(res.lower, emitted[0], rtol=0, atol=1e-9)
    torch.testing.assert_close(res.upper, emitted[1], rtol=0, atol=1e-9)
    for t, e in zip(taps, emitted[2:]):
        torch.testing.assert_close(tapped[t], e, rtol=0, atol=1e-9)
    plain = _eager_walk(g, root, start, bounds, xl, xu)
    assert not torch.allclose(plain.lower, res.lower)  # the split terms changed the lower bound ...
    torch.testing.assert_close(plain.upper, res.upper, rtol=0, atol=1e-12)  # ... and only it


def test_reverse_walk_reports_a_missing_rule() -> None:
    g = boundc.lower(nn.Sequential(nn.Linear(3, 2), nn.ReLU()), torch.rand(1, 3))
    walk = ReverseWalk(Interpreter(g, "no-such-domain"), bw.add_coeffs)
    with pytest.raises(BoundcError, match="no rule in domain 'no-such-domain'"):
        walk.run(g.output.name, None)


# -- the MILP encoding -----------------------------------------------------------------------------------

def test_milp_encoding_equalities_by_hand() -> None:
    """linear → relu → (linear + skip): the equality rows are ``out − W·in = b`` and ``out − a − b = 0``."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2 = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            return self.l2(torch.relu(self.l1(x))) + x

    torch.manual_seed(0)
    net = Net().double().eval()
    g = boundc.lower(net, torch.rand(1, 3, dtype=torch.float64))
    v = MilpVerifier(g)
    lay = v.layout
    ops = [g[name].op for name in lay.offset]
    assert ops == ["input", "linear", "relu", "linear", "add"] and [r.op for r in v.relus] == ["relu"]
    x, l1, r, l2, s = lay.offset
    E, rhs = np.zeros((9, lay.total)), np.zeros(9)
    for rows, out, terms, b in ((slice(0, 3), l1, [(x, net.l1.weight)], net.l1.bias),
                                (slice(3, 6), l2, [(r, net.l2.weight)], net.l2.bias),
                                (slice(6, 9), s, [(l2, torch.eye(3)), (x, torch.eye(3))], torch.zeros(3))):
        E[rows, lay.slice(out)] = np.eye(3)
        for i, W in terms:
            E[rows, lay.slice(i)] = -W.detach().numpy()
        rhs[rows] = b.detach().numpy()
    np.testing.assert_allclose(v.equalities.toarray(), E, atol=1e-12)
    np.testing.assert_allclose(v.equality_rhs, rhs, atol=1e-12)


def test_milp_encoding_values_are_the_eval_walk() -> None:
    torch.manual_seed(0)
    g = boundc.lower(_Residual().double().eval(), torch.rand(1, 1, 4, 4, dtype=torch.float64))
    enc = MilpEncoding(g)
    enc.run()
    ref = evaluate(g, torch.zeros(1, 1, 4, 4, dtype=torch.float64))
    assert not enc.problems and set(enc.values) == set(ref)
    for k, t in ref.items():
        torch.testing.assert_close(enc.values[k], t, rtol=0, atol=0)
    assert list(enc.layout.offset) == [n.name for n in g if n.perturbed]
    assert enc.relus == [n.name for n in g if n.op == "relu"]


def test_milp_encoding_lists_every_node_it_cannot_encode() -> None:
    """Piecewise-linear but not ReLU, smooth, and a product of two perturbed values: one error names all."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2 = nn.Linear(3, 4), nn.Linear(3, 4)

        def forward(self, x):
            h, k = self.l1(x), self.l2(x)
            return nn.functional.leaky_relu(h, 0.1) + torch.sigmoid(k) + h * k

    g = boundc.lower(Net(), torch.rand(1, 3))
    with pytest.raises(BoundcError) as info:
        MilpVerifier(g)
    msg = str(info.value)
    assert msg.startswith("complete verification cannot encode this network:")
    assert "op 'leaky_relu' has no MILP encoding (ReLU networks only)" in msg
    assert "op 'sigmoid' has no MILP encoding (ReLU networks only)" in msg
    assert "[mul]" in msg and "a product of two perturbed values is not linear" in msg
    assert msg.count("\n  - ") == 3


# -- the ONNX trace --------------------------------------------------------------------------------------

def _onnx_cnn(batch: str | int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("w", (3, 2, 3, 3)), ("b", (3,)), ("fw", (4, 3 * 3 * 3)), ("fb", (4,)))]
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
             h.make_node("Relu", ["c"], ["r"], name="relu"),
             h.make_node("Flatten", ["r"], ["f"], name="flat"),
             h.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1)]
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, 2, 5, 5])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, 4])
    return h.make_model(h.make_graph(nodes, "g", [x], [y], initializer=inits), opset_imports=[h.make_opsetid("", 13)])


@pytest.mark.parametrize("batch", ["N", 1])
def test_onnx_trace_is_the_eval_walk_and_matches_onnxruntime(batch) -> None:
    import onnxruntime as ort

    model = _onnx_cnn(batch)
    lw = Lowerer(model)
    g = lw.run()
    assert lw.example is lw.trace.values
    for n in g:  # every node's shape is the trace's
        assert tuple(lw.example[n.name].shape) == n.shape
        if n.op != "param":
            assert n.shape[0] == TRACE_BATCH
    x = lw.trace.seeds["input"]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"x": x[k:k + 1].numpy()})[0] for k in range(TRACE_BATCH)])
    out = lw.example[g.output.name]
    assert tuple(out.shape) == ref.shape
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # and the graph itself computes what the trace recorded
        torch.testing.assert_close(evaluate(g, x)[g.output.name], out)


def test_onnx_trace_refuses_batch_mixing_and_leaves_no_trace() -> None:
    lw = Lowerer(_onnx_cnn("N"))
    g = lw.run()
    before_nodes, before_values = list(g.nodes), set(lw.example)
    lw.node = h.make_node("Transpose", [], [], name="bad")
    with pytest.raises(Unsupported, match=r"mixes the batch dimension into others \(shape \[5, 2, 2, 5\]\)"):
        lw.emit("permute", ("x",), dims=(2, 1, 0, 3))
    assert list(g.nodes) == before_nodes and set(lw.example) == before_values
