"""A Plan on disk: ``hwprune-plan/3`` JSON, and the files earlier versions wrote, converted on read.

A Plan is JSON so that it can be reviewed, diffed and re-applied without searching again (``hwprune
apply``); its provenance names the model, weights and input it was made for, with a digest of the
unpruned weights, so a re-application that would build a different model fails instead.

v3 adds a ``heads`` section beside ``width`` (attention-head groups, ``NAME:heads``, which v2 kept in
``width``) and writes every section whole (v2 left out what it did not use). A v2 file converts to
the same decisions; a v1 file (width only) too, with what v1 did not record (weights, seed, excludes,
the weights' digest) unknown, so apply cannot check it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from hwprune.errors import PlanError
from hwprune.io import read_json_document, write_text_atomic
from hwprune.plan.sections import (
    DroppedBlock,
    LatencyModelInfo,
    MergedSpan,
    NMLayer,
    PermutationGain,
    Plan,
    PlanBudget,
    Provenance,
    Recovery,
    Sparsity,
    WidthDecision,
)

FORMAT = "hwprune-plan/3"
V2_FORMAT = "hwprune-plan/2"
V1_FORMAT = "hwprune-plan/1"
HEADS_SUFFIX = ":heads"  # the id of an attention-head group (graph.heads), which v2 kept in ``width``


def plan_json(plan: Plan) -> dict:
    """The plan as a ``hwprune-plan/3`` document; a dropped layer's ``fold`` is written only where it has
    one (ReplaceMe), so plans without it read and write as before."""
    data = {"format": FORMAT, **asdict(plan)}
    data["depth"] = [{k: v for k, v in entry.items() if k != "fold" or v is not None} for entry in data["depth"]]
    return data


def save_plan(plan: Plan, path: str | Path) -> None:
    write_text_atomic(path, json.dumps(plan_json(plan), indent=1) + "\n")


def load_plan(path: str | Path) -> Plan:
    """Read a plan file (v3, or v2 or v1 converted); anything malformed is a PlanError naming the file."""
    path = Path(path)
    data = read_json_document(path, "plan", PlanError, FORMAT, older=(V2_FORMAT, V1_FORMAT))
    try:
        return plan_from_json(data)
    except PlanError as exc:
        raise PlanError(f"{path}: {exc}") from exc


def plan_from_json(data: dict) -> Plan:
    """A plan document of any version as a Plan."""
    try:
        if data["format"] == V1_FORMAT:
            return _from_v1(data)
        if data["format"] == V2_FORMAT:
            return _from_v2(data)
        return _from_v3(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PlanError(f"malformed plan ({data.get('format')}; {type(exc).__name__}: {exc})") from exc


def _from_v3(data: dict) -> Plan:
    """A v3 document; its optional parts (heads, depth, merge, sparsity's pattern, permutations and
    magnitudes, recovery) may be left out of a plan written by hand."""
    return _plan(data, _widths(data["width"]), _widths(data.get("heads", {})))


def _from_v2(data: dict) -> Plan:
    widths = _widths(data["width"])
    return _plan(data, {g: d for g, d in widths.items() if not g.endswith(HEADS_SUFFIX)},
                 {g: d for g, d in widths.items() if g.endswith(HEADS_SUFFIX)})


def _plan(data: dict, width: dict[str, WidthDecision], heads: dict[str, WidthDecision]) -> Plan:
    sparsity = data.get("sparsity") or {}
    return Plan(_provenance(data["provenance"]), float(data["predicted_ms"]), float(data["baseline_predicted_ms"]),
                width, heads, tuple(_merged(e) for e in data.get("merge", [])),
                tuple(_dropped(e) for e in data.get("depth", [])),
                Sparsity(_str(sparsity.get("pattern")), {str(k): _nm(e) for k, e in sparsity.get("layers", {}).items()},
                         {str(g): tuple(int(i) for i in order)
                          for g, order in sparsity.get("permutations", {}).items()},
                         {str(g): _gain(e) for g, e in sparsity.get("magnitude", {}).items()}),
                _recovery(data.get("recovery")), bool(data.get("bn_recalibration", False)))


def _from_v1(data: dict) -> Plan:
    budget = data["budget"]
    kind, value = str(budget["kind"]), float(budget["value"])
    fraction = {"latency": value, "speedup": 1 / value}.get(kind)  # a budget in ms: v1 kept no baseline
    provenance = {"model": data["model"], "weights": "unknown (plan v1)", "seed": None,
                  "input_shape": data["input_shape"], "exclude": [], "state_sha256": None,
                  "target": data["target"], "latency_model": data["latency_model"], "importance": data["importance"],
                  "budget": {"kind": kind, "value": value, "latency_fraction": fraction,
                             "predicted_budget_ms": budget.get("predicted_ms")}}
    return _from_v2({"provenance": provenance, "predicted_ms": data["predicted_ms"],
                     "baseline_predicted_ms": data["baseline_predicted_ms"], "width": data["groups"],
                     "bn_recalibration": data.get("bn_recalibration", False)})


def _provenance(p: dict) -> Provenance:
    budget, model = p["budget"], p["latency_model"]
    return Provenance(
        str(p["model"]), str(p["weights"]), None if p["seed"] is None else int(p["seed"]),
        tuple(int(d) for d in p["input_shape"]), tuple(str(e) for e in p["exclude"]),
        None if p["state_sha256"] is None else str(p["state_sha256"]), str(p["target"]),
        PlanBudget(str(budget["kind"]), float(budget["value"]), _float(budget["latency_fraction"]),
                   _float(budget.get("predicted_budget_ms"))),
        LatencyModelInfo(str(model["source"]), _str(model.get("runtime")), _str(model.get("runtime_version")),
                         None if model.get("threads") is None else int(model["threads"]),
                         _str(model.get("graph_optimization_level")), float(model["layer_scale"]),
                         float(model["rest_ms"]), _str(model.get("fingerprint")), _str(model.get("table"))),
        str(p["importance"]))


def _widths(data: dict) -> dict[str, WidthDecision]:
    return {str(gid): WidthDecision(int(g["keep"]), int(g["of"]), g["indices"], g.get("readers"))
            for gid, g in data.items()}


def _merged(e: dict) -> MergedSpan:
    return MergedSpan(tuple(str(c) for c in e["convs"]), tuple(str(a) for a in e["activations"]), _str(e.get("skip")))


def _dropped(e: dict) -> DroppedBlock:
    return DroppedBlock(str(e["block"]), _str(e["add"]), _str(e.get("fold")))


def _nm(e: dict) -> NMLayer:
    return NMLayer(int(e["n"]), int(e["m"]), str(e.get("criterion", "magnitude")), e.get("scale"))


def _gain(e: dict) -> PermutationGain:
    return PermutationGain(tuple(str(r) for r in e["readers"]), float(e["dense"]), float(e["identity"]),
                           float(e["permuted"]), str(e["weighted_by"]))


def _recovery(e: dict | None) -> Recovery | None:
    if e is None:
        return None
    return Recovery(str(e["data"]), int(e["epochs"]), dict(e["recipe"]), str(e["weights"]), str(e["note"]))


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _float(value: object) -> float | None:
    return None if value is None else float(value)
