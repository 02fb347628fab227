"""`hwprune profile` and `hwprune latency` end to end on a small model."""

import json

import pytest

from hwprune.cli import main
from tests import DATA as TESTS_DATA  # noqa: E402

DATA = TESTS_DATA / "small_models.py"


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


NO_TRT = pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None,
                            reason="TensorRT is installed: the unreachable-target path cannot be exercised")


@NO_TRT
def test_unreachable_target_is_predicted_analytically_and_labelled(cache, capsys):
    assert main(["latency", f"{DATA}:tiny_cnn", "--target", "jetson-orin-nano", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["source"] == "analytic" and result["measured_ms"] is None and result["predicted_ms"] > 0
    assert main(["latency", f"{DATA}:tiny_cnn", "--target", "jetson-orin-nano", "--measure"]) == 2
    assert "is timed with TensorRT: TensorRT is not installed" in capsys.readouterr().err


@NO_TRT
def test_profiling_a_tensorrt_target_without_tensorrt_exits_2(cache, capsys):
    assert main(["profile", f"{DATA}:tiny_cnn", "--target", "t4"]) == 2
    assert "is timed with TensorRT: TensorRT is not installed" in capsys.readouterr().err


def test_tensorrt_profiling_builds_one_engine_per_op_where_tensorrt_runs(monkeypatch, tmp_path):
    """The plumbing only (TensorRT cannot run here): which graphs reach the engine builder and timer,
    with which input names and shapes, and that the table is labelled TensorRT. No number here is a
    TensorRT one."""
    import hwprune.cost.op_timing as profiler
    import hwprune.runtime.trt as trt_module
    from hwprune.cost.lut import new_table
    from hwprune.cost.signature import OpSignature
    from hwprune.runtime import runtime_for
    from hwprune.runtime.timing import Timing
    from hwprune.targets import load_target

    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(trt_module, "unavailable_reason", lambda: None)
    monkeypatch.setattr(trt_module, "package_version", lambda name: "10.3.0" if name == "tensorrt" else None)
    monkeypatch.setattr(trt_module.TensorRT, "gpu", lambda self: "stub GPU")
    calls = []

    def build(config):
        calls.append((config.input_name, config.input_shape, config.fp16, config.onnx.read_bytes()[:2] != b""))
        return config.engine

    monkeypatch.setattr(trt_module, "build_engine", build)
    monkeypatch.setattr(trt_module, "time_engine", lambda path, shape, warmup, runs: Timing(1.0, 1.0, 1.0, 0.0, runs))
    target = load_target("t4")
    runtime = runtime_for(target)
    provenance = runtime.provenance()
    assert provenance["runtime"] == "tensorrt" and provenance["runtime_version"] == "10.3.0"
    assert provenance["host"]["gpu"] == "stub GPU" and provenance["host"]["dtype"] == "fp16"
    table = new_table(provenance, runtime.method)
    conv = OpSignature("conv2d", 1, 16, 32, 8, 8, kernel=3, padding=1, dtype="fp16")
    linear = OpSignature("linear", 1, 64, 128, 10, 1, dtype="fp16")
    assert profiler.profile([conv, linear], table, target) == 2
    assert calls == [("x", (1,), True, True), ("x", (1, 16, 8, 8), True, True), ("x", (1, 10, 64), True, True)]
    assert table.get(conv) is not None and table.call_overhead_ms == 1.0
    assert (tmp_path / "latency").is_dir()  # the target's timing cache lives in hwprune's cache
