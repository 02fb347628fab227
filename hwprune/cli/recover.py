"""``hwprune recover``: distil a compiled build's pruned model from the unpruned one (under torchrun too)."""

from __future__ import annotations

import argparse

from hwprune.cli.common import Subparsers, add_recovery_arguments, recover_options


def add(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("recover", help="distil a compiled build's pruned model from the unpruned one "
                                                   "(under torchrun: on several processes)")
    parser.add_argument("build", metavar="BUILD_DIR",
                        help="folder written by hwprune compile (plan.json, pruned.pt)")
    add_recovery_arguments(parser, prefix="")
    parser.add_argument("--resume", action="store_true", help="continue from BUILD_DIR/recover/checkpoint.pt")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: this process's GPU if any, else cpu)")
    parser.add_argument("--debug", action="store_true", dest="sub_debug", help=argparse.SUPPRESS)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from hwprune.recovery.run import recover

    section = recover(Path(args.build), recover_options(args, ""), Console(stderr=True, soft_wrap=True))
    if section.get("onnx"):
        print(f"wrote {args.build}/: recovered.onnx, recovered.pt, plots/recovery.png; report.json and plan.json "
              "gained a recovery section")
    return 0
