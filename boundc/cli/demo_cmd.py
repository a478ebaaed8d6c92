"""``boundc demo``: the README's first command — certified training end to end on the built-in digits.

IBP training of a tiny CNN on scikit-learn's 8×8 digits (progress bar) → evaluation
table (clean / PGD / verified with every available method) → ONNX export of the
certifier (when ``boundc.export`` exists) → a plot.  Everything goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from boundc.cli.common import add_command, any_int, positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command."""
    p = add_command(sub, "demo", help="train + certify + export a small model on the built-in digits (a few minutes)",
                    description="The README's first command: IBP training of a tiny CNN on scikit-learn's 8x8 digits, "
                    "evaluation (clean / PGD / verified),\nONNX export of the certifier checked in onnxruntime, and a "
                    "plot. Writes OUT/checkpoint.pt, train.json, eval.json,\ncertifier.onnx, curves.png.")
    p.add_argument("--out", default="boundc_demo", help="output directory")
    p.add_argument("--epochs", type=positive_int, default=30, help="training epochs (about 5 s each on a CPU core)")
    p.add_argument("--eps", type=positive_float, default=0.1, help="L-inf radius (pixels in [0, 1])")
    p.add_argument("--seed", type=any_int, default=0, help="seed of the init and the data order")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (they are drawn only on a terminal anyway); per-epoch lines are still printed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo pipeline."""
    import torch

    import boundc
    from boundc.train.metrics import EvalConfig, evaluate, format_table, write_json
    from boundc.train.trainer import TrainConfig, Trainer

    out = Path(args.out)
    cfg = TrainConfig(dataset="digits", model="tiny", method="ibp", eps=args.eps, eps_train=round(args.eps * 1.5, 6),
                      epochs=args.epochs, batch_size=50, lr=3e-3, schedule="custom", warmup_epochs=2,
                      rampup_epochs=args.epochs * 0.5, lr_milestones=(args.epochs * 0.8,), kappa_final=0.5,
                      eval_limit=300, seed=args.seed, out=str(out), progress=args.progress)
    print(f"[1/4] IBP training: tiny CNN on sklearn 8x8 digits, eps={args.eps} (train eps {cfg.eps_train})")
    trainer = Trainer(cfg)
    summary = trainer.fit()
    model, data = trainer.model.eval(), trainer.data
    methods = tuple(m for m in ("ibp", "crown-ibp", "crown") if m in boundc.methods())
    print(f"\n[2/4] evaluation on {len(data.test)} test images (methods: {', '.join(methods)})")
    res = evaluate(model, data.test.x, data.test.y, EvalConfig(args.eps, methods, pgd_steps=20, restarts=2,
                                                               pgd_limit=None, clip=data.clip,
                                                               progress=args.progress),
                   trainer.objective.cache, data.num_classes)
    print(format_table(res))
    write_json(res, out / "eval.json", {"train_seconds": summary["train_seconds"]})
    print("\n[3/4] ONNX export of the CROWN-IBP certifier (margin spec) and a check in onnxruntime")
    _export_and_check(model, data, out / "certifier.onnx", args.eps)
    print(f"\n[4/4] curves: {out / 'curves.png'}; summary: {out / 'train.json'}, {out / 'eval.json'}")
    (out / "demo.json").write_text(json.dumps({"methods": list(methods), "torch": torch.__version__}, indent=2))
    return 0


def _export_and_check(model, data, path: Path, eps: float) -> None:
    """Export the certifier, run it in onnxruntime on a few test images, compare with torch."""
    import numpy as np
    import onnxruntime as ort
    import torch

    import boundc

    x, y = data.test.x[:16], data.test.y[:16]
    method = "crown-ibp" if "crown-ibp" in boundc.methods() else "ibp"
    bm = boundc.compile(model, x, method=method)
    bm.export_onnx(path, spec="margin")
    xl, xu = boundc.linf_box(x, eps, clip=data.clip)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"x_lower": xl.numpy(), "x_upper": xu.numpy(), "labels": y.numpy().astype(np.int64)}
    lower_ort = sess.run(None, feeds)[0]
    with torch.no_grad():
        lower = bm(xl, xu, boundc.margin_spec(y, data.num_classes))[0].numpy()
    diff = float(np.abs(lower_ort - lower).max())
    print(f"  wrote {path} ({method}); onnxruntime vs torch on 16 images: max |diff| = {diff:.2e}; "
          f"certified {(lower_ort > 0).all(1).sum()}/16")
