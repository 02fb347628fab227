"""Golden compiles: whole ``hwprune compile`` runs whose plans are recorded, for the decisions the
first-round goldens (``tests/golden.py``) do not reach: merged spans, dropped blocks, N:M layers with
channel permutations, attention heads with grouped-query attention, tied widths and dropped layers.

Each case is driven through the command line (so the net holds however the code behind it is
rearranged) with ``--refine 0``: the plan is the first search round's, which depends on the latency
model and the depth costs alone. Both are recorded in ``data/golden/compiles/<case>/cache/`` (a
TensorRT target's latency model is the analytic one, so only its depth costs are): the test copies
them into its cache, and nothing is measured or scored anew. ``python -m tests.golden_compiles [CASE...]``
records cases anew (only when a change of plan is intended, and said so in the commit); with ``--plans``
first, only their plans, from the recorded caches (a change of plan format). ``plan-v2.json`` is the
same decision as the ``hwprune-plan/2`` code wrote it.

A model folder made by the test (the ``hf:`` case) is written ``{folder}`` in the recorded files; the
latency model's host-bound facts (its fingerprint, the onnxruntime version) are not decisions and
are left out of the comparison.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from contextlib import redirect_stderr
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import torch

from hwprune.cli import main
from tests.hf_models import tiny_config
from tests.recorded_tables import adopt_file

DATA = Path(__file__).parent / "data" / "golden" / "compiles"
HOST_BOUND = ("fingerprint", "runtime_version")  # of the plan's latency model: this host's, not a decision


def llama_folder(parent: Path) -> Path:
    """A 4-layer Llama-style decoder with grouped-query attention (4 query heads on 2 key/value heads) and
    tied embeddings, random weights, saved with ``save_pretrained``."""
    import transformers

    folder = parent / "llama"
    if not folder.exists():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            config = tiny_config("llama", num_hidden_layers=4, tie_word_embeddings=True)
            transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@dataclass(frozen=True)
class Case:
    model: Callable[[Path], str]  # the model spec, given a folder to build a model in
    args: tuple[str, ...]
    what: str  # the decisions it covers


CASES = {
    "small_resnet-joint": Case(lambda _: "tests/data/small_models.py:small_resnet",
                               ("--target", "jetson-orin-nano", "--latency", "0.5", "--search", "joint"),
                               "widths, a merged span and a dropped block (analytic latency)"),
    "small_resnet-depth-cpu": Case(lambda _: "tests/data/small_models.py:small_resnet",
                                   ("--target", "cpu", "--latency", "0.7", "--search", "depth"),
                                   "a dropped block priced by a measured table"),
    "wide_net-nm": Case(lambda _: "tests/data/nm_models.py:wide_net_permuted",
                        ("--target", "a100", "--latency", "0.9", "--search", "depth"),
                        "a 2:4 layer whose input group is permuted, and a merged span"),
    "llama-joint": Case(lambda parent: f"hf:{llama_folder(parent)}",
                        ("--input-shape", "1,64", "--target", "cpu", "--latency", "0.6", "--search", "joint"),
                        "tied MLP widths and heads (grouped-query units), dropped layers of the stack"),
}


def folder_of(spec: str) -> str | None:
    return spec[3:] if spec.startswith("hf:") else None


def compile_case(name: str, work: Path, cache: Path) -> tuple[int, Path, str]:
    """Run the case's compile with ``cache`` as its cache: (exit code, build folder, its log)."""
    case = CASES[name]
    spec = case.model(work)
    out = work / f"build-{name}"
    log = StringIO()
    previous = os.environ.get("HWPRUNE_CACHE")
    os.environ["HWPRUNE_CACHE"] = str(cache)
    try:
        with redirect_stderr(log):
            code = main(["compile", spec, *case.args, "--refine", "0", "--out", str(out)])
    finally:
        if previous is None:
            os.environ.pop("HWPRUNE_CACHE")
        else:
            os.environ["HWPRUNE_CACHE"] = previous
    return code, out, log.getvalue()


def recorded_cache(name: str, work: Path) -> Path:
    """The case's recorded cache copied into ``work``, its latency tables adopted by this host."""
    cache = work / f"cache-{name}"
    shutil.copytree(DATA / name / "cache", cache)
    folder = folder_of(CASES[name].model(work)) or ""
    for table in (cache / "latency").glob("*.json") if (cache / "latency").exists() else ():
        adopt_file(table, table, folder)
    return cache


def normalised(plan: dict, spec: str) -> dict:
    """The plan as recorded: the test's model folder as ``{folder}``, the host-bound facts left out."""
    folder = folder_of(spec)
    text = json.dumps(plan)
    if folder:
        text = text.replace(folder, "{folder}")
    data = json.loads(text)
    for key in HOST_BOUND:
        data["provenance"]["latency_model"].pop(key, None)
    return data


def golden_plan(name: str) -> Path:
    return DATA / name / "plan.json"


def record_plans(names: list[str]) -> None:
    """Compile each case named (every case where none is) from its recorded cache and keep its plan (a
    change of plan format: the decisions stay those of the recorded measurements)."""
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for name in names or CASES:
            code, out, log = compile_case(name, work, recorded_cache(name, work))
            if code != 0:
                raise SystemExit(f"{name}: compile failed:\n{log[-2000:]}")
            plan = normalised(json.loads((out / "plan.json").read_text()), CASES[name].model(work))
            golden_plan(name).write_text(json.dumps(plan, indent=1) + "\n")


def record(names: list[str]) -> None:
    """Compile each case named (every case where none is) on an empty cache and keep its cache and plan."""
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for name in names or CASES:
            case = CASES[name]
            cache = work / f"cache-{name}"
            code, out, log = compile_case(name, work, cache)
            if code != 0:
                raise SystemExit(f"{name}: compile failed:\n{log[-2000:]}")
            spec = case.model(work)
            target = DATA / name
            shutil.rmtree(target, ignore_errors=True)
            (target / "cache").mkdir(parents=True)
            for kind in ("latency", "depth"):
                if (cache / kind).exists():
                    shutil.copytree(cache / kind, target / "cache" / kind)
            for table in (target / "cache" / "latency").glob("*.json"):
                if folder_of(spec):
                    table.write_text(table.read_text().replace(folder_of(spec), "{folder}"))
            plan = normalised(json.loads((out / "plan.json").read_text()), spec)
            golden_plan(name).write_text(json.dumps(plan, indent=1) + "\n")
            print(f"{name}: {case.what}", file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--plans"]:
        record_plans(sys.argv[2:])
    else:
        record(sys.argv[1:])
