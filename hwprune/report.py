"""A compile's report, typed: the evidence as dataclasses with a versioned JSON form (``to_json``).

``render`` turns it into ``report.md`` and plots; the CLI prints from it. Everything reads it by
attribute, so a renamed field fails loudly instead of printing a wrong number.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from hwprune._version import __version__
from hwprune.cost.predictor import TablePredictor
from hwprune.evaluate.calibration import Fidelity
from hwprune.export.verify import Verification
from hwprune.frontends import LoadedModel
from hwprune.graph.analyze import Analysis
from hwprune.plan import Sparsity
from hwprune.runtime.timing import Comparison
from hwprune.search.decide import SearchProblem
from hwprune.search.refine import Round
from hwprune.search.verdict import Outcome, Verdict

FORMAT = "hwprune-report/1"


@dataclass
class LatencyStats:
    median: float
    p90: float
    p99: float
    spread: float


@dataclass
class Side:
    latency_ms: LatencyStats | None  # measured; None where nothing could be measured
    predicted_ms: float
    flops: int
    params: int


@dataclass
class BudgetSection:
    kind: str
    value: float
    latency_fraction: float
    tolerance: float
    # met, missed, undecided or not measured (search.verdict): the one verdict every output states
    verdict: str
    # the median of every interleaved pair measured on the chosen model (its round's and the final run's)
    measured_fraction: float | None = None
    interval: list[float] | None = None  # its 95% confidence interval
    pairs: int = 0
    more_pairs: int | None = None  # undecided: about how many more pairs would decide

    @property
    def met(self) -> bool:
        return self.verdict == Outcome.MET.value


@dataclass
class Speedup:
    predicted: float
    predicted_by: str  # the latency model's source: lut, shipped or analytic
    measured: float | None  # 1 / the budget's measured fraction (the pooled pairs' median)
    measured_ratio_spread: float | None
    measured_interval: list[float] | None = None  # the measured speedup's 95% confidence interval


@dataclass
class FidelitySection:
    cosine: float
    top1_agreement: float | None
    samples: int
    inputs: str
    caveat: str | None
    per_output: list[float] | None  # each output's cosine, for models with several (detection heads)
    box_agreement: float | None = None  # detectors on the user's images: F1 of matching boxes
    kl: float | None = None  # models returning logits: mean KL (nats) from the unpruned model's, per position
    perplexity: dict[str, float] | None = None  # a language model on the user's text: unpruned and pruned


@dataclass
class CandidateRow:
    strategy: str
    predicted_ms: float
    cosine: float
    top1_agreement: float | None
    score: float


@dataclass
class AttemptRow:
    predicted_budget_ms: float
    predicted_ms: float
    measured_fraction: float | None
    search_seconds: float
    strategy: str
    knapsack_rounds: int


@dataclass
class SearchSection:
    importance: str
    importance_fallbacks: list[str]
    allocation: str
    strategy: str
    unconstrained: bool
    segments: list[str]
    candidates: list[CandidateRow]
    candidates_round: int | None  # the round whose strategies were scored (later rounds searched with its winner)
    min_keep: float
    groups: int
    baseline_predicted_ms: float
    chosen: int  # index into attempts
    attempts: list[AttemptRow]


@dataclass
class LayerRow:
    name: str
    baseline_predicted_ms: float
    pruned_predicted_ms: float


@dataclass
class GroupRow:
    id: str
    keep: int
    of: int
    sensitivity: float | None


@dataclass
class Engine:
    path: str | None
    reason: str  # what was built, or why nothing was


@dataclass
class DecodeSection:
    """Per-token decode latency of an ``hf:`` decoder with a KV cache of ``past_length`` positions (the prefill's
    sequence length) at ``batch``, baseline and pruned, timed interleaved after the search (which targets
    prefill). ``reason``: why it was not exported, verified or measured, one line; no number stands in for it."""

    batch: int
    past_length: int
    measured: bool
    reason: str | None
    baseline_ms: LatencyStats | None
    pruned_ms: LatencyStats | None
    ratio: float | None  # median over rounds of (pruned / baseline)
    ratio_spread: float | None
    rounds: int
    past_shapes: dict[str, list[list[int]]]  # per model, each cached layer's past keys' shape (values alike)
    verify: dict[str, dict]  # per model, the exported step against PyTorch on random tokens and caches
    files: list[str]
    search: str = "the search targets prefill latency; decode is measured after it, not searched for"

    @property
    def speedup(self) -> float | None:
        return None if not self.ratio else 1.0 / self.ratio


@dataclass
class Report:
    """The evidence of one compile: what was asked, what was measured and predicted, and by what."""

    hwprune: str
    model: str
    weights: dict
    input_shape: list[int]
    target: str
    budget: BudgetSection
    baseline: Side
    pruned: Side
    speedup: Speedup
    verify: Verification
    fidelity: FidelitySection
    bn_recalibration: bool
    search: SearchSection
    measurement: dict
    measured: bool
    latency_model: dict
    layers: list[LayerRow]
    groups: list[GroupRow]
    export: dict
    engine: Engine
    fingerprint: dict
    seconds: float
    copies: dict | None = None
    # Depth decisions: layer counts before and after, each merged span and dropped block with its
    # predicted time and measured fidelity cost (importance.option_costs).
    depth: dict | None = None
    # N:M sparsity: what pricing found (and why none, when none), each chosen layer's predicted time
    # dense and sparse and its cost, each permuted group's retained magnitude, the exported
    # weights' check, and which layers the built engine really runs sparse (None: not built here).
    sparsity: dict | None = None
    decode: DecodeSection | None = None  # hf: decoders: per-token decode latency with a KV cache
    # wall seconds per stage (each step's, summed over rounds; "other": the rest of ``seconds``)
    stages: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"format": FORMAT, **asdict(self)}


@dataclass
class Checked:
    """The verify stage: the export against the pruned module, fidelity, N:M in the exported weights."""

    verification: Verification
    quality: Fidelity
    calibration_source: str
    onnx_nm: dict[str, dict]


@dataclass
class Measured:
    """The measure stage: the chosen model against the baseline, interleaved (None where this host cannot
    run the target: ``unavailable`` says why), the host's fingerprint, and a decoder's decode step."""

    final: Comparison | None
    method: dict | None  # the runtime's measurement settings, where measured
    unavailable: str | None
    fingerprint: dict
    verdict: Verdict
    decode: DecodeSection | None = None


@dataclass
class Built:
    """What else the pipeline made: engines (and which layers run sparse), the exports' copy ops, the pruned
    model's size, what the baseline is and how the models were exported."""

    engine_path: str | None
    engine_note: str
    engine_sparse: list[str] | None  # None: no engine built here
    copies: dict
    flops: int
    params: int
    baseline_source: str
    exporter: str  # torch's exporter that wrote the ONNX files: "torchscript" or "dynamo"
    opset: int
    slimmed: bool


def build_report(loaded: LoadedModel, analysis: Analysis, options, predictor: TablePredictor, search: SearchProblem,
                 rounds: list[Round], chosen: Round, checked: Checked, measured: Measured, built: Built,
                 seconds: float, stages: dict[str, float]) -> Report:
    """The report of a compile, from its stages' results alone: nothing is run, exported or measured here."""
    x = analysis.capture.example_input
    plan = chosen.decision.plan
    fraction = plan.provenance.budget.latency_fraction
    baseline_predicted = predictor.predict({}).total_ms
    final, quality = measured.final, checked.quality

    def side(index: int, predicted_ms: float, flops: int, params: int) -> Side:
        timing = None if final is None else final.timings[index]
        stats = None if timing is None else LatencyStats(timing.median_ms, timing.p90_ms, timing.p99_ms, timing.spread)
        return Side(stats, predicted_ms, flops, params)

    method = (dict(measured.method) if measured.method is not None else
              {"runtime": None, "method": f"not measured: {measured.unavailable or built.engine_note}"})
    if loaded.capabilities.decode_step:  # an hf: decoder
        method["phase"] = _phase(x.shape[0], x.shape[1], measured.decode)
    latency_model = predictor.provenance()
    table = predictor.table.provenance
    decision = chosen.decision
    verdict = measured.verdict
    scores = search.scores
    scored = next((r for r in rounds if r.decision.candidates), None)
    search_section = SearchSection(
        scores.importance.method, scores.importance.fallbacks, options.allocation, decision.strategy,
        options.unconstrained, sorted(scores.reader_scores),
        [CandidateRow(c.strategy, c.search.predicted_ms, c.quality.cosine, c.quality.top1_agreement, c.score)
         for c in scored.decision.candidates] if scored else [],
        rounds.index(scored) if scored else None,
        options.min_keep, len(plan.groups()), baseline_predicted, rounds.index(chosen),
        [AttemptRow(r.predicted_budget_ms, r.decision.plan.predicted_ms, r.fraction, r.decision.search.seconds,
                    r.decision.strategy, r.decision.search.rounds) for r in rounds])
    return Report(
        __version__, loaded.name, {"source": loaded.weights, "seed": loaded.seed,
                                   "state_sha256": plan.provenance.state_sha256},
        list(x.shape), options.target.name,
        BudgetSection(options.budget.kind, options.budget.value, fraction, verdict.tolerance, verdict.outcome.value,
                      verdict.fraction, None if verdict.low is None else [verdict.low, verdict.high], verdict.pairs,
                      verdict.more_pairs),
        side(0, baseline_predicted, analysis.capture.flops, analysis.capture.params),
        side(1, plan.predicted_ms, built.flops, built.params),
        Speedup(baseline_predicted / plan.predicted_ms, latency_model.source,
                None if verdict.fraction is None else 1.0 / verdict.fraction,
                None if final is None else final.ratio_spread[1],
                None if verdict.speedup_interval is None else list(verdict.speedup_interval)),
        checked.verification,
        FidelitySection(quality.cosine, quality.top1_agreement, quality.samples, checked.calibration_source,
                        quality.caveat, quality.per_output, quality.box_agreement, quality.kl, quality.perplexity),
        plan.bn_recalibration, search_section, method, final is not None,
        {"kind": latency_model.source, "fingerprint": table.get("fingerprint"), "created": table.get("created"),
         "host": table.get("host"), "layer_scale": predictor.layer_scale, "rest_ms": predictor.rest_ms},
        _layer_rows(predictor, decision.search.counts, decision.search.depth),
        [GroupRow(gid, d.keep, d.of, scores.sensitivity.get(gid)) for gid, d in plan.groups().items()],
        {"exporter": built.exporter, "opset": built.opset, "dynamic_batch": options.dynamic_batch,
         "slimmed": built.slimmed,
         "baseline": built.baseline_source},
        Engine(built.engine_path, built.engine_note), measured.fingerprint, seconds, built.copies,
        depth_section(analysis.model, chosen.realised.model, predictor, decision.search, scores.depth_costs,
                      scores.influence),
        sparsity_section(predictor, decision.search, scores.depth_costs, plan.sparsity, options.sparsity,
                         checked.onnx_nm, built.engine_sparse, built.engine_note),
        measured.decode, {**stages, "other": max(seconds - sum(stages.values()), 0.0)})


def _phase(batch: int, tokens: int, decode: DecodeSection | None) -> str:
    """What a decoder's measurement timed: prefill always, decode where its step was exported and measured."""
    prefill = f"prefill, {tokens} tokens x batch {batch} in one forward"
    if decode is not None and decode.measured:
        return (f"{prefill}, and decode, one token per step against a KV cache of {decode.past_length} past "
                f"positions x batch {decode.batch}: both measured (decode in its own section); the latency model "
                "predicts, and the search targets, prefill latency only")
    why = decode.reason if decode is not None else "not exported"
    return f"{prefill}; per-token decode with a KV cache is not measured ({why}), nor predicted"


def depth_section(original: nn.Module, pruned: nn.Module, predictor: TablePredictor, result, costs: dict[str, float],
                  influence: dict[str, float] | None = None) -> dict:
    """What depth decisions did: conv/linear layers before and after, and per option its predicted
    time at the chosen widths (merged conv against its parts; a block's layers saved) and its cost;
    for a layer stack, every layer's block influence beside its cost, whether dropped or not."""
    view = predictor.with_depth(result.depth)
    full, taken = predictor.predict(result.counts).layers_ms, view.predict(result.counts).layers_ms
    merges, drops = [], []
    for key in sorted(result.depth):
        option = predictor.options[key]
        if option.kind == "sparse":
            continue
        parts_ms = sum(full[name] for name in option.removes)
        row = {**asdict(option.choice), "cost": costs.get(key), "parts_predicted_ms": parts_ms}
        if option.adds:
            merged = option.adds[0]
            sig = merged.signature
            row.update(merged_predicted_ms=taken[merged.name],
                       shape=f"{sig.kernel}x{sig.kernel}/{sig.stride} {sig.c_in}->{sig.c_out}"
                             + (" dw" if merged.depthwise else ""))
            merges.append(row)
        else:
            drops.append(row)
    dropped = {row["block"] for row in drops}
    stack = [{"block": name, "influence": score, "cost": costs.get(f"drop:{name}"), "dropped": name in dropped}
             | ({"replace_cost": costs[f"replace:{name}"]} if f"replace:{name}" in costs else {})
             for name, score in sorted((influence or {}).items(), key=lambda item: item[1])]
    return {"layers_before": _timed_layers(original), "layers_after": _timed_layers(pruned), "merged": merges,
            "dropped": drops, "options_priced": len(predictor.options), "options_costed": len(costs),
            "stack_layers": stack}


def sparsity_section(predictor: TablePredictor, result, costs: dict[str, float], plan_sparsity: Sparsity, mode: str,
                     onnx_check: dict[str, dict], engine_sparse: list[str] | None, engine_note: str) -> dict:
    """What N:M did: the pricing check, each chosen layer (predicted dense and N:M time at the chosen
    widths, labelled by the latency model's source, and its cost), each permuted group's retained
    magnitude without and with its permutation, and the evidence after export and build."""
    check = predictor.sparsity
    view = predictor.with_depth(result.depth)
    full, taken = predictor.predict(result.counts).layers_ms, view.predict(result.counts).layers_ms
    rows = []
    for key in sorted(result.depth):
        option = predictor.options[key]
        if option.kind != "sparse":
            continue
        layer = option.name
        dense_ms, sparse_ms = full[layer], taken[option.adds[0].name]
        node = onnx_check.get(layer, {}).get("node")
        chosen = plan_sparsity.layers.get(layer)
        rows.append({"layer": layer, "pattern": f"{option.choice.n}:{option.choice.m}", "cost": costs.get(key),
                     "criterion": None if chosen is None else chosen.criterion,
                     "dense_ms": dense_ms, "sparse_ms": sparse_ms, "saving_ms": dense_ms - sparse_ms,
                     "source": check.source if check else None, "onnx_node": node,
                     "onnx_nm": onnx_check.get(layer, {}).get("nm"),
                     "engine_sparse": None if engine_sparse is None else any(node and node in name
                                                                             for name in engine_sparse)})
    groups = [{"group": gid, "readers": list(stats.readers), "dense": stats.dense,
               "retained_identity": stats.identity / stats.dense, "retained_permuted": stats.permuted / stats.dense}
              for gid, stats in plan_sparsity.magnitude.items()]
    engine = ({"built": False, "note": f"which layers run sparse kernels is known only from a built engine: "
                                       f"{engine_note}"} if engine_sparse is None else
              {"built": True, "sparse_layers": engine_sparse})
    return {"mode": mode, "check": check.to_json() if check else None, "layers": rows, "permuted_groups": groups,
            "engine": engine}


def _timed_layers(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.Linear)
               for m in model.modules())


def _layer_rows(predictor: TablePredictor, counts: dict[str, int], depth: frozenset[str] = frozenset()
                ) -> list[LayerRow]:
    """Per layer, predicted before and after (0 for a layer merged or dropped; a merged conv is a row of its own)."""
    before, after = predictor.predict({}).layers_ms, predictor.with_depth(depth).predict(counts).layers_ms
    return [LayerRow(name, before.get(name, 0.0), after.get(name, 0.0)) for name in {**before, **after}]
