"""Model factories used by the CLI tests through the ``file.py:factory`` spec."""

import torch
from torch import nn


def tiny_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 4))
    return model, torch.randn(1, 3, 16, 16)


def wide_cnn():
    """Two 64-channel 3x3 convs at 32x32: compute, not per-op dispatch, dominates its time on any runtime, so its
    narrowest form is far below any budget a test asks for, however a busy machine times it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                          nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    return model.eval(), torch.randn(1, 3, 32, 32)


def module_only():
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())


class ChannelFlip(nn.Module):
    """Reverses the channel order: a channel-mixing op hwprune cannot prune through."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.flip(self.conv(x), dims=[1]))


def channel_flip():
    return ChannelFlip(), torch.randn(1, 3, 8, 8)


def broken():
    raise RuntimeError("factory exploded")


def not_a_model():
    return 42


class UntraceableHead(nn.Module):
    """Its forward converts a tensor to a Python number, which no tracer can follow."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return torch.tensor([[self.conv(x).sum().item()]])


def untraceable():
    return UntraceableHead(), torch.randn(1, 3, 4, 4)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden),
                                  nn.ReLU(), nn.Conv2d(hidden, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels))

    def forward(self, x):
        return torch.relu(x + self.body(x))


def small_resnet():
    """Stem, two residual blocks and a classifier: residual, plain and flatten-free groups."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                          ResidualBlock(32, 64), ResidualBlock(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(32, 10))
    return model.eval(), torch.randn(1, 3, 64, 64)


class ConstantGate(nn.Module):
    """A squeeze-excitation gate whose affine is a per-channel constant held as a buffer outside any
    layer, as models converted from ONNX hold it: it must be pruned with the gated channels."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.body = nn.Conv2d(32, 32, 3, padding=1)
        self.register_buffer("alpha", torch.full((1, 32, 1, 1), 0.2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(self.body(h))
        gate = torch.clamp(h.mean((2, 3), keepdim=True) * self.alpha + 0.5, 0, 1)
        return self.head(h * gate)


def constant_gate():
    torch.manual_seed(0)
    return ConstantGate().eval(), torch.randn(1, 3, 32, 32)


class ShapeInCode(nn.Module):
    """A per-channel tensor made in the forward, its size written in the code: no trace sees it, so
    only pruning the group for real shows that it cannot be pruned."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.body = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        h = torch.relu(self.body(torch.relu(self.stem(x))))
        return self.head(h * torch.linspace(0.5, 1.5, 32).reshape(1, 32, 1, 1))


def shape_in_code():
    torch.manual_seed(0)
    return ShapeInCode().eval(), torch.randn(1, 3, 32, 32)
