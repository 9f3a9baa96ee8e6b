"""Where a decode-sized norm's time goes: one kernel, one part of the norm added at a step.

    python bench/decode_ladder.py [M1xN1[:x:out],...] [rounds]

A decode-sized norm (a few rows of 2K-8K elements) takes longer than a plain copy of the same
bytes, in a CUDA graph and after an L2 flush alike (bench/RESULTS.md, "What a plain copy
reaches at the target rows"). This script builds the norm up from nothing, with the package's
launch config for the row (one row a program, the same tile and warps), so that the time each
part adds is measured rather than guessed:

  empty     the package's empty Triton kernel (timing.empty_launch_calls), one program
  store     one row a program writes a constant: no reads
  copy      y = x
  copy+w    y = x * w (the weight fetched first, `evict_last`, as the package fetches it)
  reduce    y = x * rstd: the row's sum of squares, no weight
  norm      y = x * rstd * w: the whole norm, as the package's single-tile path computes it
  norm wK   the same on K warps (AB_WARPS, default "4,8,16,32"; the step's own warps skipped)
then the package's rms_norm and torch's copy_ of x into a new output. Each call allocates its
output as the package does; inputs and outputs rotate (timing.n_sets). Every step that computes
the norm is checked against fp32 math first. Medians of interleaved rounds, in a CUDA graph and
under the eager timer (L2 flushed before each call).
"""
import os
import sys

import torch
import triton
import triton.language as tl

import rmsnorm_triton as rt
from rmsnorm_triton import providers as P
from rmsnorm_triton.config import pick_config, row_bucket
from rmsnorm_triton.timing import eager_us, empty_launch_calls, graph_us, n_sets
from bench_utils import interleaved_medians, parse_rows

SHAPES = "1x2048,1x4096,1x8192,8x4096,8x8192,64x4096,64x8192,8x8192:bf16:fp32"
EPS = 1e-6
# Each step and the step it adds one part to (its time minus that one's is the part's cost).
ADDS_TO = {"store": "empty", "copy": "store", "copy+w": "copy", "reduce": "copy",
           "norm": "reduce"}
STEPS = {"store": dict(LOAD_X=False, LOAD_W=False, REDUCE=False),
         "copy": dict(LOAD_X=True, LOAD_W=False, REDUCE=False),
         "copy+w": dict(LOAD_X=True, LOAD_W=True, REDUCE=False),
         "reduce": dict(LOAD_X=True, LOAD_W=False, REDUCE=True),
         "norm": dict(LOAD_X=True, LOAD_W=True, REDUCE=True)}


@triton.jit
def _step(x_ptr, w_ptr, y_ptr, n_cols, eps, BLOCK_N: tl.constexpr, LOAD_X: tl.constexpr,
          LOAD_W: tl.constexpr, REDUCE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)[None, :]
    m = cols < n_cols
    if LOAD_W:
        w = tl.load(w_ptr + cols, mask=m, other=0.0, eviction_policy="evict_last")
    if LOAD_X:
        h = tl.load(x_ptr + row * n_cols + cols, mask=m, other=0.0).to(tl.float32)
    else:
        h = tl.full((1, BLOCK_N), 1.0, tl.float32)
    if REDUCE:
        h = h * tl.rsqrt(tl.sum(h * h, axis=1) * (1.0 / n_cols) + eps)[:, None]
    if LOAD_W:
        h = h * w.to(tl.float32)
    tl.store(y_ptr + row * n_cols + cols, h.to(y_ptr.dtype.element_ty), mask=m)


def _step_call(x, w, out_dtype, block_n, warps, flags):
    M, N = x.shape

    def call():
        y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
        _step[(M,)](x, w, y, N, EPS, BLOCK_N=block_n, num_warps=warps, **flags)
        return y
    return call


def _torch_copy(x, out_dtype):
    def call():
        return torch.empty(x.shape, dtype=out_dtype, device=x.device).copy_(x)
    return call


def _calls(M, N, x_dtype, out_dtype):
    xs = [(0.5 + 2 * torch.randn(M, N, device="cuda")).to(x_dtype)
          for _ in range(n_sets((x_dtype.itemsize + out_dtype.itemsize) * M * N))]
    w = (1 + 0.1 * torch.randn(N, device="cuda")).to(x_dtype)
    cfg = pick_config(N, row_bucket(M), x_dtype, out_dtype, False, torch.cuda.current_device())
    block_n, warps = triton.next_power_of_2(N), cfg.num_warps
    want = P._rms_norm_fp32(xs[0], w, EPS, out_dtype).float()
    calls = {"empty": empty_launch_calls()}
    for name, flags in STEPS.items():
        calls[name] = [_step_call(x, w, out_dtype, block_n, warps, flags) for x in xs]
    for extra in map(int, os.environ.get("AB_WARPS", "4,8,16,32").split(",")):
        if extra != warps:
            calls[f"norm w{extra}"] = [_step_call(x, w, out_dtype, block_n, extra,
                                                  STEPS["norm"]) for x in xs]
    for name, call_set in calls.items():
        if name.startswith("norm"):
            torch.testing.assert_close(call_set[0]().float(), want, rtol=1e-2, atol=1e-2)
    calls["rms_norm"] = [lambda x=x: rt.rms_norm(x, w, EPS, out_dtype=out_dtype) for x in xs]
    torch.testing.assert_close(calls["rms_norm"][0]().float(), want, rtol=1e-2, atol=1e-2)
    calls["torch copy_"] = [_torch_copy(x, out_dtype) for x in xs]
    return calls, cfg, len(xs)


def main():
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    text = sys.argv[1] if len(sys.argv) > 1 else SHAPES
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__)
    for spec, (M, N, x_dtype, out_dtype) in zip(text.split(","), parse_rows(text)):
        calls, cfg, sets = _calls(M, N, x_dtype, out_dtype)
        print(f"{spec}: package config {cfg}; steps on {cfg.num_warps} warps, one row a program,"
              f" a {triton.next_power_of_2(N)} tile; {sets} input sets")
        for timer in (graph_us, eager_us):
            med = interleaved_medians(calls, timer, rounds)
            print(f"  {timer.__name__}, medians of {rounds} rounds (us; for a step, what it "
                  "adds to the step it builds on):")
            for name, us in med.items():
                base = ADDS_TO.get(name)
                step = f" {us - med[base]:+6.2f} over {base}" if base else ""
                print(f"    {name:12s} {us:6.2f}{step}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
