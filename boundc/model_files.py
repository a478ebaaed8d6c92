"""Models given by the user as ``path/to/file.py:factory`` (CLI, training), and a check that a model
accepts the inputs it will be given — so a wrong shape is one clear error, not a traceback from inside torch."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from boundc.errors import BoundcError


def is_factory_spec(spec: str) -> bool:
    """Whether ``spec`` looks like ``path/to/file.py:factory``."""
    path, _, name = spec.rpartition(":")
    return bool(path) and bool(name) and path.endswith(".py")


def load_factory(spec: str) -> torch.nn.Module:
    """Call ``factory`` from ``path/to/file.py:factory`` and return the model it builds."""
    path, _, name = spec.rpartition(":")
    if not path or not name:
        raise BoundcError(f"MODEL must look like path/to/file.py:factory_function, got {spec!r}")
    file = Path(path)
    if not file.is_file():
        raise BoundcError(f"no such file: {file} (from MODEL {spec!r})")
    mod_spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[file.stem] = module
    try:
        mod_spec.loader.exec_module(module)
    except SyntaxError as err:
        raise BoundcError(f"{file}, line {err.lineno}: syntax error: {err.msg}") from err
    factory = getattr(module, name, None)
    if not callable(factory):
        raise BoundcError(f"{file} has no callable {name!r}")
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise BoundcError(f"{spec} returned a {type(model).__name__}, not an nn.Module")
    return model


def check_model_input(model: torch.nn.Module, in_shape: tuple[int, ...], what: str,
                      num_classes: int | None = None) -> None:
    """Run ``model`` on a zero batch of shape ``(2, *in_shape)``; raise one :class:`BoundcError` naming
    ``what`` (the model and where its input shape comes from) if it fails or has the wrong number of outputs."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((2, *in_shape)))
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BoundcError(f"{what}: the model does not accept inputs of shape {tuple(in_shape)} "
                          f"(per example, without batch): {first}") from err
    finally:
        model.train(was)
    if num_classes is not None:
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != num_classes:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise BoundcError(f"{what}: the model's output has shape {shape} for a batch of 2; "
                              f"expected (2, {num_classes}) logits")
