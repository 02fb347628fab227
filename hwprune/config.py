"""What a user asks of ``hwprune compile``: the budget and the knobs, typed and checked once, when
they are made. Facts of the host (can it run the target?) are read by the stage that needs them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from hwprune.cost.sparse import SparsityMode, parse_mode
from hwprune.errors import HwpruneError
from hwprune.export.verify import DEFAULT_ATOL, DEFAULT_RTOL
from hwprune.search.refine import ROUNDS, SECONDS, TOLERANCE
from hwprune.targets import Target

if TYPE_CHECKING:
    from hwprune.recovery.run import RecoverOptions


@dataclass(frozen=True)
class Budget:
    """``latency``: fraction of the baseline; ``speedup``: baseline / pruned; ``ms``: absolute."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind == "latency" and not 0 < self.value < 1:
            raise HwpruneError(f"--latency {self.value}: must be a fraction of the baseline in (0, 1)")
        if self.kind == "speedup" and not self.value > 1:
            raise HwpruneError(f"--speedup {self.value}: must be above 1")
        if self.kind == "ms" and not self.value > 0:
            raise HwpruneError(f"--budget-ms {self.value}: must be positive")
        if self.kind not in ("latency", "speedup", "ms"):
            raise HwpruneError(f"unknown budget kind {self.kind!r}")

    def fraction(self, baseline_ms: float) -> float:
        """The latency fraction of a baseline measured at ``baseline_ms`` that meets this budget."""
        if self.kind == "latency":
            return self.value
        if self.kind == "speedup":
            return 1.0 / self.value
        if self.value >= baseline_ms:
            raise HwpruneError(f"--budget-ms {self.value}: the unpruned model already takes {baseline_ms:.3g} ms "
                               "(measured here, or predicted where this host cannot run the target); nothing to prune")
        return self.value / baseline_ms


class Choice(str, Enum):
    """A choice among named values: compares equal to its value and prints as it (``--search joint``)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def parse(cls, value: object, flag: str) -> Choice:
        try:
            return cls(value)
        except ValueError:
            raise HwpruneError(f"{flag} {value}: use one of {', '.join(m.value for m in cls)}") from None


class Importance(Choice):
    L1 = "l1"
    L2 = "l2"
    BN = "bn"
    TAYLOR = "taylor"
    ACTIVATION = "activation"


class Allocation(Choice):
    AUTO = "auto"
    SENSITIVITY = "sensitivity"
    STRUCTURE = "structure"
    UNIFORM = "uniform"


class SearchKind(Choice):
    WIDTH = "width"
    DEPTH = "depth"
    JOINT = "joint"


class Recalibrate(Choice):
    AUTO = "auto"
    ON = "on"
    OFF = "off"


class Widths(Choice):
    HOMOGENEOUS = "homogeneous"
    PER_LAYER = "per-layer"


class Criterion(Choice):
    MAGNITUDE = "magnitude"
    ACTIVATION = "activation"


@dataclass
class Options:
    target: Target
    budget: Budget
    importance: Importance = Importance.ACTIVATION
    calib_data: str | Iterable | None = None  # a spec (module:fn, file.py:fn, text:FILE) or the batches themselves
    min_keep: float = 0.1
    lut: Path | None = None
    refine: int = ROUNDS - 1  # at most this many measured re-search rounds after the first (search.refine)
    refine_seconds: float = SECONDS  # time for them: a round starts only if it should end within it
    tolerance: float = TOLERANCE  # the verdict's band, relative to the request (search.verdict)
    exclude: tuple[str, ...] = ()
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    dynamic_batch: bool = False
    # Re-estimate BatchNorm statistics of the pruned model on the calibration inputs: "auto" does
    # it when real calibration data is given (recalibrating on random noise would be worse).
    recalibrate_bn: Recalibrate = Recalibrate.AUTO
    # How the budget is shared among groups: "auto" tries every strategy in every search round and
    # keeps the most faithful on the calibration inputs (search.choose); or one of STRATEGIES.
    allocation: Allocation = Allocation.AUTO
    # Unconstrained (UPSCALE) pruning: every dense reader of a segment keeps its own channels, the
    # producers their union; exported reordered, with the copies this needs priced by profiling.
    unconstrained: bool = False
    # Distil the chosen model from the unpruned one after the search (``hwprune recover`` in the build).
    recovery: RecoverOptions | None = None
    # What the search decides: channel widths, depth (merged spans, dropped blocks), or both together
    # (None: joint, or width alone with ``unconstrained``, whose reader copies are priced for width only).
    search: SearchKind | None = None
    # Depth options' cost after this many distillation steps each (0: the output change alone).
    depth_distil_steps: int = 0
    # N:M sparsity: "off", "auto" (2:4 where the target's cost model predicts or measures a gain) or
    # "N:M" (that pattern priced wherever the cost model can price it); an option of the joint search.
    sparsity: str = "auto"
    # Which weights an N:M mask keeps: the largest by magnitude, or by magnitude x the input
    # channel's activation norm on the calibration inputs ("activation").
    sparsity_criterion: Criterion = Criterion.MAGNITUDE
    # "homogeneous": groups with one role in every layer of a layer stack keep one width together
    # (``graph.stack.stack_ties``: what a transformers config holds); "per-layer": each its own.
    # None: homogeneous for hf: models, per-layer otherwise.
    widths: Widths | None = None

    def __post_init__(self) -> None:
        if not 0 < self.min_keep <= 1:
            raise HwpruneError(f"--min-keep {self.min_keep}: must be in (0, 1]")
        if self.atol < 0 or self.rtol < 0:
            raise HwpruneError("--atol and --rtol must be >= 0")
        if self.refine < 0:
            raise HwpruneError(f"--refine {self.refine}: must be >= 0")
        if self.refine_seconds < 0:
            raise HwpruneError(f"--refine-time {self.refine_seconds}: must be >= 0")
        if not 0 < self.tolerance < 1:
            raise HwpruneError(f"--tolerance {self.tolerance}: must be in (0, 1)")
        self.importance = Importance.parse(self.importance, "--importance")
        self.recalibrate_bn = Recalibrate.parse(self.recalibrate_bn, "--recalibrate-bn")
        self.allocation = Allocation.parse(self.allocation, "--allocation")
        self.sparsity_criterion = Criterion.parse(self.sparsity_criterion, "--sparsity-criterion")
        if self.widths is not None:
            self.widths = Widths.parse(self.widths, "--widths")
        if self.depth_distil_steps < 0:
            raise HwpruneError(f"--depth-distil-steps {self.depth_distil_steps}: must be >= 0")
        if self.search is None:
            self.search = SearchKind.WIDTH if self.unconstrained else SearchKind.JOINT
        self.search = SearchKind.parse(self.search, "--search")
        try:
            mode = parse_mode(self.sparsity)
        except ValueError as exc:
            raise HwpruneError(str(exc)) from None
        if mode is not None and mode.explicit and self.search == SearchKind.WIDTH:
            raise HwpruneError(f"--sparsity {self.sparsity} is an option of the joint search; not with --search width")
        if self.search == SearchKind.JOINT and self.allocation == Allocation.UNIFORM:
            raise HwpruneError("--allocation uniform shares width alone; use it with --search width")
        if self.search != SearchKind.WIDTH and self.unconstrained:
            raise HwpruneError("--unconstrained prices reader copies for width alone; use it with --search width")

    @property
    def sparsity_mode(self) -> SparsityMode | None:
        return parse_mode(self.sparsity)

    def homogeneous(self, model: str) -> bool:
        """Whether ``model``'s layers of one role keep one width (see ``widths``)."""
        return self.widths == Widths.HOMOGENEOUS or (self.widths is None and model.startswith("hf:"))
