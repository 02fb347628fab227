"""Golden plans: the first search round's Plan for fixed models, inputs and a recorded latency table.

The models are seeded, the calibration inputs are the compile's seeded noise and the latency
table (``data/golden/latency.json``) was measured once and is read, never re-measured, so the
first round's plan depends on the search alone. ``test_golden_plans.py`` checks that the code still
writes the recorded plans (``assert_same_plan``: decisions exactly, floats to a relative 1e-9).
``python -m tests.golden`` records them anew (only when a change of plan is intended, and said so in
the commit; ``--profile`` first measures what the table lacks). ``data/golden/v1/`` holds the same
plans as the code before the Plan became ``hwprune-plan/2`` wrote them.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import torch
import torchvision

from hwprune.cost.lut import LatencyTable, load_table
from hwprune.cost.model_latency import predictor_for
from hwprune.evaluate.calibration import load_calibration
from hwprune.frontends import state_digest
from hwprune.graph.analyze import Analysis, analyze
from hwprune.graph.segments import segments
from hwprune.importance.readers import reader_scores
from hwprune.importance.scores import score_groups
from hwprune.importance.sensitivity import group_sensitivity
from hwprune.pipeline.measure import Realiser
from hwprune.pipeline.score import copies_ms
from hwprune.plan import Plan, PlanBudget, Provenance, plan_json
from hwprune.search.decide import CalibrationBatches, Realisation, Scores, SearchProblem, SearchSettings
from hwprune.targets import load_target

DATA = Path(__file__).parent / "data" / "golden"
TABLE = DATA / "latency.json"
MODELS = ("resnet18", "mobilenet_v2", "small_densenet")
SHAPES = {"resnet18": (1, 3, 64, 64), "mobilenet_v2": (1, 3, 64, 64), "small_densenet": (1, 3, 128, 128)}
# Of the predicted latency: the small DenseNet's unpruned stem and pooling leave it less to remove.
FRACTIONS = {"resnet18": 0.5, "mobilenet_v2": 0.5, "small_densenet": 0.7}


def golden_model(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The seeded model and example input of one golden case."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        if name == "small_densenet":
            model = torchvision.models.DenseNet(growth_rate=16, block_config=(4, 4), num_init_features=32, bn_size=2)
        else:
            model = torchvision.models.get_model(name, weights=None)
    return model.eval(), torch.randn(SHAPES[name], generator=torch.Generator().manual_seed(0))


def golden_analysis(name: str) -> Analysis:
    model, x = golden_model(name)
    return analyze(model, x, f"golden:{name}", strict=False)


def first_round_plan(name: str, unconstrained: bool, table: LatencyTable, table_path: Path) -> Plan:
    """The plan the compile's first search round makes for ``name`` at its fraction of the predicted latency."""
    search, budget = golden_problem(name, unconstrained, table, table_path)
    return search(budget).plan


def golden_problem(name: str, unconstrained: bool, table: LatencyTable, table_path: Path
                   ) -> tuple[SearchProblem, float]:
    """The compile's search problem for ``name`` (auto allocation) and its first round's predicted budget."""
    target = load_target("cpu")
    analysis = golden_analysis(name)
    x = analysis.capture.example_input
    predictor = predictor_for(analysis, table, target)
    calibration = load_calibration(None, x)
    importance = score_groups(analysis, "activation", calibration.batches)
    sensitivity = group_sensitivity(analysis, importance, calibration.batches[0])
    fraction = FRACTIONS[name]
    provenance = Provenance(analysis.name, "random, seed 0", 0, tuple(x.shape), (), state_digest(analysis.model),
                            target.name, PlanBudget("latency", fraction, fraction), predictor.provenance(),
                            "activation")
    scores = reader_scores(analysis, segments(analysis), calibration.batches[:1]) if unconstrained else {}
    realiser = Realiser(analysis)
    copies = (lambda plan: copies_ms(realiser, predictor, target, table_path, plan)) if unconstrained else None
    search = SearchProblem(analysis, predictor, Scores(importance, sensitivity, reader_scores=scores),
                           SearchSettings("width", "auto", target.channel_alignment, 0.1), provenance,
                           CalibrationBatches(calibration.batches, False), Realisation(copies_ms=copies))
    return search, fraction * predictor.predict({}).total_ms


def plan_text(plan: Plan) -> str:
    return json.dumps(plan_json(plan), indent=1) + "\n"


def assert_same_plan(computed: object, recorded: object, where: str = "plan") -> None:
    """Every decision (key, count, index, name, flag) exactly, every float to a relative 1e-9: a golden
    must fail on a changed decision or prediction, not on a float's last digits."""
    if isinstance(recorded, float) or isinstance(computed, float):
        assert isinstance(computed, int | float) and isinstance(recorded, int | float), f"{where}: {computed!r}"
        assert math.isclose(computed, recorded, rel_tol=1e-9, abs_tol=1e-12), f"{where}: {computed!r} != {recorded!r}"
    elif isinstance(recorded, dict):
        assert isinstance(computed, dict) and computed.keys() == recorded.keys(), f"{where}: keys differ"
        for key, value in recorded.items():
            assert_same_plan(computed[key], value, f"{where}.{key}")
    elif isinstance(recorded, list):
        assert isinstance(computed, list) and len(computed) == len(recorded), f"{where}: lengths differ"
        for i, (a, b) in enumerate(zip(computed, recorded, strict=True)):
            assert_same_plan(a, b, f"{where}[{i}]")
    else:
        assert computed == recorded and type(computed) is type(recorded), f"{where}: {computed!r} != {recorded!r}"


def golden_path(name: str, unconstrained: bool, version: str = "") -> Path:
    return DATA / version / f"{name}-{'unconstrained' if unconstrained else 'constrained'}.json"


def record(profile: bool = False) -> None:
    """Write every plan from the recorded table; with ``profile``, first measure what the table lacks
    (only on the host that recorded it: the table refuses another)."""
    target = load_target("cpu")
    DATA.mkdir(parents=True, exist_ok=True)
    if profile:
        from hwprune.cost.model_latency import open_table
        from hwprune.pipeline.profiling import profile_model

        table, _ = open_table(target, TABLE, create=True)
        for name in MODELS:
            profile_model(golden_analysis(name), target, table)
            table.save(TABLE)
    table = load_table(TABLE)
    for name in MODELS:
        for unconstrained in (False, True):
            plan = first_round_plan(name, unconstrained, table, TABLE)  # profiles missing copy ops into TABLE
            golden_path(name, unconstrained).write_text(plan_text(plan))
            print(f"{golden_path(name, unconstrained).name}: {len(plan.width)} groups", file=sys.stderr)


def recorded_table(copy_to: Path) -> tuple[LatencyTable, Path]:
    """The recorded table, and a scratch path to save it to (the search saves any copy op it profiles)."""
    return load_table(TABLE), copy_to / "latency.json"


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        record(profile="--profile" in sys.argv[1:])
