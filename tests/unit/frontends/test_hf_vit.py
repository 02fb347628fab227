"""hf: Vision Transformers: an image batch as pixel_values, MLP widths and heads as groups, layers as stack blocks."""

import json

import pytest
import torch

from hwprune.cli import main
from hwprune.errors import ModelSpecError
from hwprune.frontends import load_model
from tests.hf_models import tiny_config
from tests.recorded_tables import adopt

transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")



@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "vit"
    torch.manual_seed(0)
    transformers.ViTForImageClassification(tiny_config("vit")).save_pretrained(folder)
    return folder


def test_vit_takes_an_image_batch_and_returns_logits(vit_dir):
    loaded = load_model(f"hf:{vit_dir}")
    assert loaded.example_input.shape == (1, 3, 32, 32) and loaded.example_input.is_floating_point()
    assert loaded.module.returns_logits
    assert loaded.module(loaded.example_input).shape == (1, 10)
    assert load_model(f"hf:{vit_dir}", (2, 3, 32, 32)).module(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vit_base_model_returns_hidden_state_and_pooled(tmp_path):
    transformers.ViTModel(tiny_config("vit")).save_pretrained(tmp_path)
    loaded = load_model(f"hf:{tmp_path}")
    hidden, pooled = loaded.module(loaded.example_input)
    assert not loaded.module.returns_logits
    assert hidden.shape == (1, 17, 64) and pooled.shape == (1, 64)  # 16 patches and the class token


def test_vit_input_shape_must_be_an_image_batch(vit_dir, capsys):
    with pytest.raises(ModelSpecError, match="BATCH,C,H,W"):
        load_model(f"hf:{vit_dir}", (1, 128))
    assert main(["analyze", f"hf:{vit_dir}", "--input-shape", "1,128"]) == 2
    err = capsys.readouterr().err.strip()
    assert "BATCH,C,H,W" in err and len(err.splitlines()) == 1


def test_vit_mlp_and_heads_are_prunable_layers_are_stack_blocks(vit_dir):
    from hwprune.graph.analyze import analyze
    from hwprune.graph.spans import depth_candidates

    loaded = load_model(f"hf:{vit_dir}")
    analysis = analyze(loaded.module, loaded.example_input, loaded.name, strict=False)
    prunable = {g.id: g for g in analysis.groups if g.prunable}
    for i in range(2):
        layer = f"model.vit.layers.{i}"
        mlp = prunable[f"{layer}.mlp.fc1"]
        assert mlp.channels == 256 and set(mlp.layers) == {f"{layer}.mlp.fc1", f"{layer}.mlp.fc2"}
        assert prunable[f"{layer}.attention:heads"].channels == 4
    blocks = depth_candidates(loaded.module, loaded.example_input).blocks
    assert [b.name for b in blocks] == ["model.vit.layers.0", "model.vit.layers.1"]


def test_vit_pruned_mlp_reloads_and_heads_stay_whole(vit_dir, tmp_path):
    """A homogeneous MLP width is written as intermediate_size; ViTConfig derives the head width from
    hidden_size, so a homogeneous compile keeps heads whole."""
    from hwprune.frontends import save_native
    from hwprune.frontends.hf.layout import heads_fixed

    loaded = load_model(f"hf:{vit_dir}")
    assert "ViTConfig" in heads_fixed(loaded.module.model)
    for layer in loaded.module.model.vit.layers:
        fc1, fc2 = layer.mlp.fc1, layer.mlp.fc2
        layer.mlp.fc1 = torch.nn.Linear(64, 128)
        layer.mlp.fc1.load_state_dict({"weight": fc1.weight[:128], "bias": fc1.bias[:128]})
        layer.mlp.fc2 = torch.nn.Linear(128, 64)
        layer.mlp.fc2.load_state_dict({"weight": fc2.weight[:, :128], "bias": fc2.bias})
    assert save_native(loaded.module, loaded.name, tmp_path) == "pruned_hf"
    again = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "pruned_hf")
    assert again.config.intermediate_size == 128
    with torch.no_grad():
        assert torch.allclose(again(pixel_values=loaded.example_input).logits,
                              loaded.module(loaded.example_input), atol=1e-5)


@pytest.mark.e2e
def test_vit_compiles_verifies_and_reloads_like_its_onnx(vit_dir, tmp_path, capsys, monkeypatch):
    """On a recorded table (``tests/recorded_tables.py``): the model runs in about 0.1 ms, and a table measured
    during the test on a busy runner once predicted its smallest model above the budget."""
    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path / "cache"))
    adopt("hf-vit-1x3x32x32", tmp_path / "cache", str(vit_dir))
    out = tmp_path / "build"
    code = main(["compile", "--refine", "2", f"hf:{vit_dir}", "--target", "cpu", "--latency", "0.8", "--out", str(out)])
    assert code == 0, capsys.readouterr().err.strip().splitlines()[-1]
    report = json.loads((out / "report.json").read_text())
    assert report["verify"]["ok"] and report["input_shape"] == [1, 3, 32, 32]
    assert report["pruned"] != report["baseline"]
    again = transformers.AutoModelForImageClassification.from_pretrained(out / "pruned_hf").eval()
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    session = ort.InferenceSession(str(out / "pruned.onnx"), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    with torch.no_grad():
        logits = again(pixel_values=image).logits
    assert logits.shape == (1, 10)
    assert torch.allclose(logits, torch.from_numpy(onnx_logits), atol=1e-4)
