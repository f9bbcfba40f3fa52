"""The embedded default: scikit-learn's bundled handwritten digits and a small VGG-style ReLU CNN.

scikit-learn ships the 1,797 8x8 digit images inside the package (``load_digits()``), so nothing is
downloaded. Used by ``pozfast apoz`` without arguments and by the trimming demo.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def load_digits_split(val_fraction: float = 0.25, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """(train, validation) datasets of (image (1, 8, 8) float32 in [0, 1], label int64), a fixed split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("the embedded digits data needs scikit-learn: pip install 'pozfast[demo]'") from exc
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(len(x) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


class DigitsCNN(nn.Module):
    """VGG-style: two conv blocks (conv-BN-ReLU x2, max-pool), then fc1-ReLU, fc2-ReLU and a classifier."""

    def __init__(self, width: int = 32, fc: int = 256, classes: int = 10):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                                 nn.MaxPool2d(2))

        self.features = nn.Sequential(block(1, width), block(width, 2 * width))
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(2 * width * 2 * 2, fc)
        self.relu1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(fc, fc)
        self.relu2 = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(fc, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.features(x))
        return self.classifier(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


def train_epochs(model: nn.Module, data: DataLoader, epochs: int, lr: float = 1e-3, seconds: float | None = None) -> None:
    """Plain Adam + cross-entropy training; stops early after ``seconds`` if given."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    start = time.monotonic()
    model.train()
    for _ in range(epochs):
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
            if seconds is not None and time.monotonic() - start > seconds:
                return


def default_model(epochs: int = 8, seed: int = 0) -> nn.Module:
    """A DigitsCNN trained for a few seconds on the digits training split (seeded)."""
    torch.manual_seed(seed)
    train, _ = load_digits_split(seed=seed)
    model = DigitsCNN()
    train_epochs(model, DataLoader(train, batch_size=64, shuffle=True,
                                   generator=torch.Generator().manual_seed(seed)), epochs)
    return model.eval()


def default_data(batch_size: int = 128, seed: int = 0) -> DataLoader:
    """The digits validation split as a DataLoader of (images, labels)."""
    _, val = load_digits_split(seed=seed)
    return DataLoader(val, batch_size=batch_size)
