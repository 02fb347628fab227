"""Test helpers: make channels contribute nothing, then check that removing them is exact."""

from __future__ import annotations

import random

import torch
from torch import nn

from hwprune.evaluate.mask import silence_channels, silenced
from hwprune.graph.analyze import Analysis
from hwprune.graph.groups import ChannelGroup
from hwprune.transform.prune import prune


def random_keep(group: ChannelGroup, rng: random.Random, ratio: float = 0.5) -> list[int]:
    """A random keep-set of about ``ratio`` of the channels that meets the group's constraints."""
    block = group.channels // group.repeat
    count = max(1, round(block * ratio))
    local = rng.sample(range(block), count)
    return sorted(b * block + i for b in range(group.repeat) for i in local)


def zero_dropped_channels(analysis: Analysis, group: ChannelGroup, kept: list[int]) -> None:
    """Zero every producer weight of the channels not in ``kept``, so they output exactly 0."""
    silence_channels(analysis, group, sorted(set(range(group.channels)) - set(kept)))


def max_abs_diff(a: object, b: object) -> float:
    if isinstance(a, (tuple, list)):
        return max(max_abs_diff(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return max(max_abs_diff(a[k], b[k]) for k in a)
    if hasattr(a, "logits"):
        return max_abs_diff(a.logits, b.logits)
    return float((a - b).abs().max())


def width_plan(analysis: Analysis, predictor, importance, result, readers: dict | None = None):
    """The search's Plan for ``result`` (a ``SearchResult``), as a compile round would write it;
    ``readers`` (segment masks) makes those groups unconstrained."""
    from hwprune.frontends import state_digest
    from hwprune.plan import PlanBudget, Provenance
    from hwprune.search.decide import CalibrationBatches, Scores, SearchProblem, SearchSettings

    provenance = Provenance(analysis.name, "test", 0, tuple(analysis.capture.example_input.shape), (),
                            state_digest(analysis.model), "cpu", PlanBudget("latency", 0.5, 0.5),
                            predictor.provenance(), importance.method)
    search = SearchProblem(analysis, predictor, Scores(importance), SearchSettings("width", "structure", 16, 0.1),
                           provenance, CalibrationBatches([], False))
    return search.plan(result, result.predicted_ms, readers)


def plan_of(analysis: Analysis, keep: dict[str, list[int]], masks: dict | None = None):
    """A bare Plan for ``analysis``'s model: ``keep`` per constrained group, ``masks`` (segment
    masks) per unconstrained one."""
    from hwprune.plan import LatencyModelInfo, Plan, PlanBudget, Provenance, WidthDecision

    def of(gid: str) -> int:
        return analysis.group(gid).channels

    width = {gid: WidthDecision(len(kept), of(gid), list(kept)) for gid, kept in keep.items()}
    width.update({gid: WidthDecision(len(m.union), of(gid), list(m.union), dict(m.reads))
                  for gid, m in (masks or {}).items()})
    heads = {gid: d for gid, d in width.items() if analysis.group(gid).kind == "heads"}
    provenance = Provenance("test", "test", None, (), (), None, "cpu", PlanBudget("latency", 1.0, 1.0),
                            LatencyModelInfo("analytic", None, None, None, None, 1.0, 0.0), "test")
    return Plan(provenance, 0.0, 0.0, {g: d for g, d in width.items() if g not in heads}, heads)


def pruned_exactly(analysis: Analysis, x: torch.Tensor) -> nn.Module:
    """``analysis``'s model pruned at random keep sets of every prunable group, checked against the same
    channels silenced (which must change the output, or the check could not see a fault); returns it."""
    model = analysis.model
    rng = random.Random(0)
    keep = {g.id: random_keep(g, rng) for g in analysis.prunable()}
    dropped = {gid: sorted(set(range(analysis.group(gid).channels)) - set(kept)) for gid, kept in keep.items()}
    with silenced(analysis, dropped) as masked, torch.no_grad():
        reference = masked(x).clone()
    assert max_abs_diff(reference, model(x)) > 1e-4, "silencing changed nothing: the test would not see a fault"
    pruned = prune(analysis, keep)
    with torch.no_grad():
        assert max_abs_diff(reference, pruned(x)) <= 1e-4 * max(1.0, float(reference.abs().max()))
    return pruned
