"""Predict a (pruned) model's latency from its layers' measured signatures.

Each single-op measurement includes one session call's own cost, which a whole model pays once,
not once per layer; the table's measured call overhead is taken off every layer's time.

End-to-end latency = sum over conv/linear layers of their table latency + the rest (pooling,
elementwise ops, attention matmuls, session overhead), which is measured once on the unpruned
model as measured total minus the layer sum, and scaled for a pruned model by the ratio of its
layers' output activations to the unpruned ones (the rest is dominated by memory traffic over
those activations).

A layer point that was measured is a ``lut`` prediction. Any other point combines the output
sweep (inputs full) and the input sweep (outputs full) of that layer multiplicatively,
T(ci, co) = T(Ci, co) * T(ci, Co) / T(Ci, Co), each axis read at the smallest measured count at
or above the request (kernels cost the same up to the next step, so rounding up respects the
staircase): an ``interpolated`` prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

from hwprune.errors import HwpruneError
from hwprune.latency.layers import Layer
from hwprune.latency.lut import LatencyTable
from hwprune.latency.signature import OpSignature


@dataclass
class Prediction:
    total_ms: float
    layers_ms: dict[str, float]
    rest_ms: float
    source: str


class TablePredictor:
    """Predictions for one model's layers from one measured table."""

    def __init__(self, layers: list[Layer], table: LatencyTable, measured_total_ms: float | None = None):
        self.layers = layers
        self.table = table
        self._by_shape = _index_by_shape(table)
        self._axes = {layer.name: self._measured_axes(layer) for layer in layers}
        self._full_activations = sum(self._activations(layer, {}) for layer in layers)
        self.rest_ms = 0.0
        self.full_layers_ms = sum(self.predict({}).layers_ms.values())
        if measured_total_ms is not None:
            self.rest_ms = max(0.0, measured_total_ms - self.full_layers_ms)

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

    def channels(self, layer: Layer, keep: dict[str, int]) -> tuple[int, int]:
        sig = layer.signature
        c_out = keep[layer.out_group] * layer.channels_per_unit_out if layer.out_group in keep else sig.c_out
        if layer.depthwise:
            return c_out, c_out
        c_in = keep[layer.in_group] * layer.channels_per_unit_in if layer.in_group in keep else sig.c_in
        return c_in, c_out

    def layer_ms(self, layer: Layer, c_in: int, c_out: int) -> tuple[float, bool]:
        """Latency of ``layer`` at (c_in, c_out) and whether it was measured at exactly that point."""
        sig = layer.signature
        outs, ins = self._axes[layer.name]
        exact = self.table.get(sig.with_channels(c_in, c_out))
        if exact is not None:
            return op_ms(self.table, exact.median_ms), True
        along_out = _at_or_above(outs, c_out, layer.name)
        if layer.depthwise or c_in == sig.c_in:
            return along_out, False
        along_in = _at_or_above(ins, c_in, layer.name)
        return along_out * along_in / outs[sig.c_out], False

    def _activations(self, layer: Layer, keep: dict[str, int]) -> int:
        _c_in, c_out = self.channels(layer, keep)
        oh, ow = layer.signature.out_hw
        return c_out * oh * ow

    def predict(self, keep: dict[str, int]) -> Prediction:
        """Latency with ``keep[group_id]`` units kept per group (absent groups stay whole)."""
        layers_ms = {}
        all_exact = True
        for layer in self.layers:
            ms, exact = self.layer_ms(layer, *self.channels(layer, keep))
            layers_ms[layer.name] = ms
            all_exact &= exact
        rest = self.rest_ms * sum(self._activations(layer, keep) for layer in self.layers) / self._full_activations
        return Prediction(sum(layers_ms.values()) + rest, layers_ms, rest, "lut" if all_exact else "interpolated")


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


def _at_or_above(axis: dict[int, float], count: int, name: str) -> float:
    above = [c for c in axis if c >= count]
    if not above:
        raise HwpruneError(f"layer {name}: no measurement at or above {count} channels; run hwprune profile")
    return axis[min(above)]
