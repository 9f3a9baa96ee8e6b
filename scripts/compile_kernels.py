"""Compile every kernel for a GPU architecture on a machine without one, operands as launched.

    python scripts/compile_kernels.py [--arch 90] [--quick]

The interpreter runs the kernels' Python, not Triton's compiler, so a CPU test run cannot see
what only compilation rejects. One such case: Triton 3.6 does not compile a @triton.jit helper
that returns None, which an operand passed as None (the launches pass None for what a kernel
does not read) can lead to; Triton 3.9 does. This compiles rmsnorm_fwd_kernel,
rmsnorm_fwd_split_kernel and rmsnorm_fwd_fanout_kernel for `--arch` over their flag sets, each
operand None where its flag leaves it out, as ops.py passes them, the 64K-element rows held in
16 bits, and the split-row forms that ops.py compiles under a register cap. It needs only
Triton (the kernel file is loaded by path), so it runs in a venv of any Triton version.
`--quick` takes a subset that still reaches every None form; `--registers` also prints the
registers and spills of the held-row forms (config.HELD_ROW_TRITONS rests on it) and of the
register-capped split rows. Prints one line per failure and a count; exit status 1 on any
failure.
"""
import argparse
import importlib.util
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

KERNEL_FILE = Path(__file__).resolve().parents[1] / "kernels" / "rmsnorm.py"
# Compile options of every package launch (config.COMPILE_OPTIONS, written out because this
# script loads no package).
PACKAGE_OPTIONS = {"enable_fp_fusion": True}
# A case option of this script's own: specialize the pointers and integers as 16-byte aligned
# (divisible by 16), as Triton does for such launch arguments, and report registers.
ALIGNED = "aligned"


def _kernels():
    spec = importlib.util.spec_from_file_location("rmsnorm_kernels", KERNEL_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _operands(sig, consts, present):
    """Each (name, type) operand a pointer or int of `sig` if present, else a None constexpr."""
    for name, kind, here in present:
        if here:
            sig[name] = kind
        else:
            consts[name] = None


def row_cases(quick):
    operand_sets = ([(True, False, False), (False, True, True), (False, False, False)] if quick
                    else itertools.product([True, False], repeat=3))
    for (has_w, has_b, has_r), looped, masked in itertools.product(
            operand_sets, [True, False], [True, False]):
        sig = {"x_ptr": "*bf16", "y_ptr": "*fp32", "n_cols": "i32", "stride_x_row": "i32",
               "stride_y_row": "i32", "eps": "fp32"}
        consts = dict(HAS_WEIGHT=has_w, HAS_BIAS=has_b, HAS_RESIDUAL=has_r, ACCUMULATE=False,
                      CLAMP_FP16=False, WEIGHT_OFFSET=0.0, BLOCK_M=2 if masked else 1,
                      BLOCK_N=256, LOOPED=looped, LOOP_N=1000 if looped else 0, PRELOAD_W=True,
                      ROW_MASK=masked, HOLD_X=False, ADD_CHUNK_N=0)
        _operands(sig, consts, [("r_ptr", "*bf16", has_r), ("w_ptr", "*bf16", has_w),
                                ("b_ptr", "*bf16", has_b), ("stride_r_row", "i32", has_r),
                                ("n_rows", "i32", masked)])
        yield "rmsnorm_fwd_kernel", sig, consts, {}
        if not looped and not masked:
            split = {k: v for k, v in consts.items()
                     if k not in ("BLOCK_M", "LOOPED", "LOOP_N", "PRELOAD_W", "ROW_MASK",
                                  "HOLD_X", "ADD_CHUNK_N")}
            split.update(SPLITS=4, SPLITS_P2=4, n_rows=None)
            yield "rmsnorm_fwd_split_kernel", dict(sig, part_ptr="*i64"), split, {}


def held_row_cases():
    """The tiles ops.py launches with HOLD_X (config.hold_row: a 64K-element row of 16-bit
    values, one program on 32 warps), fp16 and bf16, the fused add (its chunk 16384,
    config.HELD_ADD_CHUNK_N) or not, with a weight: the widening again and the fused add's first
    pass. Pointers and integers are specialized as a GPU launch of an aligned row specializes
    them (divisible by 16: config.row_vectors, plans.misaligned), so the registers are
    those of the launch. Then the same forms without a weight and with the fp16 clamp,
    compiled only."""
    for x_type, has_r, plain in itertools.product(("*bf16", "*fp16"), (False, True),
                                                  (True, False)):
        sig = {"x_ptr": x_type, "y_ptr": x_type, "n_rows": "i32", "n_cols": "i32",
               "stride_x_row": "i32", "stride_y_row": "i32", "eps": "fp32"}
        consts = dict(HAS_WEIGHT=plain, HAS_BIAS=False, HAS_RESIDUAL=has_r, ACCUMULATE=False,
                      CLAMP_FP16=x_type == "*fp16" and not plain, WEIGHT_OFFSET=1.0, BLOCK_M=1,
                      BLOCK_N=65536, LOOPED=False, LOOP_N=0, PRELOAD_W=False, ROW_MASK=True,
                      HOLD_X=True, ADD_CHUNK_N=16384 if has_r else 0)
        _operands(sig, consts, [("r_ptr", x_type, has_r), ("w_ptr", x_type, plain),
                                ("b_ptr", x_type, False), ("stride_r_row", "i32", has_r)])
        yield "rmsnorm_fwd_kernel", sig, consts, {"num_warps": 32, ALIGNED: plain}


# The split-row forms ops.py compiles under a register cap (config.split_register_cap), as
# (x, output, residual or None, slice, warps, cap); written out because this script loads no
# package: 16-bit rows in 8192-element slices on 8 warps to a 16-bit output, the residual or not,
# at config.SPLIT_MAX_REGISTERS; fp16 rows to fp32 in config.SPLIT_WIDE_OUT_CAPPED_FORMS at
# config.SPLIT_WIDE_OUT_MAX_REGISTERS.
CAPPED_SPLIT_FORMS = (("*bf16", "*bf16", None, 8192, 8, 48),
                      ("*bf16", "*bf16", "*bf16", 8192, 8, 48),
                      ("*fp16", "*fp32", None, 4096, 8, 32),
                      ("*fp16", "*fp32", None, 8192, 16, 32))


def capped_split_cases():
    """CAPPED_SPLIT_FORMS, with a weight, specialized as an aligned launch (their registers
    are printed with --registers)."""
    for x_type, y_type, r_type, slice_n, warps, cap in CAPPED_SPLIT_FORMS:
        sig = {"x_ptr": x_type, "w_ptr": x_type, "y_ptr": y_type, "part_ptr": "*i64",
               "n_cols": "i32", "stride_x_row": "i32", "stride_y_row": "i32", "eps": "fp32"}
        splits = 65536 // slice_n
        consts = dict(HAS_WEIGHT=True, HAS_BIAS=False, HAS_RESIDUAL=r_type is not None,
                      ACCUMULATE=False, CLAMP_FP16=False, WEIGHT_OFFSET=0.0, BLOCK_N=slice_n,
                      SPLITS=splits, SPLITS_P2=splits, n_rows=None)
        _operands(sig, consts, [("r_ptr", r_type, r_type is not None),
                                ("b_ptr", x_type, False),
                                ("stride_r_row", "i32", r_type is not None)])
        yield "rmsnorm_fwd_split_kernel", sig, consts, {"num_warps": warps, "maxnreg": cap,
                                                        ALIGNED: True}


def fanout_cases(quick):
    for has_w, has_b, looped, copies, preload in itertools.product(
            [True, False], [True, False], [True, False], [2] if quick else [1, 2, 8],
            [True, False]):
        if looped and not preload:      # the looped path has no such choice
            continue
        sig = {"x_ptr": "*bf16", "n_rows": "i32", "n_cols": "i32", "stride_x_row": "i32",
               "stride_y_row": "i32", "eps": "fp32"}
        consts = dict(HAS_WEIGHT=has_w, HAS_BIAS=has_b, CLAMP_FP16=False, WEIGHT_OFFSET=1.0,
                      BLOCK_M=1, BLOCK_N=256, LOOPED=looped, LOOP_N=1000 if looped else 0,
                      COPIES=copies, PRELOAD_W=preload)
        # Looped copies to fp32: decode rows to a wider output loop and keep the fanout.
        y_type = "*fp32" if looped else "*bf16"
        _operands(sig, consts, [(f"{k}{i}_ptr", y_type if k == "y" else "*bf16",
                                 i < copies and here)
                                for k, here in (("y", True), ("w", has_w), ("b", has_b))
                                for i in range(8)])
        yield "rmsnorm_fwd_fanout_kernel", sig, consts, {}


def _reason(error: Exception) -> str:
    """The innermost error of a compile failure: where (the helper's def line) and what."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in str(error).strip().splitlines()] or [type(error).__name__]
    where = next((line for line in lines if line.startswith("def ")), "")
    return f"{lines[0]} {where} {lines[-1]}"


def cuobjdump_path() -> Optional[Path]:
    """The cuobjdump beside the ptxas Triton uses (Triton's wheels ship one), else one on PATH
    or in the CUDA toolkit; None where there is none (a ptxas taken from elsewhere)."""
    from triton.backends.nvidia.compiler import get_ptxas
    ptxas = get_ptxas(90)
    beside = Path(getattr(ptxas, "path", ptxas)).with_name("cuobjdump")
    found = [beside, shutil.which("cuobjdump"),
             Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "cuobjdump"]
    return next((Path(p) for p in found if p and Path(p).is_file()), None)


def _resources(kernel) -> str:
    """cuobjdump's REG and STACK of a compiled kernel (STACK above 0: spilled)."""
    tool = cuobjdump_path()
    if tool is None:
        raise SystemExit("no cuobjdump beside Triton's ptxas, on PATH or in CUDA_HOME")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True)
    usage = [w for line in out.stdout.splitlines() if "REG:" in line for w in line.split()
             if w.startswith(("REG:", "STACK:"))]
    return " ".join(usage) or f"no usage line ({out.stderr.strip()[:100]})"


def compile_case(module, target, name, sig, consts, options):
    """Kernel `name` of `module` compiled for `target` with the package's options: `consts`
    marked constexpr in `sig` (changed in place), 4 warps unless `options` say otherwise, the
    pointers and integers specialized as 16-byte aligned where `options` hold ALIGNED."""
    for const in consts:
        sig[const] = "constexpr"
    options = dict(options)
    aligned = options.pop(ALIGNED, False)
    fn = getattr(module, name)
    attrs = {(i,): [["tt.divisibility", 16]] for i, arg in enumerate(fn.arg_names)
             if aligned and sig.get(arg, "constexpr") not in ("constexpr", "fp32")
             and arg != "n_rows"}
    return triton.compile(ASTSource(fn, sig, consts, attrs), target=target,
                          options={"num_warps": 4, **PACKAGE_OPTIONS, **options})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10")
    parser.add_argument("--quick", action="store_true", help="a subset reaching every None form")
    parser.add_argument("--registers", action="store_true",
                        help="print registers and stack bytes (spills) of the aligned held-row "
                             "and register-capped forms, from Triton's cuobjdump")
    args = parser.parse_args(argv)
    module, target = _kernels(), GPUTarget("cuda", args.arch, 32)
    cases = [*row_cases(args.quick), *held_row_cases(), *capped_split_cases(),
             *fanout_cases(args.quick)]
    failed = 0
    for name, sig, consts, options in cases:
        aligned = options.get(ALIGNED, False)
        shown = {k: v for k, v in options.items() if k != ALIGNED}
        try:
            kernel = compile_case(module, target, name, sig, consts, options)
            if aligned and args.registers:
                flags = {k: v for k, v in consts.items() if k in ("HAS_RESIDUAL", "BLOCK_N")}
                print(f"{name} {sig['x_ptr']} -> {sig['y_ptr']} {flags} {shown}: "
                      f"{_resources(kernel)}")
        except Exception as e:          # any compiler error is a finding; keep going
            failed += 1
            flags = {k: v for k, v in consts.items() if k.isupper()}
            print(f"FAILED {name} {flags} {shown}: {_reason(e)}")
    print(f"triton {triton.__version__}, sm_{args.arch}: {len(cases) - failed} compiled, "
          f"{failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
