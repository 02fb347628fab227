"""Transform passes: each changes the model one way, with checks before and after.

After onnx-ir's pass infrastructure: a pass ``requires`` what it needs of the model and the plan
(raising PlanError, so a plan that does not fit fails before any layer is touched), ``call``s its
change and says whether it changed anything, and ``ensures`` what it promised (a failure there is
a bug in hwprune, raised as TransformError). The width passes share one :class:`Surgery` (the
model under change and what earlier passes did to it); the depth passes share a graph rewrite
(``transform/merge.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from hwprune.graph.analyze import Analysis
from hwprune.graph.segments import Segment
from hwprune.plan import WidthDecision


class TransformError(RuntimeError):
    """A pass broke its own promise: a bug, never the user's input."""


@dataclass
class Surgery:
    """The model under change (``analysis.model``) and the record the passes leave for each other.

    ``analysis`` describes the unpruned model throughout: the passes read it, never re-analyse.
    """

    analysis: Analysis
    width: dict[str, WidthDecision]  # the plan's width section in the model's current channel numbering
    segments: dict[str, Segment] = field(default_factory=dict)  # by group; where the plan has readers
    # Per layer: its unpruned input width and the input indices constrained pruning removed.
    removed_inputs: dict[str, tuple[int, set[int]]] = field(default_factory=dict)


@dataclass(frozen=True)
class PassResult:
    name: str
    modified: bool


State = TypeVar("State")


class Pass(ABC, Generic[State]):
    name: str

    def requires(self, surgery: State) -> None:  # noqa: B027  (most passes need nothing checked)
        """Raise PlanError if this pass cannot apply to the model and plan."""

    @abstractmethod
    def call(self, surgery: State) -> bool:
        """Change the model under ``surgery`` in place; True if anything changed."""

    def ensures(self, surgery: State) -> None:  # noqa: B027
        """Raise TransformError if the change is not what this pass promises."""

    def __call__(self, surgery: State) -> PassResult:
        self.requires(surgery)
        modified = self.call(surgery)
        self.ensures(surgery)
        return PassResult(self.name, modified)


def run_passes(passes: Sequence[Pass[State]], surgery: State) -> list[PassResult]:
    """Apply ``passes`` in order; each one's checks run around it."""
    return [p(surgery) for p in passes]
