"""``boundc evaluate CHECKPOINT``: paper-style table of clean / PGD / verified accuracy (and JSON)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` sub-command."""
    p = sub.add_parser("evaluate", help="evaluate a training checkpoint (clean / PGD / verified accuracy)")
    p.add_argument("checkpoint")
    p.add_argument("--methods", default="ibp,crown-ibp,crown", help="comma-separated bound methods")
    p.add_argument("--refine", default="", help="comma-separated tighter methods run only on samples not yet "
                   "verified (e.g. alpha-crown); adds the 'best bound' row")
    p.add_argument("--complete", action="store_true",
                   help="decide the samples still open with PGD, then an exact MILP (HiGHS); small ReLU nets only")
    p.add_argument("--milp-time-limit", type=float, default=60.0, help="seconds per MILP problem (margin row)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--eps", type=float, default=None, help="radius (default: the checkpoint's --eps)")
    p.add_argument("--pgd-steps", type=int, default=200)
    p.add_argument("--restarts", type=int, default=10)
    p.add_argument("--pgd-limit", type=int, default=1000, help="test images attacked with PGD (0 = skip)")
    p.add_argument("--limit", type=int, default=None, help="test images for clean/verified (default: all)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--data", dest="data_dir", default=None, help="override the dataset directory")
    p.add_argument("--json", default=None, help="write the result as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load, evaluate, print the table, optionally write JSON."""
    from boundc.train.data import load_dataset
    from boundc.train.metrics import EvalConfig, evaluate, format_table, write_json
    from boundc.train.trainer import TrainConfig, load_checkpoint, model_from_checkpoint
    from boundc.verify.milp import MilpOptions

    ck = load_checkpoint(args.checkpoint)
    cfg = TrainConfig.from_dict(ck["config"])
    data = load_dataset(cfg.dataset, args.data_dir or cfg.data_dir)
    model, cfg, data = model_from_checkpoint(ck, data)
    n = len(data.test) if args.limit is None else min(args.limit, len(data.test))
    ecfg = EvalConfig(eps=cfg.eps if args.eps is None else args.eps,
                      methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
                      refine=tuple(m.strip() for m in args.refine.split(",") if m.strip()),
                      complete=MilpOptions(time_limit=args.milp_time_limit) if args.complete else None,
                      progress=not args.no_progress,
                      pgd_steps=args.pgd_steps, restarts=args.restarts, pgd_limit=args.pgd_limit,
                      batch_size=args.batch_size, clip=data.clip)
    res = evaluate(model, data.test.x[:n], data.test.y[:n], ecfg, num_classes=data.num_classes)
    print(format_table(res))
    if args.json:
        write_json(res, args.json, {"command": " ".join(["boundc", *sys.argv[1:]]), "checkpoint": args.checkpoint,
                                    "train_config": ck["config"], "train_seconds": ck["state"]["train_seconds"]})
    return 0
