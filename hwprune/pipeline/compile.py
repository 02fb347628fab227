"""``hwprune compile``: the driver over the stages. analyze -> cost model -> score -> search rounds
(search -> Plan -> transform -> export -> measure) -> verify -> measure -> report.

The budget is a fraction of the baseline's latency on the target. The search works on predicted
latency; on a target this host can run (onnxruntime) each round's plan is realised, exported and
measured against the baseline in one interleaved run, and the predicted budget re-scaled until a
round measures within 5% of the request (``search.refine``). On a TensorRT target the search runs
on the analytic model (every number labelled so); engines are built and timed where TensorRT and
a GPU exist, else ``build_engine.sh`` holds the trtexec lines. No TensorRT number is invented.

Artefacts are written to a staging folder inside ``out_dir`` and moved into place at the end,
``report.json`` last; a failed or interrupted compile leaves none that look finished.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from torch import nn

from hwprune.calibration import Calibration, box_agreement, fidelity, load_calibration
from hwprune.cost.copies import copy_signatures
from hwprune.cost.depth import stack_layers
from hwprune.cost.model_latency import offline_predictor, open_table, predictor_for
from hwprune.cost.predictor import TablePredictor, op_ms
from hwprune.cost.profiler import profile
from hwprune.cost.sparse import SparsityMode
from hwprune.decode import DECODE_FILES, decode_section, decode_summary
from hwprune.errors import HwpruneError, ModelSpecError, PlanError, first_line
from hwprune.evaluate.batchnorm import recalibrate_batchnorm
from hwprune.export.nm_check import nm_weights
from hwprune.export.onnx_export import export_onnx, slim_available
from hwprune.export.verify import verified, verify_onnx
from hwprune.graph.analyze import Analysis, analyze
from hwprune.graph.segments import segments
from hwprune.graph.stack import stack_ties
from hwprune.hf_layout import heads_fixed
from hwprune.importance.depth import CostTable, block_influence, depth_costs
from hwprune.importance.nm import input_norms
from hwprune.importance.readers import reader_scores
from hwprune.importance.scores import ACTIVATION_BATCHES, score_groups
from hwprune.importance.sensitivity import group_sensitivity
from hwprune.io import cache_dir, staged, write_text_atomic
from hwprune.models import NATIVE_FILES, HFModel, LoadedModel, save_native, state_digest
from hwprune.options import Budget, Options
from hwprune.plan import Plan, PlanBudget, Provenance, save_plan
from hwprune.profiling import profile_model
from hwprune.render import markdown, write_plots
from hwprune.report import Report, build_report, copy_counts, sparsity_section
from hwprune.runtime import Runner, Runtime, runtime_for
from hwprune.runtime.timing import Comparison
from hwprune.search.decide import Decision, WidthSearch
from hwprune.search.nm import Permutations
from hwprune.search.refine import Round, pick, refine
from hwprune.targets import Target
from hwprune.transform.apply import finish, realise, realise_unmerged
from hwprune.transform.depth import unmerged
from hwprune.transform.nm import sparsify
from hwprune.transform.permute import permutable
from hwprune.transform.trial import prove_prunable

ARTEFACTS = ("report.json", "report.md", "plan.json", "pruned.pt", "pruned_unmerged.pt", *NATIVE_FILES,
             "baseline.onnx", "pruned.onnx", "plots", "build_engine.sh", "baseline.engine", "pruned.engine",
             "timing.cache", "pruned.layers.json", "recovered.onnx", "recovered.pt", "recover", *DECODE_FILES)


def compile_model(loaded: LoadedModel, options: Options, out_dir: str | Path, console: Console | None = None
                  ) -> Report:
    """Run the whole pipeline; returns the report (also written to ``out_dir/report.json``). Log
    lines go to ``console`` (default: stderr, never wrapped, so CI logs keep each line whole)."""
    console = console or Console(stderr=True, soft_wrap=True)
    with staged(Path(out_dir), ARTEFACTS) as stage:  # report.json moves last: its presence means finished
        shared = _prepare(loaded, options, stage, console)
        report = _compile_point(shared, options, stage, console)
        if options.recovery is not None:
            from hwprune.recovery.run import recover

            recover(stage, options.recovery, console)
        return report


def compile_frontier(loaded: LoadedModel, options: Options, fractions: Sequence[float], out_dir: str | Path,
                     console: Console | None = None) -> list[Report]:
    """One compile per latency fraction, each in ``out_dir/latency-F/`` with its own search and measured
    refinement, sharing one analysis, latency table and importance tables; then ``out_dir/frontier.json``
    and ``frontier.png`` (measured latency against fidelity), written last."""
    from hwprune.render import write_frontier

    console = console or Console(stderr=True, soft_wrap=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reports: list[Report] = []
    shared = None
    for fraction in fractions:
        point = replace(options, budget=Budget("latency", fraction))
        console.print(f"[bold]frontier point: latency {fraction:g}[/bold]")
        folder = out / f"latency-{fraction:g}"
        with staged(folder, ARTEFACTS) as stage:
            shared = shared or _prepare(loaded, point, stage, console)
            reports.append(_compile_point(shared, point, stage, console))
        shared.baseline_onnx = folder / "baseline.onnx"  # the staged copy moved here
    with staged(out, ("frontier.json", "frontier.png")) as stage:
        write_frontier(reports, fractions, stage)
    return reports


@dataclass
class Shared:
    """What every budget of one model's compile shares: analysis, cost model, calibration, scores."""

    loaded: LoadedModel
    analysis: Analysis
    runtime: Runtime
    predictor: TablePredictor
    table_path: Path | None
    baseline_onnx: Path  # where the baseline was exported; a frontier's later points copy it
    baseline_source: str
    calibration: Calibration
    digest: str
    realiser: Realiser
    search: WidthSearch | None = None
    started: float = 0.0


def _prepare(loaded: LoadedModel, options: Options, stage: Path, console: Console) -> Shared:
    started, step = time.perf_counter(), partial(_step, console)
    target, x = options.target, loaded.example_input
    calibration = load_calibration(options.calib_data, x, model=loaded.name)  # bad --calib-data fails first
    digest = state_digest(loaded.module)
    with step("analyze and trial-prune"):
        analysis = analyze(loaded.module, x, loaded.name, exclude=options.exclude, strict=False)
        for gid, error in prove_prunable(analysis).items():
            console.print(f"  [yellow]not pruned:[/yellow] group {gid}: trial pruning failed ({error})")
    fixed = heads_fixed(loaded.module.model) if isinstance(loaded.module, HFModel) else None
    if fixed and options.homogeneous(loaded.name):  # homogeneous: the pruned model must reload
        for group in analysis.prunable():
            if group.kind == "heads":
                analysis.refuse(group.id, fixed)
    if not analysis.prunable():
        raise PlanError(f"{loaded.name}: no prunable channel group (see hwprune analyze)")
    runtime = runtime_for(target)
    predictor, table_path = _latency_model(analysis, runtime, options.lut, step, console, options.sparsity_mode)
    if options.homogeneous(loaded.name):
        ties = stack_ties(analysis.groups, stack_layers(predictor.options.values()))
        predictor.tie(ties)
        console.print(f"  widths: homogeneous, {len(ties)} roles tied across layers"
                      + (f" ({', '.join(sorted(ties))})" if ties else ""))
    check = predictor.sparsity
    if check is not None and check.pattern is not None:
        console.print(f"  N:M {check.pattern}: " + (f"{len(check.offered)} of {check.candidates} layers offered to the "
                                                    f"search ({check.source})" if check.offered else
                                                    f"none offered: {escape(check.reason)}"))
    with step("export baseline"):
        baseline_onnx, baseline_source = _baseline(loaded, analysis, options, stage)
        console.print(f"  baseline: {baseline_source}")
    return Shared(loaded, analysis, runtime, predictor, table_path, baseline_onnx, baseline_source, calibration,
                  digest, Realiser(analysis), started=started)


def _compile_point(shared: Shared, options: Options, stage: Path, console: Console) -> Report:
    step = partial(_step, console)
    started = time.perf_counter() if shared.search is not None else shared.started
    loaded, analysis, runtime, predictor = shared.loaded, shared.analysis, shared.runtime, shared.predictor
    target, x, calibration = options.target, loaded.example_input, shared.calibration
    if shared.baseline_onnx != stage / "baseline.onnx":
        shutil.copyfile(shared.baseline_onnx, stage / "baseline.onnx")
    baseline_onnx, baseline_source = stage / "baseline.onnx", shared.baseline_source
    realiser = shared.realiser
    measurer = Measurer.start(realiser, options, runtime, stage, baseline_onnx, calibration)
    baseline_predicted = predictor.predict({}).total_ms
    fraction = options.budget.fraction(measurer.baseline_ms if measurer.measurable else baseline_predicted)
    provenance = Provenance(loaded.name, loaded.weights, loaded.seed, tuple(x.shape), tuple(options.exclude),
                            shared.digest, target.name, PlanBudget(options.budget.kind, options.budget.value, fraction),
                            predictor.provenance(), options.importance)
    if shared.search is None:
        shared.search = _width_search(realiser, predictor, options, calibration, measurer.recalibration, provenance,
                                      shared.table_path, step, console)
    search = replace(shared.search, provenance=provenance)
    rounds = refine(partial(_announced, search, step), measurer, fraction, fraction * baseline_predicted,
                    options.refine + 1 if measurer.measurable else 1, partial(_print_round, console, fraction))
    chosen = pick(rounds, fraction)
    os.replace(chosen.realised.onnx, stage / "pruned.onnx")
    for attempt in rounds:
        attempt.realised.onnx.unlink(missing_ok=True)
    torch.save(chosen.realised.model.state_dict(), stage / "pruned.pt")
    if chosen.decision.plan.merge:  # what recovery trains: spans apart, activations removed (merged at export)
        torch.save(realiser(chosen.decision.plan, measurer.recalibration, merge=False).state_dict(),
                   stage / "pruned_unmerged.pt")
    try:
        native = save_native(chosen.realised.model, loaded.name, stage)
    except ModelSpecError as exc:  # e.g. an hf: model pruned to different widths per layer
        native = None
        console.print(f"  [yellow]note:[/yellow] not saved in its framework's format: {exc}")
    if native:
        console.print(f"  {native}: the pruned model in its framework's format")
    with step("verify"):
        verification = verified(chosen.realised.model, stage / "pruned.onnx", x, options.dynamic_batch, options.atol,
                                options.rtol)
        quality = fidelity(analysis.model, chosen.realised.model, calibration.batches,
                           text=not calibration.random)
        if hasattr(analysis.model, "detections") and not calibration.random:  # boxes on the user's images
            quality.box_agreement = box_agreement(analysis.model, chosen.realised.model, calibration.batches)
        if quality.caveat:
            console.print(f"  [yellow]warning:[/yellow] fidelity: {quality.caveat} (random weights?)")
        sparse_layers = chosen.decision.plan.sparsity.layers
        onnx_nm = nm_weights(stage / "pruned.onnx", sparse_layers, chosen.realised.model)
        if not all(found["nm"] for found in onnx_nm.values()):
            raise HwpruneError("exported weights are not N:M in " + ", ".join(
                name for name, found in onnx_nm.items() if not found["nm"]))
    final = measurer.final(stage / "pruned.onnx", step)
    decode = None
    if getattr(analysis.model, "generates", False):  # an hf: decoder: its per-token latency, after prefill's
        with step("decode step with a KV cache: export, verify, measure (interleaved)"):
            decode = decode_section(analysis.model, chosen.realised.model, runtime, stage, x.shape[0], x.shape[1],
                                    slim_available(), options.atol, options.rtol)
            console.print(f"  {escape(decode_summary(decode))}")
    with step("engines"):
        engine = runtime.engines(stage, ("baseline", "pruned"), tuple(x.shape),
                                 8 * x.shape[0] if options.dynamic_batch else None,
                                 sparse=("pruned",) if sparse_layers else ())
    save_plan(chosen.decision.plan, stage / "plan.json")
    report = build_report(loaded, analysis, options, runtime, predictor, search, chosen, rounds, final, engine,
                          verification, quality, calibration.source, time.perf_counter() - started, decode)
    report.export["baseline"] = baseline_source
    report.sparsity = sparsity_section(predictor, chosen.decision.search,
                                       search.depth_costs, chosen.decision.plan.sparsity, options.sparsity, onnx_nm,
                                       runtime.sparse_layers(stage / "pruned.engine"), engine[1])
    report.copies = copy_counts(stage, chosen.decision.plan.groups(), lambda: realise(
        chosen.decision.plan, analysis, reorder=False), x, options.dynamic_batch)
    with step("plots and report.md"):
        write_plots(report, stage / "plots")
        write_text_atomic(stage / "report.md", markdown(report))
    write_text_atomic(stage / "report.json", json.dumps(report.to_json(), indent=1) + "\n")
    return report


def _baseline(loaded: LoadedModel, analysis: Analysis, options: Options, stage: Path) -> tuple[Path, str]:
    """The ONNX file the pruned model is measured against, and what it is. For an ``onnx:`` model that
    is the user's own file, once the conversion (which is what gets pruned) is checked to compute
    what it does: speedup and fidelity are then against the model the user deploys today."""
    path = stage / "baseline.onnx"
    if loaded.source_onnx is None:
        export_onnx(analysis.model, analysis.capture.example_input, path, options.dynamic_batch, slim_available())
        return path, "exported from the model"
    shutil.copyfile(loaded.source_onnx, path)
    check = verify_onnx(analysis.model, path, [analysis.capture.example_input], options.atol, options.rtol)
    if not check.ok:
        raise HwpruneError(f"{loaded.source_onnx}: onnx2torch's conversion does not compute what the file does "
                           f"({check.worst}); cannot measure or prune against it")
    return path, (f"the user's ONNX file {loaded.source_onnx} (its onnx2torch conversion, which is pruned, matches "
                  f"it: max abs err {check.max_abs_err:.2g})")


class Realiser:
    """``transform.apply.realise`` that keeps the last plan's pruned model: an unconstrained round
    prices the copy ops of the very plan it returns, and measuring that plan would otherwise
    apply it to a fresh copy again (10 s each time on densenet169); a deep copy of the kept model
    is what both get, BatchNorm re-estimated on the copy where asked."""

    def __init__(self, analysis: Analysis):
        self.analysis = analysis
        self._last: tuple[tuple, nn.Module] | None = None

    def __call__(self, plan: Plan, recalibration: Sequence[torch.Tensor] = (), merge: bool = True) -> nn.Module:
        """The realised plan; with ``merge`` False its spans still apart (BatchNorm re-estimated alike)."""
        key = plan.decisions()
        if self._last is None or self._last[0] != key:
            self._last = (key, realise_unmerged(plan, self.analysis))
        model = copy.deepcopy(self._last[1])
        if not merge:
            if recalibration:
                recalibrate_batchnorm(model, recalibration)
            return model
        return finish(plan, self.analysis, model, recalibration)


@dataclass
class Realised:
    model: nn.Module
    onnx: Path
    comparison: Comparison | None


@dataclass
class Measurer:
    """Realises a round's plan, exports it and, where this host runs the target's runtime, times it
    against the baseline (interleaved): the measurement half of the refinement loop."""

    realise: Realiser
    options: Options
    runtime: Runtime
    stage: Path
    recalibration: list[torch.Tensor]  # empty: BatchNorm statistics stay as trained
    baseline: Runner | None  # None where this host cannot run the target's runtime
    baseline_ms: float
    rounds: int = 0

    @classmethod
    def start(cls, realiser: Realiser, options: Options, runtime: Runtime, stage: Path, baseline_onnx: Path,
              calibration: Calibration) -> Measurer:
        recalibrate = options.recalibrate_bn == "on" or (options.recalibrate_bn == "auto" and not calibration.random)
        batches = calibration.batches if recalibrate else []
        if runtime.unavailable_reason() is not None:
            return cls(realiser, options, runtime, stage, batches, None, float("nan"))
        baseline = runtime.load(baseline_onnx)
        baseline_ms = runtime.time(baseline, 3, 10, 0.5).median_ms
        return cls(realiser, options, runtime, stage, batches, baseline, baseline_ms)

    @property
    def measurable(self) -> bool:
        return self.baseline is not None

    def __call__(self, decision: Decision) -> tuple[float | None, Realised]:
        model = self.realise(decision.plan, self.recalibration)
        path = export_onnx(model, self.realise.analysis.capture.example_input,
                           self.stage / f"pruned-round{self.rounds}.onnx", self.options.dynamic_batch, slim_available())
        self.rounds += 1
        if not self.measurable:
            return None, Realised(model, path, None)
        comparison = self._against_baseline(path, rounds=12)
        return comparison.ratios[1], Realised(model, path, comparison)

    def final(self, pruned_onnx: Path, step: Callable) -> Comparison | None:
        if not self.measurable:
            return None
        with step("measure baseline vs pruned (interleaved)"):
            comparison = self._against_baseline(pruned_onnx, rounds=30)
        self.baseline.close()
        return comparison

    def _against_baseline(self, path: Path, rounds: int) -> Comparison:
        pruned = self.runtime.load(path)
        try:
            return self.runtime.interleaved([self.baseline, pruned], rounds=rounds)
        finally:
            pruned.close()


def _latency_model(analysis: Analysis, runtime: Runtime, lut: Path | None, step: Callable, console: Console,
                   sparsity: SparsityMode | None = None) -> tuple[TablePredictor, Path | None]:
    """The host's measured table (profiled now where it lacks this model), else the analytic model."""
    target = runtime.target
    reason = runtime.unavailable_reason()
    if reason is not None:
        predictor = offline_predictor(analysis, target, sparsity)
        console.print(f"  latency model for {target.name}: {predictor.describe()} ({runtime.name} cannot run here: "
                      f"{escape(reason)})")
        return predictor, None
    table, table_path = open_table(target, lut, create=True)
    with step("profile"), Progress(console=console, transient=True) as progress:
        new = profile_model(analysis, target, table, progress, sparsity)
        table.save(table_path)
    console.print(f"  latency table {table_path}: {new} new measurements")
    return predictor_for(analysis, table, target, sparsity), table_path


def _width_search(realiser: Realiser, predictor: TablePredictor, options: Options, calibration: Calibration,
                  recalibration: list[torch.Tensor], provenance: Provenance, table_path: Path | None, step: Callable,
                  console: Console) -> WidthSearch:
    """Score the groups (and, unconstrained, each segment reader's channels) and set up the search."""
    analysis = realiser.analysis
    with step("score"), Progress(console=console, transient=True) as progress:
        if calibration.random:
            console.print("  [yellow]warning:[/yellow] no --calib-data: importance and fidelity use random inputs")
        importance = score_groups(analysis, options.importance, calibration.batches)
        sensitivity = (group_sensitivity(analysis, importance, calibration.batches[0], progress, recalibration[:4])
                       if options.allocation in ("auto", "sensitivity") else {})
        costs, influence = {}, {}
        sparse = [o.name for o in predictor.options.values() if o.kind == "sparse"]
        scales = (input_norms(analysis.model, sparse, calibration.batches[:ACTIVATION_BATCHES])
                  if sparse and options.sparsity_criterion == "activation" else {})
        if options.search != "width" and predictor.options:
            started = time.perf_counter()
            steps = options.depth_distil_steps
            training = calibration.batches[1:] or calibration.batches  # the cost is measured on batch 0
            table = CostTable(cache_dir() / "depth", provenance.state_sha256 or "", [*calibration.batches,
                                                                                       *recalibration[:4]], steps,
                              options.sparsity_criterion)
            missing = table.missing(list(predictor.options.values()))
            table.add(depth_costs(analysis.model, analysis.capture.example_input, missing, calibration.batches[0],
                                  recalibration[:4], progress, steps, training, scales))
            costs = {key: table.costs[key] for key in predictor.options}
            layers = stack_layers(predictor.options.values())
            influence = block_influence(analysis.model, layers, calibration.batches[0]) if layers else {}
            console.print(f"  depth importance of {len(costs)} options (merged spans, dropped blocks, N:M layers"
                          + (f"; each distilled {steps} steps first" if steps else "") + f"): {len(missing)} "
                          f"measured in {time.perf_counter() - started:.1f} s, the rest from {table.path}")
        elif options.search != "width":
            console.print("  no depth options: no span merges or block drops this target's latency model prices")
        scores = {}
        if options.unconstrained:
            started = time.perf_counter()
            scores = reader_scores(analysis, segments(analysis), calibration.batches[0])
            console.print(f"  reader scores of {len(scores)} segments in {time.perf_counter() - started:.1f} s")
    copies = partial(_copies_ms, realiser, predictor, options.target, table_path) if options.unconstrained else None
    x = analysis.capture.example_input
    return WidthSearch(analysis, predictor, importance, sensitivity, provenance, options.target.channel_alignment,
                       options.min_keep, options.allocation, calibration.batches, not calibration.random,
                       recalibration, scores, copies, options.search, costs, partial(_depth_view, x),
                       Permutations(lambda gid: permutable(analysis, gid) is None,
                                    {name: norm.numpy().astype(np.float64) for name, norm in scales.items()}),
                       influence)


def _depth_view(example_input: torch.Tensor, model: nn.Module, plan: Plan) -> nn.Module:
    """What a plan's depth and N:M decisions make of ``model`` (spans unmerged): the view the search
    scores; N:M masks go on a copy, never on ``model``'s own weights."""
    viewed = unmerged(model, example_input, plan.merge, plan.depth)
    if plan.sparsity.layers:
        viewed = copy.deepcopy(viewed)
        sparsify(viewed, plan.sparsity.layers)
    return viewed


def _copies_ms(realiser: Realiser, predictor: TablePredictor, target: Target, table_path: Path, plan: Plan
               ) -> float:
    """The predicted time of a plan's copy ops (from its realised model), profiling any the table lacks."""
    signatures = copy_signatures(realiser(plan), realiser.analysis.capture.example_input)
    table = predictor.table
    if profile(signatures.values(), table, target):
        table.save(table_path)
    return sum(op_ms(table, table.get(sig).median_ms) for sig in signatures.values())


def _announced(search: WidthSearch, step: Callable, predicted_budget: float) -> Decision:
    with step(f"search + prune (predicted budget {predicted_budget:.3g} ms)"):
        return search(predicted_budget)


def _print_round(console: Console, fraction: float, done: Round) -> None:
    console.print(f"  predicted {done.decision.plan.predicted_ms:.3g} ms"
                  + ("" if done.fraction is None else f"; measured latency fraction {done.fraction:.3f}")
                  + f" (requested {fraction:.3f})")


@contextmanager
def _step(console: Console, name: str) -> Iterator[None]:
    """Print a pipeline step and, when it succeeds, how long it took. An unexpected failure inside
    it becomes one line naming the step (exit 2; --debug shows the traceback), and the staging
    folder goes with it, so nothing that looks finished is left."""
    started = time.perf_counter()
    console.print(f"[bold]{name}[/bold] ...")
    try:
        yield
    except HwpruneError:
        raise
    except Exception as exc:  # a bug or an unforeseen model: say where, in one line
        raise HwpruneError(f"step '{name}' failed unexpectedly: {first_line(exc, 300)} "
                           "(rerun with --debug for the traceback)") from exc
    console.print(f"  done in {time.perf_counter() - started:.1f} s")
