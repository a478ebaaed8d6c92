"""ONNX frontend: an ONNX model → boundc IR.

Each ONNX op is lowered by a function registered with
:func:`~boundc.frontends.onnx_lowering.lowering` (the lowerings are in
:mod:`boundc.frontends.onnx_ops`, the machinery in
:mod:`boundc.frontends.onnx_lowering`).  The lowerer keeps, for every ONNX value, either a *constant* (a torch tensor:
initializers, ``Constant`` nodes and everything computed only from them, which
is folded here) or the name of a *batched* IR node (derived from the input).

Batch convention.  The IR wants the batch at dimension 0.  When the ONNX input
has rank >= 2 and a symbolic or fixed-1 leading dimension, that dimension is
the batch (``offset`` 0: ONNX axis ``a`` is IR axis ``a``).  When the input has
rank 1 (e.g. the VNN-COMP ``test`` nets) the whole tensor is one example and
the IR prepends a batch dimension (``offset`` 1: ONNX axis ``a`` is IR axis
``a + 1``).  Either way the compiled bound module accepts any batch size.

Shapes are found by evaluating every emitted IR node (concrete ``eval`` rules)
on a random example of batch 2, so every IR node carries its traced shape.
Initializers become ``param`` nodes whose tensors are registered in
``Graph.tensors`` (buffers of the generated module).  Every op without a
lowering is reported in one :class:`~boundc.errors.UnsupportedOpError`.
"""

from __future__ import annotations

import os

import onnx
from boundc.frontends import onnx_ops  # noqa: F401  (importing it registers the lowerings)
from boundc.frontends.onnx_lowering import Lowerer, supported_ops

from boundc.errors import BoundcError
from boundc.ir import Graph

__all__ = ["from_onnx", "load_model", "supported_ops"]


# -- loading ---------------------------------------------------------------------------

def load_model(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Read an ONNX model (path or proto); a file that is not ONNX gives one BoundcError."""
    if isinstance(model, onnx.ModelProto):
        return model
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise BoundcError(f"no such ONNX file: {path}")
    try:
        proto = onnx.load(path)
    except Exception as err:  # noqa: BLE001 - protobuf raises many types
        raise BoundcError(f"{path} is not a valid ONNX model: {type(err).__name__}: {err}") from err
    if not proto.graph.node and not proto.graph.output:
        raise BoundcError(f"{path} is not a valid ONNX model (no graph found)")
    return proto


def from_onnx(model: str | os.PathLike | onnx.ModelProto) -> Graph:
    """Lower an ONNX model (path or ``ModelProto``) to the boundc IR."""
    proto = load_model(model)
    try:
        proto = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001,S110 - shape inference is only a help; lowering traces shapes itself
        pass
    return Lowerer(proto).run()
