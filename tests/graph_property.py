"""One graph through the whole analyzer-to-export path, classified: the property that the stress
benchmark (benchmarks/stress_graphs.py, 1,000 graphs) and the test suite (a few) both check.

Path: analyze -> trial pruning (proof of prunability) -> zero a random subset of every exactly
removable prunable group's channels -> remove exactly those -> compare outputs -> export the
pruned model to ONNX and verify it against PyTorch. Outcomes:

* ``ok``: pruned, exact, exported and verified (``groups`` were pruned);
* ``refused``: nothing prunable, every refusal named (an analysis error with a message, or groups
  reported not prunable with a reason);
* ``mismatch``: removal was not exact, or the ONNX did not match (a silent wrong result: a bug);
* ``crash``: any other exception (a bug).
"""

from __future__ import annotations

import copy
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from hwprune.errors import HwpruneError, first_line
from hwprune.evaluate.mask import silenced
from hwprune.export.onnx_export import export_onnx
from hwprune.export.verify import verify_onnx
from hwprune.graph.analyze import analyze
from hwprune.transform.prune import prune
from hwprune.transform.trial import prove_prunable
from tests.pruning_helpers import max_abs_diff, random_keep

TOLERANCE = 1e-4


@dataclass
class Outcome:
    kind: str  # ok | refused | mismatch | crash
    detail: str = ""
    groups: int = 0


def check_graph(model: torch.nn.Module, x: torch.Tensor, seed: int) -> Outcome:
    try:
        return _check(model, x, seed)
    except HwpruneError as exc:
        return Outcome("refused", f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # the point is to catch what nothing else named
        return Outcome("crash", first_line(exc))


def _check(model: torch.nn.Module, x: torch.Tensor, seed: int) -> Outcome:
    analysis = analyze(copy.deepcopy(model), x, "graph", strict=False)
    prove_prunable(analysis)
    groups = [g for g in analysis.prunable() if g.exact_removal]
    if not groups:
        unnamed = [g.id for g in analysis.groups if not g.prunable and not g.reason]
        return Outcome("crash" if unnamed else "refused", f"refused without a reason: {unnamed}" if unnamed else "")
    rng = random.Random(seed)
    keep = {g.id: random_keep(g, rng) for g in groups}
    dropped = {gid: sorted(set(range(analysis.group(gid).channels)) - set(kept)) for gid, kept in keep.items()}
    with silenced(analysis, dropped) as masked, torch.no_grad():
        reference = _cloned(masked(x))
    pruned = prune(analysis, keep).eval()
    with torch.no_grad():
        error = max_abs_diff(reference, pruned(x))
    scale = max(1.0, max(float(t.abs().max()) for t in _tensors(reference)))
    if error > TOLERANCE * scale:
        return Outcome("mismatch", f"removal not exact: max abs error {error:.3g}", len(groups))
    with tempfile.TemporaryDirectory(prefix="hwprune-stress-") as tmp:
        verification = verify_onnx(pruned, export_onnx(pruned, x, Path(tmp) / "m.onnx"), [x])
    if not verification.ok:
        return Outcome("mismatch", f"ONNX does not match: {verification.worst}", len(groups))
    return Outcome("ok", "", len(groups))


def _tensors(output: object) -> list[torch.Tensor]:
    """The tensors of a model output (a detector returns several)."""
    return list(output) if isinstance(output, tuple | list) else [output]


def _cloned(output: object) -> object:
    return tuple(t.clone() for t in output) if isinstance(output, tuple | list) else output.clone()
