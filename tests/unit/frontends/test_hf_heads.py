"""Attention heads of transformers models as prunable groups, and each attention's core as a timed op.

Tiny random models saved with save_pretrained and loaded as ``hf:`` specs: a Llama-style decoder with
grouped-query attention (4 query heads sharing 2 key/value heads: a unit is one key/value head with its 2
query heads), a Qwen3 one (q_norm/k_norm over the head width) and a BERT encoder (a unit is one head).
"""

import json

import pytest
import torch

from hwprune.cli import main
from hwprune.cost.layers import model_layers
from hwprune.cost.space import profile_signatures
from hwprune.evaluate.mask import silence_channels
from hwprune.frontends import load_model
from hwprune.graph.analyze import analyze
from hwprune.graph.heads import group_heads
from hwprune.transform.prune import prune
from tests.pruning_helpers import max_abs_diff
from tests.recorded_tables import adopt

transformers = pytest.importorskip("transformers")

SMALL = {"vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 256}
# model -> (its transformers classes, extra config, units per attention, query heads per unit)
MODELS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"num_key_value_heads": 2}, 2, 2),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"num_key_value_heads": 2, "head_dim": 16}, 2, 2),
    "bert": ("BertConfig", "BertModel", {}, 4, 1),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    made = {}
    for name, (config, model, extra, _units, _queries) in MODELS.items():
        made[name] = tmp_path_factory.mktemp("hf") / name
        torch.manual_seed(0)
        getattr(transformers, model)(getattr(transformers, config)(**SMALL, **extra)).save_pretrained(made[name])
    return made


def _analysed(folder, shape=(1, 16)):
    loaded = load_model(f"hf:{folder}", shape)
    return loaded, analyze(loaded.module, loaded.example_input, loaded.name)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_heads_are_groups_and_bert_keeps_its_hidden_size(folders, name):
    _loaded, analysis = _analysed(folders[name])
    units = MODELS[name][3]
    heads = [g for g in analysis.groups if g.kind == "heads"]
    assert len(heads) == 2 and all(g.prunable and g.channels == units for g in heads)
    hidden = [g for g in analysis.groups if g.channels == SMALL["hidden_size"] and g.kind != "heads"]
    # a decoder's hidden size is pruned through its attention's ends (test_hf_hidden.py); BERT's is kept
    assert hidden and any(g.prunable for g in hidden) == (name != "bert")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_removing_a_unit_whose_values_are_zero_is_exact(folders, name):
    loaded, analysis = _analysed(folders[name])
    model, x = loaded.module, loaded.example_input
    _config, _model, _extra, units, queries = MODELS[name]
    heads = [g for g in analysis.groups if g.kind == "heads"]
    with torch.no_grad():
        before = model(x)
        for group in heads:  # unit 1's value rows, and the output projection's columns it feeds
            silence_channels(analysis, group, [1])
            view = group_heads(model, group.id)
            view.layer(3).weight[:, view.query_rows([1])] = 0
        zeroed = model(x)
    assert max_abs_diff(before, zeroed) > 1e-3  # the unit mattered
    kept = [u for u in range(units) if u != 1]
    prune(analysis, {g.id: kept for g in heads})
    with torch.no_grad():
        assert max_abs_diff(model(x), zeroed) < 1e-5
    for group in heads:  # grouped-query attention keeps its query heads per key/value head
        view = group_heads(model, group.id)
        q, k, v, o = (view.layer(i) for i in range(4))
        assert view.units == len(kept) and view.queries == queries
        assert k.out_features == v.out_features == len(kept) * view.head_dim
        assert q.out_features == o.in_features == len(kept) * queries * view.head_dim


def test_the_attention_core_is_timed_and_shrinks_with_the_heads_kept(folders):
    """One ``attention`` op per attention module, named under its path (a layer removal takes it), priced at
    every count the search may keep: 1 or 2 key/value units, 2 or 4 query heads."""
    _loaded, analysis = _analysed(folders["llama"])
    cores = {layer.name: layer for layer in model_layers(analysis) if layer.signature.op == "attention"}
    assert set(cores) == {f"model.model.layers.{i}.self_attn:core" for i in range(2)}
    core = cores["model.model.layers.0.self_attn:core"]
    sig = core.signature
    assert (sig.batch, sig.c_out, sig.h, sig.w, sig.kernel, sig.causal) == (1, 4, 16, 16, 16, 1)
    assert core.out_group == "model.model.layers.0.self_attn:heads" and core.c_out({core.out_group: 1}) == 2
    smaller = sig.with_channels(2, 2)
    assert smaller.flops() * 2 == sig.flops() and smaller.bytes_moved() * 2 == sig.bytes_moved()
    groups = {g.id: g for g in analysis.groups}
    profiled = {s.c_out for s in profile_signatures([core], groups, 16)}
    assert profiled == {2, 4}
    _loaded, bert = _analysed(folders["bert"])
    encoder = [layer.signature for layer in model_layers(bert) if layer.signature.op == "attention"]
    assert len(encoder) == 2 and all(s.c_out == 4 and not s.causal for s in encoder)


@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("keys", [16, 24])
def test_the_single_op_attention_graph_computes_attention(causal, keys):
    """What the profiler times is attention's core: onnxruntime's output equals torch's (a causal mask aligned
    to the last key, as torch's bottom-right mask; the input holds the queries, then the keys where they differ)."""
    import onnxruntime as ort

    from hwprune.cost.onnx_ops import input_shape, single_op_model
    from hwprune.cost.signature import OpSignature

    sig = OpSignature("attention", 2, 3, 3, 16, keys, kernel=8, causal=causal)
    x = torch.randn(input_shape(sig))
    q, k = (x, x) if keys == 16 else (x[:, :, :16], x[:, :, 16:])
    mask = torch.ones(16, keys, dtype=torch.bool).tril(keys - 16) if causal else None
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, k, attn_mask=mask)
    session = ort.InferenceSession(single_op_model(sig), providers=["CPUExecutionProvider"])
    assert torch.allclose(torch.from_numpy(session.run(None, {"x": x.numpy()})[0]), expected, atol=1e-5)


def test_the_analytic_model_prices_the_core_on_a_gpu(folders):
    from hwprune.cost.model_latency import analytic_predictor
    from hwprune.targets import load_target

    _loaded, analysis = _analysed(folders["llama"], (1, 32))
    predictor = analytic_predictor(analysis, load_target("a100"))
    gid, core = "model.model.layers.0.self_attn:heads", "model.model.layers.0.self_attn:core"
    full, half = predictor.predict({}), predictor.predict({gid: 1})
    assert full.source == "analytic" and 0 < half.layers_ms[core] < full.layers_ms[core]
    assert half.total_ms < full.total_ms


@pytest.mark.e2e
def test_llama_compile_prunes_heads_and_verifies(folders, tmp_path, capsys, monkeypatch):
    """The MLPs and the hidden size kept, 0.85 of the latency at 128 tokens needs heads: the attention cores (the
    softmax over causally masked scores above all) are timed ops. The table is the one this compile measured once
    (``tests/recorded_tables.py``): measured during the test, a loaded host's floor decided the plan."""
    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path / "cache"))
    adopt("hf-llama-1x128", tmp_path / "cache", str(folders["llama"]))
    out = tmp_path / "build"
    code = main(["compile", f"hf:{folders['llama']}", "--input-shape", "1,128", "--target", "cpu", "--latency",
                 "0.85", "--search", "width", "--refine", "0", "--exclude", "*mlp*", "--exclude", "*embed_tokens*",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err.strip().splitlines()[-1]
    assert json.loads((out / "report.json").read_text())["verify"]["ok"]
    table = json.loads((tmp_path / "cache" / "latency" / "cpu-onnxruntime.json").read_text())
    timed = {"|".join(key.split("|")[:7]) for key in table["entries"] if "causal=1" in key}
    assert timed == {f"op=attention|batch=1|c_in={h}|c_out={h}|h=128|w=128|kernel=16" for h in (2, 4)}
    plan = json.loads((out / "plan.json").read_text())
    heads, width = plan["heads"], plan["width"]
    assert len(heads) == 2 and all(gid.endswith(":heads") for gid in heads)
    assert any(d["keep"] < d["of"] for d in heads.values())
    assert not [gid for gid, d in width.items() if d["keep"] < d["of"]]
    assert "0 new measurements" in capsys.readouterr().err  # every op from the recorded table
