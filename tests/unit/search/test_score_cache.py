"""Scores kept in the cache come back exactly (values and dtypes), keyed by weights, inputs and method."""

import numpy as np
import torch

from hwprune.importance.cache import cached_scores, scores_path
from hwprune.importance.scores import Importance


def test_cached_scores_round_trip_exactly_and_are_keyed_by_inputs(tmp_path):
    batches = [torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))]
    path = scores_path(tmp_path, "abc", "activation", True, batches)
    scores = {"a": np.random.default_rng(0).random(16).astype(np.float32), "b": np.random.default_rng(1).random(8)}
    fresh = Importance("activation", scores, ["b"]), {"a": 0.123456789012345678, "b": 1e-17}
    calls = []

    def compute():
        calls.append(1)
        return fresh

    first = cached_scores(path, compute)
    second = cached_scores(path, compute)
    assert calls == [1] and not first[2] and second[2]
    importance, sensitivity, _ = second
    assert importance.method == "activation" and importance.fallbacks == ["b"] and sensitivity == fresh[1]
    for gid, values in scores.items():
        assert importance.scores[gid].dtype == values.dtype and np.array_equal(importance.scores[gid], values)
    other = [torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))]
    assert scores_path(tmp_path, "abc", "activation", True, other) != path
    assert scores_path(tmp_path, "abc", "l1", True, batches) != path
    assert scores_path(tmp_path, "abd", "activation", True, batches) != path
