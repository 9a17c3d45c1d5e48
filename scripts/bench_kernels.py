"""Throughput of the linear-layer kernels the plans choose between, at this model's shapes, on this CPU.

For each (rows, in, out) shape: fp32 through BLAS (`F.linear`, what the release runs), fp32 with oneDNN-packed
weights (exact mode's `PackedLinear`), int8 through fbgemm (`FbgemmInt8Linear`, the avx2 plan) and oneDNN int8
(`Int8Linear`, the VNNI plans; it runs without VNNI too, but saturates there). Best of 5 rounds; GFLOP/s or GOP/s.
Also checks the 16-bit saturation that makes the avx2 plan use 7-bit activations.

    .venv/bin/python scripts/bench_kernels.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from flametalk.fast.int8 import FbgemmInt8Linear, Int8Linear, onednn_int8_available, worst_case_error
from flametalk.fast.packed import PackedLinear
from flametalk.fast.plan import detect

SHAPES = [(199, 1024, 1024), (199, 1024, 4096), (199, 4096, 1024),  # audio encoder, one 4-s window
          (181, 1024, 4608), (181, 768, 3072), (25, 768, 768), (5, 768, 3072)]  # AR: AdaLN, FFN, late scales


def best_seconds(fn, *args, calls: int = 20, rounds: int = 5) -> float:
    for _ in range(3):
        fn(*args)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(*args)
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


@torch.inference_mode()
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu = detect()
    print(f"CPU: {cpu.model}; torch capability {cpu.torch_capability}; avx512 {cpu.avx512}, "
          f"avx512_vnni {cpu.avx512_vnni}, avx_vnni {cpu.avx_vnni}; {args.threads} threads")
    gen = torch.Generator().manual_seed(0)
    for M, K, N in SHAPES:
        layer = torch.nn.Linear(K, N).requires_grad_(False)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(N, K, generator=gen) * 0.02)
        x = torch.randn(M, K, generator=gen)
        giga = 2 * M * K * N / 1e9
        rates = {"blas_fp32": best_seconds(F.linear, x, layer.weight, layer.bias)}
        if cpu.onednn:
            packed = PackedLinear(layer)
            rates["onednn_fp32"] = best_seconds(packed, x)
        if cpu.fbgemm:
            fb = FbgemmInt8Linear(layer, per_token=True)
            rates["fbgemm_int8"] = best_seconds(fb, x)
        if onednn_int8_available():
            q8 = Int8Linear(layer, per_token=True)
            rates["onednn_int8"] = best_seconds(q8, x)
        print(f"{M:4d} x {K:4d} -> {N:4d}: " + "  ".join(f"{k} {giga / v:6.0f}" for k, v in rates.items()))
    if cpu.fbgemm:
        print(f"fbgemm worst-case relative error: 8-bit activations {worst_case_error(False):.3f}, "
              f"7-bit {worst_case_error(True):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
