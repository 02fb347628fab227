"""Evidence for the export path: compile three models on ``cpu``, check the reports, gate with bench.

For resnet50, mobilenet_v2 and a ViT built in code (``small_vit`` below, ViT-S/16-sized: 6
layers, 6 heads, width 384), run ``hwprune compile MODEL --target cpu --latency 0.6`` as a user
would (a subprocess), then check what the report claims: verification passed with max abs error
<= 1e-4, the three plots exist and are PNGs, report.md is there. Then ``hwprune bench`` is run
``--repeats`` times each way: pruned against baseline (must exit 0: no regression) and baseline
against pruned (must exit 1: a regression). Prints a table of everything.

    python benchmarks/export_evidence.py [--models resnet50,mobilenet_v2,vit] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from hwprune.render import PLOTS

MODELS = {"resnet50": "torchvision:resnet50", "mobilenet_v2": "torchvision:mobilenet_v2",
          "vit": f"{Path(__file__).resolve()}:small_vit"}


def small_vit():
    """A ViT-S/16-sized vision transformer with random weights, built in code."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=224, patch_size=16, num_layers=6, num_heads=6, hidden_dim=384,
                              mlp_dim=1536, num_classes=1000)
    with torch.no_grad():  # torchvision starts the head at zero: give it weights so outputs mean something
        model.heads.head.weight.normal_(0, 0.02)
    return model.eval(), torch.randn(1, 3, 224, 224)


def hwprune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hwprune.cli", *args], capture_output=True, text=True)


def evidence(name: str, spec: str, repeats: int, folder: Path, console: Console) -> dict:
    out = folder / name
    started = time.perf_counter()
    done = hwprune("compile", spec, "--target", "cpu", "--latency", "0.6", "--out", str(out))
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        console.print(f"[red]{name}: compile failed[/red]: {done.stderr.strip().splitlines()[-1]}")
        return {"model": name, "compiled": False}
    report = json.loads((out / "report.json").read_text())
    plots = all((out / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in PLOTS)
    pruned, baseline = str(out / "pruned.onnx"), str(out / "baseline.onnx")
    faster = [hwprune("bench", pruned, "--baseline-model", baseline, "--tolerance", "0.05").returncode
              for _ in range(repeats)]
    slower = [hwprune("bench", baseline, "--baseline-model", pruned, "--tolerance", "0.05").returncode
              for _ in range(repeats)]
    console.print(f"{name}: {done.stdout.strip().splitlines()[0]}")
    return {"model": name, "compiled": True, "seconds": seconds, "verify_ok": report["verify"]["ok"],
            "max_abs_err": report["verify"]["max_abs_err"], "plots": plots, "md": (out / "report.md").exists(),
            "speedup": report["speedup"]["measured"], "predicted": report["speedup"]["predicted"],
            "cosine": report["fidelity"]["cosine"], "faster_exits": faster, "slower_exits": slower}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", metavar="DIR", help="keep the compile outputs in DIR")
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="hwprune-evidence-") as tmp:
        folder = Path(args.keep or tmp)
        rows = [evidence(name, MODELS[name], args.repeats, folder, console) for name in args.models.split(",")]
    table = Table(title="hwprune compile --target cpu --latency 0.6, then hwprune bench (interleaved, tolerance 0.05)")
    for column in ("model", "verify", "max abs err", "plots + md", "speedup (pred.)", "cosine",
                   "bench pruned vs base", "bench base vs pruned", "compile s"):
        table.add_column(column)
    for r in rows:
        if not r["compiled"]:
            table.add_row(r["model"], "compile failed", *[""] * 7)
            continue
        table.add_row(r["model"], "ok" if r["verify_ok"] else "FAIL", f"{r['max_abs_err']:.1e}",
                      "yes" if r["plots"] and r["md"] else "NO", f"{r['speedup']:.2f}x ({r['predicted']:.2f}x)",
                      f"{r['cosine']:.4f}", " ".join(map(str, r["faster_exits"])),
                      " ".join(map(str, r["slower_exits"])), f"{r['seconds']:.0f}")
    console.print(table)
    good = [r for r in rows if r["compiled"]]
    verified = sum(r["verify_ok"] and r["max_abs_err"] <= 1e-4 for r in good)
    expected = sum(r["faster_exits"].count(0) + r["slower_exits"].count(1) for r in good)
    runs = sum(len(r["faster_exits"]) + len(r["slower_exits"]) for r in good)
    console.print(f"verify ok with max abs err <= 1e-4: {verified}/{len(rows)}; bench exit codes as expected "
                  f"(0 for pruned vs baseline, 1 for baseline vs pruned) in {expected}/{runs} runs")


if __name__ == "__main__":
    main()
