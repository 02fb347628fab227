"""`hwprune profile` and `hwprune latency` end to end on a small model."""

import json
from pathlib import Path

import pytest

from hwprune.cli import main

DATA = Path(__file__).parent / "data" / "small_models.py"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path))
    return tmp_path


def test_profile_then_cached_then_predict(cache, capsys):
    assert main(["profile", f"{DATA}:tiny_cnn", "--target", "cpu"]) == 0
    first = capsys.readouterr().out
    assert "measured" in first and " 0 new" not in first
    table = json.loads((cache / "latency" / "cpu-onnxruntime.json").read_text())
    assert table["provenance"]["threads"] == 1 and table["entries"]
    assert main(["profile", f"{DATA}:tiny_cnn", "--target", "cpu"]) == 0
    assert "measured 0 new configurations" in capsys.readouterr().out

    assert main(["latency", f"{DATA}:tiny_cnn", "--target", "cpu", "--measure", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["source"] == "lut" and result["predicted_ms"] > 0 and result["measured_ms"] > 0
    assert {layer["name"] for layer in result["layers"]} == {"0", "3", "7"}


def test_latency_without_profile_says_what_to_do(cache, capsys):
    assert main(["latency", f"{DATA}:tiny_cnn", "--target", "cpu"]) == 2
    assert "run hwprune profile first" in capsys.readouterr().err


def test_corrupt_table_is_a_clear_error(cache, capsys):
    path = cache / "latency" / "cpu-onnxruntime.json"
    path.parent.mkdir(parents=True)
    path.write_text("{broken")
    assert main(["latency", f"{DATA}:tiny_cnn", "--target", "cpu"]) == 2
    assert "corrupt latency table" in capsys.readouterr().err


def test_unknown_target(cache, capsys):
    assert main(["profile", f"{DATA}:tiny_cnn", "--target", "nope"]) == 2
    assert "unknown target 'nope'" in capsys.readouterr().err


def test_unreachable_target_is_predicted_analytically_and_labelled(cache, capsys):
    assert main(["latency", f"{DATA}:tiny_cnn", "--target", "jetson-orin-nano", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["source"] == "analytic" and result["measured_ms"] is None and result["predicted_ms"] > 0
    assert main(["latency", f"{DATA}:tiny_cnn", "--target", "jetson-orin-nano", "--measure"]) == 2
    assert "cannot measure" in capsys.readouterr().err


def test_profiling_a_tensorrt_target_without_tensorrt_exits_2(cache, capsys):
    assert main(["profile", f"{DATA}:tiny_cnn", "--target", "t4"]) == 2
    assert "TensorRT, which is not installed here" in capsys.readouterr().err
