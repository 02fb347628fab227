"""A CNN with 512-channel layers (where TensorRT targets predict a 2:4 gain) whose middle conv is
already 2:4 along its input channels: masking it costs nothing, so a joint search must take it.
Max-pools between the blocks keep the convolutions from merging (no other depth option competes)."""

import torch
from torch import nn

from hwprune.sparsity.masks import nm_mask


class WideNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(64, 512, 3, padding=1), nn.BatchNorm2d(512), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(512, 512, 3, padding=1), nn.BatchNorm2d(512), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(512, 512, 3, padding=1), nn.BatchNorm2d(512), nn.ReLU())
        self.fc = nn.Linear(512, 10)

    def forward(self, x):
        pool = nn.functional.max_pool2d
        x = self.c(pool(self.b(pool(self.a(self.stem(x)), 3, 1, 1)), 3, 1, 1))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def wide_net():
    torch.manual_seed(0)
    model = WideNet().eval()
    with torch.no_grad():
        weight = model.b[0].weight
        weight.mul_(nm_mask(weight, 2, 4))
    return model, torch.randn(32, 3, 8, 8)


def wide_net_permuted():
    """``wide_net`` with its middle conv 2:4 only in a shuffled order of its input channels: masking it
    in place loses weight, a channel permutation of the group it reads recovers all of it."""
    torch.manual_seed(0)
    model = WideNet().eval()
    with torch.no_grad():
        weight = model.b[0].weight
        order = torch.randperm(weight.shape[1], generator=torch.Generator().manual_seed(1))
        weight.mul_(nm_mask(weight[:, order], 2, 4)[:, torch.argsort(order)])
    return model, torch.randn(32, 3, 8, 8)
