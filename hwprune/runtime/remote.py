"""A target's runtime on a device over SSH: the kit in a temporary folder there, timing done there.

:class:`RemoteSession` opens the connection (host key checked), makes a work folder with
``mktemp -d``, copies the torch-free kit into it once (``runtime.kit.kit_files``) and removes the
folder when it closes (also on an error or Ctrl-C). :class:`RemoteRuntime` is a
:class:`~hwprune.runtime.base.Runtime` whose ``load`` copies an ONNX file to the device and whose
``time``, ``interleaved`` and ``time_graphs`` run ``export/time_models.py`` and
``export/profile_ops.py`` there, one call per comparison or per batch of ops; provenance and
fingerprint are the device's own (``export/device_info.py``), labelled as measured over SSH.
"""

from __future__ import annotations

import json
import shlex
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from hwprune.errors import DeviceError
from hwprune.runtime.base import Runner, Runtime
from hwprune.runtime.kit import OpGraph, kit_files, write_ops
from hwprune.runtime.onnx_files import DATA_SUFFIX, copy_model, data_file
from hwprune.runtime.ssh import Address, Connection, SshError
from hwprune.runtime.timing import Comparison, Timing
from hwprune.targets import Target


def _timing(data: dict) -> Timing:
    return Timing(float(data["median_ms"]), float(data["p90_ms"]), float(data.get("p99_ms", data["p90_ms"])),
                  float(data.get("spread", 0.0)), int(data["samples"]))


class RemoteSession:
    """One device reached over SSH, with the kit copied into a work folder that ``close()`` removes."""

    def __init__(self, address: str, ssh_config: str | Path | None = None, accept_new_host_key: bool = False,
                 python: str = "python3", connect_timeout: float | None = None):
        self.address = Address.parse(address)
        self.python = python
        extra = {} if connect_timeout is None else {"connect_timeout": connect_timeout}
        self.connection = Connection(self.address, ssh_config, accept_new_host_key, **extra)
        self.folder: str | None = None
        self._runtimes: dict[str, RemoteRuntime] = {}
        self._files = 0
        self._local: dict[str, str] = {}  # a file on the device -> the local file it is a copy of

    @property
    def label(self) -> str:
        return f"{self.address} over SSH"

    def open(self) -> RemoteSession:
        try:
            self.folder = self.connection.run("mktemp -d \"${TMPDIR:-/tmp}/hwprune-kit.XXXXXX\"",
                                              what="making a work folder").strip()
            if not self.folder.startswith("/"):
                raise SshError(f"{self.address}: mktemp gave {self.folder!r}, not a folder")
            self.connection.run(f"command -v {shlex.quote(self.python)} >/dev/null || "
                                f"{{ echo 'no {self.python} on the device (see --remote-python)' >&2; exit 3; }}",
                                what="looking for python")
            self.connection.put(self.folder, kit_files())
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Remove the work folder on the device and end the connection."""
        try:
            if self.folder:
                folder, self.folder = self.folder, None
                self.connection.run(f"rm -rf -- {shlex.quote(folder)}", timeout=60, what="removing the work folder")
        finally:
            self.connection.close()

    def __enter__(self) -> RemoteSession:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def path(self, name: str) -> str:
        return f"{self.folder}/{name}"

    def kit(self, script: str, *args: str, what: str, timeout: float | None = None) -> dict:
        """Run ``export/SCRIPT`` on the device; its JSON line. A kit error is one line, the device named."""
        command = (f"cd {shlex.quote(self.folder)} && PYTHONDONTWRITEBYTECODE=1 {shlex.quote(self.python)} "
                   f"export/{script} " + " ".join(shlex.quote(a) for a in args))
        try:
            out = self.connection.run(command, timeout=timeout, what=what)
        except SshError as exc:
            text = str(exc)
            for there, here in self._local.items():
                text = text.replace(there, here)
            if "No module named" in text:
                text += (f" (the device's {self.python} lacks it: install numpy, onnx and onnxruntime, or TensorRT, "
                         "Polygraphy and cuda-python, there)")
            raise SshError(text) from None
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise SshError(f"{self.address}: {what}: the kit printed no result ({out.strip()[-200:]!r})") from None

    def upload(self, source: Path | bytes, suffix: str = ".onnx") -> str:
        self._files += 1
        name = f"m{self._files}{suffix}"
        if isinstance(source, Path) and data_file(source).exists():  # its weights beside it, re-pointed at the name
            with tempfile.TemporaryDirectory(prefix="hwprune-") as tmp:
                copied = copy_model(source, Path(tmp) / name)
                self.connection.put(self.folder, {name: copied, data_file(Path(name)).name: data_file(copied)})
        else:
            self.connection.put(self.folder, {name: source})
        if isinstance(source, Path):
            self._local[self.path(name)] = str(source)
        return self.path(name)

    def device_facts(self) -> dict:
        """What the device says of itself (``runtime.kit.device_facts``): its module, L4T release, power mode."""
        return self.kit("device_info.py", what="reading the device", timeout=120)["device"]

    def runtime(self, target: Target) -> RemoteRuntime:
        if target.name not in self._runtimes:
            self._runtimes[target.name] = RemoteRuntime(target, self)
        return self._runtimes[target.name]


class RemoteRunner(Runner):
    """A model copied to the device: it runs only there, through its runtime's ``time``/``interleaved``."""

    def __init__(self, session: RemoteSession, path: str, input_shapes: list[tuple]):
        self.session, self.path, self.input_shapes = session, path, input_shapes

    def run(self) -> None:
        raise DeviceError(f"{self.path} is on {self.session.address}: time it with its runtime, not run() here")

    def close(self) -> None:
        if self.session.folder:
            self.session.connection.run(f"rm -f -- {shlex.quote(self.path)}", timeout=60, what="removing a model")


class RemoteRuntime(Runtime):
    """The target's runtime on the device; everything timed there, nothing here."""

    def __init__(self, target: Target, session: RemoteSession):
        super().__init__(target)
        self.session = session
        self.where = str(session.address.host)
        self.info = session.kit("device_info.py", "--target", target.name, what="reading the device",
                                timeout=120)
        self.name = f"{self.info['name']} on {session.label}"
        self.method = {**self.info["method"], "measured_on": session.label}

    def unavailable_reason(self) -> str | None:
        reason = self.info["unavailable_reason"]
        return None if reason is None else f"{reason} on {self.session.address}"

    def provenance(self) -> dict:
        return {**self.info["provenance"], "device": self.info["device"], "measured_on": self.session.label}

    def fingerprint(self) -> dict:
        return {**self.info.get("fingerprint", self.info["provenance"]), "device": self.info["device"],
                "remote_python": self.info["python"], "measured_on": self.session.label}

    def measurement(self) -> dict:
        here = self.info.get("measurement") or {"runtime": self.info["name"]}
        return {**here, "runtime": f"{here['runtime']} on {self.session.label}", "measured_on": self.session.label}

    def engines(self, folder: Path, names: Sequence[str], *args, **kwargs) -> tuple[str | None, str]:
        return None, (f"timed on {self.session.label}: the kit there runs each ONNX file with {self.info['name']} "
                      "(building its engine there where the runtime needs one); no engine kept here")

    def load(self, model: Path) -> Runner:
        import onnx

        path = Path(model)
        if not path.is_file():
            raise DeviceError(f"{path}: file not found")
        graph = onnx.load(str(path), load_external_data=False).graph
        initialisers = {i.name for i in graph.initializer}
        shapes = [tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in i.type.tensor_type.shape.dim)
                  for i in graph.input if i.name not in initialisers]
        return RemoteRunner(self.session, self.session.upload(path), shapes)

    def _models(self, runners: Sequence[Runner]) -> list[str]:
        if not all(isinstance(r, RemoteRunner) for r in runners):
            raise DeviceError("a remote runtime times only the models it loaded")
        return [r.path for r in runners]

    def time(self, runner: Runner, warmup: int = 3, min_runs: int = 10, min_seconds: float = 0.1) -> Timing:
        out = self.session.kit("time_models.py", *self._models([runner]), "--target", self.target.name,
                               "--warmup", str(warmup), "--min-runs", str(min_runs), "--min-seconds",
                               str(min_seconds), what="timing a model")
        return _timing(out["timings"][0])

    def interleaved(self, runners: Sequence[Runner], rounds: int = 15) -> Comparison:
        out = self.session.kit("time_models.py", *self._models(runners), "--target", self.target.name,
                               "--rounds", str(rounds), what="timing models interleaved")
        return Comparison([_timing(t) for t in out["timings"]], [float(r) for r in out["ratios"]],
                          [float(s) for s in out["ratio_spread"]],
                          [[float(r) for r in rounds] for rounds in out["round_ratios"]])

    def time_graph(self, graph: bytes | Path, shape: tuple[int, ...], calls: int | None = None) -> Timing:
        return self.time_graphs([OpGraph("graph", lambda: graph, shape, calls)])[0]

    def time_graphs(self, graphs: Sequence[OpGraph], done: Callable[[int, Timing], None] | None = None
                    ) -> list[Timing]:
        """All graphs in one run of the profiling kit on the device; ``done`` hears of each afterwards."""
        with tempfile.TemporaryDirectory(prefix="hwprune-ops-") as tmp:
            manifest = write_ops(Path(tmp), self.target.name, graphs)
            files = {"ops/manifest.json": Path(tmp) / "manifest.json"}
            files.update({f"ops/{op['file']}": Path(tmp) / op["file"] for op in manifest["ops"]})
            files.update({f"ops/{op['file']}{DATA_SUFFIX}": data_file(Path(tmp) / op["file"])
                          for op in manifest["ops"] if data_file(Path(tmp) / op["file"]).exists()})
            self.session.connection.run(f"rm -rf {shlex.quote(self.session.path('ops'))} && "
                                        f"mkdir -p {shlex.quote(self.session.path('ops'))}", what="making ops/")
            self.session.connection.put(self.session.folder, files)
        self.last_run = self.session.kit("profile_ops.py", "ops", "--target", self.target.name,
                                         what=f"profiling {len(graphs)} ops")
        table = json.loads(self.session.connection.get(self.session.path("ops/table.json")))
        timings = [_timing(table["entries"][op.name]) for op in graphs]
        for i, timing in enumerate(timings):
            if done is not None:
                done(i, timing)
        return timings
