"""The human side of a report: ``report.md`` and PNG plots (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

from hwprune.report import BudgetSection, DecodeSection, Report, SearchSection, Side

PLOTS = ("layer_latency.png", "channels_kept.png", "predicted_vs_measured.png")


def write_plots(report: Report, folder: Path) -> list[Path]:
    """Per-layer predicted latency before/after, channels kept per group, predicted vs measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []

    layers = report.layers
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(layers)), 5))
    positions = range(len(layers))
    ax.bar([p - 0.2 for p in positions], [r.baseline_predicted_ms for r in layers], 0.4, label="baseline")
    ax.bar([p + 0.2 for p in positions], [r.pruned_predicted_ms for r in layers], 0.4, label="pruned")
    ax.set_xticks(list(positions), [r.name for r in layers], rotation=90, fontsize=6)
    ax.set_ylabel("predicted ms (in-model, calibrated)")
    ax.set_title(f"{_short(report.model)} on {report.target}: per-layer latency")
    ax.legend()
    fig.tight_layout()
    written.append(_save(fig, folder / PLOTS[0], plt))

    groups = report.groups
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(groups)), 4))
    ax.bar(range(len(groups)), [g.of for g in groups], color="lightgray", label="channels")
    ax.bar(range(len(groups)), [g.keep for g in groups], label="kept")
    ax.set_xticks(range(len(groups)), [g.id for g in groups], rotation=90, fontsize=6)
    ax.set_ylabel("channels (heads for attention)")
    ax.set_title("channels kept per group")
    ax.legend()
    fig.tight_layout()
    written.append(_save(fig, folder / PLOTS[1], plt))

    attempts = [a for a in report.search.attempts if a.measured_fraction is not None]
    baseline_predicted = report.search.baseline_predicted_ms
    fig, ax = plt.subplots(figsize=(5, 5))
    predicted = [a.predicted_ms / baseline_predicted for a in attempts]
    measured = [a.measured_fraction for a in attempts]
    ax.scatter(predicted, measured, label="search rounds")
    if report.speedup.measured is not None:
        ax.scatter([1 / report.speedup.predicted], [1 / report.speedup.measured], marker="*", s=200,
                   label="chosen (every pair measured on it)")
    else:
        ax.text(0.5, 0.5, f"not measured:\n{report.engine.reason}", ha="center", va="center", wrap=True,
                fontsize=7, transform=ax.transAxes)
    low, high = 0.0, 1.05 * max(predicted + measured + [1.0])
    ax.plot([low, high], [low, high], "k--", linewidth=0.8, label="predicted = measured")
    budget = report.budget
    ax.axhline(budget.latency_fraction, color="red", linewidth=0.8, label="requested")
    ax.axhspan(budget.latency_fraction * (1 - budget.tolerance), budget.latency_fraction * (1 + budget.tolerance),
               color="red", alpha=0.1, label=f"band ±{100 * budget.tolerance:.0f}%")
    if budget.interval is not None:
        low, high = budget.interval
        ax.errorbar([1 / report.speedup.predicted], [budget.measured_fraction], color="black", capsize=4,
                    yerr=[[budget.measured_fraction - low], [high - budget.measured_fraction]],
                    label="95% interval (pooled pairs)")
    ax.set_xlabel("predicted latency / baseline")
    ax.set_ylabel("measured latency / baseline (interleaved)")
    ax.set_title(f"predicted vs measured: budget {budget.verdict}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(_save(fig, folder / PLOTS[2], plt))
    return written


def _save(fig, path: Path, plt) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(report: Report) -> str:
    """A summary a new user can read: what was asked, what was measured, how far to trust it."""
    base, pruned = report.baseline, report.pruned
    fid, verify, speed = report.fidelity, report.verify, report.speedup
    measured = speed.measured is not None
    top1 = "n/a" if fid.top1_agreement is None else f"{100 * fid.top1_agreement:.1f}%"
    budget = report.budget
    lines = [
        f"# hwprune report: {report.model} on {report.target}",
        "",
        f"Requested: {budget.kind} {budget.value:g} (latency {budget.latency_fraction:.3f} of the "
        f"baseline, tolerance ±{100 * budget.tolerance:.0f}%). Baseline: "
        f"{report.export.get('baseline', 'exported from the model')}.",
        "",
        verdict_line(budget),
        "",
        "| | baseline | pruned |",
        "|---|---:|---:|",
        f"| measured latency median (ms) | {_ms(base, 'median')} | {_ms(pruned, 'median')} |",
        f"| measured latency p90 (ms) | {_ms(base, 'p90')} | {_ms(pruned, 'p90')} |",
        f"| predicted latency (ms, {speed.predicted_by}) | {base.predicted_ms:.3f} | "
        f"{pruned.predicted_ms:.3f} |",
        f"| GFLOPs | {base.flops / 1e9:.3f} | {pruned.flops / 1e9:.3f} |",
        f"| parameters (M) | {base.params / 1e6:.3f} | {pruned.params / 1e6:.3f} |",
        "",
        _speed_line(report) if measured else
        f"**Not measured**: {report.engine.reason}. Predicted speedup {speed.predicted:.2f}x by the "
        f"{speed.predicted_by} latency model only; measure on the device before relying on it.",
        "",
        f"**Wall time** {report.seconds:.1f} s: "
        + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in report.stages.items()) + ".",
        "",
        *_decode_lines(report.decode),
        f"**Verification**: the exported `pruned.onnx` matches the pruned PyTorch model on {verify.inputs} random "
        f"inputs: max abs error {verify.max_abs_err:.3g} (atol {verify.atol:g}, rtol {verify.rtol:g}): "
        f"{'pass' if verify.ok else 'FAIL'}.",
        "",
        f"**Fidelity** to the unpruned model on {fid.samples} samples ({fid.inputs}): mean output cosine "
        f"{fid.cosine:.4f}, top-1 agreement {top1}."
        + (f" KL divergence from the unpruned model's output distribution, per position: {fid.kl:.4g} nats."
           if fid.kl is not None else "")
        + (f" Perplexity of the next token on the calibration text: {fid.perplexity['baseline']:.4g} unpruned, "
           f"{fid.perplexity['pruned']:.4g} pruned." if fid.perplexity else "")
        + (" Per output: " + ", ".join(f"{c:.4f}" for c in fid.per_output) + "." if fid.per_output else "")
        + (f" Box agreement (F1 of boxes of the same class at IoU >= 0.5, on the calibration images): "
           f"{fid.box_agreement:.3f}." if fid.box_agreement is not None else "")
        + (f" Caveat: {fid.caveat}." if fid.caveat else "")
        + " Without real calibration data this is measured on noise; validate on real data before deploying.",
        "",
        f"**Engine**: {report.engine.path or 'not built'}"
        + (f" ({report.engine.reason})" if report.engine.reason else "") + ".",
        "",
        _copies_line(report.copies),
        "",
        *_depth_lines(report.depth),
        *_sparsity_lines(report.sparsity),
        f"Search: importance {report.search.importance}, {report.search.groups} groups, allocation "
        f"{report.search.strategy}"
        + (f" ({_candidates(report.search)})" if report.search.candidates else "")
        + (", unconstrained (each reader of a segment keeps its own channels)" if report.search.unconstrained
           else "")
        + f", {len(report.search.attempts)} round(s) of search"
        + (" + measurement." if measured else "."),
        "",
        "| round | predicted budget (ms) | predicted (ms) | measured latency fraction |",
        "|---:|---:|---:|---:|",
    ]
    for n, attempt in enumerate(report.search.attempts, 1):
        fraction = "-" if attempt.measured_fraction is None else f"{attempt.measured_fraction:.3f}"
        lines.append(f"| {n} | {attempt.predicted_budget_ms:.3f} | {attempt.predicted_ms:.3f} | {fraction} |")
    lines += ["", "Plots: " + ", ".join(f"![{name}](plots/{name})" for name in PLOTS), ""]
    return "\n".join(lines)


def _depth_lines(depth: dict | None) -> list[str]:
    """The merged spans and dropped blocks (nothing when the plan has none), and a layer stack's scores."""
    if not depth:
        return []
    if not (depth["merged"] or depth["dropped"]):
        return _stack_lines(depth.get("stack_layers") or [])
    lines = [f"**Depth**: {depth['layers_before']} -> {depth['layers_after']} conv/linear layers; "
             f"{len(depth['merged'])} span(s) merged, {len(depth['dropped'])} block(s) dropped (cost: 1 - output "
             "cosine with that choice alone, measured on the calibration inputs; times predicted at the chosen "
             "widths).", "",
             "| decision | layers | becomes | predicted ms (parts -> now) | cost |", "|---|---|---|---:|---:|"]
    for row in depth["merged"]:
        skip = " + skip" if row.get("skip") else ""
        lines.append(f"| merged{skip} | {', '.join(row['convs'])} | {row['shape']} | "
                     f"{row['parts_predicted_ms']:.4f} -> {row['merged_predicted_ms']:.4f} | {row['cost']:.2g} |")
    for row in depth["dropped"]:
        lines.append(f"| dropped | {row['block']} | x | {row['parts_predicted_ms']:.4f} -> 0 | {row['cost']:.2g} |")
    return [*lines, "", *_stack_lines(depth.get("stack_layers") or [])]


def _stack_lines(rows: list[dict]) -> list[str]:
    """Every layer of a layer stack with its block influence and its measured cost, least influential first."""
    if not rows:
        return []
    lines = ["Layers of the stack, least influential first (block influence: 1 - cosine of the layer's input and "
             "output hidden states, Minitron's ranking; cost: 1 - output cosine with the layer removed, what the "
             "search weighs):", "", "| layer | block influence | cost | dropped |", "|---|---:|---:|---|"]
    for row in rows:
        cost = "n/a" if row["cost"] is None else f"{row['cost']:.3g}"
        lines.append(f"| {row['block']} | {row['influence']:.3g} | {cost} | {'yes' if row['dropped'] else ''} |")
    return [*lines, ""]


def _decode_lines(decode: DecodeSection | None) -> list[str]:
    """A decoder's per-token decode latency with a KV cache, baseline and pruned, or why it is not measured."""
    if decode is None:
        return []
    where = f"one token per step against a KV cache of {decode.past_length} past positions, batch {decode.batch}"
    layers = {name: len(shapes) for name, shapes in decode.past_shapes.items()}
    verify = "; ".join(f"{name} max abs error {v['max_abs_err']:.3g} on {v['inputs']} random tokens and caches "
                       f"({'pass' if v['ok'] else 'FAIL'})" for name, v in decode.verify.items())
    checked = f" Decode steps (`{'`, `'.join(decode.files)}`) against PyTorch: {verify}." if verify else ""
    if not decode.measured:
        return [f"**Decode** ({where}): not measured: {decode.reason}.{checked}", ""]
    base, pruned = decode.baseline_ms, decode.pruned_ms
    return [f"**Decode** ({where}; {decode.search}): measured speedup {decode.speedup:.2f}x per token "
            f"(spread of the per-round ratio {100 * decode.ratio_spread:.1f}%, {decode.rounds} interleaved rounds); "
            f"cached layers {layers.get('baseline')} -> {layers.get('pruned')}.{checked}", "",
            "| per token | baseline | pruned |", "|---|---:|---:|",
            f"| measured decode median (ms) | {base.median:.3f} | {pruned.median:.3f} |",
            f"| measured decode p90 (ms) | {base.p90:.3f} | {pruned.p90:.3f} |", ""]


def _sparsity_lines(sparsity: dict | None) -> list[str]:
    """The N:M layers with their predicted saving, or why none was chosen."""
    if not sparsity or not sparsity["check"] or sparsity["check"]["pattern"] is None:
        return []
    check = sparsity["check"]
    if not sparsity["layers"]:
        why = check["reason"] or (f"{check['offered']} layer(s) were offered, and none saved more time than its "
                                  "fidelity cost was worth to the search")
        return [f"**N:M sparsity** ({sparsity['mode']}): no layer chosen: {why}.", ""]
    lines = [f"**N:M sparsity** ({sparsity['mode']}): {len(sparsity['layers'])} layer(s); times {check['source']} "
             "at the chosen widths; exported weights checked N:M; "
             + ("engine layers running sparse kernels: " + (", ".join(sparsity["engine"]["sparse_layers"]) or "none")
                if sparsity["engine"]["built"] else sparsity["engine"]["note"]) + ".", "",
             "| layer | pattern | dense ms | N:M ms | saving | cost | in engine sparse |",
             "|---|---|---:|---:|---:|---:|---|"]
    for row in sparsity["layers"]:
        engine = "-" if row["engine_sparse"] is None else ("yes" if row["engine_sparse"] else "no")
        lines.append(f"| {row['layer']} | {row['pattern']} | {row['dense_ms']:.4f} | {row['sparse_ms']:.4f} | "
                     f"{row['saving_ms']:.4f} ({row['source']}) | {row['cost']:.2g} | {engine} |")
    for group in sparsity["permuted_groups"]:
        lines.append(f"\nGroup {group['group']} permuted for N:M: retained magnitude {group['retained_identity']:.3f} "
                     f"-> {group['retained_permuted']:.3f} of dense over {', '.join(group['readers'])}.")
    return [*lines, ""]


def _copies_line(copies: dict) -> str:
    def text(found: dict) -> str:
        megabytes = sum(op["bytes"] for op in found.values()) / 1e6
        return f"{' / '.join(str(found[op]['count']) for op in ('Gather', 'Slice', 'Concat'))} ({megabytes:.2f} MB)"

    line = (f"**Copy ops** (Gather / Slice / Concat on activations, MB written per inference): baseline "
            f"{text(copies['baseline'])}, pruned {text(copies['pruned'])}")
    if copies.get("pruned_without_reordering"):
        line += f"; the same plan exported without reordering: {text(copies['pruned_without_reordering'])}"
    return line + "."


def _candidates(search: SearchSection) -> str:
    later = " (later rounds searched with its winner)" if len(search.attempts) > 1 else ""
    return (f"round {search.candidates_round + 1} scored on the calibration inputs: "
            + ", ".join(f"{c.strategy} {c.score:.4f}" for c in search.candidates) + later)


def _short(spec: str) -> str:
    """A model spec without its folder (file.py:factory specs carry whole paths)."""
    return spec.rsplit("/", 1)[-1]


def _ms(side: Side, key: str) -> str:
    return "-" if side.latency_ms is None else f"{getattr(side.latency_ms, key):.3f}"


def verdict_line(budget: BudgetSection) -> str:
    """The budget's verdict as ``report.json`` holds it (``budget.verdict``), with what it judged; the console,
    report.md and the plots all print this line."""
    band = f"±{100 * budget.tolerance:.0f}% of {budget.latency_fraction:.3f}"
    if budget.measured_fraction is None:
        return f"**Budget: not measured** (the request's band is {band})."
    low, high = budget.interval
    where = {"met": "inside", "missed": "outside"}.get(budget.verdict, "across the edge of")
    text = (f"**Budget: {budget.verdict}**: measured {budget.measured_fraction:.3f} of the baseline's latency "
            f"(95% interval {low:.3f} .. {high:.3f}, {budget.pairs} interleaved pairs), {where} {band}.")
    if budget.verdict == "undecided":
        text += (f" About {budget.more_pairs} more pairs would decide it." if budget.more_pairs is not None
                 else " It sits on the band's edge: more pairs would not decide it.")
    return text


def _speed_line(report: Report) -> str:
    speed, method = report.speedup, report.measurement
    spread = speed.measured_ratio_spread
    spread_text = "" if spread is None else f"; spread of the per-round ratio {100 * spread:.1f}%"
    if speed.measured_interval is not None:
        low, high = speed.measured_interval
        spread_text = f", 95% interval {low:.2f}x .. {high:.2f}x{spread_text}"
    settings = (f", {method['threads']} thread(s), {method['graph_optimization_level']}"
                if "threads" in method else "")
    return (f"**Measured speedup {speed.measured:.2f}x** (predicted {speed.predicted:.2f}x{spread_text}). "
            f"Measured with {method['runtime']}{settings}: {method['method']}."
            + (f" Phase: {method['phase']}." if "phase" in method else ""))




def write_frontier(reports: list[Report], fractions: list[float], folder: Path) -> None:
    """``frontier.json`` (one row per point) and ``frontier.png``: measured (else predicted) latency
    against output cosine, so a user picks a point by looking (Partial Order Pruning's front)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for fraction, report in zip(fractions, reports, strict=True):
        measured = report.speedup.measured
        depth = report.depth or {"merged": [], "dropped": [], "layers_before": None, "layers_after": None}
        rows.append({"requested": fraction, "folder": f"latency-{fraction:g}",
                     "measured_fraction": None if measured is None else 1 / measured,
                     "predicted_fraction": 1 / report.speedup.predicted, "cosine": report.fidelity.cosine,
                     "top1_agreement": report.fidelity.top1_agreement, "params": report.pruned.params,
                     "layers": depth["layers_after"], "merged": len(depth["merged"]),
                     "dropped": len(depth["dropped"]), "verdict": report.budget.verdict})
    (folder / "frontier.json").write_text(json.dumps({"model": reports[0].model, "target": reports[0].target,
                                                      "points": rows}, indent=1) + "\n")
    measured = all(r["measured_fraction"] is not None for r in rows)
    x = [r["measured_fraction"] if measured else r["predicted_fraction"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(x, [r["cosine"] for r in rows], "o-")
    for r, at in zip(rows, x, strict=True):
        ax.annotate(f"{r['requested']:g}", (at, r["cosine"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(("measured" if measured else "predicted") + " latency / baseline")
    ax.set_ylabel("output cosine to the unpruned model")
    ax.set_title(f"{_short(reports[0].model)} on {reports[0].target}: latency vs fidelity")
    fig.tight_layout()
    _save(fig, folder / "frontier.png", plt)
