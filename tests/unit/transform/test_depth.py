"""Depth and merge: candidates, exact merging after the padding move, dropped blocks, plans, ONNX."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hwprune.errors import PlanError
from hwprune.export.onnx_export import export_onnx
from hwprune.export.verify import verify_onnx
from hwprune.graph.analyze import analyze
from hwprune.graph.spans import depth_candidates
from hwprune.plan import DroppedBlock, MergedSpan
from hwprune.transform.convmath import fold_batchnorm, fold_skip, merge_convs, move_padding
from hwprune.transform.realise import apply_plan
from hwprune.transform.rewrite import apply_depth
from tests.data.small_models import small_resnet
from tests.pruning_helpers import plan_of
from tests.zoo import CONV_ZOO, ZOO


def layer_count(model: nn.Module) -> int:
    """Convolutions and linear layers the model holds (a rewritten graph drops the ones it no longer runs)."""
    return sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules())


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@st.composite
def conv_chains(draw) -> tuple[list[nn.Conv2d], int]:
    """2-4 convs a span may merge: any kernel and padding at stride 1, then 1x1 unpadded after a stride."""
    channels = draw(st.integers(1, 6))
    convs, strided = [], False
    for _ in range(draw(st.integers(2, 4))):
        depthwise = draw(st.booleans())
        out = channels if depthwise else draw(st.integers(1, 6))
        kernel = 1 if strided else draw(st.sampled_from([1, 3, 5]))
        padding = 0 if strided else draw(st.integers(0, kernel // 2))
        stride = draw(st.sampled_from([1, 2])) if kernel > 1 or draw(st.booleans()) else 1
        convs.append(nn.Conv2d(channels, out, kernel, stride, padding, groups=channels if depthwise else 1,
                               bias=draw(st.booleans())).double())
        strided = strided or stride > 1
        channels = out
    reach = sum(c.kernel_size[0] - 1 for c in convs) + 1  # the merged kernel: the smallest map it runs on
    size = draw(st.integers(max(reach, 9), reach + 8))
    return convs, size


@settings(max_examples=60, deadline=None)
@given(conv_chains(), st.integers(0, 2**16))
def test_the_merged_conv_equals_the_padding_moved_chain(chain, seed):
    convs, size = chain
    torch.manual_seed(seed)
    for conv in convs:
        nn.init.normal_(conv.weight)
        if conv.bias is not None:
            nn.init.normal_(conv.bias)
    moved = nn.Sequential(*move_padding(convs))
    merged = merge_convs(moved)
    x = torch.randn(2, convs[0].in_channels, size, size, dtype=torch.float64)
    with torch.no_grad():
        want, got = moved(x), merged(x)
    assert got.shape == want.shape
    assert relative_error(got, want) <= 1e-5
    assert merged.groups == (merged.in_channels if all(c.groups == c.in_channels == c.out_channels for c in convs)
                             else 1)


@settings(max_examples=40, deadline=None)
@given(conv_chains(), st.integers(0, 2**16))
def test_the_padding_moved_chain_equals_the_chain_away_from_the_borders(chain, seed):
    convs, size = chain
    torch.manual_seed(seed)
    moved = nn.Sequential(*move_padding(convs))
    merged = merge_convs(moved)
    x = torch.randn(1, convs[0].in_channels, size, size, dtype=torch.float64)
    with torch.no_grad():
        original, padded = nn.Sequential(*convs)(x), moved(x)
    assert original.shape == padded.shape
    # Output positions whose merged window lies inside the image read no padding in either chain.
    (k, _), (s, _), (p, _) = merged.kernel_size, merged.stride, merged.padding
    inside = [q for q in range(original.shape[-1]) if q * s - p >= 0 and q * s - p + k - 1 <= size - 1]
    if inside:
        rows = slice(inside[0], inside[-1] + 1)
        assert relative_error(padded[..., rows, rows], original[..., rows, rows]) <= 1e-9


def test_folding_batchnorm_uses_each_norms_own_eps():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    norm = nn.BatchNorm2d(6, eps=0.5).eval()
    norm.running_var.uniform_(0.01, 0.1)
    norm.running_mean.normal_()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert relative_error(fold_batchnorm(conv, norm)(x), norm(conv(x))) <= 1e-5


def test_a_skip_folds_into_the_centre_tap():
    for groups in (1, 5):
        conv = nn.Conv2d(5, 5, 5, padding=2, groups=groups)
        x = torch.randn(1, 5, 9, 9)
        with torch.no_grad():
            assert relative_error(fold_skip(conv)(x), x + conv(x)) <= 1e-5
    with pytest.raises(ValueError):
        fold_skip(nn.Conv2d(5, 5, 3, padding=0))


def test_mobilenet_v2_spans_and_blocks_are_listed_with_merged_shapes():
    import torchvision

    found = depth_candidates(torchvision.models.mobilenet_v2().eval())
    assert found.reason is None
    assert len(found.blocks) == 10  # the ten inverted residuals with a skip
    expand_dw = found.span(("features.2.conv.0.0", "features.2.conv.1.0"))
    assert (expand_dw.kernel, expand_dw.stride, expand_dw.in_channels, expand_dw.out_channels) == ((3, 3), (2, 2),
                                                                                                   16, 96)
    assert expand_dw.activations == ("features_2_conv_0_2",)
    whole = found.span(("features.3.conv.0.0", "features.3.conv.1.0", "features.3.conv.2"), skip="add")
    assert whole is not None and whole.kernel == (3, 3) and not whole.depthwise
    # A strided conv followed by a 3x3 one never merges.
    assert found.span(("features.0.0", "features.1.conv.0.0")) is None


def test_a_model_fx_cannot_trace_has_no_candidates_and_says_why():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.b(self.a(x)) if x.sum() > 0 else x

    found = depth_candidates(Branchy())
    assert not found.spans and "cannot trace" in found.reason


def non_overlapping(found, with_blocks: bool = True):
    used, merge, drop = set(), [], []
    if with_blocks and found.blocks:
        block = found.blocks[-1]
        used |= set(block.layers) | {block.add}
        drop.append(DroppedBlock(block.name, block.add))
    for span in sorted(found.spans, key=lambda s: len(s.convs)):
        if used & {*span.convs, span.skip}:
            continue
        used |= {*span.convs, span.skip}
        merge.append(MergedSpan(span.convs, span.activations, span.skip))
    return merge, drop


@pytest.mark.parametrize("name", [n for n in CONV_ZOO if not n.startswith("tv_")] + ["tv_mobilenet_v2", "tv_resnet18"])
def test_zoo_merges_and_drops_are_exact_and_export(name, tmp_path):
    model, x = ZOO[name]()
    found = depth_candidates(model)
    if not found.spans and not found.blocks:
        pytest.skip(f"{name}: no depth candidates ({found.reason or 'none found'})")
    merge, drop = non_overlapping(found)
    reference = copy.deepcopy(model)
    rewritten = apply_depth(copy.deepcopy(model), x, merge, drop)  # its passes check exactness themselves
    assert layer_count(rewritten) < layer_count(reference)
    path = export_onnx(rewritten, x, tmp_path / "merged.onnx")
    assert verify_onnx(rewritten, path, [x, torch.randn_like(x)]).ok


def test_a_dropped_block_equals_the_model_with_that_branchs_output_zeroed():
    model, x = small_resnet()
    found = depth_candidates(model)
    for block in found.blocks:
        zeroed = copy.deepcopy(model)
        last = zeroed.get_submodule(block.layers[-1])
        last.register_forward_hook(lambda module, inputs, output: torch.zeros_like(output))
        dropped = apply_depth(copy.deepcopy(model), x, [], [DroppedBlock(block.name, block.add)])
        with torch.no_grad():
            assert torch.allclose(dropped(x), zeroed(x), atol=1e-6)
        assert not set(block.layers) & set(dict(dropped.named_modules()))


def test_a_plan_with_width_merge_and_depth_applies_and_exports(tmp_path):
    model, x = small_resnet()
    analysis = analyze(model, x, "small_resnet")
    found = depth_candidates(model)
    merge, drop = non_overlapping(found)
    assert merge and drop
    group = analysis.prunable()[0]
    plan = plan_of(analysis, {group.id: list(range(0, group.channels, 2))})
    pruned = apply_plan(replace(plan, merge=merge, depth=drop), analysis).eval()
    assert layer_count(pruned) < layer_count(small_resnet()[0])
    path = export_onnx(pruned, x, tmp_path / "pruned.onnx")
    assert verify_onnx(pruned, path, [x]).ok


def test_overlapping_or_unknown_entries_are_refused_before_any_layer_changes():
    model, x = small_resnet()
    found = depth_candidates(model)
    block = found.blocks[0]
    inside = next(s for s in found.spans if set(s.convs) <= set(block.layers))
    analysis = analyze(model, x, "small_resnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = plan_of(analysis, {analysis.prunable()[0].id: [0, 1]})
    both = replace(plan, merge=(MergedSpan(inside.convs, inside.activations, inside.skip),),
                   depth=(DroppedBlock(block.name, block.add),))
    with pytest.raises(PlanError, match="merges or goes once"):
        apply_plan(both, analysis)
    with pytest.raises(PlanError, match="not a legal span"):
        apply_plan(replace(plan, merge=(MergedSpan(("no.such.conv",), ()),)), analysis)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def small_resnet_search(target_name: str):
    from hwprune.cost.model_latency import analytic_predictor
    from hwprune.importance.option_costs import depth_costs
    from hwprune.importance.scores import score_groups
    from hwprune.pipeline.score import TAKING
    from hwprune.targets import load_target

    model, x = small_resnet()
    analysis = analyze(model, x, "small_resnet")
    target = load_target(target_name)
    predictor = analytic_predictor(analysis, target)
    batch = torch.randn(4, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    importance = score_groups(analysis, "activation", [batch])
    costs = depth_costs(analysis.model, x, list(predictor.options.values()), batch, taking=TAKING)
    return analysis, predictor, importance, costs, target


def test_units_hold_every_compatible_set_of_options_once():
    from hwprune.search.joint import units

    _, predictor, _, _, _ = small_resnet_search("jetson-orin-nano")
    found = units(predictor.options.values())
    every = [key for sets in found for chosen in sets for key in chosen]
    assert set(every) == set(predictor.options)
    for sets in found:
        assert sets[0] == frozenset() and len(set(sets)) == len(sets)
        for chosen in sets:
            layers = [name for key in chosen for name in predictor.options[key].removes]
            assert len(layers) == len(set(layers))  # no layer merged or dropped twice
    # A block and the span of its branch are one unit: dropped, merged, merged with the skip, or neither.
    assert any(len(sets) == 4 for sets in found)


def test_depth_options_change_the_prediction_as_the_layers_they_remove_and_add():
    _, predictor, _, _, _ = small_resnet_search("jetson-orin-nano")
    full = predictor.predict({})
    for key, option in predictor.options.items():
        view = predictor.with_depth(frozenset({key}))
        taken = view.predict({})
        assert set(taken.layers_ms) == (set(full.layers_ms) - option.removes) | {a.name for a in option.adds}
        if option.kind == "drop":
            assert taken.total_ms < full.total_ms


def test_a_launch_bound_target_reaches_by_depth_what_width_alone_cannot():
    from hwprune.search.joint import search_joint
    from hwprune.search.width import search_widths

    analysis, predictor, importance, costs, target = small_resnet_search("jetson-orin-nano")
    budget = 0.5 * predictor.predict({}).total_ms
    with pytest.raises(PlanError, match="cannot be met"):
        search_widths(analysis, predictor, importance, target.channel_alignment, budget)
    result = search_joint(analysis, predictor, importance, target.channel_alignment, budget, 0.1, None, costs)
    assert result.depth and result.predicted_ms <= budget
    only_depth = search_joint(analysis, predictor, importance, target.channel_alignment, 0.8 * budget / 0.5, 0.1,
                              None, costs, widths=False)
    assert only_depth.depth and all(n == analysis.group(g).channels for g, n in only_depth.counts.items())
    # a held structure (the refinement loop's, once two structures bracket the request): widths move, depth stays
    for held, at in ((result.depth, 1.1 * budget), (only_depth.depth, 1.6 * budget)):
        again = search_joint(analysis, predictor, importance, target.channel_alignment, at, 0.1, None, costs,
                             fixed=held)
        assert again.depth == held and again.predicted_ms <= at


def test_compile_on_a_launch_bound_target_merges_or_drops_and_verifies(tmp_path):
    import json

    from rich.console import Console

    from hwprune.config import Budget, Options
    from hwprune.frontends import LoadedModel
    from hwprune.pipeline.compile import compile_model
    from hwprune.targets import load_target

    model, x = small_resnet()
    report = compile_model(LoadedModel("small_resnet", model, x, "seed 0", 0),
                           Options(load_target("jetson-orin-nano"), Budget("latency", 0.5)), tmp_path / "out",
                           Console(quiet=True)).report
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["merge"] or plan["depth"]
    assert report.search.strategy == "joint" and report.verify.ok
    assert report.depth["layers_after"] < report.depth["layers_before"]
    assert "merged" in (tmp_path / "out" / "report.md").read_text()
    from hwprune.cli import main  # apply rebuilds the same model from the plan alone

    assert main(["apply", str(tmp_path / "out" / "plan.json"), "tests/data/small_models.py:small_resnet",
                 "--out", str(tmp_path / "applied")]) == 0
    compiled = torch.load(tmp_path / "out" / "pruned.pt", weights_only=True)
    applied = torch.load(tmp_path / "applied" / "pruned.pt", weights_only=True)
    assert compiled.keys() == applied.keys() and all(torch.equal(compiled[k], applied[k]) for k in compiled)


def test_analyze_lists_depth_candidates_and_says_so_when_there_are_none(tmp_path, capsys):
    import json

    from hwprune.cli import main

    assert main(["analyze", "tests/data/small_models.py:small_resnet", "--json"]) == 0
    depth = json.loads(capsys.readouterr().out)["depth"]
    assert len(depth["blocks"]) == 2 and {tuple(s["convs"]) for s in depth["spans"]} == {
        ("3.body.0", "3.body.3"), ("4.body.0", "4.body.3")}
    assert main(["analyze", "tests/data/small_models.py:small_resnet"]) == 0
    assert "2 droppable blocks" in capsys.readouterr().out
    spec = tmp_path / "mlp.py"
    spec.write_text("import torch\nfrom torch import nn\n\n\ndef mlp():\n"
                    "    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), torch.zeros(1, 8)\n")
    assert main(["analyze", f"{spec}:mlp"]) == 0
    assert "depth: no convolutions to merge and no residual block to drop" in capsys.readouterr().out


def test_the_span_dp_finds_the_best_cut_within_budget():
    import itertools
    import random

    from hwprune.search.spandp import span_dp

    rng = random.Random(0)
    n = 7
    times = {(s, e): rng.uniform(0.5, 1.0) * (1 + 0.3 * (e - s)) for s in range(n) for e in range(s + 1, n + 1)
             if e - s <= 4}
    values = {(s, e): -rng.uniform(0, 1) for (s, e) in times if e - s > 1}
    for budget in (3.0, 4.5, 6.0, 9.0):
        best = None
        for cuts in itertools.product([0, 1], repeat=n - 1):  # every cut of 0..n into spans
            points = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
            spans = list(itertools.pairwise(points))
            if any(s not in times for s in spans):
                continue
            latency = sum(times[s] for s in spans)
            value = sum(values.get(s, 0.0) for s in spans)
            if latency <= budget and (best is None or value > best[0]):
                best = (value, latency)
        cut = span_dp(times, values, n, budget, bins=20000)
        if best is None:
            assert cut is None
            continue
        assert cut.latency <= budget + 1e-9
        assert best[0] - 0.05 <= cut.value <= best[0] + 1e-9  # exact up to the latency grid


@pytest.mark.e2e
def test_a_frontier_compiles_every_point_from_one_analysis(tmp_path, capsys):
    import json

    from hwprune.cli import main

    out = tmp_path / "front"
    assert main(["compile", "--refine", "2", "tests/data/small_models.py:small_resnet", "--target", "jetson-orin-nano",
                 "--latency", "0.7,0.5", "--out", str(out)]) == 0
    frontier = json.loads((out / "frontier.json").read_text())
    assert [p["requested"] for p in frontier["points"]] == [0.5, 0.7]
    for point in frontier["points"]:
        report = json.loads((out / point["folder"] / "report.json").read_text())
        assert report["budget"]["latency_fraction"] == point["requested"] and report["verify"]["ok"]
        assert (out / point["folder"] / "baseline.onnx").is_file()
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out.count("small_resnet on jetson-orin-nano") == 2
    assert main(["compile", "--refine", "2", "tests/data/small_models.py:small_resnet", "--latency", "0.5,0.5", "--out",
                 str(tmp_path / "x")]) == 2
    assert "repeated" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_a_short_distillation_per_option_lowers_its_cost_and_leaves_the_model_alone():
    from hwprune.importance.option_costs import depth_costs
    from hwprune.pipeline.score import TAKING

    analysis, predictor, _, plain, _ = small_resnet_search("jetson-orin-nano")
    model = analysis.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    training = [torch.randn(8, 3, 64, 64, generator=generator) for _ in range(4)]
    batch = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    options = [o for o in predictor.options.values() if plain[o.key] > 1e-3]
    distilled = depth_costs(model, analysis.capture.example_input, options, batch, distil_steps=30, taking=TAKING,
                            training=training)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert sum(distilled[o.key] < plain[o.key] for o in options) >= len(options) - 1


def test_depth_costs_are_kept_across_compiles_of_the_same_model_and_data(tmp_path, capsys, monkeypatch):
    from hwprune.cli import main

    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path / "cache"))
    argv = ["compile", "tests/data/small_models.py:small_resnet", "--target", "jetson-orin-nano", "--latency"]
    assert main([*argv, "0.5", "--out", str(tmp_path / "a")]) == 0
    assert ": 6 measured" in capsys.readouterr().err
    assert main([*argv, "0.6", "--out", str(tmp_path / "b")]) == 0  # a new budget: nothing measured again
    assert ": 0 measured" in capsys.readouterr().err
    assert main([*argv, "0.6", "--input-shape", "1,3,32,32", "--out", str(tmp_path / "c")]) == 0  # other data
    assert ": 6 measured" in capsys.readouterr().err
