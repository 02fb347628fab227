"""Errors a user can act on: the CLI prints their message in one line and exits with code 2."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """An exception as one line: its type and the first line of its message (cut at ``limit``
    characters), for reporting a failure hwprune did not foresee without a traceback."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit]}" if text else type(exc).__name__


class HwpruneError(Exception):
    """Base class of every error caused by the user's input rather than by a bug in hwprune."""

    exit_code = 2


class ModelSpecError(HwpruneError):
    """A model spec that cannot be resolved: unknown name, missing file, broken factory."""


class CaptureError(HwpruneError):
    """The model's forward could not be run or traced on the example input."""


class UnsupportedOpError(HwpruneError):
    """An op that hwprune cannot prune through sits on a prunable channel path."""


class PlanError(HwpruneError):
    """Keep-indices that do not fit the analysed groups."""


class DeviceError(HwpruneError):
    """An unknown or malformed device profile."""
