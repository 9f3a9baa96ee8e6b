"""The row kernel of another revision against this one, same configs, same process.

    git show REV:kernels/rmsnorm.py > /tmp/old_rmsnorm.py
    python bench/ab_kernel_file.py /tmp/old_rmsnorm.py [MxN[:x:out],...] [rounds]

Both files' `rmsnorm_fwd_kernel` are launched through Triton's JIT with the config and flags
`rms_norm` would use for the row (`pick_config`, `preload_weight`, `row_mask`), outputs
allocated per call, and each with the arguments its revision's launcher passes: a kernel with a
ROW_MASK parameter gets None for the operands it does not read, an older one x's pointer;
each is checked against fp32 math first, then timed eager (L2 flushed) and in a CUDA graph,
inputs and outputs rotating, medians of interleaved rounds. bf16 by default; `x` and `out` name
other dtypes (bf16, fp16, fp32).
"""
import importlib.util
import sys

import torch

from rmsnorm_triton import providers as P
from rmsnorm_triton.config import hold_row, pick_config, preload_weight, row_bucket, row_mask
from rmsnorm_triton.kernels.rmsnorm import rmsnorm_fwd_kernel
from rmsnorm_triton.timing import eager_us, graph_us, n_sets
from bench_utils import interleaved_medians

SHAPES = ("1x8192,8x4096,64x8192,64x896,512x896,1024x896,512x4096,1024x4096,1024x5120,"
          "4096x8192,512x18432,4096x2048")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
EPS = 1e-6


def _load(path):
    spec = importlib.util.spec_from_file_location("old_rmsnorm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.rmsnorm_fwd_kernel


def _call(kernel, x, w, out_dtype):
    M, N = x.shape
    cfg = pick_config(N, row_bucket(M), x.dtype, out_dtype, False, x.device.index)
    if cfg.splits > 1:
        raise SystemExit(f"{M}x{N}: split rows run another kernel")
    flags = dict(HAS_WEIGHT=True, HAS_BIAS=False, HAS_RESIDUAL=False, ACCUMULATE=False,
                 CLAMP_FP16=False, WEIGHT_OFFSET=0.0, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                 LOOPED=cfg.looped, LOOP_N=N if cfg.looped else 0,
                 PRELOAD_W=preload_weight(cfg, M, x.dtype, out_dtype.itemsize, False))
    if "HOLD_X" in kernel.arg_names:
        flags.update(HOLD_X=hold_row(cfg, x.element_size()), ADD_CHUNK_N=0)
    if "ROW_MASK" in kernel.arg_names:
        flags["ROW_MASK"] = row_mask(cfg)
        unused, n_rows, stride_r = None, M if flags["ROW_MASK"] else None, None
    else:
        unused, n_rows, stride_r = x, M, 0

    def call():
        y = torch.empty(M, N, device=x.device, dtype=out_dtype)
        kernel[(-(-M // cfg.block_m),)](x, unused, w, unused, y, n_rows, N, N, stride_r, N, EPS,
                                        **flags, num_warps=cfg.num_warps)
        return y
    return call, cfg


def main():
    old = _load(sys.argv[1])
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    for spec in (sys.argv[2] if len(sys.argv) > 2 else SHAPES).split(","):
        shape, *names = spec.split(":")
        M, N = map(int, shape.split("x"))
        x_dtype = DTYPES[names[0]] if names else torch.bfloat16
        out_dtype = DTYPES[names[1]] if len(names) > 1 else x_dtype
        xs = [(0.5 + 2 * torch.randn(M, N, device="cuda")).to(x_dtype)
              for _ in range(n_sets(M * N * (x_dtype.itemsize + out_dtype.itemsize)))]
        w = (1 + 0.1 * torch.randn(N, device="cuda")).to(x_dtype)
        want = P._rms_norm_fp32(xs[0], w, EPS, out_dtype).float()
        calls = {}
        for name, kernel in (("previous", old), ("this", rmsnorm_fwd_kernel)):
            call, cfg = _call(kernel, xs[0], w, out_dtype)
            torch.testing.assert_close(call().float(), want, rtol=1e-2, atol=1e-2)
            calls[name] = [_call(kernel, x, w, out_dtype)[0] for x in xs]
        for timer in (eager_us, graph_us):
            t = interleaved_medians(calls, timer, rounds)
            print(f"{spec} {cfg}, {timer.__name__}, medians of {rounds} rounds: previous "
                  f"{t['previous']:.2f} us, this {t['this']:.2f} us, previous/this "
                  f"{t['previous'] / t['this']:.3f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
