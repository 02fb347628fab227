"""Resolve a model spec (``torchvision:NAME``, ``timm:NAME``, ``file.py:factory``, ``file.pt2``,
``onnx:FILE.onnx``, ``ultralytics:NAME.yaml``, ``ultralytics:FILE.pt``, ``hf:PATH``, ``hf:NAME``) to a module.

Every failure is a :class:`ModelSpecError` whose message names the spec, so the CLI can print one
line and exit 2 instead of a traceback.

Random weights are drawn under a seed (``DEFAULT_SEED`` unless told otherwise), and so is the
example input, so that the same spec always gives the same model: a plan records the digest of
the state dict it was made for (``state_digest``) and re-applying it rebuilds and checks that model.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from hwprune.errors import ModelSpecError, PlanError
from hwprune.hf_layout import conv1d_state, linear_from_conv1d, pruned_config
from hwprune.io import write_atomic
from hwprune.plan import Plan

DEFAULT_IMAGE_SHAPE = (1, 3, 224, 224)
ULTRALYTICS_IMAGE_SHAPE = (1, 3, 640, 640)  # the size Ultralytics' detectors are trained and exported at
HF_TOKEN_SHAPE = (1, 128)  # batch, sequence: the example token ids of an hf: model
DEFAULT_SEED = 0
HUB_WEIGHTS = "weights from the torch hub cache"
ULTRALYTICS_MIN_VERSION = (8, 4, 80)  # the first release whose torch_safe_load(safe_only=True) is weights_only


@dataclass
class LoadedModel:
    """A model in eval mode with the input it is analysed, exported and timed on."""

    name: str
    module: nn.Module
    example_input: torch.Tensor
    weights: str  # where the weights came from, for the plan's provenance
    seed: int | None  # the seed random weights and the example were drawn with; None: weights from a file
    source_onnx: Path | None = None  # an onnx: spec's file: the baseline compile measures and checks against


def weights_named(source: str) -> str | None:
    """The ``--weights`` value a recorded weights source was loaded with (``DEFAULT`` for torchvision's
    hub weights), so a model can be rebuilt from a plan alone; None for every other source."""
    if source.startswith("torchvision ") and source.endswith(HUB_WEIGHTS):
        return source.split()[1]
    return None


def state_digest(module: nn.Module) -> str:
    """sha256 over the state dict's names, dtypes, shapes and values: which weights a plan was made for."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse ``1,3,224,224`` (or ``1x3x224x224``) into a tuple of positive ints."""
    parts = text.replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts if p.strip())
    except ValueError:
        raise ModelSpecError(f"--input-shape {text!r}: expected comma-separated integers like 1,3,224,224") from None
    if not shape or any(d <= 0 for d in shape):
        raise ModelSpecError(f"--input-shape {text!r}: every dimension must be a positive integer")
    return shape


def load_model(spec: str, input_shape: tuple[int, ...] | None = None, weights: str | None = None,
               seed: int = DEFAULT_SEED, trust_pickle: bool = False) -> LoadedModel:
    """Load ``spec``; ``input_shape`` overrides the model's default example input. Random weights,
    a factory's and the example input are drawn under ``seed`` (the global RNG is left as it was).
    ``trust_pickle`` lets an ``ultralytics:FILE.pt`` that ``torch.load(weights_only=True)`` refuses be
    fully unpickled, which can run code from the file: an explicit opt-in, never a fallback."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _load(spec, input_shape, weights, seed, trust_pickle)


def _load(spec: str, input_shape: tuple[int, ...] | None, weights: str | None, seed: int,
          trust_pickle: bool) -> LoadedModel:
    source = f"random, seed {seed}"
    if spec.startswith("torchvision:"):
        module, shape = _load_torchvision(spec.split(":", 1)[1], weights)
        example = None
        source = source if weights is None else f"torchvision {weights} {HUB_WEIGHTS}"
    elif spec.startswith("timm:"):
        module, shape = _load_timm(spec.split(":", 1)[1], weights)
        example = None
    elif spec.startswith("onnx:"):
        path = Path(spec.split(":", 1)[1])
        module, example = _load_onnx(path, input_shape)
        input_shape = shape = None  # the example already has the requested shape and the graph's dtype
        source = f"the ONNX file {path}"
    elif spec.startswith("ultralytics:"):
        module, shape, checkpoint = _load_ultralytics(spec.split(":", 1)[1], weights, trust_pickle, input_shape)
        example = None
        source = source if checkpoint is None else f"the Ultralytics checkpoint {checkpoint}"
    elif spec.startswith("hf:"):
        module, example, source = _load_hf(spec.split(":", 1)[1], weights, input_shape)
        input_shape = shape = None  # the example already holds token ids of the requested shape
    elif spec.endswith(".pt2"):
        module, example = _load_exported(Path(spec))
        shape = None
        source = f"the program file {spec}"
    elif ".py:" in spec:
        path, factory = spec.rsplit(":", 1)
        module, example = _load_factory(Path(path), factory)
        shape = None
        source = f"{factory}() in {path}, called with the global seed {seed}"
    else:
        hint = f" (an ONNX file is loaded as onnx:{spec})" if spec.endswith(".onnx") else ""
        raise ModelSpecError(
            f"model spec {spec!r} not understood: use torchvision:NAME, timm:NAME, path/to/file.py:factory, "
            f"path/to/program.pt2, onnx:FILE.onnx, ultralytics:NAME.yaml, ultralytics:FILE.pt, hf:PATH or hf:NAME{hint}"
        )
    if input_shape is not None:  # same kind of input as the model's own example, new shape
        if example is None or example.is_floating_point():
            example = torch.randn(input_shape)
        else:
            example = torch.randint(0, int(example.max()) + 1, input_shape, dtype=example.dtype)
    elif example is None:
        example = torch.randn(shape or DEFAULT_IMAGE_SHAPE)
    seeded = source.startswith("random") or ".py:" in spec  # the weights depend on the seed
    onnx_file = Path(spec.split(":", 1)[1]) if spec.startswith("onnx:") else None
    return LoadedModel(spec, module.eval(), example, source, seed if seeded else None, onnx_file)


def _load_torchvision(name: str, weights: str | None) -> tuple[nn.Module, tuple[int, ...]]:
    import torchvision

    if name not in torchvision.models.list_models():
        raise ModelSpecError(f"torchvision:{name}: no such torchvision model (see torchvision.models.list_models())")
    shape = DEFAULT_IMAGE_SHAPE
    weight_enum = None
    try:
        weight_enum = torchvision.models.get_model_weights(name).DEFAULT
        crop = weight_enum.transforms().crop_size
        size = crop[0] if isinstance(crop, (list, tuple)) else crop
        shape = (1, 3, int(size), int(size))
    except (ValueError, AttributeError, KeyError, TypeError):
        pass
    if weights is None:
        return torchvision.models.get_model(name, weights=None), shape
    if weight_enum is None:
        raise ModelSpecError(f"torchvision:{name}: has no pretrained weights")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weight_enum.url).name
    if not cached.exists():
        raise ModelSpecError(f"torchvision:{name}: weights not present at {cached} (hwprune never downloads)")
    model = torchvision.models.get_model(name, weights=None)
    model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
    return model, shape


def _load_timm(name: str, weights: str | None) -> tuple[nn.Module, tuple[int, ...]]:
    try:
        import timm
    except ImportError:
        raise ModelSpecError(f"timm:{name}: timm is not installed (pip install 'hwprune[timm]')") from None
    if name not in timm.list_models():
        raise ModelSpecError(f"timm:{name}: no such timm model")
    if weights is not None:
        raise ModelSpecError(f"timm:{name}: loading timm weights is not supported offline; use a .py factory")
    model = timm.create_model(name, pretrained=False)
    return model, (1, *model.default_cfg.get("input_size", DEFAULT_IMAGE_SHAPE[1:]))


def user_function(source: str, name: str) -> Callable:
    """``name`` from a Python file path or an importable module; any failure is a ModelSpecError."""
    if source.endswith(".py") and not Path(source).is_file():
        raise ModelSpecError(f"{source}: file not found")
    try:
        user = _import_file(Path(source)) if source.endswith(".py") else importlib.import_module(source)
    except Exception as exc:  # the user's file is arbitrary code: report any failure in one line
        raise ModelSpecError(f"{source}: importing failed: {type(exc).__name__}: {exc}") from exc
    fn = getattr(user, name, None)
    if not callable(fn):
        raise ModelSpecError(f"{source}: has no callable {name!r}")
    return fn


def _import_file(path: Path) -> ModuleType:
    module_name = f"_hwprune_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError("not a Python file")
    user = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = user
    spec.loader.exec_module(user)
    return user


def _load_factory(path: Path, factory: str) -> tuple[nn.Module, torch.Tensor | None]:
    fn = user_function(str(path), factory)
    try:
        made = fn()
    except Exception as exc:
        raise ModelSpecError(f"{path}:{factory}() failed: {type(exc).__name__}: {exc}") from exc
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        module, example = made
        if not isinstance(example, torch.Tensor):
            raise ModelSpecError(f"{path}:{factory}() must return a tensor as its example input")
        return module, example
    if isinstance(made, nn.Module):
        return made, None
    raise ModelSpecError(f"{path}:{factory}() must return an nn.Module or (nn.Module, example_input)")


def _load_exported(path: Path) -> tuple[nn.Module, torch.Tensor | None]:
    if not path.is_file():
        raise ModelSpecError(f"{path}: file not found")
    try:
        program = torch.export.load(path)
    except Exception as exc:
        raise ModelSpecError(f"{path}: not a torch.export program: {type(exc).__name__}: {exc}") from exc
    args = program.example_inputs[0] if program.example_inputs else ()
    example = args[0] if args and isinstance(args[0], torch.Tensor) else None
    from hwprune.graph.lift import lift_exported_program

    return lift_exported_program(program), example


def _one_line(exc: BaseException) -> str:
    """``exc`` as ``Type: message`` on one line: third-party errors often span several."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _load_onnx(path: Path, input_shape: tuple[int, ...] | None) -> tuple[nn.Module, torch.Tensor]:
    """The ONNX file as an nn.Module (through onnx2torch) and an example for its one input: the graph's
    static dims (a symbolic batch dim becomes 1) and dtype, or ``input_shape``."""
    if not path.is_file():
        raise ModelSpecError(f"{path}: file not found")
    try:
        import onnx2torch
    except ImportError:
        raise ModelSpecError(f"onnx:{path}: onnx2torch is not installed (pip install 'hwprune[onnx]')") from None
    import numpy
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(str(path))
    except (DecodeError, ValueError, OSError) as exc:
        raise ModelSpecError(f"{path}: not an ONNX model: {_one_line(exc)}") from exc
    if not proto.graph.node:
        raise ModelSpecError(f"{path}: not an ONNX model (no graph nodes)")
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelSpecError(f"{path}: the graph has {len(inputs)} inputs; hwprune handles models with one input")
    tensor_type = inputs[0].type.tensor_type
    try:
        dtype = torch.from_numpy(numpy.zeros(0, onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))).dtype
    except (KeyError, TypeError, ValueError):
        raise ModelSpecError(f"{path}: input {inputs[0].name!r} has an element type hwprune cannot feed "
                             f"({onnx.TensorProto.DataType.Name(tensor_type.elem_type)})") from None
    if input_shape is None:
        input_shape = _onnx_static_shape(path, inputs[0].name, tensor_type)
    try:
        module = onnx2torch.convert(_for_onnx2torch(proto))
    except Exception as exc:  # onnx2torch raises NotImplementedError, KeyError, ... per unsupported op or attribute
        raise ModelSpecError(f"{path}: onnx2torch cannot convert it: {_one_line(exc)}") from exc
    if dtype.is_floating_point:
        return module, torch.randn(input_shape, dtype=dtype)
    return module, torch.zeros(input_shape, dtype=dtype)  # integer inputs are often indices: 0 is always valid


def _for_onnx2torch(proto):
    """The same computation in the forms onnx2torch converts, which today's exporters do not always write:
    opset <= 17 (torch's dynamo exporter writes 18+, e.g. ReduceMean with axes as an input), weights as
    initializers (the TorchScript exporter aliases equal constants through Identity nodes, and some write
    Constant nodes), and Reshape's ``allowzero=1`` dropped where the shape has no 0 (then it means nothing)."""
    import onnx
    import onnx.numpy_helper
    import onnx.version_converter

    if max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0) > 17:
        try:
            proto = onnx.version_converter.convert_version(proto, 17)
        except Exception:  # no adapter for some op: convert as it is, and onnx2torch names what it lacks
            pass
    graph = proto.graph
    constants = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    for node in list(graph.node):  # in topological order, so chains of aliases resolve
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in constants:
            allowzero = next((a for a in node.attribute if a.name == "allowzero" and a.i == 1), None)
            if allowzero is not None and 0 not in onnx.numpy_helper.to_array(constants[node.input[1]]):
                node.attribute.remove(allowzero)
            continue
        if node.output[0] in outputs:
            continue
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            value = node.attribute[0].t
        elif node.op_type == "Identity" and node.input[0] in constants:
            value = constants[node.input[0]]
        else:
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value)
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        constants[tensor.name] = tensor
        graph.node.remove(node)
    return proto


def _onnx_static_shape(path: Path, name: str, tensor_type) -> tuple[int, ...]:
    if not tensor_type.HasField("shape"):
        raise ModelSpecError(f"{path}: input {name!r} has no shape in the graph; give --input-shape")
    shape = []
    for position, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value > 0:
            shape.append(dim.dim_value)
        elif position == 0:
            shape.append(1)  # a symbolic batch: one sample
        else:
            raise ModelSpecError(f"{path}: input {name!r} has a symbolic dimension {dim.dim_param or '?'!r} at "
                                 f"position {position}; give --input-shape")
    return tuple(shape)


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

    def detections(self, x: torch.Tensor, conf: float = 0.25, iou: float = 0.7) -> list[torch.Tensor]:
        """Boxes per image after Ultralytics' own decode and NMS at its predict defaults: (n, 6) rows of
        x1, y1, x2, y2, score, class (what box agreement compares)."""
        from ultralytics.utils.nms import non_max_suppression

        with torch.no_grad():
            decoded = self.detector.eval()(x)[0]
        return non_max_suppression(decoded, conf, iou)


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


class HFModel(nn.Module):
    """A Hugging Face transformers model whose forward takes its main input (token ids, or a float image batch as
    ``pixel_values`` for a vision model such as ViT) and returns plain tensors: the logits of a model with a head,
    else the last hidden state (and the pooler's output where the model has a pooler, so that it stays in the
    traced graph). No cache; the attention mask of token ids is all ones: the whole sequence is read."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # transformers names a model with a head <Base>For<Task>: its output is logits (fidelity adds KL);
        # one that can generate is searched in prefill, and compile also measures its decode step (pipeline.decode)
        self.returns_logits = "For" in type(model).__name__ or "LMHead" in type(model).__name__  # GPT2LMHeadModel
        self.generates = bool(getattr(model, "can_generate", lambda: False)())
        self.pixels = hf_takes_pixels(type(model))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.pixels:
            out = self.model(pixel_values=inputs, return_dict=True)
        else:
            kwargs = {"use_cache": False} if "use_cache" in self.model.config.to_dict() else {}
            if "attention_mask" in inspect.signature(self.model.forward).parameters:
                # an explicit all-ones mask: without one, transformers looks for packed sequences in the position
                # ids with torch.diff, which the ONNX exporter has no op for
                kwargs["attention_mask"] = torch.ones_like(inputs)
            out = self.model(input_ids=inputs, return_dict=True, **kwargs)
        if getattr(out, "logits", None) is not None:
            return out.logits
        pooled = getattr(out, "pooler_output", None)
        return out.last_hidden_state if pooled is None else (out.last_hidden_state, pooled)


def hf_takes_pixels(model_class: type) -> bool:
    """Whether a transformers model class's main input is an image batch (``pixel_values``), by its
    ``main_input_name`` or, where it has none, its forward's first parameter."""
    name = getattr(model_class, "main_input_name", None)
    if name is None and callable(getattr(model_class, "forward", None)):
        name = next((p for p in inspect.signature(model_class.forward).parameters if p != "self"), None)
    return name == "pixel_values"


def _check_hf_shape(pixels: bool, shape: tuple[int, ...] | None, spec: str) -> None:
    """``--input-shape`` must be BATCH,C,H,W for images, BATCH,SEQ for token ids: else a one-line error."""
    if shape is not None and len(shape) != (4 if pixels else 2):
        wanted = "BATCH,C,H,W for the image batch" if pixels else "BATCH,SEQ for the token ids"
        raise ModelSpecError(f"{spec}: --input-shape {','.join(map(str, shape))}: give {wanted}")


def hf_example(model: nn.Module, shape: tuple[int, ...] | None, spec: str,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """An example input for ``model``: a random normal image batch BATCH,C,H,W (default 1, num_channels,
    image_size, image_size) for a vision model, else random token ids BATCH,SEQ (default 1,128) below the
    vocabulary size."""
    config, pixels = model.config, hf_takes_pixels(type(model))
    _check_hf_shape(pixels, shape, spec)
    if pixels:
        size = getattr(config, "image_size", None)
        if shape is None and not isinstance(size, int):
            raise ModelSpecError(f"{spec}: its config has no single image_size; give --input-shape BATCH,C,H,W")
        return torch.randn(shape or (1, int(getattr(config, "num_channels", 3)), size, size), generator=generator)
    vocab = getattr(config, "vocab_size", None)
    if not vocab:
        raise ModelSpecError(f"{spec}: its config has no vocab_size; hwprune feeds hf: models token ids or, where "
                             "the main input is pixel_values, images")
    return torch.randint(0, int(vocab), shape or HF_TOKEN_SHAPE, dtype=torch.long, generator=generator)


def _load_hf(target: str, weights: str | None, input_shape: tuple[int, ...] | None
             ) -> tuple[HFModel, torch.Tensor, str]:
    """A transformers model from a local folder (config.json and weights) or, by name, from the local Hugging
    Face cache only: offline (HF_HUB_OFFLINE, ``local_files_only``), eager attention, float32, eval mode.
    The example: :func:`hf_example` (token ids, or an image batch for a model whose main input is pixel_values)."""
    spec = f"hf:{target}"
    if weights is not None:
        raise ModelSpecError(f"{spec}: --weights does not apply; the weights are the folder's")
    if "://" in target:
        raise ModelSpecError(f"{spec}: hwprune never downloads; give a local folder or a model in the local "
                             "Hugging Face cache")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import transformers
    except ImportError:
        raise ModelSpecError(f"{spec}: transformers is not installed (pip install 'hwprune[hf]')") from None
    folder = Path(target)
    local = folder.exists() or target.startswith((".", "/", "~")) or target.count("/") > 1
    if local and not folder.is_dir():
        raise ModelSpecError(f"{spec}: no such folder")
    if local and not (folder / "config.json").is_file():
        raise ModelSpecError(f"{spec}: the folder has no config.json (write one with save_pretrained)")
    source = str(folder) if local else target
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=True)
    except OSError as exc:
        where = "the folder's config.json is unreadable" if local else "not in the local Hugging Face cache " \
            "(hwprune never downloads; give a folder as hf:PATH)"
        raise ModelSpecError(f"{spec}: {where}: {_one_line(exc)[:200]}") from exc
    except ValueError as exc:
        raise ModelSpecError(f"{spec}: transformers does not know this config: {_one_line(exc)[:200]}") from exc
    architectures = config.architectures or []
    auto = None
    for arch in architectures:
        auto = getattr(transformers, arch, None)
        if auto is not None:
            break
    auto = auto or transformers.AutoModel
    model_class = auto if auto is not transformers.AutoModel else transformers.MODEL_MAPPING.get(type(config), None)
    if model_class is not None:  # a wrong shape fails before the weights load
        _check_hf_shape(hf_takes_pixels(model_class), input_shape, spec)
    try:
        model = auto.from_pretrained(source, local_files_only=True, attn_implementation="eager",
                                     dtype=torch.float32)
    except Exception as exc:  # missing or mismatched weights, unknown classes: one line
        raise ModelSpecError(f"{spec}: transformers could not load it: {_one_line(exc)[:300]}") from exc
    example = hf_example(model, input_shape, spec)
    linear_from_conv1d(model)  # GPT-2's projections, as the layers the analyzer and pruner know
    return HFModel(model.float().eval()), example, f"the transformers model {source}"


def save_hf(module: HFModel, folder: Path) -> None:
    """Write a pruned ``hf:`` model with ``save_pretrained`` into ``folder``, its config rewritten from the pruned
    modules (:func:`hwprune.hf_layout.pruned_config`: MLP width, layers, layer types, heads) and GPT-2's Linear
    layers saved as the ``Conv1D`` transformers builds. A field that differs between layers is a ModelSpecError
    saying why from_pretrained cannot reload it. The config is checked by building the model from it, loading the
    pruned weights strictly and running both on the same tokens (or image); the caller's model is not changed."""
    model = module.model
    rebuilt = type(model)(pruned_config(model)).eval()
    try:
        rebuilt.load_state_dict(conv1d_state(rebuilt, model.state_dict()), strict=True)
    except RuntimeError as exc:
        raise ModelSpecError(f"the pruned model does not fit its updated config: {_one_line(exc)[:200]}") from exc
    shape = None if module.pixels else (1, 8)  # a short sequence; images at the size the model was built for
    inputs = hf_example(model, shape, "the pruned model", torch.Generator().manual_seed(0))
    for a, b in zip(_eval_outputs(module, inputs), _eval_outputs(HFModel(rebuilt), inputs), strict=True):
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max())):
            raise ModelSpecError("the model rebuilt from the updated config computes something else (max abs "
                                 f"difference {float((a - b).abs().max()):.3g}), so from_pretrained cannot reload it")
    rebuilt.save_pretrained(folder)


def _eval_outputs(module: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``module``'s outputs on ``inputs`` in eval mode (no dropout), each submodule's own mode restored after."""
    modes = {m: m.training for m in module.modules()}
    try:
        with torch.no_grad():
            out = module.eval()(inputs)
    finally:
        for m, training in modes.items():
            m.training = training
    return (out,) if isinstance(out, torch.Tensor) else tuple(out)


NATIVE_FILES = ("pruned_ultralytics.pt", "pruned_hf")  # what save_native may write, for staging and clean-up


def save_native(module: nn.Module, spec: str, folder: Path) -> str | None:
    """Save a pruned model in its framework's own format beside ``pruned.pt``, where it has one: an
    Ultralytics checkpoint for an ``ultralytics:`` model, a ``save_pretrained`` folder for an ``hf:`` model
    whose widths a transformers config can hold (else the ModelSpecError from :func:`save_hf`). Returns the
    file's name, else None."""
    if isinstance(module, HFModel):
        save_hf(module, folder / NATIVE_FILES[1])
        return NATIVE_FILES[1]
    if not isinstance(module, UltralyticsDetector):
        return None
    save_ultralytics(module, spec, folder / NATIVE_FILES[0])
    return NATIVE_FILES[0]


def save_ultralytics(module: nn.Module, spec: str, path: str | Path) -> None:
    """Write ``module`` (loaded from an ``ultralytics:`` spec, pruned or not) as an Ultralytics checkpoint,
    atomically. ``ultralytics.YOLO(path)`` loads it for predict, val and export, and so does
    ``ultralytics:path``: the modules are pickled with their pruned widths. Training it needs a trainer
    whose ``get_model`` returns this model, because Ultralytics' trainer rebuilds the model from its yaml,
    which still describes the unpruned widths (see the README)."""
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


def check_model(plan: Plan, loaded: LoadedModel, plan_name: str) -> None:
    """A PlanError unless ``loaded`` has the input shape and the weights the plan was made for."""
    made_for = plan.provenance
    shape = tuple(loaded.example_input.shape)
    if shape != made_for.input_shape:
        raise PlanError(f"{plan_name}: made for input {made_for.input_shape}, the model's input is {shape} "
                        "(use --input-shape)")
    if made_for.state_sha256 is None:
        return
    digest = state_digest(loaded.module)
    if digest != made_for.state_sha256:
        raise PlanError(f"{plan_name}: made for {made_for.model} with weights sha256 {made_for.state_sha256[:16]} "
                        f"({made_for.weights}); {loaded.name} ({loaded.weights}) has {digest[:16]}: pass the model, "
                        "--weights or --seed the plan was made with")
