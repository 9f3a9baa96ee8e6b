"""Looped configs against the heuristic's pick at 256-2048 rows of 4K-16K, in a CUDA graph.

    python bench/ab_mid_rows.py

Each config runs through the forward's own launcher (`ops._launch` with the config given),
inputs and outputs rotating as in the bench's graph rows, torch.compile timed in the same
process; every config is checked against fp32 math first. "heuristic" is `heuristic_config`'s
pick, not a tuned table's. Behind the 512-1024-row loop rules in config.py (bench/RESULTS.md,
"Loop bounds as constants").
"""
import sys

import torch

from rmsnorm_triton import ops
from rmsnorm_triton import providers as P
from rmsnorm_triton.config import LaunchConfig, heuristic_config, next_pow2, row_bucket
from rmsnorm_triton.timing import graph_us, n_sets
from rmsnorm_triton.validate import check_inputs

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
EPS = 1e-6
SHAPES = ([(m, n, BF16, out) for m in (512, 1024) for n in (4096, 5120, 7168, 8192)
           for out in (FP32, BF16)]
          + [(1024, 5120, FP16, FP32), (1024, 4096, FP16, FP32), (2048, 5120, BF16, FP32),
             (256, 5120, BF16, FP32), (300, 5120, BF16, FP32), (384, 5120, BF16, FP32),
             (1024, 12288, BF16, BF16), (1024, 16384, BF16, BF16)])


def _norm(x, w, out_dtype, cfg):
    def call():
        p = check_inputs(x, w, out_dtype=out_dtype, eps=EPS)
        return ops._launch(p, EPS, 0.0, False, False, cfg)
    return call


def _candidates(M, N, out_dtype):
    heur = heuristic_config(N, row_bucket(M), 2, True, out_dtype.itemsize)     # as rms_norm
    found = {"heuristic": heur}
    if not heur.looped:
        found["tile w16"] = LaunchConfig(1, next_pow2(N), 16, False)
    for chunk in (2048, 4096, 8192):
        if chunk <= next_pow2(N):
            for warps in (8, 16):
                found[f"loop{chunk} w{warps}"] = LaunchConfig(1, chunk, warps, True)
    return heur, found


def main():
    P.prepare_compile()
    compiled = torch.compile(P._rms_norm_fp32, dynamic=False)
    for M, N, x_dtype, out_dtype in SHAPES:
        xs = [(0.5 + 2 * torch.randn(M, N, device="cuda")).to(x_dtype)
              for _ in range(n_sets(M * N * (2 + out_dtype.itemsize)))]
        w = (1 + 0.1 * torch.randn(N, device="cuda")).to(x_dtype)
        want = P._rms_norm_fp32(xs[0], w, EPS, out_dtype).float()
        times = {"torch.compile": graph_us(
            [lambda x=x: compiled(x, w, EPS, out_dtype) for x in xs])}
        heur, found = _candidates(M, N, out_dtype)
        for name, cfg in found.items():
            got = _norm(xs[0], w, out_dtype, cfg)().float()
            torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
            times[name] = graph_us([_norm(x, w, out_dtype, cfg) for x in xs])
        print(f"{M}x{N} {str(x_dtype)[6:]}->{str(out_dtype)[6:]} heuristic={heur}")
        for name, us in sorted(times.items(), key=lambda kv: kv[1]):
            print(f"   {name:14s} {us:7.2f} us  compile/this {times['torch.compile'] / us:5.3f}"
                  f"  heuristic/this {times['heuristic'] / us:5.3f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
