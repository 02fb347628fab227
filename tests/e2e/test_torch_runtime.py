"""The torch runtime end to end on this CPU: compile on cpu-torch measures the modules (interleaved),
verifies the export and the module as the target runs it; bench times a build folder and a .pt2."""

import json

import pytest
import torch

from hwprune.cli import main
from tests import DATA

MODEL = f"{DATA / 'small_models.py'}:wide_cnn"  # its narrowest form is far below 0.6 on a busy machine too


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    code = main(["compile", MODEL, "--target", "cpu-torch", "--latency", "0.6", "--refine", "1", "--out", str(out)])
    return code, out


def test_compile_on_cpu_torch_is_measured_and_verified(build, capsys):
    code, out = build
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target"] == "cpu-torch" and report["verify"]["ok"]
    assert report["measurement"]["runtime"].startswith("PyTorch") and report["measurement"]["threads"] == 1
    assert report["measurement"]["graph_optimization_level"] == "eager" and report["budget"]["pairs"] > 0
    assert report["fingerprint"]["runtime"] == "torch" and report["fingerprint"]["single_ops"] == "eager"
    assert report["engine"]["path"] is None and "runs the PyTorch module itself" in report["engine"]["reason"]
    assert report["latency_model"]["kind"] == "lut" and report["latency_model"]["host"]["device"] == "cpu"


def test_bench_times_a_build_folder_and_a_pt2(build, tmp_path, capsys):
    _, out = build
    capsys.readouterr()
    assert main(["bench", str(out), "--target", "cpu-torch", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["model"].endswith("pruned.onnx") and record["fingerprint"]["runtime"] == "torch"
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    torch.export.save(torch.export.export(model, (torch.randn(1, 3, 8, 8),)), tmp_path / "m.pt2")
    assert main(["bench", str(tmp_path / "m.pt2"), "--target", "cpu-torch", "--baseline-model",
                 str(tmp_path / "m.pt2"), "--json"]) in (0, 1)
    assert json.loads(capsys.readouterr().out)["method"].startswith("interleaved")
    assert main(["bench", str(tmp_path / "m.pt2"), "--target", "cpu"]) == 2  # onnxruntime runs no .pt2
