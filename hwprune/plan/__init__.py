"""A pruning decision as plain, typed data (``sections``) and its JSON file (``document``).

The search is the only author of a Plan and the transform passes its only reader; this package
imports nothing of hwprune but errors and io.
"""

from hwprune.plan.document import FORMAT, load_plan, plan_from_json, plan_json, save_plan
from hwprune.plan.sections import (
    DroppedBlock,
    LatencyModelInfo,
    MergedSpan,
    NMLayer,
    PermutationGain,
    Plan,
    PlanBudget,
    Provenance,
    Recovery,
    Sparsity,
    WidthDecision,
)

__all__ = ["FORMAT", "DroppedBlock", "LatencyModelInfo", "MergedSpan", "NMLayer", "PermutationGain", "Plan",
           "PlanBudget", "Provenance", "Recovery", "Sparsity", "WidthDecision", "load_plan", "plan_from_json",
           "plan_json", "save_plan"]
