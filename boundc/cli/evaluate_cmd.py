"""``boundc evaluate CHECKPOINT``: paper-style table of clean / PGD / verified accuracy (and JSON)."""

from __future__ import annotations

import argparse

from boundc.cli.common import (
    add_command,
    method_list,
    method_names,
    nonneg_float,
    nonneg_int,
    note,
    positive_float,
    positive_int,
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` sub-command."""
    p = add_command(sub, "evaluate", help="evaluate a training checkpoint (clean / PGD / verified accuracy)")
    p.add_argument("checkpoint", help="a checkpoint written by `boundc train` (OUT/checkpoint.pt, by default "
                   "boundc_runs/run/checkpoint.pt; `boundc demo` writes boundc_demo/checkpoint.pt)")
    default_methods = ",".join(m for m in ("ibp", "crown-ibp", "crown") if m in method_names())
    p.add_argument("--methods", default=default_methods, type=method_list(),
                   help="comma-separated bound methods, one verified row each (see `boundc methods`)")
    p.add_argument("--refine", default="", type=method_list(allow_empty=True),
                   help="comma-separated tighter methods run only on samples not yet verified (e.g. alpha-crown); "
                   "adds the 'best bound' row")
    p.add_argument("--complete", action="store_true",
                   help="decide the samples still open with PGD, then an exact MILP (HiGHS); small ReLU nets only")
    p.add_argument("--milp-time-limit", type=positive_float, default=60.0, help="seconds per MILP problem (margin row)")
    p.add_argument("--eps", type=nonneg_float, default=None, help="L-inf radius (default: the checkpoint's --eps)")
    p.add_argument("--pgd-steps", type=nonneg_int, default=200, help="PGD steps per restart (0 = no PGD row)")
    p.add_argument("--restarts", type=positive_int, default=10, help="PGD random restarts")
    p.add_argument("--pgd-limit", type=nonneg_int, default=1000, help="test images attacked with PGD (0 = skip)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="test images for clean / verified accuracy (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=500, help="images per batch")
    p.add_argument("--data", dest="data_dir", default=None,
                   help="the dataset's directory (default: the checkpoint's, else $BOUNDC_DATA/DATASET, else "
                   "../shared/data/DATASET)")
    p.add_argument("--json", default=None, help="also write the result as JSON to this path")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (they are drawn only on a terminal anyway)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load, evaluate, print the table, optionally write JSON."""
    from boundc.cli.train_cmd import load_checkpoint_file
    from boundc.train.data import load_dataset, resolve_data_dir
    from boundc.train.metrics import EvalConfig, evaluate, format_table, write_json
    from boundc.train.trainer import TrainConfig, model_from_checkpoint
    from boundc.verify import MilpOptions

    ck = load_checkpoint_file(args.checkpoint)
    cfg = TrainConfig.from_dict(ck["config"])
    data_dir = args.data_dir or cfg.data_dir
    if cfg.dataset != "digits":
        where, how = resolve_data_dir(cfg.dataset, data_dir)
        note(f"data: {cfg.dataset} from {where} ({how})")
    data = load_dataset(cfg.dataset, data_dir)
    model, cfg, data = model_from_checkpoint(ck, data)
    n = len(data.test) if args.limit is None else min(args.limit, len(data.test))
    eps = cfg.eps if args.eps is None else args.eps
    npgd = min(n, args.pgd_limit) if args.pgd_steps else 0
    note(f"{n} test images, eps={eps:g}; PGD {args.pgd_steps} steps x {args.restarts} restarts on {npgd}; "
         f"methods {', '.join(args.methods)}")
    ecfg = EvalConfig(eps=eps, methods=args.methods, refine=args.refine,
                      complete=MilpOptions(time_limit=args.milp_time_limit) if args.complete else None,
                      progress=args.progress, pgd_steps=args.pgd_steps, restarts=args.restarts,
                      pgd_limit=args.pgd_limit, batch_size=args.batch_size, clip=data.clip)
    res = evaluate(model, data.test.x[:n], data.test.y[:n], ecfg, num_classes=data.num_classes)
    print(format_table(res))
    if args.json:
        write_json(res, args.json, {"command": " ".join(["boundc", *getattr(args, "argv", [])]),
                                    "checkpoint": args.checkpoint, "train_config": ck["config"],
                                    "train_seconds": ck["state"]["train_seconds"]})
    return 0
