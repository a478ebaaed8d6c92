"""Applications of bound networks: verification of properties and attacks.

* :mod:`boundc.verify.verifier`: ``boundc verify`` (VNN-LIB properties of ONNX networks);
* :mod:`boundc.verify.milp`: complete verification of ReLU networks as a MILP;
* :mod:`boundc.verify.attacks`: projected gradient descent inside a box;
* :mod:`boundc.verify.cascade`: verdicts and the cascade of stages both verification flows use.
"""

from boundc.verify.attacks import PgdResult, interval_attack, pgd, pgd_box, pgd_linf
from boundc.verify.cascade import CascadeResult, Stage, Verdict, run_cascade
from boundc.verify.milp import MilpOptions, MilpVerifier, RowResult
from boundc.verify.verifier import Precision, VerifierModel, VerifyOptions, VerifyResult, resolve_method, verify

__all__ = ["CascadeResult", "MilpOptions", "MilpVerifier", "PgdResult", "Precision", "RowResult", "Stage", "Verdict",
           "VerifierModel", "VerifyOptions", "VerifyResult", "interval_attack", "pgd", "pgd_box", "pgd_linf",
           "resolve_method", "run_cascade", "verify"]
