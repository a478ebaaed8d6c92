"""boundc: compile neural networks into sound, differentiable bound networks.

>>> bm = boundc.compile(model, example_input, method="ibp")
>>> lower, upper = bm(*boundc.linf_box(x, eps=0.1, clip=(0, 1)))
"""

from boundc import methods_linear  # noqa: F401  (registers crown, fast-lin, crown-ibp, alpha-crown, forward)
from boundc import passes as _passes  # noqa: F401  (registers the rules)
from boundc.bound_module import BoundModule
from boundc.codegen import methods
from boundc.compiler import compile, lower
from boundc.errors import BoundcError, BoundcInternalError, UnsupportedOpError
from boundc.options import CompileOptions
from boundc.passes.rules.interval import Interval
from boundc.specs import linf_box, margin_spec

__all__ = ["BoundModule", "BoundcError", "BoundcInternalError", "CompileOptions", "Interval", "UnsupportedOpError", "compile",
           "linf_box", "lower", "margin_spec", "methods"]
__version__ = "0.1.0"
