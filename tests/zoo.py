"""A zoo of small PyTorch architectures for pruning exactness tests.

Physical (structured) channel pruning is only correct if *every* tensor that
is coupled to a pruned channel is sliced consistently: the producer's output
channels, BatchNorm / LayerNorm statistics, every consumer's input channels,
both operands of a residual add, the right offsets inside a ``torch.cat``, the
matching half of a ``torch.split`` / ``chunk``, depthwise / grouped convs, the
``C*H*W`` block of a Linear after ``flatten``, squeeze-excitation gates,
attention heads, embeddings, ...

Each entry in this zoo exercises one or more of those *coupling kinds* in a
network that is small enough (a forward takes a few milliseconds on CPU) to be
run many times inside a test. The typical exactness test is:

    model, x = ZOO[name]()
    ref = model(x)
    # prune channels whose removal is provably a no-op (e.g. zeroed
    # weights / BN gamma), or compare against a masked reference
    ...
    torch.testing.assert_close(pruned(x), ref)

To make sure pruning bugs are *not* masked by degenerate weights, every factory
randomises all normalisation layers (running mean / var, affine weight / bias)
and re-initialises parameters that torchvision initialises to all-zeros (e.g.
biases, the ViT head). BatchNorm running statistics are first calibrated on a
random batch (so activations stay O(1) through deep nets) and then perturbed.

Every factory seeds its own RNG (``torch.manual_seed`` inside a
``torch.random.fork_rng`` so the caller's global RNG state is left untouched)
and returns ``(model.eval(), example_input)``; calling it twice gives
bit-identical models and inputs.

Exposed names:

* ``ZOO``: ``dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]]``
* ``CONV_ZOO``: names of entries taking an image tensor ``N x 3 x H x W``
* ``DESCRIPTIONS``: ``dict[str, str]``, one line on the coupling covered.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

__all__ = ["CONV_ZOO", "DESCRIPTIONS", "ZOO", "randomize_model"]

Factory = Callable[[], "tuple[nn.Module, torch.Tensor]"]

ZOO: dict[str, Factory] = {}
CONV_ZOO: list[str] = []
DESCRIPTIONS: dict[str, str] = {}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _register(name: str, description: str, *, image: bool = True, seed: int = 0):
    """Register ``fn`` (which builds ``(model, input)``) as a seeded factory."""

    def deco(fn):
        def factory():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model, x = fn()
            model.eval()
            return model, x

        factory.__name__ = f"make_{name}"
        factory.__doc__ = description
        assert name not in ZOO, name
        ZOO[name] = factory
        DESCRIPTIONS[name] = description
        if image:
            CONV_ZOO.append(name)
        return factory

    return deco


_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


@torch.no_grad()
def randomize_model(model: nn.Module, calib_input: torch.Tensor | None = None) -> nn.Module:
    """Give ``model`` non-trivial norm params / stats. Uses the global RNG.

    1. parameters that are identically zero (biases, ViT head, class token...)
       are re-initialised with small random values;
    2. norm affine params get ``weight ~ U(0.5, 1.5)``, ``bias ~ N(0, 0.2)``;
    3. BatchNorm running stats are calibrated on ``calib_input`` (train-mode
       forward of the BN layers only, cumulative average) so that activations
       are well scaled, then perturbed: mean += N(0, 0.1)*std, var *= U(0.8, 1.25).
       Without ``calib_input`` they are drawn as mean ~ N(0, 0.2),
       var ~ U(0.5, 2).
    """
    model.eval()
    for p in model.parameters():
        if p.numel() > 0 and bool((p == 0).all()):
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.normal_(0.0, 1.0 / math.sqrt(max(fan_in, 1)))
            else:
                p.normal_(0.0, 0.1)

    norms = [m for m in model.modules() if isinstance(m, _NORM_TYPES)]
    for m in norms:
        if getattr(m, "weight", None) is not None:
            m.weight.uniform_(0.5, 1.5)
        if getattr(m, "bias", None) is not None:
            m.bias.normal_(0.0, 0.2)

    bns = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if not bns:
        return model
    if calib_input is not None:
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average == exact batch stats
            m.train()
        model(calib_input)
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom
            m.eval()
        for m in bns:
            std = m.running_var.clamp_min(1e-3).sqrt()
            m.running_mean.add_(torch.randn_like(m.running_mean) * 0.1 * std)
            m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.8, 1.25))
            m.running_var.clamp_min_(1e-3)
    else:
        for m in bns:
            m.running_mean.normal_(0.0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    return model


def _finish(model: nn.Module, input_shape, calib_batch: int = 4):
    """Randomise ``model`` (calibrating BN on a random batch), make the input."""
    calib = torch.randn(calib_batch, *input_shape[1:])
    randomize_model(model, calib)
    x = torch.randn(*input_shape)
    return model.eval(), x


def conv_bn_relu(cin, cout, k=3, stride=1, groups=1, relu=True, bias=False):
    layers = [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=bias),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _Head(nn.Module):
    """global average pool -> flatten -> Linear."""

    def __init__(self, cin, num_classes=10):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------
# hand-written CNNs
# --------------------------------------------------------------------------


class PlainConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(3, 8),
            conv_bn_relu(8, 16, stride=2),
            conv_bn_relu(16, 16, bias=True),
            conv_bn_relu(16, 24, stride=2),
        )
        self.head = _Head(24)

    def forward(self, x):
        return self.head(self.features(x))


@_register("plain_conv", "chain conv->BN->ReLU (no branching) -> GAP -> Linear: producer/consumer + BN coupling only")
def _plain_conv():
    return _finish(PlainConvNet(), (1, 3, 32, 32))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(3, 8)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))  # identity adds
        self.layer2 = nn.Sequential(BasicBlock(8, 16, stride=2), BasicBlock(16, 16))  # projection
        self.layer3 = BasicBlock(16, 24, stride=1)  # projection w/o stride
        self.head = _Head(24)

    def forward(self, x):
        return self.head(self.layer3(self.layer2(self.layer1(self.stem(x)))))


@_register("resnet_basic", "basic-block ResNet: identity residual adds (stem+block outputs share channels) and 1x1 projection shortcuts")
def _resnet_basic():
    return _finish(TinyResNet(), (1, 3, 32, 32))


class Bottleneck(nn.Module):
    def __init__(self, cin, width, cout, stride=1, groups=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class TinyBottleneckResNet(nn.Module):
    def __init__(self, groups=1, widths=(8, 16)):
        super().__init__()
        w1, w2 = widths
        self.stem = conv_bn_relu(3, 16)
        self.layer1 = nn.Sequential(
            Bottleneck(16, w1, 32, groups=groups),  # projection (16 -> 32)
            Bottleneck(32, w1, 32, groups=groups),  # identity
        )
        self.layer2 = nn.Sequential(
            Bottleneck(32, w2, 48, stride=2, groups=groups),  # strided projection
            Bottleneck(48, w2, 48, groups=groups),  # identity
        )
        self.head = _Head(48)

    def forward(self, x):
        return self.head(self.layer2(self.layer1(self.stem(x))))


@_register("resnet_bottleneck", "bottleneck ResNet (1x1-3x3-1x1, expansion): internal widths independent, block outputs coupled via identity/projection adds")
def _resnet_bottleneck():
    return _finish(TinyBottleneckResNet(groups=1), (1, 3, 32, 32))


@_register("resnext_grouped", "ResNeXt-style bottlenecks with grouped 3x3 conv (groups=4): in/out channels coupled per group, must prune group-uniformly")
def _resnext_grouped():
    return _finish(TinyBottleneckResNet(groups=4, widths=(16, 32)), (1, 3, 32, 32))


class InceptionBlock(nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, cp):
        super().__init__()
        self.b1 = conv_bn_relu(cin, c1, 1)
        self.b2 = nn.Sequential(conv_bn_relu(cin, c3r, 1), conv_bn_relu(c3r, c3, 3))
        self.b3 = nn.Sequential(
            conv_bn_relu(cin, c5r, 1), conv_bn_relu(c5r, c5, 3), conv_bn_relu(c5, c5, 3)
        )
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn_relu(cin, cp, 1))
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class TinyInception(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(3, 16, stride=2)
        self.inc1 = InceptionBlock(16, 4, 6, 8, 2, 4, 4)  # 20 out, unequal offsets
        self.pool = nn.MaxPool2d(2)
        self.inc2 = InceptionBlock(20, 8, 8, 12, 4, 6, 6)  # 32 out
        self.head = _Head(32)

    def forward(self, x):
        x = self.inc1(self.stem(x))
        return self.head(self.inc2(self.pool(x)))


@_register("inception", "GoogLeNet-like blocks: 4 parallel branches (1x1 / 1x1-3x3 / 1x1-3x3-3x3 / maxpool-1x1) concatenated; fan-out of one tensor to 4 consumers, cat offsets")
def _inception():
    return _finish(TinyInception(), (1, 3, 32, 32))


class DepthwiseSeparableNet(nn.Module):
    def __init__(self):
        super().__init__()
        chans = [(8, 16, 1), (16, 24, 2), (24, 24, 1), (24, 32, 2)]
        self.stem = conv_bn_relu(3, 8)
        blocks = []
        for cin, cout, s in chans:
            blocks += [
                conv_bn_relu(cin, cin, 3, stride=s, groups=cin),  # depthwise
                conv_bn_relu(cin, cout, 1),  # pointwise
            ]
        self.blocks = nn.Sequential(*blocks)
        self.head = _Head(32)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


@_register("depthwise_separable", "MobileNetV1-style depthwise (groups=C) + pointwise convs: depthwise in==out channel coupling passes through to the previous pointwise")
def _depthwise_separable():
    return _finish(DepthwiseSeparableNet(), (1, 3, 32, 32))


class SEBlock(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(c // r, c, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        s = self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))
        return x * s


class SENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(3, 16)
        self.conv1 = conv_bn_relu(16, 16)
        self.conv2 = conv_bn_relu(16, 16, relu=False)
        self.se1 = SEBlock(16)
        self.conv3 = conv_bn_relu(16, 24, stride=2)
        self.se2 = SEBlock(24, r=3)
        self.head = _Head(24)

    def forward(self, x):
        x = self.stem(x)
        # SE-ResNet block: residual add after the excitation multiply
        x = F.relu(self.se1(self.conv2(self.conv1(x))) + x)
        x = self.se2(self.conv3(x))
        return self.head(x)


@_register("se_handwritten", "hand-written squeeze-excitation (avgpool->1x1->ReLU->1x1->sigmoid->mul): gated tensor, gate expand conv and SE reduce conv coupled; one SE inside a residual")
def _se_handwritten():
    return _finish(SENet(), (1, 3, 32, 32))


class VGGFlatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(3, 8),
            nn.MaxPool2d(2),
            conv_bn_relu(8, 16),
            nn.MaxPool2d(2),
            conv_bn_relu(16, 12),
        )
        # input 16x16 -> 4x4 spatial -> 12*4*4 = 192 features
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(12 * 4 * 4, 32),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(32, 10),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@_register("vgg_flatten", "VGG-style conv features (12x4x4) flattened into Linear: one conv channel == a contiguous block of H*W=16 Linear inputs")
def _vgg_flatten():
    return _finish(VGGFlatten(), (1, 3, 16, 16))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(32, 48),
            nn.BatchNorm1d(48),
            nn.ReLU(),
            nn.Linear(48, 40),
            nn.GELU(),
            nn.LayerNorm(40),
            nn.Linear(40, 24),
            nn.ReLU(),
            nn.Linear(24, 5),
        )

    def forward(self, x):
        return self.net(x)


@_register("mlp", "pure MLP (Linear/BatchNorm1d/LayerNorm/ReLU/GELU): Linear out-features <-> next in-features, BN1d and LN coupling", image=False)
def _mlp():
    return _finish(MLP(), (2, 32))


class CatSplitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(3, 8)
        self.branch_a = conv_bn_relu(8, 6, 3)
        self.branch_b = conv_bn_relu(8, 10, 1)
        self.bn_cat = nn.BatchNorm2d(16)  # BN acting on the concatenated tensor
        self.cons_a = conv_bn_relu(6, 12, 3)
        self.cons_b = conv_bn_relu(10, 12, 1)
        self.head = _Head(12)

    def forward(self, x):
        x = self.stem(x)
        y = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        y = F.relu(self.bn_cat(y))
        ya, yb = torch.split(y, [6, 10], dim=1)
        return self.head(self.cons_a(ya) + self.cons_b(yb))


@_register("cat_split", "cat of two conv branches (6+10) -> BN on the cat -> torch.split([6,10]) into two consumers whose outputs are added")
def _cat_split():
    return _finish(CatSplitNet(), (1, 3, 16, 16))


class CatChunkNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(3, 8)
        self.branch_a = conv_bn_relu(8, 8, 3)
        self.branch_b = conv_bn_relu(8, 8, 3)
        self.dw = conv_bn_relu(16, 16, 3, groups=16)  # depthwise conv over the cat
        self.cons_a = conv_bn_relu(8, 10, 1)
        self.cons_b = conv_bn_relu(8, 6, 3)
        self.head = _Head(16)

    def forward(self, x):
        x = self.stem(x)
        y = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        y = self.dw(y)
        ya, yb = y.chunk(2, dim=1)
        return self.head(torch.cat([self.cons_a(ya), self.cons_b(yb)], dim=1))


@_register("cat_chunk", "cat of two conv branches (8+8) -> depthwise conv on the cat -> chunk(2) into two consumers -> cat again -> head")
def _cat_chunk():
    return _finish(CatChunkNet(), (1, 3, 16, 16))


class _Bottleneck(nn.Module):
    def __init__(self, c, shortcut):
        super().__init__()
        self.cv1, self.cv2, self.add = conv_bn_relu(c, c, 3), conv_bn_relu(c, c, 3), shortcut

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class _C2f(nn.Module):
    """YOLOv8's C2f: one conv chunked in two, bottlenecks on the second half, all pieces concatenated."""

    def __init__(self, cin, cout, n, shortcut):
        super().__init__()
        self.c = cout // 2
        self.cv1 = conv_bn_relu(cin, 2 * self.c, 1)
        self.cv2 = conv_bn_relu((2 + n) * self.c, cout, 1)
        self.m = nn.ModuleList(_Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class _SPPF(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.cv1, self.cv2 = conv_bn_relu(c, c // 2, 1), conv_bn_relu(2 * c, c, 1)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.pool(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class YoloStyleNet(nn.Module):
    """C2f blocks (with and without residuals), SPPF and a decoupled two-level head whose box and
    class branches are concatenated, flattened per level, joined along anchors and split again."""

    def __init__(self, boxes=16, classes=5):
        super().__init__()
        self.boxes, self.classes = boxes, classes
        self.stem = conv_bn_relu(3, 16, 3, stride=2)
        self.c2f_a = _C2f(16, 32, 2, shortcut=True)
        self.down = conv_bn_relu(32, 48, 3, stride=2)
        self.c2f_b = _C2f(48, 48, 1, shortcut=False)
        self.sppf = _SPPF(48)
        self.box = nn.ModuleList(nn.Sequential(conv_bn_relu(c, 16), nn.Conv2d(16, boxes, 1)) for c in (32, 48))
        self.cls = nn.ModuleList(nn.Sequential(conv_bn_relu(c, 12), nn.Conv2d(12, classes, 1)) for c in (32, 48))

    def forward(self, x):
        p3 = self.c2f_a(self.stem(x))
        p4 = self.sppf(self.c2f_b(self.down(p3)))
        levels = [torch.cat([box(p), cls(p)], 1) for p, box, cls in zip((p3, p4), self.box, self.cls, strict=True)]
        joined = torch.cat([level.view(level.shape[0], self.boxes + self.classes, -1) for level in levels], 2)
        box, cls = joined.split((self.boxes, self.classes), 1)
        return torch.cat([box, cls.sigmoid()], 1)


@_register("yolo_style", "YOLOv8-style: C2f (chunk(2), bottlenecks with and without residual adds, concat of the pieces), SPPF (max-pools concatenated), decoupled box/class head joined along anchors and split")
def _yolo_style():
    return _finish(YoloStyleNet(), (1, 3, 32, 32))


class YoloxHeadNet(nn.Module):
    """A YOLOX-style decoupled head as converters leave it: per level a branch, a box conv (4) and an objectness
    conv (1) concatenated, flattened and joined along anchors. torch-pruning cannot map the concat's offsets;
    the convs writing it meet it with their outputs only, so the branches before them stay prunable."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(3, 16, 3)
        self.down = conv_bn_relu(16, 24, 3, stride=2)
        self.branch = nn.ModuleList(conv_bn_relu(c, 20, 3) for c in (16, 24))
        self.box = nn.ModuleList(nn.Conv2d(20, 4, 1) for _ in range(2))
        self.obj = nn.ModuleList(nn.Conv2d(20, 1, 1) for _ in range(2))

    def forward(self, x):
        p3 = self.stem(x)
        levels = []
        for i, feature in enumerate((p3, self.down(p3))):
            g = self.branch[i](feature)
            levels.append(torch.cat([self.box[i](g), self.obj[i](g).sigmoid()], 1).flatten(2))
        return torch.cat(levels, 2).permute(0, 2, 1)


@_register("yolox_head", "YOLOX-style decoupled head: box and objectness convs concatenated per level, flattened and joined along anchors (offsets torch-pruning cannot map; the branches before stay prunable)")
def _yolox_head():
    return _finish(YoloxHeadNet(), (1, 3, 16, 16))


# --------------------------------------------------------------------------
# torchvision builds
# --------------------------------------------------------------------------


@_register("tv_resnet18", "torchvision resnet18: basic blocks, identity + projection residual adds across whole stages, maxpool stem")
def _tv_resnet18():
    return _finish(torchvision.models.resnet18(num_classes=10), (1, 3, 64, 64))


@_register("tv_mobilenet_v2", "torchvision mobilenet_v2(width_mult=0.35): inverted residuals, depthwise convs, ReLU6, residual adds on narrow (linear bottleneck) tensors")
def _tv_mobilenet_v2():
    return _finish(torchvision.models.mobilenet_v2(width_mult=0.35, num_classes=10), (1, 3, 64, 64))


@_register("tv_mobilenet_v3_small", "torchvision mobilenet_v3_small: SE (hardsigmoid gate) inside inverted residuals, hardswish, depthwise, Linear classifier after GAP")
def _tv_mobilenet_v3_small():
    return _finish(torchvision.models.mobilenet_v3_small(num_classes=10), (1, 3, 64, 64))


@_register("tv_efficientnet_b0", "torchvision efficientnet_b0: MBConv with SE (SiLU + sigmoid gate), depthwise, residual adds, (stochastic depth inactive in eval)")
def _tv_efficientnet_b0():
    return _finish(torchvision.models.efficientnet_b0(num_classes=10), (1, 3, 64, 64))


@_register("tv_regnet_y_400mf", "torchvision regnet_y_400mf: grouped 3x3 convs (group width 8) + SE + residual adds")
def _tv_regnet_y_400mf():
    return _finish(torchvision.models.regnet_y_400mf(num_classes=10), (1, 3, 64, 64))


@_register("tv_densenet_tiny", "torchvision DenseNet(growth 8, blocks (2,2)): dense concatenation, each layer's BN reads a growing cat; transition conv")
def _tv_densenet_tiny():
    model = torchvision.models.DenseNet(
        growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=10
    )
    return _finish(model, (1, 3, 32, 32))


@_register("tv_squeezenet1_1", "torchvision squeezenet1_1: Fire modules (squeeze 1x1 -> cat of expand 1x1 and expand 3x3), no BN, conv classifier")
def _tv_squeezenet1_1():
    return _finish(torchvision.models.squeezenet1_1(num_classes=10), (1, 3, 64, 64))


@_register("tv_vit_tiny", "torchvision VisionTransformer (2 layers, 4 heads, dim 64): patch conv, class token + pos embedding params, MHA in_proj/out_proj, MLP, LayerNorm, residuals")
def _tv_vit_tiny():
    model = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=10,
    )
    return _finish(model, (1, 3, 32, 32))


# --------------------------------------------------------------------------
# BERT-like text encoder
# --------------------------------------------------------------------------


class TinyBert(nn.Module):
    def __init__(self, vocab=100, d_model=64, max_len=16, nhead=4, ff=128, layers=2, n_cls=3):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d_model)
        self.pos_emb = nn.Embedding(max_len, d_model)
        self.register_buffer("position_ids", torch.arange(max_len).unsqueeze(0), persistent=False)
        self.emb_ln = nn.LayerNorm(d_model)
        layer = nn.TransformerEncoderLayer(
            d_model=d_model,
            nhead=nhead,
            dim_feedforward=ff,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.pooler = nn.Linear(d_model, d_model)
        self.classifier = nn.Linear(d_model, n_cls)

    def forward(self, input_ids):
        pos = self.position_ids[:, : input_ids.shape[1]]
        h = self.emb_ln(self.tok_emb(input_ids) + self.pos_emb(pos))
        h = self.encoder(h)
        pooled = torch.tanh(self.pooler(h[:, 0]))
        return self.classifier(pooled)


@_register("bert_tiny", "BERT-like encoder: token+position nn.Embedding -> LayerNorm -> 2x nn.TransformerEncoderLayer (MHA, GELU FFN) -> token-0 tanh pooler -> classifier; hidden dim coupled through every residual", image=False)
def _bert_tiny():
    model = TinyBert()
    randomize_model(model)
    ids = torch.randint(0, 100, (2, 16), dtype=torch.long)
    return model.eval(), ids


assert len(ZOO) >= 17, len(ZOO)
