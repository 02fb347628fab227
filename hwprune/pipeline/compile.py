"""``hwprune compile``: the stages in order. prepare (analyze, cost model, baseline) -> score -> search
rounds (search -> Plan -> transform -> export -> measure, ``search.refine``) -> keep the chosen round ->
verify -> measure -> build (engines, copies, size) -> report.

The budget is a fraction of the baseline's latency on the target. The search works on predicted
latency; where this host runs the target's runtime each round's plan is realised, exported and measured
against the baseline interleaved, and the predicted budget re-scaled until a round measures within the
band. On a TensorRT target the search runs on the analytic model (every number labelled so); engines are
built and timed where TensorRT and a GPU exist, else ``build_engine.sh`` holds the trtexec lines.

Artefacts are written to a staging folder inside ``out_dir`` and moved into place at the end,
``report.json`` last; a failed or interrupted compile leaves none that look finished.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from rich.console import Console
from torch import nn

from hwprune.config import Budget, Options, SearchKind
from hwprune.cost.correction import Correction
from hwprune.frontends import NATIVE_FILES, LoadedModel
from hwprune.io import staged, write_text_atomic
from hwprune.pipeline import finish
from hwprune.pipeline.decode import DECODE_FILES
from hwprune.pipeline.measure import Measurer, Realised
from hwprune.pipeline.prepare import Prepared, prepare
from hwprune.pipeline.score import search_problem
from hwprune.pipeline.steps import step as step_of
from hwprune.plan import PlanBudget, Provenance, save_plan
from hwprune.render import markdown, write_plots
from hwprune.report import Report, build_report
from hwprune.runtime.onnx_files import copy_model, data_file
from hwprune.search.decide import Decision, SearchProblem, structure
from hwprune.search.learn import Learner
from hwprune.search.refine import Refinement, Round, pick, refine
from hwprune.transform.prune import unshared

ONNX_FILES = ("baseline.onnx", "pruned.onnx", "recovered.onnx", *DECODE_FILES)
ARTEFACTS = ("report.json", "report.md", "plan.json", "pruned.pt", "pruned_unmerged.pt", *NATIVE_FILES,
             *ONNX_FILES, *(str(data_file(Path(name))) for name in ONNX_FILES), "plots", "build_engine.sh",
             "baseline.engine", "pruned.engine", "timing.cache", "pruned.layers.json", "recovered.pt", "recover")


@dataclass
class Compiled:
    report: Report  # also written to ``report.json``
    model: nn.Module  # the pruned model (its spans merged), in eval mode


def compile_model(loaded: LoadedModel, options: Options, out_dir: str | Path, console: Console | None = None
                  ) -> Compiled:
    """Run the whole pipeline; returns the report (also written to ``out_dir/report.json``) and the pruned
    model. Log lines go to ``console`` (default: stderr, never wrapped, so CI logs keep each line whole)."""
    console = console or Console(stderr=True, soft_wrap=True)
    with staged(Path(out_dir), ARTEFACTS) as stage:  # report.json moves last: its presence means finished
        stages: dict[str, float] = {}
        prepared = prepare(loaded, options, stage, partial(step_of, console, record=stages), console)
        compiled = compile_point(prepared, options, stage, console, stages)
        if options.recovery is not None:
            from hwprune.recovery.run import recover

            recover(stage, options.recovery, console)
        return compiled


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
    prepared = None
    for fraction in fractions:
        point = replace(options, budget=Budget("latency", fraction))
        console.print(f"[bold]frontier point: latency {fraction:g}[/bold]")
        folder = out / f"latency-{fraction:g}"
        with staged(folder, ARTEFACTS) as stage:
            stages: dict[str, float] = {}  # the first point's include the preparation all points share
            prepared = prepared or prepare(loaded, point, stage, partial(step_of, console, record=stages), console)
            reports.append(compile_point(prepared, point, stage, console, stages).report)
        prepared.baseline.onnx = folder / "baseline.onnx"  # the staged copy moved here
    with staged(out, ("frontier.json", "frontier.png")) as stage:
        write_frontier(reports, fractions, stage)
    return reports


def compile_point(prepared: Prepared, options: Options, stage: Path, console: Console, stages: dict[str, float]
                  ) -> Compiled:
    """One budget: score (once per model), search rounds, and the chosen round verified, measured, reported.
    The first budget's time counts from the start of ``prepare``; each step's wall time adds to ``stages``."""
    started = prepared.started if prepared.problem is None else time.perf_counter()
    step = partial(step_of, console, record=stages)
    loaded, analysis, runtime, predictor = prepared.loaded, prepared.analysis, prepared.runtime, prepared.cost.predictor
    if prepared.baseline.onnx != stage / "baseline.onnx":
        copy_model(prepared.baseline.onnx, stage / "baseline.onnx")
    measurer = Measurer.start(prepared.realiser, options, runtime, stage, stage / "baseline.onnx", prepared.calibration)
    baseline_predicted = predictor.predict({}).total_ms
    fraction = options.budget.fraction(measurer.baseline_ms if measurer.measurable else baseline_predicted)
    x = loaded.example_input
    provenance = Provenance(loaded.name, loaded.weights, loaded.seed, tuple(x.shape), tuple(options.exclude),
                            prepared.digest, options.target.name,
                            PlanBudget(options.budget.kind, options.budget.value, fraction),
                            predictor.provenance(), options.importance)
    if prepared.problem is None:
        prepared.problem = search_problem(prepared, options, measurer.recalibration, provenance, step, console)
    problem = replace(prepared.problem, provenance=provenance)
    settings = Refinement(options.tolerance, options.refine + 1 if measurer.measurable else 1, options.refine_seconds)
    so_far: list[Round] = []

    def on_round(done: Round) -> None:
        _print_round(console, fraction, done)
        so_far.append(done)
        _keep_only_the_pick(so_far, fraction)

    def measure_round(decision: Decision) -> tuple[float | None, Realised]:
        for done in so_far:  # one pruned model in memory at a time: the nearest so far is realised again if chosen
            done.realised.model = None
        return _measured(measurer, step, decision)

    rounds = refine(partial(_announced, problem, step), measure_round, fraction,
                    fraction * baseline_predicted, settings,
                    on_round, structure if options.search == SearchKind.JOINT else None,
                    Learner(problem, predictor, partial(_print_correction, console)))
    chosen = pick(rounds, fraction)
    if chosen.realised.model is None:  # a later round displaced it: its plan realises the same model again
        with step(f"realise the chosen round ({rounds.index(chosen)}) again"):
            chosen.realised.model = measurer.realise(chosen.decision.plan, measurer.recalibration, keep=False)
    finish.keep_chosen(chosen, rounds, measurer, loaded, stage, console)
    checked = finish.check(loaded, analysis, chosen, prepared.calibration, options, stage, step, console)
    measured = finish.measure(measurer, loaded, analysis, chosen.realised, runtime, options, fraction, stage, step,
                              console)
    built = finish.build(runtime, chosen, analysis, options, prepared.baseline.source, stage, step)
    save_plan(chosen.decision.plan, stage / "plan.json")
    report = build_report(loaded, analysis, options, predictor, problem, rounds, chosen, checked, measured, built,
                          time.perf_counter() - started, stages)
    with step("plots and report.md"):
        write_plots(report, stage / "plots")
        write_text_atomic(stage / "report.md", markdown(report))
    write_text_atomic(stage / "report.json", json.dumps(report.to_json(), indent=1) + "\n")
    return Compiled(report, unshared(chosen.realised.model, analysis.model))


def _announced(problem: SearchProblem, step, predicted_budget: float, hold: frozenset[str] | None) -> Decision:
    held = "" if hold is None else f", structure held: {len(hold)} depth options, widths move"
    with step(f"search + prune (predicted budget {predicted_budget:.3g} ms{held})"):
        return problem(predicted_budget, hold)


def _measured(measurer: Measurer, step, decision: Decision) -> tuple[float | None, Realised]:
    with step(f"realise, export and measure (round {measurer.rounds})"):
        return measurer(decision)


def _keep_only_the_pick(rounds: list[Round], fraction: float) -> None:
    """Only the round ``pick`` would choose of ``rounds`` keeps its pruned model in memory; the others keep
    their plans and ONNX files: a large model's rounds would otherwise hold a copy each."""
    chosen = pick(rounds, fraction)
    for done in rounds:
        if done is not chosen:
            done.realised.model = None


def _print_correction(console: Console, correction: Correction) -> None:
    console.print(f"  corrected {len(correction.options_ms)} depth options' predicted savings from "
                  f"{correction.rounds} measured rounds")


def _print_round(console: Console, fraction: float, done: Round) -> None:
    console.print(f"  predicted {done.decision.plan.predicted_ms:.3g} ms"
                  + ("" if done.fraction is None else f"; measured latency fraction {done.fraction:.3f}")
                  + f" (requested {fraction:.3f})")
