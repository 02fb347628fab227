"""Unconstrained pruning: naive and reordered exports compute the masked model exactly; reordering
never needs more gathers than the naive export; the copy ops are counted in the ONNX graph."""

import copy
import random

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from hwprune.cost.copies import copy_signatures
from hwprune.cost.onnx_ops import input_shape, single_op_model
from hwprune.cost.signature import OpSignature
from hwprune.evaluate.mask import masked_readers
from hwprune.export.copies import copy_ops
from hwprune.export.onnx_export import export_onnx
from hwprune.graph.analyze import analyze
from hwprune.graph.segments import segments
from hwprune.graph.select import ChannelSelect
from hwprune.importance.readers import reader_scores
from hwprune.importance.scores import score_groups, select
from hwprune.search.readers import reader_masks
from hwprune.transform.realise import apply_plan
from tests.pruning_helpers import plan_of
from tests.random_dags import OpSpec, build_dag_model, random_dag_models
from tests.zoo import randomize_model


def pruning_setup(model: nn.Module, x: torch.Tensor, seed: int):
    """Random keep counts (at most 3/4 of each group): segments unconstrained, other groups constrained."""
    analysis = analyze(model, x, "model", strict=False)
    rng = random.Random(seed)
    counts = {g.id: max(1, int(g.channels * rng.uniform(0.25, 0.75))) // g.repeat * g.repeat or g.repeat
              for g in analysis.prunable()}
    found = segments(analysis)
    masks = reader_masks(reader_scores(analysis, found, [x]), counts)
    importance = score_groups(analysis, "l1")
    keep = {g.id: select(importance.scores[g.id], counts[g.id], g.repeat) for g in analysis.prunable()
            if g.id not in masks}
    return analysis, found, masks, keep


def exports(model: nn.Module, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict[bool, nn.Module], dict]:
    analysis, found, masks, keep = pruning_setup(model, x, seed)
    with masked_readers(analysis, found, {g: m.reads for g, m in masks.items()}, keep) as masked, torch.no_grad():
        reference = masked(x)
    built = {}
    for reorder in (False, True):
        fresh = analyze(copy.deepcopy(model), x[:1], "model", strict=False)
        built[reorder] = apply_plan(plan_of(fresh, keep, masks), fresh, reorder).eval()
    return reference, built, masks


def gathers(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, ChannelSelect) and not m.contiguous)


def small_densenet() -> nn.Module:
    """DenseNet-121's structure (dense blocks of concatenations, transitions) at test size;
    benchmarks/upscale.py checks densenet121 itself."""
    return torchvision.models.DenseNet(growth_rate=16, block_config=(4, 4), num_init_features=32, bn_size=2)


@pytest.mark.parametrize("name", ["resnet50", "small_densenet", "mobilenet_v2", "efficientnet_b0", "regnet_y_400mf"])
def test_naive_and_reordered_exports_equal_the_masked_model(name):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = small_densenet() if name == "small_densenet" else getattr(torchvision.models, name)()
    model = randomize_model(model, x).eval()
    reference, built, masks = exports(model, x, seed=1)
    assert any(len(set(mask.union)) > min(len(r) for r in mask.reads.values()) for mask in masks.values()), \
        "no reader reads less than the union: the test would not exercise selection"
    scale = max(1.0, float(reference.abs().max()))
    for model_ in built.values():
        with torch.no_grad():
            assert (model_(x) - reference).abs().max() <= 1e-4 * scale
    assert gathers(built[True]) <= gathers(built[False])
    assert sum(p.numel() for p in built[True].parameters()) < sum(p.numel() for p in model.parameters())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=random_dag_models(heads=("gap",)), seed=st.integers(0, 2**16))
def test_random_dags_export_exactly_with_and_without_reordering(drawn, seed):
    model, x = drawn
    assume(segments(analyze(copy.deepcopy(model), x, "dag", strict=False)))
    reference, built, _masks = exports(model, x, seed)
    scale = max(1.0, float(reference.abs().max()))
    for model_ in built.values():
        with torch.no_grad():
            assert (model_(x) - reference).abs().max() <= 1e-4 * scale
    assert gathers(built[True]) <= gathers(built[False])


class TwoReaders(nn.Module):
    """One tensor read by two 1x1 convs through ChannelSelects: one run and a scattered set."""

    def __init__(self):
        super().__init__()
        self.run = nn.Sequential(ChannelSelect([2, 3, 4], dim=1), nn.Conv2d(3, 4, 1))
        self.scattered = nn.Sequential(ChannelSelect([0, 5, 7], dim=1), nn.Conv2d(3, 4, 1))

    def forward(self, x):
        return self.run(x) + self.scattered(x)


def test_one_run_exports_as_a_slice_and_a_scattered_set_as_a_gather(tmp_path):
    model, x = TwoReaders().eval(), torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        assert torch.equal(model.run[0](x), x[:, 2:5]) and torch.equal(model.scattered[0](x), x[:, [0, 5, 7]])
    found = copy_ops(export_onnx(model, x, tmp_path / "m.onnx"))
    assert found["Slice"] == {"count": 1, "bytes": 3 * 25 * 4}
    assert found["Gather"] == {"count": 1, "bytes": 3 * 25 * 4}
    assert found["Concat"]["count"] == 0


def test_copy_signatures_price_each_select_as_the_op_it_exports_as():
    model, x = TwoReaders().eval(), torch.randn(2, 8, 5, 5)
    signatures = copy_signatures(model, x)
    assert signatures == {"run.0": OpSignature("slice", 2, 8, 3, 5, 5),
                          "scattered.0": OpSignature("gather", 2, 8, 3, 5, 5)}
    for sig in signatures.values():  # the profiler's single-op graphs compute such a copy
        session = ort.InferenceSession(single_op_model(sig))
        feed = np.arange(np.prod(input_shape(sig)), dtype=np.float32).reshape(input_shape(sig))
        out = session.run(None, {"x": feed})[0]
        assert out.shape == (2, 3, 5, 5)
        if sig.op == "slice":
            np.testing.assert_array_equal(out, feed[:, :3])
        assert sig.flops() == 0 and sig.bytes_moved() == 2 * 2 * 3 * 25 * 4


def test_a_group_its_classifier_reads_twice_is_scored_and_exported_exactly():
    """t3 = t1 + t1 and t4 = dw(dw(t1)) both reach the classifier: it reads each channel twice,
    and torch-pruning's importance then gives one score per read, not per channel."""
    specs = [OpSpec("conv", (0,), 2), OpSpec("conv", (1,), 2, kernel=3, depthwise=True), OpSpec("add", (1, 1), 2),
             OpSpec("conv", (2,), 2, kernel=3, depthwise=True)]
    model, x = build_dag_model(specs, head="gap")
    importance = score_groups(analyze(copy.deepcopy(model), x, "dag", strict=False), "l1")
    assert importance.fallbacks == ["layers.3.0"] and importance.scores["layers.3.0"].shape == (2,)
    reference, built, _masks = exports(model, x, seed=0)
    for model_ in built.values():
        with torch.no_grad():
            assert (model_(x) - reference).abs().max() <= 1e-4 * max(1.0, float(reference.abs().max()))
