"""``boundc train``: certified training (IBP, CROWN-IBP, CROWN/Fast-Lin, MixTrain) with checkpoints and resume.

Multi-process: ``torchrun --nproc_per_node=N $(which boundc) train ...`` (DDP; gloo on CPU).
"""

from __future__ import annotations

import argparse
import json
import sys

from boundc.train.data import DATASETS
from boundc.train.models import INITS
from boundc.train.trainer import METHODS, TrainConfig


def add_train_arguments(p: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    """Arguments mapping onto :class:`~boundc.train.trainer.TrainConfig`."""
    p.add_argument("--dataset", default=defaults.dataset, choices=DATASETS)
    p.add_argument("--data", dest="data_dir", default=None, help="directory with the dataset files (no download)")
    p.add_argument("--model", default=defaults.model, help="model name (see boundc.train.models) or file.py:factory")
    p.add_argument("--method", default=defaults.method, choices=METHODS)
    p.add_argument("--eps", type=float, default=defaults.eps, help="evaluation radius (L-inf)")
    p.add_argument("--eps-train", type=float, default=None, help="training radius (default: --eps)")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="global batch size")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--schedule", default=defaults.schedule, choices=("ibp-paper", "custom"),
                   help="ibp-paper: Appendix A of Gowal et al. scaled to the run; custom: the --warmup/--rampup flags")
    p.add_argument("--warmup-epochs", type=float, default=defaults.warmup_epochs)
    p.add_argument("--rampup-epochs", type=float, default=defaults.rampup_epochs)
    p.add_argument("--lr-milestones", default="", help="comma-separated epochs where LR is divided by 10 (custom)")
    p.add_argument("--ramp", default=defaults.ramp, choices=("linear", "smooth"))
    p.add_argument("--kappa-final", type=float, default=defaults.kappa_final)
    p.add_argument("--beta-final", type=float, default=defaults.beta_final)
    p.add_argument("--mixtrain-k", type=int, default=defaults.mixtrain_k)
    p.add_argument("--mixtrain-alpha", type=float, default=defaults.mixtrain_alpha)
    p.add_argument("--mixtrain-method", default=defaults.mixtrain_method)
    p.add_argument("--mixtrain-every", type=int, default=defaults.mixtrain_every, help="dynamic alpha period")
    p.add_argument("--reg-r1", type=float, default=0.0, help="Zhu et al. output-gap regularizer weight")
    p.add_argument("--reg-r2", type=float, default=0.0, help="Zhu et al. pre-activation regularizer weight")
    p.add_argument("--eval-limit", type=int, default=defaults.eval_limit)
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--init", default=defaults.init, choices=INITS,
                   help="weight init: PyTorch defaults, or the IBP paper's (Sonnet: truncated normal 1/sqrt(fan_in), "
                   "zero bias)")
    p.add_argument("--out", default=defaults.out, help="output directory (checkpoint, JSON, plot)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build the :class:`TrainConfig` from parsed arguments."""
    ms = tuple(float(s) for s in args.lr_milestones.split(",") if s.strip())
    return TrainConfig(dataset=args.dataset, data_dir=args.data_dir, model=args.model, method=args.method,
                       eps=args.eps, eps_train=args.eps_train, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, schedule=args.schedule, warmup_epochs=args.warmup_epochs,
                       rampup_epochs=args.rampup_epochs, lr_milestones=ms, ramp=args.ramp,
                       kappa_final=args.kappa_final, beta_final=args.beta_final, mixtrain_k=args.mixtrain_k,
                       mixtrain_alpha=args.mixtrain_alpha, mixtrain_method=args.mixtrain_method,
                       mixtrain_every=args.mixtrain_every, reg_r1=args.reg_r1, reg_r2=args.reg_r2,
                       eval_limit=args.eval_limit, max_train=args.max_train, max_steps=args.max_steps,
                       seed=args.seed, init=args.init, out=args.out, progress=args.progress)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command."""
    p = sub.add_parser("train", help="certified training (IBP / CROWN-IBP / CROWN / MixTrain)")
    add_train_arguments(p, TrainConfig())
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from CHECKPOINT (default: OUT/checkpoint.pt); the stored config is used")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train (or resume), then print the final summary line."""
    from pathlib import Path

    from boundc.train.trainer import Trainer, load_checkpoint

    cfg = config_from_args(args)
    resume = None
    if args.resume:
        resume = str(Path(cfg.out) / "checkpoint.pt") if args.resume == "auto" else args.resume
        stored = TrainConfig.from_dict(load_checkpoint(resume)["config"])
        cfg = TrainConfig.from_dict({**stored.__dict__, "max_steps": cfg.max_steps, "progress": cfg.progress})
    trainer = Trainer(cfg, resume=resume)
    summary = trainer.fit()
    if trainer.is_main:
        last = summary["history"][-1] if summary["history"] else {}
        print(json.dumps({"out": cfg.out, "steps": summary["steps"], "train_seconds": round(summary["train_seconds"], 1),
                          "test_clean": last.get("test_clean"), "test_verified_ibp": last.get("test_verified")}),
              file=sys.stdout)
    return 0
