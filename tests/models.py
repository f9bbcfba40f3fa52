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
