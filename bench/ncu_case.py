"""One forward call of a shape, run twice, for Nsight Compute to profile the second.

    ncu --clock-control none --launch-skip 1 --launch-count 1 -k regex:rmsnorm \\
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \\
        --section Occupancy --section LaunchStats python3 bench/ncu_case.py 2048x65536 bf16

Arguments: MxN, x dtype, then optionally `fp32-out` and/or `add` (fused add, bf16 residual).
"""
import sys

import torch

import rmsnorm_triton as rt

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def main():
    M, N = map(int, sys.argv[1].split("x"))
    dtype = DTYPES[sys.argv[2]]
    flags = set(sys.argv[3:])
    x = (0.5 + 2 * torch.randn(M, N, device="cuda")).to(dtype)
    w = (1 + 0.1 * torch.randn(N, device="cuda")).to(dtype)
    out = torch.empty(M, N, device="cuda", dtype=torch.float32 if "fp32-out" in flags else dtype)
    res = torch.randn(M, N, device="cuda").to(dtype) if "add" in flags else None
    for _ in range(2):
        if res is None:
            rt.rms_norm(x, w, out=out)
        else:
            rt.fused_add_rms_norm(x, res, w, out=out)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
