"""The hidden size of transformers decoders (Llama, Qwen2, Qwen3, Mistral) as one prunable channel group.

Tiny random models saved with save_pretrained and loaded as ``hf:`` specs (hidden 64, 4 query heads sharing 2
key/value heads, MLP 256, 2 layers, vocabulary 1000). The group runs from the token embedding through every
RMSNorm, the q/k/v projections' inputs, o_proj's and down_proj's outputs, the gate/up projections' inputs and the
final norm to lm_head's inputs. RMSNorm normalises over the channels that remain, so removing channels is never
exact, not even zero ones; silencing rescales the norms so that it computes what removal does.
"""

import json

import pytest
import torch

from hwprune.cost.layers import model_layers
from hwprune.evaluate.mask import silenced
from hwprune.export.onnx_export import export_onnx
from hwprune.export.verify import verify_onnx
from hwprune.frontends import load_model, save_native
from hwprune.graph.analyze import analyze
from hwprune.transform.prune import prune
from tests.pruning_helpers import max_abs_diff

transformers = pytest.importorskip("transformers")

SMALL = {"vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 256}
# model -> (config class, model class, extra config); Qwen2's config has no head_dim field
MODELS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "llama-tied": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "llama-base": ("LlamaConfig", "LlamaModel", {}),  # returns the last hidden state itself
}
HIDDEN = "model.model.embed_tokens"
KEEP = [c for c in range(64) if c % 4 != 3]  # 48 of 64, spread over the width


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    made = {}
    for name, (config, model, extra) in MODELS.items():
        made[name] = tmp_path_factory.mktemp("hf") / name
        torch.manual_seed(0)
        getattr(transformers, model)(getattr(transformers, config)(**SMALL, **extra)).save_pretrained(made[name])
    return made


def _analysed(folder):
    loaded = load_model(f"hf:{folder}", (1, 16))
    return loaded, analyze(loaded.module, loaded.example_input, loaded.name)


@pytest.mark.parametrize("name", ["llama", "llama-tied", "qwen2", "qwen3", "mistral"])
def test_the_hidden_size_is_one_group_through_every_layer(folders, name):
    _loaded, analysis = _analysed(folders[name])
    group = analysis.group(HIDDEN)
    assert group.prunable and group.channels == 64 and not group.exact_removal
    assert {"embedding", "norm", "residual"} <= set(group.couplings)
    layer = "model.model.layers.{}.{}".format
    expected = {HIDDEN, "model.model.norm", "model.lm_head"} | {
        layer(i, part) for i in range(2) for part in (
            "input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
            "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert set(group.layers) == expected
    writers = {HIDDEN} | {layer(i, p) for i in range(2) for p in ("self_attn.o_proj", "mlp.down_proj")}
    assert writers <= set(group.producers) and "model.lm_head" not in group.producers
    assert all(group.positions[name] == 64 for name in expected)
    # the heads stay their own groups, the MLPs theirs
    assert sum(g.kind == "heads" and g.prunable for g in analysis.groups) == 2
    assert sum(g.prunable and ".mlp." in g.id for g in analysis.groups) == 2


def test_a_decoder_returning_its_hidden_state_keeps_its_hidden_size(folders):
    """A bare LlamaModel's output is the last hidden state: pruning the hidden size would change its width."""
    _loaded, analysis = _analysed(folders["llama-base"])
    hidden = [g for g in analysis.groups if g.kind == "residual"]
    assert len(hidden) == 1 and not hidden[0].prunable and "feeds a model output" in hidden[0].reason


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_silencing_computes_what_removal_does(folders, name):
    """Silencing zeroes the dropped channels and rescales every RMSNorm (weight by sqrt(k/n), epsilon by k/n),
    so importance and the search see the output of the pruned model, not of a masked one."""
    loaded, analysis = _analysed(folders[name])
    model, x = loaded.module, loaded.example_input
    dropped = sorted(set(range(64)) - set(KEEP))
    with torch.no_grad():
        reference = model(x)
        with silenced(analysis, {HIDDEN: dropped}) as masked:
            silenced_output = masked(x)
        assert torch.equal(model(x), reference)  # undone on exit
    prune(analysis, {HIDDEN: KEEP})
    with torch.no_grad():
        pruned = model(x)
    assert max_abs_diff(pruned, silenced_output) < 1e-5 * float(reference.abs().max())
    assert max_abs_diff(pruned, reference) > 1e-2 * float(reference.abs().max())


def test_removing_zero_hidden_channels_is_not_exact(folders):
    """Unlike a linear layer's width, a channel that is zero everywhere still counts in each RMSNorm's mean of
    squares: removing it changes every norm's output by sqrt(n/k)."""
    loaded, analysis = _analysed(folders["llama"])
    model, x = loaded.module, loaded.example_input
    dropped = sorted(set(range(64)) - set(KEEP))
    decoder = model.model.model
    with torch.no_grad():
        decoder.embed_tokens.weight[:, dropped] = 0
        for layer in decoder.layers:
            layer.self_attn.o_proj.weight[dropped] = 0
            layer.mlp.down_proj.weight[dropped] = 0
        zeroed = model(x)
    prune(analysis, {HIDDEN: KEEP})
    with torch.no_grad():
        change = max_abs_diff(model(x), zeroed) / float(zeroed.abs().max())
    print(f"removing 16 zero channels of 64 changed the logits by {change:.3g} of their largest")
    assert change > 1e-3


def test_pruned_hidden_size_exports_and_changes_the_output(folders, tmp_path):
    loaded, analysis = _analysed(folders["llama"])
    model, x = loaded.module, loaded.example_input
    with torch.no_grad():
        reference = model(x)
    prune(analysis, {HIDDEN: KEEP})
    decoder = model.model.model
    assert decoder.embed_tokens.embedding_dim == 48 and decoder.norm.weight.shape == (48,)
    assert all(layer.self_attn.q_proj.in_features == layer.self_attn.o_proj.out_features == 48
               and layer.self_attn.q_proj.out_features == 64 for layer in decoder.layers)
    assert model.model.lm_head.in_features == 48
    path = export_onnx(model, x, tmp_path / "pruned.onnx")
    check = verify_onnx(model, path, [x, torch.randint(0, 1000, (1, 16))])
    assert check.ok, check.worst
    with torch.no_grad():
        pruned = model(x)
    change = max_abs_diff(pruned, reference) / float(reference.abs().max())
    cosine = torch.nn.functional.cosine_similarity(pruned.flatten(), reference.flatten(), dim=0)
    print(f"48 of 64 hidden channels: logits change {change:.3g} of their largest, cosine {float(cosine):.4f}; "
          f"ONNX max abs err {check.max_abs_err:.2g}")
    assert change > 1e-3


def test_tied_embedding_stays_one_parameter(folders):
    loaded, analysis = _analysed(folders["llama-tied"])
    model = loaded.module.model
    weight = model.get_input_embeddings().weight.detach().clone()
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    prune(analysis, {HIDDEN: KEEP})
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert embedding.weight is head.weight and torch.equal(embedding.weight, weight[:, KEEP])
    assert len({id(p) for p in model.parameters()}) == len(list(model.parameters()))


@pytest.mark.parametrize("name", ["llama", "llama-tied", "qwen2"])
def test_pruned_hidden_size_saves_and_reloads(folders, name, tmp_path):
    """The config's hidden_size comes from the embedding and head_dim stays the modules' (Qwen2's config has no
    head_dim field; its attention reads one where written)."""
    loaded, analysis = _analysed(folders[name])
    model, x = loaded.module, loaded.example_input
    prune(analysis, {HIDDEN: KEEP})
    assert save_native(model, loaded.name, tmp_path) == "pruned_hf"
    config = json.loads((tmp_path / "pruned_hf" / "config.json").read_text())
    assert (config["hidden_size"], config["head_dim"], config["num_attention_heads"]) == (48, 16, 4)
    reloaded = getattr(transformers, MODELS[name][1]).from_pretrained(tmp_path / "pruned_hf")
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=x).logits, model(x), atol=1e-5)


def test_the_hidden_size_sizes_every_projection_in_the_latency_model(folders):
    _loaded, analysis = _analysed(folders["llama"])
    layers = {layer.name: layer for layer in model_layers(analysis)}
    keep = {HIDDEN: 48}
    for i in range(2):
        prefix = f"model.model.layers.{i}"
        for reader in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            layer = layers[f"{prefix}.{reader}"]
            assert layer.c_in(keep) == 48 and layer.c_out(keep) == layer.signature.c_out
        for writer in ("self_attn.o_proj", "mlp.down_proj"):
            layer = layers[f"{prefix}.{writer}"]
            assert layer.out_group == HIDDEN and layer.c_out(keep) == 48 and layer.c_in(keep) == layer.signature.c_in
        core = layers[f"{prefix}.self_attn:core"]
        assert core.c_out(keep) == core.signature.c_out  # the heads are not the hidden size
    head = layers["model.lm_head"]
    assert head.c_in(keep) == 48 and head.c_out(keep) == 1000


def test_qwen2_pruned_heads_save_with_head_dim_written(folders, tmp_path):
    """Qwen2's config has no head_dim: with fewer heads hidden_size / heads no longer gives the head width, so
    head_dim is written (its attention reads it), and a homogeneous compile may prune its heads."""
    from hwprune.frontends.hf.layout import heads_fixed

    loaded, analysis = _analysed(folders["qwen2"])
    model, x = loaded.module, loaded.example_input
    assert heads_fixed(model.model) is None
    prune(analysis, {g.id: [0] for g in analysis.groups if g.kind == "heads"})
    save_native(model, loaded.name, tmp_path)
    config = json.loads((tmp_path / "pruned_hf" / "config.json").read_text())
    assert (config["hidden_size"], config["head_dim"], config["num_attention_heads"]) == (64, 16, 2)
    reloaded = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "pruned_hf")
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=x).logits, model(x), atol=1e-5)
