"""The ``hwprune`` command. Subcommands parse arguments and call the library; nothing more.

Errors caused by the input (HwpruneError) print one line and exit 2; ``--debug`` shows the
traceback. Heavy imports (torch, torchvision) happen inside subcommands so ``--help`` is quick.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

from hwprune._version import __version__
from hwprune.errors import HwpruneError

DEFAULT_SEED = 0  # hwprune.frontends.DEFAULT_SEED, restated so that --help imports no torch


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except HwpruneError as exc:
        if args.debug or getattr(args, "sub_debug", False):
            raise
        print(f"hwprune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hwprune: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hwprune", description="Hardware-aware structured pruning and export compiler for PyTorch models.")
    parser.add_argument("--version", action="version", version=f"hwprune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    analyze = sub.add_parser("analyze", help="show the coupled channel groups of a model")
    _add_model_arguments(analyze)
    analyze.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                         help="glob of layer names whose channels must stay (repeatable)")
    analyze.add_argument("--skip-unsupported", action="store_true",
                         help="report groups behind unsupported ops as not prunable instead of failing")
    analyze.add_argument("--json", action="store_true", help="print the analysis as JSON")
    analyze.add_argument("--out", metavar="FILE", help="also write the JSON analysis to FILE")
    analyze.set_defaults(run=_run_analyze)

    profile = sub.add_parser("profile", help="measure the layer latencies a model's pruning search needs")
    _add_model_arguments(profile)
    profile.add_argument("--target", default="cpu", help="device profile (default: cpu)")
    profile.add_argument("--lut", metavar="FILE", help="latency table to extend (default: the cache)")
    profile.add_argument("--export-ops", metavar="DIR",
                         help="time nothing: write the single-op ONNX graphs and whole models the search needs, "
                              "with DIR/manifest.json, for export/profile_ops.py on the device")
    profile.add_argument("--sparsity", default="off", metavar="off|auto|N:M",
                         help="also measure the eligible layers' N:M signatures (default: off; as compile's "
                              "--sparsity, which profiles them itself)")
    _add_remote_arguments(profile)
    profile.set_defaults(run=_run_profile)

    latency = sub.add_parser("latency", help="predict (and with --measure, measure) a model's latency")
    _add_model_arguments(latency)
    latency.add_argument("--target", default="cpu", help="device profile (default: cpu)")
    latency.add_argument("--lut", metavar="FILE", help="latency table (default: the cache)")
    latency.add_argument("--measure", action="store_true", help="also measure on this host and print the error")
    latency.add_argument("--json", action="store_true", help="print the result as JSON")
    latency.set_defaults(run=_run_latency)

    compile_ = sub.add_parser("compile", help="prune a model to a latency budget on a target, export and measure it")
    _add_model_arguments(compile_)
    compile_.add_argument("--target", default="cpu", help="device profile (default: cpu)")
    budget = compile_.add_mutually_exclusive_group(required=True)
    budget.add_argument("--latency", metavar="F[,F...]",
                        help="latency budget as a fraction of the baseline; several (0.4,0.5,0.6) compile a "
                             "frontier: one build folder per point under --out, sharing one analysis, latency "
                             "table and importance, and frontier.json / frontier.png (latency against fidelity)")
    budget.add_argument("--speedup", type=float, metavar="S", help="required speedup over the baseline")
    budget.add_argument("--budget-ms", type=float, metavar="MS", help="latency budget in milliseconds")
    compile_.add_argument("--importance", default="activation", choices=("l1", "l2", "bn", "taylor", "activation"),
                          help="channel importance (default: activation: weight x input activation norm summed "
                               "over the layers reading a group, on the calibration inputs; l1 where other layers "
                               "read it)")
    compile_.add_argument("--calib-data", metavar="SPEC",
                          help="module:fn or file.py:fn returning input batches (default: random inputs, warned)")
    compile_.add_argument("--min-keep", type=float, default=0.1, metavar="F",
                          help="smallest fraction of any group's channels to keep (default: 0.1)")
    compile_.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                          help="glob of layer names whose channels must stay (repeatable)")
    compile_.add_argument("--refine", type=int, default=2, metavar="N",
                          help="re-searches when the measured latency misses the budget (default: 2)")
    compile_.add_argument("--recalibrate-bn", choices=("auto", "on", "off"), default="auto",
                          help="re-estimate BatchNorm statistics of the pruned model on the calibration inputs "
                               "(auto: only with --calib-data)")
    compile_.add_argument("--allocation", choices=("auto", "sensitivity", "structure", "uniform"), default="auto",
                          help="how the budget is shared among channel groups (auto: try each, keep the one whose "
                               "masked outputs stay closest to the original's on the calibration inputs)")
    compile_.add_argument("--search", choices=("width", "depth", "joint"), default=None,
                          help="what the search decides: channel widths, depth (convolutions merged with the "
                               "activations between them removed, residual blocks dropped), or both in one "
                               "knapsack (default: joint, offered beside the width-only allocations, the most "
                               "faithful on the calibration inputs winning; width with --unconstrained)")
    compile_.add_argument("--depth-distil-steps", type=int, default=0, metavar="N",
                          help="cost each depth option after N steps of distillation from the unpruned model on "
                               "the calibration inputs (LayerMerge's stronger proxy; a copy and N steps per "
                               "option) instead of by its output change alone (default 0)")
    compile_.add_argument("--sparsity", default="auto", metavar="off|auto|N:M",
                          help="N:M sparsity per layer, an option of the joint search taken only where its "
                               "predicted or measured saving beats its fidelity cost (default auto: 2:4 where the "
                               "target's cost model predicts a gain; N:M: that pattern priced on any target, "
                               "profiled where this host runs it)")
    compile_.add_argument("--sparsity-criterion", choices=("magnitude", "activation"), default="magnitude",
                          help="which weights an N:M mask keeps: the largest by magnitude (default) or by magnitude "
                               "x the input channel's activation norm on the calibration inputs")
    compile_.add_argument("--widths", choices=("homogeneous", "per-layer"), default=None,
                          help="homogeneous: the groups with one role in every layer of a layer stack (each "
                               "transformer layer's MLP, its heads) keep one width, so a transformers config can "
                               "hold it and from_pretrained reloads the model; per-layer: each group its own "
                               "(default: homogeneous for hf: models, per-layer otherwise)")
    compile_.add_argument("--unconstrained", action="store_true",
                          help="UPSCALE-style: every layer reading a shared tensor keeps its own input channels "
                               "(producers keep the union); exported with channels reordered to minimise gathers")
    compile_.add_argument("--dynamic-batch", action="store_true", help="export with a symbolic batch axis")
    compile_.add_argument("--atol", type=float, default=1e-4, help="ONNX verification absolute tolerance (1e-4)")
    compile_.add_argument("--rtol", type=float, default=1e-3, help="ONNX verification relative tolerance (1e-3)")
    compile_.add_argument("--lut", metavar="FILE", help="latency table (default: the cache)")
    _add_recovery_arguments(compile_, prefix="recover-")
    _add_remote_arguments(compile_)
    compile_.add_argument("--out", required=True, metavar="DIR", help="output folder")
    compile_.set_defaults(run=_run_compile)

    apply = sub.add_parser("apply", help="re-apply a plan.json to its model without searching; verified")
    apply.add_argument("plan", metavar="PLAN", help="plan.json written by hwprune compile")
    _add_model_arguments(apply, optional=True)
    apply.add_argument("--calib-data", metavar="SPEC",
                       help="the calibration data the compile used, needed when the plan recalibrated BatchNorm")
    apply.add_argument("--dynamic-batch", action="store_true", help="export with a dynamic batch axis")
    apply.add_argument("--atol", type=float, default=1e-4, help="ONNX verification absolute tolerance (1e-4)")
    apply.add_argument("--rtol", type=float, default=1e-3, help="ONNX verification relative tolerance (1e-3)")
    apply.add_argument("--out", required=True, metavar="DIR", help="output folder (pruned.onnx, pruned.pt)")
    apply.set_defaults(run=_run_apply)

    recover = sub.add_parser("recover", help="distil a compiled build's pruned model from the unpruned one "
                                             "(under torchrun: on several processes)")
    recover.add_argument("build", metavar="BUILD_DIR", help="folder written by hwprune compile (plan.json, pruned.pt)")
    _add_recovery_arguments(recover, prefix="")
    recover.add_argument("--resume", action="store_true", help="continue from BUILD_DIR/recover/checkpoint.pt")
    recover.add_argument("--device", help="cpu, cuda, cuda:N (default: this process's GPU if any, else cpu)")
    recover.add_argument("--debug", action="store_true", dest="sub_debug", help=argparse.SUPPRESS)
    recover.set_defaults(run=_run_recover)

    bench = sub.add_parser("bench", help="time an ONNX model; with a baseline, exit 1 on a latency regression")
    bench.add_argument("onnx", metavar="MODEL.onnx", help="the model to time")
    bench.add_argument("--target", default="cpu", help="device profile (default: cpu)")
    bench.add_argument("--save", metavar="FILE", help="write the measurement record (JSON) to FILE")
    reference = bench.add_mutually_exclusive_group()
    reference.add_argument("--baseline", metavar="FILE", help="compare with a saved record (same host and settings)")
    reference.add_argument("--baseline-model", metavar="OTHER.onnx",
                           help="compare with another model timed in the same interleaved run (robust on noisy CI)")
    bench.add_argument("--tolerance", type=float, default=0.05,
                       help="allowed slowdown before exit 1 (default: 0.05 = 5%%)")
    bench.add_argument("--allow-fingerprint-mismatch", action="store_true",
                       help="compare with a record from another host or settings anyway")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_remote_arguments(bench)
    bench.set_defaults(run=_run_bench)

    devices = sub.add_parser("devices", help="list the device profiles (targets)")
    devices.add_argument("--json", action="store_true", help="print the profiles as JSON")
    devices.set_defaults(run=_run_devices)
    return parser


def _add_remote_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("timing on the device over SSH")
    group.add_argument("--remote", metavar="USER@HOST[:PORT]",
                       help="time on this device over SSH (the system's ssh, batch mode, host key checked): the "
                            "torch-free kit is copied to a temporary folder there, removed afterwards")
    group.add_argument("--ssh-config", metavar="FILE", help="ssh config file (ssh -F; default: the user's)")
    group.add_argument("--accept-new-host-key", action="store_true",
                       help="record the device's host key if known_hosts has none (a changed key is still refused)")
    group.add_argument("--remote-python", default="python3", metavar="CMD",
                       help="python on the device, with numpy, onnx and onnxruntime or TensorRT (default: python3)")


def _remote(args: argparse.Namespace):
    """Inside it, every runtime is the device's over SSH where ``--remote`` is given."""
    from contextlib import nullcontext

    if not args.remote:
        if args.ssh_config or args.accept_new_host_key or args.remote_python != "python3":
            raise HwpruneError("--ssh-config, --accept-new-host-key and --remote-python go with --remote USER@HOST")
        return nullcontext()
    from hwprune.runtime import remote_device

    return remote_device(args.remote, args.ssh_config, args.accept_new_host_key, args.remote_python)


def _add_model_arguments(parser: argparse.ArgumentParser, optional: bool = False) -> None:
    spec = ("torchvision:NAME, timm:NAME, path/to/file.py:factory, path/to/program.pt2, onnx:FILE.onnx, "
            "ultralytics:NAME.yaml, ultralytics:FILE.pt, hf:PATH or hf:NAME (a local transformers model)")
    if optional:
        parser.add_argument("model", metavar="MODEL", nargs="?", help=spec + " (default: the plan's)")
    else:
        parser.add_argument("model", metavar="MODEL", help=spec)
    parser.add_argument("--trust-pickle", action="store_true",
                        help="fully unpickle an ultralytics:FILE.pt that torch.load(weights_only=True) refuses (runs "
                             "code from the file; only for files you trust)")
    parser.add_argument("--seed", type=int, default=None,
                        help=f"seed for random weights and the example input (default: {DEFAULT_SEED}"
                             + (", or the plan's)" if optional else ")"))
    parser.add_argument("--input-shape", metavar="SHAPE", help="example input shape, e.g. 1,3,224,224")
    parser.add_argument("--weights", metavar="NAME",
                        help="load pretrained weights (DEFAULT) from the local torch hub cache; never downloads")
    parser.add_argument("--debug", action="store_true", dest="sub_debug", help=argparse.SUPPRESS)


def _add_recovery_arguments(parser: argparse.ArgumentParser, prefix: str) -> None:
    """recover's options; compile takes the same ones named --recover-* (recovery runs when --recover-data is given)."""
    data_help = ("training data: folder:PATH (one folder per class), module:fn or file.py:fn returning a Dataset or "
                 "an iterable of batches (tensors or (input, target) pairs)")
    parser.add_argument(f"--{prefix}data", required=not prefix, metavar="SPEC", help=data_help)
    parser.add_argument(f"--{prefix}eval-data", metavar="SPEC",
                        help="data to measure fidelity (and accuracy, with labels) on (default: the training data)")
    parser.add_argument(f"--{prefix}epochs", type=int, default=5, metavar="N", help="epochs (default: 5)")
    parser.add_argument(f"--{prefix}lr", type=float, default=1e-3, help="AdamW learning rate (default: 1e-3)")
    parser.add_argument(f"--{prefix}batch-size", type=int, default=64, metavar="B",
                        help="global batch size, shared by the processes (default: 64)")
    parser.add_argument(f"--{prefix}temperature", type=float, default=4.0, metavar="T",
                        help="distillation temperature for class scores (default: 4)")
    parser.add_argument(f"--{prefix}feature-loss", action="store_true",
                        help="also match the teacher's feature maps at the channels the plan kept")
    parser.add_argument(f"--{prefix}mean", metavar="M,M,M",
                        help="folder: normalisation mean of [0, 1] pixels (default: the model's own: none for "
                             "ultralytics:, ImageNet's for other 3-channel models, else none)")
    parser.add_argument(f"--{prefix}std", metavar="S,S,S", help="folder: normalisation std (default: as --mean)")


def _recover_options(args: argparse.Namespace, prefix: str):
    from hwprune.recovery.distill import Recipe
    from hwprune.recovery.run import RecoverOptions

    def value(name: str):
        return getattr(args, prefix + name)

    if value("epochs") < 1 or value("batch_size") < 1 or value("lr") <= 0 or value("temperature") <= 0:
        flag = "--" + prefix.replace("_", "-")
        raise HwpruneError(f"{flag}epochs, {flag}batch-size, {flag}lr and {flag}temperature must be positive")
    recipe = Recipe(epochs=value("epochs"), lr=value("lr"), temperature=value("temperature"),
                    batch_size=value("batch_size"), seed=getattr(args, "seed", None) or 0,
                    feature_loss=value("feature_loss"))
    return RecoverOptions(value("data"), value("eval_data"), recipe, getattr(args, "resume", False),
                          getattr(args, "device", None), _floats(value("mean")), _floats(value("std")))


def _floats(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise HwpruneError(f"{text!r}: expected comma-separated numbers") from None


def _run_recover(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from hwprune.recovery.run import recover

    section = recover(Path(args.build), _recover_options(args, ""), Console(stderr=True, soft_wrap=True))
    if section.get("onnx"):
        print(f"wrote {args.build}/: recovered.onnx, recovered.pt, plots/recovery.png; report.json and plan.json "
              "gained a recovery section")
    return 0


def _run_analyze(args: argparse.Namespace) -> int:
    from hwprune.graph.segments import segments
    from hwprune.graph.spans import depth_candidates
    from hwprune.io import write_text_atomic
    from hwprune.transform.trial import prove_prunable

    analysis = _load_and_analyze(args, exclude=args.exclude, strict=not args.skip_unsupported)
    prove_prunable(analysis)
    data = analysis.to_json()
    data["segments"] = [{"group": s.group, "producers": s.producers, "readers": [r.layer for r in s.readers]}
                        for s in segments(analysis)]
    data["depth"] = depth_candidates(analysis.model, analysis.capture.example_input).to_json()
    document = json.dumps(data, indent=2)
    if args.out:
        write_text_atomic(args.out, document + "\n")
    if args.json:
        print(document)
    else:
        _print_groups(data)
    return 0


def _print_groups(data: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    readers = {s["group"]: len(s["readers"]) for s in data["segments"]}
    table = Table(title=f"{data['model']}  input {data['input_shape']}  "
                        f"{data['flops'] / 1e9:.2f} GFLOPs  {data['params'] / 1e6:.2f} M params")
    for column in ("id", "channels", "kind", "layers", "readers", "FLOPs %", "prunable"):
        table.add_column(column, justify="right" if column in ("channels", "layers", "readers", "FLOPs %") else "left",
                         no_wrap=column == "id")
    for group in data["groups"]:
        prunable = "yes" if group["prunable"] else f"no: {group['reason']}"
        table.add_row(group["id"], str(group["channels"]), group["kind"], str(len(group["layers"])),
                      str(readers.get(group["id"], "-")), f"{100 * group['flops_share']:.1f}", prunable)
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    prunable = sum(g["prunable"] for g in data["groups"])
    shared = sum(n > 1 for n in readers.values())
    console.print(f"{len(data['groups'])} groups, {prunable} prunable; {len(readers)} segments (read only by dense "
                  f"layers), {shared} of them read by several: --unconstrained lets each reader keep its own channels")
    _print_depth(console, data["depth"])


def _print_depth(console, depth: dict) -> None:
    """The depth candidates: each chain's legal merged spans, and the droppable blocks; or why none."""
    from rich.table import Table

    if depth["reason"] or not (depth["spans"] or depth["blocks"]):
        console.print(f"depth: no convolutions to merge and no residual block to drop "
                      f"({depth['reason'] or 'no chain of convolutions and no x + f(x) in this model'})")
        return
    table = Table(title="depth candidates: merged spans (activations inside removed) and droppable blocks")
    for column in ("kind", "layers", "becomes", "activations removed"):
        table.add_column(column)
    for span in depth["spans"]:
        kernel, stride = span["kernel"], span["stride"]
        shape = (f"{kernel[0]}x{kernel[1]}" + (f"/{stride[0]}" if stride != [1, 1] else "")
                 + (" dw" if span["depthwise"] else "") + f" {span['in_channels']}->{span['out_channels']}")
        table.add_row("merge + skip" if span["skip"] else "merge", " + ".join(span["convs"]), shape,
                      str(len(span["activations"])))
    for block in depth["blocks"]:
        table.add_row("drop", block["block"], "x", f"({len(block['layers'])} layers go)")
    console.print(table)
    console.print(f"depth: {len(depth['chains'])} chains of mergeable convolutions, {len(depth['spans'])} legal spans, "
                  f"{len(depth['blocks'])} droppable blocks")


def _load(args: argparse.Namespace):
    """The model named by the common model arguments."""
    from hwprune.frontends import load_model, parse_input_shape

    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    return load_model(args.model, shape, args.weights, DEFAULT_SEED if args.seed is None else args.seed,
                      args.trust_pickle)


def _load_and_analyze(args: argparse.Namespace, exclude: Sequence[str] = (), strict: bool = False):
    """The model named by the common model arguments, loaded and analysed."""
    from hwprune.graph.analyze import analyze

    loaded = _load(args)
    return analyze(loaded.module, loaded.example_input, loaded.name, exclude=exclude, strict=strict)


def _run_profile(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from rich.progress import Progress

    from hwprune.cost.model_latency import open_table
    from hwprune.pipeline.profiling import export_ops, profile_model
    from hwprune.targets import load_target
    from hwprune.transform.trial import prove_prunable

    target = load_target(args.target)
    if args.export_ops:
        if args.remote or args.lut:
            raise HwpruneError("--export-ops writes the ops for the device and times nothing: drop --remote and --lut")
        analysis = _load_and_analyze(args)
        prove_prunable(analysis)
        ops, models = export_ops(analysis, target, Path(args.export_ops), _sparsity_mode(args.sparsity))
        print(f"{analysis.name} on {target.name}: wrote {ops} single-op graphs and {models} whole models to "
              f"{args.export_ops}/ (manifest.json); on the device: python export/profile_ops.py {args.export_ops} "
              f"--target {target.name}")
        return 0
    with _remote(args) as device:
        table, path = open_table(target, Path(args.lut) if args.lut else None, create=True)
        analysis = _load_and_analyze(args)
        prove_prunable(analysis)
        started = time.perf_counter()
        with Progress(transient=True) as progress:
            measured = profile_model(analysis, target, table, progress, _sparsity_mode(args.sparsity))
        table.save(path)
        where = f" on {device.label} (work folder removed)" if device is not None else ""
        print(f"{analysis.name} on {target.name}: measured {measured} new configurations in "
              f"{time.perf_counter() - started:.1f} s{where}; table {path} holds {len(table.entries)}")
    return 0


def _sparsity_mode(text: str):
    from hwprune.cost.sparse import parse_mode

    try:
        return parse_mode(text)
    except ValueError as exc:
        raise HwpruneError(str(exc)) from None


def _run_latency(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hwprune.cost.model_latency import host_predictor
    from hwprune.runtime import runtime_for
    from hwprune.targets import load_target

    target = load_target(args.target)
    runtime = runtime_for(target)
    if args.measure:  # says why this host cannot measure the target, before any work
        runtime.require("measure on the device, or drop --measure for the prediction")
    analysis = _load_and_analyze(args)
    predictor = host_predictor(analysis, target, Path(args.lut) if args.lut else None)
    prediction = predictor.predict({})
    measured = None
    if args.measure:
        from hwprune.pipeline.profiling import measure_model

        measured = measure_model(analysis.model, analysis.capture.example_input, target).median_ms
    result = {"model": analysis.name, "target": target.name, "predicted_ms": prediction.total_ms,
              "source": prediction.source, "latency_model": asdict(predictor.provenance()), "measured_ms": measured,
              "layers": [{"name": n, "predicted_ms": ms} for n, ms in prediction.layers_ms.items()]}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{analysis.name} on {target.name}: predicted {prediction.total_ms:.3f} ms ({prediction.source}; "
          f"{predictor.describe()})")
    if measured is not None:
        error = 100 * (prediction.total_ms - measured) / measured
        print(f"measured {measured:.3f} ms ({target.runtime}, this host); prediction error {error:+.1f}%")
    return 0


def _run_compile(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from hwprune.config import Budget, Options
    from hwprune.pipeline.compile import compile_model
    from hwprune.targets import load_target

    fractions = _fractions(args.latency) if args.latency is not None else []
    if fractions:
        budget = Budget("latency", fractions[0])
    elif args.speedup is not None:
        budget = Budget("speedup", args.speedup)
    else:
        budget = Budget("ms", args.budget_ms)
    target = load_target(args.target)
    options = Options(target, budget, args.importance, args.calib_data, args.min_keep,
                      Path(args.lut) if args.lut else None, args.refine, exclude=tuple(args.exclude),
                      atol=args.atol, rtol=args.rtol, dynamic_batch=args.dynamic_batch,
                      recalibrate_bn=args.recalibrate_bn, allocation=args.allocation, search=args.search,
                      depth_distil_steps=args.depth_distil_steps, sparsity=args.sparsity,
                      sparsity_criterion=args.sparsity_criterion, widths=args.widths,
                      unconstrained=args.unconstrained,
                      recovery=_recover_options(args, "recover_") if args.recover_data else None)
    console = Console(stderr=True, soft_wrap=True)
    if len(fractions) > 1:
        from hwprune.pipeline.compile import compile_frontier

        if options.recovery is not None:
            raise HwpruneError("--recover-data recovers one build: run hwprune recover on the frontier point you pick")
        with _remote(args):
            reports = compile_frontier(_load(args), options, fractions, args.out, console)
        for report in reports:
            print(_compile_summary(report))
        print(f"wrote {args.out}/: latency-F/ per point ({', '.join(f'{f:g}' for f in fractions)}), frontier.json, "
              "frontier.png")
        return 0
    with _remote(args):
        report = compile_model(_load(args), options, args.out, console).report
    print(_compile_summary(report))
    print(f"wrote {args.out}/: report.json, report.md, plan.json, baseline.onnx, pruned.onnx, pruned.pt, plots/"
          + (", build_engine.sh" if (Path(args.out) / "build_engine.sh").exists() else ""))
    return 0


def _fractions(text: str) -> list[float]:
    """``--latency 0.5`` or ``0.4,0.5,0.6``: each a fraction in (0, 1), no repeats, ascending."""
    from hwprune.config import Budget

    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise HwpruneError(f"--latency {text}: give a fraction or comma-separated fractions (0.4,0.5)") from None
    for value in values:
        Budget("latency", value)  # checks the range
    if len(set(values)) != len(values):
        raise HwpruneError(f"--latency {text}: a fraction is repeated")
    return sorted(values)


def _compile_summary(report) -> str:
    from hwprune.pipeline.decode import decode_summary

    fid, speed = report.fidelity, report.speedup
    top1 = "n/a" if fid.top1_agreement is None else f"{100 * fid.top1_agreement:.1f}%"
    if speed.measured is not None:
        timing = (f"{report.baseline.latency_ms.median:.3g} ms -> {report.pruned.latency_ms.median:.3g} ms, measured "
                  f"speedup {speed.measured:.2f}x (predicted {speed.predicted:.2f}x"
                  + ("" if report.budget.met else f"; outside ±{100 * report.budget.tolerance:.0f}% of the request")
                  + ")")
    else:
        timing = (f"predicted speedup {speed.predicted:.2f}x by the {speed.predicted_by} model, not measured "
                  f"({report.engine.reason})")
    return (f"{report.model} on {report.target}: {timing}; params {report.baseline.params / 1e6:.2f}M -> "
            f"{report.pruned.params / 1e6:.2f}M; verify max abs err {report.verify.max_abs_err:.2g}; "
            f"fidelity cosine {fid.cosine:.4f}, top-1 agreement {top1}"
            + ("" if fid.kl is None else f", KL {fid.kl:.3g} nats")
            + ("" if not fid.perplexity else f", perplexity {fid.perplexity['baseline']:.4g} -> "
               f"{fid.perplexity['pruned']:.4g}")
            + ("" if report.decode is None else f"; {decode_summary(report.decode)}"))


def _run_apply(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hwprune.frontends import load_model, parse_input_shape
    from hwprune.pipeline.apply import apply_plan_file
    from hwprune.plan import load_plan

    if args.atol < 0 or args.rtol < 0:
        raise HwpruneError("--atol and --rtol must be >= 0")
    plan = load_plan(args.plan)
    made_for = plan.provenance
    spec = args.model or made_for.model
    shape = parse_input_shape(args.input_shape) if args.input_shape else tuple(made_for.input_shape)
    seed = args.seed if args.seed is not None else (made_for.seed if made_for.seed is not None else DEFAULT_SEED)
    loaded = load_model(spec, shape, args.weights, seed, args.trust_pickle)
    applied = apply_plan_file(plan, args.plan, loaded, args.calib_data, Path(args.out), args.atol, args.rtol,
                              args.dynamic_batch)
    after = sum(p.numel() for p in applied.model.parameters())
    print(f"applied {args.plan} ({len(plan.groups())} groups) to {loaded.name}: params "
          f"{applied.params_before / 1e6:.2f}M -> {after / 1e6:.2f}M; "
          f"verify max abs err {applied.verification.max_abs_err:.2g}; "
          f"wrote {args.out}/: pruned.onnx, pruned.pt")
    if plan.recovery:
        print(f"note: {args.plan} records a recovery (distillation on {plan.recovery.data}); the plan alone "
              "rebuilds the pruned model, not the recovered weights (recovered.pt in its build folder)",
              file=sys.stderr)
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    import hwprune.gate as gate
    from hwprune.targets import load_target

    if not 0 <= args.tolerance < 10:
        raise HwpruneError(f"--tolerance {args.tolerance}: must be in [0, 10)")
    target = load_target(args.target)
    model = Path(args.onnx)
    verdict = None
    with _remote(args) as device:
        if args.baseline_model:
            verdict = gate.compare_models(model, Path(args.baseline_model), target, args.tolerance)
            result = {"model": str(model), "baseline_model": args.baseline_model, **verdict.to_json()}
            if args.save:
                gate.save_record(result, Path(args.save))
        else:
            baseline = gate.load_record(Path(args.baseline)) if args.baseline else None
            current = gate.record(model, target)
            if args.save:
                gate.save_record(current, Path(args.save))
            result = dict(current)
            if baseline is not None:
                verdict = gate.compare_to_record(current, baseline, args.tolerance, args.allow_fingerprint_mismatch)
                result["comparison"] = verdict.to_json()
    if args.json:
        print(json.dumps(result, indent=2))
    elif verdict is None:
        print(f"{model}: median {result['median_ms']:.3f} ms, p90 {result['p90_ms']:.3f} ms, "
              f"spread {100 * result['spread']:.1f}% ({result['samples']} runs, {target.name}"
              + (f" on {device.label})" if device is not None else ")"))
    if verdict is not None and not args.json:
        status = "REGRESSION" if verdict.regressed else "ok"
        print(f"{status}: {model} {verdict.candidate_ms:.3f} ms vs baseline {verdict.baseline_ms:.3f} ms, ratio "
              f"{verdict.ratio:.3f} (tolerance {1 + verdict.tolerance:.2f}, {verdict.method})")
    return 1 if verdict is not None and verdict.regressed else 0


def _run_devices(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from hwprune.targets import available_targets, load_target

    targets = [load_target(name) for name in available_targets()]
    if args.json:
        print(json.dumps([asdict(t) for t in targets], indent=2))
        return 0
    print(f"{'name':<18} {'runtime':<12} {'fp32 TF':>8} {'fp16 TF':>8} {'int8 TOPS':>9} {'GB/s':>7} "
          f"{'align':>5} {'2:4 (gain)':>10}  description")
    for target in targets:
        peak = target.peak_tflops
        sparse = f"yes ({target.sparse_layer_speedup:.2f}x)" if target.sparse_24 else "no"
        print(f"{target.name:<18} {target.runtime:<12} {peak['fp32']:>8.4g} {peak['fp16']:>8.4g} {peak['int8']:>9.4g} "
              f"{target.bandwidth_gbps:>7.4g} {target.channel_alignment:>5} {sparse:>10}  {target.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
