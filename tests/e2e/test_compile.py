"""`hwprune compile` and `hwprune apply` end to end on a small residual model (real profiling and timing)."""

import importlib.util
import json
import os
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hwprune.cli import main
from tests import DATA

MODEL = f"{DATA / 'small_models.py'}:small_resnet"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    out = tmp_path_factory.mktemp("build")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HWPRUNE_CACHE", str(cache))
        code = main(["compile", "--refine", "2", MODEL, "--target", "cpu", "--latency", "0.6", "--out", str(out)])
    return code, out, cache


def test_compile_writes_a_verified_measured_report(compiled):
    code, out, _cache = compiled
    assert code == 0
    # The joint search may merge a block's two convs (whether it pays depends on the table measured here):
    # then the build also holds them unmerged, and the merged conv is a layer row of its own.
    merges = len(json.loads((out / "plan.json").read_text())["merge"])
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "plan.json", "baseline.onnx",
                                                "pruned.onnx", "pruned.pt", "plots"} | (
        {"pruned_unmerged.pt"} if merges else set())
    for plot in ("layer_latency.png", "channels_kept.png", "predicted_vs_measured.png"):
        assert (out / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    assert len(report["layers"]) == 6 + merges
    assert {g["id"] for g in report["groups"]} == {"3.body.0", "4.body.0", "4.body.3"}
    assert any(r["pruned_predicted_ms"] < r["baseline_predicted_ms"] for r in report["layers"])
    assert report["engine"]["path"] is None and "onnxruntime" in report["engine"]["reason"]
    text = (out / "report.md").read_text()
    assert "Measured speedup" in text and "Verification" in text and "plots/channels_kept.png" in text
    for side in ("baseline", "pruned"):
        assert set(report[side]["latency_ms"]) >= {"median", "p90"}
        assert report[side]["flops"] > 0 and report[side]["params"] > 0
    assert report["pruned"]["params"] < report["baseline"]["params"]
    assert report["pruned"]["flops"] < report["baseline"]["flops"]
    assert report["verify"]["ok"] and report["verify"]["max_abs_err"] <= 1e-4
    assert report["speedup"]["predicted"] > 1 and report["speedup"]["measured"] > 0
    assert 0 < report["fidelity"]["cosine"] <= 1 + 1e-9 and 0 <= report["fidelity"]["top1_agreement"] <= 1
    budget, attempts = report["budget"], report["search"]["attempts"]
    assert {k: budget[k] for k in ("kind", "value", "latency_fraction", "tolerance")} == {
        "kind": "latency", "value": 0.6, "latency_fraction": 0.6, "tolerance": 0.05}
    assert attempts[report["search"]["chosen"]]["measured_fraction"] is not None
    # the verdict pools the chosen round's 12 interleaved pairs and the final run's 30
    assert budget["pairs"] == 42 and budget["measured_fraction"] == pytest.approx(1 / report["speedup"]["measured"])
    low, high = budget["interval"]
    assert low <= budget["measured_fraction"] <= high
    expected = ("met" if 0.57 <= low and high <= 0.63 else "missed" if high < 0.57 or low > 0.63 else "undecided")
    assert budget["verdict"] == expected and "met" not in budget
    speed_low, speed_high = report["speedup"]["measured_interval"]
    assert speed_low == pytest.approx(1 / high) and speed_high == pytest.approx(1 / low)
    assert f"**Budget: {budget['verdict']}**" in text and "met within" not in text  # report.json's verdict
    stages = report["stages"]  # every stage's wall time, the rest as "other"
    assert {"analyze and trial-prune", "profile", "score", "search + prune", "realise, export and measure",
            "verify", "measure baseline vs pruned", "other"} <= set(stages)
    assert all(s >= 0 for s in stages.values()) and sum(stages.values()) == pytest.approx(report["seconds"])
    assert "**Wall time**" in text
    assert report["bn_recalibration"] is False  # random calibration inputs: statistics stay as trained
    candidates = report["search"]["candidates"]
    assert {c["strategy"] for c in candidates} == {"sensitivity", "structure", "uniform", "joint"}
    assert report["search"]["strategy"] == max(candidates, key=lambda c: c["score"])["strategy"]


def test_calibration_data_recalibrates_batchnorm_and_still_verifies(compiled, tmp_path, monkeypatch):
    _code, _out, cache = compiled
    monkeypatch.setenv("HWPRUNE_CACHE", str(cache))
    calib = tmp_path / "calib.py"
    calib.write_text("import torch\n\ndef batches():\n    torch.manual_seed(3)\n"
                     "    return [torch.randn(4, 3, 64, 64) for _ in range(3)]\n")
    out = tmp_path / "out"
    assert main(["compile", "--refine", "2",
                 MODEL, "--latency", "0.6", "--importance", "taylor", "--calib-data", f"{calib}:batches",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["bn_recalibration"] is True and report["verify"]["ok"]
    assert report["fidelity"]["inputs"].endswith("calib.py:batches") and report["fidelity"]["samples"] == 12
    again = tmp_path / "again"
    assert main(["apply", str(out / "plan.json"), MODEL, "--out", str(again)]) == 2  # needs the same data
    assert main(["apply", str(out / "plan.json"), MODEL, "--calib-data", f"{calib}:batches", "--out", str(again)]) == 0
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 64), dtype=np.float32)
    outputs = [ort.InferenceSession(str(path)).run(None, {"input": x})[0]
               for path in (out / "pruned.onnx", again / "pruned.onnx")]
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)


def test_apply_rebuilds_the_compiled_model_from_the_plan_alone(compiled, tmp_path, capsys):
    _code, out, _cache = compiled
    assert main(["apply", str(out / "plan.json"), "--out", str(tmp_path)]) == 0  # the model spec is the plan's
    assert "applied" in capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir()} == {"pruned.onnx", "pruned.pt"}
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64), dtype=np.float32)
    outputs = [ort.InferenceSession(str(path)).run(None, {"input": x})[0]
               for path in (out / "pruned.onnx", tmp_path / "pruned.onnx")]
    np.testing.assert_array_equal(outputs[0], outputs[1])
    weights = [torch.load(path / "pruned.pt", weights_only=True) for path in (out, tmp_path)]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k])
                                                          for k in weights[0])


def test_apply_refuses_other_weights_naming_both_digests(compiled, tmp_path, capsys):
    _code, out, _cache = compiled
    plan = json.loads((out / "plan.json").read_text())
    actual = plan["provenance"]["state_sha256"]
    assert len(actual) == 64 and plan["provenance"]["seed"] == 0
    plan["provenance"]["state_sha256"] = "0" * 64  # made for other weights than the spec now gives
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert main(["apply", str(tmp_path / "plan.json"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hwprune: error:") and "0" * 16 in err and actual[:16] in err and "--seed" in err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_apply_verifies_its_export_and_fails_as_compile_does(compiled, tmp_path, capsys, monkeypatch):
    import hwprune.export.verify as verify_module

    _code, out, _cache = compiled
    real = verify_module.verify_onnx

    def mismatch(*args, **kwargs):
        return replace(real(*args, **kwargs), ok=False)

    monkeypatch.setattr(verify_module, "verify_onnx", mismatch)
    assert main(["apply", str(out / "plan.json"), "--out", str(tmp_path)]) == 2
    assert "exported ONNX does not match the pruned model" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_interrupted_compile_leaves_nothing_that_looks_finished(tmp_path, monkeypatch, capsys):
    import hwprune.pipeline.finish as compile_module

    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.json").write_text("{}")  # from an earlier compile

    def interrupt(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compile_module, "verified", interrupt)
    assert main(["compile", MODEL, "--latency", "0.6", "--refine", "0", "--out", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err.strip().endswith("hwprune: interrupted")
    assert list((tmp_path / "out").iterdir()) == []


def test_unwritable_output_is_one_clear_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["compile", "--refine", "2", MODEL, "--latency", "0.6", "--out", str(blocker / "out")]) == 2
    assert "cannot write to" in capsys.readouterr().err


def test_infeasible_budget_is_a_clear_error(compiled, tmp_path, capsys, monkeypatch):
    _code, _out, cache = compiled
    monkeypatch.setenv("HWPRUNE_CACHE", str(cache))
    assert main(["compile", "--refine", "2", MODEL, "--speedup", "1000", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot be met" in err and "smallest model this search allows is predicted at" in err
    assert not (tmp_path / "report.json").exists()
    assert main(["compile", "--refine", "2", MODEL, "--budget-ms", "1e6", "--out", str(tmp_path)]) == 2
    assert "nothing to prune" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["compile", "torchvision:no_such_net", "--latency", "0.5"], "no such torchvision model"),
    (["compile", MODEL, "--latency", "1.5"], "must be a fraction"),
    (["compile", MODEL, "--speedup", "0.5"], "must be above 1"),
    (["compile", MODEL, "--latency", "0.5", "--min-keep", "0"], "--min-keep"),
    (["compile", MODEL, "--latency", "0.5", "--calib-data", "nowhere.py:fn"], "file not found"),
])
def test_bad_input_exits_2_with_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path))
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("hwprune: error:") and message in lines[-1]
    assert sum(line.startswith("hwprune: error:") for line in lines) == 1


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None, reason="TensorRT is installed")
def test_tensorrt_target_without_tensorrt_writes_onnx_and_trtexec_lines_and_no_numbers(tmp_path, capsys):
    assert main(["compile", "--refine", "2",
                 MODEL, "--target", "jetson-orin-nano", "--latency", "0.8", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["engine"]["path"] is None and "TensorRT is not installed" in report["engine"]["reason"]
    assert report["speedup"]["measured"] is None and report["speedup"]["predicted_by"] == "analytic"
    assert report["baseline"]["latency_ms"] is None and report["pruned"]["latency_ms"] is None
    assert report["speedup"]["predicted"] > 1 and report["verify"]["ok"]
    script = (tmp_path / "build_engine.sh").read_text()
    assert "trtexec --onnx=baseline.onnx --saveEngine=baseline.engine" in script and "--fp16" in script
    assert "trtexec --onnx=pruned.onnx --saveEngine=pruned.engine" in script
    assert "Not measured" in (tmp_path / "report.md").read_text()
    assert "not measured" in capsys.readouterr().out


def test_apply_rejects_a_plan_for_another_model(compiled, tmp_path, capsys):
    _code, out, _cache = compiled
    other = f"{DATA / 'small_models.py'}:tiny_cnn"
    assert main(["apply", str(out / "plan.json"), other, "--out", str(tmp_path)]) == 2
    assert "hwprune: error:" in capsys.readouterr().err


def test_unconstrained_compile_reorders_verifies_and_reapplies(compiled, tmp_path, monkeypatch):
    _code, _out, cache = compiled
    monkeypatch.setenv("HWPRUNE_CACHE", str(cache))
    out = tmp_path / "out"
    # one round: the plan then follows from the table alone, not from how the rounds measured
    assert main(["compile", MODEL, "--latency", "0.5", "--unconstrained", "--allocation", "uniform", "--refine", "0",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["search"]["unconstrained"] and report["verify"]["ok"]
    plan = json.loads((out / "plan.json").read_text())
    readers = {gid: g["readers"] for gid, g in plan["width"].items() if g["readers"] is not None}
    assert set(readers) == set(report["search"]["segments"]) and readers
    for gid, reads in readers.items():  # each reader's channels lie in the kept union
        assert all(set(r) <= set(plan["width"][gid]["indices"]) for r in reads.values())
    assert any(len(r) < len(plan["width"][gid]["indices"]) for gid, reads in readers.items() for r in reads.values())
    copies = report["copies"]
    assert copies["pruned_without_reordering"] is not None
    assert copies["pruned"]["Gather"]["count"] <= copies["pruned_without_reordering"]["Gather"]["count"]
    assert "Copy ops" in (out / "report.md").read_text()
    again = tmp_path / "again"
    assert main(["apply", str(out / "plan.json"), MODEL, "--out", str(again)]) == 0
    x = np.random.default_rng(4).standard_normal((1, 3, 64, 64), dtype=np.float32)
    outputs = [ort.InferenceSession(str(path)).run(None, {"input": x})[0]
               for path in (out / "pruned.onnx", again / "pruned.onnx")]
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_unconstrained_needs_a_measurable_target(tmp_path, capsys):
    assert main(["compile", "--refine", "2",
                 MODEL, "--target", "jetson-orin-nano", "--latency", "0.6", "--unconstrained",
                 "--out", str(tmp_path)]) == 2
    assert "--unconstrained needs a target this host can measure" in capsys.readouterr().err


def test_artefacts_get_the_usual_mode_and_log_lines_stay_whole(compiled, tmp_path, capsys, monkeypatch):
    _code, out, cache = compiled
    mask = os.umask(0o022)
    os.umask(mask)
    for path in [p for p in out.rglob("*") if p.is_file()]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path.name
    table = tmp_path / ("x" * 60) / "table.json"  # a long table path, as CI machines have
    table.parent.mkdir()
    table.write_text((cache / "latency" / "cpu-onnxruntime.json").read_text())
    out = tmp_path / "out"
    assert main(["compile", MODEL, "--latency", "0.6", "--refine", "0", "--lut", str(table), "--out", str(out)]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith("  latency table ") and line.endswith(" new measurements") for line in lines)
    assert all(path.stat().st_mode & 0o777 == 0o666 & ~mask for path in out.rglob("*") if path.is_file())


@pytest.mark.skipif(importlib.util.find_spec("ultralytics") is None, reason="ultralytics not installed")
def test_ultralytics_compile_writes_a_checkpoint_ultralytics_loads(tmp_path):
    """A detector's compile also writes the pruned model as an Ultralytics checkpoint, which loads
    back (through hwprune's spec and so through Ultralytics) and computes what the verified ONNX
    does; the report has each head's cosine. A TensorRT target keeps it quick (nothing measured); at 64x64 a
    GPU is launch-bound (no depth options: Ultralytics' forward does not trace with torch.fx), hence a budget near 1."""
    from hwprune.export.verify import verify_onnx
    from hwprune.frontends import load_model

    argv = ["compile", "ultralytics:yolov8n.yaml", "--input-shape", "1,3,64,64", "--target", "a100",
            "--latency", "0.99", "--out", str(tmp_path)]
    assert main(argv) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["fidelity"]["per_output"]) == 2 and report["verify"]["ok"]
    reloaded = load_model(f"ultralytics:{tmp_path / 'pruned_ultralytics.pt'}", input_shape=(1, 3, 64, 64))
    pruned_params = sum(p.numel() for p in reloaded.module.parameters())
    assert pruned_params < sum(p.numel() for p in load_model("ultralytics:yolov8n.yaml").module.parameters())
    assert verify_onnx(reloaded.module, tmp_path / "pruned.onnx", [reloaded.example_input]).ok


def test_a_missed_budget_is_missed_in_the_console_report_json_report_md_and_the_plots(compiled, tmp_path, capsys,
                                                                                       monkeypatch):
    """One verdict everywhere: the pooled pairs are made to say "missed" (each doubled: 1.2 of the baseline for
    a request of 0.6), and every output states that one verdict from report.json's field."""
    import matplotlib.axes

    import hwprune.pipeline.finish as finish

    monkeypatch.setenv("HWPRUNE_CACHE", str(compiled[2]))
    judge = finish.judge
    monkeypatch.setattr(finish, "judge", lambda pairs, requested, tolerance: judge([2 * p for p in pairs], requested,
                                                                                     tolerance))
    titles = []
    set_title = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda ax, text, *a, **k: (titles.append(text),
                                                                                      set_title(ax, text, *a, **k))[1])
    out = tmp_path / "build"
    assert main(["compile", MODEL, "--target", "cpu", "--latency", "0.6", "--refine", "0", "--out", str(out)]) == 0
    console = capsys.readouterr()
    budget = json.loads((out / "report.json").read_text())["budget"]
    assert budget["verdict"] == "missed" and budget["interval"][0] > 0.63
    assert "Budget: missed" in console.out + console.err
    assert "**Budget: missed**" in (out / "report.md").read_text()
    assert "predicted vs measured: budget missed" in titles


def test_a_displaced_round_chosen_at_the_end_is_realised_again(tmp_path, monkeypatch, capsys):
    """Each round drops the models of the rounds before it (one pruned model in memory at a time); where the
    round chosen is not the last, its plan is realised again, and the file its round exported verifies
    against that model."""
    from hwprune.pipeline import compile as pipeline

    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pipeline, "pick", lambda rounds, requested: rounds[0])
    out = tmp_path / "build"
    assert main(["compile", "--refine", "1", "--refine-time", "600", "--tolerance", "0.0001", MODEL,
                 "--target", "cpu", "--latency", "0.6", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["search"]["attempts"]) == 2 and report["search"]["chosen"] == 0
    printed = capsys.readouterr()
    assert report["verify"]["ok"] and "realise the chosen round (0) again" in printed.out + printed.err
