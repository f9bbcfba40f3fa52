"""Small models for the APoZ tests, covering every source of ReLU the tracker must see."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pozfast.digits import DigitsCNN


class ResidualBlock(nn.Module):
    """torchvision BasicBlock-style: one nn.ReLU module called twice per forward."""

    def __init__(self, c: int = 6):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class ResNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.layer1 = nn.Sequential(ResidualBlock(), ResidualBlock())
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        x = self.layer1(F.relu(self.stem(x)))
        return self.head(x.mean((2, 3)))


class Functional(nn.Module):
    """Functional ReLU calls of every spelling; ``record`` collects their outputs for the reference."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3)
        self.fc1 = nn.Linear(5 * 6 * 6, 16)
        self.fc2 = nn.Linear(16, 12)
        self.fc3 = nn.Linear(12, 3)
        self.record: list | None = None

    def _keep(self, t):
        if self.record is not None:
            self.record.append(t.detach().clone())
        return t

    def forward(self, x):
        x = self._keep(F.relu(self.conv(x)))
        x = self._keep(torch.relu(self.fc1(x.flatten(1))))
        x = self._keep(self.fc2(x).relu_())
        x = self._keep(F.relu(x * 2 - 1, inplace=True))
        return self.fc3(self._keep(torch.relu_(x.clone())))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(inplace=True), nn.Linear(32, 5))


class TokenMLP(nn.Module):
    """Transformer-style feed-forward block on (N, L, C) token activations."""

    def __init__(self, d: int = 8, hidden: int = 24):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, hidden)
        self.act = nn.ReLU()
        self.down = nn.Linear(hidden, d)

    def forward(self, x):
        return x + self.down(self.act(self.up(self.norm(x))))


def vgg() -> nn.Module:
    return DigitsCNN(width=8, fc=32)


def no_relu() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))


def digits_batches(n: int = 3, batch: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch, 1, 8, 8, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
            for _ in range(n)]


class HelperFunctional(nn.Module):
    """Every ReLU is ``F.relu`` called from one helper method: keys ``<root>:0 ... <root>:3``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc1 = nn.Linear(6 * 4 * 4, 20)
        self.fc2 = nn.Linear(20, 16)
        self.fc3 = nn.Linear(16, 12)
        self.head = nn.Linear(12, 10)

    def _act(self, x):
        return F.relu(x)

    def forward(self, x):
        x = F.max_pool2d(self._act(self.bn(self.conv(x))), 2).flatten(1)
        x = self._act(self.fc1(x))
        x = self._act(self.fc2(x))
        return self.head(self._act(self.fc3(x)))


class CrepeLike(nn.Module):
    """conv, ReLU, BatchNorm, pool blocks (BN after the ReLU, as in CREPE), then flatten and two FC layers.

    ``padding`` sets the second convolution's zero padding, which sits between the first block's BN
    constant and the convolution.
    """

    def __init__(self, padding: int = 0):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.bn1 = nn.BatchNorm2d(8)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=padding, bias=False)
        self.relu2 = nn.ReLU()
        self.bn2 = nn.BatchNorm2d(6)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(6 * (4 if padding else 2) ** 2, 16)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        x = self.pool1(self.bn1(self.relu1(self.conv1(x))))
        x = self.bn2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters in every BatchNorm (as after training)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.5)
    return model


def kill_channels(conv: nn.Module, channels: list, bn: nn.Module | None = None) -> None:
    """Make ``channels`` of ``conv``'s output negative for every input (dead after a ReLU), through ``bn``
    when it sits between them."""
    with torch.no_grad():
        conv.weight[channels] = 0
        if conv.bias is not None:
            conv.bias[channels] = -1.0
        if bn is not None:
            bn.weight[channels] = 0
            bn.bias[channels] = -1.0


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot export it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(x) if float(x.sum()) > 0 else -self.fc(x)


class PlainCNN(nn.Module):
    """Convolutions and FC layers without BatchNorm or dropout: data-parallel fine-tuning on shards equals
    one process on their union (batch statistics would differ)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 4 * 4, 24)
        self.fc2 = nn.Linear(24, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))
