"""A plain device copy moving the same bytes as a benchmark row: the ceiling at that size.

    python bench/copy_same_bytes.py

The copy ceiling of the bench is a 1 GiB copy. Smaller transfers pay a kernel's ramp-up and
drain on fewer bytes, so a row's % of the 1 GiB ceiling has a size-specific upper bound; this
prints it for the rows that set the performance targets.
"""
import functools

import torch
import triton

from rmsnorm_triton.timing import copy_ceiling_gbps

# Bytes read + written by each row (bench/RESULTS.md), then a plain copy of that many.
ROWS = [("4096x4096 bf16", 4096 * 4096 * 4), ("4096x8192 bf16->fp32", 4096 * 8192 * 6),
        ("4096x8192 fused add, bf16 residual", 4096 * 8192 * 8),
        ("16384x8192 bf16 / 2048x65536 bf16", 16384 * 8192 * 4), ("1 GiB", 1 << 30)]


def main():
    ceiling = copy_ceiling_gbps()
    print(f"copy ceiling {ceiling:.0f} GB/s (1 GiB, read + write)")
    for name, moved in ROWS:
        src = torch.randn(moved // 4, device="cuda").to(torch.float16)
        dst = torch.empty_like(src)
        ms = triton.testing.do_bench(functools.partial(dst.copy_, src), return_mode="median")
        gbps = moved / (ms * 1e-3) / 1e9
        print(f"{name:36s} {moved / 2**20:6.0f} MiB {ms * 1e3:8.1f} us {gbps:6.0f} GB/s "
              f"{gbps / ceiling * 100:5.1f}% of the ceiling")
        del src, dst


if __name__ == "__main__":
    main()
