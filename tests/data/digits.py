"""scikit-learn's handwritten digits (8x8, upsampled to 16x16; 10 classes) as recovery data, and a small CNN trained on
them whose weights live in a file (so a plan's digest check passes in every process that loads it).

Data functions for ``--data``/``--eval-data``: ``train`` (a Dataset of (image, label), 1,437
images), ``test`` (batches of (images, labels), 360 images), ``unlabelled`` (batches of images),
plus deliberately bad ones for the error tests. ``digits_cnn`` is the model factory; it loads
``DIGITS_WEIGHTS`` when set.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.utils.data import TensorDataset

SIZE = (16, 16)


def _split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    # 16x16: at 8x8 a batch-1 run is mostly onnxruntime's per-call cost, too little to prune against
    images = nn.functional.interpolate(images, size=SIZE, mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    images, labels = images[order], labels[order]
    return images[:1437], labels[:1437], images[1437:], labels[1437:]


def build() -> nn.Module:
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(block(1, 32), block(32, 64), nn.MaxPool2d(2), block(64, 64), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, 10))


def digits_cnn() -> tuple[nn.Module, torch.Tensor]:
    model = build()
    weights = os.environ.get("DIGITS_WEIGHTS")
    if weights:
        model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval(), torch.zeros(1, 1, *SIZE)


def fit(epochs: int = 6, seed: int = 0) -> nn.Module:
    """The CNN trained on the training split (a few seconds)."""
    torch.manual_seed(seed)
    model = build()
    images, labels, _, _ = _split()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        model.train()
        for index in torch.randperm(len(labels)).split(64):
            loss = nn.functional.cross_entropy(model(images[index]), labels[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


def accuracy(model: nn.Module) -> float:
    _, _, images, labels = _split()
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).float().mean())


def train() -> TensorDataset:
    images, labels, _, _ = _split()
    return TensorDataset(images, labels)


def test() -> list[tuple[torch.Tensor, torch.Tensor]]:
    _, _, images, labels = _split()
    return list(zip(images.split(90), labels.split(90), strict=True))


def calib() -> list[torch.Tensor]:
    images, _, _, _ = _split()
    return list(images[:256].split(64))


def out_of_range() -> list[tuple[torch.Tensor, torch.Tensor]]:
    images, labels, _, _ = _split()
    return [(images[:32], labels[:32] + 10)]


def wrong_shape() -> list[torch.Tensor]:
    return [torch.zeros(8, 1, 8, 8)]


def empty() -> TensorDataset:
    return TensorDataset(torch.zeros(0, 1, *SIZE), torch.zeros(0, dtype=torch.long))
