"""The certified-training loop: schedules, losses, checkpoints/resume, DDP, progress bar, JSON + plot.

Determinism: the data order of epoch ``e`` is a permutation drawn from
``seed·1000 + e``, and all other randomness of step ``s`` (dropout, MixTrain
sampling) is seeded from ``(seed, s)``, so a run resumed from any checkpoint —
including one written mid-epoch on Ctrl-C — continues to the identical state.
Under ``torchrun`` each of the N ranks takes an equal slice of every global
batch and DDP averages gradients, which equals one process with the same
global batch (up to float summation order).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from boundc.errors import BoundcError
from boundc.train import losses, schedules
from boundc.train.data import Dataset, load_dataset
from boundc.train.metrics import EvalConfig, evaluate
from boundc.train.models import build_model

METHODS = ("ibp", "crown-ibp", "crown", "fast-lin", "forward", "alpha-crown", "mixtrain", "clean")

#: Below this many steps the ibp-paper schedule's learning-rate drops (at 25 % and 42 % of the run) would leave
#: too few full-rate steps to learn anything; such short runs drop the rate at 80 % and 90 % instead.
SHORT_RUN_STEPS = 5000
SHORT_RUN_MILESTONES = (0.8, 0.9)
#: Fewer steps than this rarely give a useful certified model (the demo takes about 900); the user is warned.
TOO_SHORT_STEPS = 300


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in every checkpoint)."""

    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "tiny"
    method: str = "ibp"
    eps: float = 0.1                       # evaluation radius
    eps_train: float | None = None         # training radius (default: eps)
    epochs: int = 10
    batch_size: int = 100                  # global batch (split across ranks)
    lr: float = 1e-3
    schedule: str = "ibp-paper"            # "ibp-paper" (Appendix A, scaled) or "custom"
    warmup_epochs: float = 0.0             # for schedule="custom"
    rampup_epochs: float = 0.0             # for schedule="custom"
    lr_milestones: tuple[float, ...] = ()  # epochs, for schedule="custom"
    ramp: str = "linear"
    kappa_final: float = 0.5
    beta_final: float = 0.0
    mixtrain_k: int = 1
    mixtrain_alpha: float = 0.5
    mixtrain_method: str = "ibp"
    mixtrain_every: int = 0                # dynamic α period in epochs (0 = fixed α)
    reg_r1: float = 0.0                    # Zhu et al. regularizer weights
    reg_r2: float = 0.0
    eval_limit: int = 1000                 # test images for the per-epoch clean/verified check
    max_train: int | None = None           # use only the first N training images
    seed: int = 0
    init: str = "torch"                    # "torch" defaults or "paper" (Sonnet: truncated normal, zero bias)
    out: str = "boundc_runs/run"
    max_steps: int | None = None           # stop (and checkpoint) after this many steps: for tests / time limits
    progress: bool = True

    def schedule_obj(self, steps_per_epoch: int) -> schedules.Schedule:
        """The ε/κ/β/LR schedule in steps."""
        total = self.epochs * steps_per_epoch
        eps_train = self.eps if self.eps_train is None else self.eps_train
        if self.schedule == "ibp-paper":
            s = schedules.ibp_paper(eps_train, total, self.kappa_final, self.lr, self.ramp)
            milestones = s.lr_milestones
            if self.is_short_run(steps_per_epoch):
                milestones = tuple(int(total * f) for f in SHORT_RUN_MILESTONES)
            return schedules.Schedule(**{**asdict(s), "beta_final": self.beta_final, "lr_milestones": milestones})
        return schedules.Schedule(
            total_steps=total, eps_train=eps_train, warmup_steps=int(self.warmup_epochs * steps_per_epoch),
            rampup_steps=max(int(self.rampup_epochs * steps_per_epoch), 1), kappa_final=self.kappa_final,
            beta_final=self.beta_final, lr=self.lr,
            lr_milestones=tuple(int(e * steps_per_epoch) for e in self.lr_milestones), ramp=self.ramp)

    def is_short_run(self, steps_per_epoch: int) -> bool:
        """Whether the ibp-paper schedule is shortened (see :data:`SHORT_RUN_STEPS`)."""
        return self.schedule == "ibp-paper" and self.epochs * steps_per_epoch < SHORT_RUN_STEPS

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Rebuild from a checkpoint's dict (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        if "lr_milestones" in d:
            d["lr_milestones"] = tuple(d["lr_milestones"])
        return cls(**d)


@dataclass
class TrainState:
    """Mutable progress: position, α, history of per-epoch metrics."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    alpha: float = 0.5
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0


class Objective(nn.Module):
    """The training objective as a module (so DistributedDataParallel can wrap it).

    ``forward(x, y, eps, kappa, beta, alpha, step)`` returns the loss; the last
    :class:`~boundc.train.losses.LossOutput` is kept in ``self.last`` for logging.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, clip: tuple[float, float], example: Tensor) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.clip = clip
        self.__dict__["cache"] = losses.BoundCache(model, example)   # not a submodule: params live in model
        self.last: losses.LossOutput | None = None

    def forward(self, x: Tensor, y: Tensor, eps: float, kappa: float, beta: float, alpha: float,
                step: int) -> Tensor:
        """Loss of one (local) batch at the given schedule values."""
        cfg, m, c = self.cfg, self.model, self.cache
        if cfg.method == "clean":
            out = losses.ibp_loss(m, c, x, y, 0.0, 1.0, self.clip)
        elif cfg.method == "crown-ibp":
            out = losses.crown_ibp_loss(m, c, x, y, eps, kappa, beta, self.clip)
        elif cfg.method == "mixtrain":
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            k = max(1, cfg.mixtrain_k // _world())
            out = losses.mixtrain_loss(m, c, x, y, eps, alpha, k, self.clip, cfg.mixtrain_method, g)
        else:
            out = losses.bound_loss(m, c, x, y, eps, kappa, self.clip, cfg.method)
        loss = out.loss
        if (cfg.reg_r1 or cfg.reg_r2) and eps > 0:
            r1, r2 = losses.tightness_regularizers(m, c, x, y, eps, self.clip,
                                                   "crown-ibp" if cfg.method == "crown-ibp" else cfg.method)
            loss = loss + cfg.reg_r1 * r1 + cfg.reg_r2 * r2
        self.last = out
        return loss


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def init_distributed() -> bool:
    """Initialise the process group when launched by torchrun (gloo on CPU, nccl on GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.is_initialized()


def save_checkpoint(path: Path, cfg: TrainConfig, state: TrainState, model: nn.Module,
                    opt: torch.optim.Optimizer) -> None:
    """Atomically write config, state, model and optimizer to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"config": asdict(cfg), "state": asdict(state), "model": model.state_dict(),
                "optimizer": opt.state_dict()}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`."""
    return torch.load(path, map_location="cpu", weights_only=False)


def _load_weights(model: nn.Module, state: dict, where: str) -> None:
    """``model.load_state_dict(state)``; weights that do not fit the rebuilt model are a :class:`BoundcError`."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise BoundcError(f"{where}: the stored weights do not fit the model it describes ({first})") from err


def model_from_checkpoint(ckpt: dict, data: Dataset | None = None) -> tuple[nn.Module, TrainConfig, Dataset]:
    """Rebuild the trained model (eval mode), its config and its dataset from a checkpoint."""
    cfg = TrainConfig.from_dict(ckpt["config"])
    data = data or load_dataset(cfg.dataset, cfg.data_dir)
    model = build_model(cfg.model, data.in_shape, data.num_classes, cfg.seed, cfg.init)
    _load_weights(model, ckpt["model"], "checkpoint")
    return model.eval(), cfg, data


class Trainer:
    """Runs a :class:`TrainConfig`: ``Trainer(cfg).fit()`` returns the final summary dict."""

    def __init__(self, cfg: TrainConfig, data: Dataset | None = None, resume: str | None = None) -> None:
        init_distributed()
        self.cfg = cfg
        self.data = data or load_dataset(cfg.dataset, cfg.data_dir)
        self.out = Path(cfg.out)
        self.model = build_model(cfg.model, self.data.in_shape, self.data.num_classes, cfg.seed, cfg.init)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.state = TrainState(alpha=cfg.mixtrain_alpha)
        if resume:
            ck = load_checkpoint(resume)
            _load_weights(self.model, ck["model"], f"checkpoint {resume}")
            self.opt.load_state_dict(ck["optimizer"])
            self.state = TrainState(**ck["state"])
        n = len(self.data.train) if cfg.max_train is None else min(cfg.max_train, len(self.data.train))
        self.n_train = n
        self.steps_per_epoch = n // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise BoundcError(f"--batch-size {cfg.batch_size} is larger than the {n} training images: no step "
                              "per epoch")
        self.schedule = cfg.schedule_obj(self.steps_per_epoch)
        #: Remarks on the run for the user (the CLI prints them).
        self.notes: list[str] = []
        if cfg.is_short_run(self.steps_per_epoch):
            total = cfg.epochs * self.steps_per_epoch
            self.notes.append(f"short run ({total} steps < {SHORT_RUN_STEPS}): the ibp-paper schedule's learning-rate "
                              f"drops are moved to steps {', '.join(map(str, self.schedule.lr_milestones))} "
                              f"(80% and 90% of the run) so that the model still learns")
        total = cfg.epochs * self.steps_per_epoch
        if total < TOO_SHORT_STEPS:
            self.notes.append(f"warning: only {total} training steps ({cfg.epochs} epochs of {self.steps_per_epoch}); "
                              f"certified training rarely gives a useful model in fewer than {TOO_SHORT_STEPS} "
                              "(raise --epochs; `boundc demo` takes about 900)")
        self.objective = Objective(self.model, cfg, self.data.clip, self.data.train.x[:2])
        self.wrapped: nn.Module = self.objective
        if _world() > 1:
            if cfg.batch_size % _world():
                raise ValueError(f"batch size {cfg.batch_size} must be divisible by the {_world()} processes")
            self.wrapped = nn.parallel.DistributedDataParallel(self.objective)

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that writes files and shows the progress bar)."""
        return _rank() == 0

    def _order(self, epoch: int) -> Tensor:
        return torch.randperm(self.n_train, generator=torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch))

    def checkpoint(self) -> Path:
        """Write ``checkpoint.pt`` in the output directory (rank 0 only); returns its path."""
        path = self.out / "checkpoint.pt"
        if self.is_main:
            save_checkpoint(path, self.cfg, self.state, self.model, self.opt)
        return path

    def train_step(self, xb: Tensor, yb: Tensor) -> dict:
        """One optimisation step on a global batch (this rank's slice of it)."""
        st, cfg = self.state, self.cfg
        v = self.schedule.at(st.step)
        for g in self.opt.param_groups:
            g["lr"] = v.lr
        w, r = _world(), _rank()
        local = cfg.batch_size // w
        xb, yb = xb[r * local:(r + 1) * local], yb[r * local:(r + 1) * local]
        torch.manual_seed(cfg.seed * 1_000_003 + st.step)
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        loss = self.wrapped(xb, yb, v.eps, v.kappa, v.beta, st.alpha, st.step)
        loss.backward()
        self.opt.step()
        out = self.objective.last
        stats = torch.tensor([float(loss.detach()) * len(yb), float((out.logits.argmax(1) == yb).sum()),
                              float((out.margin_lower > 0).all(1).sum()) if out.margin_lower is not None else 0.0,
                              float(len(yb))])
        if w > 1:
            dist.all_reduce(stats)
        st.step += 1
        return {"loss": float(stats[0] / stats[3]), "clean": float(stats[1] / stats[3]),
                "verified": float(stats[2] / stats[3]), "eps": v.eps, "kappa": v.kappa, "lr": v.lr}

    def fit(self) -> dict:
        """Train to the end (or ``max_steps``), checkpointing every epoch and on Ctrl-C."""
        from tqdm import tqdm

        cfg, st, d = self.cfg, self.state, self.data
        bs = cfg.batch_size
        try:
            while st.epoch < cfg.epochs:
                order = self._order(st.epoch)
                bar = tqdm(total=self.steps_per_epoch, initial=st.batch_in_epoch, desc=f"epoch {st.epoch + 1}/"
                           f"{cfg.epochs}", disable=None if (cfg.progress and self.is_main) else True, dynamic_ncols=True)
                sums = {"loss": 0.0, "clean": 0.0, "verified": 0.0}
                seen = 0
                t0 = time.perf_counter()
                while st.batch_in_epoch < self.steps_per_epoch:
                    if cfg.max_steps is not None and st.step >= cfg.max_steps:
                        bar.close()
                        st.train_seconds += time.perf_counter() - t0
                        self.checkpoint()
                        return self.summary(stopped=True)
                    idx = order[st.batch_in_epoch * bs:(st.batch_in_epoch + 1) * bs]
                    s = self.train_step(d.train.x[idx], d.train.y[idx])
                    st.batch_in_epoch += 1
                    seen += 1
                    for k in sums:
                        sums[k] += s[k]
                    bar.set_postfix(loss=f"{s['loss']:.3f}", clean=f"{s['clean']:.2f}", ver=f"{s['verified']:.2f}",
                                    eps=f"{s['eps']:.3f}", kappa=f"{s['kappa']:.2f}", refresh=False)
                    bar.update(1)
                bar.close()
                st.train_seconds += time.perf_counter() - t0
                st.epoch += 1
                st.batch_in_epoch = 0
                record = {"epoch": st.epoch, "step": st.step, **{f"train_{k}": v / max(seen, 1)
                                                                  for k, v in sums.items()},
                          **self._epoch_eval(), "eps_train": s["eps"] if seen else None,
                          "kappa": s["kappa"] if seen else None, "alpha": st.alpha, "seconds": st.train_seconds}
                if cfg.method == "mixtrain" and cfg.mixtrain_every:
                    dyn = losses.DynamicAlpha(alpha=st.alpha, every=cfg.mixtrain_every)
                    st.alpha = dyn.update(st.epoch, record["test_clean"])
                st.history.append(record)
                if self.is_main:   # also with progress=False: one line per epoch, never carriage returns
                    print(f"epoch {st.epoch}: loss {record['train_loss']:.4f}  test clean {record['test_clean']:.4f}"
                          f"  test verified(ibp, eps={cfg.eps}) {record['test_verified']:.4f}", flush=True)
                self.checkpoint()
        except KeyboardInterrupt:
            self.checkpoint()
            if self.is_main:
                print(f"\ninterrupted: checkpoint saved to {self.out / 'checkpoint.pt'} (use --resume)", flush=True)
            raise
        summary = self.summary()
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train.json").write_text(json.dumps(summary, indent=2))
            plot_history(st.history, self.out / "curves.png", title=f"{cfg.model} {cfg.method} eps={cfg.eps}",
                         eps_final=self.schedule.eps_train)
        return summary

    def _epoch_eval(self) -> dict:
        n = min(self.cfg.eval_limit, len(self.data.test))
        res = evaluate(self.model, self.data.test.x[:n], self.data.test.y[:n],
                       EvalConfig(self.cfg.eps, ("ibp",), pgd_steps=0, clip=self.data.clip),
                       self.objective.cache, self.data.num_classes)
        return {"test_clean": res.clean, "test_verified": res.verified.get("ibp", 0.0)}

    def summary(self, stopped: bool = False) -> dict:
        """Config, schedule, final state and history as a JSON-able dict."""
        return {"config": asdict(self.cfg), "schedule": asdict(self.schedule), "world_size": _world(),
                "steps": self.state.step, "epochs_done": self.state.epoch, "stopped_early": stopped,
                "train_seconds": self.state.train_seconds, "history": self.state.history}


def train_verified_series(history: list[dict], eps_final: float | None) -> dict[str, tuple[list, list]]:
    """The train verified accuracy split at the end of the ε ramp: ``{label: (epochs, values)}``.

    During warm-up and ramp-up the training batches are verified at a smaller ε than ``eps_final``, so those
    values are not comparable with the rest (a tiny ε verifies almost everything); they get their own label."""
    ramp, full = ([], []), ([], [])
    for h in history:
        eps = h.get("eps_train")
        done = eps_final is None or (eps is not None and eps >= eps_final * (1 - 1e-9))
        target = full if done else ramp
        target[0].append(h["epoch"])
        target[1].append(h["train_verified"])
    out = {}
    if ramp[0]:
        out["train verified acc (during the eps ramp: at a smaller eps)"] = ramp
    if full[0]:
        out[f"train verified acc (at eps_train = {eps_final:g})" if eps_final is not None
            else "train verified acc (at eps_train)"] = full
    return out


def plot_history(history: list[dict], path: str | Path, title: str = "", eps_final: float | None = None) -> None:
    """PNG of the per-epoch curves: train loss, test clean and verified accuracy (see :func:`train_verified_series`
    for the train verified curve)."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, [h["train_loss"] for h in history], marker="o")
    a1.set_xlabel("epoch")
    a1.set_ylabel("train loss")
    a2.plot(ep, [h["test_clean"] for h in history], marker="o", label="test clean acc")
    a2.plot(ep, [h["test_verified"] for h in history], marker="s", label="test verified acc (IBP)")
    for label, (e, v) in train_verified_series(history, eps_final).items():
        a2.plot(e, v, ls=":" if "ramp" in label else "--", label=label)
    a2.set_xlabel("epoch")
    a2.set_ylim(0, 1)
    a2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
