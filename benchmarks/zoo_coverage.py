"""How much of the torchvision classification zoo hwprune can analyse, prune, run and export.

For every model in ``torchvision.models.list_models(module=torchvision.models)`` (random weights):

1. models over 150M parameters are listed as skipped;
2. ``hwprune.frontends.load_model("torchvision:NAME")`` gives the module and its example input
   (1x3x224x224, or the weights' default crop when that differs, e.g. 299 for inception_v3);
3. ``hwprune.graph.analyze.analyze(..., strict=False)`` finds the channel groups;
4. every prunable group keeps a random 70% of its channels (the same local positions in every
   block of a grouped convolution) and ``hwprune.transform.prune.prune`` removes the rest;
5. the pruned model must run, give finite outputs of the unpruned output shape, export to ONNX
   (opset 17, the TorchScript exporter: ``torch.onnx.export(..., dynamo=False)``) and match
   onnxruntime (CPUExecutionProvider) within 1e-3 * max|output| (relative to the output's scale;
   the weights are randomised with calibrated norm statistics first, tests/zoo.py, so no model's
   output is degenerately small and the bound means something).

Beside that, torch-pruning alone builds its ``DependencyGraph`` on a fresh copy of the model and
counts ``get_all_groups()`` (conv and linear roots), so its coverage can be compared with ours.

Each model's hwprune run and torch-pruning run happen in their own subprocess with a timeout and a
12 GiB address-space limit; a hang counts as the error "timeout (in STAGE)", running out of that
memory as "MemoryError" and a crash as "crashed (exit code N)".

``--extra`` runs, instead of the zoo, the model families users bring: YOLO detectors built by the
ultralytics package from its yaml files (``ultralytics:yolov8n.yaml``, random weights, 640x640), the
same detectors as the ONNX file Ultralytics itself exports (``ultralytics-onnx:yolov8n.yaml``: its default
opset, loaded by hwprune's ``onnx:`` spec), and torchvision models round-tripped through ONNX
(``onnx-roundtrip:NAME``: exported with the TorchScript exporter, loaded back by hwprune's ``onnx:`` spec
through onnx2torch). For every model
the groups are also trial-pruned (``transform.trial``), as ``hwprune analyze`` does: the table
gives the groups prunable by the trace and after the trial.

Run it from the repository root::

    python benchmarks/zoo_coverage.py [--models resnet18,swin_t | --extra] [--timeout 240] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import random
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from rich.console import Console
from rich.markup import escape
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hwprune.errors import first_line  # noqa: E402
from tests.zoo import randomize_model  # noqa: E402

MAX_PARAMS = 150_000_000
KEEP_RATIO = 0.7
SEED = 0
ONNX_OPSET = 17
ONNX_RTOL = 1e-3
MEMORY_LIMIT_BYTES = 12 * 2**30  # torch-pruning's index mappings can grow without bound (swin)


@dataclass
class Row:
    """One model's outcome; ``status`` is "ok", "error" or "skipped"."""

    model: str
    params_m: float
    status: str
    reason: str | None = None
    input_shape: list[int] | None = None
    groups: int | None = None
    traced_prunable: int | None = None  # prunable by the trace alone, before trial pruning
    prunable_groups: int | None = None
    prunable_flops_pct: float | None = None  # share of FLOPs in layers whose output a prunable group sizes
    params_kept_pct: float | None = None
    output_max: float | None = None
    onnx_max_err: float | None = None
    tp_groups: int | None = None
    tp_error: str | None = None
    seconds: float = 0.0


class StageError(Exception):
    """A failure tagged with the pipeline stage it happened in."""


Report = Callable[[str], None]


@contextmanager
def stage(name: str, report: Report) -> Iterator[None]:
    """Tell the parent the block started; re-raise its failures as a StageError prefixed with ``name``."""
    report(name)
    try:
        yield
    except StageError:
        raise
    except Exception as exc:
        raise StageError(f"{name}: {first_line(exc)}") from exc


def random_keep(channels: int, repeat: int, rng: random.Random, ratio: float = KEEP_RATIO) -> list[int]:
    """About ``ratio`` of ``channels``, the same local positions in each of the ``repeat`` blocks."""
    block = channels // repeat
    local = rng.sample(range(block), max(1, round(block * ratio)))
    return sorted(b * block + i for b in range(repeat) for i in local)


def first_tensor(output: Any) -> torch.Tensor:
    """The logits of a model output (a tensor, or the first tensor of a tuple / namedtuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return first_tensor(output[0])
    raise TypeError(f"unexpected model output type {type(output).__name__}")


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def onnx_max_error(model: torch.nn.Module, example: torch.Tensor, reference: torch.Tensor,
                   report: Report) -> float:
    """Export ``model`` to ONNX, run it in onnxruntime and return the max abs error vs ``reference``."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "model.onnx")
        with stage("onnx export", report):
            torch.onnx.export(model, (example,), path, opset_version=ONNX_OPSET, dynamo=False)
        with stage("onnxruntime", report):
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: example.numpy()}
            result = torch.from_numpy(session.run(None, feed)[0])
    return float((result - reference).abs().max())


def hwprune_pipeline(name: str, report: Report) -> dict[str, Any]:
    """Measurements of one model; a failure adds ``reason`` and keeps what was measured before it."""
    result: dict[str, Any] = {}
    try:
        prune_run_export(name, result, report)
    except StageError as exc:
        result["reason"] = str(exc)
    return result


def prune_run_export(name: str, result: dict[str, Any], report: Report) -> None:
    """Analyse, randomly prune, run and export one model, filling ``result``; raises StageError."""
    from hwprune.graph.analyze import analyze
    from hwprune.transform.prune import prune
    from hwprune.transform.trial import prove_prunable

    torch.manual_seed(SEED)
    with stage("load", report):
        loaded = load_spec(name)
    model, example = loaded.module, loaded.example_input
    result["input_shape"] = list(example.shape)
    with stage("randomize weights", report), torch.no_grad():
        randomize_model(model, torch.randn((4, *example.shape[1:])) if example.is_floating_point() else example)
    with stage("forward (unpruned)", report), torch.no_grad():
        out_shape = first_tensor(model(example)).shape
    with stage("analyze", report):
        analysis = analyze(model, example, name, strict=False)
    result["params_m"] = analysis.capture.params / 1e6
    result["groups"] = len(analysis.groups)
    result["traced_prunable"] = len(analysis.prunable())
    with stage("trial pruning", report):
        prove_prunable(analysis)
    result["prunable_groups"] = len(analysis.prunable())
    result["prunable_flops_pct"] = prunable_flops_pct(analysis)
    rng = random.Random(SEED)
    keep = {g.id: random_keep(g.channels, g.repeat, rng) for g in analysis.prunable()}
    with stage("prune", report):
        prune(analysis, keep)
    result["params_kept_pct"] = 100.0 * count_params(model) / analysis.capture.params
    with stage("forward (pruned)", report), torch.no_grad():
        out = first_tensor(model(example))
    if out.shape != out_shape:
        raise StageError(f"forward (pruned): output shape {list(out.shape)} != unpruned {list(out_shape)}")
    if not torch.isfinite(out).all():
        raise StageError("forward (pruned): non-finite output")
    result["output_max"] = float(out.abs().max())
    result["onnx_max_err"] = err = onnx_max_error(model, example, out, report)
    bound = ONNX_RTOL * result["output_max"] if result["output_max"] > 0 else 1e-6
    if err > bound:
        raise StageError(f"onnx mismatch: max abs err {err:.3g} > {bound:.3g}")


def prunable_flops_pct(analysis) -> float:
    """The share of the model's FLOPs in layers whose output width a prunable group sets (after the
    trial): what width pruning can shrink at the source (their readers shrink with them)."""
    layers = {name for group in analysis.prunable() for name in group.producers}
    flops = analysis.capture.layer_flops
    return 100.0 * sum(flops.get(name, 0) for name in layers) / max(analysis.capture.flops, 1)


def torch_pruning_groups(name: str, report: Report) -> dict[str, Any]:
    """torch-pruning alone on a fresh copy: how many groups its DependencyGraph finds."""
    import torch_pruning as tp

    torch.manual_seed(SEED)
    loaded = load_spec(name)
    report("build_dependency")
    graph = tp.DependencyGraph().build_dependency(loaded.module, loaded.example_input, verbose=False)
    return {"tp_groups": len(list(graph.get_all_groups()))}


def load_spec(name: str):
    """A zoo name (torchvision), an ``ultralytics:`` spec, or ``onnx-roundtrip:NAME`` (the torchvision
    model exported to ONNX and loaded back through hwprune's ``onnx:`` spec)."""
    from hwprune.export.onnx_export import export_onnx
    from hwprune.frontends import load_model

    if name.startswith("ultralytics:"):
        return load_model(name)
    if name.startswith("ultralytics-onnx:"):
        return load_model(f"onnx:{ultralytics_export(name.split(':', 1)[1])}")
    if name.startswith("onnx-roundtrip:"):
        original = load_model(f"torchvision:{name.split(':', 1)[1]}")
        folder = Path(tempfile.mkdtemp(prefix="hwprune-zoo-"))
        path = export_onnx(original.module, original.example_input, folder / "model.onnx")
        return load_model(f"onnx:{path}")
    return load_model(f"torchvision:{name}")


def ultralytics_export(yaml: str) -> Path:
    """The ONNX file Ultralytics itself writes for ``yaml`` (random weights, 640x640, its default opset),
    exported offline in a temporary folder, as a user's ``yolo export format=onnx`` would."""
    import os

    os.environ["YOLO_OFFLINE"], os.environ["YOLO_AUTOINSTALL"] = "1", "0"
    from ultralytics import YOLO

    folder = Path(tempfile.mkdtemp(prefix="hwprune-zoo-"))
    cwd = os.getcwd()
    try:
        os.chdir(folder)
        return folder / YOLO(yaml).export(format="onnx", imgsz=640, verbose=False)
    finally:
        os.chdir(cwd)


Pipeline = Callable[[str, Report], dict[str, Any]]


def _child(conn: Any, fn: Pipeline, name: str) -> None:
    warnings.simplefilter("ignore")  # torchvision init and legacy-exporter deprecation notices
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    try:
        result = fn(name, lambda step: conn.send(("stage", step)))
    except Exception as exc:  # noqa: BLE001 - any failure of the model under test is a result
        result = {"reason": first_line(exc)}
    conn.send(("result", result))


def run_isolated(fn: Pipeline, name: str, timeout: float) -> dict[str, Any]:
    """Run ``fn(name)`` in a fresh process; a hang becomes "timeout (in STAGE)", a crash its exit code."""
    ctx = mp.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(sender, fn, name), daemon=True)
    proc.start()
    sender.close()
    try:
        result = _wait_for_result(receiver, time.monotonic() + timeout)
    except EOFError:
        proc.join()
        result = {"reason": f"crashed (exit code {proc.exitcode})"}
    proc.kill()
    proc.join()
    return result


def _wait_for_result(receiver: Any, deadline: float) -> dict[str, Any]:
    current = "start-up"
    while receiver.poll(max(0.0, deadline - time.monotonic())):
        kind, payload = receiver.recv()
        if kind == "result":
            return payload
        current = payload
    return {"reason": f"timeout (in {current})"}


def measure(name: str, timeout: float) -> Row:
    start = time.perf_counter()
    zoo_name = name.removeprefix("onnx-roundtrip:")
    params = 0 if ":" in zoo_name else count_params(torchvision.models.get_model(zoo_name, weights=None))
    row = Row(model=name, params_m=params / 1e6, status="skipped")
    if params > MAX_PARAMS:
        row.reason = f">{MAX_PARAMS // 1_000_000}M params"
        return row
    ours = run_isolated(hwprune_pipeline, name, timeout)
    row.status = "error" if "reason" in ours else "ok"
    for key, value in ours.items():
        setattr(row, key, value)
    theirs = run_isolated(torch_pruning_groups, name, timeout)
    row.tp_groups = theirs.get("tp_groups")
    row.tp_error = theirs.get("reason")
    row.seconds = time.perf_counter() - start
    return row


def fmt(value: float | None, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def status_text(row: Row) -> str:
    if row.status == "ok":
        return "[green]ok[/]"
    colour = "yellow" if row.status == "skipped" else "red"
    return f"[{colour}]{row.status}[/] ({escape(row.reason or '')})"


def progress_line(index: int, total: int, row: Row) -> str:
    tp = fmt(row.tp_groups) if row.tp_error is None else f"error ({escape(row.tp_error)})"
    return (f"[{index}/{total}] {row.model}: {status_text(row)}, groups {fmt(row.groups)}, "
            f"torch-pruning {tp} ({row.seconds:.0f}s)")


def results_table(rows: list[Row]) -> Table:
    table = Table(title="hwprune coverage (random 30% prune of every prunable group)")
    text_columns = ("model", "hwprune", "torch-pruning groups")
    for column in ("model", "params M", "groups", "prunable (trace)", "prunable", "FLOPs prunable %",
                   "params kept %", "max |out|", "onnx max err",
                   *text_columns[1:]):
        table.add_column(column, justify="left" if column in text_columns else "right")
    for row in rows:
        tp = fmt(row.tp_groups) if row.tp_error is None else f"[red]error[/] ({escape(row.tp_error)})"
        table.add_row(row.model, f"{row.params_m:.1f}", fmt(row.groups), fmt(row.traced_prunable),
                      fmt(row.prunable_groups), fmt(row.prunable_flops_pct, ".1f"),
                      fmt(row.params_kept_pct, ".1f"), fmt(row.output_max, ".2g"),
                      fmt(row.onnx_max_err, ".1e"), status_text(row), tp if row.status != "skipped" else "-")
    return table


def totals(rows: list[Row], seconds: float) -> dict[str, Any]:
    tried = len(rows)
    skipped = sum(r.status == "skipped" for r in rows)
    ok = sum(r.status == "ok" for r in rows)
    tp_ok = sum(r.status != "skipped" and r.tp_error is None for r in rows)
    attempted = tried - skipped
    return {"tried": tried, "skipped": skipped, "ok": ok, "errors": attempted - ok,
            "success_pct": 100.0 * ok / attempted if attempted else math.nan,
            "torch_pruning_ok": tp_ok, "torch_pruning_errors": attempted - tp_ok,
            "torch_pruning_success_pct": 100.0 * tp_ok / attempted if attempted else math.nan,
            "seconds": seconds}


def totals_text(summary: dict[str, Any]) -> str:
    return (f"tried {summary['tried']}, skipped {summary['skipped']}, ok {summary['ok']}, "
            f"errors {summary['errors']}, success {summary['success_pct']:.1f}% of the models not skipped\n"
            f"torch-pruning alone: ok {summary['torch_pruning_ok']}, "
            f"errors {summary['torch_pruning_errors']}, success {summary['torch_pruning_success_pct']:.1f}%\n"
            f"total runtime {summary['seconds'] / 60:.1f} min")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated model names (default: the whole zoo)")
    parser.add_argument("--extra", action="store_true",
                        help="YOLO detectors (ultralytics yaml) and ONNX round trips instead of the zoo")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per model and per tool")
    parser.add_argument("--json", type=Path, help="also write the rows and totals to this JSON file")
    return parser.parse_args(argv)


EXTRA = ("ultralytics:yolov8n.yaml", "ultralytics-onnx:yolov8n.yaml", "ultralytics:yolov8s.yaml",
         "ultralytics-onnx:yolov8s.yaml", "ultralytics:yolo11n.yaml", "ultralytics-onnx:yolo11n.yaml",
         "onnx-roundtrip:resnet18", "onnx-roundtrip:mobilenet_v2", "onnx-roundtrip:efficientnet_b0")


def model_names(selection: str | None, extra: bool = False) -> list[str]:
    if extra:
        return list(EXTRA)
    zoo = torchvision.models.list_models(module=torchvision.models)
    if selection is None:
        return zoo
    names = [n.strip() for n in selection.split(",") if n.strip()]
    unknown = sorted(set(names) - set(zoo))
    if unknown:
        raise SystemExit(f"unknown torchvision classification models: {', '.join(unknown)}")
    return names


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.simplefilter("ignore")
    console = Console(width=None if sys.stdout.isatty() else 240)
    names = model_names(args.models, args.extra)
    start = time.perf_counter()
    rows = []
    for index, name in enumerate(names, 1):
        rows.append(measure(name, args.timeout))
        console.print(progress_line(index, len(names), rows[-1]), highlight=False)
    summary = totals(rows, time.perf_counter() - start)
    console.print(results_table(rows))
    console.print(totals_text(summary), highlight=False)
    if args.json:
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows], "totals": summary}, indent=2))


if __name__ == "__main__":
    main()
