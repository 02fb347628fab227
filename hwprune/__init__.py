"""hwprune: hardware-aware structured pruning and export compiler for PyTorch models.

The public names are listed in ``__all__``: the Python API (``compile``, ``analyze``, ``apply``, ``recover``,
``latency``, ``bench``) and the types it takes and returns. They load on first use, so that ``hwprune
--help`` imports no torch; everything else is private to the package and may change between releases.

Versions: the plan (``hwprune-plan/N``) and report (``hwprune-report/N``) formats change N when a field
changes its meaning or goes, and a reader takes every earlier plan version; the API follows semantic
versioning from 1.0, and before 1.0 a minor release may change it, saying so in the changelog.
"""

from __future__ import annotations

import importlib

from hwprune._version import __version__

_PUBLIC = {
    "compile": "hwprune._api", "analyze": "hwprune._api", "apply": "hwprune._api", "recover": "hwprune._api",
    "latency": "hwprune._api", "bench": "hwprune._api", "Build": "hwprune._api", "Applied": "hwprune._api",
    "Latency": "hwprune._api", "Options": "hwprune.config", "Budget": "hwprune.config",
    "HwpruneError": "hwprune.errors", "ModelSpecError": "hwprune.errors", "PlanError": "hwprune.errors",
    "Plan": "hwprune.plan", "load_plan": "hwprune.plan", "Report": "hwprune.report",
}
__all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name: str) -> object:
    """A public name, from the module that defines it (imported on first use)."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'hwprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # a submodule imported later sets only its own name, never a public one
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
