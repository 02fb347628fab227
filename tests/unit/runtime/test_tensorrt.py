"""The TensorRT path without TensorRT: build configuration, trtexec lines, and honest refusal."""

import importlib.util
from pathlib import Path

import pytest

from hwprune.errors import HwpruneError
from hwprune.runtime.trt import build_engine, build_script, engine_config, trtexec_command, unavailable_reason
from hwprune.targets import load_target
from tests import ROOT

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def config_for(target: str, **kwargs):
    return engine_config(load_target(target), Path("build/pruned.onnx"), Path("build/pruned.engine"),
                         (1, 3, 224, 224), **kwargs)


def test_jetson_builds_fp16_with_a_reused_timing_cache():
    config = config_for("jetson-orin-nano")
    assert config.fp16 and not config.sparse_weights and config.timing_cache == Path("build/timing.cache")
    command = trtexec_command(config)
    assert command[:3] == ["trtexec", "--onnx=build/pruned.onnx", "--saveEngine=build/pruned.engine"]
    assert "--fp16" in command and "--timingCacheFile=build/timing.cache" in command
    assert "--memPoolSize=workspace:1024" in command and not any("Shapes" in c for c in command)


def test_sparse_weights_only_where_the_device_accelerates_them():
    assert "--sparsity=enable" in trtexec_command(config_for("jetson-orin-agx", sparse=True))
    with pytest.raises(HwpruneError, match="no sparse tensor cores"):
        config_for("rtx-2080ti", sparse=True)


def test_dynamic_batch_adds_an_optimisation_profile():
    command = trtexec_command(config_for("t4", max_batch=32))
    assert "--minShapes=input:1x3x224x224" in command
    assert "--optShapes=input:1x3x224x224" in command and "--maxShapes=input:32x3x224x224" in command


def test_build_script_uses_paths_relative_to_its_folder():
    script = build_script([config_for("jetson-orin-nano")], "TensorRT is not installed")
    assert script.startswith("#!/bin/sh") and "TensorRT is not installed" in script
    assert "trtexec --onnx=pruned.onnx --saveEngine=pruned.engine" in script and "build/" not in script


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the refusal path cannot be exercised")
def test_without_tensorrt_building_is_refused_not_faked():
    assert "TensorRT is not installed" in unavailable_reason()
    with pytest.raises(HwpruneError, match="cannot build a TensorRT engine"):
        build_engine(config_for("jetson-orin-nano"))


@pytest.mark.skipif(not HAS_TRT or unavailable_reason() is not None, reason="needs TensorRT and a CUDA GPU")
def test_engine_builds_and_times_on_a_gpu(tmp_path):
    import torch

    from hwprune.export.onnx_export import export_onnx
    from hwprune.runtime.trt import time_engine

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU()).eval()
    onnx = export_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "m.onnx")
    config = engine_config(load_target("t4"), onnx, tmp_path / "m.engine", (1, 3, 32, 32))
    assert build_engine(config).exists() and config.timing_cache.exists()
    assert time_engine(config.engine, (1, 3, 32, 32)).median_ms > 0


def test_engine_code_needs_no_torch():
    """The on-device kit runs where JetPack has TensorRT but no torch."""
    import subprocess
    import sys

    code = ("import sys\nsys.modules['torch'] = None\n"
            "from hwprune.runtime.trt import build_script, engine_config, unavailable_reason\n"
            "from hwprune.targets import load_target\n"
            "print(unavailable_reason())\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-500:]


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the refusal path cannot be exercised")
def test_on_device_kit_runs_without_torch_and_refuses_without_tensorrt(tmp_path):
    import subprocess
    import sys

    kit = ROOT / "export" / "trt_build_and_time.py"
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"placeholder")
    code = (f"import sys, runpy\nsys.modules['torch'] = None\nsys.argv = ['kit', {str(onnx)!r}, '--target', "
            f"'jetson-orin-nano']\nrunpy.run_path({str(kit)!r}, run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-500:]
    assert "TensorRT is not installed" in result.stderr and len(result.stderr.strip().splitlines()) == 1
