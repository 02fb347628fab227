"""The on-device loop over SSH, for real: a private sshd on a free loopback port (its own host key
and authorized_keys in a temporary folder, never ~/.ssh), this host standing in for the device
(a CPU edge target timed with onnxruntime). ``hwprune profile``, ``compile`` and ``bench`` with
``--remote`` run end to end against it. Skips, saying why, only where no sshd can start."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import torch

from hwprune.cli import main
from hwprune.export.onnx_export import export_onnx
from hwprune.runtime.kit import kit_files
from hwprune.runtime.remote import RemoteSession
from tests import DATA, ROOT
from tests.e2e.test_bench import conv_model

SSHD = "/usr/sbin/sshd"
MODEL = str(DATA / "small_models.py") + ":small_resnet"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """(address, ssh config without a known host key, ssh config that knows it, folder)."""
    if not Path(SSHD).exists() or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip(f"no OpenSSH server at {SSHD} (.ci/run installs Debian's openssh-server)")
    folder = tmp_path_factory.mktemp("sshd")
    _keygen(folder / "host_key")
    _keygen(folder / "client_key")
    shutil.copyfile(folder / "client_key.pub", folder / "authorized_keys")
    port = _free_port()
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder}/host_key\nPidFile {folder}/sshd.pid\n"
        f"AuthorizedKeysFile {folder}/authorized_keys\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
        "AllowTcpForwarding no\nX11Forwarding no\n")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation needs it (as root)
    log = (folder / "sshd.log").open("w")
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")], stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.skip(f"sshd could not start: {(folder / 'sshd.log').read_text().strip()[-300:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    else:
        server.terminate()
        pytest.skip("sshd did not listen within 10 s")
    client = f"Host *\n  IdentityFile {folder}/client_key\n  IdentitiesOnly yes\n"
    unknown = folder / "ssh_config_unknown"
    unknown.write_text(client + f"  UserKnownHostsFile {folder}/known_hosts_empty\n")
    known_hosts = folder / "known_hosts"
    host_key = (folder / "host_key.pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    known = folder / "ssh_config"
    known.write_text(client + f"  UserKnownHostsFile {known_hosts}\n")
    yield f"{user}@127.0.0.1:{port}", unknown, known, folder
    server.terminate()
    server.wait(timeout=10)


def remote(sshd) -> list[str]:
    """The loopback device runs this test's own interpreter (the one with onnxruntime), not the system python3."""
    return ["--remote", sshd[0], "--ssh-config", str(sshd[2]), "--remote-python", sys.executable]


def work_folders() -> set[str]:
    return {p.name for p in Path("/tmp").glob("hwprune-kit.*")}  # the device's (this host's) work folders


def test_an_unknown_host_key_is_refused_in_one_line_and_accepted_only_when_asked(sshd, tmp_path, capsys):
    address, unknown, _known, folder = sshd
    model = export_onnx(conv_model(8), torch.randn(1, 3, 16, 16), tmp_path / "m.onnx")
    assert main(["bench", str(model), "--remote", address, "--ssh-config", str(unknown)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "host key not known" in err and "--accept-new-host-key" in err
    before = work_folders()
    with RemoteSession(address, unknown, accept_new_host_key=True) as session:
        assert session.folder in {f"{d}/{n}" for d in ("/tmp",) for n in work_folders() - before}
    assert (folder / "known_hosts_empty").read_text().strip()  # recorded: the next run needs no flag
    with RemoteSession(address, unknown) as session:
        assert session.connection.run("echo hi").strip() == "hi"
    assert work_folders() == before  # each session's work folder is removed


def test_bench_alone_and_against_a_baseline_model_on_the_device(sshd, tmp_path, capsys):
    x = torch.randn(1, 3, 32, 32)
    wide = export_onnx(conv_model(48), x, tmp_path / "wide.onnx")
    narrow = export_onnx(conv_model(8), x, tmp_path / "narrow.onnx")
    before = work_folders()
    assert main(["bench", str(narrow), *remote(sshd), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["median_ms"] > 0 and record["fingerprint"]["measured_on"] == f"{sshd[0]} over SSH"
    assert record["fingerprint"]["device"]["hostname"] == socket.gethostname()
    assert main(["bench", str(narrow), "--baseline-model", str(wide), *remote(sshd), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ratio"] < 1 and not result["regressed"]
    assert work_folders() == before  # the device's work folder is removed afterwards


def test_a_kit_error_on_the_device_is_one_line(sshd, tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    before = work_folders()
    assert main(["bench", str(bad), *remote(sshd)]) == 2
    assert work_folders() == before  # removed on an error too
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.onnx" in err
    assert main(["bench", str(bad), *remote(sshd), "--remote-python", "no-such-python"]) == 2
    assert "no-such-python" in capsys.readouterr().err
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    odd = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("NoSuchOp", ["x"], ["y"])], "g", [x],
                                                        [onnx.helper.make_tensor_value_info("y", 1, [1, 4])]))
    onnx.save(odd, tmp_path / "odd.onnx")  # read here, refused by onnxruntime on the device
    assert main(["bench", str(tmp_path / "odd.onnx"), *remote(sshd)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "time_models: error" in err and "odd.onnx" in err


def test_profile_on_the_device_writes_a_table_whose_provenance_names_it(sshd, capsys):
    """The table goes to the cache, one file per device (the compile below reuses it)."""
    table = Path(os.environ["HWPRUNE_CACHE"]) / "latency" / "cpu-onnxruntime@127.0.0.1.json"
    assert main(["profile", MODEL, "--target", "cpu", *remote(sshd)]) == 0
    out = capsys.readouterr().out
    assert f"on {sshd[0]} over SSH" in out and "measured" in out and str(table) in out
    data = json.loads(table.read_text())
    assert data["provenance"]["measured_on"] == f"{sshd[0]} over SSH"
    assert data["provenance"]["device"]["hostname"] == socket.gethostname()
    assert data["entries"] and data["models"] and data["call_overhead_ms"] > 0
    assert main(["profile", MODEL, "--target", "cpu", *remote(sshd)]) == 0
    assert "measured 0 new" in capsys.readouterr().out  # cached: nothing timed twice


def test_compile_measures_its_speedup_on_the_device(sshd, tmp_path, capsys):
    out = tmp_path / "build"
    assert main(["compile", MODEL, "--target", "cpu", "--latency", "0.6", "--refine", "0", "--out", str(out),
                 *remote(sshd)]) == 0
    report = json.loads((out / "report.json").read_text())
    text = json.dumps(report)
    assert report["speedup"]["measured"] > 0
    assert f"{sshd[0]} over SSH" in json.dumps(report["measurement"]) and "over SSH" in text
    assert capsys.readouterr().out.count("measured speedup") == 1


def test_export_ops_writes_what_the_kit_times_and_the_kit_resumes(tmp_path, capsys):
    """The offline kit profiles as the compile does, adaptively, in two round trips: the first pass and the whole
    models, then (given the device's table) the stretches the first pass left unsure."""
    folder = tmp_path / "ops"
    assert main(["profile", MODEL, "--target", "cpu", "--export-ops", str(folder)]) == 0
    assert "single-op graphs" in capsys.readouterr().out
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["count"] == len(manifest["ops"]) > 0 and manifest["models"]
    kit = ROOT / "export" / "profile_ops.py"
    run = subprocess.run([sys.executable, str(kit), str(folder), "--target", "cpu"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    first = json.loads(run.stdout)
    assert first["measured"] == manifest["count"] and first["skipped"] == 0
    table = json.loads((folder / "table.json").read_text())
    assert table["format"] == "hwprune-lut/1" and set(table["entries"]) == {op["name"] for op in manifest["ops"]}
    again = json.loads(subprocess.run([sys.executable, str(kit), str(folder), "--target", "cpu"], capture_output=True,
                                      text=True).stdout)
    assert again["measured"] == 0 and again["skipped"] == manifest["count"]
    # the second round trip: with the device's table, only the stretches its first pass left unsure, no models
    lut = folder / "table.json"
    second = tmp_path / "ops2"
    assert main(["profile", MODEL, "--target", "cpu", "--export-ops", str(second), "--lut", str(lut)]) == 0
    assert "the second pass" in capsys.readouterr().out
    fills = json.loads((second / "manifest.json").read_text())
    assert not fills["models"] and not {op["name"] for op in fills["ops"]} & set(table["entries"])
    run = subprocess.run([sys.executable, str(kit), str(second), "--target", "cpu", "--out", str(lut)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert main(["profile", MODEL, "--target", "cpu", "--export-ops", str(tmp_path / "ops3"), "--lut", str(lut)]) == 0
    assert json.loads((tmp_path / "ops3" / "manifest.json").read_text())["count"] == 0  # two trips: done


def test_the_kit_is_the_export_scripts_and_what_they_import():
    files = kit_files()
    assert {"export/profile_ops.py", "export/time_models.py", "export/device_info.py",
            "export/trt_build_and_time.py", "hwprune/runtime/ort.py", "hwprune/devices/cpu.toml"} <= set(files)
    assert not any(name.startswith(("hwprune/graph", "hwprune/transform", "hwprune/search")) for name in files)


def test_target_jetson_is_the_module_the_device_says_it_is(sshd, tmp_path, capsys):
    """The loopback device mirrors a Jetson AGX Orin's files (its model, L4T release and nvpmodel) through a
    wrapper interpreter; --target jetson reads them there and compiles for jetson-orin-agx, the power mode
    recorded. The device has no TensorRT, so the build is predicted, saying so, never timed elsewhere."""
    root = tmp_path / "device"
    (root / "proc" / "device-tree").mkdir(parents=True)
    (root / "proc" / "device-tree" / "model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    (root / "etc").mkdir()
    (root / "etc" / "nv_tegra_release").write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref\n")
    (root / "bin").mkdir()
    (root / "bin" / "nvpmodel").write_text("#!/bin/sh\necho 'NV Power Mode: MAXN'\necho 0\n")
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nexport HWPRUNE_DEVICE_ROOT={root}\nexport PATH={root / 'bin'}:$PATH\n"
                      f"exec {sys.executable} \"$@\"\n")
    for script in (python, root / "bin" / "nvpmodel"):
        script.chmod(0o755)
    out = tmp_path / "build"
    assert main(["compile", MODEL, "--target", "jetson", "--latency", "0.6", "--refine", "0", "--out", str(out),
                 *remote(sshd), "--remote-python", str(python)]) == 0
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("--target jetson"))
    assert "NVIDIA Jetson AGX Orin Developer Kit" in line and "R35" in line and "MAXN" in line
    assert line.endswith("profile jetson-orin-agx")
    report = json.loads((out / "report.json").read_text())
    assert report["target"] == "jetson-orin-agx" and report["budget"]["verdict"] == "not measured"
    assert report["fingerprint"]["device"]["model"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert report["fingerprint"]["device"]["power_mode"] == "NV Power Mode: MAXN 0"
