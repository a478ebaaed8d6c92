"""``boundc compile``: compile a model, print its bound network and example bounds."""

from __future__ import annotations

import argparse
import sys
import time

from boundc.cli.common import add_command, input_shape, method_names, nonneg_float, note, resolve_model

#: Methods whose bound pass takes noticeably long on CPU (a note is printed before it starts).
SLOW_METHODS = ("alpha-crown", "crown")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """MODEL, --example and --input-shape (shared with ``export``)."""
    from boundc import examples

    p.add_argument("model", nargs="?", help="path/to/file.py:factory_function (a function returning an nn.Module) "
                   "or model.onnx")
    p.add_argument("--example", choices=sorted(examples.EXAMPLES),
                   help="use a built-in example model instead of MODEL (input 1x28x28)")
    p.add_argument("--input-shape", type=input_shape, metavar="C,H,W",
                   help="per-example input shape (without batch) for a torch model, e.g. 1,28,28 or 1x28x28")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``compile`` sub-command."""
    p = add_command(sub, "compile", help="compile a model to its bound network and show it")
    add_model_arguments(p)
    p.add_argument("--method", default="ibp", choices=method_names(), help="bound method (see `boundc methods`)")
    p.add_argument("--eps", type=nonneg_float, default=0.01, help="L-inf radius of the demo bounds")
    p.add_argument("--emit-code", action="store_true", help="also print the generated bound network (Python)")
    p.set_defaults(func=run)


def _clean_outputs(model, x):
    """The model's outputs at ``x`` (torch: the model; ONNX: onnxruntime) — no bound pass."""
    import torch

    if isinstance(model, torch.nn.Module):
        with torch.no_grad():
            return model(x)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return torch.from_numpy(sess.run(None, {name: x.numpy()})[0])


def run(args: argparse.Namespace) -> int:
    """Compile, print the node table (and code), and bound a demo input."""
    import torch

    import boundc
    from boundc.options import CompileOptions, LinearOptions

    model, x = resolve_model(args.model, args.example, args.input_shape)
    t0 = time.perf_counter()
    bm = boundc.compile(model, x, method=args.method, options=CompileOptions(linear=LinearOptions(progress=True)))
    dt = time.perf_counter() - t0
    if args.emit_code:
        print(bm.code)
    print(bm.table())
    print(f"\ncompiled {len(bm.graph)} IR nodes with method {args.method!r} in {dt:.2f} s", flush=True)
    if x is None:
        x = torch.rand((2, *bm.input_shape), generator=torch.Generator().manual_seed(0))
    xl, xu = boundc.linf_box(x, args.eps)
    if args.method in SLOW_METHODS:
        note(f"bounding {x.shape[0]} demo inputs with {args.method!r} (slower than ibp; can take a minute on CPU)")
    t0 = time.perf_counter()
    with torch.no_grad():
        lower, upper = bm(xl, xu)
    dt = time.perf_counter() - t0
    clean = _clean_outputs(model, x)
    torch.set_printoptions(precision=4, linewidth=120)
    print(f"\nbounds on the outputs of a demo input (eps={args.eps}, {dt:.2f} s):")
    print(f"  clean : {clean[0]}\n  lower : {lower[0]}\n  upper : {upper[0]}")
    print(f"  mean width {float((upper - lower).mean()):.4f}")
    sys.stdout.flush()
    return 0
