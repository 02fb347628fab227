"""Whole compiles make their recorded plans (merges, drops, N:M with permutations, heads, tied widths,
dropped layers; ``tests/golden_compiles.py``), and ``hwprune apply`` on each recorded plan file, v3 and
the v2 file of the same decision, builds the very model the compile built, verified."""

import json

import pytest
import torch

from hwprune.cli import main
from hwprune.plan import load_plan, plan_json
from tests.golden import assert_same_plan
from tests.golden_compiles import CASES, compile_case, folder_of, golden_plan, normalised, recorded_cache


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("golden-compiles")


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_compile_makes_the_recorded_plan_and_apply_rebuilds_its_model(name, work, capsys):
    if name.startswith("llama"):
        pytest.importorskip("transformers")
    code, out, log = compile_case(name, work, recorded_cache(name, work))
    assert code == 0, log[-2000:]
    assert "new measurements" not in log or " 0 new measurements" in log  # no op timed for the search
    assert ": 0 measured in" in log  # every depth cost recorded
    spec = CASES[name].model(work)
    plan = normalised(json.loads((out / "plan.json").read_text()), spec)
    recorded = json.loads(golden_plan(name).read_text())
    assert_same_plan(plan, recorded)
    assert json.loads((out / "report.json").read_text())["verify"]["ok"]
    compiled = torch.load(out / "pruned.pt", weights_only=True)
    for version, path in (("v3", golden_plan(name)), ("v2", golden_plan(name).with_name("plan-v2.json"))):
        again = work / f"{name}.{version}.json"
        again.write_text(path.read_text().replace("{folder}", folder_of(spec) or "{folder}"))
        assert_same_plan(normalised(plan_json(load_plan(again)), spec), plan)  # the same decisions, read back
        assert main(["apply", str(again), "--out", str(work / f"applied-{name}-{version}")]) == 0, \
            capsys.readouterr().err
        applied = torch.load(work / f"applied-{name}-{version}" / "pruned.pt", weights_only=True)
        assert compiled.keys() == applied.keys() and all(torch.equal(compiled[k], applied[k]) for k in compiled)
