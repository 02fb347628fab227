"""Proof of prunability: a group the analyzer accepts but that breaks when pruned is refused at
analysis time, with the error, and compile goes on with the others instead of crashing mid-way."""

import json

import pytest

from hwprune.cli import main
from hwprune.graph.analyze import analyze
from hwprune.transform.trial import prove_prunable
from tests import DATA
from tests.data.small_models import shape_in_code, small_resnet

MODEL = f"{DATA / 'small_models.py'}:shape_in_code"


def test_the_group_a_per_channel_tensor_made_in_code_breaks_is_refused_and_the_rest_kept():
    analysis = analyze(*shape_in_code(), strict=False)
    assert analysis.group("body").prunable and analysis.group("stem").prunable  # what the trace alone says
    failed = prove_prunable(analysis)
    assert set(failed) == {"body"} and "size of tensor" in failed["body"]
    assert not analysis.group("body").prunable and "trial pruning failed" in analysis.group("body").reason
    assert analysis.group("stem").prunable


def test_a_model_that_prunes_cleanly_loses_nothing():
    analysis = analyze(*small_resnet())
    before = [g.id for g in analysis.prunable()]
    assert prove_prunable(analysis) == {} and [g.id for g in analysis.prunable()] == before


@pytest.mark.e2e
def test_analyze_reports_the_refusal_and_compile_prunes_the_rest(tmp_path, capsys, monkeypatch):
    assert main(["analyze", MODEL, "--json"]) == 0
    groups = {g["id"]: g for g in json.loads(capsys.readouterr().out)["groups"]}
    assert not groups["body"]["prunable"] and groups["body"]["reason"].startswith("trial pruning failed")
    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path / "cache"))
    assert main(["compile", MODEL, "--latency", "0.95", "--refine", "0", "--out", str(tmp_path / "out")]) == 0
    assert "group body: trial pruning failed" in capsys.readouterr().err
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert "body" not in plan["width"] and "stem" in plan["width"]


@pytest.mark.e2e
def test_an_unexpected_failure_mid_compile_names_its_step_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    import hwprune.pipeline.finish as compile_module

    def broken(*_args, **_kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setenv("HWPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(compile_module, "verified", broken)
    small = f"{DATA / 'small_models.py'}:small_resnet"
    assert main(["compile", small, "--latency", "0.6", "--refine", "0", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("hwprune: error: step 'verify' failed unexpectedly: IndexError: list index out of range "
                   "(rerun with --debug for the traceback)")
    assert list((tmp_path / "out").iterdir()) == []
