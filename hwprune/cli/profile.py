"""``hwprune profile``: measure the layer latencies a model's search needs, or export them for the device."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from hwprune.cli.common import (
    Subparsers,
    add_model_arguments,
    add_remote_arguments,
    load_and_analyze,
    remote,
    resolve_target,
)
from hwprune.errors import HwpruneError

if TYPE_CHECKING:
    from hwprune.cost.sparse import SparsityMode


def add(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("profile", help="measure the layer latencies a model's pruning search needs")
    add_model_arguments(parser)
    parser.add_argument("--target", default="cpu", help="device profile (default: cpu); jetson: the module --remote "
                                                        "reaches, identified there (else jetson-orin-nano)")
    parser.add_argument("--lut", metavar="FILE", help="latency table to extend (default: the cache)")
    parser.add_argument("--every-width", action="store_true",
                        help="time every width each layer can take (default: adaptively, a coarse pass and then "
                             "the stretches a line through it misses, in two batches)")
    parser.add_argument("--export-ops", metavar="DIR",
                        help="time nothing: write the single-op ONNX graphs and whole models the search needs, "
                             "with DIR/manifest.json, for export/profile_ops.py on the device")
    parser.add_argument("--sparsity", default="off", metavar="off|auto|N:M",
                        help="also measure the eligible layers' N:M signatures (default: off; as compile's "
                             "--sparsity, which profiles them itself)")
    add_remote_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from rich.progress import Progress

    from hwprune.cost.lut import load_table, new_table
    from hwprune.cost.model_latency import open_table
    from hwprune.pipeline.profiling import export_ops, profile_model
    from hwprune.transform.trial import prove_prunable

    if args.export_ops:
        if args.remote or args.every_width:
            raise HwpruneError("--export-ops writes the ops for the device and times nothing: drop --remote and "
                               "--every-width")
        target = resolve_target(args.target)
        lut = Path(args.lut) if args.lut else None  # the device's table so far (its first pass)
        table = load_table(lut) if lut is not None and lut.exists() else new_table({}, {})
        analysis = load_and_analyze(args)
        prove_prunable(analysis)
        ops, models, which = export_ops(analysis, target, Path(args.export_ops), table, _sparsity_mode(args.sparsity))
        back = args.lut or "table.json"
        print(f"{analysis.name} on {target.name}: wrote the {which} pass, {ops} single-op graphs and {models} whole "
              f"models, to {args.export_ops}/ (manifest.json); on the device: python export/profile_ops.py "
              f"{args.export_ops} --target {target.name} --out {back}, then bring {back} here"
              + (f" and run this again with --lut {back} for the second pass" if which == "first" else
                 f" and compile with --lut {back}"))
        return 0
    with remote(args) as device:
        target = resolve_target(args.target, device)
        table, path = open_table(target, Path(args.lut) if args.lut else None, create=True)
        analysis = load_and_analyze(args)
        prove_prunable(analysis)
        started = time.perf_counter()
        with Progress(transient=True) as progress:
            measured = profile_model(analysis, target, table, progress, _sparsity_mode(args.sparsity),
                                     args.every_width)
        table.save(path)
        where = f" on {device.label} (work folder removed)" if device is not None else ""
        print(f"{analysis.name} on {target.name}: measured {measured} new configurations in "
              f"{time.perf_counter() - started:.1f} s{where}; table {path} holds {len(table.entries)}")
    return 0


def _sparsity_mode(text: str) -> SparsityMode | None:
    from hwprune.cost.sparse import parse_mode

    try:
        return parse_mode(text)
    except ValueError as exc:
        raise HwpruneError(str(exc)) from None
