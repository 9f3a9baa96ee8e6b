"""Split rows, pipelined: a program takes its slice of several rows and publishes the next row's
partial before it waits for the last one's, against the shipped one row a program.

    python bench/ab_split_pipeline.py [M1xN1,...] [rounds]

The shipped split-row kernel (kernels/rmsnorm.py) gives each program one slice of one row: it
loads the slice, publishes its partial sum, then polls until the row's other programs have
published theirs, and only then stores. While it polls its SM issues no loads for it, and the
Nsight Compute profile of 2048 x 65536 shows L2 90% busy with those polls (bench/RESULTS.md,
"Long rows at 16M elements"). Here `GROUPS` programs a slice cover rows g, g + GROUPS, ...:
a program loads and publishes its next row (i + GROUPS), then waits for row i (whose partials
have had a whole row's load to arrive), stores it, and goes on, so a wait overlaps the next
row's reads.
Variants: `pipe R` (R rows a program: GROUPS = cdiv(M, R)), `pipe R f32` (the held slices kept
as fp32 rather than in x's dtype), `pipe R w1` (the weight slice fetched once a program),
`pipe R rK` (compiled with at most K registers a thread: `maxnreg`).
Every variant is checked bit for bit against rms_norm first (the same slices, partials and
order of addition). bf16, weight, no bias; % of the copy ceiling, medians of interleaved rounds
(L2 scrubbed before each), in a CUDA graph and under the eager timer (L2 flushed per call).
"""
import sys

import torch
import triton
import triton.language as tl

import rmsnorm_triton as rt
from rmsnorm_triton.config import next_pow2, pick_config, row_bucket
from rmsnorm_triton.kernels.rmsnorm import _load_cols, _normalize_store
from rmsnorm_triton.timing import copy_ceiling_gbps, n_sets, rmsnorm_bytes
from bench_utils import print_graph_eager

SHAPES = [(256, 65536), (128, 131072), (64, 262144), (512, 65536), (2048, 65536),
          (512, 262144), (1024, 131072), (8, 131072)]


@triton.jit
def _publish(x_ptr, part_ptr, part, row, start, cols, col_mask, stride_x_row,
             SPLITS: tl.constexpr):
    """Row `row`'s slice (in x's dtype) and the round this launch publishes for it."""
    slot_row = part_ptr + row.to(tl.int64) * SPLITS
    this_round = (tl.load(slot_row + part) >> 32) + 1
    xv = tl.load(x_ptr + row.to(tl.int64) * stride_x_row + start + cols, mask=col_mask, other=0.0)
    h = xv.to(tl.float32)
    partial = tl.sum(tl.sum(h * h, axis=1), axis=0)
    low_bits = partial.to(tl.uint32, bitcast=True).to(tl.int64)
    tl.atomic_xchg(slot_row + part, (this_round << 32) | low_bits, sem="release")
    return xv, this_round


@triton.jit
def _row_total(part_ptr, row, this_round, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr):
    slot_row = part_ptr + row.to(tl.int64) * SPLITS
    slots = tl.arange(0, SPLITS_P2)
    slot_mask = slots < SPLITS
    parts = tl.atomic_add(slot_row + slots, 0, mask=slot_mask, sem="acquire")
    waiting = tl.sum((slot_mask & (((parts >> 32) - this_round).to(tl.int32) < 0)).to(tl.int32),
                     axis=0)
    while waiting > 0:
        parts = tl.atomic_add(slot_row + slots, 0, mask=slot_mask, sem="acquire")
        waiting = tl.sum((slot_mask & (((parts >> 32) - this_round).to(tl.int32) < 0))
                         .to(tl.int32), axis=0)
    sums = parts.to(tl.int32).to(tl.float32, bitcast=True)
    return tl.sum(tl.where(slot_mask, sums, 0.0), axis=0)


@triton.jit
def _store_row(y_ptr, w_ptr, row, start, cols, col_mask, stride_y_row, xv, w, total, n_cols,
               eps, W_ONCE: tl.constexpr):
    rstd = tl.rsqrt(total * (1.0 / n_cols) + eps)
    if not W_ONCE:
        w = _load_cols(w_ptr + start, cols, col_mask, True)
    _normalize_store(y_ptr + row.to(tl.int64) * stride_y_row + start, w, 0.0, cols, col_mask,
                     xv.to(tl.float32), rstd, True, False, False, 0.0)


@triton.jit
def pipelined_split_kernel(x_ptr, w_ptr, y_ptr, part_ptr, n_rows, n_cols, stride_x_row,
                           stride_y_row, eps, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr,
                           SPLITS_P2: tl.constexpr, GROUPS: tl.constexpr, HOLD_F32: tl.constexpr,
                           W_ONCE: tl.constexpr):
    # A group's programs have consecutive ids and wait only on each other (see the shipped
    # kernel's note on dispatch order); each publishes its next row before waiting on row i.
    pid = tl.program_id(0)
    g = pid // SPLITS
    part = pid % SPLITS
    start = part * BLOCK_N
    cols = tl.arange(0, BLOCK_N)[None, :]
    col_mask = start + cols < n_cols
    w = 0.0
    if W_ONCE:
        w = _load_cols(w_ptr + start, cols, col_mask, True)
    prev, prev_round = _publish(x_ptr, part_ptr, part, g, start, cols, col_mask,
                                stride_x_row, SPLITS)
    if HOLD_F32:
        prev = prev.to(tl.float32)
    prev_row = g
    for row in range(g + GROUPS, n_rows, GROUPS):
        cur, cur_round = _publish(x_ptr, part_ptr, part, row, start, cols, col_mask,
                                  stride_x_row, SPLITS)
        if HOLD_F32:
            cur = cur.to(tl.float32)
        total = _row_total(part_ptr, prev_row, prev_round, SPLITS, SPLITS_P2)
        _store_row(y_ptr, w_ptr, prev_row, start, cols, col_mask, stride_y_row, prev, w, total,
                   n_cols, eps, W_ONCE)
        prev, prev_round, prev_row = cur, cur_round, row
    total = _row_total(part_ptr, prev_row, prev_round, SPLITS, SPLITS_P2)
    _store_row(y_ptr, w_ptr, prev_row, start, cols, col_mask, stride_y_row, prev, w, total,
               n_cols, eps, W_ONCE)


_slots = {}


def _config(M, N, dtype):
    """The config rms_norm launches for M x N rows of `dtype` (same-dtype out, no fused add)."""
    return pick_config(N, row_bucket(M), dtype, dtype, False, torch.cuda.current_device())
REGS = {}      # (rows a program, HOLD_F32, W_ONCE, maxnreg) -> (registers, spills), last compiled


def pipelined(x, w, rows_per_program, hold_f32=False, w_once=False, maxnreg=None, eps=1e-6):
    M, N = x.shape
    cfg = _config(M, N, x.dtype)
    s = cfg.splits
    slots = _slots.get((M, s))
    if slots is None:
        slots = _slots[(M, s)] = torch.zeros((M, s), dtype=torch.int64, device=x.device)
    groups = triton.cdiv(M, rows_per_program)
    y = torch.empty_like(x)
    k = pipelined_split_kernel[(groups * s,)](
        x, w, y, slots, M, N, x.stride(0), y.stride(0), eps, BLOCK_N=cfg.block_n, SPLITS=s,
        SPLITS_P2=next_pow2(s), GROUPS=groups, HOLD_F32=hold_f32, W_ONCE=w_once,
        num_warps=cfg.num_warps, **({"maxnreg": maxnreg} if maxnreg else {}))
    REGS[(rows_per_program, hold_f32, w_once, maxnreg)] = (k.n_regs, k.n_spills)
    return y


def shipped_regs():
    from rmsnorm_triton.kernels.rmsnorm import rmsnorm_fwd_split_kernel
    found = set()
    for caches in rmsnorm_fwd_split_kernel.device_caches.values():
        for k in caches[0].values():
            found.add((k.n_regs, k.n_spills))
    return sorted(found)


def main():
    shapes = [tuple(map(int, s.split("x"))) for s in sys.argv[1].split(",")] \
        if len(sys.argv) > 1 and sys.argv[1] else SHAPES
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    ceiling = copy_ceiling_gbps()
    print(f"copy ceiling {ceiling:.0f} GB/s; % of it, medians of {rounds} interleaved rounds")
    for M, N in shapes:
        cfg = _config(M, N, torch.bfloat16)
        nbytes = rmsnorm_bytes(M, N, torch.bfloat16, torch.bfloat16, torch.bfloat16)
        sets = [(torch.randn(M, N, device="cuda", dtype=torch.bfloat16),
                 torch.randn(N, device="cuda", dtype=torch.bfloat16))
                for _ in range(n_sets(nbytes))]
        variants = {"shipped": lambda x, w: rt.rms_norm(x, w)}
        for r in (1, 2, 4, 8):
            if r <= M:
                variants[f"pipe {r}"] = lambda x, w, r=r: pipelined(x, w, r)
        for r in (2, 4):
            if r <= M:
                variants[f"pipe {r} f32"] = lambda x, w, r=r: pipelined(x, w, r, hold_f32=True)
                variants[f"pipe {r} w1"] = lambda x, w, r=r: pipelined(x, w, r, w_once=True)
        for r in (1, 2):
            for regs in (64, 96):
                variants[f"pipe {r} r{regs}"] = lambda x, w, r=r, regs=regs: pipelined(
                    x, w, r, maxnreg=regs)
        x, w = sets[0]
        want = rt.rms_norm(x, w)
        for name, fn in variants.items():
            for _ in range(3):
                got = fn(x, w)
                err = (got.float() - want.float()).abs().max().item()
                assert torch.equal(got, want), (name, M, N, err)
        print(f"{M} x {N}: registers, spills of the pipelined kernels: {REGS}; shipped: "
              f"{shipped_regs()}")
        calls = {name: [lambda fn=fn, x=x, w=w: fn(x, w) for x, w in sets]
                 for name, fn in variants.items()}
        print(f"{M} x {N} bf16 (slices {cfg.block_n} x {cfg.splits}, {cfg.num_warps} warps)")
        print_graph_eager(calls, rounds, nbytes, ceiling)


if __name__ == "__main__":
    main()
