"""VNN-LIB reader: boxes, disjunctions, linear expressions, gz, errors with line numbers."""

from __future__ import annotations

import gzip

import pytest
import torch
from boundc.frontends.vnnlib import VnnlibError, parse_vnnlib, read_vnnlib
from conftest import shared_path

HEAD = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
BOX = "(assert (>= X_0 -1))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n(assert (<= X_1 0.5))\n"


def test_box_and_disjunction():
    n_in, n_out, specs = parse_vnnlib(HEAD + BOX + "(assert (or (and (>= Y_0 Y_1)) (and (<= Y_0 -3))))")
    assert (n_in, n_out, len(specs)) == (2, 2, 1)
    lo, hi, dis = specs[0]
    assert lo.tolist() == [-1, 0] and hi.tolist() == [1, 0.5]
    assert [C.tolist() for C, _ in dis] == [[[-1.0, 1.0]], [[1.0, 0.0]]]
    assert [d.tolist() for _, d in dis] == [[0.0], [-3.0]]


def test_linear_expressions_and_conjunction():
    text = HEAD + BOX + "(assert (<= (+ (* 2 Y_0) (- Y_1) 1) (* 0.5 3)))\n(assert (> Y_1 2))"
    _, _, specs = parse_vnnlib(text)
    (C, d), = specs[0].disjuncts
    assert C.tolist() == [[2.0, -1.0], [0.0, -1.0]] and d.tolist() == [0.5, -2.0]


def test_input_disjunction_makes_several_boxes():
    text = HEAD + "(assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1))" \
                  " (and (>= X_0 2) (<= X_0 3) (>= X_1 0) (<= X_1 1))))\n(assert (<= Y_0 Y_1))"
    _, _, specs = parse_vnnlib(text)
    assert [s.lower[0].item() for s in specs] == [0.0, 2.0]


def test_syntax_error_names_line():
    with pytest.raises(VnnlibError, match=r":7: '\(' is never closed"):
        parse_vnnlib(HEAD + "\n\n(assert (<= X_0 1)")
    with pytest.raises(VnnlibError, match=r":5: unknown variable or bad number 'Z_3'"):
        parse_vnnlib(HEAD + "(assert (<= Z_3 1))")
    with pytest.raises(VnnlibError, match=r":5: unsupported operator 'xor'"):
        parse_vnnlib(HEAD + "(assert (xor (<= X_0 1)))")


def test_unbounded_input_is_an_error():
    with pytest.raises(VnnlibError, match="X_1 has no finite"):
        parse_vnnlib(HEAD + "(assert (>= X_0 -1))\n(assert (<= X_0 1))\n(assert (<= Y_0 0))")


def test_gz_and_fallback(tmp_path):
    p = tmp_path / "p.vnnlib.gz"
    with gzip.open(p, "wt") as fh:
        fh.write(HEAD + BOX + "(assert (<= Y_0 Y_1))")
    assert read_vnnlib(p)[0] == 2
    assert read_vnnlib(tmp_path / "p.vnnlib")[0] == 2  # X.vnnlib -> X.vnnlib.gz


def test_acasxu_and_robustness_files():
    _, _, specs = read_vnnlib(shared_path("vnncomp", "acasxu", "prop_6.vnnlib"))
    assert len(specs) == 2 and len(specs[0].disjuncts) == 4
    n_in, n_out, specs = read_vnnlib(shared_path("vnncomp", "mnistfc", "prop_0_0.03.vnnlib"))
    assert (n_in, n_out, len(specs[0].disjuncts)) == (784, 10, 9)
    assert torch.all(specs[0].lower <= specs[0].upper)
