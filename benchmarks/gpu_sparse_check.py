"""Dense against 2:4 semi-structured sparse GEMMs on a CUDA GPU (prints numbers; not a test).

    python benchmarks/gpu_sparse_check.py [--runs 100] [--batch 32] [--backend auto|cusparselt|cutlass|both]

This checks the GEMMs torch runs for 2:4 weights (``torch.sparse.to_sparse_semi_structured``: the
cuSPARSELt backend, or CUTLASS with ``SparseSemiStructuredTensor._FORCE_CUTLASS``), fp16, NOT the
kernels TensorRT picks for an engine: a TensorRT engine may choose a dense tactic for a layer even
with sparse weights, and fuses convs with their neighbours. It tells whether 2:4 speeds up the
matrix product of a given shape on this GPU at all.

Shapes: a list of linear layers (M tokens x K in x N out), and resnet50's 2:4-eligible convs
(groups == 1, input channels a multiple of 4) as their implicit-GEMM / im2col products at the
given batch: M = batch * H_out * W_out, K = C_in * kh * kw (ordered kernel tap, then input
channel, so the 2:4 runs of M = 4 lie along the input channels as TensorRT wants), N = C_out; masks
from hwprune's ``nm_mask`` on random weights. Each product ``F.linear(x[M, K], W[N, K])`` is timed
with CUDA events, median of ``--runs`` after warm-up, dense and sparse interleaved; the sparse
result is checked against the dense product of the masked weight.

torch's shape rules for the sparse operand W [N, K] (torch/sparse/semi_structured.py,
``_DTYPE_SHAPE_CONSTRAINTS``): fp16 on cuSPARSELt needs N and K multiples of 16, on CUTLASS N a
multiple of 32 and K of 64 (the dense operand is padded to 8 x 8 by torch). Shapes that do not fit
are listed as skipped with the reason. On a machine without a CUDA GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

LINEAR_SHAPES = [  # (M, K, N): tokens, in features, out features
    (32, 4096, 4096), (512, 768, 3072), (512, 3072, 768), (2048, 1024, 4096), (2048, 4096, 1024),
    (4096, 4096, 4096), (4096, 4096, 11008), (4096, 11008, 4096), (8192, 8192, 8192),
]
# fp16 sparse-operand rules: (N multiple, K multiple), from torch's _DTYPE_SHAPE_CONSTRAINTS
_SPARSE_MIN = {"cusparselt": (16, 16), "cutlass": (32, 64)}


def resnet50_gemms(batch: int) -> list[tuple[str, int, int, int, torch.nn.Module]]:
    """(name, M, K, N, conv) for resnet50's 2:4-eligible convs at 224x224 and ``batch``."""
    import torchvision

    model = torchvision.models.resnet50().eval()
    found = []

    def hook(name):
        def record(module, inputs, output):
            _, c_out, h, w = output.shape
            kh, kw = module.kernel_size
            found.append((name, batch * h * w, module.in_channels * kh * kw, c_out, module))
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules()
               if isinstance(module, torch.nn.Conv2d) and module.groups == 1 and module.in_channels % 4 == 0]
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for handle in handles:
        handle.remove()
    found += [("fc", batch, model.fc.in_features, model.fc.out_features, model.fc)]
    return found


def _fits(backend: str, n: int, k: int) -> str | None:
    rows, cols = _SPARSE_MIN[backend]
    if n % rows or k % cols:
        return f"{backend} fp16 needs N % {rows} == 0 and K % {cols} == 0"
    return None


def _time(fn, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def check(label: str, m: int, k: int, n: int, backend: str, runs: int, weight: torch.Tensor | None = None) -> None:
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    from hwprune.sparsity.masks import nm_mask

    reason = _fits(backend, n, k)
    if reason:
        print(f"{label:<26} {m:>7} {k:>6} {n:>6}  skipped: {reason}")
        return
    device = torch.device("cuda")
    if weight is None:
        weight = torch.randn(n, k)
    if weight.dim() == 4:  # conv [O, I, kh, kw] -> [O, kh*kw*I]: 2:4 runs along the input channels
        masked = weight * nm_mask(weight, 2, 4)
        dense_w = masked.permute(0, 2, 3, 1).reshape(n, k)
    else:
        dense_w = weight * nm_mask(weight, 2, 4)
    dense_w = dense_w.to(device, torch.float16).contiguous()
    x = torch.randn(m, k, device=device, dtype=torch.float16)
    SparseSemiStructuredTensor._FORCE_CUTLASS = backend == "cutlass"
    try:
        sparse_w = to_sparse_semi_structured(dense_w)
        expected = torch.nn.functional.linear(x, dense_w)
        got = torch.nn.functional.linear(x, sparse_w)
    except (RuntimeError, NotImplementedError) as failure:
        print(f"{label:<26} {m:>7} {k:>6} {n:>6}  failed on {backend}: {str(failure).splitlines()[0][:80]}")
        return
    finally:
        SparseSemiStructuredTensor._FORCE_CUTLASS = False
    error = (got.float() - expected.float()).abs().max().item()
    scale = expected.float().abs().max().item() or 1.0
    with torch.no_grad():
        for _ in range(10):  # warm-up
            torch.nn.functional.linear(x, dense_w)
            torch.nn.functional.linear(x, sparse_w)
        dense_t, sparse_t = [], []
        for _ in range(runs // 10 or 1):  # interleaved blocks: dense, sparse, dense, ...
            dense_t += _time(lambda: torch.nn.functional.linear(x, dense_w), 10)
            sparse_t += _time(lambda: torch.nn.functional.linear(x, sparse_w), 10)
    dense_ms, sparse_ms = statistics.median(dense_t), statistics.median(sparse_t)
    flag = "" if error <= 1e-2 * scale else f"  MISMATCH max err {error:.3g}"
    print(f"{label:<26} {m:>7} {k:>6} {n:>6}  {dense_ms:>8.4f} {sparse_ms:>8.4f} {dense_ms / sparse_ms:>6.2f}x{flag}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="timed runs per GEMM (median)")
    parser.add_argument("--batch", type=int, default=32, help="resnet50 batch for the conv GEMMs")
    parser.add_argument("--backend", choices=["auto", "cusparselt", "cutlass", "both"], default="auto")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_sparse_check: skipped, no CUDA GPU on this machine (torch.cuda.is_available() is False)")
        return 0
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        print(f"gpu_sparse_check: skipped, {torch.cuda.get_device_name()} (sm_{major}{minor}) has no sparse tensor"
              " cores (2:4 needs Ampere, sm_80, or newer)")
        return 0
    has_cslt = torch.backends.cusparselt.is_available()
    backends = {"auto": ["cusparselt" if has_cslt else "cutlass"], "cusparselt": ["cusparselt"],
                "cutlass": ["cutlass"], "both": ["cusparselt", "cutlass"]}[args.backend]
    if "cusparselt" in backends and not has_cslt:
        print("cuSPARSELt is not available in this torch build; using CUTLASS")
        backends = ["cutlass"]
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()} (sm_{major}{minor}), torch {torch.__version__}, fp16, "
          f"median of {args.runs} runs, CUDA events")
    print("This times torch's semi-structured GEMMs, not TensorRT's kernels.")
    for backend in backends:
        print(f"\n[{backend}]  ratio = dense / sparse time (> 1: 2:4 is faster)")
        print(f"{'layer':<26} {'M':>7} {'K':>6} {'N':>6}  {'dense ms':>8} {'2:4 ms':>8} {'ratio':>7}")
        for m, k, n in LINEAR_SHAPES:
            check(f"linear {k}->{n}", m, k, n, backend, args.runs)
        for name, m, k, n, module in resnet50_gemms(args.batch):
            check(f"resnet50 {name}", m, k, n, backend, args.runs, module.weight.detach().float())
    return 0


if __name__ == "__main__":
    sys.exit(main())
