"""What in the single-tile kernel costs time: column masks, 64-bit row offsets, weight order.

    python bench/ab_tile_variants.py [M1xN1[:x:out],...] [rounds]

torch.compile's kernel for the 16-bit norm at 512 x 8192 (one row a program, 16 warps, no masks,
32-bit offsets, `bench/inductor_choice.py`) beats the package's 8192-wide tile on 16 warps by
about 15% after an L2 flush. A stripped copy of rmsnorm_fwd_kernel's single-tile path (x, weight,
output; bf16 in and out unless a row names its dtypes, e.g. 512x896:bf16:fp32) is timed with one
change at a time:
  base       as the package: mask on the runtime n_cols, int64 row offsets, weight fetched first
  const-mask the mask on n_cols as a constexpr (a kernel per hidden size)
  no-mask    no mask at all (only where N is the tile width)
  int32      32-bit row offsets
  late-w     the weight fetched after the reduction
  const-n    the mask and 1/n_cols both from n_cols as a constexpr (torch.compile's kernel
             specializes on the shape so)
  wide-sig   base, with the package kernel's argument list (residual and bias pointers, the
             row count, a row stride each for x, residual and output), values passed for all
             as the package did up to 875a0f7, the output addressed by x's stride;
             `wide-sig-ystride` by its own; `wide-sig-none` with the residual and bias
             pointers passed as None, and `wide-sig-none-all` with the row count and the
             residual's stride None too, as the package passes them now (Triton compiles a
             None argument out of the kernel)
each on 8 and 16 warps (AB_WARPS="4,8" picks others); then the package's kernel itself with
the same flags (weight fetched first) and its arguments as the package passes them, launched
through Triton's JIT (`kernel-jit`) and through
the package's launcher with that config (`launcher`, `ops._launch`: its own weight-fetch rule),
next to torch.compile and the package's own rms_norm. Eager (L2 flushed, `timing.eager_us`) and
CUDA-graph timings, inputs and outputs rotating, medians of interleaved
rounds; each variant is checked against fp32 math first.
"""
import os
import sys

import torch
import triton
import triton.language as tl

import rmsnorm_triton as rt
from rmsnorm_triton.kernels.rmsnorm import rmsnorm_fwd_kernel
from rmsnorm_triton import ops, providers as P
from rmsnorm_triton.config import LaunchConfig, row_mask
from rmsnorm_triton.validate import check_inputs
from rmsnorm_triton.timing import eager_us, graph_us, n_sets
from bench_utils import interleaved_medians, parse_rows

SHAPES = "512x8192,512x7168,4096x8192,4096x5120,64x8192"
EPS = 1e-6
VARIANTS = {"base": dict(MASK=1, IDX64=True, EARLY_W=True),
            "const-mask": dict(MASK=2, IDX64=True, EARLY_W=True),
            "no-mask": dict(MASK=0, IDX64=True, EARLY_W=True),
            "int32": dict(MASK=1, IDX64=False, EARLY_W=True),
            "late-w": dict(MASK=1, IDX64=True, EARLY_W=False),
            "const-n": dict(MASK=3, IDX64=True, EARLY_W=True)}


@triton.jit
def _tile(x_ptr, w_ptr, y_ptr, n_cols, stride, eps, N: tl.constexpr, BLOCK_N: tl.constexpr,
          MASK: tl.constexpr, IDX64: tl.constexpr, EARLY_W: tl.constexpr):
    if IDX64:
        row = tl.program_id(0).to(tl.int64)
    else:
        row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)[None, :]
    x_row = x_ptr + row * stride
    y_row = y_ptr + row * stride
    if MASK == 1:
        m = cols < n_cols
    else:
        m = cols < N     # MASK == 0 uses no mask: N is then the tile width
    if EARLY_W:
        w = _load(w_ptr + cols, m, MASK)
    h = _load(x_row + cols, m, MASK).to(tl.float32)
    if MASK == 3:
        rstd = tl.rsqrt(tl.sum(h * h, axis=1) * (1.0 / N) + eps)[:, None]
    else:
        rstd = tl.rsqrt(tl.sum(h * h, axis=1) * (1.0 / n_cols) + eps)[:, None]
    if not EARLY_W:
        w = _load(w_ptr + cols, m, MASK)
    y = (h * rstd * w.to(tl.float32)).to(y_row.dtype.element_ty)
    if MASK == 0:
        tl.store(y_row + cols, y)
    else:
        tl.store(y_row + cols, y, mask=m)


@triton.jit
def _load(ptrs, m, MASK: tl.constexpr):
    if MASK == 0:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=m, other=0.0)


@triton.jit
def _tile_wide_sig(x_ptr, r_ptr, w_ptr, b_ptr, y_ptr, n_rows, n_cols, stride_x, stride_r,
                   stride_y, eps, BLOCK_N: tl.constexpr, Y_STRIDE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)[None, :]
    m = cols < n_cols
    w = tl.load(w_ptr + cols, mask=m, other=0.0)
    h = tl.load(x_ptr + row * stride_x + cols, mask=m, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(h * h, axis=1) * (1.0 / n_cols) + eps)[:, None]
    y_row = y_ptr + row * (stride_y if Y_STRIDE else stride_x)
    tl.store(y_row + cols, (h * rstd * w.to(tl.float32)).to(y_ptr.dtype.element_ty), mask=m)


def _wide_sig(x, w, warps, y_stride, out_dtype, absent=""):
    """absent: "" passes x for the unused pointers, as the package did up to 875a0f7; "ptrs"
    passes None for them; "all" also for the unused row count and residual stride, as the
    package does now."""
    M, N = x.shape
    unused = x if not absent else None
    n_rows, stride_r = (None, None) if absent == "all" else (M, 0)

    def call():
        y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
        _tile_wide_sig[(M,)](x, unused, w, unused, y, n_rows, N, N, stride_r, N, EPS,
                             BLOCK_N=triton.next_power_of_2(N), Y_STRIDE=y_stride,
                             num_warps=warps)
        return y
    return call


def _variant(x, w, warps, flags, out_dtype):
    M, N = x.shape

    def call():
        y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
        _tile[(M,)](x, w, y, N, N, EPS, N=N, BLOCK_N=triton.next_power_of_2(N),
                    num_warps=warps, **flags)
        return y
    return call


def _kernel_jit(x, w, warps, out_dtype):
    M, N = x.shape
    block_n = triton.next_power_of_2(N)
    masked = row_mask(LaunchConfig(1, block_n, warps, False))

    def call():
        y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
        rmsnorm_fwd_kernel[(M,)](
            x, None, w, None, y, M if masked else None, N, N, None, N, EPS, HAS_WEIGHT=True,
            HAS_BIAS=False, HAS_RESIDUAL=False, ACCUMULATE=False, CLAMP_FP16=False,
            WEIGHT_OFFSET=0.0, BLOCK_M=1, BLOCK_N=block_n, LOOPED=False, LOOP_N=0,
            PRELOAD_W=True, ROW_MASK=masked, HOLD_X=False, ADD_CHUNK_N=0, num_warps=warps)
        return y
    return call


def _launcher(x, w, warps, out_dtype):
    cfg = LaunchConfig(1, triton.next_power_of_2(x.shape[1]), warps, False)

    def call():
        return ops._launch(check_inputs(x, w, eps=EPS, out_dtype=out_dtype), EPS, 0.0, False,
                           False, cfg)
    return call


def main():
    P.prepare_compile()
    compiled = torch.compile(P._rms_norm_fp32, dynamic=False)
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    text = sys.argv[1] if len(sys.argv) > 1 else SHAPES
    for spec, (M, N, x_dtype, out_dtype) in zip(text.split(","), parse_rows(text)):
        xs = [(0.5 + 2 * torch.randn(M, N, device="cuda")).to(x_dtype)
              for _ in range(n_sets((x_dtype.itemsize + out_dtype.itemsize) * M * N))]
        w = (1 + 0.1 * torch.randn(N, device="cuda")).to(x_dtype)
        want = P._rms_norm_fp32(xs[0], w, EPS, out_dtype).float()
        calls = {"torch.compile": [lambda x=x: compiled(x, w, EPS, out_dtype) for x in xs],
                 "rms_norm": [lambda x=x: rt.rms_norm(x, w, EPS, out_dtype=out_dtype)
                              for x in xs]}
        for name, flags in VARIANTS.items():
            if name == "no-mask" and triton.next_power_of_2(N) != N:
                continue
            for warps in map(int, os.environ.get("AB_WARPS", "8,16").split(",")):
                got = _variant(xs[0], w, warps, flags, out_dtype)().float()
                torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
                calls[f"{name} w{warps}"] = [_variant(x, w, warps, flags, out_dtype)
                                             for x in xs]
        for warps in map(int, os.environ.get("AB_WARPS", "8,16").split(",")):
            for name, y_stride, absent in (("wide-sig", False, ""),
                                           ("wide-sig-ystride", True, ""),
                                           ("wide-sig-none", True, "ptrs"),
                                           ("wide-sig-none-all", True, "all")):
                got = _wide_sig(xs[0], w, warps, y_stride, out_dtype, absent)().float()
                torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
                calls[f"{name} w{warps}"] = [_wide_sig(x, w, warps, y_stride, out_dtype, absent)
                                             for x in xs]
            for name, make in (("kernel-jit", _kernel_jit), ("launcher", _launcher)):
                got = make(xs[0], w, warps, out_dtype)().float()
                torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
                calls[f"{name} w{warps}"] = [make(x, w, warps, out_dtype) for x in xs]
        for timer in (eager_us, graph_us):
            times = interleaved_medians(calls, timer, rounds)
            print(f"{spec}, {timer.__name__}, medians of {rounds} rounds, {len(xs)} sets")
            ref = times["torch.compile"]
            for name, us in sorted(times.items(), key=lambda kv: kv[1]):
                print(f"   {name:16s} {us:7.2f} us  compile/this {ref / us:5.3f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
