"""Measured latency lookup tables: JSON files keyed by OpSignature, with their provenance.

A table is valid only for the settings it was measured with (device, runtime and its version,
threads, graph optimisation level, host). Loading checks all of them against what the caller
expects, and a corrupt or mismatched file is an error, never a silent wrong prediction.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from hwprune.cost.signature import OpSignature
from hwprune.errors import HwpruneError
from hwprune.io import read_json_document, write_text_atomic
from hwprune.runtime.timing import Timing

FORMAT = "hwprune-lut/1"
# Provenance fields that must match for a table to apply; the rest (date, method) is information.
BINDING_FIELDS = ("target", "runtime", "runtime_version", "threads", "graph_optimization_level", "host")


class LutError(HwpruneError):
    """A lookup table that is corrupt or was measured under other settings."""


@dataclass
class Entry:
    median_ms: float
    p90_ms: float
    samples: int


@dataclass
class LatencyTable:
    """Measured op latencies for one device + runtime configuration."""

    provenance: dict
    entries: dict[str, Entry] = field(default_factory=dict)
    # Whole unpruned models measured at profile time: key "spec|input shape" -> median ms.
    models: dict[str, float] = field(default_factory=dict)
    # Median time of running a one-op session on a 1-element tensor: the per-call cost that every
    # single-op measurement includes once but a whole model pays only once in total.
    call_overhead_ms: float | None = None

    def get(self, signature: OpSignature) -> Entry | None:
        return self.entries.get(signature.key())

    def put(self, signature: OpSignature, timing: Timing) -> None:
        self.entries[signature.key()] = Entry(timing.median_ms, timing.p90_ms, timing.samples)

    def to_json(self) -> dict:
        return {"format": FORMAT, "provenance": self.provenance, "call_overhead_ms": self.call_overhead_ms,
                "models": self.models,
                "entries": {key: vars(entry) for key, entry in sorted(self.entries.items())}}

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.to_json(), indent=1) + "\n")


def fingerprint(provenance: dict) -> str:
    binding = {key: provenance.get(key) for key in BINDING_FIELDS}
    return hashlib.sha1(json.dumps(binding, sort_keys=True).encode()).hexdigest()[:12]


def new_table(provenance: dict, method: dict) -> LatencyTable:
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return LatencyTable({**provenance, "fingerprint": fingerprint(provenance), "created": created, "method": method})


def load_table(path: str | Path, expected: dict | None = None) -> LatencyTable:
    """Read a table; with ``expected`` provenance, refuse one measured under other settings."""
    path = Path(path)
    data = read_json_document(path, "latency table", LutError, FORMAT)
    if not isinstance(data.get("entries"), dict):
        raise LutError(f"{path}: not a {FORMAT} latency table (no entries)")
    provenance = data.get("provenance")
    if not isinstance(provenance, dict) or any(key not in provenance for key in BINDING_FIELDS):
        raise LutError(f"{path}: latency table lacks its provenance ({', '.join(BINDING_FIELDS)})")
    if expected is not None:
        wrong = [f"{key}: table {provenance.get(key)!r}, now {expected.get(key)!r}"
                 for key in BINDING_FIELDS if provenance.get(key) != expected.get(key)]
        if wrong:
            raise LutError(f"{path}: measured under other settings ({'; '.join(wrong)}); re-run hwprune profile")
    entries = {}
    for key, value in data["entries"].items():
        try:
            OpSignature.from_key(key)
            entry = Entry(float(value["median_ms"]), float(value["p90_ms"]), int(value["samples"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise LutError(f"{path}: corrupt entry {key!r} ({type(exc).__name__}: {exc})") from exc
        if not entry.median_ms > 0 or entry.samples < 1:
            raise LutError(f"{path}: entry {key!r} has no valid measurement")
        entries[key] = entry
    models = data.get("models", {})
    if not isinstance(models, dict) or not all(isinstance(v, int | float) and v > 0 for v in models.values()):
        raise LutError(f"{path}: corrupt whole-model measurements")
    overhead = data.get("call_overhead_ms")
    if overhead is not None and not (isinstance(overhead, int | float) and overhead >= 0):
        raise LutError(f"{path}: corrupt call_overhead_ms")
    return LatencyTable(provenance, entries, {k: float(v) for k, v in models.items()}, overhead)
