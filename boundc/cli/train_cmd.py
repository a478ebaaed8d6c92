"""``boundc train``: certified training (IBP, CROWN-IBP, CROWN/Fast-Lin, MixTrain) with checkpoints and resume.

Multi-process: ``torchrun --nproc_per_node=N $(which boundc) train ...`` (DDP; gloo on CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from boundc.cli.common import (
    add_command,
    any_int,
    existing_file,
    method_names,
    nonneg_float,
    nonneg_int,
    note,
    positive_float,
    positive_int,
    unit_float,
)
from boundc.errors import BoundcError

#: Training-only objectives beside the bound methods.
EXTRA_OBJECTIVES = ("mixtrain", "clean")

#: Flags that may differ from the checkpoint's stored config on ``--resume``.
RESUMABLE = ("epochs", "max_steps", "progress", "out", "eval_limit")

#: Below this final test clean accuracy the run ends with a warning.
POOR_ACCURACY = 0.5


def train_methods() -> list[str]:
    """``--method`` choices: every registered bound method, plus MixTrain and clean training."""
    return [*method_names(), *EXTRA_OBJECTIVES]


def add_train_arguments(p: argparse.ArgumentParser, defaults) -> None:
    """Arguments mapping onto :class:`~boundc.train.trainer.TrainConfig`."""
    from boundc.train.data import DATA_ENV, DATASETS
    from boundc.train.models import INITS

    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", default=defaults.dataset, choices=DATASETS,
                   help="digits ships with scikit-learn; the others are read from files (no download)")
    g.add_argument("--data", dest="data_dir", default=None,
                   help=f"directory with the dataset's files (default: ${DATA_ENV}/DATASET if set, else "
                   "../shared/data/DATASET beside the repository)")
    g.add_argument("--model", default=defaults.model,
                   help="model name (see boundc.train.models: tiny, small, medium, large, wk_small, ...) "
                   "or path/to/file.py:factory")
    g.add_argument("--init", default=defaults.init, choices=INITS,
                   help="weight init: PyTorch defaults, or the IBP paper's (Sonnet: truncated normal 1/sqrt(fan_in), "
                   "zero bias)")
    g.add_argument("--max-train", type=positive_int, default=None, help="use only the first N training images")

    g = p.add_argument_group("objective")
    g.add_argument("--method", default=defaults.method, choices=train_methods(),
                   help="bound method of the robust loss (see `boundc methods`), or mixtrain / clean")
    g.add_argument("--eps", type=nonneg_float, default=defaults.eps, help="evaluation radius (L-inf)")
    g.add_argument("--eps-train", type=nonneg_float, default=None, help="training radius (default: --eps)")
    g.add_argument("--kappa-final", type=unit_float, default=defaults.kappa_final,
                   help="final weight of the clean loss in kappa*clean + (1-kappa)*robust (kappa ramps from 1)")
    g.add_argument("--beta-final", type=unit_float, default=defaults.beta_final,
                   help="CROWN-IBP: final weight of the CROWN-IBP bound vs IBP (beta ramps from 1)")
    g.add_argument("--mixtrain-k", type=positive_int, default=defaults.mixtrain_k,
                   help="MixTrain: samples per batch given the costly verified loss")
    g.add_argument("--mixtrain-alpha", type=unit_float, default=defaults.mixtrain_alpha,
                   help="MixTrain: weight of the verified loss")
    g.add_argument("--mixtrain-method", default=defaults.mixtrain_method, choices=method_names(),
                   help="MixTrain: bound method of the verified loss")
    g.add_argument("--mixtrain-every", type=nonneg_int, default=defaults.mixtrain_every,
                   help="MixTrain: adapt alpha every N epochs (0 = fixed alpha)")
    g.add_argument("--reg-r1", type=nonneg_float, default=0.0, help="Zhu et al. output-gap regularizer weight")
    g.add_argument("--reg-r2", type=nonneg_float, default=0.0, help="Zhu et al. pre-activation regularizer weight")

    g = p.add_argument_group("schedule")
    g.add_argument("--epochs", type=positive_int, default=defaults.epochs, help="passes over the training set")
    g.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="global batch size")
    g.add_argument("--lr", type=positive_float, default=defaults.lr, help="Adam learning rate")
    g.add_argument("--schedule", default=defaults.schedule, choices=("ibp-paper", "custom"),
                   help="ibp-paper: Appendix A of Gowal et al. scaled to the run (short runs keep the learning rate "
                   "high longer); custom: the --warmup/--rampup/--lr-milestones flags")
    g.add_argument("--warmup-epochs", type=nonneg_float, default=defaults.warmup_epochs,
                   help="custom schedule: epochs of clean training (eps = 0) first")
    g.add_argument("--rampup-epochs", type=nonneg_float, default=defaults.rampup_epochs,
                   help="custom schedule: epochs over which eps (and kappa, beta) ramp to their final values")
    g.add_argument("--lr-milestones", default="", type=_milestones,
                   help="custom schedule: comma-separated epochs where the learning rate is divided by 10")
    g.add_argument("--ramp", default=defaults.ramp, choices=("linear", "smooth"), help="shape of the eps ramp")
    g.add_argument("--max-steps", type=positive_int, default=None,
                   help="stop (and checkpoint) after this many steps in all")

    g = p.add_argument_group("run")
    g.add_argument("--eval-limit", type=positive_int, default=defaults.eval_limit,
                   help="test images for the per-epoch clean / IBP-verified check")
    g.add_argument("--seed", type=any_int, default=defaults.seed, help="seed of the init, data order and sampling")
    g.add_argument("--out", default=defaults.out,
                   help="output directory: OUT/checkpoint.pt (for `boundc evaluate` and --resume), "
                   "OUT/train.json, OUT/curves.png")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (it is drawn only on a terminal anyway); per-epoch lines are still printed")


def _milestones(text: str) -> tuple[float, ...]:
    return tuple(nonneg_float(s.strip()) for s in text.split(",") if s.strip())


def config_from_args(args: argparse.Namespace):
    """Build the :class:`TrainConfig` from parsed arguments."""
    from boundc.train.trainer import TrainConfig

    return TrainConfig(dataset=args.dataset, data_dir=args.data_dir, model=args.model, method=args.method,
                       eps=args.eps, eps_train=args.eps_train, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, schedule=args.schedule, warmup_epochs=args.warmup_epochs,
                       rampup_epochs=args.rampup_epochs, lr_milestones=args.lr_milestones, ramp=args.ramp,
                       kappa_final=args.kappa_final, beta_final=args.beta_final, mixtrain_k=args.mixtrain_k,
                       mixtrain_alpha=args.mixtrain_alpha, mixtrain_method=args.mixtrain_method,
                       mixtrain_every=args.mixtrain_every, reg_r1=args.reg_r1, reg_r2=args.reg_r2,
                       eval_limit=args.eval_limit, max_train=args.max_train, max_steps=args.max_steps,
                       seed=args.seed, init=args.init, out=args.out, progress=args.progress)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command."""
    from boundc.train.trainer import TrainConfig

    p = add_command(sub, "train", help="certified training (IBP / CROWN-IBP / CROWN / MixTrain)",
                    description="Certified training. Writes OUT/checkpoint.pt every epoch (and on Ctrl-C), then "
                    "OUT/train.json and OUT/curves.png.\nEvaluate with `boundc evaluate OUT/checkpoint.pt`.\n"
                    "Multi-process: torchrun --nproc_per_node=N $(which boundc) train ...")
    add_train_arguments(p, TrainConfig())
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="resume from CHECKPOINT (bare --resume: OUT/checkpoint.pt); the stored config is used, "
                   f"except {', '.join('--' + f.replace('_', '-') for f in RESUMABLE if f != 'progress')}")
    p.set_defaults(func=run, parser=p)


def explicit_dests(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations of the options the user typed (``--epochs 8`` or ``--epochs=8``)."""
    typed = {a.split("=", 1)[0] for a in argv if a.startswith("-")}
    return {a.dest for a in parser._actions if typed.intersection(a.option_strings)}


def load_checkpoint_file(path: str) -> dict:
    """A training checkpoint, or one :class:`BoundcError` saying why it cannot be one."""
    import pickle

    from boundc.train.trainer import load_checkpoint

    existing_file_or_error(path, "checkpoint")
    try:
        ck = load_checkpoint(path)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ImportError, IndexError, KeyError,
            TypeError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BoundcError(f"{path} is not a boundc training checkpoint (torch.load failed: {first[:160]})") from err
    if not isinstance(ck, dict) or not {"config", "state", "model"} <= set(ck):
        raise BoundcError(f"{path} is not a boundc training checkpoint (written by `boundc train` as "
                          "OUT/checkpoint.pt)")
    return ck


def existing_file_or_error(path: str, what: str) -> None:
    """Raise a :class:`BoundcError` naming ``what`` when ``path`` is not a file."""
    try:
        existing_file(path)
    except argparse.ArgumentTypeError as err:
        raise BoundcError(f"{what}: {err}") from None


def _resume_config(args: argparse.Namespace, cfg):
    """The stored config of the checkpoint, with the flags that may change on resume applied."""
    from boundc.train.trainer import TrainConfig

    path = str(Path(cfg.out) / "checkpoint.pt") if args.resume == "auto" else args.resume
    if not Path(path).is_file():
        hint = " (bare --resume reads OUT/checkpoint.pt; give --out or --resume CHECKPOINT)" \
            if args.resume == "auto" else ""
        raise BoundcError(f"--resume: no such checkpoint: {path}{hint}")
    ck = load_checkpoint_file(path)
    stored = TrainConfig.from_dict(ck["config"])
    typed = explicit_dests(args.parser, getattr(args, "argv", []))
    changed = {d: getattr(cfg, d) for d in typed if hasattr(stored, d) and getattr(cfg, d) != getattr(stored, d)}
    fixed = sorted(d for d in changed if d not in RESUMABLE)
    if fixed:
        d = fixed[0]
        raise BoundcError(f"--resume {path}: --{d.replace('_', '-')} {changed[d]} differs from the checkpoint's "
                          f"{getattr(stored, d)!r}; a resumed run keeps its config (only "
                          f"{', '.join('--' + f.replace('_', '-') for f in RESUMABLE)} may change)")
    done = int(ck["state"].get("epoch", 0))
    if "epochs" in changed:
        if cfg.epochs < done:
            raise BoundcError(f"--resume {path}: --epochs {cfg.epochs} but the checkpoint has already done {done} "
                              "epochs")
        note(f"resuming with --epochs {cfg.epochs} instead of the stored {stored.epochs}: the schedule is rescaled "
             f"to {cfg.epochs} epochs")
    keep = {"max_steps": cfg.max_steps, "progress": cfg.progress, **changed}
    return path, TrainConfig.from_dict({**stored.__dict__, **keep}), done


def run(args: argparse.Namespace) -> int:
    """Train (or resume), then print the final summary line."""
    from boundc.train.data import resolve_data_dir
    from boundc.train.trainer import Trainer

    cfg = config_from_args(args)
    resume = None
    if args.resume:
        resume, cfg, done = _resume_config(args, cfg)
        note(f"resuming {resume} at epoch {done} of {cfg.epochs}")
    if cfg.dataset != "digits":
        where, how = resolve_data_dir(cfg.dataset, cfg.data_dir)
        note(f"data: {cfg.dataset} from {where} ({how})")
    trainer = Trainer(cfg, resume=resume)
    for line in trainer.notes:
        note(line)
    summary = trainer.fit()
    if trainer.is_main:
        last = summary["history"][-1] if summary["history"] else {}
        print(json.dumps({"out": cfg.out, "checkpoint": str(Path(cfg.out) / "checkpoint.pt"), "steps": summary["steps"],
                          "train_seconds": round(summary["train_seconds"], 1), "test_clean": last.get("test_clean"),
                          "test_verified_ibp": last.get("test_verified")}), file=sys.stdout)
        clean = last.get("test_clean")
        if clean is not None and clean < POOR_ACCURACY:
            note(f"warning: the model is still poor: test clean accuracy {clean:.2f} after {summary['steps']} steps; "
                 "train longer (--epochs) or check --lr / --eps")
    return 0
