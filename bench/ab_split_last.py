"""Split rows without a wait: the last program of a row to arrive writes the whole row, against
the shipped kernel where every program waits for its row's partial sums and writes its slice.

    python bench/ab_split_last.py [M1xN1,...] [rounds]

The shipped split-row kernel (kernels/rmsnorm.py) polls L2 until its row's other programs have
published: Nsight Compute at 2048 x 65536 showed L2 90% busy and DRAM at 82% of its peak
(bench/RESULTS.md, "Long rows at 16M elements"). Here no program waits. Each loads its slice,
publishes its partial sum, and counts itself in with one atomic add on the row's counter; the
program that finds itself last reads the row's partials, writes its own slice from registers
and then the row's other slices, read again from L2 (their programs read them moments before).
The price: a row's writes fall to one program, and x is read twice from L2.
Variants: `last` (the shipped slice width and warps), `last sB wW` (B-wide slices on W warps),
`last ... el` (the first read of x kept in L2 with `evict_last`, the second `evict_first`).
The `last` variant at the shipped slice is compared bit for bit with rms_norm (the same
partials, added in the same order; a difference is printed), every variant to 2e-2. Weight, no
bias, x's dtype out; % of the copy ceiling, medians of interleaved rounds (L2 scrubbed before
each), in a CUDA graph and under the eager timer (L2 flushed per call).
"""
import torch
import triton
import triton.language as tl

import rmsnorm_triton as rt
from rmsnorm_triton.config import next_pow2, pick_config, row_bucket
from rmsnorm_triton.kernels.rmsnorm import _load_cols, _load_h, _normalize_store
from rmsnorm_triton.timing import n_sets, rmsnorm_bytes
from bench_utils import ab_setup, print_graph_eager

SHAPES = "2048x65536,4096x65536,512x65536,256x65536,1024x131072,512x262144,64x262144"


@triton.jit
def last_writer_kernel(x_ptr, w_ptr, y_ptr, part_ptr, count_ptr, n_cols, stride_x_row,
                       stride_y_row, eps, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr,
                       SPLITS_P2: tl.constexpr, KEEP_X: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // SPLITS
    part = pid % SPLITS
    start = part * BLOCK_N
    cols = tl.arange(0, BLOCK_N)[None, :]
    col_mask = start + cols < n_cols
    x_row = x_ptr + row * stride_x_row
    y_row = y_ptr + row * stride_y_row
    if KEEP_X:
        h = _load_h(x_row + start, x_row, cols, col_mask, False, False, False, "evict_last")
    else:
        h = _load_h(x_row + start, x_row, cols, col_mask, False, False, False, "")
    partial = tl.sum(tl.sum(h * h, axis=1), axis=0)
    slot_row = part_ptr + row * SPLITS
    tl.atomic_xchg(slot_row + part, partial.to(tl.int32, bitcast=True), sem="release")
    # The counter only grows (SPLITS a launch per row), so no reset between launches.
    arrived = tl.atomic_add(count_ptr + row, 1, sem="acq_rel")
    if arrived % SPLITS == SPLITS - 1:
        slots = tl.arange(0, SPLITS_P2)
        slot_mask = slots < SPLITS
        sums = tl.atomic_add(slot_row + slots, 0, mask=slot_mask, sem="acquire")
        sums = sums.to(tl.float32, bitcast=True)
        total = tl.sum(tl.where(slot_mask, sums, 0.0), axis=0)
        rstd = tl.rsqrt(total * (1.0 / n_cols) + eps)
        w = _load_cols(w_ptr, start + cols, col_mask, True)
        _normalize_store(y_row + start, w, 0.0, cols, col_mask, h, rstd, True, False, False, 0.0)
        for k in range(1, SPLITS):
            s = ((part + k) % SPLITS) * BLOCK_N
            m = s + cols < n_cols
            if KEEP_X:
                hk = _load_h(x_row + s, x_row, cols, m, False, False, False, "evict_first")
            else:
                hk = _load_h(x_row + s, x_row, cols, m, False, False, False, "")
            wk = _load_cols(w_ptr, s + cols, m, True)
            _normalize_store(y_row + s, wk, 0.0, cols, m, hk, rstd, True, False, False, 0.0)


_state = {}


def last_writer(x, w, block_n=None, warps=None, keep_x=False, eps=1e-6):
    M, N = x.shape
    cfg = pick_config(N, row_bucket(M), x.dtype, x.dtype, False, torch.cuda.current_device())
    block_n = block_n or cfg.block_n
    warps = warps or cfg.num_warps
    s = triton.cdiv(N, block_n)
    if (M, s) not in _state:
        _state[(M, s)] = (torch.zeros((M, s), dtype=torch.int32, device=x.device),
                          torch.zeros(M, dtype=torch.int32, device=x.device))
    parts, counts = _state[(M, s)]
    y = torch.empty_like(x)
    last_writer_kernel[(M * s,)](x, w, y, parts, counts, N, x.stride(0), y.stride(0), eps,
                                 BLOCK_N=block_n, SPLITS=s, SPLITS_P2=next_pow2(s),
                                 KEEP_X=keep_x, num_warps=warps)
    return y


def main():
    shapes, rounds, ceiling = ab_setup(SHAPES)
    for M, N, dtype, _ in shapes:
        cfg = pick_config(N, row_bucket(M), dtype, dtype, False, torch.cuda.current_device())
        nbytes = rmsnorm_bytes(M, N, dtype, dtype, dtype)
        sets = [(0.5 + 2 * torch.randn(M, N, device="cuda", dtype=dtype),
                 1 + 0.1 * torch.randn(N, device="cuda", dtype=dtype))
                for _ in range(n_sets(nbytes))]
        variants = {"shipped": lambda x, w: rt.rms_norm(x, w),
                    "last": lambda x, w: last_writer(x, w),
                    "last el": lambda x, w: last_writer(x, w, keep_x=True)}
        for bn, wp in ((4096, 4), (8192, 8), (16384, 8), (16384, 16), (32768, 16)):
            if bn < N and (bn, wp) != (cfg.block_n, cfg.num_warps):
                variants[f"last s{bn} w{wp}"] = lambda x, w, bn=bn, wp=wp: last_writer(
                    x, w, bn, wp)
        x, w = sets[0]
        want = rt.rms_norm(x, w)
        for name, fn in variants.items():
            for _ in range(3):       # repeated: the counters carry over between launches
                got = fn(x, w)
                if name == "last" and not torch.equal(got, want):
                    print(f"  note: {name} differs from rms_norm in some bits at {M} x {N}")
                torch.testing.assert_close(got, want, atol=2e-2, rtol=1e-2)
        calls = {name: [lambda fn=fn, x=x, w=w: fn(x, w) for x, w in sets]
                 for name, fn in variants.items()}
        print(f"{M} x {N} {dtype} (shipped: slices {cfg.block_n} x {cfg.splits}, "
              f"{cfg.num_warps} warps)")
        print_graph_eager(calls, rounds, nbytes, ceiling)


if __name__ == "__main__":
    main()
