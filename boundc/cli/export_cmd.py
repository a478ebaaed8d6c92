"""``boundc export``: write a compiled bound network as an ONNX certifier."""

from __future__ import annotations

import argparse

from boundc.cli.common import add_command, method_names, resolve_model
from boundc.cli.compile_cmd import add_model_arguments


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` sub-command."""
    p = add_command(sub, "export", help="export the bound network of a model as an ONNX certifier")
    add_model_arguments(p)
    p.add_argument("--method", default="ibp", choices=method_names(), help="bound method (see `boundc methods`)")
    p.add_argument("--spec", choices=["none", "C", "margin"], default="none",
                   help="extra certifier input: none (bounds on the logits), C (a spec matrix) or margin (labels)")
    p.add_argument("-o", "--output", default="certifier.onnx", help="output .onnx path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compile the model and export its certifier."""
    import boundc
    from boundc.export import export_onnx

    model, x = resolve_model(args.model, args.example, args.input_shape)
    bm = boundc.compile(model, x, method=args.method)
    export_onnx(bm, args.output, spec=None if args.spec == "none" else args.spec)
    print(f"wrote {args.output} (method {args.method}, spec {args.spec}, inputs x_lower, x_upper"
          f"{', C' if args.spec == 'C' else ', labels' if args.spec == 'margin' else ''}; outputs lower, upper)")
    return 0
