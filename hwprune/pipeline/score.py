"""The score stage: what the search weighs (channel importance, group sensitivity, each depth option's
measured cost and each stack layer's influence, unconstrained readers' channel scores, N:M activation
norms), set up as the compile's search problem."""

from __future__ import annotations

import copy
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from hwprune.config import Criterion, Options, SearchKind
from hwprune.cost.copies import copy_signatures
from hwprune.cost.op_timing import profile
from hwprune.cost.predictor import TablePredictor, op_ms
from hwprune.cost.structural import stack_layers
from hwprune.graph.segments import segments
from hwprune.importance.activation_norms import input_norms
from hwprune.importance.cache import cached_scores, scores_path
from hwprune.importance.option_costs import CostTable, Taking, block_influence, depth_costs
from hwprune.importance.readers import reader_scores
from hwprune.importance.scores import ACTIVATION_BATCHES, Importance, score_groups
from hwprune.importance.sensitivity import group_sensitivity
from hwprune.io import cache_dir
from hwprune.pipeline.measure import Realiser
from hwprune.pipeline.prepare import Prepared
from hwprune.pipeline.steps import Step
from hwprune.plan import Plan, Provenance
from hwprune.recovery.distill import distillation_loss
from hwprune.search.decide import CalibrationBatches, Realisation, Scores, SearchProblem, SearchSettings
from hwprune.search.permutations import Permutations
from hwprune.targets import Target
from hwprune.transform.permute import permutable
from hwprune.transform.rewrite import unmerged
from hwprune.transform.sparsify import sparsify

TAKING = Taking(unmerged, distillation_loss)  # what costing a depth option takes of transform and recovery


def search_problem(prepared: Prepared, options: Options, recalibration: list[torch.Tensor], provenance: Provenance,
                   step: Step, console: Console) -> SearchProblem:
    """Score the groups (and depth options, and, unconstrained, each segment reader's channels) and set up
    the search."""
    analysis, predictor, calibration = prepared.analysis, prepared.cost.predictor, prepared.calibration
    with step("score"), Progress(console=console, transient=True) as progress:
        if calibration.random:
            console.print("  [yellow]warning:[/yellow] no --calib-data: importance and fidelity use random inputs")
        importance, sensitivity = _scores(prepared, options, recalibration, provenance, progress, console)
        sparse = [o.name for o in predictor.options.values() if o.kind == "sparse"]
        scales = (input_norms(analysis.model, sparse, calibration.batches[:ACTIVATION_BATCHES])
                  if sparse and options.sparsity_criterion == Criterion.ACTIVATION else {})
        costs, influence = _depth_scores(prepared, options, recalibration, provenance, scales, progress, console)
        readers = {}
        if options.unconstrained:
            started = time.perf_counter()
            readers = reader_scores(analysis, segments(analysis), calibration.batches[:1])
            console.print(f"  reader scores of {len(readers)} segments in {time.perf_counter() - started:.1f} s")
    copies = (partial(copies_ms, prepared.realiser, predictor, options.target, prepared.cost.table_path)
              if options.unconstrained else None)
    permutations = Permutations(lambda gid: permutable(analysis, gid) is None,
                                {name: norm.numpy().astype(np.float64) for name, norm in scales.items()})
    return SearchProblem(
        analysis, predictor, Scores(importance, sensitivity, costs, influence, readers),
        SearchSettings(options.search, options.allocation, options.target.channel_alignment, options.min_keep),
        provenance, CalibrationBatches(calibration.batches, not calibration.random, recalibration),
        Realisation(copies, partial(_depth_view, analysis.capture.example_input, prepared.realiser.calibration),
                    permutations))


def _scores(prepared: Prepared, options: Options, recalibration: list[torch.Tensor], provenance: Provenance,
            progress: Progress, console: Console) -> tuple[Importance, dict[str, float]]:
    """Channel importance and, where the allocation weighs it, group sensitivity: from the cache when these
    weights were scored on these inputs before (``importance.cache``)."""
    analysis, batches = prepared.analysis, prepared.calibration.batches
    weighs = options.allocation in ("auto", "sensitivity")

    def compute() -> tuple[Importance, dict[str, float]]:
        importance = score_groups(analysis, options.importance, batches)
        return importance, (group_sensitivity(analysis, importance, batches[0], progress, recalibration[:4])
                            if weighs else {})

    path = (scores_path(cache_dir() / "scores", provenance.state_sha256, options.importance.value, weighs,
                        [*batches, *recalibration[:4]]) if provenance.state_sha256 else None)
    importance, sensitivity, cached = cached_scores(path, compute)
    if cached:
        console.print(f"  importance{' and sensitivity' if weighs else ''} from {path}")
    return importance, sensitivity


def _depth_scores(prepared: Prepared, options: Options, recalibration: list[torch.Tensor], provenance: Provenance,
                  scales: dict[str, torch.Tensor], progress: Progress, console: Console
                  ) -> tuple[dict[str, float], dict[str, float]]:
    """Each priced depth option's measured output change (cached per weights and inputs) and each stack
    layer's block influence; none for a width search."""
    analysis, predictor, calibration = prepared.analysis, prepared.cost.predictor, prepared.calibration
    if options.search == SearchKind.WIDTH:
        return {}, {}
    if not predictor.options:
        console.print("  no depth options: no span merges or block drops this target's latency model prices")
        return {}, {}
    started = time.perf_counter()
    steps = options.depth_distil_steps
    training = calibration.batches[1:] or calibration.batches  # the cost is measured on batch 0
    table = CostTable(cache_dir() / "depth", provenance.state_sha256 or "",
                      [*calibration.batches, *recalibration[:4]], steps, options.sparsity_criterion)
    missing = table.missing(list(predictor.options.values()))
    table.add(depth_costs(analysis.model, analysis.capture.example_input, missing, calibration.batches[0],
                          recalibration[:4], progress, steps, training, scales, taking=TAKING))
    costs = {key: table.costs[key] for key in predictor.options}
    layers = stack_layers(predictor.options.values())
    influence = block_influence(analysis.model, layers, calibration.batches[0]) if layers else {}
    console.print(f"  depth importance of {len(costs)} options (merged spans, dropped blocks, N:M layers"
                  + (f"; each distilled {steps} steps first" if steps else "") + f"): {len(missing)} "
                  f"measured in {time.perf_counter() - started:.1f} s, the rest from {table.path}")
    return costs, influence


def _depth_view(example_input: torch.Tensor, calibration: list[torch.Tensor], model: nn.Module, plan: Plan
                ) -> nn.Module:
    """What a plan's depth and N:M decisions make of ``model`` (spans unmerged, linear maps fitted on
    ``calibration``): the view the search scores; N:M masks go on a copy, never on ``model``'s own weights."""
    viewed = unmerged(model, example_input, plan.merge, plan.depth, calibration)
    if plan.sparsity.layers:
        viewed = copy.deepcopy(viewed)
        sparsify(viewed, plan.sparsity.layers)
    return viewed


def copies_ms(realiser: Realiser, predictor: TablePredictor, target: Target, table_path: Path, plan: Plan) -> float:
    """The predicted time of a plan's copy ops (from its realised model), profiling any the table lacks."""
    signatures = copy_signatures(realiser(plan), realiser.analysis.capture.example_input)
    table = predictor.table
    if profile(signatures.values(), table, target):
        table.save(table_path)
    return sum(op_ms(table, table.get(sig).median_ms) for sig in signatures.values())
