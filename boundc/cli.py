"""The ``boundc`` command line.

Each sub-command lives in its own module that defines ``register(subparsers)``;
the parser it adds sets ``func`` to the function that runs it.  Modules are
listed in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from boundc.errors import BoundcError

COMMAND_MODULES = [
    "boundc.commands.compile_cmd",
    "boundc.commands.verify_cmd",
    "boundc.commands.export_cmd",
    "boundc.commands.train_cmd",
    "boundc.commands.evaluate_cmd",
    "boundc.commands.demo_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every registered sub-command."""
    parser = argparse.ArgumentParser(prog="boundc", description="Compile networks into sound bound networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``boundc`` script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BoundcError as err:
        print(f"boundc: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("boundc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
