"""Registers and stack bytes a thread of the fanout kernel's 32768-wide tile on 32 warps, every
copy's weight (and bias) fetched first or after the reduction, compiled for a GPU architecture
on a machine without one.

    python scripts/fanout_registers.py [--arch 90]

1-8 copies, bf16 or fp16 x and outputs, bf16 or fp32 weights, with or without a bf16 bias;
operands aligned as a launch specializes them. Read against config.FANOUT_LATE_MAX_ROWS.
"""
import argparse
import itertools
import sys
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compile_kernels as ck  # noqa: E402


def compile_tile(module, target, x_type, copies, w_type, b_type, preload):
    sig = {"x_ptr": x_type, "n_rows": "i32", "n_cols": "i32", "stride_x_row": "i32",
           "stride_y_row": "i32", "eps": "fp32"}
    consts = dict(HAS_WEIGHT=True, HAS_BIAS=b_type is not None, CLAMP_FP16=False,
                  WEIGHT_OFFSET=0.0, BLOCK_M=1, BLOCK_N=32768, LOOPED=False, LOOP_N=0,
                  COPIES=copies, PRELOAD_W=preload)
    types = {"y": x_type, "w": w_type, "b": b_type}
    ck._operands(sig, consts, [(f"{k}{i}_ptr", types[k], i < copies and types[k] is not None)
                               for k in ("y", "w", "b") for i in range(8)])
    return ck.compile_case(module, target, "rmsnorm_fwd_fanout_kernel", sig, consts,
                           {"num_warps": 32, ck.ALIGNED: True})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10")
    args = parser.parse_args(argv)
    module, target = ck._kernels(), GPUTarget("cuda", args.arch, 32)
    print(f"triton {triton.__version__}, sm_{args.arch}, fanout tile 32768 on 32 warps")
    for copies, w_type, b_type, x_type in itertools.product(
            [1, 2, 4, 8], ["*bf16", "*fp32"], [None, "*bf16"], ["*bf16", "*fp16"]):
        if b_type and w_type == "*fp32":
            continue
        cells = [f"{'first' if preload else 'late'} " + ck._resources(
                     compile_tile(module, target, x_type, copies, w_type, b_type, preload))
                 for preload in (True, False)]
        print(f"x {x_type[1:]:4s} copies {copies} w {w_type[1:]:4s} b {(b_type or ' -')[1:]:4s}: "
              + " | ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
