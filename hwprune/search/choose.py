"""Among allocations that fit one predicted budget, keep the one whose outputs stay closest.

The width search weighs each group by a one-probe sensitivity; uniform allocation weighs all
groups alike. Neither wins everywhere: on random weights the sensitivity weighting kept clearly
more of the outputs (``benchmarks/budget_accuracy.py``), while on a CNN trained on real digits
uniform allocation kept more held-out accuracy (``benchmarks/digits_accuracy.py``). So the
compile proposes one allocation per strategy at the same predicted budget and scores each on
the calibration inputs with the model masked, not pruned (a silenced channel computes exactly
what a removed one does), BatchNorm re-estimated when the compile re-estimates it. On those
inputs the result is never less faithful than the uniform candidate at the same prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hwprune.errors import PlanError
from hwprune.evaluate.batchnorm import recalibrate_batchnorm, restored_batchnorm
from hwprune.evaluate.calibration import Comparison, Fidelity, output_tensors
from hwprune.evaluate.mask import silenced
from hwprune.graph.analyze import Analysis
from hwprune.importance.scores import Importance, select
from hwprune.search.width import SearchResult


@dataclass
class Candidate:
    strategy: str
    search: SearchResult
    quality: Fidelity
    real_inputs: bool  # calibration data from the user, not noise

    @property
    def score(self) -> float:
        """Cosine (every output's alike), averaged with top-1 agreement where the outputs are class
        scores worth ranking: on real inputs (on noise, a random-weight model's class decisions are
        near-ties that any pruning flips, and ranking by them picks at random)."""
        agreement = self.quality.top1_agreement
        if agreement is None or self.quality.caveat is not None or not self.real_inputs:
            return self.quality.overall_cosine
        return (self.quality.overall_cosine + agreement) / 2


def choose(analysis: Analysis, importance: Importance, strategies: dict[str, Callable[[], SearchResult]],
           batches: Sequence[torch.Tensor], real_inputs: bool, recalibration: Sequence[torch.Tensor] = (),
           depth_view: Callable[[nn.Module, SearchResult], nn.Module] | None = None) -> list[Candidate]:
    """Every strategy's allocation with its masked fidelity on ``batches``, best first (ties keep
    the strategies' order). A candidate with depth decisions runs as ``depth_view`` of the masked
    model gives it (blocks dropped, spans' activations removed: what the merged model computes),
    BatchNorm re-estimated after them."""
    model = analysis.model.eval()
    with torch.no_grad():
        references = [output_tensors(model(batch)) for batch in batches]
    candidates = []
    refused: list[PlanError] = []
    for strategy, search in strategies.items():
        try:
            result = search()
        except PlanError as exc:  # this strategy cannot reach the budget; another may (depth on a launch-bound target)
            refused.append(exc)
            continue
        dropped = {}
        for gid, count in result.counts.items():
            group = analysis.group(gid)
            kept = set(select(importance.scores[gid], count, group.repeat))
            dropped[gid] = [c for c in range(group.channels) if c not in kept]
        comparison = Comparison()  # batch by batch: one batch's outputs held at a time
        if result.depth and depth_view is not None:
            with silenced(analysis, dropped) as masked, restored_batchnorm(masked), torch.no_grad():
                viewed = depth_view(masked, result)
                if recalibration:
                    recalibrate_batchnorm(viewed, recalibration)
                for batch, reference in zip(batches, references, strict=True):
                    comparison.add(reference, output_tensors(viewed(batch)))
        else:
            with silenced(analysis, dropped, recalibration) as masked, torch.no_grad():
                for batch, reference in zip(batches, references, strict=True):
                    comparison.add(reference, output_tensors(masked(batch)))
        candidates.append(Candidate(strategy, result, comparison.fidelity(), real_inputs))
    if not candidates:
        raise refused[-1] if len(refused) == 1 else PlanError(
            "; ".join(dict.fromkeys(str(e) for e in refused)))
    return sorted(candidates, key=lambda c: -c.score)

