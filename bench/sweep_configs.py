"""Time candidate LaunchConfigs on the shapes that set the heuristic's thresholds.

    python bench/sweep_configs.py [--csv out.csv]

Prints, per shape, each candidate's time and % of the copy ceiling next to the heuristic's
pick, so a threshold in config.py can point at a measured reason.
"""
import argparse
import csv
import sys

import torch
import triton
from triton.testing import do_bench

import rmsnorm_triton as rt
from rmsnorm_triton import ops
from rmsnorm_triton.atomic import write_atomic
from rmsnorm_triton.timing import copy_ceiling_gbps
from rmsnorm_triton.config import LaunchConfig, heuristic_config

SHAPES = [(16384, 1024), (65536, 128), (4096, 4096), (16384, 4096), (16384, 8192), (1024, 4096),
          (1024, 8192), (4096, 16384), (4096, 32768), (2048, 65536), (1024, 131072),
          (512, 262144), (64, 8192), (8, 4096), (1, 8192)]


def candidates(M, N):
    bn = triton.next_power_of_2(N)
    out = []
    if bn <= 65536:
        for bm in (1, 2, 4, 8, 16, 32, 64, 128):
            if bm * bn > 65536 or (bm > 1 and bm * bn > 16384) or bm > M:
                continue
            for w in (4, 8, 16, 32):
                if w * 32 * 4 <= bm * bn or bm * bn <= 4096:
                    out.append(LaunchConfig(bm, bn, w, False))
    if N > 32768:
        for chunk in (8192, 16384):
            for w in (8, 16):
                out.append(LaunchConfig(1, chunk, w, True))
    if N >= 4096:
        for sl in (2048, 4096, 8192, 16384):
            if sl < N:
                for w in (2, 4, 8, 16):
                    if sl // (32 * w) >= 4:
                        out.append(LaunchConfig(1, sl, w, False, splits=triton.cdiv(N, sl)))
    return out


def time_config(cfg, x, w, out):
    ops.pick_config = lambda *a, **k: cfg
    fn = lambda: rt.rms_norm(x, w, out=out)  # noqa: E731
    fn()
    return do_bench(fn, warmup=10, rep=40, return_mode="median")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv")
    ap.add_argument("--shapes", default=None, help="M1xN1,M2xN2,...")
    ap.add_argument("--out-dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    args = ap.parse_args()
    shapes = SHAPES if not args.shapes else [tuple(map(int, s.split("x")))
                                             for s in args.shapes.split(",")]
    ceiling = copy_ceiling_gbps()
    # Let clocks settle before the first candidate is timed.
    do_bench(lambda: torch.randn(1 << 24, device="cuda"), warmup=200, rep=500)
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}"
          f" copy ceiling {ceiling:.0f} GB/s")
    original = ops.pick_config
    rows = []
    for M, N in shapes:
        x = (0.5 + 2 * torch.randn(M, N, device="cuda")).to(torch.bfloat16)
        w = (1 + 0.1 * torch.randn(N, device="cuda")).to(torch.bfloat16)
        out_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
            args.out_dtype]
        out = torch.empty_like(x, dtype=out_dtype)
        nbytes = M * N * (2 + out.element_size()) + 2 * N
        heur = heuristic_config(N, triton.next_power_of_2(M), 2, True, out.element_size())
        results = []
        for cfg in candidates(M, N):
            try:
                ms = time_config(cfg, x, w, out)
            except Exception as e:  # out of resources: report, keep going
                print(f"  {cfg}: failed {type(e).__name__}", file=sys.stderr)
                continue
            results.append((ms, cfg))
            rows.append(dict(M=M, N=N, block_m=cfg.block_m, block_n=cfg.block_n,
                             num_warps=cfg.num_warps, looped=cfg.looped, us=ms * 1e3,
                             pct=100 * nbytes / (ms * 1e-3) / 1e9 / ceiling))
        results.sort(key=lambda r: r[0])
        hms = next((ms for ms, c in results if c == heur), float("nan"))
        print(f"M={M} N={N}: heuristic {heur} {hms*1e3:.1f}us "
              f"({100*nbytes/(hms*1e-3)/1e9/ceiling:.0f}%)")
        for ms, cfg in results[:4]:
            print(f"    {ms*1e3:8.1f}us {100*nbytes/(ms*1e-3)/1e9/ceiling:5.1f}%  {cfg}")
        del x, w, out
    ops.pick_config = original
    if args.csv:
        def write(tmp):
            with open(tmp, "w", newline="") as f:
                wr = csv.DictWriter(f, fieldnames=list(rows[0]))
                wr.writeheader()
                wr.writerows(rows)
        write_atomic(args.csv, write)


if __name__ == "__main__":
    main()
