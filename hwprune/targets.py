"""Device profiles: ``devices/<name>.toml`` read into a :class:`Target`."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import resources

from hwprune.errors import DeviceError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

REQUIRED_FIELDS = ("name", "description", "runtime", "default_dtype", "default_batch", "channel_alignment")


@dataclass(frozen=True)
class Target:
    """One deployment target: which runtime times it and what its kernels like."""

    name: str
    description: str
    runtime: str
    default_dtype: str
    default_batch: int
    channel_alignment: int
    extra: dict = field(default_factory=dict)


def available_targets() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in resources.files("hwprune.devices").iterdir()
                  if p.name.endswith(".toml"))


def load_target(name: str) -> Target:
    """Load a device profile by name; a DeviceError lists the known names when it is missing."""
    path = resources.files("hwprune.devices") / f"{name}.toml"
    if not path.is_file():
        raise DeviceError(f"unknown target {name!r}; known targets: {', '.join(available_targets())}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise DeviceError(f"device profile {name}.toml is malformed: {exc}") from exc
    missing = [key for key in REQUIRED_FIELDS if key not in data]
    if missing:
        raise DeviceError(f"device profile {name}.toml lacks {', '.join(missing)}")
    known = {key: data.pop(key) for key in REQUIRED_FIELDS}
    return Target(**known, extra=data)
