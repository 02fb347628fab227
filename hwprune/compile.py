"""``hwprune compile``: analyze -> profile -> score -> search -> prune -> export -> verify -> measure.

The budget is a fraction of the baseline's latency on the target.

On a target this host can run (onnxruntime): the predictor is calibrated at profile time, but a
shared machine's speed drifts between then and now, so the fraction is applied to the
*predicted* baseline, and the result is checked by measuring baseline and pruned ONNX files in
one interleaved run. If the measured fraction misses the requested one by more than
``tolerance``, the predicted budget is scaled by (requested / measured) and the search runs
again (at most ``refine`` times): the measurement, not the model, has the last word.

On a TensorRT target the search runs on the analytic model (every number labelled so); the
engines are built and timed with CUDA events where TensorRT and a GPU are present, and
otherwise ``build_engine.sh`` holds the trtexec lines to run on the device and the report says
why no engine and no measured speedup exist. No TensorRT number is ever invented.

Artefacts are written to a staging folder inside ``out_dir`` and moved into place at the end,
``report.json`` last; a failed or interrupted compile leaves none that look finished.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hwprune import __version__
from hwprune.calibration import fidelity, load_calibration
from hwprune.environment import fingerprint
from hwprune.errors import HwpruneError, PlanError
from hwprune.evaluate.batchnorm import recalibrate_batchnorm
from hwprune.export.copies import copy_ops
from hwprune.export.onnx_export import ONNX_OPSET, export_onnx, slim_available
from hwprune.export.tensorrt import build_engine, build_script, engine_config, time_engine, unavailable_reason
from hwprune.export.verify import DEFAULT_ATOL, DEFAULT_RTOL, verify_onnx
from hwprune.graph.analyze import Analysis, analyze
from hwprune.graph.segments import Segment, segments
from hwprune.importance.readers import reader_scores
from hwprune.importance.scores import Importance, score_groups
from hwprune.importance.sensitivity import group_sensitivity
from hwprune.io import write_text_atomic
from hwprune.latency.copies import copy_signatures
from hwprune.latency.measure import Comparison, random_feeds, time_interleaved, time_session
from hwprune.latency.model_latency import analytic_predictor, open_table, predictor_for, profile_model
from hwprune.latency.predictor import TablePredictor, op_ms
from hwprune.latency.profiler import profile, runtime_settings, target_session
from hwprune.latency.signature import OpSignature
from hwprune.models import LoadedModel
from hwprune.plan import Plan, apply_plan, build_plan
from hwprune.report import markdown, write_plots
from hwprune.search.choose import Candidate, choose
from hwprune.search.readers import SegmentMask, reader_masks
from hwprune.search.width import SearchResult, search_widths, uniform_widths
from hwprune.targets import Target

STRATEGIES = ("sensitivity", "structure", "uniform")
UNCONSTRAINED_ROUNDS = 4  # searches per attempt to fit unconstrained masks' real cost into the budget
CHOICE_BATCHES = 8  # calibration batches the allocation strategies are scored on
ARTEFACTS = ("report.json", "report.md", "plan.json", "baseline.onnx", "pruned.onnx", "plots", "build_engine.sh",
             "baseline.engine", "pruned.engine", "timing.cache")


@dataclass(frozen=True)
class Budget:
    """``latency``: fraction of the baseline; ``speedup``: baseline / pruned; ``ms``: absolute."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind == "latency" and not 0 < self.value < 1:
            raise HwpruneError(f"--latency {self.value}: must be a fraction of the baseline in (0, 1)")
        if self.kind == "speedup" and not self.value > 1:
            raise HwpruneError(f"--speedup {self.value}: must be above 1")
        if self.kind == "ms" and not self.value > 0:
            raise HwpruneError(f"--budget-ms {self.value}: must be positive")
        if self.kind not in ("latency", "speedup", "ms"):
            raise HwpruneError(f"unknown budget kind {self.kind!r}")

    def fraction(self, baseline_ms: float) -> float:
        """The latency fraction of a baseline measured at ``baseline_ms`` that meets this budget."""
        if self.kind == "latency":
            return self.value
        if self.kind == "speedup":
            return 1.0 / self.value
        if self.value >= baseline_ms:
            raise HwpruneError(f"--budget-ms {self.value}: the unpruned model already takes {baseline_ms:.3g} ms "
                               "(measured here, or predicted where this host cannot run the target); nothing to prune")
        return self.value / baseline_ms


@dataclass
class Options:
    target: Target
    budget: Budget
    importance: str = "activation"
    calib_data: str | None = None
    min_keep: float = 0.1
    lut: Path | None = None
    refine: int = 2
    tolerance: float = 0.04
    exclude: tuple[str, ...] = ()
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    dynamic_batch: bool = False
    # Re-estimate BatchNorm statistics of the pruned model on the calibration inputs: "auto" does
    # it when real calibration data is given (recalibrating on random noise would be worse).
    recalibrate_bn: str = "auto"
    # How the budget is shared among groups: "auto" tries every strategy in every search round and
    # keeps the most faithful on the calibration inputs (search.choose); or one of STRATEGIES.
    allocation: str = "auto"
    # Unconstrained (UPSCALE) pruning: every dense reader of a segment keeps its own channels, the
    # producers their union; exported reordered, with the copies this needs priced by profiling.
    unconstrained: bool = False

    def __post_init__(self) -> None:
        if self.allocation not in ("auto", *STRATEGIES):
            raise HwpruneError(f"--allocation {self.allocation}: use auto or one of {', '.join(STRATEGIES)}")
        if self.unconstrained and self.target.runtime != "onnxruntime":
            raise HwpruneError(f"--unconstrained needs a target this host can measure (onnxruntime), not "
                               f"{self.target.name} ({self.target.runtime}): the copy ops it adds are priced by "
                               "profiling them, and the analytic model has no copy costs")


@dataclass
class Attempt:
    predicted_budget_ms: float
    search: SearchResult
    plan: Plan
    model: nn.Module
    onnx: Path
    comparison: Comparison | None
    strategy: str
    candidates: list[Candidate]  # empty unless the allocation is auto: then scored in every round

    @property
    def measured_fraction(self) -> float | None:
        return None if self.comparison is None else self.comparison.ratios[1]


@dataclass
class Context:
    """What every round of one compile shares."""

    analysis: Analysis
    predictor: TablePredictor
    importance: Importance
    sensitivity: dict[str, float]
    options: Options
    stage: Path
    baseline_session: object | None  # None: this host cannot run the target's runtime
    feeds: dict
    recalibration_batches: list[torch.Tensor]  # empty: BatchNorm statistics stay as trained
    calibration_batches: list[torch.Tensor]
    real_calibration: bool  # from --calib-data, not seeded noise
    table_path: Path | None = None  # where profiled copy ops are saved (unconstrained)
    # Unconstrained: the groups pruned reader by reader, and each reader's channel scores.
    segments: list[Segment] = field(default_factory=list)
    reader_scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def compile_model(loaded: LoadedModel, options: Options, out_dir: str | Path, console: Console | None = None) -> dict:
    """Run the whole pipeline; returns the report (also written to ``out_dir/report.json``)."""
    console = console or Console(stderr=True)
    out = _prepare(Path(out_dir))
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".partial-"))
    try:
        report = _compile(loaded, options, stage, console)
        for name in ARTEFACTS[1:] + ARTEFACTS[:1]:  # report.json last: its presence means finished
            if (stage / name).exists():
                os.replace(stage / name, out / name)
        return report
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _prepare(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in ARTEFACTS:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
            else:
                (out / name).unlink(missing_ok=True)
    except OSError as exc:
        raise HwpruneError(f"cannot write to {out}: {exc.strerror or exc}") from exc
    if not os.access(out, os.W_OK):
        raise HwpruneError(f"cannot write to {out}: permission denied")
    return out


def _compile(loaded: LoadedModel, options: Options, stage: Path, console: Console) -> dict:
    started = time.perf_counter()
    target, x = options.target, loaded.example_input
    step = partial(_step, console)
    measurable = target.runtime == "onnxruntime"
    calibration = load_calibration(options.calib_data, x)  # bad --calib-data fails before any work
    with step("analyze"):
        analysis = analyze(loaded.module, x, loaded.name, exclude=options.exclude, strict=False)
    if not analysis.prunable():
        raise PlanError(f"{loaded.name}: no prunable channel group (see hwprune analyze)")
    table_path = None
    if measurable:
        table, table_path = open_table(target, options.lut, create=True)
        with step("profile"), Progress(console=console, transient=True) as progress:
            new = profile_model(analysis, target, table, progress)
            table.save(table_path)
        console.print(f"  latency table {table_path}: {new} new measurements")
        predictor = predictor_for(analysis, table, target)
    else:
        predictor = analytic_predictor(analysis, target)
        console.print(f"  latency model: analytic roofline for {target.name} (this host cannot run {target.runtime})")
    with step("score"), Progress(console=console, transient=True) as progress:
        if calibration.random:
            console.print("  [yellow]warning:[/yellow] no --calib-data: importance and fidelity use random inputs")
        importance = score_groups(analysis, options.importance, calibration.batches)
        recalibrate = options.recalibrate_bn == "on" or (options.recalibrate_bn == "auto" and not calibration.random)
        recalibration_batches = calibration.batches if recalibrate else []
        sensitivity = (group_sensitivity(analysis, importance, calibration.batches[0], progress,
                                         recalibration_batches[:4])
                       if options.allocation in ("auto", "sensitivity") else {})
    with step("export baseline"):
        baseline_onnx = export_onnx(analysis.model, x, stage / "baseline.onnx", options.dynamic_batch,
                                    slim_available())
    baseline_predicted = predictor.predict({}).total_ms
    context = Context(analysis, predictor, importance, sensitivity, options, stage, None, {}, recalibration_batches,
                      calibration.batches, not calibration.random, table_path=table_path,
                      segments=segments(analysis) if options.unconstrained else [])
    if options.unconstrained:
        context.reader_scores = reader_scores(analysis, context.segments, calibration.batches[0])
    if measurable:
        context.baseline_session = target_session(baseline_onnx, target)
        context.feeds = random_feeds(context.baseline_session)
        baseline_ms = time_session(context.baseline_session, context.feeds, 3, 10, 0.5).median_ms
    else:
        baseline_ms = baseline_predicted
    fraction = options.budget.fraction(baseline_ms)
    attempts = _search_rounds(context, fraction * baseline_predicted, fraction, step, console)
    chosen = _choose(attempts, fraction, options.tolerance)
    os.replace(chosen.onnx, stage / "pruned.onnx")
    for attempt in attempts:
        attempt.onnx.unlink(missing_ok=True)
    with step("verify"):
        verification = verify_onnx(chosen.model, stage / "pruned.onnx", _verify_inputs(x, options.dynamic_batch),
                                   options.atol, options.rtol)
        quality = fidelity(analysis.model, chosen.model, calibration.batches)
        if quality.caveat:
            console.print(f"  [yellow]warning:[/yellow] fidelity: {quality.caveat} (random weights?)")
    if not verification.ok:
        raise HwpruneError(f"exported ONNX does not match the pruned model (max abs err "
                           f"{verification.max_abs_err:.3g}; worst {verification.worst})")
    copies = _copies(context, chosen.plan)
    final = None
    if measurable:
        with step("measure baseline vs pruned (interleaved)"):
            final = time_interleaved([context.baseline_session, target_session(stage / "pruned.onnx", target)],
                                     [context.feeds, context.feeds], rounds=30)
    engine = _engines(target, stage, x, options.dynamic_batch, step) if target.runtime == "tensorrt" else \
        {"path": None, "reason": f"target {target.name} runs {target.runtime}, not TensorRT", "timings": None}
    chosen.plan.save(stage / "plan.json")
    report = _report(loaded, context, chosen, final, engine, verification, quality, calibration.source, attempts,
                     fraction, baseline_predicted, time.perf_counter() - started)
    report["copies"] = copies
    with step("plots and report.md"):
        write_plots(report, stage / "plots")
        write_text_atomic(stage / "report.md", markdown(report))
    write_text_atomic(stage / "report.json", json.dumps(report, indent=1) + "\n")
    return report


def _search_rounds(context: Context, predicted_budget: float, fraction: float, step, console: Console
                   ) -> list[Attempt]:
    """Search, prune and (where possible) measure; re-search while the measurement misses the budget."""
    options = context.options
    rounds = options.refine + 1 if context.baseline_session is not None else 1
    attempts: list[Attempt] = []
    for number in range(rounds):
        with step(f"search + prune (round {number + 1}, predicted budget {predicted_budget:.3g} ms)"):
            try:
                attempt = _attempt(context, predicted_budget, number)
            except PlanError:
                if not attempts:
                    raise
                break
        attempts.append(attempt)
        measured = attempt.measured_fraction
        console.print(f"  predicted {attempt.search.predicted_ms:.3g} ms"
                      + ("" if measured is None else f"; measured latency fraction {measured:.3f}")
                      + f" (requested {fraction:.3f})")
        if measured is None or abs(measured - fraction) <= options.tolerance * fraction:
            break
        predicted_budget *= fraction / measured
    return attempts


def _attempt(context: Context, predicted_budget: float, number: int) -> Attempt:
    analysis, options = context.analysis, context.options
    x = analysis.capture.example_input
    strategies = _strategies(context)
    candidates = []
    if options.allocation == "auto":
        candidates = choose(analysis, context.importance,
                            {name: partial(search, predicted_budget) for name, search in strategies.items()},
                            context.calibration_batches[:CHOICE_BATCHES], context.real_calibration,
                            context.recalibration_batches)
        strategy, result = candidates[0].strategy, candidates[0].search
    else:
        strategy = options.allocation
        result = strategies[strategy](predicted_budget)
    if options.unconstrained:
        result, plan, model = _fit_unconstrained(context, strategies[strategy], predicted_budget, result)
    else:
        plan = _plan(context, result)
        model = _pruned(context, plan)
    if context.recalibration_batches:
        recalibrate_batchnorm(model, context.recalibration_batches)
    onnx_path = export_onnx(model, x, context.stage / f"pruned-round{number}.onnx", options.dynamic_batch,
                            slim_available())
    comparison = None
    if context.baseline_session is not None:
        comparison = time_interleaved([context.baseline_session, target_session(onnx_path, options.target)],
                                      [context.feeds, context.feeds], rounds=12)
    return Attempt(predicted_budget, result, plan, model, onnx_path, comparison, strategy, candidates)


def _strategies(context: Context) -> dict[str, Callable[[float], SearchResult]]:
    """The allocation strategies, each a search at a predicted budget: weighted by measured group
    sensitivity, by how many layer sides a group sizes, or uniform."""
    analysis, predictor, importance, options = context.analysis, context.predictor, context.importance, context.options

    def strategy(search: Callable[..., SearchResult], **weights) -> Callable[[float], SearchResult]:
        return lambda budget: search(analysis, predictor, importance, options.target.channel_alignment, budget,
                                     options.min_keep, **weights)

    return {"sensitivity": strategy(search_widths, weights=context.sensitivity),
            "structure": strategy(search_widths, weights=None),
            "uniform": strategy(uniform_widths)}


def _plan(context: Context, result: SearchResult, masks: dict[str, SegmentMask] | None = None) -> Plan:
    options = context.options
    return build_plan(context.analysis, options.target.name, options.budget.kind, options.budget.value, result,
                      context.importance, context.predictor, bool(context.recalibration_batches), masks)


def _pruned(context: Context, plan: Plan, reorder: bool = True) -> nn.Module:
    """``plan`` applied to a fresh copy of the unpruned model (the analysed one stays whole)."""
    analysis = context.analysis
    fresh = analyze(copy.deepcopy(analysis.model), analysis.capture.example_input, analysis.name, strict=False)
    return apply_plan(plan, fresh, reorder).eval()


def _fit_unconstrained(context: Context, search: Callable[[float], SearchResult], predicted_budget: float,
                       result: SearchResult) -> tuple[SearchResult, Plan, nn.Module]:
    """Unconstrained masks at the searched counts cost more than the counts say (producers keep the
    union, readers pay copies): predict that, with the copies profiled, and re-search at a
    scaled budget until the prediction fits (at most UNCONSTRAINED_ROUNDS searches)."""
    analysis = context.analysis
    x = analysis.capture.example_input
    search_budget = predicted_budget
    rounds = 0
    while True:
        rounds += 1
        masks = reader_masks(context.reader_scores, result.counts)
        plan = _plan(context, result, masks)
        model = _pruned(context, plan)
        keep = {**result.counts, **{gid: len(mask.union) for gid, mask in masks.items()}}
        predicted = (context.predictor.predict(keep, {gid: result.counts[gid] for gid in masks}).total_ms
                     + _copies_ms(context, copy_signatures(model, x)))
        result = replace(result, predicted_ms=predicted)
        plan.predicted_ms = plan.budget["predicted_ms"] = predicted
        if predicted <= predicted_budget or rounds == UNCONSTRAINED_ROUNDS:
            return result, plan, model
        search_budget *= predicted_budget / predicted
        result = search(search_budget)


def _copies_ms(context: Context, signatures: dict[str, OpSignature]) -> float:
    """The predicted time of the copy ops, profiling (and saving) any the table lacks."""
    table, target = context.predictor.table, context.options.target
    if profile(signatures.values(), table, target):
        table.save(context.table_path)
    return sum(op_ms(table, table.get(sig).median_ms) for sig in signatures.values())


def _copies(context: Context, plan: Plan) -> dict:
    """Copy ops (Gather/Slice/Concat: count, bytes written) in both exports; for unconstrained
    pruning also in the same plan exported without reordering, the naive export it improves on."""
    stage, x = context.stage, context.analysis.capture.example_input
    found = {"baseline": copy_ops(stage / "baseline.onnx"), "pruned": copy_ops(stage / "pruned.onnx"),
             "pruned_without_reordering": None}
    if plan.masks():
        path = export_onnx(_pruned(context, plan, reorder=False), x, stage / "naive-order.onnx",
                           context.options.dynamic_batch)
        found["pruned_without_reordering"] = copy_ops(path)
        path.unlink()
    return found


def _engines(target: Target, stage: Path, x: torch.Tensor, dynamic_batch: bool, step) -> dict:
    """Build and time both engines where TensorRT runs; otherwise write build_engine.sh and say why not."""
    max_batch = 8 * x.shape[0] if dynamic_batch else None
    configs = [engine_config(target, stage / f"{name}.onnx", stage / f"{name}.engine", tuple(x.shape),
                             max_batch=max_batch) for name in ("baseline", "pruned")]
    reason = unavailable_reason()
    if reason is not None:
        write_text_atomic(stage / "build_engine.sh", build_script(configs, reason))
        (stage / "build_engine.sh").chmod(0o755)
        return {"path": None, "reason": reason + "; build_engine.sh has the trtexec commands", "timings": None}
    timings = {}
    with step("build and time TensorRT engines"):
        for name, config in zip(("baseline", "pruned"), configs, strict=True):
            build_engine(config)
            timing = time_engine(config.engine, tuple(x.shape))
            timings[name] = {"median": timing.median_ms, "p90": timing.p90_ms, "p99": timing.p99_ms,
                             "spread": timing.spread}
    return {"path": "pruned.engine", "reason": None, "timings": timings}


def _verify_inputs(x: torch.Tensor, dynamic_batch: bool) -> list[torch.Tensor]:
    """Fresh seeded inputs of the example's shape (and a batch of 3 when the batch axis is dynamic)."""
    if not x.is_floating_point():
        return [x]
    shapes = [tuple(x.shape)] * 3 + ([(3, *x.shape[1:])] if dynamic_batch else [])
    return [torch.randn(shape, generator=torch.Generator().manual_seed(n)) for n, shape in enumerate(shapes)]


def _choose(attempts: list[Attempt], fraction: float, tolerance: float) -> Attempt:
    """The widest measured attempt within the budget's tolerance; if none, the fastest; unmeasured: the only one."""
    measured = [a for a in attempts if a.measured_fraction is not None]
    if not measured:
        return attempts[-1]
    within = [a for a in measured if a.measured_fraction <= fraction * (1 + tolerance)]
    if within:
        return max(within, key=lambda a: a.measured_fraction)
    return min(measured, key=lambda a: a.measured_fraction)


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def _report(loaded: LoadedModel, context: Context, chosen: Attempt, final: Comparison | None, engine: dict,
            verification, quality, calibration_source: str, attempts: list[Attempt], fraction: float,
            baseline_predicted: float, seconds: float) -> dict:
    analysis, options, predictor = context.analysis, context.options, context.predictor
    x = analysis.capture.example_input
    threads, level = runtime_settings(options.target)
    measured_on = final is not None or engine["timings"] is not None

    def latency(side: int, name: str) -> dict | None:
        if final is not None:
            timing = final.timings[side]
            return {"median": timing.median_ms, "p90": timing.p90_ms, "p99": timing.p99_ms, "spread": timing.spread}
        return engine["timings"][name] if engine["timings"] is not None else None

    measured = None
    if final is not None:
        measured = 1.0 / final.ratios[1]
    elif engine["timings"] is not None:
        measured = engine["timings"]["baseline"]["median"] / engine["timings"]["pruned"]["median"]
    if final is not None:
        method = {"runtime": "onnxruntime CPUExecutionProvider", "threads": threads, "graph_optimization_level": level,
                  "method": "interleaved A/B rounds of 5 runs, 30 rounds; speedup = 1 / median over rounds of "
                            "(pruned round median / baseline round median)"}
    elif engine["timings"] is not None:
        method = {"runtime": "TensorRT", "method": "CUDA events around execute_async_v3, 20 warm-up + 200 runs each"}
    else:
        method = {"runtime": None, "method": f"not measured: {engine['reason']}"}
    provenance = predictor.table.provenance
    return {
        "hwprune": __version__,
        "model": loaded.name,
        "input_shape": list(x.shape),
        "target": options.target.name,
        "budget": {"kind": options.budget.kind, "value": options.budget.value, "latency_fraction": fraction},
        "baseline": {"latency_ms": latency(0, "baseline"), "predicted_ms": baseline_predicted,
                     "flops": analysis.capture.flops, "params": analysis.capture.params},
        "pruned": {"latency_ms": latency(1, "pruned"), "predicted_ms": chosen.search.predicted_ms,
                   "flops": count_flops(chosen.model, x), "params": sum(p.numel() for p in chosen.model.parameters())},
        "speedup": {"predicted": baseline_predicted / chosen.search.predicted_ms,
                    "predicted_by": provenance.get("runtime") if provenance.get("runtime") == "analytic" else "lut",
                    "measured": measured,
                    "measured_ratio_spread": final.ratio_spread[1] if final is not None else None},
        "verify": verification.to_json(),
        "fidelity": {"cosine": quality.cosine, "top1_agreement": quality.top1_agreement, "samples": quality.samples,
                     "inputs": calibration_source, "caveat": quality.caveat},
        "bn_recalibration": bool(context.recalibration_batches),
        "search": {"importance": context.importance.method, "importance_fallbacks": context.importance.fallbacks,
                   "allocation": options.allocation, "strategy": chosen.strategy,
                   "unconstrained": options.unconstrained,
                   "segments": [s.group for s in context.segments],
                   "candidates": [{"strategy": c.strategy, "predicted_ms": c.search.predicted_ms,
                                   "cosine": c.quality.cosine, "top1_agreement": c.quality.top1_agreement,
                                   "score": c.score} for c in chosen.candidates],
                   "min_keep": options.min_keep, "groups": len(chosen.plan.groups),
                   "baseline_predicted_ms": baseline_predicted,
                   "attempts": [{"predicted_budget_ms": a.predicted_budget_ms, "predicted_ms": a.search.predicted_ms,
                                 "measured_fraction": a.measured_fraction, "search_seconds": a.search.seconds,
                                 "strategy": a.strategy,
                                 "knapsack_rounds": a.search.rounds} for a in attempts]},
        "measurement": method,
        "measured": measured_on,
        "latency_model": {"kind": provenance.get("runtime") if provenance.get("runtime") == "analytic" else "lut",
                          "fingerprint": provenance.get("fingerprint"), "created": provenance.get("created"),
                          "host": provenance.get("host"), "layer_scale": predictor.layer_scale,
                          "rest_ms": predictor.rest_ms},
        "layers": _layer_rows(predictor, chosen.search.counts),
        "groups": [{"id": gid, "keep": d.keep, "of": d.of, "sensitivity": context.sensitivity.get(gid)}
                   for gid, d in chosen.plan.groups.items()],
        "export": {"opset": ONNX_OPSET, "dynamic_batch": options.dynamic_batch, "slimmed": slim_available()},
        "engine": {"path": engine["path"], "reason": engine["reason"]},
        "fingerprint": fingerprint(options.target),
        "seconds": seconds,
    }


def _layer_rows(predictor: TablePredictor, counts: dict[str, int]) -> list[dict]:
    before, after = predictor.predict({}).layers_ms, predictor.predict(counts).layers_ms
    return [{"name": name, "baseline_predicted_ms": before[name], "pruned_predicted_ms": after[name]}
            for name in before]


@contextmanager
def _step(console: Console, name: str) -> Iterator[None]:
    """Print a pipeline step and, when it succeeds, how long it took."""
    started = time.perf_counter()
    console.print(f"[bold]{name}[/bold] ...")
    yield
    console.print(f"  done in {time.perf_counter() - started:.1f} s")
