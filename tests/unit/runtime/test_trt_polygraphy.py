"""The TensorRT path on Polygraphy, without TensorRT: the loaders an EngineConfig makes carry its
settings and run nothing until called; a missing tensorrt or polygraphy is one line naming what to
install; Polygraphy's failures are one-line errors and its log stays off stdout; the trtexec lines
are the same build. Nothing here builds or times an engine (test_tensorrt.py does, on a GPU)."""

import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import pytest

from hwprune.errors import HwpruneError
from hwprune.runtime.trt import build_engine, engine_config, time_engine, trtexec_command, unavailable_reason
from hwprune.runtime.trt_build import engine_loaders
from hwprune.runtime.trt_env import polygraphy_call
from hwprune.runtime.trt_time import random_inputs
from hwprune.targets import load_target

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
NO_TRT = pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the refusal path cannot be exercised")


@pytest.fixture
def stub_tensorrt(monkeypatch):
    """The few tensorrt enums the loaders are described with; any real TensorRT call fails on it."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace-pool")
    trt.ProfilingVerbosity = types.SimpleNamespace(DETAILED="detailed", LAYER_NAMES_ONLY="layer-names-only")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def config_for(tmp_path: Path, target: str, **kwargs):
    return engine_config(load_target(target), tmp_path / "pruned.onnx", tmp_path / "pruned.engine",
                         (1, 3, 224, 224), **kwargs)


def test_loaders_carry_fp16_the_workspace_and_the_timing_cache_and_run_nothing(tmp_path, stub_tensorrt):
    config = config_for(tmp_path, "jetson-orin-nano")
    loaders = engine_loaders(config)
    create = loaders.config
    assert create.fp16 and not create.sparse_weights
    assert create.memory_pool_limits == {"workspace-pool": 1024 << 20}
    assert create.profiling_verbosity == "layer-names-only"
    cache = str(tmp_path / "timing.cache")
    assert create.timing_cache_path == cache and loaders.build.timing_cache_path == cache  # read, then updated
    assert len(create.profiles) == 1 and not create.profiles[0]  # static shapes: Polygraphy fills them in
    assert loaders.network.path == str(config.onnx) and loaders.save.path == str(config.engine)
    assert not config.onnx.exists() and not config.engine.exists() and not (tmp_path / "timing.cache").exists()


def test_loaders_for_sparse_weights_and_a_max_batch(tmp_path, stub_tensorrt):
    loaders = engine_loaders(config_for(tmp_path, "jetson-orin-agx", sparse=True, max_batch=8, workspace_mib=256))
    create = loaders.config
    assert create.sparse_weights and create.profiling_verbosity == "detailed"  # the layer information is read
    assert create.memory_pool_limits == {"workspace-pool": 256 << 20}
    (profile,) = create.profiles
    shapes = profile["input"]
    assert (shapes.min, shapes.opt, shapes.max) == ((1, 3, 224, 224), (1, 3, 224, 224), (8, 3, 224, 224))


def test_fp32_targets_build_without_fp16(tmp_path, stub_tensorrt):
    assert not engine_loaders(config_for(tmp_path, "rtx-2080ti-trt84-fp32")).config.fp16


def test_random_inputs_take_the_requested_shape_and_the_engine_dtypes():
    import numpy as np
    from polygraphy.common import TensorMetadata

    found = TensorMetadata().add("input", np.float16, (-1, 3, 8, 8)).add("mask", np.int32, (-1, 8))
    with polygraphy_call("no failure expected"):
        arrays = random_inputs(found, (4, 3, 8, 8))
    assert arrays["input"].shape == (4, 3, 8, 8) and arrays["input"].dtype == np.float16
    assert arrays["mask"].dtype == np.int32
    again = random_inputs(found, (4, 3, 8, 8))
    assert np.array_equal(arrays["input"], again["input"]) and float(np.abs(arrays["input"]).sum()) > 0


def test_the_trtexec_line_is_the_same_build(tmp_path):
    config = config_for(Path("build"), "jetson-orin-agx", sparse=True, max_batch=8)
    assert trtexec_command(config) == [
        "trtexec", "--onnx=build/pruned.onnx", "--saveEngine=build/pruned.engine", "--memPoolSize=workspace:1024",
        "--timingCacheFile=build/timing.cache", "--fp16", "--sparsity=enable", "--profilingVerbosity=detailed",
        "--exportLayerInfo=build/pruned.layers.json", "--minShapes=input:1x3x224x224",
        "--optShapes=input:1x3x224x224", "--maxShapes=input:8x3x224x224", "--noDataTransfers", "--useSpinWait",
        "--duration=10"]


@NO_TRT
def test_without_tensorrt_each_step_says_so_in_one_line(tmp_path):
    config = config_for(tmp_path, "jetson-orin-nano")
    for step, expected in [(lambda: engine_loaders(config), "TensorRT is not installed"),
                           (lambda: build_engine(config), "cannot build a TensorRT engine: TensorRT is not installed"),
                           (lambda: time_engine(config.engine, (1, 3, 224, 224)), "cannot run a TensorRT engine")]:
        with pytest.raises(HwpruneError) as caught:
            step()
        assert expected in str(caught.value) and "\n" not in str(caught.value)
        assert "pip install 'hwprune[trt]'" in str(caught.value)


def test_without_polygraphy_the_reason_names_it(tmp_path, stub_tensorrt, monkeypatch):
    for name in ("polygraphy", "polygraphy.backend.trt"):
        monkeypatch.setitem(sys.modules, name, None)
    assert unavailable_reason() == "Polygraphy is not installed (pip install polygraphy, or pip install 'hwprune[trt]')"
    with pytest.raises(HwpruneError, match=r"^cannot build a TensorRT engine: Polygraphy is not installed"):
        build_engine(config_for(tmp_path, "t4"))
    with pytest.raises(HwpruneError, match=r"^Polygraphy is not installed \(pip install polygraphy"):
        engine_loaders(config_for(tmp_path, "t4"))


def test_a_polygraphy_failure_is_one_line_and_its_log_stays_off_stdout(capsys):
    from polygraphy.logger import G_LOGGER

    with pytest.raises(HwpruneError) as caught, polygraphy_call("TensorRT could not build an engine from m.onnx"):
        G_LOGGER.info("Building engine")
        G_LOGGER.critical("Failed to parse ONNX model\nIn node 3 (Conv): bad weights")
    assert str(caught.value) == "TensorRT could not build an engine from m.onnx: Failed to parse ONNX model"
    out = capsys.readouterr()
    assert out.out == "" and "Building engine" not in out.err


def test_describing_a_build_imports_no_torch():
    """The kit runs where JetPack has TensorRT but no torch: neither hwprune nor the Polygraphy
    names it uses may import torch."""
    code = ("import sys, types\nsys.modules['torch'] = None\n"
            "trt = types.ModuleType('tensorrt')\n"
            "trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=1)\n"
            "trt.ProfilingVerbosity = types.SimpleNamespace(DETAILED=1, LAYER_NAMES_ONLY=0)\n"
            "sys.modules['tensorrt'] = trt\n"
            "from pathlib import Path\n"
            "from hwprune.runtime.trt import engine_config\n"
            "from hwprune.runtime.trt_build import engine_loaders\n"
            "import hwprune.runtime.trt_time, polygraphy.backend.trt, polygraphy.comparator, polygraphy.cuda\n"
            "from hwprune.targets import load_target\n"
            "engine_loaders(engine_config(load_target('t4'), Path('m.onnx'), Path('m.engine'), (1, 3, 8, 8), "
            "max_batch=4))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-800:]
