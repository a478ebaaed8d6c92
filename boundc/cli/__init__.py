"""The ``boundc`` command line (also ``python -m boundc``).

Each sub-command lives in its own module of this package that defines ``register(subparsers)``;
the parser it adds sets ``func`` to the function that runs it.  Errors from user input
(:class:`~boundc.errors.BoundcError`, ``OSError``, ``ValueError``) are printed as one line
``boundc CMD: error: …`` with exit status 2; anything else is an internal error (exit status 1).
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
import warnings

from boundc.cli.common import HelpFormatter
from boundc.runtime import tune_allocator

COMMAND_MODULES = [
    "boundc.cli.compile_cmd",
    "boundc.cli.verify_cmd",
    "boundc.cli.export_cmd",
    "boundc.cli.train_cmd",
    "boundc.cli.evaluate_cmd",
    "boundc.cli.demo_cmd",
    "boundc.cli.info_cmd",
]

EPILOG = """\
examples:
  boundc demo                                   train + certify + export on the built-in digits
  boundc compile --example small --emit-code    show a bound network
  boundc methods                                list the bound methods
  boundc COMMAND --help                         options of one command (with defaults)"""


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The full argument parser and the parser of each sub-command by name."""
    import boundc

    parser = argparse.ArgumentParser(prog="boundc", description="Compile networks into sound bound networks.",
                                     epilog=EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"boundc {boundc.__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full Python traceback")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser, dict(sub.choices)


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.strerror}: {err.filename}"
    text = str(err).strip() or type(err).__name__
    return text


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``boundc`` script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, commands = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:   # report unknown flags with the sub-command's usage, not the top-level one
            commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as stop:   # --help, --version, usage errors (status 2)
        return int(stop.code or 0) if not isinstance(stop.code, str) else 2
    args.argv = argv
    cmd = f"boundc {args.command}"
    debug = bool(getattr(args, "debug", False))

    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"{cmd}: warning: {message}", file=sys.stderr, flush=True)

    tune_allocator()
    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print(f"{cmd}: interrupted", file=sys.stderr)
            return 130
        except (ValueError, OSError) as err:   # BoundcError is a ValueError: bad input, named in the message
            if debug:
                traceback.print_exc()
            print(f"{cmd}: error: {_one_line(err)}", file=sys.stderr)
            return 2
        except Exception as err:  # noqa: BLE001  the top level: no traceback unless --debug
            if debug:
                traceback.print_exc()
            first = (str(err).strip().splitlines() or [""])[0]
            print(f"{cmd}: internal error: {type(err).__name__}: {first} — this is a bug in boundc; "
                  "run again with --debug for the traceback and report it", file=sys.stderr)
            return 1
