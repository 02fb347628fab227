"""``hwprune bench``: latency records of ONNX files, and regression checks for CI.

Two forms of check. Against a saved record (``--baseline FILE``): only meaningful on the same
host and runtime settings, so the fingerprints must match (or the caller overrides). Against
another model in the same run (``--baseline-model OTHER.onnx``): both are timed interleaved
(A B A B ...), so a noisy CI machine slows both alike; this is the robust form.

Exit codes: 0 within tolerance, 1 regression, 2 bad input or incomparable records.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from hwprune.errors import HwpruneError
from hwprune.io import read_json_document, write_text_atomic
from hwprune.runtime import Runner, Runtime, runtime_for
from hwprune.runtime.timing import Timing
from hwprune.targets import Target

FORMAT = "hwprune-bench/1"
# What must agree for two records' absolute times to be compared.
FINGERPRINT_FIELDS = ("host", "runtime", "runtime_version", "threads", "graph_optimization_level")


class BenchInputError(HwpruneError):
    """A model or record that cannot be benchmarked or compared."""


def _runtime(target: Target) -> Runtime:
    """The target's own runtime, or exit 2 saying why it cannot run here: never another in its place."""
    runtime = runtime_for(target)
    runtime.require("bench times a model on its target's runtime only")
    return runtime


def _load(runtime: Runtime, path: Path) -> Runner:
    if not path.is_file():
        raise BenchInputError(f"{path}: file not found")
    try:
        return runtime.load(path)
    except HwpruneError:
        raise
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BenchInputError(f"{path}: not a loadable ONNX model ({first[:200]})") from exc


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _timing_json(timing: Timing) -> dict:
    return {"median_ms": timing.median_ms, "p90_ms": timing.p90_ms, "p99_ms": timing.p99_ms,
            "spread": timing.spread, "samples": timing.samples}


def record(path: Path, target: Target, seconds: float = 2.0) -> dict:
    """Time one ONNX file on this host with the target's settings: a self-describing record."""
    runtime = _runtime(target)
    runner = _load(runtime, path)
    try:
        timing = runtime.time(runner, warmup=10, min_runs=30, min_seconds=seconds)
    finally:
        runner.close()
    return {"format": FORMAT, "model": str(path), "model_sha256": file_hash(path),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "fingerprint": runtime.fingerprint(),
            **_timing_json(timing)}


def save_record(data: dict, path: Path) -> None:
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def load_record(path: Path) -> dict:
    data = read_json_document(path, "bench record", BenchInputError, FORMAT)
    if not isinstance(data.get("median_ms"), int | float):
        raise BenchInputError(f"{path}: not a {FORMAT} bench record (no median_ms)")
    return data


@dataclass
class Verdict:
    ratio: float  # candidate / baseline latency
    tolerance: float
    baseline_ms: float
    candidate_ms: float
    method: str

    @property
    def regressed(self) -> bool:
        return self.ratio > 1 + self.tolerance

    def to_json(self) -> dict:
        return {"ratio": self.ratio, "tolerance": self.tolerance, "baseline_ms": self.baseline_ms,
                "candidate_ms": self.candidate_ms, "method": self.method, "regressed": self.regressed}


def compare_to_record(current: dict, baseline: dict, tolerance: float, allow_mismatch: bool = False) -> Verdict:
    """Candidate record vs a saved one; refuses records from other hosts or settings unless allowed."""
    mismatched = [key for key in FINGERPRINT_FIELDS
                  if current["fingerprint"].get(key) != baseline.get("fingerprint", {}).get(key)]
    if mismatched and not allow_mismatch:
        raise BenchInputError(f"baseline was measured under another {', '.join(mismatched)}; absolute times are not "
                              "comparable (use --baseline-model for an interleaved comparison, or "
                              "--allow-fingerprint-mismatch)")
    return Verdict(current["median_ms"] / baseline["median_ms"], tolerance, baseline["median_ms"],
                   current["median_ms"], "saved record")


def compare_models(candidate: Path, baseline: Path, target: Target, tolerance: float, rounds: int = 40) -> Verdict:
    """Both models timed in one interleaved run; the ratio is the median of per-round ratios."""
    runtime = _runtime(target)
    runners = [_load(runtime, baseline), _load(runtime, candidate)]
    try:
        if runners[0].input_shapes != runners[1].input_shapes:
            raise BenchInputError(f"{candidate} and {baseline} take different inputs; they are not the same job")
        result = runtime.interleaved(runners, rounds=rounds)
    finally:
        for runner in runners:
            runner.close()
    return Verdict(result.ratios[1], tolerance, result.timings[0].median_ms, result.timings[1].median_ms,
                   f"interleaved, {rounds} rounds")
