"""Graph → Graph passes and the per-op bound rules (imported here to register them)."""

from . import concrete, interval  # noqa: F401
