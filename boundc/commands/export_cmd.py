"""``boundc export``: write a compiled bound network as an ONNX certifier."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` sub-command."""
    p = sub.add_parser("export", help="export the bound network of a model as an ONNX certifier")
    p.add_argument("model", help="model.onnx or path/to/file.py:factory_function")
    p.add_argument("--input-shape", help="per-example input shape for a torch model, e.g. 1,28,28")
    p.add_argument("--method", default="ibp", help="bound method (default: ibp)")
    p.add_argument("--spec", choices=["none", "C", "margin"], default="none",
                   help="extra input: none (logit bounds), C (spec matrix) or margin (labels)")
    p.add_argument("-o", "--output", required=True, help="output .onnx path")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compile the model and export its certifier."""
    import boundc
    from boundc.commands.compile_cmd import resolve_model
    from boundc.export import export_onnx

    model, x = resolve_model(args.model, None, args.input_shape)
    bm = boundc.compile(model, x, method=args.method)
    export_onnx(bm, args.output, spec=None if args.spec == "none" else args.spec)
    print(f"wrote {args.output} (method {args.method}, spec {args.spec}, inputs x_lower, x_upper"
          f"{', C' if args.spec == 'C' else ', labels' if args.spec == 'margin' else ''}; outputs lower, upper)")
    return 0
