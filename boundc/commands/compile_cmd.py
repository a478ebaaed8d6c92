"""``boundc compile``: compile a model, print its bound network and example bounds."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

from boundc import examples
from boundc.errors import BoundcError


def load_factory(spec: str) -> torch.nn.Module:
    """Call ``factory`` from ``path/to/file.py:factory`` and return the model it builds."""
    path, _, name = spec.rpartition(":")
    if not path or not name:
        raise BoundcError(f"MODEL must look like path/to/file.py:factory_function, got {spec!r}")
    file = Path(path)
    if not file.is_file():
        raise BoundcError(f"no such file: {file}")
    mod_spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[file.stem] = module
    mod_spec.loader.exec_module(module)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise BoundcError(f"{file} has no callable {name!r}")
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise BoundcError(f"{spec} returned a {type(model).__name__}, not an nn.Module")
    return model


def resolve_model(spec: str | None, example: str | None, input_shape: str | None):
    """(model, example input) from a ``file.py:factory`` spec, an example name or an .onnx path."""
    if example:
        return examples.build(example), torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    if spec is None:
        raise BoundcError("give a MODEL (file.py:factory or model.onnx) or --example NAME")
    if spec.endswith(".onnx"):
        return spec, None
    model = load_factory(spec).eval()
    if input_shape is None:
        raise BoundcError("--input-shape C,H,W (per example, without batch) is needed for a torch model")
    shape = tuple(int(s) for s in input_shape.split(","))
    return model, torch.rand((2, *shape), generator=torch.Generator().manual_seed(0))


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``compile`` sub-command."""
    p = sub.add_parser("compile", help="compile a model to its bound network and show it")
    p.add_argument("model", nargs="?", help="path/to/file.py:factory_function or model.onnx")
    p.add_argument("--example", choices=sorted(examples.EXAMPLES), help="use a built-in example model")
    p.add_argument("--input-shape", help="per-example input shape for a torch model, e.g. 1,28,28")
    p.add_argument("--method", default="ibp", help="bound method (default: ibp)")
    p.add_argument("--eps", type=float, default=0.01, help="L-inf radius for the demo bounds (default 0.01)")
    p.add_argument("--emit-code", action="store_true", help="print the generated bound network")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compile, print the node table (and code), and bound a demo input."""
    import time

    import boundc

    model, x = resolve_model(args.model, args.example, args.input_shape)
    t0 = time.perf_counter()
    bm = boundc.compile(model, x, method=args.method)
    dt = time.perf_counter() - t0
    if args.emit_code:
        print(bm.code)
    print(bm.table())
    print(f"\ncompiled {len(bm.graph)} IR nodes with method {args.method!r} in {dt:.2f} s")
    if x is None:
        x = torch.rand((2, *bm.input_shape), generator=torch.Generator().manual_seed(0))
    xl, xu = boundc.linf_box(x, args.eps)
    with torch.no_grad():
        lower, upper = bm(xl, xu)
        clean = bm(x, x)[0]
    torch.set_printoptions(precision=4, linewidth=120)
    print(f"\nbounds on the outputs of a demo input (eps={args.eps}):")
    print(f"  clean : {clean[0]}\n  lower : {lower[0]}\n  upper : {upper[0]}")
    print(f"  mean width {float((upper - lower).mean()):.4f}")
    return 0
