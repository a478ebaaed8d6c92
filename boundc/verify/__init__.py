"""Applications of bound networks: verification of properties and attacks.

* :mod:`boundc.verify.verifier`: ``boundc verify`` (VNN-LIB properties of ONNX networks);
* :mod:`boundc.verify.milp`: complete verification of ReLU networks as a MILP;
* :mod:`boundc.verify.attacks`: projected gradient descent inside a box.
"""

from boundc.verify.attacks import interval_attack, pgd_box, pgd_linf
from boundc.verify.milp import MilpOptions, MilpVerifier, RowResult
from boundc.verify.verifier import VerifierModel, VerifyOptions, VerifyResult, resolve_method, verify

__all__ = ["MilpOptions", "MilpVerifier", "RowResult", "VerifierModel", "VerifyOptions", "VerifyResult",
           "interval_attack", "pgd_box", "pgd_linf", "resolve_method", "verify"]
