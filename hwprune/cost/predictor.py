"""Predict a (pruned) model's latency from its layers' measured signatures.

Each single-op measurement includes one session call's own cost, which a whole model pays once,
not once per layer; the table's measured call overhead is taken off every layer's time.

End-to-end latency = f + k * (sum over conv/linear layers of their table latency)
+ r * (the layers' output activations relative to the unpruned model's). The second term is
the layers as timed alone, scaled by k because a layer inside a model runs faster than alone (its
input is warm in cache, the runtime fuses it with its BN and activation, and small layers'
fixed costs shrink); the third term is the rest of the model (pooling, elementwise ops,
attention matmuls, layout reorders), dominated by memory traffic over those activations (a layer's
per-channel constant epilogue is not in it but in the layer's own time, ``cost.layers``); f is
what does not shrink with width (the session call, every node's dispatch, ops outside the
prunable groups), and matters most at small widths, where a search likes to go.
f, k and r are fitted per model to whole-model measurements at profile time ("anchors": the
unpruned model and uniformly pruned copies, measured on the target) by least squares with every
coefficient >= 0. With three or more anchors all three are fitted; with two, f is the measured
call overhead; with one, k = 1 and r takes the difference; with none the prediction is the layer sum.

A layer point that was measured is a ``lut`` prediction. Any other point combines the output
sweep (inputs full) and the input sweep (outputs full) of that layer multiplicatively,
T(ci, co) = T(Ci, co) * T(ci, Co) / T(Ci, Co), each axis read where it was measured, else on the line
between the nearest measured counts (adaptive profiling measures a straight stretch of an axis at its
ends only, ``cost.space``): an ``interpolated`` prediction.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from hwprune.cost.correction import Correction
from hwprune.cost.layers import Layer
from hwprune.cost.lut import LatencyTable
from hwprune.cost.signature import OpSignature
from hwprune.cost.sparse import SparsityCheck
from hwprune.cost.structural import StructuralOption
from hwprune.errors import HwpruneError
from hwprune.plan import LatencyModelInfo


@dataclass(frozen=True)
class Anchor:
    """The whole model measured at known keep counts (absent groups whole)."""

    keep: dict[str, int]
    measured_ms: float


@dataclass
class Prediction:
    total_ms: float
    layers_ms: dict[str, float]
    rest_ms: float
    source: str


class TablePredictor:
    """Predictions for one model's layers from one measured table.

    ``options`` are the depth choices (merged spans, dropped blocks) the table can price: an option
    whose merged conv the table lacks is left out (``options`` keeps only the priced ones).
    ``with_depth`` gives the predictor of the model with some of them taken; the whole-model fit
    (f, k, r) is the full-depth model's, and the rest term still scales with the activations left.
    """

    def __init__(self, layers: list[Layer], table: LatencyTable, anchors: Sequence[Anchor] = (),
                 options: Sequence[StructuralOption] = ()):
        self.layers = layers
        self.table = table
        self._by_shape = _index_by_shape(table)
        self._axes = {layer.name: self._measured_axes(layer) for layer in layers}
        self.options: dict[str, StructuralOption] = {}
        self.offer(options)
        self.depth: frozenset[str] = frozenset()
        self.sparsity: SparsityCheck | None = None  # what pricing N:M found (``model_latency.priced_sparsity``)
        # Groups that keep one count together (``tie``): a key of ``keep`` may name a tie for all its groups.
        self.ties: dict[str, tuple[str, ...]] = {}
        self.correction = Correction()  # what measured rounds taught about single depth options (``corrected``)
        self._full_activations = sum(self._activations(layer, {}) for layer in layers)
        self._index_groups()
        self.fixed_ms, self.layer_scale, self.rest_ms = self._fit(anchors)
        self._views: dict[frozenset[str], TablePredictor] = {frozenset(): self}

    def offer(self, options: Sequence[StructuralOption]) -> None:
        """Add the depth choices among ``options`` this table can price (before any ``with_depth`` view)."""
        for option in options:
            try:
                axes = {layer.name: self._measured_axes(layer) for layer in option.adds}
            except HwpruneError:
                continue  # not in the table: a choice this latency model cannot price
            self._axes.update(axes)
            self.options[option.key] = option

    def _index_groups(self) -> None:
        self._touching: dict[str, list[Layer]] = {}
        for layer in self.layers:
            for group_id in {g.group for g in layer.inputs} | ({layer.out_group} - {None}):
                self._touching.setdefault(group_id, []).append(layer)
        for tie, members in self.ties.items():
            self._touching[tie] = [layer for m in members for layer in self._touching.get(m, [])]

    def tie(self, ties: dict[str, tuple[str, ...]]) -> None:
        """Price each tie's groups as one: ``keep[tie]`` sets every member's count. Members must size
        disjoint layers (a layer of each member only), so a tie's cost is the sum of its members'."""
        for tie, members in ties.items():
            touched = [layer.name for m in members for layer in self._touching.get(m, [])]
            if len(touched) != len(set(touched)):
                raise HwpruneError(f"tie {tie}: its groups size a layer in common")
        self.ties = dict(ties)
        self._views = {frozenset(): self}
        self._index_groups()

    def untie(self, keep: dict[str, int]) -> dict[str, int]:
        """``keep`` with every tie replaced by its member groups."""
        members = {m: keep[tie] for tie, ms in self.ties.items() if tie in keep for m in ms}
        return {**{k: v for k, v in keep.items() if k not in self.ties}, **members}

    def corrected(self, correction: Correction) -> TablePredictor:
        """This predictor with ``correction`` (``cost.correction``): a depth option's milliseconds added to
        every prediction that takes it."""
        base = copy.copy(self._views[frozenset()])
        base.correction = correction
        base._views = {frozenset(): base}
        return base

    def option_ms(self, keys: frozenset[str]) -> float:
        """What the correction adds to a model with the depth options ``keys`` taken."""
        return sum(self.correction.options_ms.get(k, 0.0) for k in keys)

    def with_depth(self, keys: frozenset[str]) -> TablePredictor:
        """This predictor for the model with the depth options ``keys`` taken (they must not overlap)."""
        base = self._views[frozenset()]
        if keys not in base._views:
            chosen = [base.options[k] for k in sorted(keys)]
            removed = frozenset().union(*(o.removes for o in chosen))
            view = copy.copy(base)
            view.layers = [layer for layer in base.layers if layer.name not in removed] + [
                layer for o in chosen for layer in o.adds]
            view.depth = keys
            view._index_groups()
            base._views[keys] = view
        return base._views[keys]

    def provenance(self) -> LatencyModelInfo:
        """Which latency model this is, for a plan or report: the measured table's or the analytic one."""
        table = self.table.provenance
        source = table.get("source") or ("analytic" if table.get("runtime") == "analytic" else "lut")
        return LatencyModelInfo(source, table.get("runtime"), table.get("runtime_version"), table.get("threads"),
                                table.get("graph_optimization_level"), self.layer_scale, self.rest_ms,
                                table.get("fingerprint"), table.get("table"))

    def describe(self) -> str:
        """The latency model in a few words, for a log line."""
        provenance = self.provenance()
        if provenance.source == "analytic":
            return "analytic roofline model"
        if provenance.source == "shipped":
            return f"shipped table {provenance.table}"
        return f"table measured on this host with {provenance.runtime} {provenance.runtime_version}"

    def _fit(self, anchors: Sequence[Anchor]) -> tuple[float, float, float]:
        """(f, k, r) from the anchors, each >= 0; see the module docstring."""
        if not anchors:
            return 0.0, 1.0, 0.0
        sums = np.array([sum(self._layers_ms(a.keep)[0].values()) for a in anchors])
        activations = np.array([self._activation_ratio(a.keep) for a in anchors])
        measured = np.array([a.measured_ms for a in anchors])
        overhead = self.table.call_overhead_ms or 0.0
        if len(anchors) == 1:
            return overhead, 1.0, max(0.0, float(measured[0] - overhead - sums[0]) / activations[0])
        if len(anchors) == 2:
            k, r = nonnegative_least_squares(np.stack([sums, activations], axis=1), measured - overhead)
            return overhead, float(k), float(r)
        f, k, r = nonnegative_least_squares(np.stack([np.ones_like(sums), sums, activations], axis=1), measured)
        return float(f), float(k), float(r)

    def _measured_axes(self, layer: Layer) -> tuple[dict[int, float], dict[int, float]]:
        sig = layer.signature
        outs, ins = {}, {}
        for other, median_ms in self._by_shape.get(_shape_key(sig), []):
            if other.with_channels(sig.c_in, sig.c_out) != sig:
                continue
            if other.c_in == sig.c_in or layer.depthwise:
                outs[other.c_out] = median_ms
            if other.c_out == sig.c_out and not layer.depthwise:
                ins[other.c_in] = median_ms
        if sig.c_out not in outs:
            raise HwpruneError(f"layer {layer.name} ({sig.key()}) is not in the latency table; run hwprune profile")
        return outs, ins

    def axes(self, layer: Layer) -> tuple[dict[int, float], dict[int, float]]:
        """What the table measured along ``layer``'s output and input axes: count -> ms (a call's cost off)."""
        return self._axes[layer.name]

    def channels(self, layer: Layer, keep: dict[str, int], reads: dict[str, int] | None = None) -> tuple[int, int]:
        """(c_in, c_out) with ``keep`` units per group; ``reads``: what dense readers of a group read
        when it differs from what its producers keep (unconstrained pruning)."""
        c_out = layer.c_out(keep)
        return (c_out if layer.depthwise else layer.c_in({**keep, **(reads or {})})), c_out

    def layer_ms(self, layer: Layer, c_in: int, c_out: int) -> tuple[float, bool]:
        """Latency of ``layer`` at (c_in, c_out) and whether it was measured at exactly that point."""
        sig = layer.signature
        outs, ins = self._axes[layer.name]
        exact = self.table.get(sig.with_channels(c_in, c_out))
        if exact is not None:
            return op_ms(self.table, exact.median_ms), True
        along_out = _on_axis(outs, c_out, layer.name)
        if layer.depthwise or c_in == sig.c_in:
            return along_out, False
        along_in = _on_axis(ins, c_in, layer.name)
        return along_out * along_in / outs[sig.c_out], False

    def _activations(self, layer: Layer, keep: dict[str, int]) -> int:
        _c_in, c_out = self.channels(layer, keep)
        oh, ow = layer.signature.out_hw
        return c_out * oh * ow

    def _activation_ratio(self, keep: dict[str, int]) -> float:
        return sum(self._activations(layer, keep) for layer in self.layers) / self._full_activations

    def _layers_ms(self, keep: dict[str, int], reads: dict[str, int] | None = None) -> tuple[dict[str, float], bool]:
        """Each layer's single-op table time at ``keep``, and whether all were measured points."""
        layers_ms = {}
        all_exact = True
        for layer in self.layers:
            ms, exact = self.layer_ms(layer, *self.channels(layer, keep, reads))
            layers_ms[layer.name] = ms
            all_exact &= exact
        return layers_ms, all_exact

    def layer_sides(self) -> dict[str, int]:
        """Per group, how many layer inputs and outputs it sizes (a depthwise layer counts once)."""
        return {gid: sum(any(g.group == gid for g in layer.inputs) + (layer.out_group == gid)
                         for layer in touched) for gid, touched in self._touching.items()}

    def group_costs(self, keep: dict[str, int], group_id: str, counts: Sequence[int]) -> list[float]:
        """The predicted time of the layers ``group_id`` sizes (and its share of the rest) at each of
        ``counts``, every other group as in ``keep``: the group's latency contribution (HALP)."""
        touched = self._touching.get(group_id, [])
        costs = []
        for count in counts:
            trial = self.untie({**keep, group_id: count})
            layers_ms = sum(self.layer_ms(layer, *self.channels(layer, trial))[0] for layer in touched)
            outputs = set(self.ties.get(group_id, (group_id,)))
            activations = sum(self._activations(layer, trial) for layer in touched if layer.out_group in outputs)
            costs.append(self.layer_scale * layers_ms + self.rest_ms * activations / self._full_activations)
        return costs

    def layers_cost(self, layers: Sequence[Layer], keep: dict[str, int]) -> float:
        """The predicted time of ``layers`` at ``keep`` with their share of the rest (as ``group_costs``)."""
        keep = self.untie(keep)
        ms = sum(self.layer_ms(layer, *self.channels(layer, keep))[0] for layer in layers)
        activations = sum(self._activations(layer, keep) for layer in layers)
        return self.layer_scale * ms + self.rest_ms * activations / self._full_activations

    def predict(self, keep: dict[str, int], reads: dict[str, int] | None = None) -> Prediction:
        """Latency with ``keep[group_id]`` units kept per group (absent groups stay whole) and, for
        unconstrained pruning, ``reads[group_id]`` read by each of its dense readers."""
        keep = self.untie(keep)
        alone, all_exact = self._layers_ms(keep, reads)
        layers_ms = {name: self.layer_scale * ms for name, ms in alone.items()}
        rest = self.fixed_ms + self.rest_ms * self._activation_ratio(keep) + self.option_ms(self.depth)
        source = self.provenance().source if all_exact else "interpolated"
        return Prediction(sum(layers_ms.values()) + rest, layers_ms, rest, source)


def nonnegative_least_squares(columns: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """argmin ||columns @ x - targets|| subject to x >= 0, exactly, by trying every subset of free
    columns (the optimum is the unconstrained fit on its support): fine for the three columns here.

    Solved in exact rational arithmetic, not with LAPACK: a BLAS kernel chosen by the CPU changed the
    fit's last digits from one machine to another, and with them predictions and plans."""
    rows = [[Fraction(float(v)) for v in row] for row in np.asarray(columns, dtype=float)]
    b = [Fraction(float(v)) for v in np.asarray(targets, dtype=float)]
    width = len(rows[0]) if rows else columns.shape[1]
    best, best_residual = [Fraction(0)] * width, sum(v * v for v in b)
    for mask in range(1, 2 ** width):
        support = [i for i in range(width) if mask >> i & 1]
        solution = _normal_solution([[row[i] for i in support] for row in rows], b)
        if solution is None or any(v < 0 for v in solution):
            continue  # singular (a smaller support fits as well) or outside the constraint
        candidate = [Fraction(0)] * width
        for i, v in zip(support, solution, strict=True):
            candidate[i] = v
        residual = sum((sum(a * x for a, x in zip(row, candidate, strict=True)) - t) ** 2
                       for row, t in zip(rows, b, strict=True))
        if residual < best_residual:
            best, best_residual = candidate, residual
    return np.array([float(v) for v in best])


def _normal_solution(rows: list[list[Fraction]], b: list[Fraction]) -> list[Fraction] | None:
    """The least-squares solution of ``rows @ x = b`` from its normal equations by exact Gaussian
    elimination; None where they are singular."""
    n = len(rows[0])
    system = [[sum(r[i] * r[j] for r in rows) for j in range(n)] + [sum(r[i] * t for r, t in zip(rows, b, strict=True))]
              for i in range(n)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if system[r][col] != 0), None)
        if pivot is None:
            return None
        system[col], system[pivot] = system[pivot], system[col]
        for r in range(n):
            if r != col and system[r][col] != 0:
                factor = system[r][col] / system[col][col]
                system[r] = [a - factor * p for a, p in zip(system[r], system[col], strict=True)]
    return [system[i][n] / system[i][i] for i in range(n)]


def _shape_key(sig: OpSignature) -> tuple:
    """The signature without its channel counts: what all points of a layer's sweeps share."""
    return (sig.op, sig.batch, sig.h, sig.w, sig.kernel, sig.stride, sig.padding, sig.dilation, sig.dtype,
            sig.sparsity)


def _index_by_shape(table: LatencyTable) -> dict[tuple, list[tuple[OpSignature, float]]]:
    index: dict[tuple, list[tuple[OpSignature, float]]] = {}
    for key, entry in table.entries.items():
        sig = OpSignature.from_key(key)
        index.setdefault(_shape_key(sig), []).append((sig, op_ms(table, entry.median_ms)))
    return index


def op_ms(table: LatencyTable, measured_ms: float) -> float:
    """A single-op measurement without the session call's own cost (never below 5% of it)."""
    return max(measured_ms - (table.call_overhead_ms or 0.0), 0.05 * measured_ms)


def _on_axis(axis: dict[int, float], count: int, name: str) -> float:
    """The time at ``count`` along one measured axis. Kernels cost the same up to the next step of the
    staircase (the measured counts' greatest common divisor), so ``count`` is first rounded up to it; there
    the time measured, else on the line between the nearest measured counts below and above (adaptive
    profiling leaves gaps where the axis is straight), else, below the smallest measured count, its time."""
    above = [c for c in axis if c >= count]
    if not above:
        raise HwpruneError(f"layer {name}: no measurement at or above {count} channels; run hwprune profile")
    high = min(above)
    step = math.gcd(*axis)
    count = min(-(-count // step) * step, high)
    below = [c for c in axis if c < count]
    if count == high or not below:
        return axis[high]
    low = max(below)
    return axis[low] + (axis[high] - axis[low]) * (count - low) / (high - low)
