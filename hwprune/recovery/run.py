"""``hwprune recover BUILD_DIR``: distil a compiled build's pruned model back towards the unpruned one.

The teacher is rebuilt from the plan's provenance (its digest checked), the student from the plan
and ``pruned.pt`` (so it is exactly the compiled model, BatchNorm re-estimation included). After
training, rank 0 exports ``recovered.onnx`` (``pruned.onnx`` is left as it was) with
``recovered.pt``, verifies and measures it against ``baseline.onnx``, and adds a ``recovery``
section to the report (``report.json`` rewritten last, atomically) and to the plan. A checkpoint
(student and optimiser state, never the teacher) is written each epoch under ``recover/``;
``--resume`` continues from it; an interrupted run leaves it and nothing that looks finished.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from hwprune.errors import HwpruneError, PlanError
from hwprune.evaluate.boxes import box_f1
from hwprune.evaluate.calibration import compare_all, logits_kl, output_tensors
from hwprune.export.nm_check import nm_weights
from hwprune.export.onnx_export import ExportStyle, OnnxIO, export_onnx
from hwprune.export.verify import verify_onnx
from hwprune.frontends import NATIVE_FILES, check_model, load_model, save_native, weights_named
from hwprune.frontends.base import Capabilities, Decode
from hwprune.graph.analyze import analyze
from hwprune.io import staged, write_atomic, write_text_atomic
from hwprune.plan import Plan, Recovery, load_plan, save_plan
from hwprune.recovery.data import TrainingData, open_data, spec_normalisation
from hwprune.recovery.distill import Recipe, Trained, detector_scales, distil
from hwprune.recovery.world import World, join
from hwprune.runtime import runtime_for
from hwprune.runtime.onnx_files import data_file
from hwprune.targets import load_target
from hwprune.transform.realise import realise, realise_unmerged
from hwprune.transform.rewrite import merged
from hwprune.transform.sparsify import sparsify

CHECKPOINT_FORMAT = "hwprune-recovery-checkpoint/1"
EVAL_BATCHES = 64  # at most this many batches of --eval-data (or of --data when none) for fidelity


@dataclass(frozen=True)
class RecoverOptions:
    data: str
    eval_data: str | None = None
    recipe: Recipe = Recipe()
    resume: bool = False
    device: str | None = None
    mean: tuple[float, ...] | None = None  # None: as the model spec's own preprocessing (spec_normalisation)
    std: tuple[float, ...] | None = None


def recover(build: Path, options: RecoverOptions, console: Console | None = None) -> dict:
    """Recover the build in ``build``; returns the report's recovery section (on every rank)."""
    console = console or Console(stderr=True, soft_wrap=True)
    world = join(options.device)
    try:
        return _recover(build, options, console, world)
    finally:
        world.leave()


def _recover(build: Path, options: RecoverOptions, console: Console, world: World) -> dict:
    plan, teacher, student, x, capabilities = _models(build)
    decode = capabilities.detections
    recipe = options.recipe
    torch.manual_seed(recipe.seed)
    mean, std = spec_normalisation(plan.provenance.model, int(x.shape[1]) if x.dim() > 1 else 1)
    mean, std = options.mean or mean, options.std or std
    data = open_data(options.data, x, recipe.batch_size, recipe.seed, world.rank, world.size, mean, std)
    evaluation = open_data(options.eval_data or options.data, x, recipe.batch_size, recipe.seed, shuffle=False,
                           mean=mean, std=std)
    say = console.print if world.main else (lambda *_a, **_k: None)
    say(f"recover {plan.provenance.model}: {data.samples} samples from {data.spec} "
        f"({'labelled' if data.labelled else 'no labels'}), {world.size} process(es) on {world.device}, "
        f"global batch {recipe.batch_size}, {recipe.epochs} epochs")
    teacher.to(world.device)
    student.to(world.device)
    before = _evaluate(teacher, student, evaluation, world.device, decode)
    roles = capabilities.detection_roles
    detector = detector_scales(teacher, data, roles, world) if roles else None
    checkpoint_path = build / "recover" / "checkpoint.pt"
    identity = _plan_identity(plan)
    progress, state = Trained(), None
    if options.resume:
        progress, state = _resume(checkpoint_path, identity, student, recipe)
        say(f"  resumed after epoch {progress.epoch} of {recipe.epochs}")
    elif world.main and checkpoint_path.exists():
        checkpoint_path.unlink()

    def on_epoch(done: Trained, optimiser_state: dict) -> None:
        say(f"  epoch {done.epoch}/{recipe.epochs}: loss {done.losses[-1]:.4f}, {done.throughput[-1]:.0f} samples/s")
        if world.main:
            _save_checkpoint(checkpoint_path, identity, student, recipe, done, optimiser_state)

    with _progress_bar(console, world, recipe.epochs * len(data), progress.epoch * len(data)) as on_batch:
        masks = plan.sparsity.layers  # N:M masks hold after every step
        distil(teacher, student, data, recipe, world, progress, state, _feature_layers(plan, student),
               constraints=[lambda model: sparsify(model, masks)] if masks else (),
               on_batch=on_batch, on_epoch=on_epoch, detector=detector)
    after = _evaluate(teacher, student, evaluation, world.device, decode)
    section = {"data": options.data, "eval_data": options.eval_data or options.data, "samples": data.samples,
               "processes": world.size, "device": str(world.device), "recipe": asdict(recipe),
               "loss": progress.losses, "samples_per_second": progress.throughput,
               "batchnorm": "trained with the student (batch statistics; running statistics updated)",
               "before": before, "after": after}
    if detector is not None:  # the detector's roles: its values' variances, the divergence its scores take
        section["detector_loss"] = detector.to_json()
    if world.main:
        student = merged(student.cpu().eval(), x, plan.merge)
        section.update(_publish(build, plan, student, x, section, console))
    world.barrier()
    return section


@contextlib.contextmanager
def _progress_bar(console: Console, world: World, total: int, done: int) -> Iterator[Callable[[int, float, int], None]]:
    """A bar with the loss, samples per second and the time left, on rank 0 (the others stay quiet)."""
    if not world.main:
        yield lambda *_: None
        return
    columns = (TextColumn("distil"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TextColumn("{task.fields[rate]} samples/s"), TimeRemainingColumn())
    started = time.perf_counter()
    seen = [0]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("distil", total=total, completed=done, loss="-", rate="-")

        def advance(_index: int, loss: float, samples: int) -> None:
            seen[0] += samples
            rate = seen[0] / max(time.perf_counter() - started, 1e-9)
            bar.update(task, advance=1, loss=f"{loss:.4f}", rate=f"{rate:.0f}")

        yield advance


def _models(build: Path) -> tuple[Plan, nn.Module, nn.Module, torch.Tensor, Capabilities]:
    """The plan, the unpruned teacher (digest checked), the compiled student, from ``build``, the example input
    and the model's capabilities (for a detector, its box decode and its outputs' roles)."""
    plan_path = build / "plan.json"
    if not plan_path.is_file():
        raise PlanError(f"{build}: no plan.json (run hwprune compile --out {build} first)")
    plan = load_plan(plan_path)
    provenance = plan.provenance
    loaded = load_model(provenance.model, tuple(provenance.input_shape), weights_named(provenance.weights),
                        provenance.seed or 0)
    check_model(plan, loaded, str(plan_path))
    teacher = loaded.module.eval()
    analysis = analyze(copy.deepcopy(teacher), loaded.example_input, loaded.name, exclude=provenance.exclude,
                       strict=False)
    # Merged spans train apart (activations removed, padding moved) and merge at export: the compile
    # keeps that form's weights beside the merged ones.
    # The student's weights are loaded below, so a replaced run's map need not be fitted again: its
    # structure is the plain removal's (the fold keeps the projection's shape).
    shape = replace(plan, depth=tuple(replace(entry, fold=None) for entry in plan.depth))
    student = realise_unmerged(shape, analysis) if plan.merge else realise(shape, analysis)
    weights = build / ("pruned_unmerged.pt" if plan.merge else "pruned.pt")
    if not weights.is_file():
        raise PlanError(f"{build}: no {weights.name} beside the plan")
    try:
        student.load_state_dict(torch.load(weights, weights_only=True))
    except RuntimeError as exc:
        raise PlanError(f"{weights}: not the weights of the model {plan_path} describes "
                        f"({str(exc).splitlines()[0]})") from exc
    return plan, teacher, student.eval(), loaded.example_input, loaded.capabilities


def _evaluate(teacher: nn.Module, student: nn.Module, data: TrainingData, device: torch.device,
              decode: Decode | None) -> dict:
    """Fidelity of the student to the teacher, with labels both models' accuracy, and for a detector (its box
    ``decode``) box agreement, as compile measures it."""
    references, outputs, shapes, correct = [], [], [], {"teacher": 0, "student": 0}
    counted = 0
    with torch.no_grad():
        for index, batch in enumerate(data.epoch(0)):
            if index == EVAL_BATCHES:
                break
            inputs = batch.inputs.to(device)
            references.append([t.cpu() for t in output_tensors(teacher(inputs))])
            outputs.append([t.cpu() for t in output_tensors(student(inputs))])
            shapes.append(tuple(inputs.shape))
            if batch.targets is not None and references[-1][0].dim() == 2:
                correct["teacher"] += int((references[-1][0].argmax(1) == batch.targets).sum())
                correct["student"] += int((outputs[-1][0].argmax(1) == batch.targets).sum())
                counted += len(batch.targets)
    quality = compare_all(references, outputs)
    found = {"cosine": quality.overall_cosine, "top1_agreement": quality.top1_agreement, "samples": quality.samples}
    if getattr(teacher, "returns_logits", False):  # a language model: KL per position, as compile reports it
        found["kl"] = logits_kl([r[0] for r in references], [o[0] for o in outputs])
    if decode is not None:
        found["box_agreement"] = box_f1((decode(r, shape), decode(o, shape))
                                        for r, o, shape in zip(references, outputs, shapes, strict=True))
    if counted:
        found["accuracy"] = correct["student"] / counted
        found["teacher_accuracy"] = correct["teacher"] / counted
    return found


def _plan_identity(plan: Plan) -> str:
    """What a checkpoint must have been made for: the unpruned weights and the width decisions."""
    width = {k: asdict(v) for k, v in plan.groups().items()}
    text = json.dumps({"state": plan.provenance.state_sha256, "width": width}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _save_checkpoint(path: Path, identity: str, student: nn.Module, recipe: Recipe, progress: Trained,
                     optimiser_state: dict) -> None:
    checkpoint = {"format": CHECKPOINT_FORMAT, "plan": identity, "recipe": asdict(recipe),
                  "progress": asdict(progress), "student": student.state_dict(), **optimiser_state}
    write_atomic(path, lambda tmp: torch.save(checkpoint, tmp))


def _resume(path: Path, identity: str, student: nn.Module, recipe: Recipe) -> tuple[Trained, dict]:
    if not path.is_file():
        raise HwpruneError(f"--resume: no checkpoint at {path}")
    try:
        saved = torch.load(path, weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise HwpruneError(f"--resume: {path} is not a checkpoint ({type(exc).__name__})") from exc
    if saved.get("format") != CHECKPOINT_FORMAT or saved.get("plan") != identity:
        raise HwpruneError(f"--resume: {path} was written for another plan or model")
    if saved["recipe"] != asdict(recipe):
        raise HwpruneError(f"--resume: {path} was written with another recipe ({saved['recipe']}); pass the same "
                           "--epochs/--lr/--batch-size/--temperature")
    student.load_state_dict(saved["student"])
    return Trained(**saved["progress"]), {"optimiser": saved["optimiser"], "schedule": saved["schedule"]}


def _feature_layers(plan: Plan, student: nn.Module) -> dict[str, list[int]]:
    """Each pruned group's root layer with the channels the plan kept (unconstrained groups, whose
    channels the export may reorder, attention heads, layers of a merged span, whose maps the
    padding move enlarges, and layers a dropped block took are left out)."""
    present = dict(student.named_modules())
    merging = {conv for entry in plan.merge for conv in entry.convs}
    return {gid: d.indices for gid, d in plan.width.items()
            if d.keep < d.of and d.readers is None and gid in present
            and gid not in merging}


def _publish(build: Path, plan: Plan, student: nn.Module, x: torch.Tensor, section: dict,
             console: Console) -> dict:
    """Rank 0: export, verify and measure the recovered model; report, plot and plan; report.json last."""
    report_path = build / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    dynamic = bool(report and report.get("export", {}).get("dynamic_batch"))
    with staged(build, ("recovered.onnx", data_file(Path("recovered.onnx")).name, "recovered.pt",
                        *RECOVERED_NATIVE.values())) as stage:
        io = OnnxIO.of(build / "pruned.onnx") if (build / "pruned.onnx").is_file() else OnnxIO()
        exported = report.get("export") if report else None  # as the compile exported its models
        style = (ExportStyle(exported.get("slimmed", False), exported.get("exporter") == "dynamo") if exported
                 else ExportStyle.of(student))
        onnx = export_onnx(student, x, stage / "recovered.onnx", dynamic, style, io)
        verification = verify_onnx(student, onnx, [x])
        if not verification.ok:
            raise HwpruneError(f"recovered.onnx does not match the recovered model: {verification.worst}")
        wrong = [name for name, found in nm_weights(onnx, plan.sparsity.layers, student).items() if not found["nm"]]
        if wrong:
            raise HwpruneError(f"recovered.onnx: weights are not N:M in {', '.join(wrong)}")
        torch.save(student.state_dict(), stage / "recovered.pt")
        found = {"onnx": "recovered.onnx", "weights": "recovered.pt", "verify": verification.to_json(),
                 "measured_speedup": _measure(plan, build / "baseline.onnx", onnx, console)}
        native = _save_native(build, plan, student, stage)
        if native is not None:
            found["native"] = native
    section = {**section, **found}
    write_atomic(build / "plots" / "recovery.png", lambda tmp: _plot(section, tmp))
    save_plan(replace(plan, recovery=Recovery(section["data"], section["recipe"]["epochs"], section["recipe"],
                                              "recovered.pt", "distilled weights: the plan alone rebuilds the pruned "
                                              "model, not these")), build / "plan.json")
    markdown = build / "report.md"
    text = markdown.read_text().split("\n## Recovery\n")[0] if markdown.is_file() else ""
    write_text_atomic(markdown, text.rstrip("\n") + "\n\n" + recovery_markdown(section))
    if report is not None:
        report["recovery"] = section
        write_text_atomic(report_path, json.dumps(report, indent=1) + "\n")
    before, after = section["before"], section["after"]
    accuracy = (f", accuracy {100 * before['accuracy']:.1f}% -> {100 * after['accuracy']:.1f}% (unpruned "
                f"{100 * after['teacher_accuracy']:.1f}%)" if "accuracy" in after else "")
    kl = f", KL {before['kl']:.3g} -> {after['kl']:.3g} nats" if "kl" in after else ""
    boxes = (f", box agreement {_f1(before['box_agreement'])} -> {_f1(after['box_agreement'])}"
             if "box_agreement" in after else "")
    console.print(f"  recovered: cosine {before['cosine']:.4f} -> {after['cosine']:.4f}{kl}{accuracy}{boxes}")
    return found


RECOVERED_NATIVE = {name: name.replace("pruned", "recovered", 1) for name in NATIVE_FILES}


def _save_native(build: Path, plan: Plan, student: nn.Module, stage: Path) -> str | None:
    """The recovered model in its framework's own format where the compile wrote the pruned one so
    (``recovered_hf/`` beside ``pruned_hf/``: ``from_pretrained`` loads the distilled weights); its name."""
    pruned = next((name for name in NATIVE_FILES if (build / name).exists()), None)
    if pruned is None:
        return None
    with tempfile.TemporaryDirectory(dir=stage) as tmp:
        written = save_native(student, plan.provenance.model, Path(tmp))
        if written is None:
            return None
        (Path(tmp) / written).rename(stage / RECOVERED_NATIVE[written])
    return RECOVERED_NATIVE[written]


def _measure(plan: Plan, baseline: Path, recovered: Path, console: Console) -> float | None:
    """The recovered model's speedup over the baseline, interleaved, where this host runs the target."""
    runtime = runtime_for(load_target(plan.provenance.target))
    if runtime.unavailable_reason() is not None or not baseline.is_file():
        console.print(f"  not measured: {runtime.unavailable_reason() or 'no baseline.onnx in the build'}")
        return None
    runners = [runtime.load(baseline), runtime.load(recovered)]
    try:
        return 1.0 / runtime.interleaved(runners, rounds=15).ratios[1]
    finally:
        for runner in runners:
            runner.close()


def recovery_markdown(section: dict) -> str:
    before, after = section["before"], section["after"]
    recipe = section["recipe"]
    lines = ["## Recovery", "",
             f"Distilled from the unpruned model for {recipe['epochs']} epochs on {section['samples']} samples of "
             f"`{section['data']}` ({section['processes']} process(es), global batch {recipe['batch_size']}, AdamW "
             f"lr {recipe['lr']:g} with a cosine schedule, temperature {recipe['temperature']:g}"
             f"{', feature loss' if recipe['feature_loss'] else ''}); BatchNorm {section['batchnorm']}."
             f"{_roles_line(section.get('detector_loss'))}", "",
             "| | before recovery | after |", "|---|---:|---:|",
             f"| output cosine to the unpruned model | {before['cosine']:.4f} | {after['cosine']:.4f} |"]
    if "kl" in after:
        lines.append(f"| KL divergence per position (nats) | {before['kl']:.4g} | {after['kl']:.4g} |")
    if "box_agreement" in after:
        lines.append(f"| box agreement (F1, same class at IoU >= 0.5) | {_f1(before['box_agreement'])} | "
                     f"{_f1(after['box_agreement'])} |")
    if "accuracy" in after:
        lines.append(f"| accuracy (unpruned: {100 * after['teacher_accuracy']:.1f}%) | "
                     f"{100 * before['accuracy']:.1f}% | {100 * after['accuracy']:.1f}% |")
    losses = ", ".join(f"{loss:.4f}" for loss in section["loss"])
    speed = section.get("measured_speedup")
    lines += ["", f"Loss per epoch: {losses}. `recovered.onnx` verified (max abs err "
              f"{section['verify']['max_abs_err']:.2g}); measured speedup "
              f"{'not measured here' if speed is None else f'{speed:.2f}x'} (the structure is the pruned model's).",
              "", "![loss](plots/recovery.png)", ""]
    return "\n".join(lines)


def _roles_line(variances: dict[str, list[float] | str] | None) -> str:
    """How a detector's outputs were distilled: the KL per feature, a value's spread the teacher's own."""
    if not variances:
        return ""
    roles = "; ".join(f"{name} {', '.join(f'{v:.3g}' for v in value)}" if isinstance(value, list) else
                      f"{name} {value}" for name, value in variances.items())
    return (f" The detector's outputs: the KL divergence per feature, scores as Bernoulli, values as Gaussian with "
            f"the teacher's variance across the training inputs ({roles}).")


def _f1(value: float | None) -> str:
    return "no boxes" if value is None else f"{value:.3f}"


def _plot(section: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    epochs = range(1, len(section["loss"]) + 1)
    ax.plot(epochs, section["loss"], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("distillation loss")
    ax.set_title("recovery")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")  # the path may be a temporary name
    plt.close(fig)
