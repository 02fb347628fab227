"""Lookup tables, the profiler's cache, the search space and the table predictor."""

import json

import pytest

from hwprune.cost.layers import GroupInput, Layer
from hwprune.cost.lut import LutError, load_table, new_table
from hwprune.cost.op_timing import profile
from hwprune.cost.predictor import Anchor, TablePredictor
from hwprune.cost.signature import OpSignature
from hwprune.cost.space import channel_choices
from hwprune.errors import HwpruneError
from hwprune.graph.groups import ChannelGroup
from hwprune.runtime import runtime_for
from hwprune.runtime.timing import Timing
from hwprune.targets import load_target

CONV = OpSignature("conv2d", 1, 64, 64, 8, 8, kernel=3, padding=1)


def provenance(threads=1):
    return {**runtime_for(load_target("cpu")).provenance(), "threads": threads}


def timing(ms):
    return Timing(ms, ms * 1.1, ms * 1.2, 0.1, 10)


def test_signature_key_round_trip():
    assert OpSignature.from_key(CONV.key()) == CONV
    assert CONV.with_channels(32, 16).key() != CONV.key()


def test_table_round_trip(tmp_path):
    table = new_table(provenance(), {"warmup": 1})
    table.put(CONV, timing(0.5))
    table.models["m|1x3x8x8"] = 2.0
    table.save(tmp_path / "t.json")
    loaded = load_table(tmp_path / "t.json", provenance())
    assert loaded.get(CONV).median_ms == 0.5 and loaded.models == {"m|1x3x8x8": 2.0}
    assert loaded.provenance["fingerprint"] == table.provenance["fingerprint"]


def test_table_measured_under_other_settings_is_refused(tmp_path):
    table = new_table(provenance(threads=2), {})
    table.put(CONV, timing(0.5))
    table.save(tmp_path / "t.json")
    with pytest.raises(LutError, match="threads: table 2, now 1"):
        load_table(tmp_path / "t.json", provenance(threads=1))


@pytest.mark.parametrize("content, message", [
    ("{not json", "corrupt latency table"),
    ('{"format": "other", "entries": {}}', "not a hwprune-lut/1"),
    ('{"format": "hwprune-lut/1", "entries": {}}', "lacks its provenance"),
])
def test_corrupt_tables_are_refused(tmp_path, content, message):
    (tmp_path / "t.json").write_text(content)
    with pytest.raises(LutError, match=message):
        load_table(tmp_path / "t.json")


@pytest.mark.parametrize("entry", [{"median_ms": -1, "p90_ms": 1, "samples": 3}, {"median_ms": 1}])
def test_corrupt_entries_are_refused(tmp_path, entry):
    table = new_table(provenance(), {})
    data = table.to_json() | {"entries": {CONV.key(): entry}}
    (tmp_path / "t.json").write_text(json.dumps(data))
    with pytest.raises(LutError, match="entry"):
        load_table(tmp_path / "t.json")


def test_profiler_measures_once_then_caches():
    table = new_table(provenance(), {})
    target = load_target("cpu")
    small = OpSignature("linear", 1, 16, 16, 4, 1)
    assert profile([small, CONV], table, target) == 2
    assert table.get(small).median_ms > 0 and table.get(small).samples >= 10
    assert profile([small, CONV], table, target) == 0


def group(channels, kind="plain", repeat=1, prunable=True):
    return ChannelGroup(id="g", channels=channels, kind=kind, couplings=[kind], layers=[], prunable=prunable,
                        repeat=repeat)


def test_channel_choices_follow_alignment_repeat_and_heads():
    assert channel_choices(group(64), 16) == [16, 32, 48, 64]
    assert channel_choices(group(40), 16) == [16, 32, 40]
    assert channel_choices(group(96, repeat=6), 16) == [48, 96]  # lcm(16, 6) = 48
    assert channel_choices(group(24, repeat=6), 16) == [6, 12, 18, 24]  # no aligned step below 24
    assert channel_choices(group(12, kind="heads"), 16) == list(range(1, 13))
    assert channel_choices(group(64, prunable=False), 16) == [64]


def staircase_predictor():
    """A table whose conv costs step at multiples of 16 along both axes."""
    table = new_table(provenance(), {})
    for c in (16, 32, 48, 64):
        table.put(CONV.with_channels(64, c), timing(c / 16))   # output sweep: 1, 2, 3, 4 ms
        table.put(CONV.with_channels(c, 64), timing(2 + c / 32))  # input sweep: 2.5, 3, 3.5, 4 ms
    layer = Layer("conv", CONV, out_group="b", inputs=(GroupInput("a", 64, 64),))
    return TablePredictor([layer], table, [Anchor({}, 5.0)]), layer


def test_prediction_rounds_up_to_the_next_measured_step():
    predictor, layer = staircase_predictor()
    assert predictor.layer_ms(layer, 64, 48) == (3.0, True)
    assert predictor.layer_ms(layer, 64, 33) == (3.0, False)
    assert predictor.layer_ms(layer, 64, 47)[0] == predictor.layer_ms(layer, 64, 48)[0]
    assert predictor.layer_ms(layer, 64, 49)[0] > predictor.layer_ms(layer, 64, 48)[0]


def test_prediction_combines_the_two_sweeps():
    predictor, layer = staircase_predictor()
    # T(32, 16) = T(64, 16) * T(32, 64) / T(64, 64) = 1 * 3 / 4
    assert predictor.layer_ms(layer, 32, 16) == (pytest.approx(0.75), False)


def test_model_prediction_adds_the_scaled_rest():
    predictor, _layer = staircase_predictor()
    full = predictor.predict({})
    assert full.total_ms == pytest.approx(5.0) and full.rest_ms == pytest.approx(1.0) and full.source == "lut"
    half = predictor.predict({"b": 32})
    assert half.layers_ms["conv"] == 2.0 and half.rest_ms == pytest.approx(0.5)
    assert half.total_ms == pytest.approx(2.5)


def test_two_anchors_recover_the_in_model_layer_scale_and_the_rest():
    predictor, layer = staircase_predictor()
    # A model whose layers run at half their single-op time, with 1 ms of rest at full activations:
    # full: 0.5 * 4 + 1 = 3 ms; both groups at 32: 0.5 * T(32, 32) + 0.5 = 0.5 * 1.5 + 0.5 = 1.25 ms.
    fitted = TablePredictor([layer], predictor.table, [Anchor({}, 3.0), Anchor({"a": 32, "b": 32}, 1.25)])
    assert fitted.layer_scale == pytest.approx(0.5) and fitted.rest_ms == pytest.approx(1.0)
    assert fitted.predict({"b": 48}).total_ms == pytest.approx(0.5 * 3 + 0.75)


def test_three_anchors_also_recover_the_fixed_cost():
    predictor, layer = staircase_predictor()
    # f = 0.5 ms that no width removes, k = 0.5, r = 1 ms: full 0.5 + 2 + 1; both at 32: 0.5 + 0.75 + 0.5;
    # output at 16: 0.5 + 0.5 * T(64, 16) + 0.25.
    anchors = [Anchor({}, 3.5), Anchor({"a": 32, "b": 32}, 1.75), Anchor({"b": 16}, 1.25)]
    fitted = TablePredictor([layer], predictor.table, anchors)
    assert (fitted.fixed_ms, fitted.layer_scale, fitted.rest_ms) == pytest.approx((0.5, 0.5, 1.0))
    assert fitted.predict({"b": 48}).total_ms == pytest.approx(0.5 + 0.5 * 3 + 0.75)


def test_anchor_fit_never_gives_a_negative_rest():
    predictor, layer = staircase_predictor()
    # Exact solution would be k = 2, r = -4: clamped to r = 0 and k by least squares.
    fitted = TablePredictor([layer], predictor.table, [Anchor({}, 4.0), Anchor({"a": 32, "b": 32}, 1.0)])
    assert fitted.rest_ms == 0.0 and fitted.layer_scale == pytest.approx(17.5 / 18.25)
    assert all(fitted.predict({"b": c}).total_ms > 0 for c in (16, 32, 48, 64))


def test_unprofiled_layer_is_an_error():
    table = new_table(provenance(), {})
    with pytest.raises(HwpruneError, match="not in the latency table"):
        TablePredictor([Layer("conv", CONV, None)], table)


def test_session_call_overhead_is_taken_off_each_layer_but_not_below_5_percent():
    predictor, layer = staircase_predictor()
    predictor.table.call_overhead_ms = 0.5
    fresh = TablePredictor([layer], predictor.table, [Anchor({}, 5.0)])
    assert fresh.layer_ms(layer, 64, 48) == (2.5, True)
    predictor.table.call_overhead_ms = 10.0
    assert TablePredictor([layer], predictor.table).layer_ms(layer, 64, 16)[0] == \
        pytest.approx(0.05)


def test_profiling_measures_the_call_overhead_once():
    table = new_table(provenance(), {})
    profile([OpSignature("linear", 1, 16, 16, 4, 1)], table, load_target("cpu"))
    assert table.call_overhead_ms is not None and 0 < table.call_overhead_ms < table.entries[
        OpSignature("linear", 1, 16, 16, 4, 1).key()].median_ms * 10


def test_layer_inputs_follow_concatenations_flattens_and_heads():
    """A layer's input width is its unpruned width minus what each group it reads removes."""
    import torch
    from torch import nn

    from hwprune.cost.layers import model_layers
    from hwprune.graph.analyze import analyze

    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 32, 3, padding=1)
            self.mix = nn.Conv2d(48, 8, 1)
            self.head = nn.Linear(8 * 4 * 4, 5)

        def forward(self, x):
            y = self.mix(torch.cat([self.a(x), self.b(x)], dim=1))
            return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 4), 1))

    analysis = analyze(Concat().eval(), torch.randn(1, 3, 8, 8))
    layers = {layer.name: layer for layer in model_layers(analysis)}
    assert {(g.group, g.size, g.positions) for g in layers["mix"].inputs} == {("a", 16, 16), ("b", 32, 32)}
    assert layers["mix"].c_in({"a": 8}) == 40 and layers["mix"].c_in({"a": 8, "b": 16}) == 24
    assert [(g.group, g.size, g.positions) for g in layers["head"].inputs] == [("mix", 8, 128)]
    assert layers["head"].c_in({"mix": 4}) == 64
