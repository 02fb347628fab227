"""The search's first-round plans for three models, constrained and unconstrained, are the recorded ones."""

import json
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

import hwprune
from hwprune.plan import load_plan, plan_json
from tests import ROOT
from tests.golden import (
    MODELS,
    assert_same_plan,
    first_round_plan,
    golden_model,
    golden_path,
    plan_text,
    recorded_table,
)


@pytest.mark.parametrize("unconstrained", [False, True], ids=["constrained", "unconstrained"])
@pytest.mark.parametrize("name", MODELS)
def test_first_round_plan_is_the_golden_one(name, unconstrained, tmp_path):
    table, scratch = recorded_table(tmp_path)
    plan = first_round_plan(name, unconstrained, table, scratch)
    assert not scratch.exists(), "the recorded table lacked a measurement: the plan would depend on timing now"
    assert_same_plan(json.loads(plan_text(plan)), json.loads(golden_path(name, unconstrained).read_text()))


@pytest.mark.parametrize("unconstrained", [False, True], ids=["constrained", "unconstrained"])
@pytest.mark.parametrize("name", MODELS)
def test_the_plans_older_versions_wrote_load_as_the_same_decision(name, unconstrained):
    """The ``hwprune-plan/2`` files (converted on read) decide exactly what the current golden plans decide;
    the ``hwprune-plan/1`` ones (width only) every index, reader and prediction."""
    new = load_plan(golden_path(name, unconstrained))
    v2 = load_plan(golden_path(name, unconstrained, "v2"))
    assert_same_plan(plan_json(v2), plan_json(new))
    old = load_plan(golden_path(name, unconstrained, "v1"))
    assert old.width == new.width and old.heads == new.heads
    assert_same_plan([old.predicted_ms, old.baseline_predicted_ms], [new.predicted_ms, new.baseline_predicted_ms])
    assert_same_plan(asdict(old.provenance.latency_model), asdict(new.provenance.latency_model))
    assert old.provenance.model == new.provenance.model and old.provenance.input_shape == new.provenance.input_shape
    assert old.provenance.state_sha256 is None and new.provenance.state_sha256 is not None


@pytest.mark.parametrize("threads,hash_seed", [("1", "0"), ("2", "4242")])
def test_the_golden_plan_is_the_same_under_other_thread_counts_and_hash_seeds(threads, hash_seed, tmp_path):
    """A CI runner sets threads and hashing its own way: the plan must not follow them."""
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONHASHSEED": hash_seed}
    code = ("import sys; from pathlib import Path; from tests.golden import *\n"
            "table, scratch = recorded_table(Path(sys.argv[1]))\n"
            "sys.stdout.write(plan_text(first_round_plan('resnet18', False, table, scratch)))\n")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert_same_plan(json.loads(run.stdout), json.loads(golden_path("resnet18", False).read_text()))


def test_apply_on_the_v1_v2_and_v3_files_of_one_decision_builds_the_same_verified_model(tmp_path):
    """The golden model passed in through the API: a v1 file (no digest to check), its v2 file and the current
    one rebuild the same pruned weights, each verified against its export."""
    model, x = golden_model("resnet18")
    built = []
    for version in ("v1", "v2", ""):
        applied = hwprune.apply(golden_path("resnet18", False, version), model, x, out=tmp_path / (version or "v3"))
        assert applied.verified_max_abs_err <= 1e-4
        built.append(applied.pruned_model.state_dict())
    for other in built[1:]:
        assert other.keys() == built[0].keys() and all(torch.equal(other[k], built[0][k]) for k in other)
