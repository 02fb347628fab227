"""benchmarks/gpu_evidence.py: its --smoke rehearsal runs every step on this CPU (cpu-torch) and writes
the JSON and markdown as it goes (its 2:4 step says that no sparse kernel ran, with no ratio); without a GPU
the real run exits 2 with one line."""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from tests import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_evidence.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_evidence", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs for real")
def test_without_a_gpu_it_exits_2_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("gpu_evidence.py: error: no CUDA GPU is visible to PyTorch")
    assert not (tmp_path / "out").exists()


def test_the_smoke_run_does_every_step_and_writes_as_it_goes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path / "unused"))  # the script points it at OUT/cache
    script = _script()
    out = tmp_path / "smoke"
    assert script.main(["--smoke", "--out", str(out)]) == 0
    evidence = json.loads((out / "evidence.json").read_text())
    steps = evidence["steps"]
    assert list(steps) == [name for name, _ in script.STEPS]
    assert evidence["smoke"] and evidence["environment"]["target"] == "cpu-torch"
    assert {name: steps[name]["status"] for name in steps} == {name: "ok" for name in steps}
    sparse = steps["sparse_24"]
    assert list(sparse["models"]) == ["tiny_wide_mlp", "tiny_llama_mlp"]
    for found in sparse["models"].values():  # everything up to the kernel ran; no number claims a sparse kernel
        assert found["compile"]["status"] == "ok" and found["compile"]["verified"] and found["compile"]["chosen"] == []
        assert "CUDA GPUs only" in found["compile"]["check"]["reason"] and found["compile"]["check"]["offered"] == 0
        ab = found["all_linear_2_4"]
        assert ab["kernels"]["sparse_kernel"] == [] and ab["kernels"]["dense_kernel"]
        assert "sparse_over_dense" not in ab and ab["says"].startswith("no sparse kernel ran, so no ratio")
    assert sparse["says"].startswith("no sparse kernel ran")
    assert steps["profile"]["entries"] > 0 and (out / "profile_table.json").exists()
    for name, batch in (("compile_b1", 1), ("compile_b32", 4), ("joint", 1)):
        found = steps[name]
        assert found["batch"] == batch and found["verified"] and found["verify_max_abs_err"] <= 1e-4
        assert found["measurement"]["runtime"].startswith("PyTorch") and found["pruned_ms"] > 0
        assert (out / name / "report.json").exists()
    assert steps["llama"]["prefill_ms"] > 0 and steps["llama"]["decode_ms_per_token"] > 0
    rows = steps["analytic_trt"]["rows"]
    assert "comparison across runtimes" in steps["analytic_trt"]["label"]
    assert [r["batch"] for r in rows] == [1, 4] and all(r["predicted_by"] == "analytic" for r in rows)
    assert rows[0]["pytorch_measured_baseline_ms"] == steps["compile_b1"]["baseline_ms"]
    table = (out / "evidence.md").read_text()
    assert table.startswith("# GPU evidence (smoke run on the CPU)") and "| sparse_24 | ok" in table
    assert capsys.readouterr().out == table


def test_a_step_past_its_deadline_says_so():
    script = _script()

    def forever():
        while True:
            pass

    result = script.run_step(forever, 1)
    assert result["status"] == "deadline: stopped after 1 s" and result["seconds"] >= 1
    assert script.run_step(lambda: 1 / 0, 5)["status"].startswith("error: ZeroDivisionError")
