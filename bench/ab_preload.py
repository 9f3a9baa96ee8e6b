"""A/B of config.preload_weight: weight fetched before the reduction (early) or after it (late).

    python bench/ab_preload.py [M1xN1,M2xN2,...]

Per shape: eager device time (L2 flushed) and per-call time in a CUDA graph, both ways, with
% of the copy ceiling for the large shapes. config.preload_weight's rule comes from this table.
"""
import sys

import torch

from rmsnorm_triton import ops, plans
from rmsnorm_triton.timing import copy_ceiling_gbps, eager_us, graph_us, n_sets, rmsnorm_bytes

SHAPES = [(1, 4096), (1, 8192), (8, 4096), (8, 8192), (64, 8192), (256, 8192), (1024, 4096),
          (1024, 8192), (4096, 4096), (4096, 8192), (16384, 8192), (4096, 32768),
          (2048, 65536), (1024, 131072), (512, 262144)]
BF16 = torch.bfloat16


def main():
    ceiling = copy_ceiling_gbps()
    print(f"copy ceiling {ceiling:.0f} GB/s")
    print(f"{'M x N':>14} {'mode':>6} {'early us':>9} {'late us':>9} {'late/early':>10} "
          f"{'early %':>8} {'late %':>7}")
    shapes = [tuple(map(int, s.split("x"))) for s in sys.argv[1].split(",")] if sys.argv[1:] \
        else SHAPES
    for M, N in shapes:
        nbytes = rmsnorm_bytes(M, N, BF16, BF16, BF16)
        sets = []
        for _ in range(n_sets(nbytes)):
            x = (0.5 + 2 * torch.randn(M, N, device="cuda")).to(BF16)
            w = (1 + 0.1 * torch.randn(N, device="cuda")).to(BF16)
            sets.append((x, w, torch.empty_like(x)))
        calls = [lambda s=s: ops.rms_norm(s[0], s[1], out=s[2]) for s in sets]
        modes = ["eager"] + (["graph"] if M <= 1024 else [])
        for mode in modes:
            t = {}
            for early in (True, False):
                ops.preload_weight = lambda *args, early=early: early
                plans.clear()
                t[early] = eager_us(calls) if mode == "eager" else graph_us(calls)
            pct = {k: nbytes / (v * 1e-6) / 1e9 / ceiling * 100 for k, v in t.items()}
            print(f"{M:>6} x {N:<6} {mode:>6} {t[True]:9.2f} {t[False]:9.2f} "
                  f"{t[False] / t[True]:10.3f} {pct[True]:7.1f}% {pct[False]:6.1f}%", flush=True)
        del sets, calls
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
