"""Where a decode-sized call spends host time: per-stage microseconds and a cProfile.

    python bench/profile_host.py [MxN]
"""
import cProfile
import pstats

import torch
import triton

import rmsnorm_triton as rt
from rmsnorm_triton.timing import host_us
from rmsnorm_triton import ops
from rmsnorm_triton.config import pick_config, row_bucket
from rmsnorm_triton.validate import check_inputs


@triton.jit
def _empty(x_ptr):
    pass


def _us(fn):
    """Wall time per call of back-to-back calls, host overhead included."""
    return host_us([fn], n=500)


def main():
    import sys
    M, N = map(int, (sys.argv[1] if len(sys.argv) > 1 else "8x4096").split("x"))
    x = (0.5 + 2 * torch.randn(M, N, device="cuda")).to(torch.bfloat16)
    w = (1 + 0.1 * torch.randn(N, device="cuda")).to(torch.bfloat16)
    res = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(x)
    stages = {
        "empty triton kernel": lambda: _empty[(1,)](x),
        "torch F.rms_norm": lambda: torch.nn.functional.rms_norm(x, (N,), w, 1e-6),
        "check_inputs": lambda: check_inputs(x, w),
        "pick_config": lambda: pick_config(N, row_bucket(M), x.dtype, x.dtype, False, 0),
        "rt.rms_norm": lambda: rt.rms_norm(x, w),
        "rt.rms_norm out=": lambda: rt.rms_norm(x, w, out=out),
        "rt.fused_add_rms_norm": lambda: rt.fused_add_rms_norm(x, res, w),
    }
    for name, fn in stages.items():
        print(f"{name:28s} {_us(fn):7.2f} us per call")
    print(f"launch cache: {len(ops._launch_rows.kernels)} kernels, "
          f"enabled={ops._launch_rows.enabled}")
    for enabled in (False, True):
        ops._launch_rows.enabled = enabled
        print(f"rt.rms_norm, launch cache {'on ' if enabled else 'off'}   "
              f"{_us(lambda: rt.rms_norm(x, w)):7.2f} us per call")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(2000):
        rt.rms_norm(x, w)
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
