"""The latency model's idea of every layer's width after pruning must match the pruned module.

For each zoo model, prune a random keep-set of every prunable group, then compare each conv and
linear layer's real (in, out) widths with what ``Layer.c_in`` and the predictor derive from the
kept counts: concatenations, flattened inputs, attention heads and grouped convolutions included;
and each attention core's heads with the pruned module's query heads.
"""

import random

import pytest
from torch import nn

from hwprune.cost.layers import model_layers
from hwprune.graph.analyze import analyze
from hwprune.graph.heads import heads_of
from hwprune.transform.prune import prune
from tests.pruning_helpers import random_keep
from tests.zoo import ZOO


@pytest.mark.parametrize("name", sorted(ZOO))
def test_predicted_widths_match_the_pruned_model(name):
    model, example = ZOO[name]()
    analysis = analyze(model, example, name)
    layers = model_layers(analysis)
    rng = random.Random(1)
    keep = {g.id: random_keep(g, rng, 0.5) for g in analysis.prunable()}
    counts = {gid: len(kept) for gid, kept in keep.items()}
    pruned = prune(analysis, keep)
    for layer in layers:
        if layer.signature.op == "attention":
            attention = heads_of(pruned.get_submodule(layer.name.removesuffix(":core")))
            assert layer.c_out(counts) == attention.query_heads, layer.name
            continue
        module = pruned.get_submodule(layer.name)
        real_in, real_out = ((module.in_channels, module.out_channels) if isinstance(module, nn.Conv2d)
                             else (module.in_features, module.out_features))
        c_out = layer.c_out(counts)
        c_in = c_out if layer.depthwise else layer.c_in(counts)
        assert (c_in, c_out) == (real_in, real_out), layer.name
