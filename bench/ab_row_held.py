"""One program a 64K-element row, holding it in 16 bits (config.hold_row), against the split row
that such rows took before.

    python bench/ab_row_held.py [rounds]

Rows of 32769-262144 columns took the split-row kernel: programs that share a row publish
partial sums and poll L2 for each other, which holds DRAM to 82-83% of its peak at 2048 x 65536
(bench/RESULTS.md). One program a row needs no such wait, but a 65536-element row is 128 KiB of
16-bit values: as fp32 that is the whole register file of an SM (a tile on 16 warps spilled,
68%). Held as loaded, two values to a register, it is half of it: 32 registers a thread on 32
warps. The package kernel's HOLD_X form widens the values once for the sum of squares and once
more after it (`_widen_again`); the fused add first writes its updated residual in chunks and
reads it back whole.

Both configs go through the package's launch path (`ops._launch` with an explicit config). Each
held output is checked against the split row's (one ulp of the row's norm: the sum's order
differs), its updated residual bit for bit, and the held fused add against the held norm of its
updated residual bit for bit. The fused add is also timed with other chunks for its first pass
(OTHER_ADD_CHUNKS). Registers and spills of the held forms are printed. % of the copy
ceiling, medians of interleaved rounds (L2 scrubbed before each), in a CUDA graph and eager.
"""
import sys

import torch
import triton

from rmsnorm_triton import config, ops
from rmsnorm_triton.config import LaunchConfig, heuristic_config, row_bucket
from rmsnorm_triton.kernels.rmsnorm import rmsnorm_fwd_kernel
from rmsnorm_triton.timing import copy_ceiling_gbps, eager_us, graph_us, n_sets, rmsnorm_bytes
from rmsnorm_triton.validate import check_inputs
from bench_utils import interleaved_medians

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
ADD_CHUNK_N = ops.HELD_ADD_CHUNK_N
OTHER_ADD_CHUNKS = (8192, 32768)        # the fused add's first pass, timed beside the package's
HELD = LaunchConfig(1, 65536, 32, False)
EPS = 1e-6
PLAIN = dict(weight=True, bias=False, accumulate=False, clamp=False, w_dtype=None)
# (rows, columns, x dtype, residual dtype or None, features)
CASES = (
    [(m, 65536, dt, None, PLAIN) for m in (128, 256, 300, 512, 1024, 2048, 4096)
     for dt in (BF16, FP16)]
    + [(m, n, BF16, None, PLAIN) for m in (512, 4096) for n in (40000, 49152)]
    + [(m, 65536, dt, dt, PLAIN) for m in (512, 1024, 2048, 4096) for dt in (BF16, FP16)]
    + [(m, 65536, BF16, None, dict(PLAIN, **f)) for m in (1024, 4096)
       for f in ({"w_dtype": FP32}, {"weight": False}, {"bias": True})]
    + [(m, 65536, FP16, None, dict(PLAIN, clamp=True)) for m in (1024, 4096)]
)


def split_config(n_rows, n_cols, itemsize):
    """The heuristic's config without the held rule: what these rows took before."""
    saved = config.HELD_ROW_MIN_ROWS
    config.HELD_ROW_MIN_ROWS = float("inf")
    try:
        return heuristic_config(n_cols, row_bucket(n_rows), itemsize, True, itemsize)
    finally:
        config.HELD_ROW_MIN_ROWS = saved


def make_set(M, N, x_dtype, res_dtype, f):
    x = (0.5 + 2 * torch.randn(M, N, device="cuda")).to(x_dtype)
    w = (1 + 0.1 * torch.randn(N, device="cuda")).to(f["w_dtype"] or x_dtype) \
        if f["weight"] else None
    b = (0.1 * torch.randn(N, device="cuda")).to(x_dtype) if f["bias"] else None
    r = None if res_dtype is None else torch.randn(M, N, device="cuda").to(res_dtype)
    out = torch.randn(M, N, device="cuda").to(x_dtype) if f["accumulate"] else None
    return x, w, b, r, out


def call_with(cfg, s, f, add_chunk=None):
    x, w, b, r, out = s

    def call():
        ops.HELD_ADD_CHUNK_N = add_chunk or ADD_CHUNK_N
        p = check_inputs(x, w, bias=b, residual=r, out=out, eps=EPS, fused=r is not None,
                         accumulate=f["accumulate"], clamp_fp16_input=f["clamp"])
        return ops._launch(p, EPS, 0.0, f["accumulate"], f["clamp"], cfg)
    return call


def check(cfg_split, s, f) -> str:
    """'' when the held outputs agree with the split row's, else what differs."""
    x, w, b, r, out = s
    results = {}
    for name, cfg in (("split", cfg_split), ("held", HELD)):
        s2 = (x, w, b, None if r is None else r.clone(), None if out is None else out.clone())
        y = call_with(cfg, s2, f)()
        results[name] = (y.clone(), s2[3])
    (ys, rs), (yh, rh) = results["split"], results["held"]
    if r is not None:
        if not torch.equal(rs, rh):
            return "updated residuals differ"
        unfused = call_with(HELD, (rh, w, b, None, None), PLAIN if w is not None else f)()
        if not torch.equal(unfused, yh):
            return "held fused add differs from the held norm of its residual"
    # Relative to the rows' norms (a bias or accumulate cancels some outputs to near zero).
    err = ((yh.double() - ys.double()).norm(dim=-1) / ys.double().norm(dim=-1)).max().item()
    return f"outputs differ: relative error {err:.2e}" if err > torch.finfo(yh.dtype).eps else ""


def held_forms() -> list:
    """(registers, spills) of every 32-warp rmsnorm_fwd_kernel this process compiled."""
    found = set()
    try:
        for cache in rmsnorm_fwd_kernel.device_caches.values():
            for k in cache[0].values():
                if k.metadata.num_warps == 32:
                    found.add((k.n_regs, k.n_spills))
    except (AttributeError, TypeError, IndexError) as e:     # Triton's internals, not an API
        return [f"unknown ({e})"]
    return sorted(found)


def run_case(M, N, x_dtype, res_dtype, f, rounds, ceiling):
    out_dtype = x_dtype
    w_dtype = (f["w_dtype"] or x_dtype) if f["weight"] else None
    nbytes = rmsnorm_bytes(M, N, x_dtype, w_dtype or x_dtype, out_dtype, res_dtype)
    nbytes += M * N * out_dtype.itemsize if f["accumulate"] else 0
    nbytes += N * x_dtype.itemsize if f["bias"] else 0
    nbytes -= 0 if f["weight"] else N * x_dtype.itemsize
    sets = [make_set(M, N, x_dtype, res_dtype, f) for _ in range(n_sets(nbytes))]
    itemsize = (res_dtype or x_dtype).itemsize
    cfg_split = split_config(M, N, itemsize)
    extras = [k for k, v in f.items() if v != PLAIN[k]]
    label = (f"{M} x {N} {str(x_dtype)[6:]}"
             + ("" if res_dtype is None else f", fused add, residual {str(res_dtype)[6:]}")
             + "".join(f", {k}={f[k]}" for k in extras))
    before = set(held_forms())
    problem = check(cfg_split, sets[0], f)
    new_forms = sorted(set(held_forms()) - before)
    print(f"{label}: split {cfg_split}" + (f"; held form {new_forms}" if new_forms else ""),
          flush=True)
    if problem:
        print(f"  FAILED: {problem}", flush=True)
        return
    calls = {name: [call_with(cfg, s, f) for s in sets]
             for name, cfg in (("split", cfg_split), ("held", HELD))}
    if res_dtype is not None:
        for chunk in OTHER_ADD_CHUNKS:
            calls[f"held{chunk // 1024}k"] = [call_with(HELD, s, f, chunk) for s in sets]
    for timer_name, timer in (("graph", graph_us), ("eager", eager_us)):
        med = interleaved_medians(calls, timer, rounds)
        print(f"  {timer_name}: " + "  ".join(
            f"{name} {us:.2f} us {nbytes / us / 1e3 / ceiling * 100:.1f}%"
            for name, us in med.items())
            + f"  held/split speed {med['split'] / med['held']:.3f}x", flush=True)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    ceiling = copy_ceiling_gbps()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
          f"{triton.__version__}, copy ceiling {ceiling:.0f} GB/s", flush=True)
    for case in CASES:
        run_case(*case, rounds, ceiling)
    print("held forms (registers, spills):", held_forms())


if __name__ == "__main__":
    main()
