"""``hwprune devices``: list the device profiles (targets) as a table or JSON."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from hwprune.cli.common import Subparsers


def add(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("devices", help="list the device profiles (targets); a torch target also runs "
                                                   "as NAME:MODE (eager, cudagraph on cuda, compile)")
    parser.add_argument("--json", action="store_true", help="print the profiles as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from hwprune.targets import available_targets, load_target

    targets = [load_target(name) for name in available_targets()]
    if args.json:
        print(json.dumps([asdict(t) for t in targets], indent=2))
        return 0
    print(f"{'name':<22} {'runtime':<18} {'fp32 TF':>8} {'fp16 TF':>8} {'int8 TOPS':>9} {'GB/s':>7} "
          f"{'align':>5} {'2:4 (gain)':>10}  description")
    for target in targets:
        peak = target.peak_tflops
        sparse = f"yes ({target.sparse_layer_speedup:.2f}x)" if target.sparse_24 else "no"
        runtime = f"{target.runtime} ({target.device}, {target.mode})" if target.device else target.runtime
        print(f"{target.name:<22} {runtime:<18} {peak['fp32']:>8.4g} {peak['fp16']:>8.4g} {peak['int8']:>9.4g} "
              f"{target.bandwidth_gbps:>7.4g} {target.channel_alignment:>5} {sparse:>10}  {target.description}")
    return 0
