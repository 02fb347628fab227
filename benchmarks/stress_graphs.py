"""Stress: random graphs with the couplings real models add, through analyze, trial pruning,
exact removal and ONNX export. Prints how many were pruned exactly, refused by name, silently
wrong (mismatch) or crashed; the last two must be zero.

    python benchmarks/stress_graphs.py [--graphs 1000] [--seed 0]

Graphs: tests/random_dags.py with ``EXTRA_KINDS`` (per-channel buffers in an SE gate, bare
parameters, a spatial map buffer, ConvTranspose, a split along height, a chunk along channels), up
to 7 ops, a global pooling head, 1x3x8x8 input; the property is tests/graph_property.py (the test suite runs it on
12 graphs). Hypothesis draws the graphs (no shrinking, no database), so a run is reproducible
from its seed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.graph_property import check_graph  # noqa: E402
from tests.random_dags import EXTRA_KINDS, random_dag_models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    outcomes: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    bad: list[str] = []
    groups = 0
    started = time.perf_counter()

    @seed(args.seed)
    @settings(max_examples=args.graphs, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(drawn=random_dag_models(heads=("gap",), extra=EXTRA_KINDS), pick=st.integers(0, 2**16))
    def run(drawn, pick):
        nonlocal groups
        model, x = drawn
        outcome = check_graph(model, x, pick)
        outcomes[outcome.kind] += 1
        groups += outcome.groups
        kinds.update({s.kind for s in model.specs} & set(EXTRA_KINDS))
        if outcome.kind in ("mismatch", "crash"):
            bad.append(f"{outcome.kind}: {outcome.detail} :: {model.extra_repr()}")

    run()
    seconds = time.perf_counter() - started
    total = sum(outcomes.values())
    print(f"{total} graphs in {seconds:.0f} s: " + ", ".join(f"{k} {outcomes[k]}" for k in
                                                          ("ok", "refused", "mismatch", "crash")))
    print(f"groups pruned exactly and exported: {groups}")
    print("graphs containing each extra kind: " + ", ".join(f"{k} {kinds[k]}" for k in EXTRA_KINDS))
    for line in bad[:20]:
        print(line)


if __name__ == "__main__":
    main()
