"""Wide single tiles: the weight fetched after the row's reduction, against before it
(`config.preload_weight`'s rule for tiles of 8192 and more, but `LATE_WEIGHT_TILE`).

    python bench/ab_fp32_tile_late.py [MxN:x:out,...] [rounds]   (AB_WEIGHT=fp32, AB_RESIDUAL=bf16)

Compiled for sm_90 with Triton 3.6, the bf16 -> fp32 form of that tile (16 warps, weight
fetched first) spills 8 bytes a thread; fetched late it takes 63 registers and spills nothing;
the fp16 form spills neither way (64 registers). With an fp32 weight (AB_WEIGHT=fp32) the
32768-wide tile on 32 warps spills 32-88 bytes a thread fetched first, none late; AB_RESIDUAL
times the fused add of a residual of that dtype in place of the norm. Both run
through the package's launch path (ops._launch) with only the preload flag changed; outputs
are checked bit for bit first. %
of the copy ceiling, medians of interleaved rounds (L2 scrubbed before each), in a CUDA graph
and eager.
"""
import os

import torch

from rmsnorm_triton import ops
from rmsnorm_triton.kernels.rmsnorm import rmsnorm_fwd_kernel
from rmsnorm_triton.timing import n_sets, rmsnorm_bytes
from rmsnorm_triton.validate import check_inputs
from bench_utils import DTYPES, ab_setup, compiled_forms, print_graph_eager, swapped

ROWS = ("2048x16384:bf16:fp32,4096x16384:bf16:fp32,16384x16384:bf16:fp32,"
        "4096x12288:bf16:fp32,2048x16384:fp16:fp32,16384x16384:fp16:fp32,"
        "4096x16384:bf16:bf16")
EPS = 1e-6
# AB_WEIGHT=fp32: an fp32 weight (default: x's dtype). AB_RESIDUAL=bf16: the fused add.
WEIGHT_DTYPE = DTYPES.get(os.environ.get("AB_WEIGHT", ""))
RESIDUAL_DTYPE = DTYPES.get(os.environ.get("AB_RESIDUAL", ""))


def call_with(early, x, w, res, out_dtype):
    """A call through the package's launch path, the weight fetched early or late."""
    def call():
        with swapped(ops, preload_weight=lambda *args: early):
            p = check_inputs(x, w, residual=res, out_dtype=out_dtype, eps=EPS,
                             fused=res is not None)
            return ops._launch(p, EPS, 0.0, False, False)
    return call


def main():
    rows, rounds, ceiling = ab_setup(ROWS)
    for M, N, x_dtype, out_dtype in rows:
        nbytes = rmsnorm_bytes(M, N, x_dtype, WEIGHT_DTYPE or x_dtype, out_dtype,
                               RESIDUAL_DTYPE)
        sets = [(0.5 + 2 * torch.randn(M, N, device="cuda", dtype=x_dtype),
                 1 + 0.1 * torch.randn(N, device="cuda", dtype=WEIGHT_DTYPE or x_dtype),
                 None if RESIDUAL_DTYPE is None
                 else torch.randn(M, N, device="cuda", dtype=RESIDUAL_DTYPE))
                for _ in range(n_sets(nbytes))]
        x, w, res = sets[0]
        # The fused add updates its residual in place: each arm gets its own copy.
        outs = [call_with(early, x, w, None if res is None else res.clone(), out_dtype)()
                for early in (True, False)]
        assert torch.equal(*outs), (M, N, x_dtype)
        calls = {name: [call_with(early, x, w, res, out_dtype) for x, w, res in sets]
                 for name, early in (("early", True), ("late", False))}
        print(f"{M} x {N} {str(x_dtype)[6:]}->{str(out_dtype)[6:]}, weight "
              f"{w.dtype}, residual {RESIDUAL_DTYPE}:", flush=True)
        print_graph_eager(calls, rounds, nbytes, ceiling)
    print("compiled forms (maxnreg, registers, spills, warps):",
          compiled_forms(rmsnorm_fwd_kernel))


if __name__ == "__main__":
    main()
