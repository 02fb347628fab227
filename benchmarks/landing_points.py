"""Where the search's solution lands, how wrong is the adaptive table? Measured, so that measuring more
there is done only if it pays.

Adaptive profiling (``cost.space``) times a coarse set of each layer's widths and fills in only the
stretches a line through them misses; the predictor reads any other width on the line between the
nearest measured counts. This benchmark takes a finished build (its ``plan.json``) and the table its
compile used, finds every axis point of the chosen widths that the table holds no measurement for, and
times each one now, alternately with its nearest measured neighbour on the same axis (``--rounds``
pairs). The point's time at the table's scale is the neighbour's table time times the median ratio:
a ratio measured side by side, so the machine's speed today (other work, clocks) does not pass for an
error of the table measured on another day. It prints each point's interpolated and measured time and
the sum over the points beside the model's whole layer sum.

    python benchmarks/landing_points.py BUILD [--lut TABLE] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

# benchmarks/transformers.py shares the package's name: this folder off the path, so ``import transformers`` works
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from hwprune.cost.model_latency import open_table, predictor_for  # noqa: E402
from hwprune.cost.onnx_ops import input_shape, single_op_model  # noqa: E402
from hwprune.cost.predictor import TablePredictor, op_ms  # noqa: E402
from hwprune.cost.signature import OpSignature  # noqa: E402
from hwprune.frontends import load_model  # noqa: E402
from hwprune.graph.analyze import analyze  # noqa: E402
from hwprune.plan import load_plan  # noqa: E402
from hwprune.runtime import runtime_for  # noqa: E402
from hwprune.targets import load_target  # noqa: E402


def unmeasured_points(predictor: TablePredictor, keep: dict[str, int]
                      ) -> list[tuple[str, OpSignature, OpSignature, float]]:
    """Per layer axis at ``keep``: (layer, the point, its nearest measured neighbour on the axis, the
    interpolated time), for every point the table does not hold."""
    points = []
    for layer in predictor.layers:
        c_in, c_out = predictor.channels(layer, keep)
        sig = layer.signature
        outs, ins = predictor.axes(layer)
        axes = [(outs, c_out, True)] + ([] if layer.depthwise else [(ins, c_in, False)])
        for axis, count, along_out in axes:
            point = _on_axis(sig, count, along_out)
            if predictor.table.get(point) is not None:
                continue
            near = min(axis, key=lambda c: abs(c - count))
            ms, _ = predictor.layer_ms(layer, point.c_in, point.c_out)
            points.append((layer.name, point, _on_axis(sig, near, along_out), ms))
    return points


def _on_axis(sig: OpSignature, count: int, along_out: bool) -> OpSignature:
    """``sig`` with ``count`` output channels (inputs full), or ``count`` input channels (outputs full)."""
    return sig.with_channels(sig.c_in, count) if along_out else sig.with_channels(count, sig.c_out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", type=Path, help="a compile's output folder (its plan.json)")
    parser.add_argument("--lut", type=Path, help="the table the compile used (default: the target's cached table)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating pairs timed per point")
    args = parser.parse_args()

    plan = load_plan(args.build / "plan.json")
    provenance = plan.provenance
    target = load_target(provenance.target)
    seeded = {} if provenance.seed is None else {"seed": provenance.seed}  # None: the model's own weights
    loaded = load_model(provenance.model, tuple(provenance.input_shape), **seeded)
    analysis = analyze(loaded.module, loaded.example_input, loaded.name, strict=False)
    table, path = open_table(target, args.lut)
    full = predictor_for(analysis, table, target)
    taken = (*plan.merge, *plan.depth, *plan.sparsity.layers)
    predictor = full.with_depth(frozenset(key for key, option in full.options.items() if option.choice in taken))
    keep = {gid: w.keep for gid, w in plan.width.items()}
    runtime = runtime_for(target)
    console = Console()
    rows = Table(title=f"{provenance.model} on {target.name}: the solution's unmeasured axis points ({path})")
    for column in ("layer", "point", "neighbour", "interpolated ms", "measured ms", "error"):
        rows.add_column(column, justify="left" if column == "layer" else "right")
    found = unmeasured_points(predictor, keep)
    interpolated = measured = 0.0
    errors = []
    for name, point, near, predicted in found:
        graphs = (single_op_model(near), single_op_model(point))
        ratios = [runtime.time_graph(graphs[1], input_shape(point)).median_ms
                  / runtime.time_graph(graphs[0], input_shape(near)).median_ms for _ in range(args.rounds)]
        now = op_ms(table, table.get(near).median_ms * statistics.median(ratios))
        interpolated, measured = interpolated + predicted, measured + now
        errors.append(predicted / now - 1)
        rows.add_row(name, f"{point.c_in}x{point.c_out}", f"{near.c_in}x{near.c_out}", f"{predicted:.3f}",
                     f"{now:.3f}", f"{errors[-1]:+.1%}")
    console.print(rows)
    layer_sum = sum(predictor.layer_ms(layer, *predictor.channels(layer, keep))[0] for layer in predictor.layers)
    if errors:
        console.print(f"{len(found)} unmeasured points of {len(predictor.layers)} layers: mean |error| "
                      f"{statistics.mean(abs(e) for e in errors):.1%}, worst {max(errors, key=abs):+.1%}; their sum "
                      f"{interpolated:.2f} ms interpolated vs {measured:.2f} ms measured "
                      f"({(interpolated - measured) / layer_sum:+.2%} of the solution's layer sum, {layer_sum:.2f} ms)")
    else:
        console.print("every axis point of the solution is measured in the table")
    print(json.dumps({"points": len(found), "interpolated_ms": interpolated, "measured_ms": measured,
                      "layer_sum_ms": layer_sum}))


if __name__ == "__main__":
    main()
