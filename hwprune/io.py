"""Atomic file output: a failed run never leaves a half-written file that looks finished."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from hwprune.errors import HwpruneError


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and one rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise HwpruneError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json_document(path: Path, what: str, error: type[HwpruneError], format_tag: str) -> dict:
    """A JSON object carrying ``"format": format_tag``; a missing, unreadable or foreign file is an
    ``error`` naming the path and ``what`` it should have been."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: corrupt {what}, not JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != format_tag:
        raise error(f"{path}: not a {format_tag} {what}")
    return data
