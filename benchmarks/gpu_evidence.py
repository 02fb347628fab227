"""GPU evidence for the torch runtime, in one prepared run on one NVIDIA GPU (writes and prints; not a test).

    python benchmarks/gpu_evidence.py [--out gpu-evidence]        # on the GPU machine: about 6 minutes
    python benchmarks/gpu_evidence.py --smoke --out /tmp/smoke     # the same steps on this CPU (cpu-torch)

Each step has its own deadline (SIGALRM: a step past it stops, says so, and the next one starts) and
writes its result to ``OUT/evidence.json`` and ``OUT/evidence.md`` as soon as it ends, so a run cut short
still leaves every finished step's numbers. The steps, on target ``cuda`` (fp16, eager):

1. ``profile``: the latency table of resnet50's ops on cuda (single ops as CUDA graph replays), copied to
   ``OUT/profile_table.json``.
2. ``compile_b1`` / ``compile_b32``: ``compile torchvision:resnet50 --target cuda --latency 0.5`` at
   batch 1 and batch 32, measured (interleaved, CUDA events) and verified; where batch 1 misses the
   budget the result says whether the GPU is launch-bound there (the baseline's batch-32 time under 4x
   its batch-1 time: 32 times the work at little more cost).
3. ``joint``: mobilenet_v2 with the joint width + depth search.
4. ``sparse_24``: 2:4 on PyTorch's semi-structured kernels, on a wide MLP and on the Llama step's MLP
   (transformers' LlamaMLP, random weights): ``compile --sparsity auto --search joint --latency 0.9`` (2:4
   competes with width) says which layers were offered (each layer's dense-versus-2:4 pair timed on the
   GPU), which were chosen and the measured speedup; the build's ``pruned.onnx`` loaded through the
   runtime says which of its layers run the sparse kernel; and the model with every linear layer 2:4-masked
   is timed against itself on dense kernels, interleaved. A ratio is reported only where a sparse kernel ran;
   otherwise the result says why none did (on the CPU, always: PyTorch has no sparse kernels there).
5. ``llama``: a Llama-style decoder (transformers' LlamaForCausalLM from a config, random weights, no
   download), its prefill and its per-token decode step with a KV cache, unpruned, timed eagerly.
6. ``analytic_trt``: the analytic TensorRT model's predictions for resnet50 on the h100 profile at both
   batches, beside the PyTorch measurements: a comparison across runtimes, labelled so.

With ``--smoke`` the same steps run on target cpu-torch with tiny models and inputs (batch 4 for 32);
the test suite runs it. Without a GPU (and without ``--smoke``) it exits 2 with one line saying so.
The tables go to ``OUT/cache`` (``HWPRUNE_CACHE``), never the user's cache.

On the GPU machine (PyTorch 2.11 with CUDA, torchvision 0.26, transformers, onnx, CPU onnxruntime; no
network; no TensorRT, torch-pruning, onnx2torch or onnxslim), carry this checkout and the wheels of
torch-pruning (``pip download torch-pruning==1.6.1 --no-deps -d wheels``; pure Python) and of any of
onnxscript, networkx, rich or matplotlib the machine lacks, then install without dependencies::

    pip install --no-deps --no-index wheels/*.whl
    pip install --no-deps -e .
    python -c "import hwprune.cli, torch_pruning" && python benchmarks/gpu_evidence.py --out gpu-evidence
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve()
# run as a script, benchmarks/ leads sys.path, and benchmarks/transformers.py would shadow the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE.parent]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import inspect  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402


class Deadline(BaseException):
    """A step ran past its deadline (BaseException: no ``except Exception`` inside hwprune swallows it)."""


@dataclass(frozen=True)
class Setup:
    """What the steps run on: the GPU's or, with --smoke, this CPU's."""

    target: str
    resnet: str
    mobilenet: str
    shape: tuple[int, ...]  # one image; the batch replaces its first axis
    big_batch: int
    refine: list[str]
    llama: dict
    sparse_models: tuple[str, ...]  # factories in this file: (module, example input)
    deadlines: dict[str, int]


GPU = Setup("cuda", "torchvision:resnet50", "torchvision:mobilenet_v2", (1, 3, 224, 224), 32,
            ["--refine", "3", "--refine-time", "25"],
            {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16,
             "num_key_value_heads": 4, "vocab_size": 32000, "prompt": 512},
            ("wide_mlp", "llama_mlp"),
            {"profile": 60, "compile_b1": 40, "compile_b32": 45, "joint": 40, "sparse_24": 70, "llama": 25,
             "analytic_trt": 15})  # 295 s: the whole run within 5 minutes
SMOKE = Setup("cpu-torch", f"{HERE}:tiny_resnet", f"{HERE}:tiny_mobile", (1, 3, 32, 32), 4,
              ["--refine", "0"],
              {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "vocab_size": 64, "prompt": 8},
              ("tiny_wide_mlp", "tiny_llama_mlp"),
              {"profile": 120, "compile_b1": 120, "compile_b32": 120, "joint": 120, "sparse_24": 240, "llama": 60,
               "analytic_trt": 60})  # a shared CPU's deadlines: the steps take seconds on an idle one


def tiny_resnet() -> nn.Module:
    """Two residual blocks (the smoke run's resnet50)."""
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                                      nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

        def forward(self, x):
            return torch.relu(x + self.body(x))

    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), Block(32), Block(32),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def tiny_mobile() -> nn.Module:
    """One inverted residual, expand-depthwise-project (the smoke run's mobilenet_v2)."""
    torch.manual_seed(0)

    class Inverted(nn.Module):
        def __init__(self, c: int, e: int):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(c, e, 1), nn.BatchNorm2d(e), nn.ReLU6(),
                                      nn.Conv2d(e, e, 3, padding=1, groups=e), nn.BatchNorm2d(e), nn.ReLU6(),
                                      nn.Conv2d(e, c, 1), nn.BatchNorm2d(c))

        def forward(self, x):
            return x + self.body(x)

    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU6(), Inverted(32, 96), Inverted(32, 96),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def _wide(width: int, hidden: int, tokens: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return (nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width)),
            torch.randn(1, tokens, width))


def wide_mlp() -> tuple[nn.Module, torch.Tensor]:
    """A transformer-sized FFN, 1024 -> 4096 -> 1024 on 4096 tokens: GEMMs large enough for 2:4 to matter, weights
    small enough to profile in seconds."""
    return _wide(1024, 4096, 4096)


def tiny_wide_mlp() -> tuple[nn.Module, torch.Tensor]:
    """The smoke run's wide MLP (GEMMs, not calls, set its time, so its budget is met by thinning it)."""
    return _wide(128, 512, 64)


def _llama_mlp(sizes: dict) -> tuple[nn.Module, torch.Tensor]:
    """The MLP of the Llama step's decoder layer (gate and up projections, SiLU, down projection) on its prompt."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=sizes["hidden_size"], intermediate_size=sizes["intermediate_size"])
    return LlamaMLP(config), torch.randn(1, sizes["prompt"], sizes["hidden_size"])


def llama_mlp() -> tuple[nn.Module, torch.Tensor]:
    return _llama_mlp(GPU.llama)


def tiny_llama_mlp() -> tuple[nn.Module, torch.Tensor]:
    """The smoke run's: wider than the smoke decoder's MLP, so GEMMs, not calls, set its time."""
    return _llama_mlp({"hidden_size": 128, "intermediate_size": 512, "prompt": 64})


def _cli(argv: list[str], log: Path) -> tuple[int, str]:
    """hwprune's command line in this process: its exit code, and its stdout or (on a failure) its last line
    on stderr; the whole log goes to ``log``."""
    from hwprune.cli import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        with log.open("a") as handle:
            handle.write(f"$ hwprune {' '.join(argv)}\n{err.getvalue()}{out.getvalue()}\n")
    said = out.getvalue().strip() if code == 0 else (err.getvalue().strip().splitlines() or [""])[-1]
    return code, said


def _shape(setup: Setup, batch: int) -> str:
    return ",".join(str(d) for d in (batch, *setup.shape[1:]))


def profile_step(setup: Setup, out: Path, results: dict) -> dict:
    code, said = _cli(["profile", setup.resnet, "--target", setup.target, "--input-shape", _shape(setup, 1)],
                      out / "profile.log")
    tables = sorted((out / "cache" / "latency").glob(f"{setup.target}-torch*.json"))
    if tables:
        shutil.copyfile(tables[0], out / "profile_table.json")
    entries = len(json.loads(tables[0].read_text())["entries"]) if tables else 0
    return {"status": "ok" if code == 0 else f"exit {code}: {said}", "said": said, "entries": entries,
            "table": "profile_table.json" if tables else None}


def _compiled(setup: Setup, out: Path, name: str, spec: str, batch: int, extra: list[str]) -> dict:
    build = out / name
    code, said = _cli(["compile", spec, "--target", setup.target, "--latency", "0.5", "--input-shape",
                       _shape(setup, batch), *setup.refine, *extra, "--out", str(build)], out / f"{name}.log")
    if code != 0 or not (build / "report.json").exists():
        return {"status": f"exit {code}: {said}"}
    report = json.loads((build / "report.json").read_text())
    budget, speed = report["budget"], report["speedup"]
    return {"status": "ok", "batch": batch, "said": said,
            "baseline_ms": report["baseline"]["latency_ms"].get("median"),
            "pruned_ms": report["pruned"]["latency_ms"].get("median"),
            "measured_speedup": speed["measured"], "predicted_speedup": speed["predicted"],
            "measured_fraction": budget["measured_fraction"], "verdict": budget["verdict"],
            "verified": report["verify"]["ok"], "verify_max_abs_err": report["verify"]["max_abs_err"],
            "measurement": report["measurement"]}


def compile_b1(setup: Setup, out: Path, results: dict) -> dict:
    return _compiled(setup, out, "compile_b1", setup.resnet, 1, [])


def _anchor_ms(out: Path, spec: str, shape: str) -> float | None:
    """The unpruned model's whole-model time at ``shape`` (``1x3x224x224``) as the table measured it."""
    for table in (out / "cache" / "latency").glob("*.json"):
        found = json.loads(table.read_text()).get("models", {}).get(f"{spec}|{shape}")
        if found is not None:
            return float(found)
    return None


def compile_big(setup: Setup, out: Path, results: dict) -> dict:
    """Batch 32; and where batch 1 missed its budget (or could not be searched to it), whether batch 1 is
    launch-bound: the unpruned model's measured time at batch 32 under 4x its time at batch 1."""
    found = _compiled(setup, out, "compile_b32", setup.resnet, setup.big_batch, [])
    small = results.get("compile_b1", {})
    times = [_anchor_ms(out, setup.resnet, _shape(setup, b).replace(",", "x")) for b in (1, setup.big_batch)]
    if small.get("verdict") != "met" and None not in times:
        ratio = times[1] / times[0]
        small["launch_bound"] = {
            "unpruned_ms": dict(zip(("batch_1", f"batch_{setup.big_batch}"), times, strict=True)),
            "says": (f"batch 1 misses the budget and is launch-bound: {setup.big_batch}x the work costs "
                     f"{ratio:.2f}x the time, so kernel launches, not the pruned FLOPs, set batch 1's latency")
            if ratio < 4 else (f"batch 1 misses the budget; {setup.big_batch}x the work costs {ratio:.2f}x the "
                               "time, so it is not launch-bound by that rule")}
    return found


def joint_step(setup: Setup, out: Path, results: dict) -> dict:
    return _compiled(setup, out, "joint", setup.mobilenet, 1, ["--search", "joint"])


def _kernel_ab(runtime, module: nn.Module, example: torch.Tensor) -> dict:
    """``module`` with every linear weight 2:4-masked, loaded on sparse kernels and on dense ones, interleaved:
    a ratio only where a sparse kernel ran."""
    from hwprune.runtime.pytorch import TorchRuntime
    from hwprune.sparsity.masks import nm_mask

    masked = copy.deepcopy(module)
    with torch.no_grad():
        for layer in masked.modules():
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(nm_mask(layer.weight, 2, 4))
    sparse = runtime.load_model(masked, (example,))
    dense = TorchRuntime(runtime.target)
    dense.semi_structured = False
    twin = dense.load_model(masked, (example,))
    found = {"kernels": sparse.semi_structured.to_json()}
    try:
        if not sparse.semi_structured.sparse:
            return {**found, "says": "no sparse kernel ran, so no ratio: " + "; ".join(
                sorted(set(sparse.semi_structured.dense.values())))}
        comparison = runtime.interleaved([twin, sparse])
        return {**found, "dense_ms": comparison.timings[0].median_ms, "sparse_ms": comparison.timings[1].median_ms,
                "sparse_over_dense": comparison.ratios[1], "spread": comparison.ratio_spread[1]}
    finally:
        sparse.close()
        twin.close()


def _sparse_model(setup: Setup, out: Path, factory: str) -> dict:
    """One model: compiled with 2:4 offered where measured faster, its build's sparse kernels, the kernel A/B."""
    from hwprune.runtime import runtime_for
    from hwprune.targets import load_target

    build = out / f"sparse_{factory}"
    code, said = _cli(["compile", f"{HERE}:{factory}", "--target", setup.target, "--latency", "0.9", "--search",
                       "joint", "--sparsity", "auto", *setup.refine, "--out", str(build)], out / "sparse_24.log")
    runtime = runtime_for(load_target(setup.target))
    found: dict = {"compile": {"status": f"exit {code}: {said}" if code else "ok"}}
    if code == 0:
        report = json.loads((build / "report.json").read_text())
        found["compile"].update(
            check=report["sparsity"]["check"], chosen=[row["layer"] for row in report["sparsity"]["layers"]],
            measured_speedup=report["speedup"]["measured"], verified=report["verify"]["ok"])
        runner = runtime.load(build / "pruned.onnx")
        found["build_kernels"] = runner.semi_structured.to_json()
        runner.close()
    found["all_linear_2_4"] = _kernel_ab(runtime, *globals()[factory]())
    return found


def sparse_step(setup: Setup, out: Path, results: dict) -> dict:
    models = {name: _sparse_model(setup, out, name) for name in setup.sparse_models}
    ran = [name for name, found in models.items() if found["all_linear_2_4"]["kernels"]["sparse_kernel"]]
    return {"status": "ok", "models": models,
            "says": f"a sparse kernel ran for {', '.join(ran)}" if ran else
                    "no sparse kernel ran: every path up to PyTorch's semi-structured kernels was exercised, and "
                    "no ratio is reported as sparse"}


def llama_step(setup: Setup, out: Path, results: dict) -> dict:
    """Prefill of the prompt, and one decode step against a KV cache of the prompt (cropped back after each
    step so every timed step is the same one), through the torch runtime on the target."""
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    from hwprune.runtime import runtime_for
    from hwprune.targets import load_target

    sizes = dict(setup.llama)
    prompt = sizes.pop("prompt")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**sizes, max_position_embeddings=2 * prompt)).eval()
    runtime = runtime_for(load_target(setup.target))
    ids = torch.randint(0, sizes["vocab_size"], (1, prompt))

    class Prefill(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x, use_cache=False).logits

    prefill = runtime.load_model(Prefill(), (ids,))
    prefill_timing = runtime.time(prefill, 3, 20, 0.5)
    prefill.close()
    runner = runtime.load_model(Prefill(), (ids[:, :1],))  # the decode step's model at the target's precision
    decoder, device = runner.forward.model, runner.inputs[0].device
    cache = DynamicCache()
    keyword = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    with torch.no_grad():
        decoder(ids.to(device), **{keyword: cache}, use_cache=True)
    token = ids[:, :1].to(device)

    def step() -> None:
        with torch.no_grad():
            decoder(token, **{keyword: cache}, use_cache=True)
        cache.crop(-1)  # back to the prompt's length

    from hwprune.runtime.pytorch import TorchRunner

    decode_timing = runtime.time(TorchRunner(lambda _: step(), [token], device.type, "eager"), 3, 20, 0.5)
    return {"status": "ok", "config": setup.llama, "mode": "eager", "weights": "random (unpruned)",
            "prefill_ms": prefill_timing.median_ms, "prefill_p90_ms": prefill_timing.p90_ms,
            "decode_ms_per_token": decode_timing.median_ms, "decode_p90_ms": decode_timing.p90_ms}


def analytic_step(setup: Setup, out: Path, results: dict) -> dict:
    rows = []
    for name, batch in (("compile_b1", 1), ("compile_b32", setup.big_batch)):
        code, said = _cli(["latency", setup.resnet, "--target", "h100", "--input-shape", _shape(setup, batch),
                           "--json"], out / "analytic_trt.log")
        measured = results.get(name, {})
        rows.append({"batch": batch, "tensorrt_h100_predicted_ms": json.loads(said)["predicted_ms"] if code == 0
                     else None, "predicted_by": json.loads(said)["source"] if code == 0 else said,
                     "pytorch_measured_baseline_ms": measured.get("baseline_ms"),
                     "pytorch_measured_pruned_ms": measured.get("pruned_ms")})
    return {"status": "ok", "label": "comparison across runtimes: TensorRT's analytic model (h100 profile, predicted, "
                                     f"not measured) beside PyTorch on {setup.target} (measured)", "rows": rows}


STEPS: list[tuple[str, Callable[[Setup, Path, dict], dict]]] = [
    ("profile", profile_step), ("compile_b1", compile_b1), ("compile_b32", compile_big), ("joint", joint_step),
    ("sparse_24", sparse_step), ("llama", llama_step), ("analytic_trt", analytic_step)]


def _alarm(signum, frame):
    raise Deadline


def run_step(function: Callable[[], dict], seconds: int) -> dict:
    """``function``'s result, or what stopped it (its deadline, an error), with its wall time."""
    started = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        result = function()
    except Deadline:
        result = {"status": f"deadline: stopped after {seconds} s"}
    except Exception as exc:  # one step's failure is a result; the next steps still run
        result = {"status": f"error: {type(exc).__name__}: {str(exc).strip()[:300]}"}
    finally:
        signal.alarm(0)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def environment(setup: Setup) -> dict:
    from hwprune.runtime.base import host_fingerprint, package_version
    from hwprune.runtime.pytorch import gpu_facts

    return {"target": setup.target, "host": host_fingerprint(), **(gpu_facts() if setup.target == "cuda" else {}),
            "versions": {name: package_version(name) for name in ("hwprune", "torch", "torchvision", "transformers",
                                                                  "onnx", "onnxruntime", "torch-pruning")},
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def markdown(evidence: dict) -> str:
    env = evidence["environment"]
    lines = [f"# GPU evidence ({'smoke run on the CPU' if evidence['smoke'] else 'GPU run'})", "",
             f"target {env['target']}; GPU {env.get('gpu')}, driver {env.get('driver')}, CUDA {env.get('cuda')}, "
             f"cuDNN {env.get('cudnn')}, clocks {env.get('clocks_mhz')}; versions "
             + ", ".join(f"{k} {v}" for k, v in env["versions"].items()), "",
             "| step | status | s | result |", "|---|---|---|---|"]
    for name, result in evidence["steps"].items():
        shown = {k: v for k, v in result.items() if k not in ("status", "seconds", "said", "measurement")}
        lines.append(f"| {name} | {result['status']} | {result['seconds']} | "
                     f"{json.dumps(shown, default=str).replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def write(out: Path, evidence: dict) -> None:
    for name, text in (("evidence.json", json.dumps(evidence, indent=1, default=str) + "\n"),
                       ("evidence.md", markdown(evidence))):
        partial = out / f".{name}.partial"
        partial.write_text(text)
        os.replace(partial, out / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-evidence", help="output folder (default: gpu-evidence)")
    parser.add_argument("--smoke", action="store_true", help="the same steps on this CPU (cpu-torch), tiny inputs")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print(f"gpu_evidence.py: error: no CUDA GPU is visible to PyTorch {torch.__version__}; run it on the GPU "
              "machine (or --smoke for the CPU rehearsal)", file=sys.stderr)
        return 2
    setup = SMOKE if args.smoke else GPU
    out = Path(args.out)
    (out / "cache").mkdir(parents=True, exist_ok=True)
    os.environ["HWPRUNE_CACHE"] = str((out / "cache").resolve())
    evidence = {"format": "hwprune-gpu-evidence/1", "smoke": args.smoke, "environment": environment(setup),
                "steps": {}}
    for name, function in STEPS:
        print(f"gpu_evidence: {name} (deadline {setup.deadlines[name]} s)", file=sys.stderr)
        evidence["steps"][name] = run_step(lambda f=function: f(setup, out, evidence["steps"]), setup.deadlines[name])
        write(out, evidence)
        print(f"  {evidence['steps'][name]['status']} in {evidence['steps'][name]['seconds']} s", file=sys.stderr)
    print(markdown(evidence), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
