"""Device profiles: every shipped TOML parses into a complete Target, says where each number comes
from, and broken or unknown profiles fail with a DeviceError that names the problem."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict
from importlib import resources

import pytest

from hwprune.cli import main
from hwprune.errors import DeviceError
from hwprune.targets import DTYPES, OP_KINDS, Target, available_targets, load_target

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CPUS = {"cpu", "x86-avx512", "arm-cortex-a78ae", "cpu-torch"}
GPUS = {"jetson-orin-nano", "jetson-orin-agx", "jetson-xavier-nx", "t4", "a10", "a100", "l4", "h100",
        "rtx-4090", "rtx-2080ti", "rtx-2080ti-trt84-fp32", "cuda"}
TORCH = {"cpu-torch", "cuda"}  # measured through PyTorch (tests/unit/runtime/test_torch_runtime.py)
SPARSE_24 = {"jetson-orin-nano", "jetson-orin-agx", "a10", "a100", "l4", "h100", "rtx-4090",
             "cuda"}  # Ampere and newer; cuda: whatever GPU torch sees, its capability checked when timed
DEVICES = resources.files("hwprune.devices")
NUMBER = r"[-+]?(?:\d[\d_]*)(?:\.[\d_]+)?(?:[eE][-+]?\d+)?"
NUMERIC_LINE = re.compile(rf"^\s*[A-Za-z0-9_.\"-]+\s*=\s*{NUMBER}\s*(#.*)?$")
PROVENANCE = re.compile(r"#\s*(source|fitted|assumed):\s*\S")

GOOD = """\
name = "{name}"
description = "a test device"
runtime = "tensorrt"
default_dtype = "fp16"
default_batch = 1  # assumed: test
channel_alignment = 8  # assumed: test

[peak_tflops]
fp32 = 10.0  # assumed: test
fp16 = 40.0  # assumed: test
int8 = 80.0  # assumed: test

[memory]
bandwidth_gbps = 500.0  # assumed: test

[analytic]
launch_overhead_us = 5.0  # assumed: test
memory_efficiency = 0.75  # assumed: test

[analytic.efficiency]
conv = 0.6  # assumed: test
pointwise = 0.5  # assumed: test
depthwise = 0.25  # assumed: test
linear = 0.6  # assumed: test
"""


def test_every_required_target_is_shipped():
    assert set(available_targets()) == CPUS | GPUS


@pytest.mark.parametrize("name", sorted(CPUS | GPUS))
def test_profile_parses_with_all_fields(name):
    target = load_target(name)
    assert isinstance(target, Target) and target.name == name and target.description
    assert target.runtime == ("torch" if name in TORCH else "onnxruntime" if name in CPUS else "tensorrt")
    assert set(target.peak_tflops) == set(DTYPES) and all(v > 0 for v in target.peak_tflops.values())
    assert target.default_dtype in target.peak_tflops
    assert target.bandwidth_gbps > 0 and target.default_batch >= 1 and target.channel_alignment >= 1
    assert set(target.analytic.efficiency) == set(OP_KINDS)
    assert all(0 < v <= 1 for v in target.analytic.efficiency.values())
    assert 0 < target.analytic.memory_efficiency <= 1 and target.analytic.launch_overhead_us >= 0
    if target.runtime == "onnxruntime":
        assert target.threads >= 1 and target.graph_optimization_level.startswith("ORT_")
    elif target.runtime == "torch":
        assert target.graph_optimization_level is None and (target.threads is not None) == (target.device == "cpu")
    else:
        assert target.threads is None and target.graph_optimization_level is None
    # 2:4 rates exist exactly on Ampere-and-newer tensor cores, and beat the dense rates
    assert target.sparse_24 == (name in SPARSE_24)
    for dtype, rate in target.peak_tflops_sparse.items():
        assert rate >= target.peak_tflops[dtype]
    # int8 is never slower than fp32 on any device
    assert target.peak_tflops["int8"] >= target.peak_tflops["fp32"]


def test_host_cpu_keeps_its_measurement_settings():
    cpu = load_target("cpu")
    assert (cpu.threads, cpu.graph_optimization_level, cpu.channel_alignment) == (1, "ORT_ENABLE_ALL", 16)


@pytest.mark.parametrize("name", sorted(CPUS | GPUS))
def test_every_number_says_where_it_comes_from(name):
    text = (DEVICES / f"{name}.toml").read_text()
    numeric = [line for line in text.splitlines() if not line.lstrip().startswith("#") and NUMERIC_LINE.match(line)]
    unsourced = [line for line in numeric if not PROVENANCE.search(line)]
    assert not unsourced, f"{name}.toml lines without '# source:/fitted:/assumed:': {unsourced}"

    def count(value):  # every number in the parsed file must sit on one of the lines checked above
        if isinstance(value, dict):
            return sum(count(v) for v in value.values())
        if isinstance(value, list):
            return sum(count(v) for v in value)
        return int(isinstance(value, (int, float)) and not isinstance(value, bool))

    assert count(tomllib.loads(text)) == len(numeric)


def test_provenance_check_catches_a_bare_number():
    assert NUMERIC_LINE.match("fp32 = 19.5") and not PROVENANCE.search("fp32 = 19.5")
    assert PROVENANCE.search("fp32 = 19.5  # source: NVIDIA A100 datasheet")
    assert not NUMERIC_LINE.match('description = "8 cores"')


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(DeviceError) as info:
        load_target("no-such-gpu")
    message = str(info.value)
    assert "no-such-gpu" in message and "a100" in message and "jetson-orin-nano" in message and "cpu" in message


def test_names_cannot_escape_the_profile_directory(tmp_path):
    (tmp_path / "dev").mkdir()
    (tmp_path / "secret.toml").write_text(GOOD.format(name="secret"))
    with pytest.raises(DeviceError, match="unknown target"):
        load_target("../secret", directory=tmp_path / "dev")


def test_missing_directory_is_a_device_error(tmp_path):
    with pytest.raises(DeviceError, match="does not exist"):
        load_target("cpu", directory=tmp_path / "nowhere")


def test_profile_from_a_directory(tmp_path):
    (tmp_path / "mygpu.toml").write_text(GOOD.format(name="mygpu"))
    assert available_targets(tmp_path) == ["mygpu"]
    target = load_target("mygpu", directory=tmp_path)
    assert target.peak_tflops == {"fp32": 10.0, "fp16": 40.0, "int8": 80.0}
    assert not target.sparse_24 and target.analytic.efficiency["depthwise"] == 0.25


def test_malformed_toml_is_a_device_error(tmp_path):
    (tmp_path / "broken.toml").write_text('name = "broken"\npeak_tflops = {fp32 = }\n')
    with pytest.raises(DeviceError, match="broken.toml is malformed"):
        load_target("broken", directory=tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('[memory]\nbandwidth_gbps = 500.0  # assumed: test\n', ""), "lacks memory"),
    (lambda t: t.replace("int8 = 80.0", "# int8 gone"), r"\[peak_tflops\] lacks int8"),
    (lambda t: t.replace("fp16 = 40.0", 'fp16 = "fast"'), "fp16 must be a positive number"),
    (lambda t: t.replace("bandwidth_gbps = 500.0", "bandwidth_gbps = -1.0"), "bandwidth_gbps must be a positive"),
    (lambda t: t.replace("channel_alignment = 8", "channel_alignment = 8.5"), "channel_alignment must be a positive"),
    (lambda t: t.replace("default_batch = 1", "default_batch = true"), "default_batch must be a positive"),
    (lambda t: t.replace('runtime = "tensorrt"', 'runtime = "tvm"'), "runtime = 'tvm' is not one of"),
    (lambda t: t.replace('default_dtype = "fp16"', 'default_dtype = "bf16"'), "default_dtype"),
    (lambda t: t.replace("conv = 0.6", "conv = 1.5"), r"conv = 1.5 is a fraction of peak"),
    (lambda t: t.replace("linear = 0.6  # assumed: test\n", ""), r"efficiency lacks linear"),
    (lambda t: t.replace("launch_overhead_us = 5.0", "launch_overhead_us = -2.0"), "launch_overhead_us must be"),
    (lambda t: t + "\n[peak_tflops_sparse]\nfp16 = 20.0  # assumed: test\n", "below the dense rate"),
    (lambda t: t.replace('description = "a test device"', 'description = "x"\nthreads = 4'),
     "only apply to onnxruntime targets"),
    (lambda t: t.replace('runtime = "tensorrt"', 'runtime = "onnxruntime"'), "lacks threads"),
    (lambda t: t.replace('description = "a test device"', 'description = "x"\npeak_tflop = 3'),
     "unknown keys peak_tflop"),
    (lambda t: t.replace("[memory]", "[memory]\nlatency_ns = 80"), "unknown keys latency_ns"),
    (lambda t: t.replace('name = "dev"', 'name = "other"'), "does not match the file name"),
])
def test_broken_profiles_name_the_problem(tmp_path, edit, message):
    (tmp_path / "dev.toml").write_text(edit(GOOD.format(name="dev")))
    with pytest.raises(DeviceError, match=message):
        load_target("dev", directory=tmp_path)


def test_devices_command_lists_every_profile(capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    for name in CPUS | GPUS:
        assert re.search(rf"^{re.escape(name)}\s", out, re.MULTILINE), name
    assert main(["devices", "--json"]) == 0
    profiles = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert profiles["a100"]["peak_tflops_sparse"]["fp16"] == 624.0
    assert profiles["cpu"]["threads"] == 1 and profiles["t4"]["peak_tflops_sparse"] == {}
    assert profiles["a100"] == json.loads(json.dumps(asdict(load_target("a100"))))


def test_target_jetson_names_the_module_or_the_nearest_profile_in_one_line():
    from hwprune.errors import DeviceError
    from hwprune.targets import jetson_profile, resolve_target

    agx = {"model": "NVIDIA Jetson AGX Orin Developer Kit", "l4t": "# R35 (release)", "power_mode": "MAXN"}
    profile, line = jetson_profile(agx)
    assert profile == "jetson-orin-agx" and line.endswith("profile jetson-orin-agx") and "MAXN" in line
    profile, line = jetson_profile({"model": "NVIDIA Jetson Orin NX Engineering Reference Developer Kit"})
    assert profile == "jetson-orin-nano" and "nearest profile jetson-orin-nano" in line
    profile, line = jetson_profile({"model": "NVIDIA Jetson TX2", "l4t": "# R32"})
    assert profile == "jetson-orin-nano" and "no profile for" in line
    with pytest.raises(DeviceError, match="no Jetson"):
        jetson_profile({"model": None, "l4t": None})
    target, line = resolve_target("jetson")
    assert target.name == "jetson-orin-nano" and "without --remote" in line
    assert resolve_target("cpu")[1] is None


def test_target_jetson_without_remote_says_which_profile(capsys):
    from hwprune.cli import main

    assert main(["latency", "torchvision:resnet18", "--target", "jetson"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines()[0].startswith("--target jetson without --remote: jetson-orin-nano")
    assert "on jetson-orin-nano: predicted" in captured.out
