"""On-device kit: time a folder of single-op graphs into a latency table, resuming where it stopped.

    python export/profile_ops.py OPS_DIR --target jetson-orin-nano [--out table.json]

OPS_DIR is written by ``hwprune profile MODEL --target T --export-ops OPS_DIR``: the single-op
ONNX graphs the pruning search needs (``manifest.json`` names them) and the whole models the
predictor is anchored on. Each is timed with the target's runtime (TensorRT engines built and timed
with Polygraphy; onnxruntime on CPU targets) into a table in the ``latency_models/`` schema
(``hwprune-lut/1``) whose provenance names the device, runtime and version, and on a Jetson the
L4T release, JetPack, power mode and clocks. The table is rewritten after every op, so a rerun
skips what is done. Progress (count, elapsed, ETA) goes to stderr, a JSON summary to stdout.
Torch-free: needs numpy, onnx and onnxruntime (or TensorRT, Polygraphy and cuda-python).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hwprune.cost.lut import FORMAT, new_table  # noqa: E402
from hwprune.errors import HwpruneError  # noqa: E402
from hwprune.io import write_text_atomic  # noqa: E402
from hwprune.runtime import runtime_for  # noqa: E402
from hwprune.runtime.kit import answer, device_facts, read_manifest  # noqa: E402
from hwprune.targets import load_target  # noqa: E402


def _resumed(path: Path, provenance: dict) -> dict | None:
    """The table a previous run left at ``path``, if it was measured under the same settings."""
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text())
    except ValueError:
        return None
    if table.get("format") != FORMAT or table.get("provenance", {}).get("fingerprint") != provenance["fingerprint"]:
        raise HwpruneError(f"{path}: a table measured under other settings; move it away or pass another --out")
    return table


def profile(folder: Path, target_name: str, out: Path, log=print) -> dict:
    manifest = read_manifest(folder)
    if manifest["target"] != target_name:
        raise HwpruneError(f"{folder}: ops were exported for target {manifest['target']}, not {target_name}")
    runtime = runtime_for(load_target(target_name))
    runtime.require("profile where the target's runtime is installed")
    fresh = new_table(runtime.provenance(), runtime.method).provenance
    table = _resumed(out, fresh) or {"format": FORMAT, "provenance": {**fresh, "device": device_facts()},
                                     "call_overhead_ms": None, "models": {}, "entries": {}}
    todo = [op for op in manifest["ops"] if op["name"] not in table["entries"]]
    models = [m for m in manifest.get("models", []) if m["name"] not in table["models"]]
    skipped = len(manifest["ops"]) - len(todo)
    started = time.perf_counter()
    overhead = manifest.get("call_overhead")
    if overhead and table["call_overhead_ms"] is None:
        table["call_overhead_ms"] = runtime.time_graph(folder / overhead["file"],
                                                       tuple(overhead["shape"]), overhead.get("calls")).median_ms
    log(f"profile_ops: {len(todo)} ops and {len(models)} models to time on {runtime.name}"
        + (f" ({skipped} done already)" if skipped else ""))
    for i, op in enumerate(todo, 1):  # by path: a large model's weights are beside it
        timing = runtime.time_graph(folder / op["file"], tuple(op["shape"]), op.get("calls"))
        table["entries"][op["name"]] = {"median_ms": timing.median_ms, "p90_ms": timing.p90_ms,
                                        "samples": timing.samples, "p99_ms": timing.p99_ms, "spread": timing.spread}
        write_text_atomic(out, json.dumps(table, indent=1) + "\n")
        elapsed = time.perf_counter() - started
        log(f"[{i}/{len(todo)}] {elapsed:.1f} s elapsed, ETA {elapsed / i * (len(todo) - i):.1f} s")
    for spec in models:
        runner = runtime.load(folder / spec["file"])
        try:
            table["models"][spec["name"]] = runtime.time(runner, warmup=5, min_runs=30, min_seconds=0.5).median_ms
        finally:
            runner.close()
        write_text_atomic(out, json.dumps(table, indent=1) + "\n")
    write_text_atomic(out, json.dumps(table, indent=1) + "\n")
    return {"table": str(out), "measured": len(todo), "models": len(models), "skipped": skipped,
            "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, metavar="OPS_DIR", help="written by hwprune profile --export-ops")
    parser.add_argument("--target", required=True, help="device profile, e.g. jetson-orin-nano")
    parser.add_argument("--out", type=Path, help="the table to write (default: OPS_DIR/table.json)")
    args = parser.parse_args(argv)
    return answer("profile_ops", lambda: profile(args.folder, args.target, args.out or args.folder / "table.json",
                                                 lambda line: print(line, file=sys.stderr, flush=True)))


if __name__ == "__main__":
    sys.exit(main())
