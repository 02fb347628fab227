"""Write the shipped RTX 2080 Ti TensorRT table, latency_models/rtx-2080ti-trt84-fp32-b128.json, from the CSV.

    python benchmarks/make_shipped_table.py [--data DIR] [--check]

The source is the public table of Kim et al. (ICML 2023) read by benchmarks/gpu_analytic_check.py
(its docstring and the data's README.md say how it was measured); that script's checked mapping of
their single-span rows to torchvision mobilenet_v2's layers is the one used here. Only single-span
rows are shipped: a merged span is a conv the model does not have. The harness's fixed per-call
cost, fitted as that script fits it, is recorded too: hwprune/cost/shipped.py needs it to fill
the widths the table lacks. The output is a function of the CSV alone (no timestamps), so the
committed file can be regenerated and compared: ``--check`` exits 1 when it differs instead of
writing it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
from pathlib import Path

from gpu_analytic_check import (
    BATCH,
    DEFAULT_DATA,
    RESOLUTION,
    TIMES,
    Layer,
    harness_ms,
    load_rows,
    mapped_layers,
    residual_ends,
    single_rows,
)

from hwprune.cost.lut import Entry, LatencyTable, fingerprint
from hwprune.targets import load_target

OUT = Path(__file__).resolve().parents[1] / "latency_models" / "rtx-2080ti-trt84-fp32-b128.json"
Z90 = 1.2816  # 90th percentile of the standard normal: p90 from mean and standard deviation
REPOSITORY = "snu-mllab/Efficient-CNN-Depth-Compression"
SOURCE_FILE = "utils/table/mbv2_1.0/" + TIMES
RUNS_PER_ROW = 1000
TARGET = "rtx-2080ti-trt84-fp32"  # the device profile made for this table


def layer_records(rows: list[dict], layers: list[Layer]) -> list[dict]:
    """One record per mapped layer: its source row, measured mean and spread, and its table key."""
    ends = residual_ends(layers)
    return [{"layer": layers[r["st"]].name, "row": [r["st"], r["end"]], "mean_ms": r["ms"], "stdev_ms": r["std"],
             "residual_end": r["end"] in ends, "signature": layers[r["st"]].sig.key()} for r in single_rows(rows)]


def entries(records: list[dict]) -> dict[str, Entry]:
    """Table entries: layers with one signature (repeated blocks) pool their rows, equal run counts each."""
    by_key: dict[str, list[dict]] = {}
    for record in records:
        by_key.setdefault(record["signature"], []).append(record)
    table = {}
    for key, group in by_key.items():
        mean = statistics.fmean(r["mean_ms"] for r in group)
        pooled = math.sqrt(statistics.fmean(r["stdev_ms"] ** 2 + (r["mean_ms"] - mean) ** 2 for r in group))
        table[key] = Entry(mean, mean + Z90 * pooled, RUNS_PER_ROW * len(group))
    return table


def provenance(rows: list[dict], records: list[dict], shipped: int, checks: list[str], per_call_ms: float,
               digest: str) -> dict:
    """Everything a reader needs to judge the numbers; ``target``..``host`` are the lut format's binding fields."""
    merged = sum(r["end"] > r["st"] + 1 for r in rows)
    settings = {
        "target": TARGET, "device": "rtx-2080ti", "gpu": "NVIDIA GeForce RTX 2080 Ti",
        "runtime": "tensorrt", "runtime_version": "8.4.3", "threads": None, "graph_optimization_level": None,
        "host": {"gpu": "NVIDIA GeForce RTX 2080 Ti", "dtype": "fp32", "cpu": "unknown (not published)"},
    }
    return {
        **settings,
        "fingerprint": fingerprint(settings),
        "frontend": "torch_tensorrt 1.2.0 on PyTorch 1.12.1+cu113 (the source repository's asset/requirements.txt)",
        "precision": "fp32",
        "batch": BATCH,
        "input": f"mobilenet_v2's layer shapes at {BATCH}x3x{RESOLUTION}x{RESOLUTION}",
        "statistic": "mean of 1000 timed runs after 2000 warm-up, CUDA events",
        "fields": (f"median_ms holds the measured mean (no median was published); p90_ms = mean + {Z90} x standard "
                   "deviation (normal approximation, no percentile was published); samples = timed runs"),
        "timed_module": ("one engine per row: the layer as a Conv2d with bias followed by ReLU (no BatchNorm, no "
                         "residual add), on the feature map the layer reads (their utils/dp.py generate_time_table)"),
        "per_call_ms": per_call_ms,
        "per_call": (f"the harness's fixed cost per timed call, which every entry includes: fitted, not measured (the "
                     f"offset of the {TARGET} profile's analytic model on the even single-span rows, as "
                     "benchmarks/gpu_analytic_check.py fits it); a whole engine pays it once, so a sum of entries "
                     "overstates one. hwprune/cost/shipped.py keeps it fixed across widths"),
        "date": "unknown",
        "published": ("2023-05-29, the source repository's first commit; the file name's suffix 1228 may be the "
                      "measurement's month and day (not confirmed)"),
        "source": {"repository": REPOSITORY, "files": [SOURCE_FILE], "sha256": digest,
                   "commit": "af369055267515424150fb786d00e5b6e6404c4c (unchanged through c59bc24)",
                   "method": ["utils/measure.py", "utils/dp.py", "models/model_op.py"],
                   "paper": ("Kim et al., Efficient Latency-Aware CNN Depth Compression via Two-Stage Dynamic "
                             "Programming, ICML 2023")},
        "licence": "MIT, Copyright (c) 2023 snu-mllab",
        "mapping": {
            "model": f"torchvision mobilenet_v2 (width 1.0), input {BATCH}x3x{RESOLUTION}x{RESOLUTION}",
            "rule": ("single-span row (p, p + 1) is the (p + 1)-th conv after the stem, features.1.conv.0.0 ... "
                     "features.17.conv.2; the stem (features.0.0), the last 1x1 conv (features.18.0) and the "
                     "classifier were not timed"),
            "checks": checks,
            "residual_rows": ("a row that ends a residual block is the block's projection conv alone, without the "
                              "skip add (their code times a single-input conv + ReLU)"),
            "repeated_layers": (f"layers with one signature (repeated blocks) share one entry, the mean of their "
                                f"rows: {len(records)} rows -> {shipped} entries"),
            "not_shipped": f"the {merged} multi-span rows: merged convs, not layers of the model",
            "generator": "benchmarks/make_shipped_table.py",
            "layers": records,
        },
    }


def build(data: Path) -> LatencyTable:
    """The table for the CSV in ``data``, through the checked mapping (stops if the mapping fails)."""
    rows = load_rows(data / TIMES)
    layers, checks = mapped_layers(rows)
    records = layer_records(rows, layers)
    measured = entries(records)
    per_call = harness_ms(rows, layers, load_target(TARGET))
    digest = hashlib.sha256((data / TIMES).read_bytes()).hexdigest()
    return LatencyTable(provenance(rows, records, len(measured), checks, per_call, digest), measured,
                        call_overhead_ms=None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"directory with {TIMES}")
    parser.add_argument("--check", action="store_true", help=f"compare with {OUT.name} instead of writing it")
    args = parser.parse_args(argv)
    table = build(args.data.resolve())
    if args.check:  # compared as parsed JSON: tuples and lists, float repr and spacing do not matter
        same = OUT.is_file() and json.loads(OUT.read_text()) == json.loads(json.dumps(table.to_json()))
        print(f"{OUT}: {'up to date' if same else 'differs from the CSV; re-run without --check'}")
        return 0 if same else 1
    table.save(OUT)
    print(f"wrote {OUT}: {len(table.entries)} entries from {len(table.provenance['mapping']['layers'])} layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
