"""A pruning decision as data: which channels of which group to keep, and why (budget, prediction).

A Plan is JSON so it can be reviewed, versioned and re-applied without searching again
(``hwprune apply``). Re-applying checks that the model still has the groups and sizes the plan
was made for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from hwprune.errors import PlanError
from hwprune.graph.analyze import Analysis
from hwprune.graph.segments import segments
from hwprune.importance.scores import Importance, select
from hwprune.io import read_json_document, write_text_atomic
from hwprune.latency.predictor import TablePredictor
from hwprune.search.readers import SegmentMask
from hwprune.search.width import SearchResult
from hwprune.transform.prune import prune
from hwprune.transform.unconstrained import export_unconstrained

FORMAT = "hwprune-plan/1"


@dataclass
class GroupDecision:
    keep: int
    of: int
    indices: list[int]
    # Unconstrained pruning: the group channels each dense reader reads (``indices`` is their union).
    readers: dict[str, list[int]] | None = None


@dataclass
class Plan:
    model: str
    input_shape: list[int]
    target: str
    budget: dict
    predicted_ms: float
    baseline_predicted_ms: float
    latency_model: dict
    importance: str
    groups: dict[str, GroupDecision] = field(default_factory=dict)
    # The pruned model's BatchNorm statistics were re-estimated on calibration data; re-applying
    # the plan needs the same data to give the same model.
    bn_recalibration: bool = False

    def to_json(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_json(), indent=1) + "\n")

    def keep(self) -> dict[str, list[int]]:
        return {gid: decision.indices for gid, decision in self.groups.items()}

    def masks(self) -> dict[str, SegmentMask]:
        """The unconstrained groups' masks (empty for a constrained plan)."""
        return {gid: SegmentMask(d.indices, d.readers) for gid, d in self.groups.items() if d.readers is not None}


def load_plan(path: str | Path) -> Plan:
    """Read a plan file; anything malformed is a PlanError naming the file."""
    path = Path(path)
    data = read_json_document(path, "plan", PlanError, FORMAT)
    try:
        groups = {gid: GroupDecision(int(g["keep"]), int(g["of"]), [int(i) for i in g["indices"]],
                                     _readers(g.get("readers")))
                  for gid, g in data["groups"].items()}
        return Plan(str(data["model"]), [int(d) for d in data["input_shape"]], str(data["target"]),
                    dict(data["budget"]), float(data["predicted_ms"]), float(data["baseline_predicted_ms"]),
                    dict(data["latency_model"]), str(data["importance"]), groups,
                    bool(data.get("bn_recalibration", False)))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PlanError(f"{path}: malformed plan ({type(exc).__name__}: {exc})") from exc


def apply_plan(plan: Plan, analysis: Analysis, reorder: bool = True) -> nn.Module:
    """Prune ``analysis``'s model as the plan says (in place), after checking it fits the model;
    unconstrained groups are exported reordered unless ``reorder`` is False (the naive export)."""
    for gid, decision in plan.groups.items():
        group = analysis.group(gid)
        if group.channels != decision.of:
            raise PlanError(f"group {gid}: the plan was made for {decision.of} channels, the model has "
                            f"{group.channels}")
        if len(decision.indices) != decision.keep:
            raise PlanError(f"group {gid}: keep is {decision.keep} but {len(decision.indices)} indices are listed")
    masks = plan.masks()
    if not masks:
        return prune(analysis, plan.keep())
    found = segments(analysis)
    readers = {s.group: {r.layer for r in s.readers} for s in found}
    for gid, mask in masks.items():
        if any(not set(reads) <= set(mask.union) for reads in mask.reads.values()):
            raise PlanError(f"group {gid}: a reader reads channels outside the group's kept indices")
        if set(mask.reads) != readers.get(gid):
            raise PlanError(f"group {gid}: the plan's readers ({', '.join(sorted(mask.reads))}) are not the model's "
                            f"({', '.join(sorted(readers.get(gid, ())) or 'none: not a segment')})")
    keep = {gid: d.indices for gid, d in plan.groups.items() if gid not in masks}
    return export_unconstrained(analysis, found, masks, keep, reorder)


def _readers(data: object) -> dict[str, list[int]] | None:
    return None if data is None else {str(layer): [int(i) for i in reads] for layer, reads in dict(data).items()}


def build_plan(analysis: Analysis, target: str, budget_kind: str, budget_value: float, result: SearchResult,
               importance: Importance, predictor: TablePredictor, bn_recalibration: bool = False,
               masks: dict[str, SegmentMask] | None = None) -> Plan:
    """The plan for a search result: each group's best channels by importance (or, for the groups
    in ``masks``, each reader's own and their union), and the provenance."""
    groups = {}
    for gid, count in result.counts.items():
        group = analysis.group(gid)
        if masks and gid in masks:
            groups[gid] = GroupDecision(len(masks[gid].union), group.channels, masks[gid].union, masks[gid].reads)
        else:
            groups[gid] = GroupDecision(count, group.channels, select(importance.scores[gid], count, group.repeat))
    provenance = predictor.table.provenance
    latency_model = {"source": "lut", "fingerprint": provenance.get("fingerprint"),
                     "runtime": provenance.get("runtime"), "runtime_version": provenance.get("runtime_version"),
                     "threads": provenance.get("threads"),
                     "graph_optimization_level": provenance.get("graph_optimization_level"),
                     "layer_scale": predictor.layer_scale, "rest_ms": predictor.rest_ms}
    budget = {"kind": budget_kind, "value": budget_value, "predicted_ms": result.predicted_ms}
    return Plan(analysis.name, list(analysis.capture.example_input.shape), target, budget, result.predicted_ms,
                result.baseline_predicted_ms, latency_model, importance.method, groups, bn_recalibration)
