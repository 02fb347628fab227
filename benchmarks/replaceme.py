"""ReplaceMe against plain layer removal on the same layers of the trained tiny language model.

``benchmarks/tiny_lm.py`` trains a Llama-style decoder on real English and caches it in its ``--work``
folder with its token windows; this script reuses them (run tiny_lm.py first). For each run of layers
(``--runs``), two plans drop it: plainly, and replaced by one linear map fitted on the compile's
calibration windows (16 batches of 8 training windows, ``tiny_lm.calibration``) and folded into the MLP
output projection of the layer before. Each plan is applied with hwprune's transform (``realise``),
then measured on held-out text: the KL divergence from the unpruned model's next-token distribution
and the relative logit error on 64 held-out windows, and the perplexity on 256; then each is distilled
with ``hwprune.recover`` (``--recover-steps`` steps of 16 training windows, logit KL, AdamW) and measured
again. Latency is not measured: both remove the same layers and the fold adds no op.

    python benchmarks/replaceme.py [--work /tmp/hwprune-tiny-lm/full] [--runs 6,5-6] [--recover-steps 60]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import time
from pathlib import Path

import tiny_lm  # first: it takes this folder off the path, so ``import transformers`` finds the library
import torch

EVAL_WINDOWS = 256  # held-out windows perplexity is taken on (tiny_lm's count)


def parse_runs(text: str) -> list[tuple[int, ...]]:
    """``6,5-6`` -> [(6,), (5, 6)]."""
    runs = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        runs.append(tuple(range(int(first), int(last or first) + 1)))
    return runs


def plan_for(loaded, stack: str, run: tuple[int, ...], replaced: bool):
    """A plan dropping ``run`` of ``stack``, its map folded into the layer before where ``replaced``."""
    from hwprune.frontends import state_digest
    from hwprune.frontends.hf.replace import replacement_folds
    from hwprune.plan import DroppedBlock, LatencyModelInfo, Plan, PlanBudget, Provenance

    fold = replacement_folds(loaded.module, [f"{stack}.{run[0]}"])[f"{stack}.{run[0]}"] if replaced else None
    provenance = Provenance(loaded.name, loaded.weights, loaded.seed, tuple(loaded.example_input.shape), (),
                            state_digest(loaded.module), "cpu", PlanBudget("latency", 1.0, None),
                            LatencyModelInfo("analytic", None, None, None, None, 1.0, 0.0), "none (benchmark)")
    return Plan(provenance, 0.0, 0.0, depth=tuple(DroppedBlock(f"{stack}.{i}", None, fold) for i in run))


def realised(loaded, plan, calibration: list[torch.Tensor]) -> torch.nn.Module:
    import copy

    from hwprune.graph.analyze import analyze
    from hwprune.transform.realise import realise

    analysis = analyze(copy.deepcopy(loaded.module), loaded.example_input, loaded.name, strict=False)
    return realise(plan, analysis, calibration=calibration).eval()


def fidelity(reference: torch.Tensor, model: torch.nn.Module, windows: torch.Tensor) -> dict:
    """KL(unpruned || pruned) per position (nats) and the relative logit error, over ``windows``."""
    kl, error, norm = 0.0, 0.0, 0.0
    with torch.no_grad():
        for chunk, ref in zip(windows.split(16), reference.split(16), strict=True):
            out = model(chunk).double()
            log_p, log_q = torch.log_softmax(ref, -1), torch.log_softmax(out, -1)
            kl += float((log_p.exp() * (log_p - log_q)).sum(-1).sum())
            error += float((out - ref).pow(2).sum())
            norm += float(ref.pow(2).sum())
    return {"kl": kl / (windows.numel()), "relative_logit_error": (error / norm) ** 0.5}


def measure(model: torch.nn.Module, reference: torch.Tensor, held: torch.Tensor, windows: torch.Tensor) -> dict:
    return {**fidelity(reference, model, held), "perplexity": tiny_lm.perplexity(model.model, windows)}


def recovered(build: Path, loaded, plan, model: torch.nn.Module, data: str, steps: int, reference: torch.Tensor,
              held: torch.Tensor, windows: torch.Tensor) -> dict:
    """``hwprune.recover`` of a build holding ``plan`` and ``model``'s weights, then measured again."""
    from rich.console import Console

    import hwprune
    from hwprune.plan import save_plan

    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    save_plan(plan, build / "plan.json")
    torch.save(model.state_dict(), build / "pruned.pt")
    log = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stderr(log):
        hwprune.recover(build, f"{data}:train", eval_data=f"{data}:heldout", epochs=1, lr=5e-4, batch_size=16,
                        temperature=1.0, console=Console(file=log, width=160))
    seconds = time.perf_counter() - started
    model.load_state_dict(torch.load(build / "recovered.pt", weights_only=True))
    return {**measure(model.eval(), reference, held, windows), "seconds": seconds, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hwprune-tiny-lm/full"))
    parser.add_argument("--runs", default="6,5-6", help="layer runs, comma-separated (5-6: layers 5 and 6)")
    parser.add_argument("--recover-steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from hwprune.frontends import load_model

    work = args.work
    if not (work / "model" / "config.json").is_file():
        raise SystemExit(f"{work}: no trained model; run benchmarks/tiny_lm.py first")
    setup = tiny_lm.Setup(**json.loads((work / "trained.json").read_text())["setup"])
    data = tiny_lm.write_recovery_data(setup, work, args.recover_steps, 16)
    loaded = load_model(f"hf:{work / 'model'}", (1, setup.seq))
    loaded.module.eval()
    calibration = tiny_lm.calibration(setup, work)
    held = torch.load(work / "fidelity_windows.pt", weights_only=True)
    windows = tiny_lm.eval_windows(torch.load(work / "test_tokens.pt", weights_only=True), setup.seq, EVAL_WINDOWS)
    with torch.no_grad():
        reference = torch.cat([loaded.module(chunk).double() for chunk in held.split(16)])
    results = {"unpruned_perplexity": tiny_lm.perplexity(loaded.module.model, windows), "runs": []}
    print(f"unpruned: held-out perplexity {results['unpruned_perplexity']:.2f}", flush=True)
    for run in parse_runs(args.runs):
        for replaced in (False, True):
            name = f"{'replaceme' if replaced else 'removed'}-{'-'.join(map(str, run))}"
            plan = plan_for(loaded, "model.model.layers", run, replaced)
            started = time.perf_counter()
            model = realised(loaded, plan, calibration)
            built = time.perf_counter() - started
            row = {"run": list(run), "method": "ReplaceMe" if replaced else "removed", "apply_seconds": built,
                   "pruned": measure(model, reference, held, windows)}
            row["recovered"] = recovered(work / "replaceme" / name, loaded, plan, model, data, args.recover_steps,
                                         reference, held, windows)
            results["runs"].append(row)
            print(f"layers {list(run)} {row['method']}: KL {row['pruned']['kl']:.4f} -> {row['recovered']['kl']:.4f}, "
                  f"logit error {row['pruned']['relative_logit_error']:.3f} -> "
                  f"{row['recovered']['relative_logit_error']:.3f}, perplexity {row['pruned']['perplexity']:.2f} -> "
                  f"{row['recovered']['perplexity']:.2f} ({args.recover_steps} steps; applied in {built:.1f} s)",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
