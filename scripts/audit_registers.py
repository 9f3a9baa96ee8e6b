"""Registers, spills and programs an SM of every launch form the heuristic picks, compiled for a
GPU architecture on a machine without one.

    python scripts/audit_registers.py [--arch 90] [--spills-only]

Walks the heuristic (`config.heuristic_config`, with the launch decisions ops.py adds: weight
fetch order, row mask, held rows, register caps) over row counts 1-16384, hidden sizes 896-262144
and the dtype pairs of the benchmark, the fused add included. Each distinct form is compiled
with this environment's Triton as an aligned launch specializes it (pointers 16-byte aligned,
lengths and strides multiples of 16), with a weight (x's dtype, or fp32), without or with a
bias (x's dtype, or fp32), and no accumulate. One line a form: registers and stack bytes a
thread (cuobjdump), the programs an SM that the registers allow (65536 a SM, allocated 8 a
thread at a time), "SPILL" where the stack is used, and
"occ a->b@r" where r registers a thread would let b programs an SM run instead of a. Forms
found so: fp16 split rows to fp32 at 34-35 registers (config.SPLIT_WIDE_OUT_MAX_REGISTERS) and
the bf16 16384-wide tile to fp32 spilling with the weight fetched first (config.LATE_WEIGHT_TILE),
both with Triton 3.6, and an fp32 weight spilling in 32768-wide tiles fetched first with every
Triton (config.LATE_PARAMS_TILE_N). The rules it reads are those of this Triton
(config.SPLIT_CAP_HERE and the like), so run it in the environment whose forms you want.
"""
import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget

from rmsnorm_triton import config as C

_spec = importlib.util.spec_from_file_location(
    "compile_kernels", Path(__file__).resolve().with_name("compile_kernels.py"))
ck = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ck)

COLS = (896, 1024, 1536, 2048, 2304, 3072, 3584, 4096, 5120, 6144, 7168, 8192, 12288, 16384,
        18432, 24576, 32768, 49152, 65536, 131072, 262144)
ROWS = (1, 8, 64, 256, 512, 1024, 2048, 4096, 16384)
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
# (x, output, residual or None, weight): the bench's pairs with the weight in x's dtype, and
# fp32 weights and a residual of another 16-bit dtype, which no register cap takes.
PAIRS = ((BF16, BF16, None, BF16), (FP16, FP16, None, FP16), (BF16, FP32, None, BF16),
         (FP16, FP32, None, FP16), (BF16, BF16, BF16, BF16), (BF16, BF16, FP32, BF16),
         (FP32, FP32, None, FP32), (BF16, BF16, None, FP32), (FP16, FP32, None, FP32),
         (BF16, BF16, BF16, FP32), (FP16, FP16, BF16, FP16))
# (x, output, weight, bias): a bias of x's dtype or fp32 beside a weight of x's dtype.
BIAS_PAIRS = ((BF16, BF16, BF16, BF16), (BF16, BF16, BF16, FP32), (FP16, FP32, FP16, FP16))
TYPES = {BF16: "*bf16", FP16: "*fp16", FP32: "*fp32"}
REGISTERS_AN_SM, MAX_WARPS_AN_SM, MAX_PROGRAMS_AN_SM = 65536, 64, 32


def forms() -> dict:
    """Each distinct launch form (a JSON key) -> the rows x cols that take it."""
    found = {}
    cases = ([(*pair, None) for pair in PAIRS]
             + [(x, out, None, w, b) for x, out, w, b in BIAS_PAIRS])
    for n_cols in COLS:
        for n_rows in ROWS:
            for x, out, res, weight, bias in cases:
                norm = res or x
                plain = bias is None
                cfg = C.heuristic_config(n_cols, C.row_bucket(n_rows), norm.itemsize, True,
                                         out.itemsize, plain)
                form = dict(x=TYPES[x], y=TYPES[out], r=TYPES[res] if res else None,
                            w=TYPES[weight], b=TYPES[bias] if bias else None,
                            block_n=cfg.block_n, block_m=cfg.block_m, warps=cfg.num_warps,
                            looped=cfg.looped, loop_n=n_cols if cfg.looped else 0,
                            splits=cfg.splits)
                if cfg.splits > 1:
                    form["maxnreg"] = C.split_register_cap(cfg, n_rows, x, out.itemsize, res,
                                                           weight, plain=plain)
                else:
                    param_bytes = weight.itemsize + (bias.itemsize if bias else 0)
                    form.update(preload=C.preload_weight(cfg, n_rows, x, out.itemsize,
                                                         res is not None,
                                                         param_bytes=param_bytes),
                                row_mask=C.row_mask(cfg),
                                hold=plain and C.hold_row(cfg, norm.itemsize))
                found.setdefault(json.dumps(form, sort_keys=True), []).append(
                    f"{n_rows}x{n_cols}")
    return found


def compile_form(form: dict, target):
    """The form compiled as an aligned launch with a weight (and a bias) of the form's dtype."""
    xt, yt, rt, bt = form["x"], form["y"], form["r"], form.get("b")
    sig = {"x_ptr": xt, "w_ptr": form["w"], "y_ptr": yt, "n_cols": "i32", "stride_x_row": "i32",
           "stride_y_row": "i32", "eps": "fp32"}
    consts = dict(HAS_WEIGHT=True, HAS_BIAS=bt is not None, HAS_RESIDUAL=rt is not None,
                  ACCUMULATE=False, CLAMP_FP16=False, WEIGHT_OFFSET=0.0, BLOCK_N=form["block_n"])
    if form["splits"] > 1:
        name = "rmsnorm_fwd_split_kernel"
        sig["part_ptr"] = "*i64"
        consts.update(SPLITS=form["splits"], SPLITS_P2=triton.next_power_of_2(form["splits"]),
                      n_rows=None)
    else:
        name = "rmsnorm_fwd_kernel"
        consts.update(BLOCK_M=form["block_m"], LOOPED=form["looped"], LOOP_N=form["loop_n"],
                      PRELOAD_W=form["preload"], ROW_MASK=form["row_mask"], HOLD_X=form["hold"],
                      ADD_CHUNK_N=C.HELD_ADD_CHUNK_N if form["hold"] and rt else 0)
        if form["row_mask"]:
            sig["n_rows"] = "i32"
        else:
            consts["n_rows"] = None
    ck._operands(sig, consts, [("r_ptr", rt, rt is not None), ("b_ptr", bt, bt is not None),
                               ("stride_r_row", "i32", rt is not None)])
    options = {"num_warps": form["warps"], ck.ALIGNED: True}
    if form.get("maxnreg"):
        options["maxnreg"] = form["maxnreg"]
    return ck.compile_case(ck._kernels(), target, name, sig, consts, options)


def programs_an_sm(registers: int, warps: int) -> int:
    allocated = -(-registers // 8) * 8
    return min(REGISTERS_AN_SM // (allocated * 32 * warps), MAX_WARPS_AN_SM // warps,
               MAX_PROGRAMS_AN_SM)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10")
    parser.add_argument("--spills-only", action="store_true", help="print spilling forms only")
    args = parser.parse_args(argv)
    target = GPUTarget("cuda", args.arch, 32)
    spilling = 0
    found = forms()
    for key, shapes in found.items():
        form = json.loads(key)
        usage = ck._resources(compile_form(form, target))
        registers = int(usage.split("REG:")[1].split()[0])
        stack = int(usage.split("STACK:")[1].split()[0])
        now = programs_an_sm(registers, form["warps"])
        flags = "SPILL" if stack else ""
        spilling += bool(stack)
        fewer = [r for r in range(8, registers, 8) if programs_an_sm(r, form["warps"]) > now]
        if fewer:
            flags += f" occ {now}->{programs_an_sm(fewer[-1], form['warps'])}@{fewer[-1]}"
        if args.spills_only and not stack:
            continue
        shown = {k: v for k, v in form.items() if v not in (None, False, 0)}
        more = f" (+{len(shapes) - 3})" if len(shapes) > 3 else ""
        print(f"REG {registers:3d} STACK {stack:3d} programs/SM {now:2d} {flags:16s} {shown} "
              f"{' '.join(shapes[:3])}{more}", flush=True)
    print(f"triton {triton.__version__}, sm_{args.arch}: {len(found)} forms, {spilling} spill")
    return 0


if __name__ == "__main__":
    sys.exit(main())
