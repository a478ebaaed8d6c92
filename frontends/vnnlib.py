"""VNN-LIB property reader (the subset VNN-COMP uses).

Supported: ``(declare-const X_i Real)`` / ``(declare-const Y_j Real)``,
``(assert F)`` where ``F`` is built from ``and``, ``or`` and comparisons
``<=``, ``>=``, ``<``, ``>``, ``=`` between linear expressions (numbers,
variables, ``+``, ``-``, ``*`` by a constant).  Files ending in ``.gz`` are read
directly (and ``X.vnnlib`` falls back to ``X.vnnlib.gz`` when absent).

Representation.  A VNN-LIB file describes the *unsafe* set: the conjunction of
all asserts, brought to disjunctive normal form.  :func:`read_vnnlib` returns a
list of :class:`Spec` ``(lower, upper, disjuncts)``: an input box and a list of
``(C, d)`` pairs, ``C`` of shape (S, K) over the K outputs and ``d`` of shape
(S,).  The unsafe set is

    ⋃_spec { x ∈ [lower, upper] : ∃ (C, d) ∈ spec.disjuncts with C·f(x) <= d (every row) }

so the property holds (``unsat``) iff for every spec and every disjunct some
row ``i`` has ``min_x (C·f(x))_i > d_i``.  Strict comparisons are read as
non-strict (a superset of the unsafe set: sound for proofs).  Input atoms must
bound single ``X`` variables; atoms over outputs may be any linear expression
of the ``Y`` variables (constraints mixing X and Y are rejected).
"""

from __future__ import annotations

import gzip
import os
import re
import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from boundc.errors import BoundcError

#: Largest DNF (number of conjunctive clauses) the reader expands.
MAX_CLAUSES = 100_000

_TOKEN = re.compile(r"\(|\)|[^\s()]+")
_VAR = re.compile(r"^([XY])_(\d+)$")


class VnnlibError(BoundcError):
    """A VNN-LIB file that cannot be read; the message names the file and line."""


class Spec(NamedTuple):
    """One input box with the disjunction of output sets that are unsafe on it."""

    lower: Tensor
    upper: Tensor
    disjuncts: list[tuple[Tensor, Tensor]]


class _Tok(str):
    """A token that remembers its line."""

    line: int

    def __new__(cls, text: str, line: int) -> _Tok:
        t = super().__new__(cls, text)
        t.line = line
        return t


def read_text(path: str | os.PathLike) -> str:
    """The text of a ``.vnnlib`` or ``.vnnlib.gz`` file (``X`` falls back to ``X.gz``)."""
    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(path + ".gz"):
        path += ".gz"
    if not os.path.exists(path):
        raise VnnlibError(f"no such VNN-LIB file: {path}")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as err:
        raise VnnlibError(f"{path}: cannot read: {err}") from err


def _parse_sexprs(text: str, where: str) -> list:
    """Nested lists of tokens; unbalanced parentheses name their line."""
    stack: list[list] = [[]]
    opened: list[int] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split(";", 1)[0]
        for m in _TOKEN.finditer(line):
            tok = m.group()
            if tok == "(":
                stack.append([])
                opened.append(lineno)
                stack[-1].append(lineno)  # the first element of each list is its line number
            elif tok == ")":
                if len(stack) == 1:
                    raise VnnlibError(f"{where}:{lineno}: unexpected ')'")
                done = stack.pop()
                opened.pop()
                stack[-1].append(done)
            else:
                stack[-1].append(_Tok(tok, lineno))
    if len(stack) > 1:
        raise VnnlibError(f"{where}:{opened[-1]}: '(' is never closed")
    return stack[0]


class _Reader:
    """Turns parsed s-expressions into DNF clauses of linear atoms."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.vars: dict[str, tuple[str, int]] = {}

    def fail(self, line: int, msg: str) -> VnnlibError:
        return VnnlibError(f"{self.where}:{line}: {msg}")

    def linear(self, e, line: int) -> tuple[dict[tuple[str, int], float], float]:
        """A linear expression as (coefficients, constant)."""
        if isinstance(e, list):
            line, head, args = e[0], e[1] if len(e) > 1 else None, e[2:]
            if head not in ("+", "-", "*"):
                raise self.fail(line, f"expected a linear expression, got '({head} ...)'")
            terms = [self.linear(a, line) for a in args]
            if not terms:
                raise self.fail(line, f"'{head}' needs arguments")
            if head == "*":
                coef, const = {}, 1.0
                for c, k in terms:
                    if c and coef:
                        raise self.fail(line, "product of two variables is not linear")
                    if c:
                        coef = {v: a * const for v, a in c.items()}
                        const = k * const
                    else:
                        coef = {v: a * k for v, a in coef.items()}
                        const *= k
                return coef, const
            sign = -1.0 if head == "-" else 1.0
            if head == "-" and len(terms) == 1:
                c, k = terms[0]
                return {v: -a for v, a in c.items()}, -k
            coef, const = dict(terms[0][0]), terms[0][1]
            for c, k in terms[1:]:
                for v, a in c.items():
                    coef[v] = coef.get(v, 0.0) + sign * a
                const += sign * k
            return coef, const
        if e in self.vars:
            return {self.vars[e]: 1.0}, 0.0
        try:
            return {}, float(e)
        except ValueError:
            raise self.fail(e.line, f"unknown variable or bad number '{e}'") from None

    def formula(self, e, line: int) -> list[list]:
        """DNF of a formula: a list of clauses, each a list of atoms (coef, const) meaning ``coef·v + const <= 0``."""
        if not isinstance(e, list) or len(e) < 2:
            raise self.fail(getattr(e, "line", line), f"expected a formula, got '{e}'")
        line, head, args = e[0], e[1], e[2:]
        if head == "and":
            dnf: list[list] = [[]]
            for a in args:
                sub = self.formula(a, line)
                dnf = [c1 + c2 for c1 in dnf for c2 in sub]
                if len(dnf) > MAX_CLAUSES:
                    raise self.fail(line, f"the formula expands to more than {MAX_CLAUSES} cases")
            return dnf
        if head == "or":
            return [c for a in args for c in self.formula(a, line)]
        if head in ("<=", ">=", "<", ">", "="):
            if len(args) != 2:
                raise self.fail(line, f"'{head}' needs two arguments, got {len(args)}")
            (ca, ka), (cb, kb) = self.linear(args[0], line), self.linear(args[1], line)
            diff = {v: ca.get(v, 0.0) - cb.get(v, 0.0) for v in set(ca) | set(cb)}
            le = (diff, ka - kb)  # a - b <= 0
            ge = ({v: -a for v, a in diff.items()}, kb - ka)
            if head in ("<=", "<"):
                return [[le]]
            if head in (">=", ">"):
                return [[ge]]
            return [[le, ge]]
        raise self.fail(line, f"unsupported operator '{head}' (expected and, or, <=, >=, <, >, =)")


def parse_vnnlib(text: str, where: str = "<vnnlib>") -> tuple[int, int, list[Spec]]:
    """Parse VNN-LIB text: ``(num_inputs, num_outputs, specs)`` (see the module docstring)."""
    rd = _Reader(where)
    asserts = []
    for e in _parse_sexprs(text, where):
        if not isinstance(e, list):
            raise rd.fail(e.line, f"unexpected token '{e}' outside parentheses")
        line = e[0]
        if len(e) < 2:
            raise rd.fail(line, "empty expression '()'")
        if e[1] == "declare-const":
            if len(e) != 4 or isinstance(e[2], list) or e[3] != "Real":
                raise rd.fail(line, "expected (declare-const NAME Real)")
            m = _VAR.match(e[2])
            if not m:
                raise rd.fail(line, f"variable '{e[2]}' must be named X_i (input) or Y_i (output)")
            rd.vars[str(e[2])] = (m.group(1), int(m.group(2)))
        elif e[1] == "assert":
            if len(e) != 3:
                raise rd.fail(line, "expected (assert FORMULA)")
            asserts.append(e[2])
        else:
            raise rd.fail(line, f"unsupported command '{e[1]}' (expected declare-const or assert)")
    n_in = _count(rd, "X")
    n_out = _count(rd, "Y")
    if n_in == 0 or n_out == 0:
        raise VnnlibError(f"{where}: no {'X' if n_in == 0 else 'Y'}_i variables declared")
    base: list = []
    dnf: list[list] = [[]]
    for a in asserts:
        sub = rd.formula(a, a[0] if isinstance(a, list) else 0)
        if len(sub) == 1:
            base += sub[0]
        else:
            dnf = [c1 + c2 for c1 in dnf for c2 in sub]
            if len(dnf) > MAX_CLAUSES:
                raise VnnlibError(f"{where}: the property expands to more than {MAX_CLAUSES} cases")
    return n_in, n_out, _group(rd, [base + c for c in dnf], n_in, n_out)


def _count(rd: _Reader, kind: str) -> int:
    idx = sorted(i for k, i in rd.vars.values() if k == kind)
    if idx != list(range(len(idx))):
        raise VnnlibError(f"{rd.where}: {kind} variables must be numbered 0..n-1 without gaps")
    return len(idx)


def _group(rd: _Reader, clauses: list[list], n_in: int, n_out: int) -> list[Spec]:
    """Split each clause into its input box and output rows; group clauses by box."""
    boxes: dict[tuple, list[tuple[Tensor, Tensor]]] = {}
    for clause in clauses:
        lo = [float("-inf")] * n_in
        hi = [float("inf")] * n_in
        rows, rhs = [], []
        for coef, const in clause:
            coef = {v: a for v, a in coef.items() if a != 0.0}
            kinds = {k for k, _ in coef}
            if not coef:
                if const > 0:  # a false atom (e.g. 1 <= 0): the clause is empty
                    break
                continue
            if kinds == {"X"}:
                if len(coef) != 1:
                    raise VnnlibError(f"{rd.where}: linear constraints over several inputs are not supported")
                ((_, i), a), = coef.items()
                bound = -const / a
                if a > 0:
                    hi[i] = min(hi[i], bound)
                else:
                    lo[i] = max(lo[i], bound)
            elif kinds == {"Y"}:
                row = [0.0] * n_out
                for (_, j), a in coef.items():
                    row[j] = a
                rows.append(row)
                rhs.append(-const)
            else:
                raise VnnlibError(f"{rd.where}: constraints mixing inputs and outputs are not supported")
        else:
            missing = [i for i in range(n_in) if lo[i] == float("-inf") or hi[i] == float("inf")]
            if missing:
                raise VnnlibError(f"{rd.where}: input X_{missing[0]} has no finite lower and upper bound "
                                  f"({len(missing)} unbounded input(s))")
            empty = [i for i, (a, b) in enumerate(zip(lo, hi)) if a > b]
            if empty:  # empty box: nothing unsafe here, but almost surely a mistake in the property
                i = empty[0]
                warnings.warn(f"{rd.where}: the input box of a case is empty (X_{i} >= {lo[i]:g} and X_{i} <= {hi[i]:g}"
                              f"{f', and {len(empty) - 1} more input(s)' if len(empty) > 1 else ''}); that case "
                              "cannot be violated and is skipped", stacklevel=2)
                continue
            C = torch.tensor(rows, dtype=torch.float64).reshape(len(rows), n_out)
            d = torch.tensor(rhs, dtype=torch.float64)
            boxes.setdefault((tuple(lo), tuple(hi)), []).append((C, d))
    return [Spec(torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64), dis)
            for (lo, hi), dis in boxes.items()]


def read_vnnlib(path: str | os.PathLike) -> tuple[int, int, list[Spec]]:
    """Read a ``.vnnlib`` / ``.vnnlib.gz`` file: ``(num_inputs, num_outputs, specs)``."""
    return parse_vnnlib(read_text(path), os.fspath(path))
