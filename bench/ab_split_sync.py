"""How the split-row kernel's programs share a row's sum of squares: the shipped scheme against
the alternatives measured in bench/RESULTS.md ("Long rows at 16M elements").

    python bench/ab_split_sync.py [M1xN1,M2xN2,...]

- shipped: each stream keeps its slots from call to call; a slot holds a partial and the round
  that wrote it, each program publishes round + 1 with a release exchange and polls all of the
  row's slots with one vector atomic until every one has reached that round. No reset.
- fill (shipped until 2026-11-27): a per-call workspace filled with -1 (one small kernel), the
  same exchange and poll, waiting while any slot holds -1.
- counter: publish, then bump one per-row counter and poll that single word.
- two_kernels: one kernel writes the partials, a second re-reads x and normalizes
  (x first read with evict_last, so that the re-read may come from L2).
- self_reset: a persistent workspace, no fill: each row's last reader (a per-row counter) puts
  the slots back to -1 for the next launch.
Every variant is checked bit for bit against rms_norm first. bf16, weight, no bias; % of the
copy ceiling (bytes: read x, write y, read w), eager (do_bench, L2 flushed); then shipped and
fill in a CUDA graph and in a host loop (what an eager caller waits per call); the fill alone.
"""
import sys

import torch
import triton
import triton.language as tl

import rmsnorm_triton as rt
from rmsnorm_triton.config import heuristic_config, next_pow2
from rmsnorm_triton.kernels.rmsnorm import _load_cols, _load_h, _normalize_store
from rmsnorm_triton import split_slots
from rmsnorm_triton.timing import copy_ceiling_gbps, graph_us, host_us

SHAPES = [(1, 65536), (8, 131072), (256, 65536), (128, 131072), (64, 262144), (512, 65536),
          (2048, 65536), (512, 262144)]


@triton.jit
def _slice(x_ptr, w_ptr, y_ptr, n_cols, stride_x_row, stride_y_row, BLOCK_N: tl.constexpr,
           SPLITS: tl.constexpr):
    """This program's row, slice, and the pointers and mask it works with."""
    pid = tl.program_id(0).to(tl.int64)
    row, part = pid // SPLITS, pid % SPLITS
    start = part * BLOCK_N
    cols = tl.arange(0, BLOCK_N)[None, :]
    return (row, part, x_ptr + row * stride_x_row + start, w_ptr + start,
            y_ptr + row * stride_y_row + start, cols, start + cols < n_cols)


@triton.jit
def _finish(total, h, w_ptr, y_rows, cols, mask, n_cols, eps):
    rstd = tl.rsqrt(total * (1.0 / n_cols) + eps)
    w = _load_cols(w_ptr, cols, mask, True)
    _normalize_store(y_rows, w, 0.0, cols, mask, h, rstd, True, False, False, 0.0)


@triton.jit
def _load_and_publish(x_rows, part_ptr, row, part, cols, mask, SPLITS: tl.constexpr):
    """The slice as fp32, and the row's workspace (SPLITS slots, then one counter word, -1 at
    rest), after publishing this program's partial sum with a release exchange."""
    h = _load_h(x_rows, x_rows, cols, mask, False, False, False, "")
    base = part_ptr + row * (SPLITS + 1)
    tl.atomic_xchg(base + part, tl.sum(tl.sum(h * h, axis=1), axis=0), sem="release")
    return h, base


@triton.jit
def counter_kernel(x_ptr, w_ptr, y_ptr, part_ptr, n_cols, stride_x_row, stride_y_row, eps,
                   BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr):
    row, part, x_rows, w_ptr, y_rows, cols, mask = _slice(
        x_ptr, w_ptr, y_ptr, n_cols, stride_x_row, stride_y_row, BLOCK_N, SPLITS)
    h, base = _load_and_publish(x_rows, part_ptr, row, part, cols, mask, SPLITS)
    tl.atomic_add(base + SPLITS, 1.0, sem="release")           # the counter: one more published
    count = tl.atomic_add(base + SPLITS, 0.0, sem="acquire")
    while count < SPLITS - 1.0:
        count = tl.atomic_add(base + SPLITS, 0.0, sem="acquire")
    slots = tl.arange(0, SPLITS_P2)
    parts = tl.atomic_add(base + slots, 0.0, mask=slots < SPLITS, sem="acquire")
    _finish(tl.sum(tl.where(slots < SPLITS, parts, 0.0), axis=0), h, w_ptr, y_rows, cols, mask,
            n_cols, eps)


@triton.jit
def partials_kernel(x_ptr, part_ptr, n_cols, stride_x_row, BLOCK_N: tl.constexpr,
                    SPLITS: tl.constexpr):
    row, part, x_rows, _w, _y, cols, mask = _slice(x_ptr, x_ptr, x_ptr, n_cols, stride_x_row, 0,
                                                   BLOCK_N, SPLITS)
    h = tl.load(x_rows + cols, mask=mask, other=0.0, eviction_policy="evict_last")
    h = h.to(tl.float32)
    tl.store(part_ptr + row * SPLITS + part, tl.sum(tl.sum(h * h, axis=1), axis=0))


@triton.jit
def normalize_kernel(x_ptr, w_ptr, y_ptr, part_ptr, n_cols, stride_x_row, stride_y_row, eps,
                     BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr):
    row, part, x_rows, w_ptr, y_rows, cols, mask = _slice(
        x_ptr, w_ptr, y_ptr, n_cols, stride_x_row, stride_y_row, BLOCK_N, SPLITS)
    slots = tl.arange(0, SPLITS_P2)
    parts = tl.load(part_ptr + row * SPLITS + slots, mask=slots < SPLITS, other=0.0)
    h = tl.load(x_rows + cols, mask=mask, other=0.0, eviction_policy="evict_first")
    _finish(tl.sum(tl.where(slots < SPLITS, parts, 0.0), axis=0), h.to(tl.float32), w_ptr,
            y_rows, cols, mask, n_cols, eps)


@triton.jit
def poll_slots_kernel(x_ptr, w_ptr, y_ptr, part_ptr, n_cols, stride_x_row, stride_y_row, eps,
                      BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr,
                      SELF_RESET: tl.constexpr):
    """fill (a workspace filled with -1 per call) or, with SELF_RESET, self_reset."""
    row, part, x_rows, w_ptr, y_rows, cols, mask = _slice(
        x_ptr, w_ptr, y_ptr, n_cols, stride_x_row, stride_y_row, BLOCK_N, SPLITS)
    h, base = _load_and_publish(x_rows, part_ptr, row, part, cols, mask, SPLITS)
    slots = tl.arange(0, SPLITS_P2)
    slot_mask = slots < SPLITS
    parts = tl.atomic_add(base + slots, 0.0, mask=slot_mask, sem="acquire")
    waiting = tl.sum((slot_mask & (parts == -1.0)).to(tl.int32), axis=0)
    while waiting > 0:
        parts = tl.atomic_add(base + slots, 0.0, mask=slot_mask, sem="acquire")
        waiting = tl.sum((slot_mask & (parts == -1.0)).to(tl.int32), axis=0)
    if SELF_RESET:
        # The counter word counts readers; the last one restores the row for the next launch.
        if tl.atomic_add(base + SPLITS, 1.0, sem="acq_rel") == SPLITS - 2.0:
            tl.store(base + slots, tl.full([SPLITS_P2], -1.0, tl.float32), mask=slot_mask)
            tl.store(base + SPLITS, -1.0)
    _finish(tl.sum(tl.where(slot_mask, parts, 0.0), axis=0), h, w_ptr, y_rows, cols, mask,
            n_cols, eps)

_persistent = {}


def variant(name, x, w, eps=1e-6):
    M, N = x.shape
    cfg = heuristic_config(N, M, x.element_size())
    s = cfg.splits
    meta = dict(BLOCK_N=cfg.block_n, SPLITS=s, num_warps=cfg.num_warps)
    y = torch.empty_like(x)
    grid = (M * s,)
    if name in ("counter", "fill"):
        parts = torch.full((M, s + 1), -1.0, device=x.device)
        if name == "counter":
            counter_kernel[grid](x, w, y, parts, N, x.stride(0), y.stride(0), eps,
                                 SPLITS_P2=next_pow2(s), **meta)
        else:
            poll_slots_kernel[grid](x, w, y, parts, N, x.stride(0), y.stride(0), eps,
                                    SPLITS_P2=next_pow2(s), SELF_RESET=False, **meta)
    elif name == "two_kernels":
        parts = torch.empty((M, s), device=x.device)
        partials_kernel[grid](x, parts, N, x.stride(0), **meta)
        normalize_kernel[grid](x, w, y, parts, N, x.stride(0), y.stride(0), eps,
                               SPLITS_P2=next_pow2(s), **meta)
    else:
        ws = _persistent.get(x.device)
        if ws is None or ws.numel() < M * (s + 1):
            ws = _persistent[x.device] = torch.full((M * (s + 1),), -1.0, device=x.device)
        poll_slots_kernel[grid](x, w, y, ws, N, x.stride(0), y.stride(0), eps,
                                SPLITS_P2=next_pow2(s), SELF_RESET=True, **meta)
    return y


def main():
    shapes = [tuple(map(int, s.split("x"))) for s in sys.argv[1].split(",")] if sys.argv[1:] \
        else SHAPES
    ceiling = copy_ceiling_gbps()
    print(f"copy ceiling {ceiling:.0f} GB/s; % of it (best of 3 rounds)")
    names = ["shipped", "fill", "counter", "two_kernels", "self_reset"]
    print(f"{'M x N':>14} " + " ".join(f"{n:>12}" for n in names) + f" {'fill alone':>11}"
          + "   graph: shipped / fill   host loop: shipped / reset per call")
    for M, N in shapes:
        x = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N, device="cuda", dtype=torch.bfloat16)
        want = rt.rms_norm(x, w)
        calls = {"shipped": lambda: rt.rms_norm(x, w)}
        for name in names[1:]:
            calls[name] = lambda name=name: variant(name, x, w)
            for _ in range(2):
                assert torch.equal(calls[name](), want), (name, M, N)
        nbytes = M * N * 4 + N * 2
        best = {n: 0.0 for n in names}
        graph = {n: float("inf") for n in ("shipped", "fill")}
        for _ in range(3):
            for name, fn in calls.items():
                ms = triton.testing.do_bench(fn, return_mode="median")
                best[name] = max(best[name], nbytes / ms / 1e6 / ceiling * 100)
            for name in graph:
                graph[name] = min(graph[name], graph_us([calls[name]]))
        splits = heuristic_config(N, M, 2).splits
        fill_us = triton.testing.do_bench(lambda: torch.full((M, splits), -1.0, device="cuda"),
                                          return_mode="median") * 1e3
        # The host loop of the same kernel and launch path with slots zeroed per call (a zero
        # fill where the old scheme filled -1): what keeping the slots saves an eager caller.
        host = [host_us([calls["shipped"]])]
        keep = split_slots.split_workspace
        split_slots.split_workspace = lambda n, k, dev: torch.zeros((n, k), dtype=torch.int64,
                                                                    device=dev)
        try:
            assert torch.equal(rt.rms_norm(x, w), want)
            host.append(host_us([calls["shipped"]]))
        finally:
            split_slots.split_workspace = keep
        print(f"{M:>6} x {N:<6} " + " ".join(f"{best[n]:11.1f}%" for n in names)
              + f" {fill_us:8.1f} us   {graph['shipped']:7.2f} / {graph['fill']:7.2f} us"
              + f"   {host[0]:7.1f} / {host[1]:7.1f} us", flush=True)

if __name__ == "__main__":
    main()
