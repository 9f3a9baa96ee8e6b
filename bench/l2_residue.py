"""L2 residue: a kernel timed after one that loaded the same inputs `evict_last` runs faster.

    python bench/l2_residue.py [MxN]      (default 1024x16384, bf16)

Times `rms_norm` (one tile a row) in a CUDA graph on rotating inputs, then runs our looped
config (its first pass loads x `evict_last`) on the same inputs, times the tile again, runs
`timing.scrub_l2` and times it once more; twice over. The tile's time falls after the loop
(part of x is then read from L2) and comes back after the scrub: why the benchmarks scrub L2
before every timing (bench/RESULTS.md, "Eviction hints, and timing after an L2 flush").
"""
import sys

import torch

import rmsnorm_triton as rt
from rmsnorm_triton import ops
from rmsnorm_triton.config import LaunchConfig
from rmsnorm_triton.timing import graph_us, n_sets, scrub_l2
from rmsnorm_triton.validate import check_inputs

EPS = 1e-6


def main():
    M, N = map(int, (sys.argv[1] if len(sys.argv) > 1 else "1024x16384").split("x"))
    xs = [(0.5 + 2 * torch.randn(M, N, device="cuda")).to(torch.bfloat16)
          for _ in range(n_sets(M * N * 4))]
    w = (1 + 0.1 * torch.randn(N, device="cuda")).to(torch.bfloat16)
    tile = [lambda x=x: rt.rms_norm(x, w, EPS) for x in xs]

    def looped(x):
        def call():
            p = check_inputs(x, w, eps=EPS)
            return ops._launch(p, EPS, 0.0, False, False, LaunchConfig(1, 4096, 16, True))
        return call
    loop = [looped(x) for x in xs]
    torch.testing.assert_close(loop[0]().float(), tile[0]().float(), rtol=1e-2, atol=1e-2)

    def tile_us(step):
        print(f"{step:42s} tile " + " ".join(f"{graph_us(tile):.2f}" for _ in range(3)) + " us",
              flush=True)
    print(f"{M}x{N} bf16, {len(xs)} input sets, {torch.cuda.get_device_name()}")
    tile_us("fresh")
    for _ in range(2):
        print(f"{'looped config (x loaded evict_last)':42s} loop {graph_us(loop):.2f} us")
        tile_us("after the looped kernel")
        scrub_l2()
        tile_us("after scrub_l2")


if __name__ == "__main__":
    main()
