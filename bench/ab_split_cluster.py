"""Split rows whose programs wait at a thread-block cluster's barrier, against the shipped
polling of L2 (bench/RESULTS.md, "Long rows: a cluster barrier instead of polling").

    python bench/ab_split_cluster.py [MxN,...|""] [rounds]

The shipped split-row kernel publishes each program's partial sum with an atomic and polls the
row's slots until all have arrived. Here a row's programs are instead launched as one cluster
(Hopper; sizes 2-16) and wait at `barrier.cluster` (release / acquire), then read the slots
once. Triton launches clusters only for kernels compiled with num_ctas > 1, which splits every
tensor over the cluster; this kernel is compiled as an ordinary one and launched through the
compiled kernel's C launch function with the cluster size in num_ctas's place (Triton 3.6-3.9
multiply the grid by it and set the cluster attribute). bf16 with a weight, no bias; each
cluster config is checked bit for bit against the polling kernel with the same slices, then both
are timed eager after an L2 flush, interleaved, with the heuristic's pick.
"""
import sys

import torch
import triton
import triton.language as tl

from rmsnorm_triton import ops
from rmsnorm_triton.config import LaunchConfig, heuristic_config, next_pow2, row_bucket
from rmsnorm_triton.kernels.rmsnorm import _load_cols, _load_h, _normalize_store
from rmsnorm_triton.timing import copy_ceiling_gbps, eager_us, rmsnorm_bytes
from rmsnorm_triton.validate import check_inputs
from bench_utils import interleaved_medians

SHAPES = [(16, 65536), (256, 65536), (512, 65536), (2048, 65536), (4096, 65536),
          (128, 131072), (1024, 131072), (64, 262144), (512, 262144)]
# (slice, warps): clusters of N / slice programs
SLICES = [(4096, 4), (8192, 4), (8192, 8), (16384, 8), (16384, 16), (32768, 16)]
EPS = 1e-6


@triton.jit
def cluster_split_kernel(x_ptr, w_ptr, y_ptr, part_ptr, n_cols, stride_x_row, stride_y_row, eps,
                         BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)          # the CTA's index: this kernel has num_ctas 1
    row = pid // SPLITS
    part = pid % SPLITS
    start = part * BLOCK_N
    cols = tl.arange(0, BLOCK_N)[None, :]
    mask = start + cols < n_cols
    h = _load_h(x_ptr + row * stride_x_row + start, x_ptr, cols, mask, False, False, False, "")
    partial = tl.sum(tl.sum(h * h, axis=1), axis=0)
    slot_row = part_ptr + row * SPLITS
    published = tl.atomic_xchg(slot_row + part, partial, sem="relaxed")
    # Every thread of the cluster arrives and waits; the barrier takes the exchange's result and
    # the slots' address takes the barrier's, so neither moves across it. `.cg`: read from L2.
    zero = tl.inline_asm_elementwise(
        "barrier.cluster.arrive.release;\n\tbarrier.cluster.wait.acquire;\n\tmov.b32 $0, 0;",
        "=r,r", [published.to(tl.int32, bitcast=True)], dtype=tl.int32, is_pure=False, pack=1)
    slots = tl.arange(0, SPLITS_P2)
    parts = tl.load(slot_row + zero + slots, mask=slots < SPLITS, other=0.0, cache_modifier=".cg")
    rstd = tl.rsqrt(tl.sum(parts, axis=0) * (1.0 / n_cols) + eps)
    w = _load_cols(w_ptr, start + cols, mask, True)
    _normalize_store(y_ptr + row * stride_y_row + start, w, 0.0, cols, mask, h, rstd,
                     True, False, False, 0.0)


def cluster_call(x, w, slice_n, warps):
    """A function that normalizes x into a new tensor with one cluster a row."""
    M, N = x.shape
    splits = -(-N // slice_n)
    parts = torch.zeros((M, splits), dtype=torch.float32, device=x.device)
    args = (x, w, torch.empty_like(x), parts, N, x.stride(0), x.stride(0), EPS)
    consts = dict(BLOCK_N=slice_n, SPLITS=splits, SPLITS_P2=next_pow2(splits))
    kernel = cluster_split_kernel.warmup(*args, grid=(M * splits,), num_warps=warps, **consts)
    run, meta = kernel.run, kernel.packed_metadata
    assert meta == (warps, 1, kernel.metadata.shared), meta    # (num_warps, num_ctas, shared)
    cluster_meta = (warps, splits, meta[2])

    # How many of these CTAs the GPU holds at once, alone and in clusters (where this Triton
    # exposes the driver's occupancy query).
    occupancy = getattr(triton.runtime.driver.active.utils, "cuOccupancyMaxActiveClusters", None)
    if occupancy is not None:
        alone = occupancy(kernel.function, kernel.metadata.shared, 1)
        clustered = occupancy(kernel.function, kernel.metadata.shared, splits) * splits
        print(f"   {M} x {N}, {slice_n} w{warps}: {alone} CTAs resident alone, {clustered} in "
              f"clusters of {splits}")

    def call():
        y = torch.empty_like(x)
        run.launch(M, 1, 1, torch.cuda.current_stream().cuda_stream, kernel.function,
                   run.launch_cooperative_grid, run.launch_pdl, None, None, cluster_meta, None,
                   None, None, x, w, y, parts, N, x.stride(0), y.stride(0), EPS,
                   *consts.values())
        return y
    return call


def polling_call(x, w, cfg):
    def call():
        p = check_inputs(x, w, eps=EPS)
        return ops._launch(p, EPS, 0.0, False, False, cfg)
    return call


def main():
    picked = sys.argv[1] if len(sys.argv) > 1 else ""     # "" for the default shapes
    shapes = [tuple(map(int, s.split("x"))) for s in picked.split(",")] if picked else SHAPES
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    ceiling = copy_ceiling_gbps()
    print(f"copy ceiling {ceiling:.0f} GB/s; eager after an L2 flush, median of {rounds} "
          "interleaved rounds; % of the ceiling")
    for M, N in shapes:
        x = torch.randn(M, N, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(N, device="cuda", dtype=torch.bfloat16)
        heur = heuristic_config(N, row_bucket(M), 2)
        calls = {f"heuristic {heur.block_n} w{heur.num_warps}": polling_call(x, w, heur)}
        for slice_n, warps in SLICES:
            splits = -(-N // slice_n)
            if splits not in (2, 4, 8, 16):
                continue
            polling = polling_call(x, w, LaunchConfig(1, slice_n, warps, False, splits))
            clustered = cluster_call(x, w, slice_n, warps)
            assert torch.equal(clustered(), polling()), (M, N, slice_n, warps)
            calls[f"poll {slice_n} w{warps}"] = polling
            calls[f"cluster {slice_n} w{warps}"] = clustered
        times = interleaved_medians({k: [v] for k, v in calls.items()}, eager_us, rounds)
        nbytes = rmsnorm_bytes(M, N, torch.bfloat16, torch.bfloat16, torch.bfloat16)
        print(f"{M} x {N}: " + ", ".join(
            f"{name} {us:.1f} us {nbytes / us / 1e3 / ceiling * 100:.1f}%"
            for name, us in sorted(times.items(), key=lambda kv: kv[1])), flush=True)


if __name__ == "__main__":
    main()
