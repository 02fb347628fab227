"""Physical pruning: keep-sets are validated before any layer is touched; heads and .pt2 work."""

import random

import pytest
import torch
from torch import nn

from hwprune.errors import PlanError
from hwprune.frontends import load_model
from hwprune.graph.analyze import analyze
from hwprune.graph.attention import HeadAttention, convert_multihead_attention
from hwprune.graph.lift import lift_exported_program
from hwprune.transform.prune import prune
from tests.pruning_helpers import max_abs_diff, random_keep, zero_dropped_channels
from tests.zoo import ZOO


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("keep, message", [
    ({"nope": [0]}, "no channel group"),
    ({"fc_or_head": [0]}, "not prunable"),
    ({"prunable": []}, "at least one"),
    ({"prunable": [0, 0]}, "repeat"),
    ({"prunable": [10_000]}, "must lie in"),
])
def test_bad_keep_sets_fail_before_touching_the_model(keep, message):
    model, example = ZOO["resnet_basic"]()
    analysis = analyze(model, example)
    not_prunable = next(g for g in analysis.groups if not g.prunable)
    prunable = analysis.prunable()[0]
    named = {{"fc_or_head": not_prunable.id, "prunable": prunable.id}.get(k, k): v for k, v in keep.items()}
    good = {g.id: list(range(g.channels // 2)) for g in analysis.prunable()[1:]}
    before = state(model)
    with pytest.raises(PlanError, match=message):
        prune(analysis, {**good, **named})
    after = state(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_grouped_conv_keep_must_repeat_per_group():
    model, example = ZOO["resnext_grouped"]()
    analysis = analyze(model, example)
    grouped = next(g for g in analysis.prunable() if g.repeat > 1)
    block = grouped.channels // grouped.repeat
    with pytest.raises(PlanError, match="same channel positions"):
        prune(analysis, {grouped.id: [0] + [block + 1]})
    kept = random_keep(grouped, random.Random(1), 0.5)
    prune(analysis, {grouped.id: kept})
    assert any(isinstance(m, nn.Conv2d) and m.groups == grouped.repeat for m in model.modules())
    model(example)


def test_keeping_everything_changes_nothing():
    model, example = ZOO["tv_mobilenet_v2"]()
    with torch.no_grad():
        reference = model(example)
    analysis = analyze(model, example)
    before = sum(p.numel() for p in model.parameters())
    prune(analysis, {g.id: list(range(g.channels)) for g in analysis.prunable()})
    assert sum(p.numel() for p in model.parameters()) == before
    with torch.no_grad():
        assert max_abs_diff(reference, model(example)) == 0.0


def test_head_attention_matches_multihead_attention_with_masks():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    converted = HeadAttention.from_multihead(mha).eval()
    x = torch.randn(2, 7, 32)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 5:] = True
    causal = torch.ones(7, 7, dtype=torch.bool).triu(1)
    with torch.no_grad():
        for kwargs in ({}, {"key_padding_mask": padding}, {"attn_mask": causal}):
            expected = mha(x, x, x, need_weights=False, **kwargs)[0]
            actual = converted(x, x, x, **kwargs)[0]
            assert max_abs_diff(expected, actual) < 1e-5


def test_removing_heads_shrinks_attention_exactly():
    model, example = ZOO["bert_tiny"]()
    analysis = analyze(model, example)
    heads = [g for g in analysis.groups if g.kind == "heads"]
    assert heads and all(g.prunable and g.channels == 4 for g in heads)
    keep = {g.id: [0, 3] for g in heads}
    for group in heads:
        zero_dropped_channels(analysis, group, keep[group.id])
    with torch.no_grad():
        reference = model(example)
    prune(analysis, keep)
    attention = [m for m in model.modules() if isinstance(m, HeadAttention)]
    assert all(m.num_heads == 2 and m.q_proj.out_features == 2 * m.head_dim for m in attention)
    with torch.no_grad():
        assert max_abs_diff(reference, model(example)) < 1e-5


def test_conversion_reports_count():
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 3)
    assert convert_multihead_attention(model) == 3
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())


def test_exported_program_is_lifted_analysed_and_pruned(tmp_path):
    model, example = ZOO["vgg_flatten"]()
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (example,)), path)
    program = torch.export.load(path)
    lifted = lift_exported_program(program)
    with torch.no_grad():
        assert max_abs_diff(model(example), lifted(example)) == 0.0
    loaded = load_model(str(path))
    assert torch.equal(loaded.example_input, example)
    analysis = analyze(loaded.module, loaded.example_input)
    assert {g.kind for g in analysis.prunable()} >= {"plain", "flatten"}
    rng = random.Random(0)
    keep = {g.id: random_keep(g, rng) for g in analysis.prunable()}
    for group_id, kept in keep.items():
        zero_dropped_channels(analysis, analysis.group(group_id), kept)
    with torch.no_grad():
        reference = loaded.module(example)
    pruned = prune(analysis, keep)
    with torch.no_grad():
        assert max_abs_diff(reference, pruned(example)) <= 1e-4 * max(1.0, float(reference.abs().max()))
