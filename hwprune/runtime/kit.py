"""The on-device kit's shared half: folders of single-op graphs (``hwprune-ops/1``), the device
facts a measurement records, and the files the kit is made of.

``hwprune profile --export-ops DIR`` (and ``--remote``) writes a folder of ONNX graphs and a
``manifest.json``; ``export/profile_ops.py DIR --target T`` times them on the device with the
target's runtime into a table in the ``latency_models/`` schema (``hwprune-lut/1``), writing it
after every op so that a rerun resumes. Op names are opaque here (they are latency signature
keys), so this layer knows nothing of cost/. Nothing here imports torch.
"""

from __future__ import annotations

import ast
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from hwprune.errors import DeviceError, HwpruneError
from hwprune.io import write_text_atomic
from hwprune.runtime.onnx_files import copy_model

OPS_FORMAT = "hwprune-ops/1"
ROOT = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) holding hwprune/


@dataclass(frozen=True)
class OpGraph:
    """One graph to time: ``make()`` serialises it (called once, when it is written), or names its file (a
    whole model over 2 GB, its weights beside it)."""

    name: str
    make: Callable[[], bytes | Path]
    shape: tuple[int, ...]
    calls: int | None = None


def write_ops(folder: Path, target: str, ops: Iterable[OpGraph], models: Iterable[tuple[str, Path]] = (),
              call_overhead: OpGraph | None = None) -> dict:
    """``folder/ops/NNNNN.onnx`` per op, ``folder/models/NNN.onnx`` per whole model, and the manifest."""
    (folder / "ops").mkdir(parents=True, exist_ok=True)
    entries = []
    for i, op in enumerate(ops):
        file = f"ops/{i:05d}.onnx"
        write_graph(op.make(), folder / file)
        entries.append({"name": op.name, "file": file, "shape": list(op.shape), "calls": op.calls})
    whole = []
    for i, (name, path) in enumerate(models):
        (folder / "models").mkdir(exist_ok=True)
        file = f"models/{i:03d}.onnx"
        copy_model(path, folder / file)  # over 2 GB, its weights beside it
        whole.append({"name": name, "file": file})
    overhead = None
    if call_overhead is not None:
        write_graph(call_overhead.make(), folder / "identity.onnx")
        overhead = {"file": "identity.onnx", "shape": list(call_overhead.shape), "calls": call_overhead.calls}
    manifest = {"format": OPS_FORMAT, "target": target, "count": len(entries), "ops": entries, "models": whole,
                "call_overhead": overhead}
    write_text_atomic(folder / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest


def write_graph(graph: bytes | Path, path: Path) -> None:
    """A graph as ``path``: its bytes, or its file copied with its weights."""
    if isinstance(graph, Path):
        copy_model(graph, path)
    else:
        path.write_bytes(graph)


def read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DeviceError(f"{path}: cannot read the op manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != OPS_FORMAT:
        raise DeviceError(f"{path}: not an {OPS_FORMAT} manifest (written by hwprune profile --export-ops)")
    return manifest


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _command(*argv: str) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (subprocess.TimeoutExpired, OSError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def device_facts() -> dict:
    """What the device says of itself: host name, and on a Jetson its module (``/proc/device-tree/model``),
    the L4T release, JetPack, power mode and clocks. Only what is there is read; an absent fact is null,
    never guessed. ``HWPRUNE_DEVICE_ROOT`` reads the two files under another root (a container or a test
    that mirrors a device's files)."""
    root = Path(os.environ.get("HWPRUNE_DEVICE_ROOT", "/"))
    model = _read(str(root / "proc/device-tree/model"))
    release = _read(str(root / "etc/nv_tegra_release"))
    jetpack = _command("dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack") if release else None
    power = _command("nvpmodel", "-q")
    cpu_khz = sorted({int(v) for v in (_read(str(p)) for p in Path("/sys/devices/system/cpu").glob(
        "cpu[0-9]*/cpufreq/scaling_cur_freq")) if v and v.isdigit()})
    gpu_hz = None
    for path in sorted(Path("/sys/class/devfreq").glob("*")):
        if re.search(r"gpu|gv11b|ga10b|gp10b", path.name) and (value := _read(str(path / "cur_freq"))):
            gpu_hz = int(value) if value.isdigit() else None
            break
    return {"hostname": platform.node(), "model": model.strip("\x00").strip() if model else None,
            "l4t": release.splitlines()[0] if release else None, "jetpack": jetpack,
            "power_mode": " ".join(power.split()) if power else None,
            "cpu_mhz": [khz // 1000 for khz in cpu_khz] or None, "gpu_mhz": gpu_hz // 1_000_000 if gpu_hz else None}


def kit_files() -> dict[str, Path]:
    """Relative path on the device -> local file: the export/ scripts, every hwprune module they
    reach (with its packages' ``__init__``), and the device profiles, laid out as installed."""
    scripts = sorted((ROOT / "export").glob("*.py"))
    if not scripts:
        raise DeviceError(f"{ROOT / 'export'}: the on-device kit is missing from this installation")
    files = {f"export/{p.name}": p for p in scripts}
    todo = list(scripts)
    while todo:
        for node in ast.walk(ast.parse(todo.pop().read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                if not name.startswith("hwprune"):
                    continue
                parts = name.split(".")
                for depth in range(1, len(parts) + 1):
                    for rel in (Path(*parts[:depth], "__init__.py"), Path(*parts[:depth]).with_suffix(".py")):
                        if (ROOT / rel).is_file() and rel.as_posix() not in files:
                            files[rel.as_posix()] = ROOT / rel
                            todo.append(ROOT / rel)
    devices = ROOT / "devices" if (ROOT / "devices").is_dir() else ROOT / "hwprune" / "devices"
    for toml in sorted(devices.glob("*.toml")):
        files[f"hwprune/devices/{toml.name}"] = toml
    files["hwprune/devices/__init__.py"] = devices / "__init__.py"
    return files


def answer(script: str, work: Callable[[], dict], errors: tuple[type[Exception], ...] = (HwpruneError,)) -> int:
    """How every kit script ends: ``work``'s result as one JSON line on stdout, exit 0; or, for one
    of ``errors``, one line ``SCRIPT: error: ...`` on stderr, exit 2 (what ``runtime.remote`` reads)."""
    try:
        result = work()
    except errors as exc:
        print(f"{script}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0
