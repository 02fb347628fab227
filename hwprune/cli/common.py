"""What the subcommands share: argument groups, model loading, --remote, and errors as exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from hwprune.errors import HwpruneError

if TYPE_CHECKING:
    from hwprune.frontends import LoadedModel
    from hwprune.graph.analyze import Analysis
    from hwprune.recovery.run import RecoverOptions
    from hwprune.runtime.remote import RemoteSession
    from hwprune.targets import Target

DEFAULT_SEED = 0  # hwprune.frontends.DEFAULT_SEED, restated so that --help imports no torch

Subparsers = argparse._SubParsersAction  # what add_subparsers returns; each subcommand module adds to it


def run_command(args: argparse.Namespace) -> int:
    """The parsed subcommand's exit code; an input error is one line and its code unless --debug."""
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


def add_remote_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("timing on the device over SSH")
    group.add_argument("--remote", metavar="USER@HOST[:PORT]",
                       help="time on this device over SSH (the system's ssh, batch mode, host key checked): the "
                            "torch-free kit is copied to a temporary folder there, removed afterwards")
    group.add_argument("--ssh-config", metavar="FILE", help="ssh config file (ssh -F; default: the user's)")
    group.add_argument("--accept-new-host-key", action="store_true",
                       help="record the device's host key if known_hosts has none (a changed key is still refused)")
    group.add_argument("--remote-python", default="python3", metavar="CMD",
                       help="python on the device, with numpy, onnx and onnxruntime or TensorRT (default: python3)")


def resolve_target(name: str, device: RemoteSession | None = None) -> Target:
    """The target ``--target`` names; ``jetson`` is the module ``device`` (``--remote``) is, identified there,
    else jetson-orin-nano; either way one line on stderr says which. A torch target this host cannot run is
    refused here, before a model loads or an output folder is made."""
    from hwprune.runtime import runtime_for
    from hwprune.targets import resolve_target as resolve

    target, line = resolve(name, None if device is None else device.device_facts)
    if line is not None:
        print(line, file=sys.stderr)
    runtime_for(target)  # a target this host can never time (cuda without a GPU) stops here, before the model loads
    return target


def remote(args: argparse.Namespace) -> AbstractContextManager[RemoteSession | None]:
    """Inside it, every runtime is the device's over SSH where ``--remote`` is given."""
    from contextlib import nullcontext

    if not args.remote:
        if args.ssh_config or args.accept_new_host_key or args.remote_python != "python3":
            raise HwpruneError("--ssh-config, --accept-new-host-key and --remote-python go with --remote USER@HOST")
        return nullcontext()
    from hwprune.runtime import remote_device

    return remote_device(args.remote, args.ssh_config, args.accept_new_host_key, args.remote_python)


def add_model_arguments(parser: argparse.ArgumentParser, optional: bool = False) -> None:
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


def load(args: argparse.Namespace) -> LoadedModel:
    """The model named by the common model arguments."""
    from hwprune.frontends import load_model, parse_input_shape

    shape = parse_input_shape(args.input_shape) if args.input_shape else None
    return load_model(args.model, shape, args.weights, DEFAULT_SEED if args.seed is None else args.seed,
                      args.trust_pickle)


def load_and_analyze(args: argparse.Namespace, exclude: Sequence[str] = (), strict: bool = False) -> Analysis:
    """The model named by the common model arguments, loaded and analysed."""
    from hwprune.graph.analyze import analyze

    loaded = load(args)
    return analyze(loaded.module, loaded.example_input, loaded.name, exclude=exclude, strict=strict)


def add_recovery_arguments(parser: argparse.ArgumentParser, prefix: str) -> None:
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


def recover_options(args: argparse.Namespace, prefix: str) -> RecoverOptions:
    """The recovery options given by the arguments that add_recovery_arguments added with ``prefix``."""
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
