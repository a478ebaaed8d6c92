"""``boundc.compile``: frontend → canonicalise → analyse → codegen."""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

from boundc import codegen
from boundc.bound_module import BoundModule
from boundc.errors import BoundcError
from boundc.ir import Graph, Node
from boundc.options import CompileOptions
from boundc.passes.graph.canonicalize import canonicalize
from boundc.passes.graph.spec import attach_spec


def lower(model: Any, example: torch.Tensor | None = None) -> Graph:
    """The canonicalised, analysed IR of ``model`` (a module, or an ONNX file / proto)."""
    if isinstance(model, nn.Module):
        if example is None:
            raise BoundcError("compiling a torch module needs an example input (batch first)")
        from boundc.frontends.torch_export import from_torch

        g = from_torch(model, example)
    elif isinstance(model, (str, os.PathLike)) or type(model).__name__ == "ModelProto":
        try:
            from boundc.frontends.onnx import from_onnx
        except ImportError as err:
            raise BoundcError(f"ONNX models need the ONNX frontend: {err}") from err
        g = from_onnx(model)
    else:
        raise BoundcError(f"cannot compile a {type(model).__name__}: pass an nn.Module or an .onnx path")
    if len(g.outputs) > 1:
        g = concat_outputs(g)
    if len(g.outputs) != 1:
        raise BoundcError(f"boundc supports networks with one output tensor; this one has {len(g.outputs)}")
    return canonicalize(g)


def concat_outputs(g: Graph) -> Graph:
    """Make a graph with several outputs one with a single output: the outputs flattened per sample and
    concatenated in order (VNN-LIB numbers ``Y_j`` over all outputs that way)."""
    flat = []
    for k, name in enumerate(g.outputs):
        n = g[name]
        if not n.batched or len(n.shape) < 1:
            raise BoundcError(f"output {k} ({n.where()}) does not depend on the input")
        if len(n.shape) == 2:
            flat.append(name)
            continue
        numel = math.prod(n.shape[1:])
        flat.append(g.add(Node(g.fresh_name(f"{name}_flat"), "reshape", (name,), {"shape": (-1, numel)},
                               (n.shape[0], numel), True, n.source)).name)
    total = sum(g[f].shape[1] for f in flat)
    out = g.add(Node(g.fresh_name("outputs"), "concat", tuple(flat), {"dim": 1}, (g[flat[0]].shape[0], total), True,
                     "the model's outputs, flattened and concatenated"))
    g.outputs = [out.name]
    return g


def compile(model: Any, example: torch.Tensor | None = None, method: str = "ibp",
            options: CompileOptions | None = None) -> BoundModule:
    """Compile ``model`` into its bound network for ``method`` (see :func:`boundc.methods`)."""
    return build(lower(model, example), method, options or CompileOptions())


def build(g: Graph, method: str, options: CompileOptions) -> BoundModule:
    """The :class:`BoundModule` of an already lowered graph ``g`` (e.g. ``bm.graph``) for ``method``."""
    logits_net = codegen.build(g, method, options)
    spec_net = codegen.build(attach_spec(g, elide=options.elide_last_layer), method, options)
    return BoundModule(g, method, options, logits_net, spec_net)
