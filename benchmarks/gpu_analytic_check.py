"""Check the analytic latency model against real TensorRT measurements (RTX 2080 Ti, MobileNetV2-1.0).

    python benchmarks/gpu_analytic_check.py [--data DIR] [--target rtx-2080ti] [--wider CSV]

Data: /work/shared/data/trt-rtx2080ti-mobilenetv2 (read its README.md): public measurements from
Kim et al., "Efficient Latency-Aware CNN Depth Compression via Two-Stage Dynamic Programming"
(ICML 2023), TensorRT 8.4.3 via torch_tensorrt 1.2, fp32, batch 128, 224x224, mean of 1000 runs.
The single-span rows (end == st + 1: one original layer each) are checked layer by layer, the
multi-span rows (merged spans) against the analytic prediction of the one merged conv that was
timed, its shape rebuilt as their code builds it (``merged_signature``), and, for comparison,
against the sum of its layers' predictions. benchmarks/make_shipped_table.py writes the
single-span rows into latency_models/ through the mapping below.

``--wider CSV`` checks how hwprune/cost/shipped.py fills widths a shipped table lacks: the same
authors' table for MobileNetV2-1.4 (utils/table/mbv2_1.4/time_fish_gpu1_0103.csv in their
repository, same host name and GPU count in the file name, measured a week later; not in
../shared/data) gives the same 50 layers at 1.4x width. Each layer's 1.4 time is predicted from its
1.0 entry (and the 1.0 time from the 1.4 entry: narrower, the pruning direction) by three rules:
scaling the whole entry by the analytic model's width ratio, adding the analytic model's
difference, and shipped.py's rule (fixed per-call cost + scaled op part, the cost fitted on the 1.0
table's even rows as below). The 1.4 table is never fitted on.

Mapping of activation positions to torchvision's ``mobilenet_v2`` (derived here, then checked):
position p is the output of the p-th activation-separated conv *after the stem*: the stem conv
(features.0) and the final 1x1 conv (features.18) are not numbered, so row (p, p+1) is the
(p+1)-th of the 50 convs features.1.conv.0 ... features.17.conv.2 in forward order. Their code
confirms it (read at commit c59bc24 of snu-mllab/Efficient-CNN-Depth-Compression): utils/dp.py
``generate_time_table`` takes row (st, end)'s convs with ``get_conv_lst(model.features[1:-1], ...)``,
merges them with models/model_op.py ``simulate_list_merge`` and times
``nn.Sequential(merged_conv, nn.ReLU())`` on the feature map at position st (traced at batch 128).
The mapping is also verified against the table itself:

1. count: torchvision has 52 convs, minus stem and last = 50 = number of single-span rows, and the
   highest position in the table is 50;
2. residual blocks: a span may not end strictly inside a residual block unless it starts at the
   block's start, nor start inside one and end past its end. Every row of the table obeys this for
   exactly the blocks torchvision marks ``use_res_connect`` (3, 5, 6, 8-10, 12, 13, 15, 16), and
   for each other block the table has rows that violate it (so those are *not* residual there);
3. barriers: the positions no row crosses are exactly the ends of the stride-2 blocks (features
   2, 4, 7, 14 -> positions 5, 11, 20, 41).
The script stops if 1-3 fail, and also runs them on the alternative numbering (stem = 0 -> 1,
features.17.conv.2 dropped), which fails check 2: rows 5 -> 7 and 5 -> 8 would end inside the
residual block features.3. Position 0 is therefore the *input of the first numbered conv*
(features.1's depthwise), which is how the data README's "0 is the input of the first conv" reads.

Residual rows: a single-span row at the end of a residual block (e.g. 7 -> 8, the projection of
features.3) is assumed to be that conv alone, *without* the skip add: the span's module has a
single input and the skip source lies outside the span, and their ``generate_time_table`` times a
conv with bias + ReLU, no BN and no add (merged spans too). The alternative (add fused into the
conv, one more read of the output-sized skip tensor) is reported as a sensitivity line.

Honesty of the numbers: these rows were timed one engine per layer, and each timing carries a
fixed cost of the harness (torch_tensorrt call, CUDA events around an otherwise idle GPU) that
no per-op model has. That constant is fitted on the even-indexed rows (st even) and reported; the
profile's efficiencies are the assumed priors shared by all GPU profiles, not fitted here. A
second variant fits one global efficiency scale too, on the same even rows. Errors are reported
on the odd rows (held out), on all rows, and on the fitted rows; the script also reports the
model without the constant and against the op part alone (measured minus the constant), because
the constant makes per-row MAPE look better than the per-op model is. The merged-span rows are
never fitted on: their errors use the profile as shipped plus the constant fitted on the even
single rows. Nothing is written back into the profile.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hwprune.cost.signature import OpSignature
    from hwprune.targets import Target

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "trt-rtx2080ti-mobilenetv2"
TIMES = "time_fish_gpu1_1228.csv"
BATCH, RESOLUTION = 128, 224


@dataclass(frozen=True)
class Layer:
    name: str
    sig: OpSignature
    block: int  # torchvision features index
    residual: bool  # the block adds its input to its output
    stride: int  # the block's stride


def load_rows(path: Path) -> list[dict]:
    if not path.is_file():
        sys.exit(f"gpu_analytic_check: {path} not found (use --data DIR)")
    with path.open() as handle:
        return [{"st": int(r["st"]), "end": int(r["end"]), "ms": float(r["time"]), "std": float(r["stdev"])}
                for r in csv.DictReader(handle)]


def mobilenet_layers(width_mult: float = 1.0) -> list[Layer]:
    """All 52 convs of torchvision's mobilenet_v2 (at ``width_mult``) at batch 128, in forward order.

    Signatures come from hwprune's own ``layer_signatures`` (so they are the keys the predictor looks
    up) on a meta-device run: exact shapes, no compute.
    """
    import torch
    from torchvision.models import mobilenet_v2

    from hwprune.cost.layers import layer_signatures

    model = mobilenet_v2(weights=None, width_mult=width_mult).eval().to("meta")
    signatures = layer_signatures(model, torch.empty(BATCH, 3, RESOLUTION, RESOLUTION, device="meta"))
    layers = []
    for name, sig in signatures.items():
        if sig.op != "conv2d":  # the classifier
            continue
        index = int(name.split(".")[1])
        block = model.features[index]
        residual = bool(getattr(block, "use_res_connect", False))
        stride = max(c.stride[0] for c in block.modules() if isinstance(c, torch.nn.Conv2d))
        layers.append(Layer(name, sig, index, residual, stride))
    assert len(layers) == 52 and layers[0].name == "features.0.0" and layers[-1].name == "features.18.0"
    return layers


def mapped_layers(rows: list[dict], width_mult: float = 1.0) -> tuple[list[Layer], list[str]]:
    """The numbered convs (row (p, p + 1) is layer p) once checks 1-3 pass, and the lines that say so;
    stops the script when they fail."""
    every_conv = mobilenet_layers(width_mult)
    layers = every_conv[1:-1]  # the numbering: stem and last 1x1 conv carry no span
    failure, notes = verify_mapping(rows, layers)
    if failure:
        sys.exit(f"gpu_analytic_check: mapping {failure}")
    alternative, _ = verify_mapping(rows, every_conv[:-2])  # stem numbered 0 -> 1 instead
    notes.append(f"the alternative numbering (stem as 0 -> 1) fails {alternative}" if alternative
                 else "WARNING: the alternative numbering (stem as 0 -> 1) passes too")
    return layers, notes


def single_rows(rows: list[dict]) -> list[dict]:
    """The single-span rows (one original layer each), by position."""
    return sorted((r for r in rows if r["end"] == r["st"] + 1), key=lambda r: r["st"])


def harness_ms(rows: list[dict], layers: list[Layer], target: Target) -> float:
    """The harness's fixed cost per timed call: the constant offset fitted (profile as shipped) on the
    single-span rows at even positions."""
    from hwprune.cost.analytic import fit_efficiency

    train = [(layers[r["st"]].sig, r["ms"]) for r in single_rows(rows) if r["st"] % 2 == 0]
    return fit_efficiency(train, target, scales=[1.0])[1]


def residual_ends(layers: list[Layer]) -> set[int]:
    """Positions where a residual block ends (its projection conv's row ends there)."""
    return {last for _, _, last, residual, _ in blocks_of(layers) if residual}


def merged_signature(convs: list[OpSignature]) -> OpSignature:
    """The one conv that a span's convs merge into, as their ``simulate_list_merge`` builds it: the first
    conv's input (and input map), the last one's outputs, the kernel growing by k - 1 per conv, strides
    multiplied, paddings added, depthwise only when every conv is."""
    first = convs[0]
    kernel, stride, padding = first.kernel, first.stride, first.padding
    for sig in convs[1:]:
        kernel = (kernel // 2 + sig.kernel // 2) * 2 + 1
        stride *= sig.stride
        padding += sig.padding
    depthwise = all(sig.groups == sig.c_in for sig in convs)
    merged = replace(first, c_out=convs[-1].c_out, kernel=kernel, stride=stride, padding=padding,
                     groups=first.c_in if depthwise else 1)
    assert merged.out_hw == convs[-1].out_hw, f"merged conv {merged} does not produce the span's output map"
    return merged


def blocks_of(numbered: list[Layer]) -> list[tuple[int, int, int, bool, int]]:
    """(features index, first position, last position, residual, stride) of each numbered block."""
    blocks: list[tuple[int, int, int, bool, int]] = []
    for position, layer in enumerate(numbered):
        if blocks and blocks[-1][0] == layer.block:
            index, first, _, residual, stride = blocks[-1]
            blocks[-1] = (index, first, position + 1, residual, stride)
        else:
            blocks.append((layer.block, position, position + 1, layer.residual, layer.stride))
    return blocks


def verify_mapping(rows: list[dict], numbered: list[Layer]) -> tuple[str | None, list[str]]:
    """Checks 1-3 of the module docstring: (first failure or None, lines to print)."""
    spans = [(r["st"], r["end"]) for r in rows]
    singles = sorted(st for st, end in spans if end == st + 1)
    blocks = blocks_of(numbered)
    notes = []
    if singles != list(range(len(numbered))) or max(end for _, end in spans) != len(numbered):
        return f"check 1: {len(singles)} single rows, {len(numbered)} convs", notes
    notes.append(f"check 1: {len(numbered)} convs (stem and last 1x1 excluded) = {len(singles)} single-span rows, "
                 f"positions 0..{len(numbered)}")

    def crossing(first: int, last: int) -> list[tuple[int, int]]:  # rows a residual block would forbid
        return [(st, end) for st, end in spans if st < first < end < last or first < st < last < end]

    for index, first, last, residual, _ in blocks:
        if residual and crossing(first, last):
            return (f"check 2: rows {crossing(first, last)[:3]} cross residual block features.{index} "
                    f"({first}..{last})"), notes
    residual_blocks = [b for b in blocks if b[3]]
    plain = [b for b in blocks if not b[3] and b[2] - b[1] > 1]
    evidenced = [b for b in plain if crossing(b[1], b[2])]
    notes.append(f"check 2: no row crosses the {len(residual_blocks)} residual blocks "
                 f"(features {', '.join(str(b[0]) for b in residual_blocks)}); rows do cross all "
                 f"{len(evidenced)} of {len(plain)} plain blocks (features {', '.join(str(b[0]) for b in evidenced)})")
    barriers = sorted(p for p in range(1, len(numbered)) if not any(st < p < end for st, end in spans))
    stride2_ends = sorted(last for _, _, last, _, stride in blocks if stride == 2 and last < len(numbered))
    if barriers != stride2_ends:
        return f"check 3: positions no row crosses {barriers} != stride-2 block ends {stride2_ends}", notes
    notes.append(f"check 3: the positions no row crosses, {barriers}, are the ends of the stride-2 blocks")
    return None, notes


def mape(pairs: list[tuple[float, float]]) -> float:
    return 100 * sum(abs(p - m) / m for p, m in pairs) / len(pairs)


def error_summary(pairs: list[tuple[float, float]]) -> str:
    """MAPE, median absolute and worst signed percentage error of (predicted, measured) pairs."""
    errors = [100 * (p - m) / m for p, m in pairs]
    return (f"n={len(pairs)}: MAPE {mape(pairs):.1f}%, median |error| {statistics.median(map(abs, errors)):.1f}%, "
            f"worst {max(errors, key=abs):+.1f}%")


def merged_spans_report(rows: list[dict], layers: list[Layer], target: Target, harness: float) -> None:
    """Errors of the prior (profile as shipped + fitted harness constant) on the multi-span rows."""
    from hwprune.cost.analytic import predict_ms

    results = []  # (row, merged conv, predicted as one conv, predicted as the sum of its layers)
    for r in rows:
        if r["end"] > r["st"] + 1:
            convs = [layer.sig for layer in layers[r["st"]:r["end"]]]
            merged = merged_signature(convs)
            results.append((r, merged, predict_ms(merged, target) + harness,
                            sum(predict_ms(sig, target) for sig in convs) + harness))
    print()
    print(f"Merged spans ({len(results)} multi-span rows, none fitted on; prior + harness {harness:.3f} ms):")
    print("  as the merged conv that was timed:   " + error_summary([(one, r["ms"]) for r, _, one, _ in results]))
    print("  as the sum of its layers' prediction: " + error_summary([(add, r["ms"]) for r, _, _, add in results]))
    for low, high, label in ((1, 3, "<= 3"), (5, 7, "5-7"), (9, sys.maxsize, ">= 9")):
        subset = [(one, r["ms"]) for r, sig, one, _ in results if low <= sig.kernel <= high]
        if subset:
            print(f"  merged conv, kernel {label:<18}" + error_summary(subset))
    peak = target.peak_tflops["fp32"] * 1e12
    rates = [sig.flops() / ((r["ms"] - harness) * 1e-3) / peak for r, sig, _, _ in results]
    print(f"  {sum(rate > 1 for rate in rates)} of {len(rates)} merged convs ran faster than their direct-conv FLOPs "
          f"allow at the fp32 peak (up to {max(rates):.1f}x, measured minus the harness constant): TensorRT picks "
          "FLOP-saving algorithms (Winograd-/FFT-type) there, which a roofline over direct-conv FLOPs cannot model")
    print("  worst five (merged conv):")
    for r, sig, one, _ in sorted(results, key=lambda t: -abs(t[2] - t[0]["ms"]) / t[0]["ms"])[:5]:
        print(f"    {r['st']:>2} -> {r['end']:<2} {sig.c_in}>{sig.c_out} k{sig.kernel} s{sig.stride} g{sig.groups} "
              f"@{sig.h}: measured {r['ms']:.3f} ms, predicted {one:.3f} ms ({100 * (one - r['ms']) / r['ms']:+.0f}%)")


def widths_report(rows: list[dict], layers: list[Layer], wider_csv: Path, target: Target, harness: float) -> None:
    """Each rule's error when one width's entries predict the other width's layers (module docstring)."""
    from hwprune.cost.analytic import predict_ms
    from hwprune.cost.shipped import anchored_ms

    wider_rows = load_rows(wider_csv)
    wider, _ = mapped_layers(wider_rows, width_mult=1.4)
    times = {1.0: {r["st"]: r["ms"] for r in single_rows(rows)},
             1.4: {r["st"]: r["ms"] for r in single_rows(wider_rows)}}
    analytic = {1.0: [predict_ms(layer.sig, target) for layer in layers],
                1.4: [predict_ms(layer.sig, target) for layer in wider]}
    rules = {"whole entry x analytic width ratio": lambda to, frm, ms: anchored_ms(to, ms / frm, 0.0),
             "entry + analytic difference": lambda to, frm, ms: ms + to - frm,
             "shipped.py: per-call cost + op part scaled": lambda to, frm, ms: anchored_ms(to, (ms - harness) / frm,
                                                                                            harness)}
    print()
    print(f"Filling other widths: MobileNetV2-1.0 <-> 1.4 single layers ({wider_csv.name}), per-call cost "
          f"{harness:.3f} ms; the 1.4 table is never fitted on")
    for label, rule in rules.items():
        for source, goal in ((1.0, 1.4), (1.4, 1.0)):
            pairs = [(rule(analytic[goal][p], analytic[source][p], ms), times[goal][p])
                     for p, ms in times[source].items()]
            total = 100 * (sum(p for p, _ in pairs) - sum(m for _, m in pairs)) / sum(m for _, m in pairs)
            print(f"  {label:<44} {source} -> {goal}: {error_summary(pairs)}, sum {total:+.1f}%")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="directory with time_fish_gpu1_1228.csv")
    parser.add_argument("--target", default="rtx-2080ti", help="device profile to check (default rtx-2080ti)")
    parser.add_argument("--wider", type=Path, help="MobileNetV2-1.4's time_fish_gpu1_0103.csv (see the docstring)")
    args = parser.parse_args(argv)

    from hwprune.cost.analytic import fit_efficiency, op_kind, predict_ms, scaled
    from hwprune.targets import load_target

    target = load_target(args.target)
    data = args.data.resolve()
    rows = load_rows(data / TIMES)
    layers, notes = mapped_layers(rows)
    ends = residual_ends(layers)

    samples = [(layers[r["st"]], r) for r in single_rows(rows)]
    train = [(layer.sig, r["ms"]) for layer, r in samples if r["st"] % 2 == 0]
    harness = harness_ms(rows, layers, target)
    scale, harness_fit = fit_efficiency(train, target)
    fitted_target = scaled(target, scale)

    print(f"Analytic model vs TensorRT 8.4 measurements; profile {target.name}: {target.description}")
    print(f"MobileNetV2-1.0 single layers, fp32, batch {BATCH}, {RESOLUTION}x{RESOLUTION}; data {data}")
    for note in notes:
        print("  mapping " + note)
    print(f"  prior: profile as shipped (efficiencies assumed, not fitted) + harness constant {harness:.3f} ms "
          "fitted on the even rows")
    print(f"  fit:   profile efficiencies x {scale:.3f} + harness constant {harness_fit:.3f} ms, "
          "both fitted on the even rows")
    print()
    header = (f"{'st':>3} {'end':>3}  {'layer':<21} {'kind':<9} {'cin>cout k s @hw':<20} "
              f"{'meas ms':>8} {'prior ms':>8} {'err %':>6} {'fit ms':>7} {'err %':>6}  rows")
    print(header)
    print("-" * len(header))
    table = []
    for layer, r in samples:
        sig = layer.sig
        raw = predict_ms(sig, target)
        entry = {"st": r["st"], "raw": raw, "prior": raw + harness, "ms": r["ms"], "sig": sig,
                 "fit": predict_ms(sig, fitted_target) + harness_fit, "train": r["st"] % 2 == 0,
                 "residual_end": r["end"] in ends}
        table.append(entry)
        shape = f"{sig.c_in}>{sig.c_out} k{sig.kernel} s{sig.stride} @{sig.h}"
        print(f"{r['st']:>3} {r['end']:>3}  {layer.name:<21} {op_kind(sig):<9} {shape:<20} {r['ms']:>8.3f} "
              f"{entry['prior']:>8.3f} {100 * (entry['prior'] - r['ms']) / r['ms']:>+6.1f} {entry['fit']:>7.3f} "
              f"{100 * (entry['fit'] - r['ms']) / r['ms']:>+6.1f}  {'fit' if entry['train'] else 'test'}"
              f"{' res' if entry['residual_end'] else ''}")

    measured_sum = sum(t["ms"] for t in table)
    print()
    print(f"{'variant':<54} {'MAPE test':>9} {'MAPE all':>8} {'MAPE fit':>8} {'sum ms':>7} {'sum err':>7}")
    for key, label in (("prior", "prior: assumed efficiencies + fitted harness"),
                       ("fit", "fit: global efficiency scale + harness (even rows)")):
        test = mape([(t[key], t["ms"]) for t in table if not t["train"]])
        seen = mape([(t[key], t["ms"]) for t in table if t["train"]])
        total = sum(t[key] for t in table)
        print(f"{label:<54} {test:>8.1f}% {mape([(t[key], t['ms']) for t in table]):>7.1f}% {seen:>7.1f}% "
              f"{total:>7.2f} {100 * (total - measured_sum) / measured_sum:>+6.1f}%")
    raw_total = sum(t["raw"] for t in table)
    raw_mape = mape([(t["raw"], t["ms"]) for t in table])
    print(f"{'per-op model alone, no harness constant':<54} {'':>9} {raw_mape:>7.1f}% "
          f"{'':>8} {raw_total:>7.2f} {100 * (raw_total - measured_sum) / measured_sum:>+6.1f}%")
    print(f"{'measured (sum of the 50 single-layer rows)':<54} {'':>9} {'':>8} {'':>8} {measured_sum:>7.2f}")
    net = [(t["raw"], t["ms"] - harness) for t in table]
    print(f"The harness constant is {100 * harness * len(table) / measured_sum:.0f}% of the measured sum and flatters "
          f"per-row MAPE; against the op part alone (measured - {harness:.3f} ms) the prior per-op model has "
          f"MAPE {mape(net):.1f}%.")
    by_kind: dict[str, list[float]] = {}
    for t, (raw, op_ms) in zip(table, net, strict=True):
        by_kind.setdefault(op_kind(t["sig"]), []).append(raw / op_ms)
    print("Median predicted/measured op time (prior, harness removed) by kind: " + ", ".join(
        f"{kind} {sorted(v)[len(v) // 2]:.2f} (n={len(v)})" for kind, v in sorted(by_kind.items())))

    def with_add(t: dict) -> float:  # skip add fused into the conv: one more read of the output tensor
        if not t["residual_end"]:
            return t["prior"]
        sig = t["sig"]
        oh, ow = sig.out_hw
        skip_bytes = sig.batch * sig.c_out * oh * ow * 4
        return t["prior"] + skip_bytes / (target.bandwidth_gbps * 1e9 * target.analytic.memory_efficiency) * 1e3
    print(f"Sensitivity: residual rows costed with the skip add fused in: prior MAPE all rows "
          f"{mape([(with_add(t), t['ms']) for t in table]):.1f}% (assumed without: "
          f"{mape([(t['prior'], t['ms']) for t in table]):.1f}%)")
    print("Single-span rows, prior: all " + error_summary([(t["prior"], t["ms"]) for t in table]) + "; held out "
          + error_summary([(t["prior"], t["ms"]) for t in table if not t["train"]]))
    merged_spans_report(rows, layers, target, harness)

    whole = [r for r in rows if r["st"] == 0 and r["end"] == len(layers)]
    if whole:
        print(f"Whole-span row 0..{len(layers)}: measured {whole[0]['ms']:.2f} ms")
    else:
        print(f"Whole-span row 0..{len(layers)}: not in the table (rows from 0 end at most at "
              f"{max(r['end'] for r in rows if r['st'] == 0)}); the network is compared as the sum of the "
              "single-layer rows, which counts the harness constant once per layer.")
    if args.wider:
        widths_report(rows, layers, args.wider.resolve(), target, harness)
    return 0


if __name__ == "__main__":
    sys.exit(main())
