"""The one seam to torch-pruning: every name hwprune takes from it, checked against the releases hwprune
is tested with. No other module of hwprune imports ``torch_pruning`` (``tests/house/test_layering.py``).

torch-pruning's DependencyGraph traces one forward and models residual adds, concat/split offsets and
flatten/reshape index mappings; hwprune builds its channel groups on it (``graph.capture``,
``graph.groups``). What hwprune needs of its internals (op types, index mappings, the pruning-function
base class its own pruners extend) is named here, so a new release is met in one place.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from hwprune.errors import HwpruneError

SUPPORTED = ((1, 6, 1), (1, 7, 0))  # [lowest, first unsupported): pyproject's torch-pruning>=1.6.1,<1.7


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def check_version(found: str | None = None) -> str:
    """The installed torch-pruning's version, or a one-line error naming the releases hwprune supports."""
    try:
        found = found or version("torch-pruning")
    except PackageNotFoundError:
        raise HwpruneError("torch-pruning is not installed (pip install 'torch-pruning>=1.6.1,<1.7')") from None
    low, high = SUPPORTED
    if not low <= _release(found) < high:
        raise HwpruneError(f"torch-pruning {found} is not supported: hwprune is tested with >=1.6.1,<1.7, whose "
                           "dependency-graph internals it extends (graph/depgraph)")
    return found


VERSION = check_version()

import torch_pruning as _tp  # noqa: E402  (after the version check, so an unsupported release says so)
from torch_pruning.dependency import Group, index_mapping  # noqa: E402
from torch_pruning.dependency.constants import INDEX_MAPPING_PLACEHOLDER  # noqa: E402
from torch_pruning.dependency.index_mapping import _FlattenIndexMapping as FlattenIndexMapping  # noqa: E402
from torch_pruning.ops import OPTYPE  # noqa: E402
from torch_pruning.pruner.function import BasePruningFunc  # noqa: E402

DependencyGraph = _tp.DependencyGraph
importance = _tp.importance  # its channel importance criteria (magnitude, BN scale, Taylor)

__all__ = ["INDEX_MAPPING_PLACEHOLDER", "OPTYPE", "VERSION", "BasePruningFunc", "DependencyGraph",
           "FlattenIndexMapping", "Group", "check_version", "importance", "index_mapping"]
