"""`hwprune bench`: records, regression exit codes, fingerprints and bad input."""

import json

import pytest
import torch
from torch import nn

from hwprune.cli import main
from hwprune.export.onnx_export import export_onnx


def conv_model(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    x = torch.randn(1, 3, 48, 48)
    return export_onnx(conv_model(64), x, folder / "wide.onnx"), export_onnx(conv_model(8), x, folder / "narrow.onnx")


def test_interleaved_comparison_passes_the_faster_and_fails_the_slower(models, capsys):
    wide, narrow = models
    assert main(["bench", str(narrow), "--baseline-model", str(wide), "--tolerance", "0.05"]) == 0
    assert capsys.readouterr().out.startswith("ok:")
    assert main(["bench", str(wide), "--baseline-model", str(narrow), "--tolerance", "0.05"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("REGRESSION:") and "ratio" in out


def test_saved_record_round_trip_and_comparison(models, tmp_path, capsys):
    wide, narrow = models
    record = tmp_path / "wide.json"
    assert main(["bench", str(wide), "--save", str(record)]) == 0
    data = json.loads(record.read_text())
    assert data["format"] == "hwprune-bench/1" and data["median_ms"] > 0 and len(data["model_sha256"]) == 64
    assert data["fingerprint"]["threads"] == 1 and data["fingerprint"]["host"]["cpu"]
    capsys.readouterr()
    assert main(["bench", str(narrow), "--baseline", str(record), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["comparison"]["ratio"] < 1 and not result["comparison"]["regressed"]


def test_fingerprint_mismatch_is_refused_unless_allowed(models, tmp_path, capsys):
    wide, narrow = models
    record = tmp_path / "other_host.json"
    assert main(["bench", str(wide), "--save", str(record)]) == 0
    data = json.loads(record.read_text())
    data["fingerprint"]["runtime_version"] = "0.0.1"
    record.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["bench", str(narrow), "--baseline", str(record)]) == 2
    assert "runtime_version" in capsys.readouterr().err
    assert main(["bench", str(narrow), "--baseline", str(record), "--allow-fingerprint-mismatch"]) == 0


@pytest.mark.parametrize("content, message", [
    (None, "file not found"),
    (b"this is not onnx", "not a loadable ONNX model"),
])
def test_bad_model_exits_2_with_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    assert main(["bench", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_corrupt_baseline_record_exits_2(models, tmp_path, capsys):
    wide, _narrow = models
    record = tmp_path / "bad.json"
    record.write_text("{")
    assert main(["bench", str(wide), "--baseline", str(record)]) == 2
    assert "corrupt bench record, not JSON" in capsys.readouterr().err


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None, reason="TensorRT is installed")
@pytest.mark.parametrize("extra", [[], ["--baseline-model", "WIDE"]])
def test_a_tensorrt_target_is_never_timed_with_another_runtime(models, tmp_path, capsys, extra):
    wide, narrow = models
    argv = ["bench", str(narrow), "--target", "t4", "--save", str(tmp_path / "r.json"),
            *[str(wide) if a == "WIDE" else a for a in extra]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hwprune: error: target t4 is timed with TensorRT: TensorRT is not installed")
    assert len(err.splitlines()) == 1 and not (tmp_path / "r.json").exists()
    assert main(["bench", str(narrow), "--target", "cpu", "--save", str(tmp_path / "r.json")]) == 0
