"""The ``hwprune`` command: the top-level parser, one subcommand per module; ``main`` runs one.

Errors caused by the input (HwpruneError) print one line and exit 2; ``--debug`` shows the
traceback. Heavy imports (torch, torchvision) happen inside subcommands so ``--help`` is quick.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from hwprune._version import __version__
from hwprune.cli import analyze, apply, bench, compile, devices, latency, profile, recover
from hwprune.cli.common import DEFAULT_SEED, run_command

__all__ = ["DEFAULT_SEED", "main"]

COMMANDS = (analyze, profile, latency, compile, apply, recover, bench, devices)  # in --help's order


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return run_command(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hwprune", description="Hardware-aware structured pruning and export compiler for PyTorch models.")
    parser.add_argument("--version", action="version", version=f"hwprune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add(subparsers)
    return parser
