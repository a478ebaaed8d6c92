"""Models for certified training, selectable by name.

Names: everything in :data:`boundc.examples.EXAMPLES` (the IBP paper's
small/medium/large CNNs, the ResNet, ...), plus the MixTrain / Wong–Kolter
small and large CNNs and a tiny CNN for 8×8 inputs; or ``path/file.py:factory``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from boundc import examples


def _out(h: int, k: int, s: int, p: int) -> int:
    return (h + 2 * p - k) // s + 1


def wk_small(in_shape=(1, 28, 28), num_classes=10) -> nn.Module:
    """Wong–Kolter / MixTrain small CNN: Conv16 4x4+2 pad1, Conv32 4x4+2 pad1, FC100, FC10."""
    c, h, w = in_shape
    h, w = _out(_out(h, 4, 2, 1), 4, 2, 1), _out(_out(w, 4, 2, 1), 4, 2, 1)
    return nn.Sequential(nn.Conv2d(c, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * h * w, 100), nn.ReLU(), nn.Linear(100, num_classes))


def wk_large(in_shape=(1, 28, 28), num_classes=10) -> nn.Module:
    """Wong–Kolter / MixTrain large CNN: Conv32 3x3, Conv32 4x4+2, Conv64 3x3, Conv64 4x4+2, FC512, FC512, FC10."""
    c, h, w = in_shape
    for k, s in ((4, 2), (4, 2)):
        h, w = _out(h, k, s, 1), _out(w, k, s, 1)
    return nn.Sequential(nn.Conv2d(c, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 32, 4, 2, 1), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(), nn.Conv2d(64, 64, 4, 2, 1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(64 * h * w, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, num_classes))


def tiny_cnn(in_shape=(1, 8, 8), num_classes=10) -> nn.Module:
    """A tiny CNN for 8×8 inputs (the demo): Conv16 3x3+1, Conv32 4x4+2, FC64, FC10."""
    c, h, w = in_shape
    h, w = _out(_out(h, 3, 1, 0), 4, 2, 0), _out(_out(w, 3, 1, 0), 4, 2, 0)
    return nn.Sequential(nn.Conv2d(c, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 4, 2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32 * h * w, 64), nn.ReLU(), nn.Linear(64, num_classes))


TRAIN_MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "wk_small": (wk_small, "Wong-Kolter / MixTrain small CNN"),
    "mixtrain_small": (wk_small, "alias of wk_small (MixTrain's MNIST_Small)"),
    "wk_large": (wk_large, "Wong-Kolter / MixTrain large CNN"),
    "mixtrain_large": (wk_large, "alias of wk_large (MixTrain's MNIST_Large)"),
    "tiny": (tiny_cnn, "tiny CNN for 8x8 inputs (demo)"),
}


def model_names() -> list[str]:
    """All model names accepted by :func:`build_model`."""
    return sorted({**examples.EXAMPLES, **TRAIN_MODELS})


#: Weight initialisations: PyTorch's defaults, or the Sonnet defaults of Gowal et al.'s code.
INITS = ("torch", "paper")


def paper_init(model: nn.Module) -> nn.Module:
    """Sonnet's defaults (the IBP paper's code): weights ~ normal(0, 1/fan_in) truncated at
    two standard deviations, biases zero; applied to every Linear and Conv layer."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            std = 1.0 / math.sqrt(m.weight[0].numel())
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def build_model(name: str, in_shape: tuple[int, ...], num_classes: int, seed: int = 0,
                init: str = "torch") -> nn.Module:
    """A freshly initialised model (train mode) by name or ``path/file.py:factory``; seeded for
    reproducibility; ``init`` is one of :data:`INITS`."""
    if init not in INITS:
        from boundc.errors import BoundcError

        raise BoundcError(f"unknown init {init!r}; choose from {', '.join(INITS)}")
    torch.manual_seed(seed)
    if init == "paper":
        return paper_init(build_model(name, in_shape, num_classes, seed))
    if ":" in name and name.split(":")[0].endswith(".py"):
        from boundc.model_files import check_model_input, load_factory

        model = load_factory(name)
        check_model_input(model, in_shape, f"--model {name} (dataset inputs)", num_classes)
        return model.train()
    table = {**{k: v[0] for k, v in examples.EXAMPLES.items()}, **{k: v[0] for k, v in TRAIN_MODELS.items()}}
    if name not in table:
        from boundc.errors import BoundcError

        raise BoundcError(f"unknown model {name!r}; choose from {', '.join(model_names())} or file.py:factory")
    return table[name](in_shape, num_classes).train()
