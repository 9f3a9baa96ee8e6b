"""The looped kernel's chunk loops with a runtime bound (n_cols) or a constant one (LOOP_N),
next to torch.compile's looped reduction, on the 512-1024-row calls where the heuristic loops.

    python bench/ab_loop_bound.py [M1xN1,M2xN2,...]

A stripped copy of rmsnorm_fwd_kernel's looped path (x, weight, output; no flags) is timed both
ways with chunks of 2048 and 4096 on 8 and 16 warps, bf16 in, fp32 out (the rows where torch.compile
had led), in a CUDA graph with inputs and outputs rotating as in the bench. Each variant is
checked against fp32 math first. torch.compile runs `providers._rms_norm_fp32` (default mode,
dynamic=False: its kernel has the row length compiled in).
"""
import sys

import torch
import triton
import triton.language as tl

from rmsnorm_triton import providers as P
from rmsnorm_triton.timing import graph_us, n_sets

SHAPES = [(512, 5120), (1024, 5120), (1024, 7168), (1024, 8192)]
EPS = 1e-6


@triton.jit
def _looped(x_ptr, w_ptr, y_ptr, n_cols, stride, eps, LOOP_N: tl.constexpr,
            CONST_BOUND: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    if CONST_BOUND:
        n = LOOP_N
    else:
        n = n_cols
    x_row = x_ptr + row * stride
    y_row = y_ptr + row * stride
    cols = tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, n, BLOCK_N):
        m = start + cols < n
        h = tl.load(x_row + start + cols, mask=m, other=0.0,
                    eviction_policy="evict_last").to(tl.float32)
        acc += h * h
    rstd = tl.rsqrt(tl.sum(acc, axis=0) / n_cols + eps)
    for start in range(0, n, BLOCK_N):
        m = start + cols < n
        h = tl.load(x_row + start + cols, mask=m, other=0.0,
                    eviction_policy="evict_first").to(tl.float32)
        w = tl.load(w_ptr + start + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(y_row + start + cols, (h * rstd * w).to(y_row.dtype.element_ty), mask=m)


def _call(x, w, const, block_n, warps):
    M, N = x.shape

    def call():
        y = torch.empty((M, N), dtype=torch.float32, device=x.device)
        _looped[(M,)](x, w, y, N, N, EPS, LOOP_N=N, CONST_BOUND=const, BLOCK_N=block_n,
                      num_warps=warps)
        return y
    return call


def main(shapes):
    P.prepare_compile()
    compiled = torch.compile(P._rms_norm_fp32, dynamic=False)
    for M, N in shapes:
        xs = [(0.5 + 2 * torch.randn(M, N, device="cuda")).to(torch.bfloat16)
              for _ in range(n_sets(M * N * 6))]
        w = (1 + 0.1 * torch.randn(N, device="cuda")).to(torch.bfloat16)
        want = P._rms_norm_fp32(xs[0], w, EPS, torch.float32)
        times = {"torch.compile": graph_us(
            [lambda x=x: compiled(x, w, EPS, torch.float32) for x in xs])}
        for block_n in (2048, 4096):
            for warps in (8, 16):
                for const in (False, True):
                    got = _call(xs[0], w, const, block_n, warps)()
                    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
                    name = f"{block_n} w{warps} {'constant' if const else 'runtime'} bound"
                    times[name] = graph_us([_call(x, w, const, block_n, warps) for x in xs])
        print(f"{M}x{N} bf16->fp32 (graph, us; torch.compile's time / this)")
        for name, us in sorted(times.items(), key=lambda kv: kv[1]):
            print(f"   {name:28s} {us:7.2f}  {times['torch.compile'] / us:5.3f}")
        sys.stdout.flush()


if __name__ == "__main__":
    arg = sys.argv[1] if len(sys.argv) > 1 else None
    main([tuple(map(int, s.split("x"))) for s in arg.split(",")] if arg else SHAPES)
