"""Latency tables recorded once, for tests whose verdict would otherwise follow a measurement made
during the test (a busy CI runner measures another floor, and the compile decides otherwise).

A recorded table names its model's folder as ``{folder}`` (a test's models live in temporary folders)
and is adopted by this host: its binding settings become this host's, so the compile reads it as its
cache and measures no single op. To record one, run the test's compile on an empty ``HWPRUNE_CACHE``
and pass the table it wrote to ``record``.
"""

from __future__ import annotations

import json
from pathlib import Path

from hwprune.cost.lut import BINDING_FIELDS, fingerprint
from hwprune.cost.model_latency import default_table_path
from hwprune.io import cache_dir
from hwprune.runtime import runtime_for
from hwprune.targets import load_target

RECORDED = Path(__file__).parent / "data" / "recorded"


def record(table: Path, name: str, folder: str) -> Path:
    """Keep ``table`` (measured for the model in ``folder``) as the recorded table ``name``."""
    path = RECORDED / f"{name}.json"
    path.write_text(table.read_text().replace(folder, "{folder}"))
    return path


def adopt(name: str, cache: Path, folder: str, target: str = "cpu") -> Path:
    """Put the recorded table ``name`` in ``cache`` as this host's table for ``target``, for the model
    in ``folder``."""
    path = cache / default_table_path(load_target(target)).relative_to(cache_dir())
    path.parent.mkdir(parents=True, exist_ok=True)
    return adopt_file(RECORDED / f"{name}.json", path, folder)


def adopt_file(recorded: Path, path: Path, folder: str) -> Path:
    """Write the table ``recorded`` to ``path`` as measured on this host, for the model in ``folder``."""
    data = json.loads(recorded.read_text().replace("{folder}", folder))
    here = runtime_for(load_target(data["provenance"]["target"])).provenance()
    provenance = {**data["provenance"], **{key: here.get(key) for key in BINDING_FIELDS}}
    data["provenance"] = {**provenance, "fingerprint": fingerprint(provenance)}
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path
