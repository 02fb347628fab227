"""SSH to a device with the system's OpenSSH client (``ssh``), for the on-device loop.

Why the system client rather than asyncssh or paramiko: no new dependency, and it is the client
the user already reaches the device with, so their ``~/.ssh/config`` (aliases, ``ProxyJump``,
``IdentityFile``), their agent and their ``known_hosts`` all work as they do by hand; host keys are
checked by OpenSSH itself. Every call runs in batch mode (no password or passphrase prompt, no
question about a new host key: ``StrictHostKeyChecking=yes`` unless the user passes
``--accept-new-host-key``, which is OpenSSH's ``accept-new``: a changed key is still refused),
with a connect timeout and a timeout per command. One master connection is shared by all calls
(``ControlMaster``, its socket in a private temporary folder), so a compile's many small calls
cost one handshake. Files travel as a tar stream on the same connection (no scp, no sftp).

Errors are one line (:class:`SshError`, exit 2) that say what failed and what to do.
"""

from __future__ import annotations

import io
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hwprune.errors import DeviceError

CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 1800.0


class SshError(DeviceError):
    """The device cannot be reached, refuses us, or a command on it failed or ran out of time."""


@dataclass(frozen=True)
class Address:
    """``USER@HOST[:PORT]`` (user and port optional; ``HOST`` may be an alias from the ssh config)."""

    host: str
    user: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Address:
        match = re.fullmatch(r"(?:([^@\s:]+)@)?([^@\s:]+|\[[0-9a-fA-F:]+\])(?::(\d+))?", text.strip())
        if match is None:
            raise SshError(f"--remote {text}: give USER@HOST, HOST or USER@HOST:PORT")
        user, host, port = match.groups()
        return cls(host.strip("[]"), user, int(port) if port else None)

    def __str__(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}{':' + str(self.port) if self.port else ''}"


class Connection:
    """Commands and files on one device over the system's ``ssh``; ``close()`` ends the master."""

    def __init__(self, address: Address, config: str | Path | None = None, accept_new_host_key: bool = False,
                 connect_timeout: float = CONNECT_TIMEOUT_S, command_timeout: float = COMMAND_TIMEOUT_S):
        if shutil.which("ssh") is None:
            raise SshError("--remote needs the OpenSSH client (ssh) on this host")
        if config is not None and not Path(config).is_file():
            raise SshError(f"--ssh-config {config}: file not found")
        self.address, self.config, self.accept_new = address, config, accept_new_host_key
        self.connect_timeout, self.command_timeout = connect_timeout, command_timeout
        self._control = Path(tempfile.mkdtemp(prefix="hwprune-ssh-"))  # 0700: only we reach the master socket

    def argv(self, command: str) -> list[str]:
        return [*self._options(), "--", self.address.host, command]

    def _options(self) -> list[str]:
        options = {"BatchMode": "yes", "StrictHostKeyChecking": "accept-new" if self.accept_new else "yes",
                   "ConnectTimeout": str(max(1, round(self.connect_timeout))), "ServerAliveInterval": "15",
                   "ServerAliveCountMax": "4", "ControlMaster": "auto", "ControlPath": str(self._control / "%C"),
                   "ControlPersist": "300", "LogLevel": "ERROR"}
        argv = ["ssh", *(["-F", str(self.config)] if self.config else [])]
        for key, value in options.items():
            argv += ["-o", f"{key}={value}"]
        if self.address.port:
            argv += ["-p", str(self.address.port)]
        if self.address.user:
            argv += ["-l", self.address.user]
        return argv

    def run(self, command: str, stdin: bytes | None = None, timeout: float | None = None, what: str = "") -> str:
        """Run a shell command on the device; its stdout, or an :class:`SshError` with its last line."""
        timeout = self.command_timeout if timeout is None else timeout
        try:
            done = subprocess.run(self.argv(command), input=stdin if stdin is not None else b"",
                                  capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SshError(f"{self.address}: {what or command.split()[0]} did not finish within {timeout:g} s "
                           "(a wedged device or connection?)") from None
        err = done.stderr.decode(errors="replace").strip()
        if done.returncode == 255:
            raise SshError(self._diagnose(err))
        if done.returncode != 0:
            last = err.splitlines()[-1] if err else f"exit status {done.returncode}"
            raise SshError(f"{self.address}: {what or 'remote command'} failed: {last[:400]}")
        return done.stdout.decode(errors="replace")

    def _diagnose(self, err: str) -> str:
        where = str(self.address)
        if "IDENTIFICATION HAS CHANGED" in err or "key for" in err and "has changed" in err:
            return (f"{where}: the host key has CHANGED since it was recorded in known_hosts; refusing to connect "
                    "(check the device, then remove the old key with ssh-keygen -R)")
        if "Host key verification failed" in err or "No " in err and "host key is known" in err:
            return (f"{where}: host key not known (not in known_hosts); check it and connect once with ssh, or "
                    "pass --accept-new-host-key to record it")
        if "Permission denied" in err or "Too many authentication failures" in err:
            return (f"{where}: authentication failed (batch mode: no password prompt; use a key in ssh-agent or "
                    "IdentityFile in the ssh config)")
        if "timed out" in err:
            return f"{where}: connection timed out after {self.connect_timeout:g} s"
        if "Could not resolve hostname" in err:
            return f"{where}: unknown host name"
        if "Connection refused" in err:
            return f"{where}: connection refused (no sshd on that port?)"
        last = err.splitlines()[-1] if err else "ssh exited with status 255"
        return f"{where}: ssh failed: {last[:400]}"

    def put(self, folder: str, files: Mapping[str, Path | bytes]) -> None:
        """Write ``files`` (relative path -> local file or bytes) under ``folder`` on the device, in one call."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, source in files.items():
                data = source if isinstance(source, bytes) else Path(source).read_bytes()
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        self.run(f"tar -xf - -C {shlex.quote(folder)}", buffer.getvalue(), what="copying files")

    def get(self, path: str) -> bytes:
        out = subprocess.run(self.argv(f"cat {shlex.quote(path)}"), capture_output=True,
                             timeout=self.command_timeout)
        if out.returncode != 0:
            raise SshError(f"{self.address}: cannot read {path} ({out.stderr.decode(errors='replace').strip()[:200]})")
        return out.stdout

    def close(self) -> None:
        """End the master connection and remove its socket folder."""
        try:
            subprocess.run([*self._options(), "-O", "exit", "--", self.address.host], capture_output=True, timeout=10)
        except (subprocess.TimeoutExpired, OSError):
            pass
        shutil.rmtree(self._control, ignore_errors=True)
