"""Regression tests for analyzer faults found by running Torch-Pruning's test models through hwprune:
each pattern gets the right verdict, and where a group is prunable, silenced channels compute what
removed ones do and zeroed-then-removed channels leave the output unchanged."""

import copy

import pytest
import torch
from torch import nn

from hwprune.errors import CaptureError
from hwprune.evaluate.mask import silenced
from hwprune.graph.analyze import analyze
from hwprune.transform.prune import prune
from tests.data.small_models import ConstantGate
from tests.pruning_helpers import max_abs_diff, pruned_exactly


class ChannelMeanGate(nn.Module):
    """h * sigmoid(h.mean(1)): a gate over the channel mean; removing any channel changes it."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        h = self.c1(x)
        return self.c2(h * torch.sigmoid(h.mean(1, keepdim=True)))


class SpatialMean(nn.Module):
    """Global average pooling written as .mean((-2, -1)): a reduction over space, not channels."""

    def __init__(self):
        super().__init__()
        self.c1, self.fc = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.c1(x).mean((-2, -1)))


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        h = self.c1(x)
        h.relu_()
        return self.c2(h)


class TransposedPlusConv(nn.Module):
    """A ConvTranspose output added to an (upsampled) Conv2d output: one group, both producers."""

    def __init__(self):
        super().__init__()
        self.stem, self.up = nn.Conv2d(3, 8, 3, padding=1), nn.ConvTranspose2d(8, 16, 2, stride=2)
        self.side, self.head = nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        h = self.stem(x)
        return self.head(self.up(h) + nn.functional.interpolate(self.side(h), scale_factor=2))


class BareParameters(nn.Module):
    """x * scale + shift with bare parameters outside any layer."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)
        self.scale = nn.Parameter(torch.rand(1, 16, 1, 1) + 0.5)
        self.shift = nn.Parameter(torch.rand(1, 16, 1, 1))

    def forward(self, x):
        return self.c2(self.c1(x) * self.scale + self.shift)


class SpatialSplitConcat(nn.Module):
    """chunk along height, concat along dim 2: every channel passes both."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)

    def forward(self, x):
        top, bottom = self.c1(x).chunk(2, dim=-2)
        return self.c2(torch.cat([bottom, top], dim=2))


def build(cls):
    torch.manual_seed(0)
    return cls().eval(), torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_per_channel_buffers_outside_layers_are_pruned_with_their_group():
    """The onnx2torch pattern (an SE gate's affine held as a buffer): a frozen parameter of the same
    name after analysis, pruned with the gated channels, the output exact."""
    model, x = build(ConstantGate)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    analysis = analyze(model, x, strict=False)
    assert model.state_dict().keys() == before.keys() and not model.alpha.requires_grad
    assert analysis.group("body").prunable
    keep = {"body": list(range(0, 32, 2))}
    dropped = {"body": list(range(1, 32, 2))}
    with silenced(analysis, dropped) as masked, torch.no_grad():
        reference = masked(x).clone()
    pruned = prune(analysis, keep)
    assert pruned.alpha.shape == (1, 16, 1, 1)
    with torch.no_grad():
        assert max_abs_diff(reference, pruned(x)) <= 1e-5 * max(1.0, float(reference.abs().max()))


class ConstantAfterLayer(nn.Module):
    """A layer's output times a constant (a buffer, or a bare parameter), read by a second layer: ``conv``
    (NCHW), ``conv1d`` (NCL, channels first at rank 3) or ``linear`` (NLC, channels last)."""

    LAYERS = {"conv": lambda: (nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)),
              "conv1d": lambda: (nn.Conv1d(3, 16, 3, padding=1), nn.Conv1d(16, 8, 1)),
              "linear": lambda: (nn.Linear(3, 16), nn.Linear(16, 8))}

    def __init__(self, kind: str, shape: tuple[int, ...], parameter: bool = False):
        super().__init__()
        self.a, self.b = self.LAYERS[kind]()
        constant = torch.rand(shape) + 0.5
        if parameter:
            self.const = nn.Parameter(constant)
        else:
            self.register_buffer("const", constant)

    def forward(self, x):
        return self.b(self.a(x) * self.const)


KEPT = [0, 2, 3, 5, 8, 9, 11, 12, 13, 15]  # 10 of the 16 channels of layer a


@pytest.mark.parametrize("kind, size, shape, pruned_shape", [
    ("conv", (8, 6), (1, 1, 8, 6), None),  # a spatial map: every channel meets it whole
    ("conv", (8, 16), (1, 1, 8, 16), None),  # ... its width equal to the channel count
    ("conv", (8, 6), (1, 1, 1, 1), None),  # one value for all
    ("conv", (8, 6), (1, 16, 1, 1), (1, 10, 1, 1)),  # per channel
    ("conv", (8, 6), (16, 1, 1), (10, 1, 1)),
    ("conv", (8, 6), (1, 16, 8, 6), (1, 10, 8, 6)),  # per channel and position: sliced along channels only
    ("conv1d", (16,), (1, 1, 16), None),  # per position, its length equal to the channel count
    ("conv1d", (10,), (1, 16, 10), (1, 10, 10)),
    ("linear", (10,), (1, 10, 1), None),  # per token
    ("linear", (16,), (16, 1), None),  # per token, as many tokens as channels
    ("linear", (10,), (10, 16), (10, 10)),  # a positional table
], ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_a_constant_is_sliced_only_along_the_channel_axis_of_the_output_it_meets(kind, size, shape, pruned_shape):
    """A constant broadcast into a layer's output is pruned with the layer's channels along the axis that
    holds them (1 after a conv, the last after a linear) and only there; one with size 1 on that axis holds
    no channels and stays a buffer that pruning leaves whole. Either way the group prunes exactly."""
    torch.manual_seed(0)
    model = ConstantAfterLayer(kind, shape).eval()
    x = torch.randn(1, *size, 3) if kind == "linear" else torch.randn(1, 3, *size)
    analysis = analyze(model, x, strict=False)
    assert analysis.group("a").prunable, analysis.group("a").reason
    assert ("const" in dict(model.named_buffers())) is (pruned_shape is None)
    dropped = {"a": sorted(set(range(16)) - set(KEPT))}
    with silenced(analysis, dropped) as masked, torch.no_grad():
        reference = masked(x).clone()
    assert max_abs_diff(reference, model(x)) > 1e-4
    pruned = prune(analysis, {"a": KEPT})
    assert tuple(pruned.const.shape) == (pruned_shape or shape)
    with torch.no_grad():
        assert max_abs_diff(reference, pruned(x)) <= 1e-5 * max(1.0, float(reference.abs().max()))


def test_a_bare_spatial_parameter_is_left_out_of_the_group_and_stays_trainable():
    """A learnt spatial map held as a bare parameter (no channels in it) is neither sliced nor frozen."""
    torch.manual_seed(0)
    model, x = ConstantAfterLayer("conv", (1, 1, 8, 16), parameter=True).eval(), torch.randn(1, 3, 8, 16)
    analysis = analyze(model, x, strict=False)
    assert analysis.group("a").prunable and model.const.requires_grad
    with silenced(analysis, {"a": sorted(set(range(16)) - set(KEPT))}) as masked, torch.no_grad():
        reference = masked(x).clone()
    pruned = prune(analysis, {"a": KEPT})
    assert pruned.const.shape == (1, 1, 8, 16) and isinstance(pruned.const, nn.Parameter)
    with torch.no_grad():
        assert max_abs_diff(reference, pruned(x)) <= 1e-5 * max(1.0, float(reference.abs().max()))


@pytest.mark.parametrize("cls, prunable", [(ChannelMeanGate, False), (SpatialMean, True), (InPlace, True),
                                           (TransposedPlusConv, True), (BareParameters, True),
                                           (SpatialSplitConcat, True)])
def test_verdict_at_batch_one_and_exact_removal(cls, prunable):
    model, x = build(cls)
    analysis = analyze(model, x, cls.__name__, strict=False)
    inner = [g for g in analysis.groups if not g.reason or "output" not in g.reason]
    assert inner and all(g.prunable == prunable for g in inner), [(g.id, g.reason) for g in inner]
    if not prunable:
        assert "channel" in inner[0].reason
        return
    pruned_exactly(analysis, x)


def test_a_channel_mean_gate_really_is_not_removable():
    """Why the verdict above is right: removing channels changes the gate for the rest."""
    model, x = build(ChannelMeanGate)
    analysis = analyze(copy.deepcopy(model), x, strict=False)
    with torch.no_grad():
        before = model(x)
        model.c1.weight[:8] = 0
        model.c1.bias[:8] = 0
        zeroed = model(x)
    assert max_abs_diff(before, zeroed) > 1e-4
    assert not analysis.group("c1").prunable


@pytest.mark.parametrize("example", [(torch.randn(1, 3, 16, 16),), [torch.randn(1, 3, 16, 16)]])
def test_a_one_tensor_sequence_is_accepted_and_anything_else_named(example):
    model, _ = build(InPlace)
    assert analyze(model, example, strict=False).prunable()
    with pytest.raises(CaptureError, match="must be one tensor"):
        analyze(build(InPlace)[0], (torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16)))
