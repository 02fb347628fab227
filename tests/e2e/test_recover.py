"""`hwprune recover` (and `compile --recover-data`) end to end on scikit-learn's digits: a small CNN
trained here, compiled on cpu, distilled back; one process and two (torchrun, gloo)."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hwprune.cli import main
from tests import DATA as TESTS_DATA  # noqa: E402
from tests.data import digits

DATA = TESTS_DATA / "digits.py"
MODEL = f"{DATA}:digits_cnn"


def fn(name: str) -> str:
    return f"{DATA}:{name}"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """A digits CNN trained here (weights in a file every process loads), compiled to 0.6 on cpu."""
    root = tmp_path_factory.mktemp("recover")
    weights = root / "weights.pt"
    torch.save(digits.fit().state_dict(), weights)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DIGITS_WEIGHTS", str(weights))
        patch.setenv("HWPRUNE_CACHE", str(root / "cache"))
        code = main(["compile", "--refine", "2",
                     MODEL, "--target", "cpu", "--latency", "0.6", "--calib-data", fn("calib"),
                     "--out", str(root / "build")])
        assert code == 0
        yield root


@pytest.fixture
def build(compiled, tmp_path, monkeypatch):
    """A fresh copy of the compiled build, with the environment its model needs."""
    monkeypatch.setenv("DIGITS_WEIGHTS", str(compiled / "weights.pt"))
    monkeypatch.setenv("HWPRUNE_CACHE", str(compiled / "cache"))
    shutil.copytree(compiled / "build", tmp_path / "build")
    return tmp_path / "build"


def recover(build: Path, *extra: str) -> int:
    return main(["recover", str(build), "--data", fn("train"), "--eval-data", fn("test"), "--epochs", "2", *extra])


def test_recovery_regains_accuracy_and_writes_a_verified_measured_model(build, capsys):
    pruned_onnx = (build / "pruned.onnx").read_bytes()
    assert recover(build) == 0
    section = json.loads((build / "report.json").read_text())["recovery"]
    before, after = section["before"], section["after"]
    assert after["accuracy"] > before["accuracy"] and after["cosine"] > before["cosine"]
    assert after["accuracy"] >= after["teacher_accuracy"] - 0.03  # within 3 points of the unpruned model
    assert len(section["loss"]) == 2 and section["loss"][1] < section["loss"][0]
    assert section["verify"]["ok"] and section["measured_speedup"] > 1
    assert (build / "pruned.onnx").read_bytes() == pruned_onnx  # the pruned export stays as it was
    assert (build / "recovered.onnx").is_file() and (build / "plots" / "recovery.png").is_file()
    assert "## Recovery" in (build / "report.md").read_text()
    plan = json.loads((build / "plan.json").read_text())
    assert plan["recovery"]["epochs"] == 2 and plan["recovery"]["weights"] == "recovered.pt"
    checkpoint = torch.load(build / "recover" / "checkpoint.pt", weights_only=True)
    assert checkpoint["progress"]["epoch"] == 2 and "teacher" not in checkpoint
    trained = "pruned_unmerged.pt" if plan["merge"] else "pruned.pt"  # merged spans train apart
    assert {k for k in checkpoint["student"]} == {k for k in torch.load(build / trained, weights_only=True)}

    capsys.readouterr()
    assert main(["apply", str(build / "plan.json"), "--calib-data", fn("calib"), "--out", str(build / "applied")]) == 0
    assert "not the recovered weights" in capsys.readouterr().err


def test_interrupted_recovery_resumes_from_its_checkpoint(build, monkeypatch, capsys):
    from hwprune.recovery import run

    save = run._save_checkpoint

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "_save_checkpoint", save_then_stop)
    assert recover(build) == 130
    assert not (build / "recovered.onnx").exists() and "recovery" not in json.loads((build / "report.json").read_text())
    assert torch.load(build / "recover" / "checkpoint.pt", weights_only=True)["progress"]["epoch"] == 1
    monkeypatch.setattr(run, "_save_checkpoint", save)
    capsys.readouterr()
    assert recover(build, "--resume") == 0
    assert "resumed after epoch 1 of 2" in capsys.readouterr().err
    section = json.loads((build / "report.json").read_text())["recovery"]
    assert len(section["loss"]) == 2 and section["after"]["accuracy"] > section["before"]["accuracy"]


@pytest.mark.parametrize("argv, message", [
    (["--data", fn("out_of_range")], "targets run from 10 to 19; the model has 10 classes"),
    (["--data", fn("wrong_shape")], "inputs of shape [8, 1, 8, 8]; the model takes (N, 1, 16, 16)"),
    (["--data", fn("empty")], "the data set is empty"),
    (["--data", fn("train"), "--resume"], "--resume: no checkpoint"),
    (["--data", fn("train"), "--epochs", "0"], "must be positive"),
])
def test_bad_input_is_one_line_and_writes_nothing(build, argv, message, capsys):
    report = (build / "report.json").read_bytes()
    capsys.readouterr()
    assert main(["recover", str(build), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "".join(err)
    assert (build / "report.json").read_bytes() == report and not (build / "recovered.onnx").exists()


def test_a_folder_without_a_plan_and_a_foreign_checkpoint_are_refused(build, tmp_path, capsys):
    assert main(["recover", str(tmp_path / "nothing"), "--data", fn("train")]) == 2
    assert "no plan.json" in capsys.readouterr().err
    (build / "recover").mkdir()
    torch.save({"format": "hwprune-recovery-checkpoint/1", "plan": "another"}, build / "recover" / "checkpoint.pt")
    assert recover(build, "--resume") == 2
    assert "written for another plan or model" in capsys.readouterr().err


def test_compile_with_recovery_writes_both_models_and_the_report_last(compiled, tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITS_WEIGHTS", str(compiled / "weights.pt"))
    monkeypatch.setenv("HWPRUNE_CACHE", str(compiled / "cache"))
    out = tmp_path / "build"
    assert main(["compile", "--refine", "2", MODEL, "--target", "cpu", "--latency", "0.6", "--calib-data", fn("calib"),
                 "--recover-data", fn("train"), "--recover-eval-data", fn("test"), "--recover-epochs", "1",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["verify"]["ok"] and report["recovery"]["verify"]["ok"]
    assert (out / "pruned.onnx").is_file() and (out / "recovered.onnx").is_file()
    assert not any(p.name.startswith(".partial") for p in out.iterdir())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_follow_the_one_process_loss_curve(build, tmp_path):
    """torchrun, 2 processes on CPU (gloo): the same global batch and order give nearly the same loss
    curve (BatchNorm sees half a batch per process, so not exactly), and only rank 0 writes."""
    single = tmp_path / "single"
    shutil.copytree(build, single)
    assert recover(single) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "-m", "hwprune", "recover", str(build), "--data", fn("train"),
               "--eval-data", fn("test"), "--epochs", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-2000:]
    two = json.loads((build / "report.json").read_text())["recovery"]
    one = json.loads((single / "report.json").read_text())["recovery"]
    assert two["processes"] == 2 and one["processes"] == 1 and two["samples"] == one["samples"]
    for a, b in zip(one["loss"], two["loss"], strict=True):
        assert abs(a - b) <= 0.25 * a
    assert two["after"]["accuracy"] >= two["after"]["teacher_accuracy"] - 0.05
    assert result.stdout.count("wrote ") == 1  # rank 0 only


def test_image_folder_data(build, tmp_path, capsys):
    """folder:PATH: one folder per class, resized to the model's input and normalised; the class
    index is the folder's position in sorted order."""
    from PIL import Image

    images, labels, _, _ = digits._split()
    root = tmp_path / "images"
    for n in range(200):
        folder = root / f"class{int(labels[n])}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (images[n, 0].clamp(0, 1) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).resize((32, 32)).save(folder / f"{n}.png")
    argv = ["recover", str(build), "--data", f"folder:{root}", "--eval-data", fn("test"), "--epochs", "1",
            "--mean", "0", "--std", "1"]
    assert main(argv) == 0
    section = json.loads((build / "report.json").read_text())["recovery"]
    assert section["samples"] == 200 and section["after"]["accuracy"] > 0.5  # labels from the folder names
    capsys.readouterr()
    assert main(["recover", str(build), "--data", f"folder:{tmp_path / 'none'}"]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_folder_normalisation_follows_the_model_spec():
    from hwprune.recovery.data import IMAGENET_MEAN, IMAGENET_STD, spec_normalisation

    assert spec_normalisation("torchvision:resnet18", 3) == (IMAGENET_MEAN, IMAGENET_STD)
    assert spec_normalisation("ultralytics:yolov8n.yaml", 3) == ((0.0,) * 3, (1.0,) * 3)  # pixels / 255
    assert spec_normalisation(MODEL, 1) == ((0.0,), (1.0,))


def test_a_merged_span_trains_apart_and_merges_at_export(compiled, tmp_path, monkeypatch):
    """A depth-only plan merges the first two convs (their ReLU removed: the CNN's one depth option, so
    a budget it can reach takes it; one search round, since the merge measures far below any budget
    it is predicted to meet and a re-search above the baseline would undo it); recovery trains them
    apart, from the compile's unmerged weights, and exports the merged model, which the plan rebuilds."""
    from hwprune.frontends import load_model
    from hwprune.graph.analyze import analyze
    from hwprune.plan import load_plan
    from hwprune.transform.realise import realise

    monkeypatch.setenv("DIGITS_WEIGHTS", str(compiled / "weights.pt"))
    monkeypatch.setenv("HWPRUNE_CACHE", str(compiled / "cache"))
    build = tmp_path / "depth"
    assert main(["compile", MODEL, "--target", "cpu", "--latency", "0.8", "--refine", "0", "--search", "depth",
                 "--calib-data", fn("calib"), "--out", str(build)]) == 0
    plan = load_plan(build / "plan.json")
    assert plan.merge and (build / "pruned_unmerged.pt").is_file()
    assert recover(build) == 0
    section = json.loads((build / "report.json").read_text())["recovery"]
    assert section["after"]["accuracy"] > section["before"]["accuracy"] and section["verify"]["ok"]
    loaded = load_model(MODEL)
    rebuilt = realise(plan, analyze(loaded.module, loaded.example_input, MODEL, strict=False))
    rebuilt.load_state_dict(torch.load(build / "recovered.pt", weights_only=True))
    from hwprune.export.verify import verify_onnx

    assert verify_onnx(rebuilt.eval(), build / "recovered.onnx", [loaded.example_input]).ok


def test_n_m_masks_hold_through_recovery_and_the_recovered_onnx_is_checked(build):
    """A plan whose layers are N:M: the student is masked as the plan builds it, every step re-applies
    the masks, and recovered.onnx is read back N:M (else recovery fails)."""
    from hwprune.sparsity.masks import is_nm

    plan = json.loads((build / "plan.json").read_text())
    plan["sparsity"] = {"pattern": "2:4", "layers": {"3.0": {"n": 2, "m": 4}, "6": {"n": 2, "m": 4}}}
    (build / "plan.json").write_text(json.dumps(plan))
    assert main(["recover", str(build), "--data", fn("train"), "--eval-data", fn("test"), "--epochs", "1"]) == 0
    weights = torch.load(build / "recovered.pt", weights_only=True)
    assert is_nm(weights["3.0.weight"], 2, 4) and is_nm(weights["6.weight"], 2, 4)
    assert not is_nm(weights["1.0.weight"], 2, 4)  # only the named layers
    assert json.loads((build / "report.json").read_text())["recovery"]["verify"]["ok"]
