"""Permuting a coupled channel group is a symmetry of the network: the outputs must not change.

The torchvision models get random BatchNorm affine parameters and statistics estimated on random
inputs: with the untouched initial statistics (mean 0, variance 1) a permutation that forgot a
statistic would go unnoticed, and with arbitrary ones activations saturate until the output no
longer depends on the input at all. Exactness is checked in float32 against an absolute
tolerance, and float32 rounding alone already moves these random deep nets' logits by about 1e-5
of their magnitude (mobilenet_v2 unpermuted vs float64: 9e-6 at max |logit| 1), whatever the
summation order; so the classifier is scaled to logits of at most 0.25, which leaves the rounding
of the reordered sums well below the tolerance while a misplaced channel still moves them by
> 1e-3. Analyses are cached per model; tests that permute one restore it.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch
import torchvision
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from hwprune.errors import PlanError
from hwprune.evaluate.batchnorm import recalibrate_batchnorm
from hwprune.graph.analyze import Analysis, analyze
from hwprune.transform.permute import permutable, permute_group
from tests.pruning_helpers import max_abs_diff
from tests.random_dags import OpSpec, build_dag_model, random_dag_models
from tests.zoo import ZOO

TOLERANCE = 1e-5
TORCHVISION = ("resnet18", "mobilenet_v2", "densenet121")
ALIASING = re.compile("does not hold every channel equally often|holds two channels at index|more than once")
SLOW = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """These inputs are tiny: a second intra-op thread only waits, and on a busy machine it waits long."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Case:
    analysis: Analysis
    example: torch.Tensor
    reference: torch.Tensor
    groups: list[str]  # the ids permutable accepts


@functools.cache
def torchvision_case(name: str) -> Case:
    """A randomly initialised torchvision model, analysed once: every test restores what it permutes."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    _randomize_per_channel(model)
    recalibrate_batchnorm(model, [torch.randn(4, 3, 64, 64)])
    example = torch.randn(1, 3, 64, 64)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        scale = 4 * float(model(example).abs().max())
        classifier.weight /= scale
        classifier.bias /= scale
    analysis = analyze(model, example, name, strict=False)
    return Case(analysis, example, _run(model, example), accepted(analysis))


def _randomize_per_channel(model: nn.Module) -> None:
    """Distinct per-channel values (their defaults are all equal), so forgetting to move one shows."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                module.running_mean.normal_(0.0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
            norm = isinstance(module, nn.modules.batchnorm._NormBase | nn.LayerNorm | nn.GroupNorm)
            if norm and module.weight is not None:
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
            if isinstance(module, nn.PReLU):
                module.weight.uniform_(0.0, 0.5)


def _run(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(example)


@contextmanager
def restored(model: nn.Module) -> Iterator[None]:
    """Put every parameter and buffer of ``model`` back afterwards (in place: the analysis stays valid)."""
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        yield
    finally:
        model.load_state_dict(saved)


def accepted(analysis: Analysis) -> list[str]:
    return [g.id for g in analysis.groups if permutable(analysis, g.id) is None]


def shuffled(channels: int, rng: random.Random) -> list[int]:
    order = list(range(channels))
    rng.shuffle(order)
    return order


@pytest.mark.parametrize("name", TORCHVISION)
def test_every_prunable_torchvision_group_permutes_exactly(name):
    """Each prunable group in turn, on top of the ones before: the output stays within tolerance."""
    case = torchvision_case(name)
    other = _run(case.analysis.model, torch.randn_like(case.example))
    assert max_abs_diff(other, case.reference) > 0.05, "an output that ignores the input would hide errors"
    assert case.groups == [g.id for g in case.analysis.prunable()]
    rng = random.Random(name)
    with restored(case.analysis.model):
        for group_id in case.groups:
            permute_group(case.analysis, group_id, shuffled(case.analysis.group(group_id).channels, rng))
            assert max_abs_diff(_run(case.analysis.model, case.example), case.reference) <= TOLERANCE, group_id


@settings(SLOW, max_examples=30)
@given(name=st.sampled_from(TORCHVISION), data=st.data())
def test_permuting_several_torchvision_groups_keeps_outputs(name, data):
    case = torchvision_case(name)
    chosen = data.draw(st.lists(st.sampled_from(case.groups), min_size=1, max_size=5, unique=True))
    with restored(case.analysis.model):
        for group_id in chosen:
            order = data.draw(st.permutations(range(case.analysis.group(group_id).channels)))
            permute_group(case.analysis, group_id, order)
        assert max_abs_diff(_run(case.analysis.model, case.example), case.reference) <= TOLERANCE


@settings(SLOW, max_examples=15)
@given(name=st.sampled_from(("resnet18", "mobilenet_v2")), data=st.data())
def test_inverse_permutation_restores_every_tensor_bit_for_bit(name, data):
    case = torchvision_case(name)
    analysis, model = case.analysis, case.analysis.model
    group_id = data.draw(st.sampled_from(case.groups))
    order = data.draw(st.permutations(range(analysis.group(group_id).channels)))
    inverse = sorted(range(len(order)), key=order.__getitem__)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with restored(model):
        permute_group(analysis, group_id, order)
        permute_group(analysis, group_id, inverse)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@settings(SLOW, max_examples=150)
@given(case=random_dag_models(), data=st.data())
def test_permuting_random_dag_groups_keeps_outputs(case, data):
    model, example = case
    analysis = analyze(model, example, "dag", strict=False)
    reference = _run(model, example)
    for group in analysis.prunable():  # only channels that alias each other (see below) stop a prunable group
        reason = permutable(analysis, group.id)
        assert reason is None or ALIASING.search(reason), group.id
    groups = accepted(analysis)
    assume(groups)
    for group_id in data.draw(st.lists(st.sampled_from(groups), min_size=1, unique=True)):
        permute_group(analysis, group_id, data.draw(st.permutations(range(analysis.group(group_id).channels))))
        assert max_abs_diff(_run(model, example), reference) <= TOLERANCE, group_id


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_accepted_zoo_group_permutes_exactly_in_float64(name):
    """Deep random zoo nets (regnet) amplify float32 rounding past 1e-5; float64 leaves only real errors."""
    torch.manual_seed(0)
    model, example = ZOO[name]()
    analysis = analyze(model, example, name, strict=False)
    model.double()
    example = example.double() if example.is_floating_point() else example
    reference = _run(model, example)
    rng = random.Random(name)
    for group_id in accepted(analysis):
        permute_group(analysis, group_id, shuffled(analysis.group(group_id).channels, rng))
        assert max_abs_diff(_run(model, example), reference) <= 1e-10, group_id
    assert all(p.dtype == torch.float64 for p in model.parameters())


MOVED = {  # model: (group, tensors whose dim 0 holds its channels, tensors whose dim 1 does)
    "resnet18": ("conv1", ("conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                           "layer1.0.conv2.weight", "layer1.1.bn2.running_var"),
                 ("layer1.0.conv1.weight", "layer2.0.conv1.weight", "layer2.0.downsample.0.weight")),
    "mobilenet_v2": ("features.1.conv.0.0",  # the depthwise conv is the root, the stem conv a producer
                     ("features.1.conv.0.0.weight", "features.1.conv.0.1.running_var", "features.0.0.weight",
                      "features.0.1.running_mean"), ("features.1.conv.1.weight",)),
}


@pytest.mark.parametrize("name", sorted(MOVED))
def test_permutation_moves_every_tensor_of_the_group(name):
    """Producer rows, BN statistics, depthwise filters, residual partners and consumer columns all move."""
    case = torchvision_case(name)
    analysis, model = case.analysis, case.analysis.model
    group_id, rows, columns = MOVED[name]
    old = {k: v.clone() for k, v in model.state_dict().items()}
    order = shuffled(analysis.group(group_id).channels, random.Random(1))
    with restored(model):
        permute_group(analysis, group_id, order)
        new = model.state_dict()
        assert all(torch.equal(new[key], old[key][order]) for key in rows)
        assert all(torch.equal(new[key], old[key][:, order]) for key in columns)
        assert not torch.equal(new[rows[0]], old[rows[0]])
        assert max_abs_diff(_run(model, case.example), case.reference) <= TOLERANCE
    with restored(model), torch.no_grad():  # moving only the producer rows is not a symmetry: the check can fail
        producer = model.get_submodule(group_id).weight
        producer.copy_(producer[order])
        assert max_abs_diff(_run(model, case.example), case.reference) > 1e-3


def _norms_conv() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.GroupNorm(1, 8), nn.ReLU(),
        nn.Conv2d(8, 6, 1), nn.GroupNorm(6, 6), nn.ReLU(),
        nn.Conv2d(6, 4, 1), nn.GroupNorm(2, 4), nn.ReLU(),
        nn.Conv2d(4, 5, 1), nn.InstanceNorm2d(5, affine=True, track_running_stats=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))


def _conv1d_flatten() -> nn.Module:
    return nn.Sequential(nn.Conv1d(3, 6, 3, padding=1), nn.BatchNorm1d(6), nn.ReLU(), nn.Conv1d(6, 4, 1),
                         nn.Flatten(), nn.Linear(32, 2))


def _conv3d_depthwise() -> nn.Module:
    return nn.Sequential(nn.Conv3d(3, 6, 3, padding=1), nn.BatchNorm3d(6), nn.ReLU(),
                         nn.Conv3d(6, 6, 3, padding=1, groups=6), nn.Conv3d(6, 4, 1), nn.Flatten(),
                         nn.Linear(256, 2))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 24), nn.BatchNorm1d(24),
                         nn.PReLU(24), nn.Linear(24, 5))


def _layernorm_over_chw() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LayerNorm([4, 8, 8]), nn.ReLU(), nn.Conv2d(4, 5, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2))


def _grouped_conv() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def _transposed_consumer() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(6, 4, 2, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def _weight_norm_consumer() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), weight_norm(nn.Conv2d(6, 4, 1)), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


class _TinyAttention(nn.Module):
    """Tokens -> linear embedding -> residual multi-head self-attention -> classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attention = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return self.head(h + self.attention(h, h, h, need_weights=False)[0])


MODULE_KINDS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], dict[str, str]]] = {
    # name: (factory, input shape, {group id: expected refusal})
    "norms_conv": (_norms_conv, (2, 3, 8, 8), {"9": "GroupNorm 10 normalises blocks of 2", "16": "not prunable"}),
    "conv1d_flatten": (_conv1d_flatten, (2, 3, 8), {"5": "not prunable"}),
    "conv3d_depthwise": (_conv3d_depthwise, (2, 3, 4, 4, 4), {"6": "not prunable"}),
    "mlp": (_mlp, (4, 16), {"6": "not prunable"}),
    "layernorm_over_chw": (_layernorm_over_chw, (1, 3, 8, 8), {"0": "LayerNorm 1 normalises over several dims",
                                                                "6": "not prunable"}),
    "grouped_conv": (_grouped_conv, (1, 3, 8, 8), {"0": "grouped convolution", "2": "grouped convolution",
                                                   "5": "not prunable"}),
    "transposed_consumer": (_transposed_consumer, (1, 3, 8, 8), {"0": "unsupported layer 2 (ConvTranspose2d)",
                                                                 "2": "unsupported layer 2 (ConvTranspose2d)",
                                                                 "6": "not prunable"}),
    "weight_norm_consumer": (_weight_norm_consumer, (1, 3, 8, 8), {"0": "2 computes its weights",
                                                                   "2": "2 computes its weights",
                                                                   "6": "not prunable"}),
    # embed's group is the residual width (embed and out_proj write it): permuted like any linear layer's
    "attention": (_TinyAttention, (2, 5, 6), {"attention:heads": "attention heads", "attention.v_proj": "not prunable",
                                              "head": "not prunable"}),
}


@pytest.mark.parametrize("name", sorted(MODULE_KINDS))
def test_module_kinds_are_permuted_exactly_or_refused(name):
    factory, shape, refusals = MODULE_KINDS[name]
    torch.manual_seed(0)
    model = factory().eval()
    _randomize_per_channel(model)
    example = torch.randn(*shape)
    analysis = analyze(model, example, name, strict=False)
    reasons = {g.id: permutable(analysis, g.id) for g in analysis.groups}
    assert {k for k, v in reasons.items() if v} == set(refusals)
    assert all(expected in reasons[k] for k, expected in refusals.items()), reasons
    reference = _run(model, example)
    rng = random.Random(name)
    for group_id in accepted(analysis):
        permute_group(analysis, group_id, shuffled(analysis.group(group_id).channels, rng))
        assert max_abs_diff(_run(model, example), reference) <= TOLERANCE, group_id
    for group_id, reason in reasons.items():
        if reason:
            with pytest.raises(PlanError, match=re.escape(reason)):
                permute_group(analysis, group_id, list(range(analysis.group(group_id).channels)))


def test_group_whose_channels_alias_is_refused():
    """t3 = cat(t1, bn(t1)) + proj(t1): channels c and c + 2 of the group are both channel c of t1."""
    specs = [OpSpec("conv", (0,), 2), OpSpec("bn", (1,), 2), OpSpec("cat", (1, 2), 4),
             OpSpec("add", (3, 1), 4, proj=True)]
    model, example = build_dag_model(specs)
    analysis = analyze(model, example, "aliased", strict=False)
    assert not analysis.group("projs.3.0").prunable  # removing one channel would remove two
    reason = permutable(analysis, "projs.3.0")
    assert reason is not None and ALIASING.search(reason)
    with pytest.raises(PlanError, match=re.escape(reason)):
        permute_group(analysis, "projs.3.0", [2, 3, 0, 1])


def test_refused_group_is_left_untouched():
    torch.manual_seed(0)
    model = _TinyAttention().eval()
    analysis = analyze(model, torch.randn(2, 5, 6), "attention", strict=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PlanError, match="attention heads"):
        permute_group(analysis, "attention:heads", [3, 2, 1, 0])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("order", [[0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5, 6],
                                   [0.0, 1, 2, 3, 4, 5], [-1, 0, 1, 2, 3, 4]])
def test_order_must_be_a_permutation_of_the_channels(order):
    torch.manual_seed(0)
    model = _conv1d_flatten().eval()
    analysis = analyze(model, torch.randn(2, 3, 8), "conv1d", strict=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PlanError, match=re.escape("permutation of range(6)")):
        permute_group(analysis, "0", order)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unknown_group_is_a_plan_error():
    analysis = analyze(_mlp().eval(), torch.randn(4, 16), "mlp", strict=False)
    with pytest.raises(PlanError, match="no channel group"):
        permutable(analysis, "missing")
