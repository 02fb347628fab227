"""The Python API on an ``nn.Module`` a user holds: the README's example, run on a model built here and a
recorded latency table (nothing measured decides anything), plus the public names and their errors."""

import json
import math
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import hwprune
from hwprune.frontends import state_digest
from tests import DATA, ROOT
from tests.recorded_tables import adopt

PUBLIC = {"compile", "analyze", "apply", "recover", "latency", "bench", "Build", "Applied", "Latency", "Options",
          "Budget", "HwpruneError", "ModelSpecError", "PlanError", "Plan", "load_plan", "Report", "__version__"}


class TinyNet(nn.Module):
    """Two residual stages and a classifier: prunable groups with a residual coupling."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.Conv2d(64, 32, 3, padding=1), nn.BatchNorm2d(32))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        return self.head(x.mean((2, 3)))


def tiny_net() -> tuple[nn.Module, torch.Tensor, DataLoader]:
    torch.manual_seed(0)
    model = TinyNet().eval()
    images = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, images[:1], DataLoader(TensorDataset(images), batch_size=16)


def test_the_readme_example_compiles_an_in_memory_module_and_apply_rebuilds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path / "cache"))
    adopt("api-tinynet", tmp_path / "cache", "")
    model, example_input, loader = tiny_net()
    # the README's Python example
    build = hwprune.compile(model, example_input, target="cpu", latency=0.6, calib_data=loader,
                            out=tmp_path / "build", search="width", refine=0)
    report = build.report
    assert report.measured and math.isfinite(report.speedup.measured) and report.speedup.measured > 0
    assert report.measurement["runtime"].startswith("onnxruntime") and report.measurement["threads"] == 1
    assert report.verify.ok and report.fidelity.inputs == "batches passed in by the caller"
    assert {"report.json", "plan.json", "pruned.onnx", "pruned.pt"} <= set(build.paths)
    session = onnxruntime.InferenceSession(str(build.paths["pruned.onnx"]), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = build.pruned_model(example_input).numpy()
    got = session.run(None, {session.get_inputs()[0].name: example_input.numpy()})[0]
    assert np.allclose(got, expected, atol=1e-4, rtol=1e-3)
    assert sum(p.numel() for p in build.pruned_model.parameters()) < sum(p.numel() for p in model.parameters())
    made_for = build.plan.provenance
    assert made_for.model == "tests.e2e.test_api.TinyNet" and made_for.state_sha256 == state_digest(model)
    assert json.loads(build.paths["report.json"].read_text())["speedup"]["measured"] == report.speedup.measured
    # re-applied through the API with the module passed in: the same model
    applied = hwprune.apply(build.paths["plan.json"], model, example_input, out=tmp_path / "applied",
                            calib_data=loader)
    compiled, again = build.pruned_model.state_dict(), applied.pruned_model.state_dict()
    assert compiled.keys() == again.keys() and all(torch.equal(compiled[k], again[k]) for k in compiled)
    other = TinyNet().eval()  # other weights: refused, naming both digests
    with pytest.raises(hwprune.PlanError, match="weights sha256"):
        hwprune.apply(build.paths["plan.json"], other, example_input, out=tmp_path / "other", calib_data=loader)


def test_analyze_and_latency_take_a_module_and_errors_are_the_typed_ones():
    model, example_input, _ = tiny_net()
    analysis = hwprune.analyze(model, example_input)
    assert analysis.prunable() and analysis.name == "tests.e2e.test_api.TinyNet"
    predicted = hwprune.latency(model, example_input, target="jetson-orin-nano")
    assert predicted.source == "analytic" and predicted.predicted_ms > 0 and predicted.measured_ms is None
    with pytest.raises(hwprune.ModelSpecError, match="needs an example input"):
        hwprune.analyze(model)
    # a spec takes its input shape as the command line's --input-shape does: a tensor's, or the shape alone
    spec = f"{DATA / 'small_models.py'}:tiny_cnn"
    assert hwprune.analyze(spec, (2, 3, 8, 8)).capture.example_input.shape == (2, 3, 8, 8)
    assert hwprune.analyze(spec, torch.zeros(1, 3, 12, 12)).capture.example_input.shape == (1, 3, 12, 12)
    with pytest.raises(hwprune.HwpruneError, match="exactly one budget"):
        hwprune.compile(model, example_input, out="unused", latency=0.5, speedup=2.0)
    with pytest.raises(hwprune.HwpruneError, match="--search"):
        hwprune.compile(model, example_input, out="unused", latency=0.5, search="sideways")


@pytest.mark.parametrize("first", ["submodules", "public names"])
def test_no_public_name_is_shadowed_by_a_submodule_whatever_the_import_order(first):
    code = (
        "import importlib, pkgutil, sys, types\n"
        "import hwprune\n"
        f"public = {sorted(PUBLIC)!r}\n"
        "def submodules():\n"
        "    for info in pkgutil.walk_packages(hwprune.__path__, 'hwprune.'):\n"
        "        if not info.name.startswith(('hwprune.cli', 'hwprune.__main__')):\n"
        "            importlib.import_module(info.name)\n"
        "def names():\n"
        "    return {n: getattr(hwprune, n) for n in public}\n"
        + ("submodules(); found = names()\n" if first == "submodules" else "found = names(); submodules()\n")
        + "assert sorted(hwprune.__all__) == sorted(public), hwprune.__all__\n"
        "bad = [n for n in public if isinstance(getattr(hwprune, n), types.ModuleType) or getattr(hwprune, n) is not "
        "found[n]]\n"
        "assert not bad, bad\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT)
    assert run.returncode == 0, run.stderr[-1500:]


def test_every_public_name_is_documented():
    for name in PUBLIC - {"__version__"}:
        assert (getattr(hwprune, name).__doc__ or "").strip(), name
