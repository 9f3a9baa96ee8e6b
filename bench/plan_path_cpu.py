"""Python cost of a repeat call on the plan path, without a GPU: the kernel launch stubbed out.

    python bench/plan_path_cpu.py [MxN]

Runs under Triton's interpreter on CPU tensors: one real call of rms_norm and of
fused_add_rms_norm leaves their plans, whose runner is then replaced by a no-op (and the
stream query by a constant), so that timeit sees only what a repeat call runs in Python before
Triton's C launcher: key, lookup, checks, allocation, pointers. Best of 7 repeats of 100000
calls; `torch.empty_like(x)` alone for scale.
"""
import os
import sys
import timeit

os.environ["TRITON_INTERPRET"] = "1"      # before the kernels are imported

import torch  # noqa: E402

import rmsnorm_triton as rt  # noqa: E402
from rmsnorm_triton import plans  # noqa: E402


def _no_launch(grid, stream, args):
    pass


_no_launch.int_pointers = True


def main():
    M, N = map(int, (sys.argv[1] if len(sys.argv) > 1 else "8x4096").split("x"))
    x = torch.randn(M, N, dtype=torch.bfloat16)
    w = torch.randn(N, dtype=torch.bfloat16)
    res = torch.randn(M, N, dtype=torch.bfloat16)
    rt.rms_norm(x, w)
    rt.fused_add_rms_norm(x, res, w)
    if len(plans._plans) != 2:
        raise SystemExit(f"expected two plans, found {len(plans._plans)}")
    for plan in plans._plans.values():
        plan.runner, plan.launcher.enabled = _no_launch, True
    plans._current_stream = lambda index: 0
    print(f"# {M} x {N} bf16, torch {torch.__version__}; us a call, launch stubbed")
    n = 100000
    for stmt in ("rt.rms_norm(x, w)", "rt.fused_add_rms_norm(x, res, w)", "torch.empty_like(x)"):
        best = min(timeit.repeat(stmt, globals={**globals(), **locals()}, number=n, repeat=7))
        print(f"{best / n * 1e6:7.3f}  {stmt}")


if __name__ == "__main__":
    main()
