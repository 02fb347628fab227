"""Atomic file output: a failed run never leaves a half-written file that looks finished."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hwprune.errors import HwpruneError


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder and one rename."""
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` fills a temporary file in ``path``'s folder, which then replaces ``path`` in one
    rename (for any writer: text, ``torch.save``, a figure's ``savefig``)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise HwpruneError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        write(Path(tmp))
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_dir() -> Path:
    """Where hwprune keeps what it measured on this host: $HWPRUNE_CACHE, else ~/.cache/hwprune."""
    return Path(os.environ.get("HWPRUNE_CACHE", Path.home() / ".cache" / "hwprune"))


def publish(tmp: str | Path, path: Path) -> None:
    """Move a finished temporary file into place with the usual mode (mkstemp's 0600 would leak
    into the artefact and hide it from other users of a shared build folder)."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_json_document(path: Path, what: str, error: type[HwpruneError], format_tag: str,
                       older: tuple[str, ...] = ()) -> dict:
    """A JSON object carrying ``"format": format_tag`` (or one of the ``older`` formats the caller
    converts); a missing, unreadable or foreign file is an ``error`` naming the path and ``what`` it
    should have been."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: corrupt {what}, not JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") not in (format_tag, *older):
        raise error(f"{path}: not a {format_tag} {what}")
    return data


@contextmanager
def staged(out: Path, artefacts: Sequence[str]) -> Iterator[Path]:
    """A staging folder inside ``out`` to write ``artefacts`` into. Old copies of them in ``out`` are
    removed first; on success each is moved into ``out``, the first named last (so its presence
    means the rest are there); on failure none is, and the staging folder goes either way."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in artefacts:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
            else:
                (out / name).unlink(missing_ok=True)
    except OSError as exc:
        raise HwpruneError(f"cannot write to {out}: {exc.strerror or exc}") from exc
    if not os.access(out, os.W_OK):
        raise HwpruneError(f"cannot write to {out}: permission denied")
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".partial-"))
    try:
        yield stage
        for name in [*artefacts[1:], *artefacts[:1]]:
            if (stage / name).exists():
                os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
