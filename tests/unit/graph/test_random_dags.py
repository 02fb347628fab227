"""Property tests: on random DAGs of conv/BN/ReLU/add/concat/linear, removing zeroed channels is exact."""

import random

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hwprune.graph.analyze import analyze
from hwprune.transform.prune import prune
from tests.pruning_helpers import max_abs_diff, random_keep, zero_dropped_channels
from tests.random_dags import random_dag_models


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(drawn=random_dag_models(), seed=st.integers(0, 2**16), ratio=st.sampled_from([0.25, 0.5, 0.75]))
def test_random_dag_zeroed_channels_prune_exactly(drawn, seed, ratio):
    model, example = drawn
    with torch.no_grad():
        original_shape = model(example).shape
    analysis = analyze(model, example, "dag")
    assume(analysis.prunable())
    rng = random.Random(seed)
    keep = {g.id: random_keep(g, rng, ratio) for g in analysis.prunable()}
    for group_id, kept in keep.items():
        zero_dropped_channels(analysis, analysis.group(group_id), kept)
    with torch.no_grad():
        reference = model(example)
    pruned = prune(analysis, keep)
    with torch.no_grad():
        output = pruned(example)
    assert output.shape == original_shape
    assert max_abs_diff(reference, output) <= 1e-4 * max(1.0, float(reference.abs().max()))
