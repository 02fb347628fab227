"""Does a small model with coarse depth steps land on its budget? The joint search on a model of about 5 ms
on this CPU whose residual blocks can each be dropped, so one step of the search moves the latency by a
sixth of the model: the refinement loop has to aim at the request and, once two structures bracket it,
hold one and move the widths.

For each budget, one whole compile (``--target cpu``, joint search, the default refinement) and, from its
report: every round's measured fraction, the verdict with its 95% interval and pairs, the wall time of the
rounds and of the compile.

    python benchmarks/small_model_budget.py [--budgets 0.5,0.7] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.data.small_models import ResidualBlock  # noqa: E402  (a block the joint search may drop whole)


def blocky_net() -> tuple[nn.Module, torch.Tensor]:
    """Stem, six droppable residual blocks of 48 channels (64 inside) at 32x32, a classifier."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 48, 3, stride=2, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
                          *(ResidualBlock(48, 64) for _ in range(6)), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(48, 10))
    return model.eval(), torch.randn(1, 3, 64, 64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="0.5,0.7")
    parser.add_argument("--out", type=Path, default=None, help="keep the builds here (default: a temporary folder)")
    args = parser.parse_args(argv)
    from hwprune.cli import main as hwprune

    out = args.out or Path(tempfile.mkdtemp(prefix="small-model-budget-"))
    spec = f"{Path(__file__).resolve()}:blocky_net"
    rows = []
    for budget in (float(b) for b in args.budgets.split(",")):
        folder = out / f"latency-{budget:g}"
        started = time.perf_counter()
        code = hwprune(["compile", spec, "--target", "cpu", "--latency", f"{budget:g}", "--search", "joint",
                        "--out", str(folder)])
        wall = time.perf_counter() - started
        if code != 0:
            print(f"latency {budget:g}: compile failed (exit {code})")
            return code
        report = json.loads((folder / "report.json").read_text())
        rounds = [a["measured_fraction"] for a in report["search"]["attempts"]]
        stages = report["stages"]
        rows.append({"requested": budget, "rounds": rounds, "chosen": report["search"]["chosen"],
                     "verdict": report["budget"]["verdict"], "fraction": report["budget"]["measured_fraction"],
                     "interval": report["budget"]["interval"], "pairs": report["budget"]["pairs"],
                     "speedup": report["speedup"]["measured"],
                     "baseline_ms": report["baseline"]["latency_ms"]["median"],
                     "dropped": len((report.get("depth") or {}).get("dropped", [])),
                     "rounds_seconds": sum(stages.get(s, 0) for s in ("search + prune", "realise, export and measure")),
                     "wall_seconds": wall})
    print(json.dumps(rows, indent=1))
    print("| requested | baseline ms | rounds (measured fraction) | chosen | blocks dropped | verdict | fraction "
          "(95% interval, pairs) | speedup | rounds' wall s | compile wall s |")
    print("|---|---:|---|---:|---:|---|---|---:|---:|---:|")
    for r in rows:
        low, high = r["interval"]
        print(f"| {r['requested']:g} | {r['baseline_ms']:.2f} | {', '.join(f'{f:.3f}' for f in r['rounds'])} | "
              f"{r['chosen']} | {r['dropped']} | {r['verdict']} | {r['fraction']:.3f} ({low:.3f} .. {high:.3f}, "
              f"{r['pairs']}) | {r['speedup']:.2f}x | {r['rounds_seconds']:.1f} | {r['wall_seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
