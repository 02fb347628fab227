"""``hwprune analyze``: a model's coupled channel groups, segments and depth candidates."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from hwprune.cli.common import Subparsers, add_model_arguments, load_and_analyze

if TYPE_CHECKING:
    from rich.console import Console


def add(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("analyze", help="show the coupled channel groups of a model")
    add_model_arguments(parser)
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="glob of layer names whose channels must stay (repeatable)")
    parser.add_argument("--skip-unsupported", action="store_true",
                        help="report groups behind unsupported ops as not prunable instead of failing")
    parser.add_argument("--json", action="store_true", help="print the analysis as JSON")
    parser.add_argument("--out", metavar="FILE", help="also write the JSON analysis to FILE")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hwprune.graph.segments import segments
    from hwprune.graph.spans import depth_candidates
    from hwprune.io import write_text_atomic
    from hwprune.transform.trial import prove_prunable

    analysis = load_and_analyze(args, exclude=args.exclude, strict=not args.skip_unsupported)
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


def _print_depth(console: Console, depth: dict) -> None:
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
