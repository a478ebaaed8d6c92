"""Export a compiled bound network as an ONNX *certifier*.

The exported graph has inputs ``x_lower``, ``x_upper`` (the input box, batch
first) and, depending on ``spec``:

* ``None``: no third input; outputs bounds on the logits;
* ``"C"``: a spec matrix ``C`` of shape (B, S, K); outputs bounds on ``C·y``;
* ``"margin"``: ``labels`` (B,) int64; outputs bounds on the margins
  ``y_label - y_j`` for the K-1 other classes (boundc's :func:`margin_spec`
  order), so a sample is certified iff every ``lower`` entry is > 0.

Outputs are ``lower`` and ``upper``; every batch dimension is dynamic.  The
generated GraphModules are traced directly (TorchScript exporter), skipping
the Python-side input validation of ``BoundModule.forward``.
"""

from __future__ import annotations

import io
import os
import warnings

import torch
from torch import Tensor, nn

from boundc.bound_module import BoundModule
from boundc.errors import BoundcError
from boundc.specs import margin_rows, other_classes

SPECS = (None, "C", "margin")


class Certifier(nn.Module):
    """The bound network with a fixed calling convention for export."""

    def __init__(self, bm: BoundModule, spec: str | None = None, identity_spec: bool = False) -> None:
        super().__init__()
        if spec not in SPECS:
            raise BoundcError(f"spec must be one of {SPECS}, got {spec!r}")
        self.spec = spec
        self.identity_spec = identity_spec and spec is None
        self.net = bm.bound_network(spec=spec is not None or self.identity_spec)
        self.needs_clean = bm.needs_clean_input
        k = int(torch.tensor(bm.output_shape).prod()) if bm.output_shape else 1
        self.num_classes = k
        if spec == "margin":
            self.register_buffer("others", other_classes(k), persistent=False)
            self.register_buffer("eye", torch.eye(k), persistent=False)

    def spec_matrix(self, labels: Tensor) -> Tensor:
        """Margin spec (B, K-1, K): rows ``e_label - e_j`` for ``j != label``."""
        return margin_rows(labels, self.eye.to(torch.float32), self.others)

    def forward(self, x_lower: Tensor, x_upper: Tensor, extra: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(lower, upper)`` for the box (and spec)."""
        kwargs = {"x_clean": (x_lower + x_upper) / 2} if self.needs_clean else {}
        if self.identity_spec:  # logit bounds as bounds on I·y
            eye = torch.eye(self.num_classes, dtype=x_lower.dtype, device=x_lower.device)
            return tuple(self.net(x_lower, x_upper, eye.expand(x_lower.shape[0], -1, -1), **kwargs))
        if self.spec is None:
            return tuple(self.net(x_lower, x_upper, **kwargs))
        C = self.spec_matrix(extra).to(x_lower.dtype) if self.spec == "margin" else extra
        return tuple(self.net(x_lower, x_upper, C, **kwargs))


def _check_exportable(bm: BoundModule) -> None:
    """Reject methods whose bound network is not a fixed graph of tensor ops."""
    if bm.method == "alpha-crown":
        raise BoundcError("alpha-crown cannot be exported to ONNX: it optimises its ReLU slopes by gradient "
                          "steps at run time, which an ONNX graph cannot hold.  Export the model compiled with "
                          "method='crown' instead (alpha-CROWN's starting point; equally sound, its bounds are "
                          "at most as tight as alpha-CROWN's).")


def _example_box(shape: tuple[int, ...], batch: int = 2) -> tuple[Tensor, Tensor]:
    """The box the exporter traces with: wide, so that every neuron a method might refine is undecided
    and the traced graph holds backward rows for all of them (rows are masked per sample at run time)."""
    x = torch.zeros(batch, *shape)
    return x - 100.0, x + 100.0


def export_onnx(bm: BoundModule, path: str | os.PathLike | io.BytesIO, spec: str | None = None,
                opset: int = 17) -> None:
    """Write the ONNX certifier of ``bm`` (see the module docstring) to ``path``.

    Every method but ``alpha-crown`` exports (that one raises :class:`BoundcError` naming ``crown``).
    """
    _check_exportable(bm)
    try:
        _export(Certifier(bm, spec).eval(), bm, path, spec, opset)
    except BoundcError:
        if spec is not None:
            raise
        _export(Certifier(bm, spec, identity_spec=True).eval(), bm, path, spec, opset)


def _export(cert: Certifier, bm: BoundModule, path: str | os.PathLike | io.BytesIO, spec: str | None,
            opset: int) -> None:
    """Trace ``cert`` with the TorchScript exporter."""
    shape = tuple(bm.input_shape)
    args: tuple = _example_box(shape)
    names = ["x_lower", "x_upper"]
    axes: dict[str, dict[int, str]] = {"x_lower": {0: "batch"}, "x_upper": {0: "batch"},
                                       "lower": {0: "batch"}, "upper": {0: "batch"}}
    if spec == "C":
        args += (torch.eye(cert.num_classes).unsqueeze(0).repeat(2, 1, 1),)
        names.append("C")
        axes["C"] = {0: "batch", 1: "specs"}
        axes["lower"][1] = axes["upper"][1] = "specs"
    elif spec == "margin":
        args += (torch.tensor([0, cert.num_classes - 1]),)
        names.append("labels")
        axes["labels"] = {0: "batch"}
    # Constant folding materialises every parameter-derived tensor (folded batch norms, |W|) once per use,
    # while leaving it out keeps the small ops that compute them: keep whichever file is smaller.
    data = min((_trace(cert, args, names, axes, opset, fold) for fold in (False, True)), key=len)
    if isinstance(path, io.BytesIO):
        path.write(data)
    else:
        with open(os.fspath(path), "wb") as f:
            f.write(data)


def _trace(cert: Certifier, args: tuple, names: list[str], axes: dict, opset: int, fold: bool) -> bytes:
    """One TorchScript export of ``cert`` (with or without constant folding), compacted."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(cert, args, buf, input_names=names, output_names=["lower", "upper"],
                              dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=fold)
        except Exception as err:  # noqa: BLE001 - report the exporter's reason
            raise BoundcError(f"ONNX export of the bound network failed: {type(err).__name__}: {err}") from err
    return _compact(buf.getvalue())


def _compact(data: bytes) -> bytes:
    """The same ONNX model, smaller: identical initializers and identical nodes (same op, inputs and
    attributes: repeated shape arithmetic and constants of the traced graph) merged, short names for
    intermediate values, no node names and no intermediate shape annotations.  A bound network has
    many small nodes; their scope-path names and duplicates would otherwise outweigh the parameters.
    Inputs, outputs and initializers keep their names."""
    import onnx

    model = onnx.load_from_string(data)
    g = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        return data  # sub-graphs capture outer names: leave the model as the exporter wrote it
    outputs = {v.name for v in g.output}
    alias: dict[str, str] = {}
    inits: dict[bytes, str] = {}
    kept_inits = []
    for t in g.initializer:
        key = t.SerializeToString().replace(t.name.encode(), b"")
        if key in inits and t.name not in outputs:
            alias[t.name] = inits[key]
        else:
            inits.setdefault(key, t.name)
            kept_inits.append(t)
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    seen: dict[tuple, list[str]] = {}
    kept = []
    for n in g.node:
        n.input[:] = [alias.get(v, v) for v in n.input]
        key = (n.domain, n.op_type, tuple(n.input), tuple(a.SerializeToString() for a in n.attribute))
        if key in seen and not n.op_type.startswith("Random") and not outputs.intersection(n.output):
            alias.update(zip(n.output, seen[key]))
            continue
        seen.setdefault(key, list(n.output))
        kept.append(n)
    keep = {v.name for v in g.input} | outputs | {t.name for t in g.initializer} | {""}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        if name in keep:
            return name
        if name not in short:
            short[name] = f"t{len(short)}"
        return short[name]

    for n in kept:
        n.name = ""
        n.doc_string = ""
        n.input[:] = [rename(v) for v in n.input]
        n.output[:] = [rename(v) for v in n.output]
    del g.node[:]
    g.node.extend(kept)
    del g.value_info[:]
    return model.SerializeToString()
