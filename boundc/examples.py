"""Built-in example networks: the model zoo used by the CLI, tests, benchmarks and training.

``build(name, in_shape=(1, 28, 28), num_classes=10)`` returns a fresh model;
``EXAMPLES`` lists the names with a one-line description.  The IBP paper's CNNs
follow Table 1 of Gowal et al. (small/medium without padding, large with
same-padding).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _flat(in_shape: tuple[int, ...]) -> int:
    n = 1
    for d in in_shape:
        n *= d
    return n


def _conv_stack(in_shape: tuple[int, ...], specs: list[tuple[int, int, int]], same: bool) -> tuple[list, int]:
    """Conv+ReLU layers from (channels, kernel, stride) specs; returns layers and flat output size."""
    c, h, w = in_shape
    layers: list[nn.Module] = []
    for out, k, s in specs:
        pad = (k - 1) // 2 if same else 0
        layers += [nn.Conv2d(c, out, k, stride=s, padding=pad), nn.ReLU()]
        h, w = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
        c = out
    return layers, c * h * w


def mlp(in_shape=(1, 28, 28), num_classes=10, hidden=(256, 256), act: type[nn.Module] = nn.ReLU) -> nn.Module:
    """Fully connected network (default 784-256-256-10 with ReLU)."""
    layers: list[nn.Module] = [nn.Flatten()]
    n = _flat(in_shape)
    for h in hidden:
        layers += [nn.Linear(n, h), act()]
        n = h
    return nn.Sequential(*layers, nn.Linear(n, num_classes))


def ibp_small(in_shape=(1, 28, 28), num_classes=10) -> nn.Module:
    """IBP paper small CNN: Conv16 4x4+2, Conv32 4x4+1, FC100, FC10."""
    layers, n = _conv_stack(in_shape, [(16, 4, 2), (32, 4, 1)], same=False)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(n, 100), nn.ReLU(), nn.Linear(100, num_classes))


def ibp_medium(in_shape=(1, 28, 28), num_classes=10) -> nn.Module:
    """IBP paper medium CNN: Conv32 3x3+1, Conv32 4x4+2, Conv64 3x3+1, Conv64 4x4+2, FC512, FC512, FC10."""
    layers, n = _conv_stack(in_shape, [(32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 4, 2)], same=False)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(n, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, num_classes))


def ibp_large(in_shape=(1, 28, 28), num_classes=10) -> nn.Module:
    """IBP paper large CNN: Conv64 3x3+1, Conv64 3x3+1, Conv128 3x3+2, Conv128 3x3+1, Conv128 3x3+1, FC512, FC10."""
    layers, n = _conv_stack(in_shape, [(64, 3, 1), (64, 3, 1), (128, 3, 2), (128, 3, 1), (128, 3, 1)], same=True)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(n, 512), nn.ReLU(), nn.Linear(512, num_classes))


class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-ReLU-conv-BN plus an identity or 1x1 projection skip."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.skip(x))


class ResNet(nn.Module):
    """A small ResNet: stem, identity block, projection block, global average pool, FC."""

    def __init__(self, in_shape=(1, 28, 28), num_classes=10, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_shape[0], width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = BasicBlock(width, width, 1)
        self.block2 = BasicBlock(width, 2 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet(in_shape=(1, 28, 28), num_classes=10) -> nn.Module:
    """Small ResNet with BatchNorm and identity + projection skips."""
    return ResNet(in_shape, num_classes)


def sigmoid_tanh_mlp(in_shape=(1, 28, 28), num_classes=10) -> nn.Module:
    """MLP with sigmoid and tanh activations."""
    n = _flat(in_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(n, 64), nn.Sigmoid(), nn.Linear(64, 64), nn.Tanh(),
                         nn.Linear(64, num_classes))


def pool_net(in_shape=(1, 28, 28), num_classes=10) -> nn.Module:
    """CNN with average and max pooling."""
    c, h, w = in_shape
    return nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * (h // 4) * (w // 4), num_classes))


def bn_pool_net(in_shape=(1, 28, 28), num_classes=10) -> nn.Module:
    """CNN with BatchNorm and average pooling: (conv-BN-ReLU-avgpool) x 2, fc 20, fc."""
    c, h, w = in_shape
    return nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(16 * (h // 4) * (w // 4), 20), nn.ReLU(), nn.Linear(20, num_classes))


class KitchenSink(nn.Module):
    """Exercises the rest of the op vocabulary: normalisation, leaky ReLU, hardtanh,
    softplus, conv1d, pad, permute/transpose, concat, mul/div/neg by constants, skips."""

    def __init__(self, in_shape=(1, 28, 28), num_classes=10) -> None:
        super().__init__()
        c, h, w = in_shape
        self.register_buffer("mean", torch.full((1, c, 1, 1), 0.13))
        self.register_buffer("std", torch.full((1, c, 1, 1), 0.31))
        self.conv = nn.Conv2d(c, 6, 3, stride=2, dilation=1, padding=1)
        self.grouped = nn.Conv2d(6, 6, 3, padding=1, groups=3)
        self.conv1d = nn.Conv1d(6, 4, 3)
        self.bn = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)
        hh, ww = (h + 1) // 2, (w + 1) // 2
        self.fc1 = nn.Linear(4 * (hh * ww + 2 - 2) + 6 * hh * ww, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = F.leaky_relu(self.conv(x), 0.1)
        y = F.hardtanh(self.grouped(x), -2.0, 2.0) * 0.5 + x / 3.0
        z = y.flatten(2)                                          # (B, 6, L)
        z = F.softplus(self.bn(self.conv1d(F.pad(z, (1, 1)))))    # (B, 4, L)
        t = y.permute(0, 2, 3, 1).transpose(1, 2)                 # (B, W, H, 6)
        feats = torch.cat([z.reshape(z.shape[0], -1), -t.reshape(t.shape[0], -1)], dim=1)
        feats = self.drop(F.relu(self.fc1(feats)))
        return self.fc2(torch.tanh(feats) - 0.25 * feats)


def kitchen_sink(in_shape=(1, 28, 28), num_classes=10) -> nn.Module:
    """A network touching every supported op family."""
    return KitchenSink(in_shape, num_classes)


#: name -> (factory, description)
EXAMPLES: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "mlp": (mlp, "MLP 784-256-256-10 (ReLU)"),
    "small": (ibp_small, "IBP paper small CNN"),
    "medium": (ibp_medium, "IBP paper medium CNN"),
    "large": (ibp_large, "IBP paper large CNN"),
    "resnet": (resnet, "small ResNet with BatchNorm, identity and projection skips"),
    "sigmoid_tanh": (sigmoid_tanh_mlp, "MLP with sigmoid and tanh"),
    "pool": (pool_net, "CNN with average and max pooling"),
    "bn_pool": (bn_pool_net, "CNN with BatchNorm and average pooling"),
    "kitchen_sink": (kitchen_sink, "every supported op family"),
}


def build(name: str, in_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10, seed: int = 0) -> nn.Module:
    """A freshly initialised example network (eval mode, deterministic given ``seed``)."""
    if name not in EXAMPLES:
        raise ValueError(f"unknown example {name!r}; choose from {', '.join(EXAMPLES)}")
    torch.manual_seed(seed)
    model = EXAMPLES[name][0](in_shape, num_classes)
    with torch.no_grad():  # non-trivial BN statistics so BN is not the identity
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    return model.eval()
