"""Split rows off 16-byte vectors: uncapped (the rule, `config.row_vectors`) against the
register-capped launcher the aligned call takes.

    python bench/ab_cap_unaligned.py [rounds]

Compiled for sm_90 with Triton 3.6, the capped split-row forms spill 56-704 bytes a thread
when the weight, the output or the residual is 2 bytes off 16-byte alignment or the row length
is not a multiple of 16; uncapped they spill nothing. Both run through the package's launch
path (ops._launch) with only the split launcher changed; outputs are checked bit for bit
first. % of the copy ceiling, medians of interleaved rounds (L2 scrubbed before each), in a
CUDA graph and eager; the registers and spills of what was compiled.
"""
import sys

import torch

from rmsnorm_triton import ops
from rmsnorm_triton.kernels.rmsnorm import rmsnorm_fwd_split_kernel
from rmsnorm_triton.timing import copy_ceiling_gbps, n_sets, rmsnorm_bytes
from rmsnorm_triton.validate import check_inputs
from bench_utils import compiled_forms, print_graph_eager, swapped

EPS = 1e-6
# (M, N, x dtype, output dtype, what is off vectors, the launcher an aligned call takes)
CASES = [
    (2048, 65536, torch.bfloat16, torch.bfloat16, "weight", "_launch_split_capped"),
    (512, 262144, torch.bfloat16, torch.bfloat16, "out", "_launch_split_capped"),
    (1024, 131064, torch.bfloat16, torch.bfloat16, "cols", "_launch_split_capped"),
    (512, 262144, torch.float16, torch.float32, "weight", "_launch_split_capped_wide"),
    (512, 262136, torch.float16, torch.float32, "cols", "_launch_split_capped_wide"),
]


def operands(M, N, x_dtype, out_dtype, off):
    """x, a weight and an output buffer, the weight or the output 2 bytes off alignment."""
    x = 0.5 + 2 * torch.randn(M, N, device="cuda", dtype=x_dtype)
    w_buf = 1 + 0.1 * torch.randn(N + 8, device="cuda", dtype=x_dtype)
    w = w_buf[1:N + 1] if off == "weight" else w_buf[:N]
    out_buf = torch.empty(M * N + 8, device="cuda", dtype=out_dtype)
    out = (out_buf[1:M * N + 1] if off == "out" else out_buf[:M * N]).view(M, N)
    return x, w, out


def call_with(capped_name, x, w, out):
    """A call through the package's launch path; capped_name: force that split launcher."""
    forced = {"_split_launcher": lambda cap: getattr(ops, capped_name)} if capped_name else {}

    def call():
        with swapped(ops, **forced):
            p = check_inputs(x, w, out=out, eps=EPS)
            return ops._launch(p, EPS, 0.0, False, False)
    return call


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    ceiling = copy_ceiling_gbps()
    print(f"copy ceiling {ceiling:.0f} GB/s; % of it, medians of {rounds} interleaved rounds")
    for M, N, x_dtype, out_dtype, off, capped_name in CASES:
        nbytes = rmsnorm_bytes(M, N, x_dtype, x_dtype, out_dtype, None)
        sets = [operands(M, N, x_dtype, out_dtype, off) for _ in range(n_sets(nbytes))]
        x, w, out = sets[0]
        want = call_with(None, x, w, out)().clone()
        assert torch.equal(call_with(capped_name, x, w, out)(), want), (M, N, off)
        calls = {name: [call_with(forced, *s) for s in sets]
                 for name, forced in (("uncapped", None), ("capped", capped_name))}
        print(f"{M} x {N} {str(x_dtype)[6:]}->{str(out_dtype)[6:]}, {off} off vectors:",
              flush=True)
        print_graph_eager(calls, rounds, nbytes, ceiling)
    print("compiled split forms (maxnreg, registers, spills, warps):",
          compiled_forms(rmsnorm_fwd_split_kernel))

if __name__ == "__main__":
    main()
