"""N:M sparsity: masks, where the cost model offers it and why not, plans with N:M layers and group
permutations applied exactly and exported N:M, and the compile that chooses it where it pays."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hwprune.cli import main
from hwprune.cost.layers import model_layers
from hwprune.cost.model_latency import analytic_predictor
from hwprune.cost.sparse import parse_mode, sparse_options
from hwprune.errors import PlanError
from hwprune.export.nm_check import nm_weights
from hwprune.export.onnx_export import export_onnx
from hwprune.graph.analyze import analyze
from hwprune.importance.activation_norms import input_norms
from hwprune.plan import MergedSpan, NMLayer, Sparsity, plan_from_json, plan_json
from hwprune.runtime.trt import EngineConfig, sparse_layers, trtexec_command
from hwprune.search.permutations import Permutations
from hwprune.sparsity.masks import is_nm, nm_mask, retained
from hwprune.targets import load_target
from hwprune.transform.realise import apply_plan
from tests.data.nm_models import wide_net
from tests.data.small_models import small_resnet
from tests.pruning_helpers import plan_of

NM_MODEL = "tests/data/nm_models.py:wide_net"


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([(1, 2), (2, 4), (1, 4), (4, 8), (3, 8)]), st.integers(1, 5), st.integers(1, 4),
       st.sampled_from([1, 3]), st.integers(0, 2**16))
def test_a_mask_keeps_exactly_n_of_every_m_input_channels(pattern, rows, runs, kernel, seed):
    n, m = pattern
    weight = torch.randn(rows, runs * m, kernel, kernel, generator=torch.Generator().manual_seed(seed))
    mask = nm_mask(weight, n, m)
    assert mask.shape == weight.shape and is_nm(weight * mask, n, m)
    per_run = mask.movedim(1, -1).reshape(-1, runs, m).sum(-1)
    assert bool((per_run == n).all())
    kept = (weight * mask).abs().movedim(1, -1).reshape(-1, runs, m)
    dropped = (weight * ~mask).abs().movedim(1, -1).reshape(-1, runs, m)
    assert bool((kept.max(-1).values >= dropped.max(-1).values).all())  # the largest survive


def test_an_activation_scale_changes_which_weights_survive_and_bad_shapes_are_refused():
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert nm_mask(weight, 2, 4).tolist() == [[False, False, True, True]]
    assert nm_mask(weight, 2, 4, torch.tensor([10.0, 10.0, 1.0, 1.0])).tolist() == [[True, True, False, False]]
    with pytest.raises(ValueError):
        nm_mask(torch.randn(2, 6), 2, 4)
    assert not is_nm(torch.ones(2, 8), 2, 4) and is_nm(torch.zeros(2, 8), 2, 4)
    assert retained(weight.numpy(), 2, 4) == 7.0


@pytest.mark.e2e
def test_modes_parse_and_bad_ones_are_refused():
    assert parse_mode("off") is None
    assert parse_mode("auto").pattern == "2:4" and not parse_mode("auto").explicit
    assert parse_mode("4:8").explicit
    for bad in ("2", "4:2", "0:4", "x:y"):
        with pytest.raises(ValueError):
            parse_mode(bad)
    assert main(["compile", "--refine", "2", NM_MODEL, "--sparsity", "5:4", "--latency", "0.8", "--out", "unused"]) == 2


def test_the_cost_model_offers_2_4_only_where_it_predicts_a_gain_and_says_why_not():
    model, x = wide_net()
    analysis = analyze(model, x, "wide")
    a100 = analytic_predictor(analysis, load_target("a100"), parse_mode("auto"))
    offered = {o.name for o in a100.options.values() if o.kind == "sparse"}
    assert offered == set(a100.sparsity.offered) and "b.0" in offered and "c.0" in offered
    assert "stem.0" not in offered  # 3 input channels: not in runs of 4
    assert a100.sparsity.source == "predicted" and a100.sparsity.reason is None
    orin = analytic_predictor(analysis, load_target("jetson-orin-agx"), parse_mode("auto"))
    assert not any(o.kind == "sparse" for o in orin.options.values())
    assert "predicts no 2:4 gain" in orin.sparsity.reason
    cpu = analytic_predictor(analysis, load_target("cpu"), parse_mode("auto"))
    assert "no sparse tensor cores" in cpu.sparsity.reason
    # another pattern on a device whose tensor cores run 2:4 only: priced, and no gain
    other = analytic_predictor(analysis, load_target("a100"), parse_mode("4:8"))
    assert not any(o.kind == "sparse" for o in other.options.values())
    assert "2:4 only" in other.sparsity.reason
    layers = model_layers(analysis, "fp16")
    assert sparse_options(layers, load_target("a100"), None, measured=False) == []


def _sparse_plan(analysis, layers: dict, width: dict, chosen_groups: bool = True):
    plan = plan_of(analysis, width)
    found = model_layers(analysis, "fp16")
    options = [o for o in sparse_options(found, load_target("a100"), parse_mode("2:4"), measured=False)
               if o.name in layers]
    return replace(plan, sparsity=Permutations(lambda gid: chosen_groups).section(analysis, found, options,
                                                                                  plan.groups()))


def test_a_plan_with_n_m_layers_and_a_group_permutation_applies_exactly_and_exports_n_m(tmp_path):
    model, x = wide_net()
    x = x[:2]
    with torch.no_grad():  # b.0 already 2:4 by construction; give c.0 dense weights to permute for
        model.c[0].weight.normal_()
    analysis = analyze(copy.deepcopy(model), x, "wide")
    keep = {"a.0": list(range(0, 512, 2)), "b.0": list(range(256))}
    plan = _sparse_plan(analysis, {"c.0", "fc"}, keep)
    assert set(plan.sparsity.layers) == {"c.0", "fc"}
    assert "b.0" in plan.sparsity.permutations  # c.0 reads group b.0 whole
    stats = plan.sparsity.magnitude["b.0"]
    assert stats.permuted > stats.identity and stats.readers == ("c.0",)
    assert plan_from_json(json.loads(json.dumps(plan_json(plan)))) == plan  # plain data, read back the same

    # the permutation alone is exact: the same plan without masks computes what plain pruning does
    unmasked = replace(plan, sparsity=replace(plan.sparsity, layers={}))
    reference = apply_plan(plan_of(analysis, keep), analyze(copy.deepcopy(model), x, "wide")).eval()
    permuted = apply_plan(unmasked, analyze(copy.deepcopy(model), x, "wide")).eval()
    with torch.no_grad():
        assert torch.allclose(permuted(x), reference(x), atol=1e-4, rtol=1e-4)
    pruned = apply_plan(plan, analyze(copy.deepcopy(model), x, "wide")).eval()
    assert is_nm(pruned.c[0].weight, 2, 4) and is_nm(pruned.fc.weight, 2, 4)
    assert not is_nm(pruned.a[0].weight[:, :60], 2, 4)
    # the permutation kept more of c.0's magnitude than masking the unpermuted channels
    plain = copy.deepcopy(reference.c[0].weight)
    assert float(pruned.c[0].weight.abs().sum()) > float((plain * nm_mask(plain, 2, 4)).abs().sum())
    path = export_onnx(pruned, x, tmp_path / "pruned.onnx")
    found = nm_weights(path, plan.sparsity.layers)
    assert found["c.0"]["nm"] and found["fc"]["nm"]
    assert not nm_weights(path, {"a.0": NMLayer(2, 4)})["a.0"]["nm"]  # the check can fail
    with pytest.raises(Exception, match="no Conv"):
        nm_weights(path, {"nowhere": NMLayer(2, 4)})


def test_activation_aware_masks_carry_their_scale_in_the_plan_and_apply_with_it():
    model, x = wide_net()
    x = x[:2]
    with torch.no_grad():
        model.c[0].weight.normal_()
    analysis = analyze(copy.deepcopy(model), x, "wide")
    norms = input_norms(analysis.model, ["c.0"], [x])
    assert norms["c.0"].shape == (512,) and bool((norms["c.0"] >= 0).all())
    keep = {"b.0": list(range(0, 512, 2))}
    found = model_layers(analysis, "fp16")
    options = [o for o in sparse_options(found, load_target("a100"), parse_mode("2:4"), measured=False)
               if o.name == "c.0"]
    plan = plan_of(analysis, keep)
    scales = {"c.0": norms["c.0"].numpy().astype("float64") ** 4}  # sharpened: the criterion must matter
    plan = replace(plan, sparsity=Permutations(lambda gid: True, scales).section(analysis, found, options,
                                                                                 plan.groups()))
    entry = plan.sparsity.layers["c.0"]
    assert entry.criterion == "activation" and len(entry.scale) == 256
    by_activation = apply_plan(plan, analyze(copy.deepcopy(model), x, "wide")).c[0].weight
    plan = replace(plan, sparsity=replace(plan.sparsity, layers={"c.0": NMLayer(2, 4)}))
    by_magnitude = apply_plan(plan, analyze(copy.deepcopy(model), x, "wide")).c[0].weight
    assert is_nm(by_activation, 2, 4) and is_nm(by_magnitude, 2, 4)
    assert not torch.equal(by_activation != 0, by_magnitude != 0)


def test_a_plan_that_merges_and_sparsifies_one_layer_or_permutes_a_reordered_group_is_refused():
    model, x = small_resnet()
    analysis = analyze(model, x, "small")
    plan = plan_of(analysis, {})
    with pytest.raises(PlanError, match="no layer nowhere"):
        apply_plan(replace(plan, sparsity=Sparsity("2:4", {"nowhere": NMLayer(2, 4)})), analysis)
    with pytest.raises(PlanError, match="not a permutation"):
        apply_plan(replace(plan, sparsity=Sparsity(permutations={analysis.prunable()[0].id: (0, 0)})),
                   analyze(small_resnet()[0], x, "small"))


def test_tensorrt_builds_n_m_plans_with_sparse_weights_and_reads_which_layers_ran_sparse(tmp_path):
    config = EngineConfig(tmp_path / "pruned.onnx", tmp_path / "pruned.engine", "input", (1, 3, 8, 8), True, True,
                          1024, tmp_path / "timing.cache")
    command = trtexec_command(config)
    assert "--sparsity=enable" in command and f"--exportLayerInfo={tmp_path / 'pruned.layers.json'}" in command
    info = {"Layers": [{"Name": "/b/b.0/Conv + /b/b.0/Relu", "TacticName": "sm80_xmma_fprop_sparse_conv_f16"},
                       {"Name": "/c/c.0/Conv", "TacticName": "sm80_xmma_fprop_implicit_gemm_f16"}, "bad"]}
    assert sparse_layers(info) == ["/b/b.0/Conv + /b/b.0/Relu"]


@pytest.mark.e2e
def test_compile_on_a100_takes_the_free_n_m_layer_labelled_predicted_and_exports_it_n_m(tmp_path):
    out = tmp_path / "out"
    assert main(["compile", "--refine", "2",
                 NM_MODEL, "--target", "a100", "--latency", "0.8", "--search", "joint", "--allocation",
                 "sensitivity", "--out", str(out)]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert "b.0" in plan["sparsity"]["layers"]  # already 2:4: no cost, a predicted saving
    report = json.loads((out / "report.json").read_text())
    rows = {row["layer"]: row for row in report["sparsity"]["layers"]}
    assert rows["b.0"]["source"] == "predicted" and rows["b.0"]["saving_ms"] > 0 and rows["b.0"]["onnx_nm"]
    assert report["sparsity"]["engine"]["built"] is False  # no TensorRT here: nothing claimed
    assert "--sparsity=enable" in (out / "build_engine.sh").read_text()
    assert "N:M sparsity" in (out / "report.md").read_text()
    assert main(["apply", str(out / "plan.json"), "--out", str(tmp_path / "again")]) == 0


@pytest.mark.e2e
def test_compile_on_cpu_with_2_4_measures_it_and_chooses_none_with_the_measured_reason(tmp_path):
    out = tmp_path / "out"
    assert main(["compile", "tests/data/small_models.py:small_resnet", "--target", "cpu", "--latency", "0.7",
                 "--sparsity", "2:4", "--refine", "0", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    check = report["sparsity"]["check"]
    assert report["sparsity"]["layers"] == [] and check["source"] == "measured"
    assert check["offered"] == 0 and check["candidates"] > 0 and "measured on cpu" in check["reason"]
    assert json.loads((out / "plan.json").read_text())["sparsity"]["layers"] == {}


def test_a_plan_that_merges_one_span_and_masks_another_layer_exports_it_checked_n_m(tmp_path):
    """A merged plan's model is a rewritten fx graph whose ONNX node names no longer carry the layer's
    path: the check finds the N:M layer by its zero pattern instead."""
    from hwprune.graph.spans import depth_candidates

    model, x = small_resnet()
    analysis = analyze(copy.deepcopy(model), x, "small")
    found = depth_candidates(analysis.model)
    span = found.spans[0]
    plan = plan_of(analysis, {})
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and n not in span.convs
             and m.in_channels % 4 == 0 and m.groups == 1]
    plan = replace(plan, merge=(MergedSpan(span.convs, span.activations, span.skip),),
                   sparsity=Sparsity("2:4", {names[-1]: NMLayer(2, 4)}))
    pruned = apply_plan(plan, analysis).eval()
    path = export_onnx(pruned, x, tmp_path / "merged.onnx")
    found = nm_weights(path, plan.sparsity.layers, pruned)
    assert found[names[-1]]["nm"] and len(names) > 1
    assert not nm_weights(path, {names[0]: NMLayer(2, 4)}, pruned)[names[0]]["nm"]  # a dense layer fails
