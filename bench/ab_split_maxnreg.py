"""Split rows compiled with a register cap (`maxnreg`), for more programs an SM, against the
kernel compiled without one.

    python bench/ab_split_maxnreg.py [MxN,...|""] [rounds]      (AB_REGS="56,48,40")

Nsight Compute on the split-row kernel at 2048 x 65536 and 512 x 262144 bf16 (8192-element
slices on 8 warps; bench/results/ncu/ncu_*_8192w8.txt): 58-61 registers a thread, which the SM
allocates as 64, so registers limit it to 4 programs an SM (50% occupancy); DRAM at 78-81% of
its peak; of the warps' stall cycles, loads took 42% and 38%, barriers (the polling loop's
reductions) 34% and 41%. At 56 registers an SM still holds 4 programs, at 48 five, at 40 six.
A cap makes the compiler keep fewer values live, or spill them.

The same kernel, config and slots go through the package's launch path (ab_split_hold's
`call_with`); only the compile option differs (`uncapped`: none; the package itself caps some
rows at config.SPLIT_MAX_REGISTERS, `split_register_cap`). Every capped output is checked
bit for bit against the uncapped one first. Registers and spills of every compiled form are
printed. % of the copy ceiling, medians of interleaved rounds (L2 scrubbed before each), in a
CUDA graph and eager.
"""
import os
import sys

import torch

from rmsnorm_triton.kernels.rmsnorm import rmsnorm_fwd_split_kernel
from rmsnorm_triton.launcher import CachedLauncher
from rmsnorm_triton.timing import copy_ceiling_gbps, eager_us, graph_us
from ab_split_hold import CASES, SHAPES, call_with, split_case
from bench_utils import compiled_forms, interleaved_medians


def run_case(M, N, x_dtype, out_dtype, res_dtype, launchers, rounds, ceiling) -> bool:
    """Check and time one case; False where the row takes no split config."""
    case = split_case(M, N, x_dtype, out_dtype, res_dtype)
    if case is None:
        return False
    cfg, nbytes, sets = case
    x, w, res = sets[0]
    outputs = {}
    for name, launcher in launchers.items():
        r = None if res is None else res.clone()
        outputs[name] = (call_with(launcher, x, w, out_dtype, r)(), r)
    want, want_r = outputs["uncapped"]
    for name, (got, got_r) in outputs.items():
        assert torch.equal(got, want), (name, M, N, x_dtype, out_dtype, res_dtype)
        assert res is None or torch.equal(got_r, want_r), name
    calls = {name: [call_with(launcher, x, w, out_dtype, res) for x, w, res in sets]
             for name, launcher in launchers.items()}
    name = f"{M} x {N} {str(x_dtype)[6:]}->{str(out_dtype)[6:]}" + (
        "" if res_dtype is None else f" add {str(res_dtype)[6:]}")
    print(f"{name} ({cfg.block_n} x {cfg.splits}, {cfg.num_warps} warps):")
    for timer_name, timer in (("graph", graph_us), ("eager", eager_us)):
        med = interleaved_medians(calls, timer, rounds)
        print(f"  {timer_name}: " + "  ".join(
            f"{k} {us:.2f} us {nbytes / us / 1e3 / ceiling * 100:.1f}% "
            f"({med['uncapped'] / us:.3f}x)" for k, us in med.items()), flush=True)
    return True


def main():
    picked = sys.argv[1] if len(sys.argv) > 1 else ""
    shapes = [tuple(map(int, s.split("x"))) for s in picked.split(",")] if picked else SHAPES
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    caps = [int(r) for r in os.environ.get("AB_REGS", "56,48,40").split(",")]
    cases = [CASES[int(i)] for i in os.environ.get("AB_CASES", "0,1,2,3").split(",")]
    launchers = {"uncapped": CachedLauncher(rmsnorm_fwd_split_kernel)}
    launchers.update({f"r{cap}": CachedLauncher(rmsnorm_fwd_split_kernel,
                                                options={"maxnreg": cap}) for cap in caps})
    ceiling = copy_ceiling_gbps()
    print(f"copy ceiling {ceiling:.0f} GB/s; % of it, medians of {rounds} interleaved rounds; "
          "(uncapped time / this time)")
    for M, N in shapes:
        for x_dtype, out_dtype, res_dtype in cases:
            try:
                if not run_case(M, N, x_dtype, out_dtype, res_dtype, launchers, rounds,
                                ceiling):
                    break
            except Exception as e:      # one case's failure (a compile error) is printed, not fatal
                print(f"{M} x {N} {x_dtype} -> {out_dtype} res {res_dtype}: {type(e).__name__}: "
                      f"{str(e)[:300]}", flush=True)
    print("compiled forms (maxnreg, registers, spills, warps):")
    for form in compiled_forms(rmsnorm_fwd_split_kernel):
        print("  ", form)


if __name__ == "__main__":
    main()
