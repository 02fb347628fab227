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

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from hwprune.calibration import Calibration, fidelity, load_calibration
from hwprune.errors import PlanError
from hwprune.export.onnx_export import export_onnx, slim_available
from hwprune.export.tensorrt import engines
from hwprune.export.verify import verified
from hwprune.graph.analyze import Analysis, analyze
from hwprune.graph.segments import segments
from hwprune.importance.readers import reader_scores
from hwprune.importance.scores import score_groups
from hwprune.importance.sensitivity import group_sensitivity
from hwprune.io import staged, write_text_atomic
from hwprune.latency.copies import copy_signatures
from hwprune.latency.measure import Comparison, random_feeds, time_interleaved, time_session
from hwprune.latency.model_latency import analytic_predictor, open_table, predictor_for, profile_model
from hwprune.latency.predictor import TablePredictor, op_ms
from hwprune.latency.profiler import profile, target_session
from hwprune.models import LoadedModel, state_digest
from hwprune.options import Options
from hwprune.plan import Plan, Provenance
from hwprune.report import build_report, copy_counts, markdown, write_plots
from hwprune.search.decide import Decision, WidthSearch
from hwprune.search.refine import Round, pick, refine
from hwprune.targets import Target
from hwprune.transform.apply import realise

ARTEFACTS = ("report.json", "report.md", "plan.json", "pruned.pt", "baseline.onnx", "pruned.onnx", "plots",
             "build_engine.sh", "baseline.engine", "pruned.engine", "timing.cache")


def compile_model(loaded: LoadedModel, options: Options, out_dir: str | Path, console: Console | None = None) -> dict:
    """Run the whole pipeline; returns the report (also written to ``out_dir/report.json``)."""
    with staged(Path(out_dir), ARTEFACTS) as stage:  # report.json moves last: its presence means finished
        return _compile(loaded, options, stage, console or Console(stderr=True))


def _compile(loaded: LoadedModel, options: Options, stage: Path, console: Console) -> dict:
    started, step = time.perf_counter(), partial(_step, console)
    target, x = options.target, loaded.example_input
    calibration = load_calibration(options.calib_data, x)  # bad --calib-data fails before any work
    digest = state_digest(loaded.module)
    with step("analyze"):
        analysis = analyze(loaded.module, x, loaded.name, exclude=options.exclude, strict=False)
    if not analysis.prunable():
        raise PlanError(f"{loaded.name}: no prunable channel group (see hwprune analyze)")
    predictor, table_path = _latency_model(analysis, target, options.lut, step, console)
    with step("export baseline"):
        baseline_onnx = export_onnx(analysis.model, x, stage / "baseline.onnx", options.dynamic_batch, slim_available())
    measurer = Measurer.start(analysis, options, stage, baseline_onnx, calibration)
    baseline_predicted = predictor.predict({}).total_ms
    fraction = options.budget.fraction(measurer.baseline_ms if measurer.measurable else baseline_predicted)
    provenance = Provenance(loaded.name, loaded.weights, loaded.seed, list(x.shape), list(options.exclude), digest,
                            target.name, {"kind": options.budget.kind, "value": options.budget.value,
                                          "latency_fraction": fraction}, predictor.provenance(), options.importance)
    search = _width_search(analysis, predictor, options, calibration, measurer.recalibration, provenance, table_path,
                           step, console)
    rounds = refine(partial(_announced, search, step), measurer, fraction, fraction * baseline_predicted,
                    options.refine + 1 if measurer.measurable else 1, partial(_print_round, console, fraction))
    chosen = pick(rounds, fraction)
    os.replace(chosen.realised.onnx, stage / "pruned.onnx")
    for attempt in rounds:
        attempt.realised.onnx.unlink(missing_ok=True)
    torch.save(chosen.realised.model.state_dict(), stage / "pruned.pt")
    with step("verify"):
        verification = verified(chosen.realised.model, stage / "pruned.onnx", x, options.dynamic_batch, options.atol,
                                options.rtol)
        quality = fidelity(analysis.model, chosen.realised.model, calibration.batches)
        if quality.caveat:
            console.print(f"  [yellow]warning:[/yellow] fidelity: {quality.caveat} (random weights?)")
    final = measurer.final(stage / "pruned.onnx", step)
    engine = engines(target, stage, x, options.dynamic_batch, step)
    chosen.decision.plan.save(stage / "plan.json")
    report = build_report(loaded, analysis, options, predictor, search, chosen, rounds, final, engine, verification,
                          quality, calibration.source, time.perf_counter() - started)
    report["copies"] = copy_counts(stage, chosen.decision.plan.width, lambda: realise(
        chosen.decision.plan, analysis, reorder=False), x, options.dynamic_batch)
    with step("plots and report.md"):
        write_plots(report, stage / "plots")
        write_text_atomic(stage / "report.md", markdown(report))
    write_text_atomic(stage / "report.json", json.dumps(report, indent=1) + "\n")
    return report


@dataclass
class Realised:
    model: nn.Module
    onnx: Path
    comparison: Comparison | None


@dataclass
class Measurer:
    """Realises a round's plan, exports it and, where this host runs the target, times it against
    the baseline (interleaved): the measurement half of the refinement loop."""

    analysis: Analysis
    options: Options
    stage: Path
    recalibration: list[torch.Tensor]  # empty: BatchNorm statistics stay as trained
    session: object | None  # the baseline's; None where this host cannot run the target's runtime
    feeds: dict
    baseline_ms: float
    rounds: int = 0

    @classmethod
    def start(cls, analysis: Analysis, options: Options, stage: Path, baseline_onnx: Path,
              calibration: Calibration) -> Measurer:
        recalibrate = options.recalibrate_bn == "on" or (options.recalibrate_bn == "auto" and not calibration.random)
        batches = calibration.batches if recalibrate else []
        if options.target.runtime != "onnxruntime":
            return cls(analysis, options, stage, batches, None, {}, float("nan"))
        session = target_session(baseline_onnx, options.target)
        feeds = random_feeds(session)
        baseline_ms = time_session(session, feeds, 3, 10, 0.5).median_ms
        return cls(analysis, options, stage, batches, session, feeds, baseline_ms)

    @property
    def measurable(self) -> bool:
        return self.session is not None

    def __call__(self, decision: Decision) -> tuple[float | None, Realised]:
        model = realise(decision.plan, self.analysis, self.recalibration)
        path = export_onnx(model, self.analysis.capture.example_input, self.stage / f"pruned-round{self.rounds}.onnx",
                           self.options.dynamic_batch, slim_available())
        self.rounds += 1
        if not self.measurable:
            return None, Realised(model, path, None)
        comparison = time_interleaved([self.session, target_session(path, self.options.target)],
                                      [self.feeds, self.feeds], rounds=12)
        return comparison.ratios[1], Realised(model, path, comparison)

    def final(self, pruned_onnx: Path, step: Callable) -> Comparison | None:
        if not self.measurable:
            return None
        with step("measure baseline vs pruned (interleaved)"):
            return time_interleaved([self.session, target_session(pruned_onnx, self.options.target)],
                                    [self.feeds, self.feeds], rounds=30)


def _latency_model(analysis: Analysis, target: Target, lut: Path | None, step: Callable, console: Console
                   ) -> tuple[TablePredictor, Path | None]:
    """The host's measured table (profiled now where it lacks this model), else the analytic model."""
    if target.runtime != "onnxruntime":
        console.print(f"  latency model: analytic roofline for {target.name} (this host cannot run {target.runtime})")
        return analytic_predictor(analysis, target), None
    table, table_path = open_table(target, lut, create=True)
    with step("profile"), Progress(console=console, transient=True) as progress:
        new = profile_model(analysis, target, table, progress)
        table.save(table_path)
    console.print(f"  latency table {table_path}: {new} new measurements")
    return predictor_for(analysis, table, target), table_path


def _width_search(analysis: Analysis, predictor: TablePredictor, options: Options, calibration: Calibration,
                  recalibration: list[torch.Tensor], provenance: Provenance, table_path: Path | None, step: Callable,
                  console: Console) -> WidthSearch:
    """Score the groups (and, unconstrained, each segment reader's channels) and set up the search."""
    with step("score"), Progress(console=console, transient=True) as progress:
        if calibration.random:
            console.print("  [yellow]warning:[/yellow] no --calib-data: importance and fidelity use random inputs")
        importance = score_groups(analysis, options.importance, calibration.batches)
        sensitivity = (group_sensitivity(analysis, importance, calibration.batches[0], progress, recalibration[:4])
                       if options.allocation in ("auto", "sensitivity") else {})
        scores = reader_scores(analysis, segments(analysis), calibration.batches[0]) if options.unconstrained else {}
    copies = partial(_copies_ms, analysis, predictor, options.target, table_path) if options.unconstrained else None
    return WidthSearch(analysis, predictor, importance, sensitivity, provenance, options.target.channel_alignment,
                       options.min_keep, options.allocation, calibration.batches, not calibration.random,
                       recalibration, scores, copies)


def _copies_ms(analysis: Analysis, predictor: TablePredictor, target: Target, table_path: Path, plan: Plan) -> float:
    """The predicted time of a plan's copy ops (from its realised model), profiling any the table lacks."""
    signatures = copy_signatures(realise(plan, analysis), analysis.capture.example_input)
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
    """Print a pipeline step and, when it succeeds, how long it took."""
    started = time.perf_counter()
    console.print(f"[bold]{name}[/bold] ...")
    yield
    console.print(f"  done in {time.perf_counter() - started:.1f} s")
