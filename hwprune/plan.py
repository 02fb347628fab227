"""A pruning decision as plain data: what to keep, remove, merge and sparsify, and what it was made for.

The search is the only author of a Plan and the transform passes its only reader. A Plan is JSON
so that it can be reviewed, diffed and re-applied without searching again (``hwprune apply``);
its provenance names the model, weights and input it was made for, with a digest of the unpruned
weights, so a re-application that would build a different model fails instead.

Sections: ``width`` (per channel group: the kept indices; for unconstrained groups also each
reader's channels), ``depth`` (blocks removed), ``merge`` (spans merged, activations removed),
``sparsity`` (per layer the N:M pattern, per group the input-channel permutation), ``recovery``
(distillation). Sections this version cannot act on yet are empty, and a plan that fills them is
refused by the transform rather than half-applied.

This module imports nothing of hwprune but errors and io: a Plan is data, not behaviour.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hwprune.errors import PlanError
from hwprune.io import read_json_document, write_text_atomic

FORMAT = "hwprune-plan/2"
V1_FORMAT = "hwprune-plan/1"


@dataclass
class WidthDecision:
    keep: int
    of: int
    indices: list[int]
    # Unconstrained pruning: the group channels each dense reader reads (``indices`` is their union).
    readers: dict[str, list[int]] | None = None


@dataclass
class Provenance:
    """What the plan was made for: re-applying it anywhere else is an error, not a different model."""

    model: str
    weights: str  # where the unpruned weights came from ("random, seed 0", a file, a factory)
    seed: int | None  # the seed random weights were drawn with (None: not random)
    input_shape: list[int]
    exclude: list[str]
    state_sha256: str | None  # digest of the unpruned state dict (None: converted from a v1 plan)
    target: str
    budget: dict
    latency_model: dict
    importance: str


@dataclass
class Plan:
    provenance: Provenance
    predicted_ms: float
    baseline_predicted_ms: float
    width: dict[str, WidthDecision] = field(default_factory=dict)
    depth: list[dict] = field(default_factory=list)
    merge: list[dict] = field(default_factory=list)
    sparsity: dict = field(default_factory=lambda: {"layers": {}, "permutations": {}})
    recovery: dict | None = None
    # The pruned model's BatchNorm statistics are re-estimated on calibration data; re-applying
    # the plan needs the same data to give the same model.
    bn_recalibration: bool = False

    def to_json(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_json(), indent=1) + "\n")

    def keep(self) -> dict[str, list[int]]:
        return {gid: decision.indices for gid, decision in self.width.items()}


def load_plan(path: str | Path) -> Plan:
    """Read a plan file (v2, or v1 converted); anything malformed is a PlanError naming the file."""
    path = Path(path)
    data = read_json_document(path, "plan", PlanError, FORMAT, older=(V1_FORMAT,))
    if data["format"] == V1_FORMAT:
        try:
            data = from_v1(data)
        except PlanError as exc:
            raise PlanError(f"{path}: {exc}") from exc
    return _from_json(path, data)


def from_v1(data: dict) -> dict:
    """A ``hwprune-plan/1`` document in v2 form: its groups are the width section; what v1 did not
    record (weights, seed, excludes, the weights' digest) is unknown, so apply cannot check it."""
    try:
        provenance = {"model": data["model"], "weights": "unknown (plan v1)", "seed": None,
                      "input_shape": data["input_shape"], "exclude": [], "state_sha256": None,
                      "target": data["target"], "budget": data["budget"], "latency_model": data["latency_model"],
                      "importance": data["importance"]}
        return {"format": FORMAT, "provenance": provenance, "predicted_ms": data["predicted_ms"],
                "baseline_predicted_ms": data["baseline_predicted_ms"], "width": data["groups"],
                "bn_recalibration": data.get("bn_recalibration", False)}
    except (KeyError, TypeError) as exc:
        raise PlanError(f"malformed plan ({V1_FORMAT}; {type(exc).__name__}: {exc})") from exc


def _from_json(path: Path, data: dict) -> Plan:
    try:
        p = data["provenance"]
        provenance = Provenance(str(p["model"]), str(p["weights"]), None if p["seed"] is None else int(p["seed"]),
                                [int(d) for d in p["input_shape"]], [str(e) for e in p["exclude"]],
                                None if p["state_sha256"] is None else str(p["state_sha256"]), str(p["target"]),
                                dict(p["budget"]), dict(p["latency_model"]), str(p["importance"]))
        width = {str(gid): WidthDecision(int(g["keep"]), int(g["of"]), [int(i) for i in g["indices"]],
                                         _readers(g.get("readers")))
                 for gid, g in data["width"].items()}
        return Plan(provenance, float(data["predicted_ms"]), float(data["baseline_predicted_ms"]), width,
                    list(data.get("depth", [])), list(data.get("merge", [])),
                    dict(data.get("sparsity", {"layers": {}, "permutations": {}})), data.get("recovery"),
                    bool(data.get("bn_recalibration", False)))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PlanError(f"{path}: malformed plan ({type(exc).__name__}: {exc})") from exc


def _readers(data: object) -> dict[str, list[int]] | None:
    return None if data is None else {str(layer): [int(i) for i in reads] for layer, reads in dict(data).items()}
