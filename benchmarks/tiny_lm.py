"""A language model whose perplexity means something: a small Llama-style decoder trained here on
real English (Python's documentation), pruned to a measured latency budget three ways and distilled back.

The text is the reStructuredText sources of the Python 3.11 manual from Debian's ``python3.11-doc``
(``/usr/share/doc/python3.11/html/_sources/**/*.rst.txt``, installed with apt when missing), split
by file: about one file in ten (chosen by a hash of its path) is held out. A byte-level BPE
tokenizer (the ``tokenizers`` library) is trained on the training files only, and a Llama-style
decoder (grouped-query attention) is trained from scratch on them. Its held-out perplexity is set
beside a unigram model's (token frequencies of the training split, add-one smoothed) on the same
held-out tokens; unless the model's is at most half the unigram's, the benchmark says it failed
(exit 1): a model that has learnt nothing beyond token frequencies would make the rest meaningless.

Then, for each ``--budgets`` fraction, the three searches through hwprune's Python API
(``hwprune.compile("hf:DIR", ..., target="cpu", latency=..., search=...)``, calibrated on training
windows) at equal measured latency: depth-only first (whole layers: coarse steps), then width-only
and joint at the fraction depth-only reached; the baseline and the three pruned ONNX files are timed
in one interleaved run, and a search more than 3% from depth-only head to head is compiled once more
at the corrected fraction. Each build is then distilled with ``hwprune.recover`` (logit KL at every
position, ``--recover-steps`` steps of ``--recover-batch`` training windows) and its held-out
perplexity taken before and after, beside the unpruned model's.

The trained model and tokenizer are cached in ``--work`` (reruns skip training; a finished build is
reused unless ``--fresh-builds``). ``--quick`` trains a tiny model for a few hundred steps: for
checking the script end to end in a few minutes, not for numbers.

    apt-get install -y python3.11-doc   # or let the script do it
    python benchmarks/tiny_lm.py [--quick] [--work DIR] [--budgets 0.6,0.8] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

# benchmarks/transformers.py shares the package's name: this folder off the path, so ``import transformers`` works
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
EOS = "<|endoftext|>"
SEARCHES = ("depth", "width", "joint")  # depth first: the others are matched to the fraction it reaches
MATCH = 0.03  # width-only and joint this close to depth-only's latency head to head, or compiled once more
GATE = 0.5  # the model's held-out perplexity must be at most this share of the unigram model's


@dataclass(frozen=True)
class Setup:
    """The model and the training recipe: what the cache in ``--work`` is keyed by."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    mlp: int
    seq: int
    batch: int
    steps: int
    lr: float
    seed: int = 0


FULL = Setup(vocab=4096, hidden=320, layers=8, heads=8, kv_heads=2, mlp=1024, seq=128, batch=16, steps=350, lr=2e-3)
QUICK = Setup(vocab=1024, hidden=128, layers=4, heads=4, kv_heads=2, mlp=384, seq=64, batch=16, steps=200, lr=3e-3)

DATA_FILE = '''"""The benchmark's token windows for hwprune recover (lm_data.py:train, lm_data.py:heldout)."""
import os
import torch

HERE = os.path.dirname(__file__)


def train():
    """RECOVER_STEPS batches of training windows: one epoch is that many distillation steps."""
    return list(torch.load(os.path.join(HERE, "recover_windows.pt"), weights_only=True).split(BATCH))


def heldout():
    """A few batches of held-out windows for recover's before/after fidelity (perplexity is taken apart)."""
    return list(torch.load(os.path.join(HERE, "fidelity_windows.pt"), weights_only=True).split(BATCH))
'''


def ensure_sources() -> list[Path]:
    """The manual's sources, installing Debian's python3.11-doc when they are missing."""
    if not SOURCES.is_dir():
        print("installing Debian's python3.11-doc (apt) ...", flush=True)
        subprocess.run(["apt-get", "install", "-y", "python3.11-doc"], check=True, capture_output=True)
    files = sorted(SOURCES.rglob("*.rst.txt"))
    if not files:
        raise SystemExit(f"no *.rst.txt under {SOURCES}")
    return files


def held_out(path: Path) -> bool:
    """About one file in ten, by a hash of its path: a split that does not move when files are added."""
    return zlib.crc32(str(path.relative_to(SOURCES)).encode()) % 10 == 0


def train_tokenizer(texts: list[str], vocab: int, folder: Path) -> object:
    """Byte-level BPE on the training texts, saved as a transformers fast tokenizer in ``folder`` (so
    ``hf:`` specs and ``text:`` calibration find it beside the model)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, unk_token=EOS)
    fast.save_pretrained(folder)
    return fast


def stream(tokenizer: object, texts: list[str]) -> torch.Tensor:
    """All texts as one token stream, each file followed by the end-of-text token."""
    eos = tokenizer.convert_tokens_to_ids(EOS)
    ids: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def eval_windows(tokens: torch.Tensor, seq: int, count: int) -> torch.Tensor:
    """``count`` non-overlapping windows spread evenly over the held-out stream (every file's text weighs)."""
    windows = tokens[:len(tokens) // seq * seq].reshape(-1, seq)
    if len(windows) <= count:
        return windows
    return windows[torch.linspace(0, len(windows) - 1, count).long()]


def unigram_perplexity(train_tokens: torch.Tensor, windows: torch.Tensor, vocab: int) -> float:
    """Token frequencies of the training split (add-one smoothed) on the tokens the model predicts."""
    counts = torch.bincount(train_tokens, minlength=vocab).double() + 1
    log_p = (counts / counts.sum()).log()
    return math.exp(-float(log_p[windows[:, 1:]].mean()))


def perplexity(model: torch.nn.Module, windows: torch.Tensor, batch: int = 16) -> float:
    """exp of the mean next-token cross-entropy over every position after each window's first."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for chunk in windows.split(batch):
            logits = model(input_ids=chunk, attention_mask=torch.ones_like(chunk), use_cache=False).logits
            total += float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).double(),
                                                             chunk[:, 1:].reshape(-1), reduction="sum"))
            count += chunk[:, 1:].numel()
    return math.exp(total / count)


def train_model(setup: Setup, tokens: torch.Tensor, folder: Path) -> dict:
    """A Llama-style decoder from scratch: AdamW, warm-up then cosine, random windows; saved with
    save_pretrained. Returns what the run did (seconds, loss at the end)."""
    import transformers

    torch.manual_seed(setup.seed)
    config = transformers.LlamaConfig(
        vocab_size=setup.vocab, hidden_size=setup.hidden, num_hidden_layers=setup.layers,
        num_attention_heads=setup.heads, num_key_value_heads=setup.kv_heads, intermediate_size=setup.mlp,
        max_position_embeddings=max(256, setup.seq), tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    model = transformers.LlamaForCausalLM(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=setup.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, setup.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, max(0, s - warmup) / max(1, setup.steps - warmup))))))
    generator = torch.Generator().manual_seed(setup.seed)
    started, recent = time.perf_counter(), []
    model.train()
    for step in range(setup.steps):
        starts = torch.randint(0, len(tokens) - setup.seq, (setup.batch,), generator=generator)
        batch = torch.stack([tokens[s:s + setup.seq] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        recent = (recent + [float(loss.detach())])[-20:]
        if (step + 1) % 50 == 0 or step + 1 == setup.steps:
            print(f"  step {step + 1}/{setup.steps}: loss {sum(recent) / len(recent):.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    seconds = time.perf_counter() - started
    model.eval().save_pretrained(folder)
    return {"train_seconds": seconds, "final_loss": sum(recent) / len(recent),
            "parameters": sum(p.numel() for p in model.parameters())}


def prepare(setup: Setup, work: Path, eval_count: int) -> dict:
    """Tokenizer, token streams and the trained model in ``work``, made once per setup and reused."""
    import transformers

    model_dir, done = work / "model", work / "trained.json"
    if done.is_file() and json.loads(done.read_text()).get("setup") == asdict(setup):
        print(f"reusing the trained model in {model_dir}", flush=True)
        return json.loads(done.read_text())
    shutil.rmtree(model_dir, ignore_errors=True)
    files = ensure_sources()
    train_texts = [f.read_text(errors="replace") for f in files if not held_out(f)]
    test_texts = [f.read_text(errors="replace") for f in files if held_out(f)]
    started = time.perf_counter()
    tokenizer = train_tokenizer(train_texts, setup.vocab, model_dir)
    train_tokens, test_tokens = stream(tokenizer, train_texts), stream(tokenizer, test_texts)
    tokenizer_seconds = time.perf_counter() - started
    torch.save(train_tokens, work / "train_tokens.pt")
    torch.save(test_tokens, work / "test_tokens.pt")
    windows = eval_windows(test_tokens, setup.seq, eval_count)
    print(f"{len(train_texts)} training files ({len(train_tokens):,} tokens), {len(test_texts)} held out "
          f"({len(test_tokens):,} tokens); tokenizer: BPE, {setup.vocab} tokens, {tokenizer_seconds:.0f} s", flush=True)
    trained = train_model(setup, train_tokens, model_dir)
    model = transformers.LlamaForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
    info = {"setup": asdict(setup), "files": {"train": len(train_texts), "heldout": len(test_texts)},
            "tokens": {"train": len(train_tokens), "heldout": len(test_tokens)},
            "tokenizer_seconds": tokenizer_seconds, **trained,
            "eval": {"windows": len(windows), "predicted_tokens": int(windows[:, 1:].numel())},
            "unigram_perplexity": unigram_perplexity(train_tokens, windows, setup.vocab),
            "model_perplexity": perplexity(model, windows)}
    done.write_text(json.dumps(info, indent=1))
    return info


def write_recovery_data(setup: Setup, work: Path, steps: int, batch: int) -> str:
    """The data file ``hwprune recover`` reads (one epoch = ``steps`` batches of training windows)."""
    generator = torch.Generator().manual_seed(1)
    tokens = torch.load(work / "train_tokens.pt", weights_only=True)
    starts = torch.randint(0, len(tokens) - setup.seq, (steps * batch,), generator=generator).tolist()
    torch.save(torch.stack([tokens[s:s + setup.seq] for s in starts]), work / "recover_windows.pt")
    test = torch.load(work / "test_tokens.pt", weights_only=True)
    torch.save(eval_windows(test, setup.seq, 4 * batch), work / "fidelity_windows.pt")
    (work / "lm_data.py").write_text(DATA_FILE.replace("BATCH", str(batch)))
    return str(work / "lm_data.py")


def calibration(setup: Setup, work: Path) -> list[torch.Tensor]:
    """16 batches of 8 training windows: what importance and the compile's fidelity are scored on."""
    tokens = torch.load(work / "train_tokens.pt", weights_only=True)
    starts = torch.randint(0, len(tokens) - setup.seq, (128,), generator=torch.Generator().manual_seed(2)).tolist()
    return list(torch.stack([tokens[s:s + setup.seq] for s in starts]).split(8))


def compile_build(model_dir: Path, out: Path, fraction: float, search: str, setup: Setup,
                  calib: list[torch.Tensor], fresh: bool) -> dict:
    """``hwprune.compile`` of the ``hf:`` folder (its log kept in the build); reused when already finished
    for the same request of the same trained model (``trained.json`` names the training run)."""
    import hwprune

    done, request = out / "report.json", out / "request.json"
    asked = [fraction, search, zlib.crc32((model_dir.parent / "trained.json").read_bytes())]
    if not fresh and done.is_file() and request.is_file() and json.loads(request.read_text()) == asked:
        return json.loads(done.read_text())
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    request.write_text(json.dumps(asked))
    log = io.StringIO()
    started = time.perf_counter()
    from rich.console import Console

    with contextlib.redirect_stderr(log):
        try:
            hwprune.compile(f"hf:{model_dir}", torch.zeros((1, setup.seq), dtype=torch.long), out=out, target="cpu",
                            latency=fraction, search=search, calib_data=calib,
                            console=Console(file=log, width=160, soft_wrap=True))
        except Exception as exc:
            (out / "compile.log").write_text(log.getvalue())
            raise SystemExit(f"compile --search {search} --latency {fraction} failed: {exc}") from exc
    (out / "compile.log").write_text(log.getvalue())
    report = json.loads(done.read_text())
    print(f"  compiled --search {search} --latency {fraction:.3f} in {time.perf_counter() - started:.0f} s: "
          f"measured fraction {own_fraction(report):.3f}; {removed(out)}", flush=True)
    return report


def own_fraction(report: dict) -> float:
    return report["pruned"]["latency_ms"]["median"] / report["baseline"]["latency_ms"]["median"]


def removed(out: Path) -> str:
    """What the plan took away, in words."""
    plan = json.loads((out / "plan.json").read_text())
    dropped = sorted(int(e["block"].rsplit(".", 1)[-1]) for e in plan["depth"])
    widths = sorted({f"{g.rsplit('.', 1)[-1].split(':')[-1]} {d['keep']}/{d['of']}" for g, d in plan["width"].items()
                     if d["keep"] < d["of"]})
    parts = ([f"layers {dropped} dropped"] if dropped else []) + widths
    return ", ".join(parts) or "nothing"


def head_to_head(paths: list[Path], rounds: int = 30) -> list[float]:
    """Medians (ms) of the ONNX files timed in one interleaved run with hwprune's cpu runtime settings."""
    from hwprune.runtime import runtime_for
    from hwprune.targets import load_target

    runtime = runtime_for(load_target("cpu"))
    sessions = [runtime.load(p) for p in paths]
    try:
        return [t.median_ms for t in runtime.interleaved(sessions, rounds=rounds).timings]
    finally:
        for session in sessions:
            session.close()


def pruned_model(out: Path, weights: str | None) -> torch.nn.Module:
    """The build's ``pruned_hf`` through from_pretrained, with ``weights`` (recovered.pt: the wrapper's
    state, keys prefixed ``model.``) loaded strictly over it when given."""
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(out / "pruned_hf", attn_implementation="eager")
    if weights is not None:
        state = torch.load(out / weights, weights_only=True)
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()}, strict=True)
    return model.eval()


def recover_build(out: Path, data: str, recipe: dict, windows: torch.Tensor) -> dict:
    """``hwprune.recover`` (one epoch of the data file: the stated steps), then held-out perplexity;
    reused when this build was already recovered with this recipe."""
    from rich.console import Console

    import hwprune

    section_file = out / "recovery.json"
    if section_file.is_file() and json.loads(section_file.read_text()).get("recipe") == recipe:
        return json.loads(section_file.read_text())
    lr, batch = recipe["lr"], recipe["batch"]
    log = io.StringIO()
    started = time.perf_counter()
    section = hwprune.recover(out, f"{data}:train", eval_data=f"{data}:heldout", epochs=1, lr=lr, batch_size=batch,
                              temperature=1.0, console=Console(file=log, width=160))
    seconds = time.perf_counter() - started
    (out / "recover.log").write_text(log.getvalue())
    found = {"recipe": recipe, "seconds": seconds, "loss": section["loss"],
             "samples_per_second": section["samples_per_second"],
             "kl_before": section["before"].get("kl"), "kl_after": section["after"].get("kl"),
             "perplexity": perplexity(pruned_model(out, "recovered.pt"), windows)}
    section_file.write_text(json.dumps(found, indent=1))
    return found


def run_budget(budget: float, setup: Setup, work: Path, calib: list[torch.Tensor], data: str,
               args: argparse.Namespace, windows: torch.Tensor) -> dict:
    """The three searches at one budget, matched to depth-only's latency, then recovered."""
    model_dir = work / "model"
    builds: dict[str, dict] = {}
    depth_out = work / f"b{budget}-depth"
    report = compile_build(model_dir, depth_out, budget, "depth", setup, calib, args.fresh_builds)
    builds["depth"] = {"out": depth_out, "report": report, "latency": budget, "tries": 1}
    reached = round(own_fraction(report), 3)
    for search in ("width", "joint"):
        out = work / f"b{budget}-{search}-0"
        builds[search] = {"out": out, "latency": reached, "tries": 1,
                          "report": compile_build(model_dir, out, reached, search, setup, calib, args.fresh_builds)}
    paths = [depth_out / "baseline.onnx"] + [builds[s]["out"] / "pruned.onnx" for s in SEARCHES]
    times = head_to_head(paths)
    retried = False
    for search in ("width", "joint"):
        ratio = times[1 + SEARCHES.index(search)] / times[1]
        if abs(ratio - 1) > MATCH:  # one more compile, at the fraction corrected by the head-to-head ratio
            fraction = round(min(0.95, builds[search]["latency"] / ratio), 3)
            out = work / f"b{budget}-{search}-1"
            builds[search] = {"out": out, "latency": fraction, "tries": 2,
                              "report": compile_build(model_dir, out, fraction, search, setup, calib,
                                                      args.fresh_builds)}
            retried = True
    if retried:
        paths = [depth_out / "baseline.onnx"] + [builds[s]["out"] / "pruned.onnx" for s in SEARCHES]
        times = head_to_head(paths)
    rows = {}
    recipe = {"steps": args.recover_steps, "batch": args.recover_batch, "lr": args.recover_lr, "temperature": 1.0}
    for index, search in enumerate(SEARCHES):
        build = builds[search]
        out, report = build["out"], build["report"]
        started = time.perf_counter()
        before = perplexity(pruned_model(out, None), windows)
        recovered = recover_build(out, data, recipe, windows)
        rows[search] = {"build": str(out), "latency_requested": build["latency"], "compiles": build["tries"],
                        "own_fraction": own_fraction(report), "verdict": report["budget"]["verdict"],
                        "head_to_head_ms": times[1 + index], "head_to_head_fraction": times[1 + index] / times[0],
                        "removed": removed(out), "perplexity_pruned": before,
                        "compile_fidelity": {k: report["fidelity"].get(k) for k in ("cosine", "kl", "perplexity")},
                        "recovery": recovered}
        print(f"  {search}: head to head {times[1 + index] / times[0]:.3f} of the baseline; perplexity "
              f"{before:.2f} -> {recovered['perplexity']:.2f} after {args.recover_steps} steps "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    return {"baseline_ms": times[0], "searches": rows}


def table(results: dict) -> str:
    """The results as a markdown table."""
    info = results["trained"]
    lines = [f"unpruned: {info['parameters'] / 1e6:.1f}M parameters, trained {info['setup']['steps']} steps in "
             f"{info['train_seconds'] / 60:.1f} min; held-out perplexity {info['model_perplexity']:.2f} "
             f"(unigram {info['unigram_perplexity']:.1f}) on {info['eval']['predicted_tokens']:,} tokens", "",
             f"| budget | search | --latency given | own measured fraction | head-to-head fraction | removed | "
             f"perplexity pruned | after {results['recover']['steps']} steps |",
             "|---:|---|---:|---:|---:|---|---:|---:|",
             f"| | unpruned | | 1.000 | 1.000 | nothing | {info['model_perplexity']:.2f} | |"]
    for budget, row in results["budgets"].items():
        for search, r in row["searches"].items():
            lines.append(f"| {budget} | {search} | {r['latency_requested']:.3f} | {r['own_fraction']:.3f} | "
                         f"{r['head_to_head_fraction']:.3f} | {r['removed']} | {r['perplexity_pruned']:.2f} | "
                         f"{r['recovery']['perplexity']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hwprune-tiny-lm")
    parser.add_argument("--quick", action="store_true", help="a tiny model and few steps: checks the script works")
    parser.add_argument("--budgets", default=None, help="latency fractions (default 0.6,0.8; quick 0.6)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for training, recovery and evaluation (1: the cores are shared)")
    parser.add_argument("--eval-windows", type=int, default=None, help="held-out windows (default 256, quick 128)")
    parser.add_argument("--recover-steps", type=int, default=None, help="distillation steps (default 60, quick 20)")
    parser.add_argument("--recover-batch", type=int, default=16)
    parser.add_argument("--recover-lr", type=float, default=5e-4)
    parser.add_argument("--fresh-builds", action="store_true", help="compile and recover again even if cached")
    parser.add_argument("--json", type=Path, help="where to write the results (default WORK/results.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = QUICK if args.quick else FULL
    args.budgets = args.budgets or ("0.6" if args.quick else "0.6,0.8")
    args.eval_windows = args.eval_windows or (128 if args.quick else 256)
    args.recover_steps = args.recover_steps or (20 if args.quick else 60)
    work = (args.work / ("quick" if args.quick else "full")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HWPRUNE_CACHE", str(work.parent / "cache"))
    started = time.perf_counter()
    info = prepare(setup, work, args.eval_windows)
    print(f"held-out perplexity {info['model_perplexity']:.2f} (unigram {info['unigram_perplexity']:.2f}); "
          f"trained in {info['train_seconds'] / 60:.1f} min", flush=True)
    results: dict = {"trained": info, "threads": args.threads, "budgets": {},
                     "recover": {"steps": args.recover_steps, "batch": args.recover_batch, "lr": args.recover_lr,
                                 "temperature": 1.0}}
    if info["model_perplexity"] > GATE * info["unigram_perplexity"]:
        print(f"FAILED: held-out perplexity {info['model_perplexity']:.2f} is not well below the unigram model's "
              f"{info['unigram_perplexity']:.2f} (must be at most {GATE:g}x)", flush=True)
        raise SystemExit(1)
    windows = eval_windows(torch.load(work / "test_tokens.pt", weights_only=True), setup.seq, args.eval_windows)
    data = write_recovery_data(setup, work, args.recover_steps, args.recover_batch)
    if args.fresh_builds:
        for section in work.glob("b*/recovery.json"):
            section.unlink()  # a fresh compile removes its build folder; this covers builds it reuses
    calib = calibration(setup, work)
    for budget in (float(b) for b in args.budgets.split(",")):
        print(f"budget {budget}:", flush=True)
        results["budgets"][str(budget)] = run_budget(budget, setup, work, calib, data, args, windows)
    results["wall_seconds"] = time.perf_counter() - started
    text = table(results)
    print(text)
    path = args.json or work / "results.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
