"""The Plan's sections, each a frozen dataclass: what the search decided, as data the cost model and
the transform exchange (never dicts keyed by strings), and what it was decided for.

This module imports nothing of hwprune: a Plan is data, not behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


def _ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class WidthDecision:
    """One group's kept units (channels, or attention heads: a unit is one key/value head with its
    queries), by their indices in the unpruned model."""

    keep: int
    of: int
    indices: tuple[int, ...]
    # Unconstrained pruning: the group channels each dense reader reads (``indices`` is their union).
    readers: Mapping[str, tuple[int, ...]] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "indices", _ints(self.indices))
        if self.readers is not None:
            object.__setattr__(self, "readers", {str(k): _ints(v) for k, v in self.readers.items()})


@dataclass(frozen=True)
class MergedSpan:
    """Consecutive convolutions merged into one conv, the activations between them removed."""

    convs: tuple[str, ...]
    activations: tuple[str, ...]
    skip: str | None = None  # the residual add whose identity branch the merged kernel absorbs

    def __post_init__(self) -> None:
        object.__setattr__(self, "convs", tuple(self.convs))
        object.__setattr__(self, "activations", tuple(self.activations))


@dataclass(frozen=True)
class DroppedBlock:
    """A residual branch removed (its add passes the skip through), or, with no ``add``, a whole layer
    of a layer stack (a transformer's decoder layer).

    ``fold`` (ReplaceMe): the run of consecutive dropped layers this one belongs to is replaced by one
    linear map, fitted by least squares on calibration activations and folded into ``fold``, the MLP
    output projection of the last kept layer before the run; every layer of a run names the same one.
    The map is data-dependent: re-applying the plan needs the same calibration data."""

    block: str
    add: str | None
    fold: str | None = None


@dataclass(frozen=True)
class NMLayer:
    """A layer whose weights take an N:M mask along their input channels."""

    n: int
    m: int
    criterion: str = "magnitude"  # or "activation": the mask weighs each input channel by ``scale``
    scale: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.scale is not None:
            object.__setattr__(self, "scale", tuple(float(v) for v in self.scale))


@dataclass(frozen=True)
class PermutationGain:
    """The weight magnitude a group's N:M readers keep without and with its permutation."""

    readers: tuple[str, ...]
    dense: float
    identity: float
    permuted: float
    weighted_by: str  # "magnitude" or "activation"


@dataclass(frozen=True)
class Sparsity:
    """N:M layers, and the channel permutation of each group that feeds them, where one helps."""

    pattern: str | None = None  # "2:4"; None: no layer is N:M
    layers: Mapping[str, NMLayer] = field(default_factory=dict)
    permutations: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    magnitude: Mapping[str, PermutationGain] = field(default_factory=dict)


@dataclass(frozen=True)
class Recovery:
    """The distillation a build went through (its weights are not rebuilt by the plan alone)."""

    data: str
    epochs: int
    recipe: Mapping[str, object]  # the recipe's settings, as JSON scalars
    weights: str
    note: str


@dataclass(frozen=True)
class PlanBudget:
    """What was asked and, for a plan of the search, the predicted budget of its round."""

    kind: str  # "latency", "speedup" or "budget_ms"
    value: float
    latency_fraction: float | None  # None: a v1 plan's budget in ms (v1 kept no baseline)
    predicted_budget_ms: float | None = None


@dataclass(frozen=True)
class LatencyModelInfo:
    """Which latency model priced the plan: a measured table (``lut``), a shipped one or the analytic one."""

    source: str
    runtime: str | None
    runtime_version: str | None
    threads: int | None
    graph_optimization_level: str | None
    layer_scale: float
    rest_ms: float
    fingerprint: str | None = None
    table: str | None = None  # a shipped table's file


@dataclass(frozen=True)
class Provenance:
    """What the plan was made for: re-applying it anywhere else is an error, not a different model."""

    model: str
    weights: str  # where the unpruned weights came from ("random, seed 0", a file, a factory)
    seed: int | None  # the seed random weights were drawn with (None: not random)
    input_shape: tuple[int, ...]
    exclude: tuple[str, ...]
    state_sha256: str | None  # digest of the unpruned state dict (None: converted from a v1 plan)
    target: str
    budget: PlanBudget
    latency_model: LatencyModelInfo
    importance: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", _ints(self.input_shape))
        object.__setattr__(self, "exclude", tuple(str(e) for e in self.exclude))


@dataclass(frozen=True)
class Plan:
    """The decision: channel widths, attention heads, merged spans, dropped blocks and layers, N:M layers
    and permutations, and any recovery, with what it was made for and its predicted latency."""

    provenance: Provenance
    predicted_ms: float
    baseline_predicted_ms: float
    width: Mapping[str, WidthDecision] = field(default_factory=dict)
    heads: Mapping[str, WidthDecision] = field(default_factory=dict)
    merge: tuple[MergedSpan, ...] = ()
    depth: tuple[DroppedBlock, ...] = ()
    sparsity: Sparsity = field(default_factory=Sparsity)
    recovery: Recovery | None = None
    # The pruned model's BatchNorm statistics are re-estimated on calibration data; re-applying
    # the plan needs the same data to give the same model.
    bn_recalibration: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "merge", tuple(self.merge))
        object.__setattr__(self, "depth", tuple(self.depth))

    def groups(self) -> dict[str, WidthDecision]:
        """Every group's decision, channel groups and attention heads alike (what pruning applies)."""
        return {**self.width, **self.heads}

    def decisions(self) -> tuple:
        """What the transform builds from (equal decisions build equal models): provenance and predictions aside."""
        return (self.width, self.heads, self.merge, self.depth, self.sparsity)

    def keep(self) -> dict[str, tuple[int, ...]]:
        return {gid: decision.indices for gid, decision in self.groups().items()}
