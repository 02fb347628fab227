"""Accuracy on real data: a CNN trained on scikit-learn's digits, pruned to a latency budget.

Random weights can only show how much of a computation pruning preserves; this shows what it
costs in accuracy. scikit-learn ships the digits (1,797 8x8 handwritten digits, no download):
they are upsampled to 64x64, split 70/30 (stratified, seeded), and a small residual CNN is
trained on the 70% (Adam, a few epochs on the CPU). Then for each budget:

- ``hwprune compile`` (cpu target, activation importance unless ``--importance``, 256 training
  images as ``--calib-data``, so the pruned model's BatchNorm statistics are re-estimated on them
  and the allocation strategy is chosen on them; no fine-tuning) prunes it, and its exported
  pruned.onnx is scored on the held-out 30%; once more with ``--recalibrate-bn off`` to show what
  the recalibration is worth, and once with ``--unconstrained`` (every layer reading a residual
  stream keeps its own input channels, the stream keeps their union);
- torch-pruning's uniform L1 pruning, with ``round_to=16`` and without, is bisected to the same
  measured latency, given the same BatchNorm recalibration, and scored the same way.

    pip install -e ".[bench]" && python benchmarks/digits_accuracy.py [--budgets 0.5,0.7]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from hwprune.config import Budget, Options
from hwprune.evaluate.batchnorm import recalibrate_batchnorm
from hwprune.frontends import LoadedModel
from hwprune.pipeline.compile import compile_model
from hwprune.runtime.ort import OnnxRuntime, make_session
from hwprune.targets import load_target

sys.path.insert(0, str(Path(__file__).resolve().parent))
from budget_accuracy import matched_uniform  # noqa: E402  (also puts the repository root on the path)

from tests.data.small_models import ResidualBlock  # noqa: E402

SIZE = 64


def digits_cnn() -> nn.Module:
    def stage(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                ResidualBlock(cout, cout)]

    return nn.Sequential(*stage(1, 64), *stage(64, 128), *stage(128, 256), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(256, 10))


def load_digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    data = sklearn_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = nn.functional.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    images = (images - images.mean()) / images.std()
    labels = torch.tensor(data.target)
    train_x, test_x, train_y, test_y = train_test_split(images, labels, test_size=0.3, stratify=labels,
                                                        random_state=0)
    return train_x, train_y, test_x, test_y


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, console: Console) -> nn.Module:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for start in range(0, len(x), 64):
            batch = order[start:start + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        console.print(f"epoch {epoch + 1}/{epochs}")
    return model.eval()


def accuracy(predict, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        logits = torch.cat([predict(x[i:i + 1]) for i in range(len(x))])
    return float((logits.argmax(dim=1) == y).double().mean())


def onnx_predictor(session):
    return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="0.5,0.7")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--importance", default="activation", choices=("l1", "l2", "bn", "taylor", "activation"))
    args = parser.parse_args()
    console = Console(width=160)
    target = load_target("cpu")
    threads, level = OnnxRuntime(target).settings
    train_x, train_y, test_x, test_y = load_digits()
    torch.manual_seed(0)
    model = train(digits_cnn(), train_x, train_y, args.epochs, console)
    baseline_accuracy = accuracy(model, test_x, test_y)
    console.print(f"trained: held-out accuracy {100 * baseline_accuracy:.1f}% on {len(test_x)} digits")
    rows = []
    with tempfile.TemporaryDirectory(prefix="hwprune-digits-") as tmp:
        tmp = Path(tmp)
        torch.save(train_x[:256], tmp / "calibration.pt")
        (tmp / "calibration.py").write_text(
            "import torch\n\ndef batches():\n"
            f"    x = torch.load({str(tmp / 'calibration.pt')!r}, weights_only=True)\n"
            "    return [x[i:i + 32] for i in range(0, len(x), 32)]\n")
        example = test_x[:1].clone()
        for budget in (float(b) for b in args.budgets.split(",")):
            out = tmp / f"out-{budget}"
            calib = f"{tmp / 'calibration.py'}:batches"
            scores, strategy = {}, None
            for variant in ("unconstrained", "off", "on"):  # the constrained, recalibrated compile last
                options = Options(target, Budget("latency", budget), importance=args.importance, calib_data=calib,
                                  recalibrate_bn="on" if variant == "unconstrained" else variant,
                                  unconstrained=variant == "unconstrained", search="width")
                loaded = LoadedModel("digits_cnn", copy.deepcopy(model), example, "trained on digits", None)
                report = compile_model(loaded, options, out, Console(quiet=True)).report
                session = make_session(str(out / "pruned.onnx"), threads, level)
                scores[variant] = (accuracy(onnx_predictor(session), test_x, test_y), report.speedup.measured)
                strategy = report.search.strategy
            baseline_session = make_session(str(out / "baseline.onnx"), threads, level)
            ours, speedup = scores["on"]
            uniform = []
            for round_to in (target.channel_alignment, None):
                match = matched_uniform(model, example, 1.0 / speedup, round_to, baseline_session, threads, level,
                                        tmp)
                recalibrate_batchnorm(match["model"], [train_x[i:i + 32] for i in range(0, 256, 32)])
                uniform.append((accuracy(match["model"], test_x, test_y), match["fraction"]))
            rows.append((budget, speedup, ours, scores["off"][0], strategy, scores["unconstrained"], uniform))
            console.print(f"budget {budget}: hwprune {100 * ours:.1f}% at {speedup:.2f}x "
                          f"({100 * scores['off'][0]:.1f}% without BN recalibration; allocation {strategy}; "
                          f"unconstrained {100 * scores['unconstrained'][0]:.1f}% at "
                          f"{scores['unconstrained'][1]:.2f}x), uniform round_to=16 {100 * uniform[0][0]:.1f}% at "
                          f"latency fraction {uniform[0][1]:.2f}, unrounded {100 * uniform[1][0]:.1f}% at "
                          f"{uniform[1][1]:.2f}")
    table = Table(title=f"digits CNN (held-out accuracy unpruned {100 * baseline_accuracy:.1f}%), pruned without "
                        "fine-tuning, cpu target")
    for column in ("budget", "hwprune speedup", "hwprune accuracy", "BN not recalibrated", "allocation",
                   "--unconstrained: accuracy (speedup)", "uniform round_to=16: accuracy (latency)",
                   "uniform unrounded: accuracy (latency)"):
        table.add_column(column, justify="right")
    for budget, speedup, ours, unrecalibrated, strategy, unconstrained, uniform in rows:
        table.add_row(f"{budget:.2f}", f"{speedup:.2f}x", f"{100 * ours:.1f}%", f"{100 * unrecalibrated:.1f}%",
                      strategy, f"{100 * unconstrained[0]:.1f}% ({unconstrained[1]:.2f}x)",
                      *(f"{100 * accuracy_:.1f}% ({fraction:.2f})" for accuracy_, fraction in uniform))
    console.print(table)


if __name__ == "__main__":
    main()
