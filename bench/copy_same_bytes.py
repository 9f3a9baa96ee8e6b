"""A plain device copy moving the same bytes as a benchmark row: the ceiling at that size.

    python bench/copy_same_bytes.py

The copy ceiling of the bench is a 1 GiB copy. Smaller transfers pay a kernel's ramp-up and
drain on fewer bytes, so a row's % of the 1 GiB ceiling has a size-specific upper bound; this
prints it for the rows that set the performance targets.

The large rows are timed with do_bench, one source and destination (a copy's host path fits
under the flush, so the bench's held eager timer would read the same).
The 1024-row and decode rows, whose targets are set in a CUDA graph, are timed like the bench's
graph rows: each call copies into a new tensor (as a norm allocates its output), sources and outputs
rotating as the bench's do (`timing.n_sets`, `_cycle`): past about 1 MB a call none is in L2
when its turn comes; smaller calls (1 x 8192, 8 x 4096) stay L2-resident, as they do there.
The decode rows are also timed eager with L2 flushed, next to an empty Triton kernel.
"""
import functools

import torch
import triton

from rmsnorm_triton.timing import copy_ceiling_gbps, eager_us, empty_launch_us, graph_us, n_sets

# Bytes read + written by each row (bench/RESULTS.md), then a plain copy of that many.
ROWS = [("4096x4096 bf16", 4096 * 4096 * 4), ("4096x8192 bf16->fp32", 4096 * 8192 * 6),
        ("4096x8192 fused add, bf16 residual", 4096 * 8192 * 8),
        ("16384x8192 bf16 / 2048x65536 bf16", 16384 * 8192 * 4), ("1 GiB", 1 << 30)]
# The graph-timed target rows, 16-bit in and out: M = 1024, N = 4096..8192 (>= 80%), and the
# decode rows (<= 2 us).
GRAPH_ROWS = [(f"{m}x{n} 16-bit (graph, rotating)", m * n * 4) for m, n in
              ((1024, 4096), (1024, 5120), (1024, 7168), (1024, 8192), (1, 8192), (8, 4096),
               (64, 8192))]
# Decode rows timed eager, as the bench's decode eager target is.
DECODE_EAGER = [(1, 8192), (8, 4096), (64, 8192)]


def _report(name, moved, us, ceiling):
    gbps = moved / (us * 1e-6) / 1e9
    print(f"{name:36s} {moved / 2**20:6.0f} MiB {us:8.2f} us {gbps:6.0f} GB/s "
          f"{gbps / ceiling * 100:5.1f}% of the ceiling")


def main():
    ceiling = copy_ceiling_gbps()
    print(f"copy ceiling {ceiling:.0f} GB/s (1 GiB, read + write)")
    for name, moved in ROWS:
        src = torch.randn(moved // 4, device="cuda").to(torch.float16)
        dst = torch.empty_like(src)
        ms = triton.testing.do_bench(functools.partial(dst.copy_, src), return_mode="median")
        _report(name, moved, ms * 1e3, ceiling)
        del src, dst
    for name, moved in GRAPH_ROWS:
        srcs = [torch.randn(moved // 4, device="cuda").to(torch.float16)
                for _ in range(n_sets(moved))]
        _report(name, moved, graph_us([s.clone for s in srcs]), ceiling)
        del srcs
    # The decode eager target compares device time (L2 flushed before each call) with an empty
    # Triton kernel's: a copy of the same bytes shows what reading them from DRAM adds.
    empty = empty_launch_us()["eager"]
    print(f"empty Triton kernel, eager (L2 flushed): {empty:.2f} us")
    for m, n in DECODE_EAGER:
        srcs = [torch.randn(m * n, device="cuda").to(torch.bfloat16) for _ in range(4)]
        us = eager_us([s.clone for s in srcs])
        print(f"{m}x{n} bf16 copy, eager (L2 flushed)  {us:6.2f} us  "
              f"{us / empty:5.2f}x the empty kernel")
        del srcs


if __name__ == "__main__":
    main()
