"""Split rows holding each slice in x's (or the residual's) 16-bit dtype across the wait, against
the shipped kernel, which holds it as fp32.

    python bench/ab_split_hold.py [MxN,...|""] [rounds]

The shipped split-row kernel (kernels/rmsnorm.py) converts its slice to fp32 for the partial
sum and keeps those fp32 values in registers while it polls for the row's other partials:
32 registers a thread for an 8192-element slice on 8 warps. Fetching the weight before the wait
(more registers held) cost 4-7%, so fewer held registers, more programs resident, may gain.
Here the slice is held as loaded (16-bit, two to a register) and widened again after the wait.
The widening is exact, so the output is bit for bit the shipped one (checked first). The second
widening is a bit shift (bf16) or inline PTX (fp16): an ordinary conversion would be merged
with the first by the compiler, which would then hold the fp32 values as before.

Each variant runs through the package's own launch path (config, slots, arguments) with only the
split kernel swapped; registers and spills of both kernels are printed. % of the copy ceiling,
medians of interleaved rounds (L2 scrubbed before each), in a CUDA graph and eager.
"""
import sys

import torch
import triton
import triton.language as tl

from rmsnorm_triton import ops
from rmsnorm_triton.config import pick_config, row_bucket
from rmsnorm_triton.kernels.rmsnorm import (_load_cols, _normalize_store, _row_rstd,
                                            _split_program, rmsnorm_fwd_split_kernel)
from rmsnorm_triton.launcher import CachedLauncher
from rmsnorm_triton.timing import copy_ceiling_gbps, eager_us, graph_us, n_sets, rmsnorm_bytes
from rmsnorm_triton.validate import check_inputs
from bench_utils import compiled_forms, interleaved_medians

SHAPES = [(16, 65536), (256, 65536), (512, 65536), (2048, 65536), (4096, 65536),
          (128, 131072), (1024, 131072), (64, 262144), (512, 262144)]
# (x dtype, output dtype, residual dtype or None)
CASES = [(torch.bfloat16, torch.bfloat16, None), (torch.float16, torch.float16, None),
         (torch.bfloat16, torch.float32, None), (torch.bfloat16, torch.bfloat16, torch.bfloat16),
         (torch.float16, torch.float32, None), (torch.bfloat16, torch.float32, torch.bfloat16),
         (torch.float16, torch.float32, torch.float16)]
EPS = 1e-6


@triton.jit
def _widen(v):
    """v as fp32, by an instruction the compiler cannot merge with an earlier conversion."""
    if v.dtype == tl.bfloat16:
        # bf16 is fp32's upper half.
        return (v.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    elif v.dtype == tl.float16:
        return tl.inline_asm_elementwise("cvt.f32.f16 $0, $1;", "=r,h", [v], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return v.to(tl.float32)


@triton.jit
def split_hold_kernel(
    x_ptr, r_ptr, w_ptr, b_ptr, y_ptr, part_ptr, n_rows, n_cols,
    stride_x_row, stride_r_row, stride_y_row, eps,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    ACCUMULATE: tl.constexpr, CLAMP_FP16: tl.constexpr, WEIGHT_OFFSET: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr,
):
    # The shipped kernel line for line (no clamp), except what is held across the wait.
    tl.static_assert(not CLAMP_FP16)
    row, part, start, slot_row, this_round = _split_program(part_ptr, BLOCK_N, SPLITS)
    x_rows = x_ptr + row * stride_x_row + start
    y_rows = y_ptr + row * stride_y_row + start
    cols = tl.arange(0, BLOCK_N)[None, :]
    col_mask = start + cols < n_cols
    held = tl.load(x_rows + cols, mask=col_mask, other=0.0)
    if HAS_RESIDUAL:
        r_rows = r_ptr + row * stride_r_row + start
        s = held.to(tl.float32) + tl.load(r_rows + cols, mask=col_mask, other=0.0).to(tl.float32)
        held = s.to(r_rows.dtype.element_ty)
        tl.store(r_rows + cols, held, mask=col_mask)
    h = held.to(tl.float32)
    partial = tl.sum(tl.sum(h * h, axis=1), axis=0)
    rstd = _row_rstd(slot_row, part, this_round, partial, n_cols, eps, SPLITS, SPLITS_P2)
    w = _load_cols(w_ptr, start + cols, col_mask, HAS_WEIGHT)
    b = _load_cols(b_ptr, start + cols, col_mask, HAS_BIAS)
    _normalize_store(y_rows, w, b, cols, col_mask, _widen(held), rstd,
                     HAS_WEIGHT, HAS_BIAS, ACCUMULATE, WEIGHT_OFFSET)


SPLIT_LAUNCHERS = ("_launch_split", "_launch_split_capped", "_launch_split_capped_wide")
SHIPPED_LAUNCHERS = {name: getattr(ops, name) for name in SPLIT_LAUNCHERS}
SHIPPED = SHIPPED_LAUNCHERS["_launch_split"]
HOLD = CachedLauncher(split_hold_kernel)


def call_with(launcher, x, w, out_dtype, res):
    """A call through the package's launch path with `launcher` for its split rows, capped
    (config.split_register_cap) or not; SHIPPED leaves the package's own choice among them
    (the register cap where its rule applies)."""
    def call():
        if launcher is not SHIPPED:
            for name in SPLIT_LAUNCHERS:
                setattr(ops, name, launcher)
        try:
            p = check_inputs(x, w, residual=res, out_dtype=out_dtype, eps=EPS,
                             fused=res is not None)
            return ops._launch(p, EPS, 0.0, False, False)
        finally:
            for name, shipped in SHIPPED_LAUNCHERS.items():
                setattr(ops, name, shipped)
    return call


def split_case(M, N, x_dtype, out_dtype, res_dtype):
    """(config, bytes moved, rotating input sets of (x, weight, residual or None)) of a split-row
    case; None, with a line printed, where the row takes no split config."""
    cfg = pick_config(N, row_bucket(M), x_dtype, out_dtype, res_dtype is not None, 0,
                      res_dtype)
    if cfg.splits == 1:
        print(f"{M} x {N}: no split config ({cfg}); skipped")
        return None
    nbytes = rmsnorm_bytes(M, N, x_dtype, x_dtype, out_dtype, res_dtype)
    sets = []
    for _ in range(n_sets(nbytes)):
        x = 0.5 + 2 * torch.randn(M, N, device="cuda", dtype=x_dtype)
        w = 1 + 0.1 * torch.randn(N, device="cuda", dtype=x_dtype)
        res = None if res_dtype is None else torch.randn(M, N, device="cuda",
                                                         dtype=res_dtype)
        sets.append((x, w, res))
    return cfg, nbytes, sets


def run_case(M, N, x_dtype, out_dtype, res_dtype, rounds, ceiling) -> bool:
    """Check and time one case; False where the row takes no split config."""
    case = split_case(M, N, x_dtype, out_dtype, res_dtype)
    if case is None:
        return False
    cfg, nbytes, sets = case
    x, w, res = sets[0]
    r0 = None if res is None else res.clone()
    r1 = None if res is None else res.clone()
    want = call_with(SHIPPED, x, w, out_dtype, r0)()
    got = call_with(HOLD, x, w, out_dtype, r1)()
    assert torch.equal(got, want), (M, N, x_dtype, out_dtype, res_dtype)
    assert res is None or torch.equal(r0, r1)
    calls = {name: [call_with(launcher, x, w, out_dtype, res) for x, w, res in sets]
             for name, launcher in (("shipped", SHIPPED), ("hold16", HOLD))}
    name = f"{M} x {N} {str(x_dtype)[6:]}->{str(out_dtype)[6:]}" + (
        "" if res_dtype is None else f" add {str(res_dtype)[6:]}")
    line = [f"{name} ({cfg.block_n} x {cfg.splits}, {cfg.num_warps} warps):"]
    for timer_name, timer in (("graph", graph_us), ("eager", eager_us)):
        med = interleaved_medians(calls, timer, rounds)
        line.append(f"{timer_name} " + " ".join(
            f"{k} {us:.2f} us {nbytes / us / 1e3 / ceiling * 100:.1f}%"
            for k, us in med.items())
            + f" ratio {med['shipped'] / med['hold16']:.3f}")
    print("  ".join(line), flush=True)
    return True


def main():
    picked = sys.argv[1] if len(sys.argv) > 1 else ""
    shapes = [tuple(map(int, s.split("x"))) for s in picked.split(",")] if picked else SHAPES
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    ceiling = copy_ceiling_gbps()
    print(f"copy ceiling {ceiling:.0f} GB/s; % of it, medians of {rounds} interleaved rounds")
    for M, N in shapes:
        for x_dtype, out_dtype, res_dtype in CASES:
            try:
                if not run_case(M, N, x_dtype, out_dtype, res_dtype, rounds, ceiling):
                    break
            except Exception as e:      # one case's failure (a compile error) is printed, not fatal
                print(f"{M} x {N} {x_dtype} -> {out_dtype} res {res_dtype}: {type(e).__name__}: "
                      f"{str(e)[:300]}", flush=True)
    print("maxnreg, registers, spills, warps: shipped", compiled_forms(rmsnorm_fwd_split_kernel),
          "hold16", compiled_forms(split_hold_kernel))


if __name__ == "__main__":
    main()
