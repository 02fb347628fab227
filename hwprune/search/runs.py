"""Stack layers the joint search takes out, as the runs the plan holds (ReplaceMe, ``transform.linear_map``).

The search weighs each layer alone: kept, dropped, or replaced by a linear map folded into the layer
before it. Neighbouring layers it takes out form one run, and a run has one map, folded into the layer
before the run: so a run whose first layer is replaced is replaced whole (its map fitted over the whole
run; on the calibration data that fits at least as well as removing the rest plainly, the identity map
being the plain removal), and a run whose first layer is dropped plainly stays plain (the layer before
it was never weighed for a map).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from hwprune.plan import DroppedBlock


def as_runs(entries: Sequence[DroppedBlock]) -> tuple[DroppedBlock, ...]:
    """``entries`` with every stack layer's ``fold`` that of the first layer of its run."""
    stack = {entry.block: entry for entry in entries if entry.add is None}
    runs = []
    for entry in entries:
        if entry.add is None:
            head = entry.block
            while _previous(head) in stack:
                head = _previous(head)
            entry = replace(entry, fold=stack[head].fold)
        runs.append(entry)
    return tuple(runs)


def _previous(block: str) -> str | None:
    parent, _, index = block.rpartition(".")
    return f"{parent}.{int(index) - 1}" if index.isdigit() else None
