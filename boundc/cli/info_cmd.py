"""``boundc methods`` and ``boundc ops``: what this build can bound, read from the registries at run time."""

from __future__ import annotations

import argparse

from boundc.cli.common import add_command

#: One-line descriptions of the methods boundc ships (a method registered without one is listed bare).
DESCRIPTIONS = {
    "ibp": "interval bound propagation (Gowal et al.)",
    "crown": "backward linear relaxation, adaptive slopes; intermediate bounds by CROWN",
    "fast-lin": "backward linear relaxation with fixed slopes u/(u-l) (Wong-Kolter dual network)",
    "crown-ibp": "CROWN for the output/spec, intermediate bounds from IBP",
    "forward": "forward symbolic linear bounds (MixTrain's symbolic intervals)",
    "alpha-crown": "CROWN with the lower slopes of unstable ReLUs optimised by gradient steps (tightest, slowest)",
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``methods`` and ``ops`` sub-commands."""
    p = add_command(sub, "methods", help="list the registered bound methods (accepted by every --method)")
    p.set_defaults(func=run_methods)
    p = add_command(sub, "ops", help="list the torch (ATen) and ONNX ops the frontends lower, and the IR ops")
    p.add_argument("--frontend", choices=("all", "torch", "onnx", "ir"), default="all", help="which list to print")
    p.set_defaults(func=run_ops)


def run_methods(args: argparse.Namespace) -> int:
    """Print one line per registered method."""
    import boundc

    names = boundc.methods()
    w = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{w}}  {DESCRIPTIONS.get(name, '')}".rstrip())
    return 0


def _lowered(module) -> list[str]:
    fn = getattr(module, "supported_ops", None)
    return sorted(fn()) if callable(fn) else sorted(module._LOWERINGS)


def supported_ops() -> dict[str, list[str]]:
    """Op names by frontend, read at run time from the frontends' lowering tables (and the IR vocabulary)."""
    import importlib

    from boundc.frontends import onnx as _onnx  # noqa: F401  (importing it registers the ONNX lowerings)
    from boundc.frontends import torch_export
    from boundc.passes.rules.ops import OPS

    try:
        onnx_table = importlib.import_module("boundc.frontends.onnx_lowering")
    except ImportError:
        onnx_table = _onnx
    return {"torch": _lowered(torch_export), "onnx": _lowered(onnx_table), "ir": sorted(OPS)}


def run_ops(args: argparse.Namespace) -> int:
    """Print the op lists."""
    import textwrap

    titles = {"torch": "torch ops (ATen names, via torch.export)", "onnx": "ONNX ops",
              "ir": "IR ops (what both frontends lower to)"}
    for key, names in supported_ops().items():
        if args.frontend not in ("all", key):
            continue
        print(f"{titles[key]}: {len(names)}")
        print(textwrap.fill(", ".join(names), width=100, initial_indent="  ", subsequent_indent="  "))
    return 0
