"""What every sub-command shares: argument types that validate at parse time, the help formatter,
the method choices (from :func:`boundc.methods`), model resolution, progress bars and notes on stderr."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from boundc.errors import BoundcError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default (``(default: …)``) and keeps the description's line breaks."""

    def _fill_text(self, text, width, indent):
        return "\n".join(indent + line for line in text.splitlines())

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (default is None or default is argparse.SUPPRESS or isinstance(default, bool) or default in ("", ())
                or "%(default)" in text or "(default" in text):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text + " (default: %(default)s)"
        return text


def add_command(sub: argparse._SubParsersAction, name: str, help: str, description: str | None = None,
                epilog: str | None = None) -> argparse.ArgumentParser:
    """A sub-command parser with the shared formatter and the ``--debug`` flag."""
    p = sub.add_parser(name, help=help, description=description or help, epilog=epilog,
                       formatter_class=HelpFormatter)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="on an error, show the full Python traceback")
    return p


# ---------------------------------------------------------------- argument types (validated at parse time)

def _number(kind: type, text: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}") from None
    return value


def _checked(kind: type, ok: Callable[[float], bool], must: str, doc: str) -> Callable[[str], int | float]:
    """An argparse type: a number of ``kind`` for which ``ok`` holds (else "must be ``must``")."""

    def parse(text: str) -> int | float:
        v = _number(kind, text)
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {must}, got {text}")
        return v

    parse.__doc__ = doc
    return parse


positive_int = _checked(int, lambda v: v >= 1, "at least 1", "An integer ≥ 1.")
nonneg_int = _checked(int, lambda v: v >= 0, "0 or more", "An integer ≥ 0.")
nonneg_float = _checked(float, lambda v: v >= 0, "0 or more", "A finite number ≥ 0.")
positive_float = _checked(float, lambda v: v > 0, "greater than 0", "A finite number > 0.")
unit_float = _checked(float, lambda v: 0.0 <= v <= 1.0, "between 0 and 1", "A number in [0, 1].")


def any_int(text: str) -> int:
    """Any integer (e.g. a seed)."""
    return _number(int, text)


def input_shape(text: str) -> tuple[int, ...]:
    """A per-example input shape: ``1,28,28`` or ``1x28x28``."""
    parts = [p for p in text.replace("x", ",").replace("X", ",").split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 1,28,28 or 1x28x28, got {text!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"sizes must be at least 1, got {text!r}") from None
    return shape


def existing_file(text: str) -> str:
    """A path to an existing file."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}" if not Path(text).exists() else f"not a file: {text}")
    return text


def method_names() -> list[str]:
    """The registered bound methods: the one source of every sub-command's method choices."""
    import boundc

    return boundc.methods()


def method_list(allow_empty: bool = False):
    """Type of a comma-separated list of registered bound methods."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(m.strip() for m in text.split(",") if m.strip())
        available = method_names()
        bad = [m for m in names if m not in available]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown method {bad[0]!r}; choose from {', '.join(available)} "
                                             "(see `boundc methods`)")
        if not names and not allow_empty:
            raise argparse.ArgumentTypeError("give at least one method")
        return names

    parse.__name__ = "method list"
    return parse


# ---------------------------------------------------------------- models

def resolve_model(spec: str | None, example: str | None, shape: tuple[int, ...] | None):
    """``(model, example input)`` from ``file.py:factory`` (+ ``--input-shape``), ``--example NAME`` or an
    ``.onnx`` path (input None: the ONNX file declares its shape).  Torch models are checked on the input shape."""
    import torch

    from boundc import examples
    from boundc.model_files import check_model_input, load_factory

    if example and spec:
        raise BoundcError(f"give either MODEL ({spec}) or --example {example}, not both")
    gen = torch.Generator().manual_seed(0)
    if example:
        model = examples.build(example).eval()
        shape = shape or (1, 28, 28)
        check_model_input(model, shape, f"--example {example}")
        return model, torch.rand((2, *shape), generator=gen)
    if spec is None:
        raise BoundcError("give a MODEL (file.py:factory or model.onnx) or --example NAME")
    if spec.endswith(".onnx"):
        if not Path(spec).is_file():
            raise BoundcError(f"no such file: {spec}")
        if shape is not None:
            note("--input-shape is ignored for an ONNX model (the file declares its input shape)")
        return spec, None
    if not spec.rpartition(":")[0]:
        raise BoundcError(f"MODEL must be path/to/file.py:factory_function or model.onnx, got {spec!r}")
    model = load_factory(spec).eval()
    if shape is None:
        raise BoundcError(f"--input-shape C,H,W (per example, without batch) is needed for the torch model {spec}")
    check_model_input(model, shape, f"{spec} with --input-shape {','.join(map(str, shape))}")
    return model, torch.rand((2, *shape), generator=gen)


# ---------------------------------------------------------------- output

def note(message: str) -> None:
    """An informational line on stderr (``boundc: …``), kept out of stdout's results."""
    print(f"boundc: {message}", file=sys.stderr, flush=True)


def progress(iterable: Iterable | None = None, enabled: bool = True, **kw):
    """A tqdm bar that draws only on a terminal (``disable=None``) and never when ``enabled`` is False."""
    from tqdm import tqdm

    return tqdm(iterable, disable=None if enabled else True, dynamic_ncols=True, **kw)


def display_path(path: str | os.PathLike) -> str:
    """``path`` relative to the current directory when it is below it."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)
