"""The compiler's passes, in two kinds.

* :mod:`boundc.passes.graph` — compile-time Graph → Graph rewrites and analyses
  (canonicalise, perturbation analysis, spec attachment, fusion, planning).
* :mod:`boundc.passes.rules` — run-time rule libraries and drivers: the per-op
  functions the generated bound networks call (concrete, interval, backward,
  forward), the activation relaxations and the rule registry.
"""

from .rules import concrete, interval  # noqa: F401  (registers the rules)
