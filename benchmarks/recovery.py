"""Recovery on real data: Fashion-MNIST, a CNN trained here, pruned to a measured latency budget on
the cpu target, then distilled back; torch-pruning's uniform pruning beside it at equal latency.

The complete data set (60,000 training and 10,000 test images) comes from Debian's
``dataset-fashion-mnist`` package, which this script installs with apt when it is missing. Images
are upsampled from 28x28 to ``--size`` (at 28x28 and batch 1, onnxruntime's per-call cost would
hide the model's). For each budget:

- ``hwprune compile`` (cpu, activation importance, 512 training images as ``--calib-data``) gives
  the pruned model; its accuracy is taken without recovery (the plan re-applied, BatchNorm as
  trained), with BatchNorm re-estimated only (the compile's ``pruned.pt``), and after ``hwprune
  recover`` (distillation with labels for ``--recover-epochs``);
- torch-pruning's uniform L1 pruning with ``round_to=16`` is bisected to the same measured latency,
  given the same BatchNorm re-estimation and the same distillation recipe;
- since uniform's latency moves in steps of 16 channels, the bisection rarely lands on the budget:
  hwprune is compiled again at the fraction uniform reached and the two pruned models are timed
  against each other in one interleaved run; while hwprune is more than 2% slower, it is compiled
  again at that fraction divided by the ratio (at most 3 tries), and the build at equal latency (or
  the nearest) is recovered with the same recipe, so the comparison is made where uniform is.

Then the 0.5 build is recovered again by ``torchrun --nproc_per_node 2`` (gloo): its loss curve
beside the one-process curve (same seeds, same global batch) and the throughput of each.

    pip install -e ".[bench]" && python benchmarks/recovery.py [--budgets 0.5,0.7] [--size 32] [--one-process]
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from hwprune.evaluate.batchnorm import recalibrate_batchnorm
from hwprune.export.onnx_export import export_onnx
from hwprune.frontends import load_model
from hwprune.graph.analyze import analyze
from hwprune.plan import load_plan
from hwprune.recovery.data import open_data
from hwprune.recovery.distill import Recipe, Trained, distil
from hwprune.recovery.run import RecoverOptions, recover
from hwprune.recovery.world import World
from hwprune.runtime.ort import OnnxRuntime, make_session, random_feeds
from hwprune.runtime.timing import interleave
from hwprune.targets import load_target
from hwprune.transform.realise import realise

sys.path.insert(0, str(Path(__file__).resolve().parent))
from budget_accuracy import matched_uniform  # noqa: E402

DATASET = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530  # of the training images


def ensure_dataset(console: Console) -> None:
    if (DATASET / "train-images-idx3-ubyte.gz").is_file():
        return
    console.print("installing Debian's dataset-fashion-mnist (apt) ...")
    subprocess.run(["apt-get", "install", "-y", "dataset-fashion-mnist"], check=True, capture_output=True)


def idx(name: str) -> numpy.ndarray:
    with gzip.open(DATASET / name) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return numpy.frombuffer(data, dtype=numpy.uint8, offset=4 + 4 * dims).reshape(shape)


def load(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    def images(name: str) -> torch.Tensor:
        x = torch.from_numpy(idx(name).copy()).float().div(255).unsqueeze(1)
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return (x - MEAN) / STD

    def labels(name: str) -> torch.Tensor:
        return torch.from_numpy(idx(name).astype(numpy.int64))

    return (images("train-images-idx3-ubyte.gz"), labels("train-labels-idx1-ubyte.gz"),
            images("t10k-images-idx3-ubyte.gz"), labels("t10k-labels-idx1-ubyte.gz"))


MODEL_FILE = '''"""The benchmark's Fashion-MNIST CNN, its trained weights beside it."""
import os
import torch
from torch import nn


def block(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(block(c, c), nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.body(x))


def build():
    return nn.Sequential(block(1, 32), block(32, 64, 2), Residual(64), block(64, 128, 2), Residual(128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


def cnn():
    model = build()
    weights = os.path.join(os.path.dirname(__file__), "weights.pt")
    if os.path.exists(weights):
        model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval(), torch.zeros(1, 1, SIZE, SIZE)
'''

DATA_FILE = '''"""The benchmark's data for --data / --eval-data / --calib-data (tensors saved beside it)."""
import os
import torch
from torch.utils.data import TensorDataset

HERE = os.path.dirname(__file__)


def _load(name):
    return torch.load(os.path.join(HERE, name), weights_only=True)


def train():
    return TensorDataset(_load("train_x.pt"), _load("train_y.pt"))


def test():
    x, y = _load("test_x.pt"), _load("test_y.pt")
    return list(zip(x.split(500), y.split(500)))


def calib():
    return list(_load("train_x.pt")[:512].split(64))
'''


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, console: Console) -> float:
    """Adam with a cosine schedule, batch 128; returns the seconds it took."""
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = epochs * ((len(y) + 127) // 128)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for index in torch.randperm(len(y)).split(128):
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        console.print(f"  training epoch {epoch + 1}/{epochs}: last loss {float(loss.detach()):.3f}, "
                      f"{time.perf_counter() - started:.0f} s")
    model.eval()
    return time.perf_counter() - started


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float(sum((model(xb).argmax(1) == yb).sum() for xb, yb in zip(x.split(500), y.split(500),
                                                                              strict=True)) / len(y))


def student_of(build: Path, weights: str | None) -> nn.Module:
    """The plan's pruned model with ``weights`` (None: BatchNorm as trained, no re-estimation)."""
    plan = load_plan(build / "plan.json")
    loaded = load_model(plan.provenance.model, tuple(plan.provenance.input_shape))
    model = realise(plan, analyze(loaded.module, loaded.example_input, loaded.name, strict=False))
    if weights is not None:
        model.load_state_dict(torch.load(build / weights, weights_only=True))
    return model.eval()


def compile_build(cli, spec: str, data: str, budget: float, build: Path) -> None:
    code = cli(["compile", spec, "--target", "cpu", "--latency", str(budget), "--search", "width", "--calib-data",
                f"{data}:calib", "--out", str(build)])
    if code:
        raise SystemExit(f"compile at {budget} failed")


def compile_and_recover(cli, spec: str, data: str, budget: float, build: Path, recipe: Recipe,
                        test_x: torch.Tensor, test_y: torch.Tensor, console: Console, compiled: bool = False) -> dict:
    """``hwprune compile`` at ``budget`` (unless ``compiled``) then ``hwprune recover``: speedup and the
    three accuracies."""
    if not compiled:
        compile_build(cli, spec, data, budget, build)
    report = json.loads((build / "report.json").read_text())
    row = {"speedup": report["speedup"]["measured"],
           "keep": {gid: f"{d['keep']}/{d['of']}" for gid, d in
                    json.loads((build / "plan.json").read_text())["width"].items()},
           "none": accuracy(student_of(build, None), test_x, test_y),
           "bn": accuracy(student_of(build, "pruned.pt"), test_x, test_y)}
    started = time.perf_counter()
    section = recover(build, RecoverOptions(f"{data}:train", f"{data}:test", recipe), console)
    row["recover_seconds"] = time.perf_counter() - started
    row["recovered"] = accuracy(student_of(build, "recovered.pt"), test_x, test_y)
    row["loss"], row["samples_per_second"] = section["loss"], section["samples_per_second"]
    return row


MATCH_TOLERANCE = 0.02  # head to head, hwprune at most this much slower than uniform counts as equal latency
MATCH_ATTEMPTS = 3


def matched_builds(cli, spec: str, data: str, fraction: float, uniform: nn.Module, x: torch.Tensor, work: Path,
                   budget: float, threads: int, level: str) -> list[tuple[float, float, Path]]:
    """hwprune compiled at uniform's measured fraction and timed head to head against uniform; while
    it is more than ``MATCH_TOLERANCE`` slower, compiled again at the fraction scaled by that ratio
    (the same bisection uniform gets, from the other side). Each try: (ratio, fraction, build)."""
    tried = []
    for attempt in range(MATCH_ATTEMPTS):
        path = work / f"matched-{budget}-{attempt}"
        compile_build(cli, spec, data, round(fraction, 3), path)
        ratio = head_to_head(path / "pruned.onnx", uniform, x, work, threads, level)
        tried.append((ratio, round(fraction, 3), path))
        if ratio <= 1 + MATCH_TOLERANCE:
            break
        fraction /= ratio
    return tried


def head_to_head(ours: Path, uniform: nn.Module, x: torch.Tensor, work: Path, threads: int, level: str) -> float:
    """hwprune's latency over uniform's, both timed in one interleaved run (medians of per-round ratios)."""
    theirs = make_session(str(export_onnx(uniform, x, work / "uniform.onnx")), threads, level)
    session = make_session(str(ours), threads, level)
    feeds = random_feeds(theirs)
    return interleave([lambda: theirs.run(None, feeds), lambda: session.run(None, feeds)], rounds=30).ratios[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="0.5,0.7")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--train-epochs", type=int, default=4)
    parser.add_argument("--recover-epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one-process", action="store_true", help="skip the torchrun run")
    args = parser.parse_args()
    console = Console(width=180)
    ensure_dataset(console)
    train_x, train_y, test_x, test_y = load(args.size)
    console.print(f"Fashion-MNIST: {len(train_y)} training and {len(test_y)} test images at {args.size}x{args.size}")
    work = Path(tempfile.mkdtemp(prefix="hwprune-recovery-"))
    target = load_target("cpu")
    threads, level = OnnxRuntime(target).settings
    results: dict = {"size": args.size, "budgets": {}}
    try:
        (work / "model.py").write_text(MODEL_FILE.replace("SIZE", str(args.size)))
        (work / "data.py").write_text(DATA_FILE)
        for name, tensor in (("train_x", train_x), ("train_y", train_y), ("test_x", test_x), ("test_y", test_y)):
            torch.save(tensor, work / f"{name}.pt")
        spec, data = f"{work / 'model.py'}:cnn", f"{work / 'data.py'}"
        model = load_model(spec).module
        seconds = train(model, train_x, train_y, args.train_epochs, console)
        torch.save(model.state_dict(), work / "weights.pt")
        teacher = load_model(spec).module
        baseline = accuracy(teacher, test_x, test_y)
        results.update(baseline_accuracy=baseline, train_epochs=args.train_epochs, train_seconds=seconds)
        console.print(f"trained {args.train_epochs} epochs in {seconds / 60:.1f} min: test accuracy "
                      f"{100 * baseline:.2f}%")
        recipe = Recipe(epochs=args.recover_epochs, batch_size=args.batch_size)
        calib = [train_x[i:i + 64] for i in range(0, 512, 64)]
        from hwprune.cli import main as cli

        for budget in (float(b) for b in args.budgets.split(",")):
            build = work / f"build-{budget}"
            row = compile_and_recover(cli, spec, data, budget, build, recipe, test_x, test_y, console)
            speedup = row["speedup"]
            session = make_session(str(build / "baseline.onnx"), threads, level)
            match = matched_uniform(teacher, test_x[:1].clone(), 1.0 / speedup, target.channel_alignment, session,
                                    threads, level, work)
            uniform = match["model"]
            recalibrate_batchnorm(uniform, calib)
            row["uniform_fraction"], row["uniform_bn"] = match["fraction"], accuracy(uniform, test_x, test_y)
            torch.manual_seed(recipe.seed)
            distil(copy.deepcopy(teacher), uniform, open_data(f"{data}:train", test_x[:1], recipe.batch_size,
                                                              recipe.seed), recipe, World(0, 1, torch.device("cpu")),
                   Trained())
            row["uniform_recovered"] = accuracy(uniform, test_x, test_y)
            tried = matched_builds(cli, spec, data, match["fraction"], uniform, test_x[:1].clone(), work, budget,
                                   threads, level)
            ratio, fraction, path = min(tried, key=lambda t: (t[0] > 1 + MATCH_TOLERANCE, abs(t[0] - 1)))
            matched = compile_and_recover(cli, spec, data, fraction, path, recipe, test_x, test_y, console,
                                          compiled=True)
            matched.update(versus_uniform=ratio, fraction=fraction, tried=[(f, r) for r, f, _ in tried])
            row["matched"] = matched
            results["budgets"][str(budget)] = row
            console.print(f"budget {budget}: hwprune {speedup:.2f}x: {100 * row['none']:.2f}% without recovery, "
                          f"{100 * row['bn']:.2f}% BN only, {100 * row['recovered']:.2f}% after "
                          f"{recipe.epochs} epochs ({row['recover_seconds'] / 60:.1f} min); uniform round_to=16 at "
                          f"fraction {row['uniform_fraction']:.3f}: {100 * row['uniform_bn']:.2f}% BN only, "
                          f"{100 * row['uniform_recovered']:.2f}% after; hwprune matched (tries: fraction, ratio "
                          f"{matched['tried']}): latency {matched['versus_uniform']:.3f}x uniform's, "
                          f"{100 * matched['bn']:.2f}% BN only, "
                          f"{100 * matched['recovered']:.2f}% after")

        if not args.one_process:
            first = work / f"build-{args.budgets.split(',')[0]}"
            two = work / "two-processes"
            shutil.copytree(first, two)
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                       str(free_port()), "-m", "hwprune", "recover", str(two), "--data", f"{data}:train",
                       "--eval-data", f"{data}:test", "--epochs", str(recipe.epochs), "--batch-size",
                       str(recipe.batch_size)]
            subprocess.run(command, check=True, env=dict(os.environ))
            section = json.loads((two / "report.json").read_text())["recovery"]
            results["two_processes"] = {"loss": section["loss"], "samples_per_second": section["samples_per_second"],
                                        "recovered": accuracy(student_of(two, "recovered.pt"), test_x, test_y)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = Table(title=f"Fashion-MNIST {args.size}x{args.size}, CNN trained {args.train_epochs} epochs "
                        f"({results['train_seconds'] / 60:.1f} min): test accuracy "
                        f"{100 * results['baseline_accuracy']:.2f}%")
    for column in ("budget", "hwprune speedup", "no recovery", "BN only", f"distilled {args.recover_epochs} ep",
                   "uniform r16 latency", "uniform BN only", "uniform distilled", "hwprune at uniform's: latency",
                   "BN only", "distilled"):
        table.add_column(column, justify="right")
    for budget, row in results["budgets"].items():
        table.add_row(budget, f"{row['speedup']:.2f}x", f"{100 * row['none']:.2f}%", f"{100 * row['bn']:.2f}%",
                      f"{100 * row['recovered']:.2f}%", f"{row['uniform_fraction']:.3f}",
                      f"{100 * row['uniform_bn']:.2f}%", f"{100 * row['uniform_recovered']:.2f}%",
                      f"{row['matched']['versus_uniform']:.3f}x uniform", f"{100 * row['matched']['bn']:.2f}%",
                      f"{100 * row['matched']['recovered']:.2f}%")
    console.print(table)
    one = results["budgets"][args.budgets.split(",")[0]]
    if "two_processes" in results:
        console.print(f"loss per epoch, 1 process: {[round(v, 4) for v in one['loss']]}, "
                      f"{[round(v) for v in one['samples_per_second']]} samples/s; 2 processes: "
                      f"{[round(v, 4) for v in results['two_processes']['loss']]}, "
                      f"{[round(v) for v in results['two_processes']['samples_per_second']]} samples/s, accuracy "
                      f"{100 * results['two_processes']['recovered']:.2f}%")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
