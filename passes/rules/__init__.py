"""Run-time rule libraries: per-op functions (by domain) that the generated bound networks call."""

from . import concrete, interval  # noqa: F401  (registers the rules)
