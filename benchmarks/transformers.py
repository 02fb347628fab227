"""Transformers from Hugging Face configs through ``hf:PATH``: pruned to a measured latency budget on ``cpu``.

Three small models with random weights (BERT-style masked LM, GPT-2-style and Llama-style with
grouped-query attention), each written with ``save_pretrained`` and compiled from that folder:

    hwprune compile hf:FOLDER --target cpu --latency 0.6 --input-shape 1,128

For each: the measured latency fraction (onnxruntime, one thread, interleaved against the
unpruned model: W2.1's definition, met within 5%), the ONNX check, and the pruned model
reloaded from ``pruned_hf/`` with ``from_pretrained`` and compared with ``pruned.onnx`` on the same tokens.

Then the Llama-style model three ways at equal measured latency: ``--search depth`` (whole layers)
at the budget; its steps are coarse (a layer each), so ``--search width`` (heads and MLP widths, the
same in every layer) and ``--search joint`` are compiled at the fraction depth-only reached, each
timed head to head against it (30 interleaved rounds) and recompiled at a corrected fraction while
more than 2.5% apart (aiming at any two of the three within 5%; at most 3 tries); then all
three are timed together, and their spread printed. For each: output cosine, top-1 agreement
and KL divergence to the unpruned model on a fixed token set (the compile's fidelity on 4 random
batches) and what it removed.
The search targets prefill (the whole sequence in one forward); each decoder's compile also times
one decode step against a KV cache of the sequence length (baseline and pruned, interleaved).

    pip install -e ".[dev]" && python benchmarks/transformers.py [--latency 0.6] [--seq 128]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

# this file's name is the package's: its folder off the path, so ``import transformers`` finds the package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("OMP_NUM_THREADS", "1")
MATCH = 0.025  # width-only and joint each this close to depth-only's latency, aiming at any two within 5%

import numpy  # noqa: E402
import torch  # noqa: E402


def _models(hidden: int, layers: int, vocab: int) -> dict[str, object]:
    import transformers

    return {
        "bert": transformers.BertForMaskedLM(transformers.BertConfig(
            vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=8,
            intermediate_size=4 * hidden)),
        "gpt2": transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=8, n_inner=4 * hidden, n_positions=512,
            bos_token_id=0, eos_token_id=0)),
        "llama": transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=8,
            num_key_value_heads=2, intermediate_size=4 * hidden)),
    }


def _compile(folder: Path, out: Path, latency: float, seq: int, search: str | None) -> dict:
    from hwprune.cli import main

    args = ["compile", f"hf:{folder}", "--target", "cpu", "--latency", str(latency), "--input-shape", f"1,{seq}",
            "--out", str(out)] + (["--search", search] if search else [])
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        code = main(args)
    if code != 0:
        raise SystemExit(f"compile {folder.name} {search or ''} failed: {log.getvalue().strip().splitlines()[-1]}")
    return json.loads((out / "report.json").read_text())


def _reloads(out: Path, seq: int) -> str:
    """``pruned_hf`` through from_pretrained against ``pruned.onnx`` on the same tokens."""
    import onnxruntime
    import transformers

    folder = out / "pruned_hf"
    if not folder.is_dir():
        return "not saved (widths differ between layers)"
    model = transformers.AutoModelForMaskedLM if "Bert" in json.loads((folder / "config.json").read_text())[
        "architectures"][0] else transformers.AutoModelForCausalLM
    again = model.from_pretrained(folder, attn_implementation="eager").eval()
    tokens = torch.randint(0, again.config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = again(tokens, attention_mask=torch.ones_like(tokens)).logits.numpy()
    session = onnxruntime.InferenceSession(str(out / "pruned.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {session.get_inputs()[0].name: tokens.numpy()})[0]
    error = float(numpy.abs(logits - onnx_logits).max())
    return f"reloaded, max abs diff to pruned.onnx {error:.2g}"


def _removed(out: Path) -> str:
    plan = json.loads((out / "plan.json").read_text())
    dropped = [e["block"].rsplit(".", 1)[-1] for e in plan["depth"]]
    widths = sorted({f"{g.rsplit('.', 1)[-1].split(':')[-1]} {d['keep']}/{d['of']}" for g, d in plan["width"].items()})
    return (f"layers dropped {dropped or 'none'}; " if plan["depth"] else "") + (", ".join(widths) or "widths whole")


def _decode(report: dict) -> str:
    """Per-token decode latency against the KV cache, baseline -> pruned (medians), or why none."""
    decode = report.get("decode")
    if not decode:
        return "n/a (encoder)"
    if not decode.get("pruned_ms"):
        return f"not measured: {decode.get('reason')}"
    return f"{decode['baseline_ms']['median']:.3f} -> {decode['pruned_ms']['median']:.3f}"


def _fraction(report: dict) -> float:
    return report["pruned"]["latency_ms"]["median"] / report["baseline"]["latency_ms"]["median"]


def _head_to_head(paths: list[Path], rounds: int = 30) -> list[float]:
    from hwprune.runtime import runtime_for
    from hwprune.targets import load_target

    runtime = runtime_for(load_target("cpu"))
    sessions = [runtime.load(p) for p in paths]
    try:
        comparison = runtime.interleaved(sessions, rounds=rounds)
    finally:
        for s in sessions:
            s.close()
    return [t.median_ms for t in comparison.timings]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.6)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4000)
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console(width=240)
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="hwprune-transformers-"))
    os.environ.setdefault("HWPRUNE_CACHE", str(work / "cache"))
    table = Table(title=f"compile --target cpu --latency {args.latency} (seq {args.seq}, prefill, 1 thread)")
    for column in ("model", "baseline ms", "pruned ms", "measured fraction", "within 5%", "verify", "cosine",
                   "KL (nats)", "decode ms/token", "reload", "removed"):
        table.add_column(column)
    folders = {}
    for name, model in _models(args.hidden, args.layers, args.vocab).items():
        folders[name] = work / name
        model.save_pretrained(folders[name])
        out = work / f"{name}-build"
        report = _compile(folders[name], out, args.latency, args.seq, None)
        base, pruned = report["baseline"]["latency_ms"]["median"], report["pruned"]["latency_ms"]["median"]
        fid = report["fidelity"]
        table.add_row(name, f"{base:.2f}", f"{pruned:.2f}", f"{_fraction(report):.3f}", report["budget"]["verdict"],
                      str(report["verify"]["ok"]), f"{fid['cosine']:.4f}",
                      "n/a" if fid.get("kl") is None else f"{fid['kl']:.3g}", _decode(report), _reloads(out, args.seq),
                      _removed(out))
    console.print(table)
    ways = Table(title=f"Llama-style at equal measured latency: depth-only first (--latency {args.latency}), then "
                       "width-only and joint at the fraction it reached, timed head to head (30 interleaved rounds)")
    for column in ("search", "--latency", "own measured fraction", "head-to-head ms", "cosine", "top-1 agreement",
                   "KL (nats)", "decode ms/token", "removed"):
        ways.add_column(column)
    depth_out = work / "llama-depth"
    depth_report = _compile(folders["llama"], depth_out, args.latency, args.seq, "depth")
    reached = _fraction(depth_report)
    builds = {"depth": (depth_out, depth_report, args.latency)}
    for search in ("width", "joint"):
        fraction = reached
        for attempt in range(3):  # matched to depth-only's latency within 2.5%, head to head
            out = work / f"llama-{search}-{attempt}"
            builds[search] = (out, _compile(folders["llama"], out, fraction, args.seq, search), fraction)
            depth_ms, this_ms = _head_to_head([depth_out / "pruned.onnx", out / "pruned.onnx"])
            if abs(this_ms / depth_ms - 1) <= MATCH:
                break
            fraction = min(0.95, fraction * depth_ms / this_ms)
    times = _head_to_head([out / "pruned.onnx" for out, _, _ in builds.values()])
    for (search, (out, report, fraction)), ms in zip(builds.items(), times, strict=True):
        fid = report["fidelity"]
        ways.add_row(search, f"{fraction:.3f}", f"{_fraction(report):.3f}", f"{ms:.3f}", f"{fid['cosine']:.4f}",
                     f"{100 * fid['top1_agreement']:.1f}%", f"{fid['kl']:.3g}", _decode(report), _removed(out))
    console.print(ways)
    console.print(f"head-to-head spread: slowest / fastest = {max(times) / min(times):.3f}; builds in {work}")


if __name__ == "__main__":
    main()
