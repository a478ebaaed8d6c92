"""``boundc verify``: decide VNN-LIB properties of ONNX networks.

For each input box of the property (see :mod:`boundc.frontends.vnnlib`):

1. an attack (PGD with restarts, inside the box) looks for an input whose
   output satisfies one of the unsafe disjuncts ``C·y <= d``; a candidate is
   *confirmed* in onnxruntime before ``sat`` is answered;
2. the bound network (``method``, evaluated in ``precision``: float64 by default)
   bounds ``C·y`` over the box; a disjunct is excluded when some row's lower
   bound exceeds ``d``;
3. boxes that are not settled are bisected (input splitting, for low-dimensional
   inputs such as ACAS Xu) along the input that moves their lower bound most, in
   batches, until every disjunct of every sub-box is excluded (``unsat``), a sub-box
   centre or bound-minimising corner is a confirmed counterexample (``sat``), the
   deadline passes or the queue exceeds ``max_boxes`` (``unknown``);
4. a box too large to split goes to tiled MILP bounds first when the network has one
   hidden convolutional ReLU layer (:mod:`boundc.verify.tiles`), then to branch and
   bound on activation splits (:mod:`boundc.verify.bab`), then, with ``complete``, to
   the exact MILP of :mod:`boundc.verify.milp` (one problem per open disjunct, within
   the remaining time); its counterexamples are confirmed in onnxruntime like the attack's.

Steps 1 and 2-4 are the two stages of a :mod:`boundc.verify.cascade` over the
property's input boxes.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

import boundc
from boundc.errors import BoundcError, DeadlineExceeded
from boundc.frontends.vnnlib import Spec, read_vnnlib
from boundc.options import CompileOptions, LinearOptions
from boundc.passes.graph.analysis import evaluate
from boundc.passes.rules.engine import deadline as deadline_of_bounds
from boundc.verify.attacks import pgd
from boundc.verify.bab import BabOptions, SpecBounds, branch_and_bound, cast_graph
from boundc.verify.cascade import Stage, Verdict, run_cascade
from boundc.verify.milp import MilpOptions
from boundc.verify.tiles import OneLayerForm, tile_bound

#: The bound method :func:`verify` and ``boundc verify`` use unless told otherwise: the tightest boundc has.
DEFAULT_METHOD = "alpha-crown"

#: How far outside the input box a counterexample may lie (VNN-COMP's ``COUNTEREXAMPLE_ATOL``).
CEX_INPUT_ATOL = 1e-4


class Precision(str, Enum):
    """The dtype the bound network runs in.  float32 bounds get a safety margin (and are looser)."""

    FLOAT64 = "float64"
    FLOAT32 = "float32"

    def __str__(self) -> str:
        return self.value

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype."""
        return torch.float64 if self is Precision.FLOAT64 else torch.float32


@dataclass
class VerifyOptions:
    """Knobs of :func:`verify`.

    Attributes:
        method: bound method (``ibp``, ``crown-ibp``, ``crown``, ``alpha-crown``: :data:`DEFAULT_METHOD`).
        timeout: seconds for the whole property.
        restarts, steps: PGD restarts and steps per box.
        max_split_dim: bisect inputs only when the input has at most this many entries.
        batch: sub-boxes bounded per call.
        max_boxes: queue limit (memory bound); beyond it the answer is ``unknown``.
        seed: RNG seed of the attack.
        complete: decide boxes that cannot be split with the MILP (ReLU networks).
        tile_share: on networks with one hidden convolutional ReLU layer, the share of the time left
            that tiled MILP bounds (:mod:`boundc.verify.tiles`) may spend before branch and bound
            (0: never).
        precision: ``float64`` (default) or ``float32`` (a string is accepted); the
            result reports it.
    """

    method: str = DEFAULT_METHOD
    timeout: float = 60.0
    restarts: int = 5
    steps: int = 40
    max_split_dim: int = 64
    batch: int = 512
    max_boxes: int = 200_000
    seed: int = 0
    device: str = "cpu"
    bab: bool = True
    bab_options: BabOptions = field(default_factory=BabOptions)
    complete: bool = False
    tile_share: float = 0.8
    precision: Precision = Precision.FLOAT64

    def __post_init__(self) -> None:
        try:
            self.precision = Precision(self.precision)
        except ValueError:
            raise BoundcError(f"precision must be one of {[p.value for p in Precision]}, "
                              f"got {self.precision!r}") from None


@dataclass
class VerifyResult:
    """Outcome of one property.

    ``verdict`` is a :class:`~boundc.verify.cascade.Verdict`; ``status`` is its
    VNN-COMP word (``unsat`` = verified, ``sat`` = counterexample, ``unknown``).
    """

    verdict: Verdict
    time: float
    counterexample: tuple[np.ndarray, np.ndarray] | None = None
    detail: str = ""
    boxes: int = 0
    method: str = ""
    precision: Precision = Precision.FLOAT64

    @property
    def status(self) -> str:
        """``unsat``, ``sat`` or ``unknown``."""
        return self.verdict.vnncomp

    def vnncomp(self) -> str:
        """The VNN-COMP result text (``sat`` lists ``((X_0 v) ... (Y_0 v) ...)``)."""
        if self.verdict is not Verdict.FALSIFIED or self.counterexample is None:
            return self.status + "\n"
        x, y = self.counterexample
        items = [f"(X_{i} {float(v)!r})" for i, v in enumerate(x.reshape(-1))]
        items += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(y.reshape(-1))]
        return "sat\n(" + "\n ".join(items) + ")\n"


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device (``"auto"``: CUDA when available); a clear error when it is not there."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise BoundcError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BoundcError(f"device {device!r} asked for, but this torch build sees no CUDA device")
    return dev


def resolve_method(method: str) -> str:
    """``method`` if registered, else a :class:`~boundc.errors.BoundcError` listing the methods."""
    available = boundc.methods()
    if method in available:
        return method
    raise BoundcError(f"unknown bound method {method!r}; available: {', '.join(available)}")


@dataclass
class VerifierModel:
    """An ONNX model compiled once for verification: bound net, concrete graph, onnxruntime session.

    ``precision`` (a :class:`Precision` or its name) is the dtype the bound network runs in;
    ``device`` where it runs (``"cpu"``, ``"cuda"``, ``"auto"``: CUDA when available).  Attacks
    and the concrete forward run on the CPU.
    """

    path: str
    method: str
    precision: Precision = Precision.FLOAT64
    device: str | torch.device = "cpu"
    bm: boundc.BoundModule = field(init=False)

    def __post_init__(self) -> None:
        import onnxruntime as ort

        self.precision = VerifyOptions(precision=self.precision).precision
        self.method = resolve_method(self.method)
        # the cascade reads only lower bounds of the property's rows (node bounds meet IBP's, so the
        # output's skipped upper side is IBP's there)
        self.bm = boundc.compile(self.path, method=self.method,
                                 options=CompileOptions(linear=LinearOptions(output_upper=False))).eval()
        self.graph = self.bm.graph
        self.input_shape = tuple(self.bm.input_shape)
        self.num_inputs = int(np.prod(self.input_shape))
        self.num_outputs = int(np.prod(self.bm.output_shape)) if self.bm.output_shape else 1
        self.device = resolve_device(self.device)
        dtype = self.precision.dtype
        bound_net = copy.deepcopy(self.bm)
        bound_net.graph = cast_graph(self.graph, dtype, self.device)  # the IBP walk of intersect_node_bounds
        self.bound_net = bound_net.to(dtype=dtype, device=self.device)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        # every graph input with its shape (symbolic dimensions such as a batch read 1); VNN-LIB's X_i run
        # over the inputs flattened and concatenated in this order, as the frontend lowers them
        self.ort_inputs = [(i.name, [d if isinstance(d, int) and d > 0 else 1 for d in i.shape])
                           for i in self.sess.get_inputs()]
        sizes = [int(np.prod(s)) for _, s in self.ort_inputs]
        if sum(sizes) != self.num_inputs:
            if len(sizes) != 1:
                raise BoundcError(f"{self.path}: the inputs' sizes {sizes} do not add up to the {self.num_inputs} "
                                  "inputs boundc lowered")
            self.ort_inputs = [(self.ort_inputs[0][0], [1, *self.input_shape])]
        self.milp = None  # the MILP encoding, built on first use (VerifyOptions.complete)
        self._tile_form: OneLayerForm | None | bool = False  # False: not looked at yet
        self._spec_bounds: SpecBounds | None | BoundcError = None

    def spec_bounds(self) -> SpecBounds | None:
        """The β-CROWN bound program of branch and bound, built on first use (``None``: the network has no
        rule for it)."""
        if self._spec_bounds is None:
            try:
                self._spec_bounds = SpecBounds(self.graph, self.precision.dtype, self.device)
            except BoundcError as err:
                self._spec_bounds = err
        return None if isinstance(self._spec_bounds, BoundcError) else self._spec_bounds

    def tile_form(self) -> OneLayerForm | None:
        """The network as one hidden convolutional ReLU layer between affine maps (:mod:`.tiles`), built on
        first use; ``None`` when it is not of that form."""
        if self._tile_form is False:
            self._tile_form = OneLayerForm.of(self.graph)
        return self._tile_form

    def check_property(self, n_in: int, n_out: int, where: str) -> None:
        """One clear error when the property's variable counts do not match the model."""
        if n_in != self.num_inputs or n_out != self.num_outputs:
            raise BoundcError(f"{where} declares {n_in} inputs / {n_out} outputs but {self.path} has "
                              f"{self.num_inputs} inputs (shape {list(self.input_shape)}) / {self.num_outputs} outputs")

    def forward(self, x: Tensor) -> Tensor:
        """Concrete outputs (B, K) for flat inputs (B, n), differentiable (float32)."""
        xs = x.to(torch.get_default_dtype()).reshape(-1, *self.input_shape)
        return evaluate(self.graph, xs)[self.graph.outputs[0]].reshape(x.shape[0], -1)

    def bounds(self, lo: Tensor, hi: Tensor, C: Tensor, grad: bool = False) -> Tensor:
        """Lower bounds (B, S), float64, on ``C·f(x)`` over the boxes ``[lo, hi]`` (B, n, float64);
        ``grad``: keep the autograd graph back to ``lo`` and ``hi``."""
        shape = (-1, *self.input_shape)
        dtype = self.precision.dtype
        if dtype == torch.float32:
            lo, hi = _f32_outside(lo, hi)
        dev = self.device
        Cb = C.to(dtype=dtype, device=dev).unsqueeze(0).expand(lo.shape[0], -1, -1)
        with torch.set_grad_enabled(grad):
            low = self.bound_net(lo.to(dtype=dtype, device=dev).reshape(shape), hi.to(dtype=dtype, device=dev).reshape(shape),
                                 Cb)[0].double().cpu()
        if dtype == torch.float32:
            low = low - float32_margin(low)
        return low

    def ort(self, x: np.ndarray) -> np.ndarray:
        """onnxruntime's outputs, flattened and concatenated, for one flat input (split over the model's inputs)."""
        feeds, k = {}, 0
        x = x.astype(np.float32).reshape(-1)
        for name, shape in self.ort_inputs:
            n = int(np.prod(shape))
            feeds[name] = x[k:k + n].reshape(shape)
            k += n
        ys = self.sess.run(None, feeds)
        return np.concatenate([np.asarray(y, dtype=np.float64).reshape(-1) for y in ys])


def float32_margin(t: Tensor) -> Tensor:
    """The safety margin float32 bounds keep around ``t`` (a bound or a threshold): ``1e-5·(1 + |t|)``."""
    return 1e-5 * (1 + t.abs())


def _f32_inside(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """float32 boxes contained in the float64 box ``[lo, hi]`` (rounded inwards)."""
    lo32, hi32 = lo.float(), hi.float()
    lo32 = torch.where(lo32.double() < lo, torch.nextafter(lo32, torch.full_like(lo32, float("inf"))), lo32)
    hi32 = torch.where(hi32.double() > hi, torch.nextafter(hi32, torch.full_like(hi32, float("-inf"))), hi32)
    return lo32, torch.maximum(hi32, lo32)


def _f32_outside(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """float32 boxes containing the float64 box ``[lo, hi]`` (rounded outwards, so bounds stay sound)."""
    lo32, hi32 = lo.float(), hi.float()
    lo32 = torch.where(lo32.double() > lo, torch.nextafter(lo32, torch.full_like(lo32, float("-inf"))), lo32)
    hi32 = torch.where(hi32.double() < hi, torch.nextafter(hi32, torch.full_like(hi32, float("inf"))), hi32)
    return lo32, hi32


def _pad_disjuncts(disjuncts: list[tuple[Tensor, Tensor]], k: int) -> tuple[Tensor, Tensor]:
    """Stack disjuncts into (D, S, K) / (D, S); padding rows never constrain (d = +big)."""
    s = max(1, max(C.shape[0] for C, _ in disjuncts))
    Cs = torch.zeros(len(disjuncts), s, k, dtype=torch.float64)
    ds = torch.full((len(disjuncts), s), 1e30, dtype=torch.float64)
    for i, (C, d) in enumerate(disjuncts):
        Cs[i, :C.shape[0]] = C
        ds[i, :C.shape[0]] = d
    return Cs, ds


class _Search:
    """Falsification and proof for one input box."""

    def __init__(self, model: VerifierModel, spec: Spec, opts: VerifyOptions, deadline: float,
                 gen: torch.Generator) -> None:
        self.m, self.spec, self.opts, self.deadline, self.gen = model, spec, opts, deadline, gen
        self.Cs, self.ds = _pad_disjuncts(spec.disjuncts, model.num_outputs)
        self.rows = [C.shape[0] for C, _ in spec.disjuncts]
        self.C_all = torch.cat([C for C, _ in spec.disjuncts]) if sum(self.rows) else torch.zeros(0, model.num_outputs,
                                                                                                dtype=torch.float64)
        self.d_all = torch.cat([d for _, d in spec.disjuncts]) if sum(self.rows) else torch.zeros(0, dtype=torch.float64)
        self.row_disjunct = torch.repeat_interleave(torch.arange(len(self.rows)), torch.tensor(self.rows))  # (S_total,)
        self.boxes = 0

    # -- counterexamples ----------------------------------------------------------------
    def violation(self, y: Tensor) -> Tensor:
        """Per disjunct ``max_i (C y - d)_i`` (B, D): <= 0 means ``y`` is unsafe."""
        return (torch.einsum("dsk,bk->bds", self.Cs.to(y.dtype), y) - self.ds.to(y.dtype)).amax(-1)

    def confirm(self, x: Tensor) -> tuple[np.ndarray, np.ndarray] | None:
        """The (x, y) pair when onnxruntime agrees that ``x`` (flat) is unsafe, checked as VNN-COMP does:
        ``x`` is clipped into the box and rounded to float32, which must stay within
        :data:`CEX_INPUT_ATOL` of the box (a bound float32 cannot represent, e.g. a pinned
        ``lo == hi = 0.1``, is met by its nearest float32); the onnxruntime output must violate the
        property strictly (no output tolerance, stricter than the competition)."""
        lo, hi = self.spec.lower.numpy(), self.spec.upper.numpy()
        xn = np.clip(x.detach().double().numpy(), lo, hi).astype(np.float32)
        x64 = xn.astype(np.float64)
        if not (np.all(x64 >= lo - CEX_INPUT_ATOL) and np.all(x64 <= hi + CEX_INPUT_ATOL)):
            return None
        y = self.m.ort(xn)
        for C, d in self.spec.disjuncts:
            if np.all(C.numpy() @ y <= d.numpy()):
                return xn, y
        return None

    def check_points(self, xs: Tensor) -> tuple[np.ndarray, np.ndarray] | None:
        """Confirm the first few points (B, n) whose torch output looks unsafe."""
        with torch.no_grad():
            v = self.violation(self.m.forward(xs).double()).amin(1)
        order = torch.argsort(v)
        for i in order[:5].tolist():
            if v[i] > 1e-4:
                break
            found = self.confirm(xs[i])
            if found is not None:
                return found
        return None

    def attack(self, lo: Tensor, hi: Tensor, start: Tensor | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """PGD with restarts (:func:`~boundc.verify.attacks.pgd`) on one box (flat float64 bounds),
        one objective column per disjunct (its margin), the first restart from ``start`` (flat; default
        the centre); the best points are confirmed in onnxruntime."""
        lo32, hi32 = _f32_inside(lo.reshape(1, -1), hi.reshape(1, -1))
        steps = self.opts.steps
        x0 = None if start is None else start.reshape(1, -1).float()
        res = pgd(lambda x: self.violation(self.m.forward(x)), lo32, hi32, steps=steps, restarts=self.opts.restarts,
                  step_size=lambda t: 0.25 * (1 - t / steps) + 0.01, start=x0, generator=self.gen,
                  deadline=self.deadline)
        return self.check_points(res.x[0])

    # -- proof --------------------------------------------------------------------------
    def branch_and_bound(self, lo: Tensor, hi: Tensor, open_: Tensor) -> tuple[Verdict, tuple | None, str]:
        """Exclude the open disjuncts of one box by branch and bound on ReLU splits (:mod:`.bab`)."""
        from boundc.report import intersect_node_bounds

        sb = self.m.spec_bounds()
        if sb is None:
            return Verdict.UNKNOWN, None, "no branch and bound for this network"
        shape = (1, *self.m.input_shape)
        xl, xu = lo.reshape(shape), hi.reshape(shape)
        if self.m.precision is not Precision.FLOAT64:
            xl, xu = _f32_outside(xl, xu)
        dtype = self.m.precision.dtype
        with torch.no_grad():
            bounds = intersect_node_bounds([self.m.bound_net], xl.to(dtype=dtype, device=self.m.device),
                                           xu.to(dtype=dtype, device=self.m.device))
        sb.set_root(bounds, xl, xu)
        bo = self.opts.bab_options.for_network(bool(sb.relus))
        if bo.intermediate_iterations:
            now = time.monotonic()
            sb.tighten(bo.intermediate_iterations, bo.lr_intermediate, now + bo.tighten_share * (self.deadline - now))
        lo32, hi32 = _f32_inside(lo.reshape(1, -1), hi.reshape(1, -1))
        attacked = False

        def falsify(xs: Tensor) -> tuple | None:
            """Check the corners minimising the bounds; from the first (the root's) corner also run PGD."""
            nonlocal attacked
            x = torch.minimum(torch.maximum(xs.reshape(xs.shape[0], -1).float().cpu(), lo32), hi32)
            cex = self.check_points(x)
            if cex is None and not attacked and self.opts.steps:
                cex = self.attack(lo, hi, start=x[0])
            attacked = True
            return cex

        domains = 0
        for k in torch.nonzero(open_).flatten().tolist():  # one tree per disjunct, as α,β-CROWN does
            C, d = self.spec.disjuncts[k]
            if self.m.precision is Precision.FLOAT32:
                d = d + float32_margin(d)  # the bound must clear the threshold by the margin
            sb.set_spec(C)
            res = branch_and_bound(sb, d, [C.shape[0]], torch.ones(1, dtype=torch.bool), deadline=self.deadline,
                                   opts=self.opts.bab_options, falsify=falsify)
            domains += res.domains
            if res.verdict is not Verdict.VERIFIED:
                self.boxes += domains
                return res.verdict, res.counterexample, f"disjunct {k}: {res.detail}"
        self.boxes += domains
        return Verdict.VERIFIED, None, f"branch and bound ({domains} domains)"

    def tiles(self, lo: Tensor, hi: Tensor, open_: Tensor) -> Tensor:
        """``open_`` less the disjuncts that tiled MILP bounds (:func:`~boundc.verify.tiles.tile_bound`)
        exclude on the box: a disjunct is excluded when one of its rows has a positive lower bound.
        Spends at most ``tile_share`` of the time left."""
        form = self.m.tile_form() if self.opts.tile_share > 0 else None
        if form is None:
            return open_
        deadline = time.monotonic() + self.opts.tile_share * (self.deadline - time.monotonic())
        milp = MilpOptions()  # its tolerance: how far above 0 a row's bound must be to count
        still = open_.clone()
        todo = torch.nonzero(open_).flatten().tolist()
        with tqdm(total=len(todo), desc="tiled MILP", unit="disjunct", leave=False,
                  disable=None if self.opts.bab_options.progress else True) as bar:
            for k in todo:
                C, d = self.spec.disjuncts[k]
                for r in range(C.shape[0]):
                    if time.monotonic() >= deadline:
                        return still
                    bound, tile = tile_bound(form, lo, hi, C[r], float(d[r]), deadline, milp)
                    bar.set_postfix(row=r, bound=f"{bound:.4g}", tile=tile)
                    if bound > milp.tolerance:
                        still[k] = False
                        break
                bar.update()
        return still

    def bound_boxes(self, lo: Tensor, hi: Tensor, split: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Bound the boxes ``[lo, hi]`` (B, n): ``(open, score, corner)``; without ``split`` (the box will
        not be bisected) no gradient is taken, and ``score`` is the width and ``corner`` the centre.

        ``open`` (B, D) marks the disjuncts not excluded on each box.  ``score`` (B, n) is how much
        each input moves the lower bounds of the open disjuncts' unproved rows, times its width:
        ``|∂L/∂lo| + |∂L/∂hi|`` is the magnitude of the input coefficient of the linear bound, so
        this is α,β-CROWN's "sb" input-split score, read by autograd from the bound network.
        ``corner`` (B, n) is the vertex where those linear bounds are lowest (inputs they do not depend
        on at the centre): the first place to look for a counterexample.
        """
        B = lo.shape[0]
        if self.C_all.shape[0] == 0:
            return torch.ones(B, len(self.rows), dtype=torch.bool), hi - lo, (lo + hi) / 2
        lo_g, hi_g = lo.clone().requires_grad_(split), hi.clone().requires_grad_(split)
        with torch.set_grad_enabled(split):
            margin = self.m.bounds(lo_g, hi_g, self.C_all, grad=split) - self.d_all  # (B, S_total)
        excluded = (margin.detach() > 0).split(self.rows, dim=1)
        cols = [e.any(1) if e.shape[1] else torch.zeros(B, dtype=torch.bool) for e in excluded]
        open_ = ~torch.stack(cols, 1)
        row_open = open_[:, self.row_disjunct]
        weight = (row_open & (margin.detach() <= 0)).to(margin.dtype)
        if margin.requires_grad and bool(weight.any()):
            g_lo, g_hi = torch.autograd.grad((margin * weight).sum(), (lo_g, hi_g), allow_unused=True)
            g_lo = torch.zeros_like(lo) if g_lo is None else g_lo.detach()
            g_hi = torch.zeros_like(hi) if g_hi is None else g_hi.detach()
        else:
            g_lo = g_hi = torch.zeros_like(lo)
        width = hi - lo
        sens = g_lo.abs() + g_hi.abs()
        # where the bound does not move (e.g. every row already positive elsewhere), the widest input
        score = width * (sens + 1e-6 * sens.amax(1, keepdim=True) + 1e-12)
        corner = torch.where(g_lo.abs() > g_hi.abs(), lo, torch.where(g_hi.abs() > g_lo.abs(), hi, (lo + hi) / 2))
        return open_, score, corner

    @staticmethod
    def split(lo: Tensor, hi: Tensor, score: Tensor) -> tuple[Tensor, Tensor]:
        """Bisect each box (B, n) along its input of largest ``score``."""
        dim = score.argmax(1)
        mid = ((lo + hi) / 2).gather(1, dim[:, None])
        hi_left, lo_right = hi.clone(), lo.clone()
        hi_left.scatter_(1, dim[:, None], mid)
        lo_right.scatter_(1, dim[:, None], mid)
        return torch.cat([lo, lo_right]), torch.cat([hi_left, hi])

    def complete(self, lo: Tensor, hi: Tensor, open_: Tensor) -> tuple[Verdict, tuple | None, str]:
        """Decide the open disjuncts of one box with the MILP (see :mod:`boundc.verify.milp`)."""
        from boundc.report import intersect_node_bounds
        from boundc.verify.milp import MilpVerifier

        try:
            verifier = self.m.milp or MilpVerifier(self.m.graph)
        except BoundcError as err:
            return Verdict.UNKNOWN, None, f"no MILP: {err}"
        self.m.milp = verifier
        shape = (1, *self.m.input_shape)
        xl, xu = lo.reshape(shape), hi.reshape(shape)
        xl_b, xu_b = (xl, xu) if self.m.precision is Precision.FLOAT64 else _f32_outside(xl, xu)
        dtype = self.m.precision.dtype
        with torch.no_grad():
            bounds = intersect_node_bounds([self.m.bound_net], xl_b.to(dtype=dtype, device=self.m.device),
                                           xu_b.to(dtype=dtype, device=self.m.device))
        bounds = {k: type(v)(v.lower.cpu(), v.upper.cpu()) for k, v in bounds.items()}  # the MILP reads numpy
        for d in torch.nonzero(open_).flatten().tolist():
            C, dv = self.spec.disjuncts[d]
            left = self.deadline - time.monotonic()
            if left <= 0:
                return Verdict.UNKNOWN, None, "timeout in the MILP"
            res = verifier.exclude(xl, xu, C, dv, bounds, time_limit=left)
            if res.status is Verdict.FALSIFIED:
                lo32, hi32 = _f32_inside(lo, hi)
                found = self.confirm(torch.minimum(torch.maximum(res.counterexample.reshape(-1).float(), lo32), hi32))
                if found is not None:
                    return Verdict.FALSIFIED, found, "MILP counterexample"
            if res.status is not Verdict.VERIFIED:
                why = "counterexample not confirmed" if res.status is Verdict.FALSIFIED else "undecided"
                return Verdict.UNKNOWN, None, f"MILP {why} ({res.binaries} unstable ReLUs, {res.seconds:.1f} s)"
        return Verdict.VERIFIED, None, "MILP"

    def run(self) -> tuple[Verdict, tuple | None, str]:
        """``(verdict, counterexample, detail)`` for this box: bounds, splitting, then the MILP."""
        lo, hi = self.spec.lower[None], self.spec.upper[None]
        can_split = int((hi > lo).sum()) <= self.opts.max_split_dim  # only the inputs that vary count
        queue_lo, queue_hi = lo, hi
        while queue_lo.shape[0]:
            if time.monotonic() > self.deadline:
                return Verdict.UNKNOWN, None, f"timeout with {queue_lo.shape[0]} open boxes"
            b = self.opts.batch
            blo, bhi, queue_lo, queue_hi = queue_lo[:b], queue_hi[:b], queue_lo[b:], queue_hi[b:]
            self.boxes += blo.shape[0]
            open_, score, corner = self.bound_boxes(blo, bhi, split=can_split)
            keep = open_.any(1)
            if not bool(keep.any()):
                continue
            blo, bhi, open_, score, corner = blo[keep], bhi[keep], open_[keep], score[keep], corner[keep]
            lo32, hi32 = _f32_inside(blo, bhi)
            found = self.check_points(torch.cat([(lo32 + hi32) / 2, corner.float().clamp(lo32, hi32)]))
            if found is not None:
                return Verdict.FALSIFIED, found, "sub-box centre or bound's corner"
            if not can_split:
                open_[0] = self.tiles(blo[0], bhi[0], open_[0])
                if not bool(open_[0].any()):
                    continue
                verdict, cex, detail = Verdict.UNKNOWN, None, "bounds too loose (input too large to split)"
                if self.opts.bab:
                    verdict, cex, detail = self.branch_and_bound(blo[0], bhi[0], open_[0])
                    if verdict is Verdict.VERIFIED:
                        continue
                if verdict is Verdict.UNKNOWN and self.opts.complete and time.monotonic() < self.deadline:
                    return self.complete(blo[0], bhi[0], open_[0])
                return verdict, cex, detail
            if not bool((bhi > blo).any()):
                return Verdict.UNKNOWN, None, "an open box of zero width (rounding) that is not a counterexample"
            if queue_lo.shape[0] + 2 * blo.shape[0] > self.opts.max_boxes:
                return Verdict.UNKNOWN, None, f"more than {self.opts.max_boxes} open boxes"
            nlo, nhi = self.split(blo, bhi, score)
            queue_lo, queue_hi = torch.cat([nlo, queue_lo]), torch.cat([nhi, queue_hi])  # depth first
        return Verdict.VERIFIED, None, ""


def verify(model: VerifierModel | str | os.PathLike, prop: str | os.PathLike,
           opts: VerifyOptions | None = None) -> VerifyResult:
    """Decide one VNN-LIB property on an ONNX model (see the module docstring).

    A cascade over the property's input boxes: first the attack on every box (cheap),
    then bounds, splitting and the MILP box by box; any counterexample settles the
    property (``sat``), the first undecided box makes it ``unknown``.
    """
    opts = opts or VerifyOptions()
    t0 = time.monotonic()
    if not isinstance(model, VerifierModel):
        model = VerifierModel(os.fspath(model), opts.method, opts.precision, opts.device)
    n_in, n_out, specs = read_vnnlib(prop)
    model.check_property(n_in, n_out, os.fspath(prop))
    deadline = t0 + opts.timeout
    gen = torch.Generator().manual_seed(opts.seed)
    searches = [_Search(model, s, opts, deadline, gen) for s in specs]
    found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    why: dict[int, str] = {}

    def attack(open_: Tensor) -> list[int]:
        codes = []
        for i in open_.tolist():
            s = searches[i]
            cex = s.attack(s.spec.lower, s.spec.upper) if time.monotonic() <= deadline else None
            if cex is not None:
                found[i], why[i] = cex, "attack"
            codes.append((Verdict.FALSIFIED if cex is not None else Verdict.UNKNOWN).code)
        return codes

    def search(open_: Tensor) -> list[int]:
        codes = [Verdict.UNKNOWN.code] * len(open_)
        for k, i in enumerate(open_.tolist()):
            try:
                verdict, cex, why[i] = searches[i].run()
            except DeadlineExceeded:
                verdict, cex, why[i] = Verdict.UNKNOWN, None, "timeout while bounding"
            codes[k] = verdict.code
            if cex is not None:
                found[i] = cex
            if verdict is not Verdict.VERIFIED:  # sat settles the property; unknown leaves it open
                break
        return codes

    try:
        with deadline_of_bounds(deadline):
            res = run_cascade(len(searches), [Stage("attack", attack), Stage("search", search)],
                              stop_on_falsified=True)
    except (torch.OutOfMemoryError, MemoryError) as err:
        raise BoundcError(f"out of memory while verifying {os.fspath(prop)} on {model.path} "
                          f"({type(err).__name__}): the bounds need more memory than this machine has") from None
    boxes = sum(s.boxes for s in searches)
    elapsed = time.monotonic() - t0
    falsified = [i for i in range(len(searches)) if res.verdict(i) is Verdict.FALSIFIED]
    if falsified:
        i = falsified[0]
        return VerifyResult(Verdict.FALSIFIED, elapsed, found[i], why[i], boxes, model.method, model.precision)
    if res.count(Verdict.VERIFIED) == len(searches):
        return VerifyResult(Verdict.VERIFIED, elapsed, None, "", boxes, model.method, model.precision)
    undecided = [why[i] for i in range(len(searches)) if i in why and res.verdict(i) is Verdict.UNKNOWN]
    detail = undecided[0] if undecided else (res.stopped or "timeout")
    return VerifyResult(Verdict.UNKNOWN, elapsed, None, detail, boxes, model.method, model.precision)
