"""How much weight magnitude the N:M channel permutation search keeps (prints numbers; not a test).

    OMP_NUM_THREADS=1 python benchmarks/nm_permutation.py [--seeds 5] [--skip-resnet]

(a) Random matrices as in NVIDIA ASP's permutation_tests (``np.random.seed(s);
    np.random.rand(128, 64)``: 64 input channels ("64 channels x 128 filters"), uniform in [0, 1);
    seed 1 is the very matrix of ASP's README, unpruned magnitude 4083.169), 2:4: retained
    magnitude with the identity, the best of 1000 random permutations, and the search, with ASP's
    efficacy (:func:`hwprune.sparsity.permutation.efficacy`) beside ASP's published numbers.
(b) torchvision resnet50 with RANDOM weights (``torch.manual_seed(seed); resnet50()``: torchvision's
    own init, kaiming-normal fan_out for convs; no pretrained weights are loaded here), every
    2:4-eligible layer (conv with groups == 1 and input channels a multiple of 4, and the fc): the
    fraction of |W| a 2:4 mask keeps without permutation, with one random permutation and with
    the search, per layer and over the model; then per channel group as hwprune permutes them (all
    readers of a group's channels move together, so their matrices are searched stacked row-wise;
    groups from hwprune's analyzer).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hwprune.sparsity.masks import columns, retained  # noqa: E402
from hwprune.sparsity.permutation import (  # noqa: E402
    best_random_permutation,
    efficacy,
    row_bound,
    search_permutation,
)

N, M = 2, 4
# apex/contrib/sparsity/permutation_tests/README.md (Pool & Yu, NeurIPS 2021), np.random.seed(1),
# 128 x 64 uniform matrix, 2:4, efficacy in %
ASP_PUBLISHED = {
    "channel_swap,0": 32.1, "channel_swap,100": 32.5, "channel_swap,1000": 36.0,
    "optimize_stripe_groups,8,0": 35.5, "optimize_stripe_groups,8,100": 35.5,
    "optimize_stripe_groups,12,0": 36.6, "random,1000": 11.1, "random,10000": 11.2, "random,100000": 14.1,
}


def random_matrices(seeds: int) -> None:
    print("(a) random 128 rows x 64 columns (ASP's 64 channels x 128 filters), uniform [0,1), 2:4")
    print(f"{'seed':>4} {'identity':>10} {'random1000':>10} {'search':>10} {'search100':>10} {'bound':>10}"
          f" {'eff rand':>8} {'eff srch':>8} {'eff s100':>8} {'t srch':>7} {'t s100':>7}")
    rows = []
    for seed in range(1, seeds + 1):
        np.random.seed(seed)
        matrix = np.random.rand(128, 64)
        rand = best_random_permutation(matrix, N, M, count=1000, seed=seed)
        start = time.perf_counter()
        found = search_permutation(matrix, N, M, seed=0, max_seconds=30)
        t_default = time.perf_counter() - start
        start = time.perf_counter()
        found100 = search_permutation(matrix, N, M, seed=0, max_seconds=30, escape_attempts=100, effort=10)
        t_100 = time.perf_counter() - start
        effs = [100 * efficacy(matrix, order, N, M) for order in (rand, found, found100)]
        rows.append((*effs, t_default, t_100))
        print(f"{seed:>4} {retained(matrix, N, M):>10.3f} {retained(matrix[:, rand], N, M):>10.3f}"
              f" {retained(matrix[:, found], N, M):>10.3f} {retained(matrix[:, found100], N, M):>10.3f}"
              f" {row_bound(matrix, N, M):>10.3f} {effs[0]:>8.1f} {effs[1]:>8.1f} {effs[2]:>8.1f}"
              f" {t_default:>7.2f} {t_100:>7.2f}")
    mean = np.mean(rows, axis=0)
    print(f"mean efficacy: random,1000 {mean[0]:.1f}%  search (default: 20 escapes) {mean[1]:.1f}% in {mean[3]:.2f} s"
          f"  search (100 escapes) {mean[2]:.1f}% in {mean[4]:.2f} s")
    print("ASP published (seed 1 only, V100/CPU, efficacy %): "
          + ", ".join(f"{k} {v}" for k, v in ASP_PUBLISHED.items()))
    print("efficacy = (retained - retained(identity)) / (row bound - retained(identity)); row bound = every"
          " row keeps its largest half (ASP's '50% rows'), not the optimal permutation")


def _eligible(model: torch.nn.Module):
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d) and module.groups == 1 and module.in_channels % M == 0:
            yield name, module
        elif isinstance(module, torch.nn.Linear) and module.in_features % M == 0:
            yield name, module


def _fractions(matrix: np.ndarray, seed: int) -> tuple[float, float, float, float, float]:
    total = float(matrix.sum())
    rand = np.random.default_rng(seed).permutation(matrix.shape[1])
    start = time.perf_counter()
    order = search_permutation(matrix, N, M, seed=seed)
    seconds = time.perf_counter() - start
    return (retained(matrix, N, M), retained(matrix[:, rand], N, M), retained(matrix[:, order], N, M),
            total, seconds)


def resnet50_layers(seed: int) -> None:
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet50().eval()
    print(f"\n(b) resnet50, random weights (torch.manual_seed({seed}); torchvision's init), 2:4, per layer")
    print(f"{'layer':<24} {'rows x cols':>12} {'identity':>8} {'random':>8} {'search':>8} {'eff %':>6} {'s':>5}")
    sums = np.zeros(4)
    seconds = 0.0
    for name, module in _eligible(model):
        matrix = columns(module.weight.detach()).abs().double().numpy()
        ident, rand, found, total, took = _fractions(matrix, seed)
        sums += (ident, rand, found, total)
        seconds += took
        eff = 100 * (found - ident) / max(row_bound(matrix, N, M) - ident, 1e-30)
        print(f"{name:<24} {matrix.shape[0]:>5} x {matrix.shape[1]:<5} {ident / total:>8.4f} {rand / total:>8.4f}"
              f" {found / total:>8.4f} {eff:>6.1f} {took:>5.2f}")
    print(f"{'model (eligible layers)':<37} {sums[0] / sums[3]:>8.4f} {sums[1] / sums[3]:>8.4f}"
          f" {sums[2] / sums[3]:>8.4f}        {seconds:>5.1f}")
    print(f"summary: per layer, the search keeps {100 * (sums[2] - sums[0]) / sums[0]:+.2f}% more |W| than no"
          f" permutation (random: {100 * (sums[1] - sums[0]) / sums[0]:+.2f}%), {seconds:.1f} s in all")
    resnet50_groups(model, seed)


def resnet50_groups(model: torch.nn.Module, seed: int) -> None:
    from hwprune.graph.analyze import analyze
    from hwprune.transform.permute import _layout  # where each reader holds each group channel

    analysis = analyze(model, torch.randn(1, 3, 224, 224), "resnet50")
    print("\nper channel group (readers' matrices stacked row-wise; one permutation per group)")
    print(f"{'group':<24} {'rows x cols':>12} {'identity':>8} {'random':>8} {'search':>8} {'eff %':>6} {'s':>5}"
          "  readers")
    sums = np.zeros(4)
    seconds = 0.0
    for group in analysis.groups:
        try:
            layout = _layout(analysis, group)
        except Exception as refusal:  # noqa: BLE001 - a benchmark: say why and go on
            print(f"{group.id:<24} skipped: {refusal}")
            continue
        if group.channels % M:
            continue
        parts, names = [], []
        for (module, param, dim), positions in layout.items():
            readable = (isinstance(module, torch.nn.Linear)
                        or (isinstance(module, torch.nn.Conv2d) and module.groups == 1))
            if param != "weight" or dim != 1 or not readable or len({len(p) for p in positions}) != 1 \
                    or len(positions[0]) != 1:
                continue
            index = torch.tensor([p[0] for p in positions])
            parts.append(columns(module.weight.detach()).abs().double()[:, index].numpy())
            names.append(analysis.capture.module_name(module))
        if not parts:
            continue
        matrix = np.concatenate(parts, axis=0)
        ident, rand, found, total, took = _fractions(matrix, seed)
        sums += (ident, rand, found, total)
        seconds += took
        eff = 100 * (found - ident) / max(row_bound(matrix, N, M) - ident, 1e-30)
        print(f"{group.id:<24} {matrix.shape[0]:>5} x {matrix.shape[1]:<5} {ident / total:>8.4f} {rand / total:>8.4f}"
              f" {found / total:>8.4f} {eff:>6.1f} {took:>5.2f}  {len(names)}: {', '.join(names[:3])}"
              f"{' ...' if len(names) > 3 else ''}")
    print(f"{'model (grouped readers)':<37} {sums[0] / sums[3]:>8.4f} {sums[1] / sums[3]:>8.4f}"
          f" {sums[2] / sums[3]:>8.4f}        {seconds:>5.1f}")
    print(f"summary: per group, the search keeps {100 * (sums[2] - sums[0]) / sums[0]:+.2f}% more |W| than no"
          f" permutation (random: {100 * (sums[1] - sums[0]) / sums[0]:+.2f}%), {seconds:.1f} s in all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="random matrices for (a)")
    parser.add_argument("--resnet-seed", type=int, default=0)
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    random_matrices(args.seeds)
    if not args.skip_resnet:
        resnet50_layers(args.resnet_seed)


if __name__ == "__main__":
    main()
