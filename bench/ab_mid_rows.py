"""Looped, single-tile and packed-row configs against the heuristic's pick, in a CUDA graph or
eager: by default at 256-16384 rows of 2K-16K; any row named in full.

    python bench/ab_mid_rows.py [MxN[:x:out],...] [rounds] [graph|eager] [cold]

Arguments pick rows of SHAPES (e.g. 512x4096:bf16:fp32, 1024x16384:bf16:bf16:add for the fused
add of a residual of x's dtype, 1x5120:bf16:bf16:add32 for an fp32 residual, or 512x4096 for every
row of that shape; a row named in full that SHAPES
lacks is timed too), how many interleaved rounds to
time (default 1; with more, each config's median is shown) and the timer: a CUDA graph of
rotating inputs and outputs (default), or the eager timer (`timing.eager_us`), which flushes L2
before every call. Fused-add rows also time Liger-Kernel's fused add where it imports. `cold`
sizes the rotation by the bytes read (x, and the residual) instead of all bytes moved: the sets'
inputs alone then span twice the L2, so that inputs loaded `evict_last` (the looped path's first
pass, torch.compile's looped reductions) cannot still be in L2 when their set comes round again.
AB_ONLY="loop2048 w16,tile w16" (names as printed) times only those configs, the heuristic's
pick and torch.compile. Split-row configs are listed for rows past 32K columns and, in calls of
up to 64 rows, for any row of two slices or more. AB_PRELOAD=1 adds each tile with the weight
fetched the other way ("tile w8 late": after the reduction, where config.preload_weight
fetches it first). AB_WEIGHT=fp32 (or bf16, fp16) gives every row a weight of that dtype
(default: x's dtype).

Each config runs through the forward's own launcher (`ops._launch` with the config given),
inputs and outputs rotating as in the bench's graph rows, torch.compile timed in the same
process; every config is checked against fp32 math first. "heuristic" is `heuristic_config`'s
pick, not a tuned table's. Behind the loop rules in config.py (bench/RESULTS.md,
"Loop bounds as constants").
"""
import os
import sys

import torch

from rmsnorm_triton import ops
from rmsnorm_triton import providers as P
from rmsnorm_triton.config import (
    MAX_SINGLE_TILE_N, MAX_SPLITS, LaunchConfig, heuristic_config, next_pow2,
    preload_weight, row_bucket,
)
from rmsnorm_triton.timing import eager_us, graph_us, n_sets
from rmsnorm_triton.validate import check_inputs
from bench_utils import DTYPES, interleaved_medians

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
EPS = 1e-6
DECODE_SPLIT_MAX_ROWS = 64
WEIGHT_DTYPE = DTYPES.get(os.environ.get("AB_WEIGHT", ""))
SHAPES = ([(m, n, BF16, out) for m in (512, 1024) for n in (4096, 5120, 7168, 8192)
           for out in (FP32, BF16)]
          + [(1024, 5120, FP16, FP32), (1024, 4096, FP16, FP32), (512, 4096, FP16, FP32),
             (512, 3072, BF16, FP32), (512, 3072, FP16, FP32), (2048, 5120, BF16, FP32),
             (256, 5120, BF16, FP32), (300, 5120, BF16, FP32), (384, 5120, BF16, FP32),
             (1024, 12288, BF16, BF16), (1024, 16384, BF16, BF16), (512, 12288, BF16, BF16),
             (512, 16384, BF16, BF16)]
          # Large calls to an fp32 output, where torch.compile led by 1-3% on the full grid.
          + [(m, n, BF16, FP32) for m in (4096, 16384) for n in (4096, 5120, 7168, 8192)]
          + [(2048, 8192, BF16, FP32), (4096, 16384, BF16, FP32),
             (16384, 8192, FP16, FP32), (4096, 8192, FP16, FP32)]
          # The fused add of a bf16 residual, where Liger led at 1024 x 16384.
          + [(m, n, BF16, BF16, "add") for m in (512, 1024) for n in (8192, 12288, 16384)]
          # 16-bit -> fp32 over the rows where the looped path was tried against tiles.
          + [(m, n, BF16, FP32) for m in (512, 1024, 2048, 4096, 16384)
             for n in (2048, 3072, 4096, 5120, 7168, 8192) if (m, n) not in (
                 (512, 4096), (512, 3072), (1024, 4096), (1024, 5120), (1024, 7168),
                 (1024, 8192), (512, 5120), (512, 7168), (512, 8192), (2048, 5120),
                 (2048, 8192), (4096, 4096), (4096, 5120), (4096, 7168), (4096, 8192),
                 (16384, 4096), (16384, 5120), (16384, 7168), (16384, 8192))])


def _norm(x, w, out_dtype, cfg, residual=None):
    """cfg: a LaunchConfig, or (LaunchConfig, preload) to force config.preload_weight's answer
    (its ops binding is swapped for the call: a graph captures that launch as it was made)."""
    cfg, preload = cfg if isinstance(cfg, tuple) else (cfg, None)

    def call():
        p = check_inputs(x, w, residual=residual, out_dtype=out_dtype, eps=EPS,
                         fused=residual is not None)
        if preload is None:
            return ops._launch(p, EPS, 0.0, False, False, cfg)
        rule = ops.preload_weight
        ops.preload_weight = lambda *args: preload
        try:
            return ops._launch(p, EPS, 0.0, False, False, cfg)
        finally:
            ops.preload_weight = rule
    return call


def _liger_fused():
    try:
        from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction
    except ImportError:
        return None
    return LigerFusedAddRMSNormFunction


def _candidates(M, N, out_dtype, norm_itemsize, x_dtype=torch.bfloat16, fused=False):
    # norm_itemsize: x's, or the fused add's residual's, whose unfused norm's config it takes
    heur = heuristic_config(N, row_bucket(M), norm_itemsize, True, out_dtype.itemsize)
    found = {"heuristic": heur}
    if next_pow2(N) <= MAX_SINGLE_TILE_N:
        for warps in (4, 8, 16, 32):
            if 4 <= next_pow2(N) // (32 * warps) <= 64:     # elements a thread
                found[f"tile w{warps}"] = LaunchConfig(1, next_pow2(N), warps, False)
                if os.environ.get("AB_PRELOAD"):
                    # the weight fetched the other way (config.preload_weight)
                    tile = found[f"tile w{warps}"]
                    early = preload_weight(tile, M, x_dtype, out_dtype.itemsize, fused, -1,
                                           (WEIGHT_DTYPE or x_dtype).itemsize)
                    found[f"tile w{warps} " + ("late" if early else "early")] = (tile, not early)
        if next_pow2(N) <= 4096:
            for warps in (4, 8, 16):    # two rows a program, as config.PACK_MIN_ROWS packs them
                found[f"2 rows w{warps}"] = LaunchConfig(2, next_pow2(N), warps, False)
                # the same streamed twice, one chunk a row: torch.compile's form at 2048 columns
                # to fp32 (bench/results/inductor_choice_2048_fp32_h100.txt)
                found[f"2 rows loop w{warps}"] = LaunchConfig(2, next_pow2(N), warps, True)
    if next_pow2(N) <= 1024:        # short rows, packed several a program
        for rows in (1, 2, 4, 8, 16):
            for warps in (1, 2, 4, 8):
                if 4 <= rows * next_pow2(N) // (32 * warps) <= 64 and rows <= M:
                    found[f"{rows} rows w{warps}"] = LaunchConfig(rows, next_pow2(N), warps,
                                                                  False)
    if next_pow2(N) > MAX_SINGLE_TILE_N or M <= DECODE_SPLIT_MAX_ROWS:
        # Split rows: programs of one slice each (the split-row kernel); in decode-sized calls
        # also rows that one program could hold, so that a row's bytes move over several SMs
        for slice_n in (1024, 2048, 4096, 8192, 16384, 32768):
            splits = -(-N // slice_n)
            for warps in (4, 8, 16):
                if 2 <= splits <= MAX_SPLITS and 8 <= slice_n // (32 * warps) <= 64:
                    found[f"split{slice_n} w{warps}"] = LaunchConfig(1, slice_n, warps, False,
                                                                     splits)
    for chunk in (2048, 4096, 8192):
        if chunk <= next_pow2(N):
            for warps in (4, 8, 16, 32) if next_pow2(N) > 16384 else (8, 16, 32):
                if chunk // (32 * warps) >= 4:      # elements a thread
                    found[f"loop{chunk} w{warps}"] = LaunchConfig(1, chunk, warps, True)
    return heur, found


def _picked(argv):
    if not argv:
        return SHAPES
    names = {BF16: "bf16", FP16: "fp16", FP32: "fp32"}
    wanted = argv[0].split(",")
    picked = [s for s in SHAPES if f"{s[0]}x{s[1]}" in wanted or ":".join(
        [f"{s[0]}x{s[1]}", names[s[2]], names[s[3]], *s[4:]]) in wanted]
    dtypes = {v: k for k, v in names.items()}
    for spec in wanted:             # rows named in full that SHAPES lacks
        shape, *rest = spec.split(":")
        if len(rest) >= 2:
            if not (set(rest[:2]) <= set(dtypes) and rest[2:] in ([], ["add"], ["add32"])):
                raise SystemExit(f"not a row: {spec!r} (MxN:x:out[:add|add32], x and out in "
                                 f"{sorted(dtypes)})")
            M, N = map(int, shape.split("x"))
            row = (M, N, dtypes[rest[0]], dtypes[rest[1]], *rest[2:])
            if row not in picked:
                picked.append(row)
    return picked


def main():
    P.prepare_compile()
    compiled = torch.compile(P._rms_norm_fp32, dynamic=False)
    compiled_add = torch.compile(P._fused_add_fp32, dynamic=False)
    liger_add = _liger_fused()
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    timer = {"graph": graph_us, "eager": eager_us}[sys.argv[3] if len(sys.argv) > 3 else "graph"]
    cold = len(sys.argv) > 4 and sys.argv[4] == "cold"
    for M, N, x_dtype, out_dtype, *add in _picked(sys.argv[1:]):
        res_dtype = FP32 if add == ["add32"] else x_dtype
        xb = x_dtype.itemsize
        moved = M * N * (xb + out_dtype.itemsize + (2 * res_dtype.itemsize if add else 0))
        read = M * N * (xb + res_dtype.itemsize if add else xb)
        xs = [(0.5 + 2 * torch.randn(M, N, device="cuda")).to(x_dtype)
              for _ in range(n_sets(read if cold else moved))]
        # Each set's residual is updated in place by every call; values drift, times do not.
        rs = [torch.randn(M, N, device="cuda").to(res_dtype) if add else None for _ in xs]
        w = (1 + 0.1 * torch.randn(N, device="cuda")).to(WEIGHT_DTYPE or x_dtype)
        if add:
            r0 = rs[0].clone()
            want = P._fused_add_fp32(xs[0], r0, w, EPS, out_dtype).float()
            calls = {"torch.compile": [lambda x=x, r=r: compiled_add(x, r, w, EPS, out_dtype)
                                       for x, r in zip(xs, rs)]}
            # Liger: one dtype for all (no output dtype option: to fp32 it would move fewer
            # bytes), and rows of up to 65536 elements (it refuses longer ones)
            if liger_add is not None and res_dtype == x_dtype == out_dtype and N <= 65536:
                calls["liger"] = [lambda x=x, r=r: liger_add.apply(x, r, w, EPS)
                                  for x, r in zip(xs, rs)]
        else:
            want = P._rms_norm_fp32(xs[0], w, EPS, out_dtype).float()
            calls = {"torch.compile": [lambda x=x: compiled(x, w, EPS, out_dtype) for x in xs]}
        heur, found = _candidates(M, N, out_dtype, (res_dtype if add else x_dtype).itemsize,
                                  x_dtype, bool(add))
        only = os.environ.get("AB_ONLY")
        if only:
            found = {k: v for k, v in found.items() if k in only.split(",") or k == "heuristic"}
        for name, cfg in found.items():
            r = None if not add else rs[0].clone()
            got = _norm(xs[0], w, out_dtype, cfg, r)().float()
            torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
            calls[name] = [_norm(x, w, out_dtype, cfg, r) for x, r in zip(xs, rs)]
        times = interleaved_medians(calls, timer, rounds)
        print(f"{M}x{N} {str(x_dtype)[6:]}->{str(out_dtype)[6:]}"
              + (f" fused add, {str(res_dtype)[6:]} residual" if add else "")
              + (f", weight {str(w.dtype)[6:]}" if WEIGHT_DTYPE else "")
              + f" heuristic={heur}"
              + (f" (medians of {rounds} interleaved rounds)" if rounds > 1 else "")
              + f", {timer.__name__}, {len(xs)} sets{' (cold)' if cold else ''}")
        for name, us in sorted(times.items(), key=lambda kv: kv[1]):
            print(f"   {name:14s} {us:7.2f} us  compile/this {times['torch.compile'] / us:5.3f}"
                  f"  heuristic/this {times['heuristic'] / us:5.3f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
