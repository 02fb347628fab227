"""The stages every budget of one model shares: analyze (with trial pruning), the cost model on the
target (profiled here where this host runs it, else analytic) and the baseline export."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from hwprune.config import Options
from hwprune.cost.model_latency import offline_predictor, open_table, predictor_for
from hwprune.cost.predictor import TablePredictor
from hwprune.cost.structural import replacements, stack_layers
from hwprune.errors import HwpruneError, PlanError
from hwprune.evaluate.calibration import Calibration, load_calibration
from hwprune.export.onnx_export import ExportStyle, OnnxIO, export_onnx
from hwprune.export.verify import verify_onnx
from hwprune.frontends import LoadedModel, state_digest
from hwprune.frontends.hf.layout import heads_fixed
from hwprune.frontends.hf.model import HFModel
from hwprune.frontends.hf.replace import replacement_folds
from hwprune.graph.analyze import Analysis, analyze
from hwprune.graph.stack import stack_ties
from hwprune.pipeline.measure import Realiser
from hwprune.pipeline.profiling import profile_model
from hwprune.pipeline.steps import Step
from hwprune.runtime import Runtime, runtime_for
from hwprune.runtime.onnx_files import copy_model
from hwprune.search.decide import SearchProblem
from hwprune.transform.trial import prove_prunable


@dataclass
class CostModel:
    predictor: TablePredictor
    table_path: Path | None  # the measured table, where this host profiled one (None: analytic)


@dataclass
class Baseline:
    onnx: Path  # where it was exported; a frontier's later points copy it
    source: str  # what it is: exported from the model, or the user's own ONNX file


@dataclass
class Prepared:
    """What every budget of one model's compile shares: analysis, cost model, baseline, calibration,
    and (once the first point has scored) the search problem."""

    loaded: LoadedModel
    analysis: Analysis
    runtime: Runtime
    cost: CostModel
    baseline: Baseline
    calibration: Calibration
    digest: str
    realiser: Realiser
    started: float  # when prepare began (perf_counter)
    problem: SearchProblem | None = None


def prepare(loaded: LoadedModel, options: Options, stage: Path, step: Step, console: Console) -> Prepared:
    started = time.perf_counter()
    runtime = runtime_for(options.target)
    if options.unconstrained:
        runtime.require("--unconstrained needs a target this host can measure: the copy ops it adds are priced by "
                        "profiling them, and the analytic model has no copy costs")
    io = None if loaded.source_onnx is None else OnnxIO.of(loaded.source_onnx)  # the user's file's
    calibration = load_calibration(options.calib_data, loaded.example_input, model=loaded.name,  # bad data first
                                   fixed_batch=io is not None and not io.dynamic_batch)
    digest = state_digest(loaded.module)
    with step("analyze and trial-prune"):
        analysis = analyzed(loaded, options, console)
    cost = cost_model(analysis, runtime, options, step, console)
    if not calibration.random:
        offer_replacements(analysis, cost.predictor, console)
    with step("export baseline"):
        baseline = export_baseline(loaded, analysis, options, stage, io)
        console.print(f"  baseline: {baseline.source}")
    realiser = Realiser(analysis, [] if calibration.random else calibration.batches)
    return Prepared(loaded, analysis, runtime, cost, baseline, calibration, digest, realiser, started)


def analyzed(loaded: LoadedModel, options: Options, console: Console) -> Analysis:
    """The model's channel groups, each proven prunable by a trial pruning (else refused, saying why)."""
    analysis = analyze(loaded.module, loaded.example_input, loaded.name, exclude=options.exclude, strict=False)
    for gid, error in prove_prunable(analysis).items():
        console.print(f"  [yellow]not pruned:[/yellow] group {gid}: trial pruning failed ({error})")
    fixed = heads_fixed(loaded.module.model) if isinstance(loaded.module, HFModel) else None
    if fixed and options.homogeneous(loaded.name):  # homogeneous: the pruned model must reload
        for group in analysis.prunable():
            if group.kind == "heads":
                analysis.refuse(group.id, fixed)
    if not analysis.prunable():
        raise PlanError(f"{loaded.name}: no prunable channel group (see hwprune analyze)")
    return analysis


def cost_model(analysis: Analysis, runtime: Runtime, options: Options, step: Step, console: Console) -> CostModel:
    """The host's measured table (profiled now where it lacks this model), else the analytic model; widths
    tied across a layer stack where asked."""
    target = runtime.target
    reason = runtime.unavailable_reason()
    if reason is not None:
        predictor, path = offline_predictor(analysis, target, options.sparsity_mode), None
        console.print(f"  latency model for {target.name}: {predictor.describe()} ({runtime.name} cannot run here: "
                      f"{escape(reason)})")
    else:
        table, path = open_table(target, options.lut, create=True)
        with step("profile"), Progress(console=console, transient=True) as progress:
            new = profile_model(analysis, target, table, progress, options.sparsity_mode)
            table.save(path)
        console.print(f"  latency table {path}: {new} new measurements")
        predictor = predictor_for(analysis, table, target, options.sparsity_mode)
    if options.homogeneous(analysis.name):
        ties = stack_ties(analysis.groups, stack_layers(predictor.options.values()))
        predictor.tie(ties)
        console.print(f"  widths: homogeneous, {len(ties)} roles tied across layers"
                      + (f" ({', '.join(sorted(ties))})" if ties else ""))
    check = predictor.sparsity
    if check is not None and check.pattern is not None:
        console.print(f"  N:M {check.pattern}: " + (f"{len(check.offered)} of {check.candidates} layers offered to the "
                                                    f"search ({check.source})" if check.offered else
                                                    f"none offered: {escape(check.reason)}"))
    return CostModel(predictor, path)


def offer_replacements(analysis: Analysis, predictor: TablePredictor, console: Console) -> None:
    """Beside each stack layer's plain removal, the same layer replaced by a linear map (ReplaceMe) where
    the model has a projection to fold it into; offered only with the user's calibration data, which the
    map is fitted on (on random tokens it would fit noise)."""
    folds = replacement_folds(analysis.model, stack_layers(predictor.options.values()))
    offered = replacements(predictor.options.values(), folds)
    predictor.offer(offered)
    if offered:
        console.print(f"  ReplaceMe: {len(offered)} layers offered replaced by a linear map folded into the layer "
                      "before, beside their removal")


def export_baseline(loaded: LoadedModel, analysis: Analysis, options: Options, stage: Path,
                    io: OnnxIO | None) -> Baseline:
    """The ONNX file the pruned model is measured against, and what it is. For an ``onnx:`` model that
    is the user's own file (``io``: its inputs and outputs), once the conversion (which is what gets pruned)
    is checked to compute what it does: speedup and fidelity are then against the model the user deploys
    today."""
    path = stage / "baseline.onnx"
    if loaded.source_onnx is None:
        export_onnx(analysis.model, analysis.capture.example_input, path, options.dynamic_batch,
                    ExportStyle.of(analysis.model))
        return Baseline(path, "exported from the model")
    copy_model(loaded.source_onnx, path)  # with its external weights, gathered beside it
    check = verify_onnx(analysis.model, path, [analysis.capture.example_input], options.atol, options.rtol)
    if not check.ok:
        raise HwpruneError(f"{loaded.source_onnx}: onnx2torch's conversion does not compute what the file does "
                           f"({check.worst}); cannot measure or prune against it")
    opset = ExportStyle.of(analysis.model).opset
    kept = (f"; the pruned file keeps its input and output names ({', '.join(io.inputs)} -> {', '.join(io.outputs)})"
            f" in opset {opset}" + ("" if io.opset == opset else f" (the file's is {io.opset})"))
    return Baseline(path, f"the user's ONNX file {loaded.source_onnx} (its onnx2torch conversion, which is pruned, "
                          f"matches it: max abs err {check.max_abs_err:.2g}){kept}")
