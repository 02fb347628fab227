"""``ultralytics:NAME.yaml`` and ``ultralytics:FILE.pt``: Ultralytics detectors, their outputs made plain
tensors, and the pruned model saved back as an Ultralytics checkpoint."""

from __future__ import annotations

import copy
import datetime
import os
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from hwprune.errors import ModelSpecError
from hwprune.frontends.base import Decode, Role, _one_line, state_digest
from hwprune.io import write_atomic

ULTRALYTICS_IMAGE_SHAPE = (1, 3, 640, 640)  # the size Ultralytics' detectors are trained and exported at
ULTRALYTICS_MIN_VERSION = (8, 4, 80)  # the first release whose torch_safe_load(safe_only=True) is weights_only


class UltralyticsDetector(nn.Module):
    """An Ultralytics DetectionModel whose forward returns the Detect head's raw outputs as tensors.

    In eval mode a DetectionModel returns ``(decoded, {"boxes", "scores", "feats"})``, a tuple with a dict
    of tensors and lists, which tracing, ONNX export and verification cannot take as one output. The
    decode (DFL softmax, anchor grid, strides, sigmoid) has no weights, so nothing prunable is lost by
    stopping before it: the forward runs the layers as ``DetectionModel._predict_once`` does and returns
    ``(boxes, scores)`` from the head's ``forward_head``: (B, 4 * reg_max, A) box-distribution logits and
    (B, nc, A) class logits over the A anchors of all levels, exactly what the decode reads.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *body, head = self.detector.model
        saved: list[torch.Tensor | None] = []
        for layer in body:
            if layer.f != -1:  # the layer reads earlier outputs, not only the previous one
                x = saved[layer.f] if isinstance(layer.f, int) else [x if j == -1 else saved[j] for j in layer.f]
            x = layer(x)
            saved.append(x if layer.i in self.detector.save else None)
        features = [x if j == -1 else saved[j] for j in head.f]
        raw = head.forward_head(features, **head.one2many)
        return raw["boxes"], raw["scores"]


# the raw (boxes, scores): box-distribution logits and class logits, features along axis 1
RAW_ROLES = (Role("boxes", 0, 1), Role("classes", 1, 1, kind="logit"))


def box_decode(detector: UltralyticsDetector) -> Decode:
    """The detector's ``(boxes, scores)`` outputs to boxes as its predict gives them: the Detect head's own
    decode (DFL, anchor grid, strides, sigmoid; no weights a plan prunes), then ``frontends.decodes.ultralytics_boxes``
    (the predict defaults). The head's strides and layout are the same in every pruned copy."""
    from hwprune.frontends.decodes import ultralytics_boxes

    head = detector.detector.model[-1]

    def decode(outputs: list[torch.Tensor], shape: tuple[int, ...]) -> list[torch.Tensor]:
        boxes, scores = outputs
        levels = [boxes.new_empty(shape[0], 0, shape[2] // s, shape[3] // s) for s in head.stride.int().tolist()]
        return ultralytics_boxes(head._inference({"boxes": boxes, "scores": scores, "feats": levels}))

    return decode


def _import_ultralytics(spec: str) -> ModuleType:
    """ultralytics, imported offline. It reads these at import: YOLO_OFFLINE skips its DNS probe, and
    with it telemetry (events), Sentry and hub sync (all need it online); YOLO_AUTOINSTALL=0 stops it from
    pip-installing what a checkpoint names; YOLO_VERBOSE=0 unless set. Its import also sets
    OMP_NUM_THREADS=1 when unset, which would leak into child processes: undone."""
    if "ultralytics" not in sys.modules:
        os.environ.update(YOLO_OFFLINE="1", YOLO_AUTOINSTALL="0")
        os.environ.setdefault("YOLO_VERBOSE", "0")
    threads = os.environ.get("OMP_NUM_THREADS")
    try:
        import ultralytics
    except ModuleNotFoundError as exc:
        if exc.name != "ultralytics":
            raise ModelSpecError(f"{spec}: ultralytics cannot be imported: {_one_line(exc)}") from exc
        raise ModelSpecError(f"{spec}: ultralytics is not installed (pip install 'hwprune[ultralytics]'; "
                             "it is AGPL-3.0)") from None
    except ImportError as exc:  # e.g. OpenCV without its system libraries
        raise ModelSpecError(f"{spec}: ultralytics cannot be imported: {_one_line(exc)}") from exc
    finally:
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    version = tuple(int(p) for p in ultralytics.__version__.split(".")[:3] if p.isdigit())
    if version < ULTRALYTICS_MIN_VERSION:
        raise ModelSpecError(f"{spec}: ultralytics {ultralytics.__version__} is too old, hwprune needs >= "
                             f"{'.'.join(map(str, ULTRALYTICS_MIN_VERSION))} (pip install 'hwprune[ultralytics]')")
    return ultralytics


def _load_ultralytics(target: str, weights: str | None, trust_pickle: bool, input_shape: tuple[int, ...] | None
                      ) -> tuple[UltralyticsDetector, tuple[int, ...], Path | None]:
    """An Ultralytics detector from a model yaml (random weights, drawn under the caller's seed) or a
    checkpoint, unfused, wrapped to return tensors; its default input shape; the checkpoint, if any."""
    spec = f"ultralytics:{target}"
    if weights is not None:
        raise ModelSpecError(f"{spec}: --weights does not apply; load trained weights as ultralytics:FILE.pt")
    if "://" in target:
        raise ModelSpecError(f"{spec}: hwprune never downloads; give a model yaml or a local .pt file")
    suffix = Path(target).suffix.lower()
    if suffix not in (".yaml", ".yml", ".pt"):
        raise ModelSpecError(f"{spec}: expected a model yaml (e.g. ultralytics:yolov8n.yaml) or a .pt checkpoint")
    _import_ultralytics(spec)
    checkpoint = Path(target) if suffix == ".pt" else None
    detector = _ultralytics_yaml(spec, target) if checkpoint is None else _ultralytics_checkpoint(
        checkpoint, trust_pickle)
    from ultralytics.nn.modules.head import Detect

    head = detector.model[-1]
    if type(head) is not Detect or getattr(head, "one2one_cv2", None) is not None:
        raise ModelSpecError(f"{spec}: its head is {type(head).__name__}"
                             f"{' (end-to-end)' if type(head) is Detect else ''}; hwprune supports Ultralytics "
                             "detection models with the plain Detect head (YOLOv8, YOLO11 and alike)")
    stride = int(detector.stride.max())
    if input_shape is not None and (len(input_shape) != 4 or any(d % stride for d in input_shape[2:])):
        raise ModelSpecError(f"{spec}: input shape {input_shape} must be N,C,H,W with H and W multiples of the "
                             f"model's stride {stride}")
    return UltralyticsDetector(detector.float()), ULTRALYTICS_IMAGE_SHAPE, checkpoint


def _ultralytics_yaml(spec: str, name: str) -> nn.Module:
    from ultralytics.nn.tasks import DetectionModel, guess_model_task, yaml_model_load

    try:
        config = yaml_model_load(name)
    except FileNotFoundError:
        raise ModelSpecError(f"{spec}: no such model yaml, neither a file nor one that ultralytics ships "
                             "(e.g. yolov8n.yaml, yolo11n.yaml)") from None
    except Exception as exc:
        raise ModelSpecError(f"{spec}: not a readable model yaml: {_one_line(exc)}") from exc
    task = guess_model_task(config)
    if task != "detect":
        raise ModelSpecError(f"{spec}: a {task} model; hwprune supports Ultralytics detection models")
    try:
        return DetectionModel(config, verbose=False)
    except Exception as exc:  # parse_model fails in many ways on a malformed yaml
        raise ModelSpecError(f"{spec}: ultralytics could not build it: {_one_line(exc)}") from exc


def _ultralytics_checkpoint(path: Path, trust_pickle: bool) -> nn.Module:
    """The model in an Ultralytics checkpoint: by ultralytics' restricted loader (``torch.load(weights_only=True)``
    with an allow-list of ultralytics' and torch's module classes), or, only if ``trust_pickle``, unpickled whole."""
    from ultralytics.nn.tasks import torch_safe_load

    if not path.is_file():
        raise ModelSpecError(f"{path}: file not found")
    if not zipfile.is_zipfile(path):
        raise ModelSpecError(f"{path}: not a torch.save checkpoint (not a zip archive)")
    if not trust_pickle and not hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):
        raise ModelSpecError(f"{path}: torch {torch.__version__} cannot load it with weights_only=True (needs torch "
                             ">= 2.6); if you trust the file, pass --trust-pickle (unpickling can run code from it)")
    resolved = str(path.resolve())  # never a bare name: ultralytics re-downloads a broken official asset by name
    try:
        checkpoint, _ = torch_safe_load(resolved, safe_only=True)
    except Exception as exc:
        if not trust_pickle:
            raise ModelSpecError(f"{path}: torch.load(weights_only=True) refuses it ({_one_line(exc)}); if you trust "
                                 "the file, pass --trust-pickle (unpickling can run code from it)") from exc
        try:
            checkpoint, _ = torch_safe_load(resolved, safe_only=False)
        except Exception as again:
            raise ModelSpecError(f"{path}: not a loadable Ultralytics checkpoint: {_one_line(again)}") from again
    model = (checkpoint.get("ema") or checkpoint.get("model")) if isinstance(checkpoint, dict) else None
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"{path}: not an Ultralytics checkpoint (no 'model' or 'ema' module in it)")
    return model


def save_ultralytics(module: nn.Module, spec: str, path: str | Path) -> None:
    """Write ``module`` (loaded from an ``ultralytics:`` spec, pruned or not) as an Ultralytics checkpoint,
    atomically. ``ultralytics.YOLO(path)`` loads it for predict, val and export, and so does
    ``ultralytics:path``: the modules are pickled with their pruned widths. Training it needs a trainer
    whose ``get_model`` returns this model, because Ultralytics' trainer rebuilds the model from its yaml,
    which still describes the unpruned widths (see docs/detectors-and-onnx.md)."""
    if not isinstance(module, UltralyticsDetector):
        raise ModelSpecError(f"{spec}: only a model loaded from an ultralytics: spec can be saved for Ultralytics")
    ultralytics = _import_ultralytics(spec)
    detector = copy.deepcopy(module.detector).float().eval()
    if hasattr(detector, "criterion"):
        detector.criterion = None  # training state, rebuilt by the trainer (as ultralytics' own save does)
    checkpoint = {
        "date": datetime.datetime.now().isoformat(), "version": ultralytics.__version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)", "docs": "https://docs.ultralytics.com",
        "epoch": -1, "best_fitness": None, "model": detector, "ema": None, "updates": None, "optimizer": None,
        "train_args": {}, "hwprune": {"source": spec, "state_sha256": state_digest(module)},
    }
    write_atomic(path, lambda tmp: torch.save(checkpoint, tmp))
