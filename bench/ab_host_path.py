"""Host cost of a repeat call: this checkout's package against another checkout's, in the same
rounds as F.rms_norm (or torch's add then F.rms_norm) and an empty Triton launch.

    python bench/ab_host_path.py BASE_DIR [M1xN1,...] [n]

Rows are MxN (the variants give the dtypes). BASE_DIR holds an earlier `rmsnorm_triton/`
(e.g. `git archive <commit> rmsnorm_triton | tar -x -C BASE_DIR`); it is imported as
`rmsnorm_triton_base`, sharing this checkout's kernels (its own imports of
`rmsnorm_triton.kernels` resolve here), so only the Python around the launch differs. Each row:
wall time per call of back-to-back calls (timing.host_rounds_us: every entry's loop takes turns
in 7 rounds, medians), and base - ours in microseconds a call. Eager decode loops pay this,
host overhead included; device time is the same kernel on both sides.
Outputs are checked equal bit for bit between the two packages.
"""
import importlib.util
import os
import sys

import torch
import torch.nn.functional as F

import rmsnorm_triton as rt
from rmsnorm_triton.timing import empty_launch_calls, host_rounds_us, n_sets
from bench_utils import parse_rows

SHAPES = ",".join(f"{m}x{n}" for m in (1, 8, 64) for n in (2048, 4096, 5120, 7168, 8192))
# (label, x dtype, output dtype, residual dtype or None for the plain norm)
VARIANTS = [("bf16", torch.bfloat16, None, None), ("fp16", torch.float16, None, None),
            ("bf16->fp32", torch.bfloat16, torch.float32, None),
            ("add bf16", torch.bfloat16, None, torch.bfloat16),
            ("add fp32 res", torch.bfloat16, None, torch.float32)]


def import_base(base_dir: str):
    init = os.path.join(base_dir, "rmsnorm_triton", "__init__.py")
    spec = importlib.util.spec_from_file_location(
        "rmsnorm_triton_base", init,
        submodule_search_locations=[os.path.dirname(init)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["rmsnorm_triton_base"] = mod
    spec.loader.exec_module(mod)
    return mod


def calls_for(pkg, xs, w, out_dtype, residuals):
    if residuals is None:
        return [lambda x=x: pkg.rms_norm(x, w, 1e-6, out_dtype=out_dtype) for x in xs]
    return [lambda x=x, r=r: pkg.fused_add_rms_norm(x, r, w, 1e-6)[0]
            for x, r in zip(xs, residuals)]


def torch_calls(xs, w, residuals):
    n = (w.shape[0],)
    if residuals is None:
        return [lambda x=x: F.rms_norm(x, n, w, 1e-6) for x in xs]

    def add_norm(x, r):
        r.add_(x)
        return F.rms_norm(r.to(x.dtype), n, w, 1e-6)
    return [lambda x=x, r=r: add_norm(x, r) for x, r in zip(xs, residuals)]


def main():
    base = import_base(sys.argv[1])
    shapes = parse_rows(sys.argv[2] if len(sys.argv) > 2 else SHAPES)
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    print(f"# torch {torch.__version__}, {torch.cuda.get_device_name()}; base {sys.argv[1]}; "
          f"{n} calls a loop, 7 rounds; us a call")
    print(f"{'M':>4} {'N':>6} {'variant':<13} {'empty':>7} {'torch':>7} {'base':>7} "
          f"{'ours':>7} {'base-ours':>9} {'torch/ours':>10}")
    for M, N, *_ in shapes:      # the variants below set the dtypes
        for label, dt, out_dtype, res_dt in VARIANTS:
            k = n_sets(M * N * dt.itemsize * 3)
            xs = [(0.5 + 2 * torch.randn(M, N, device="cuda")).to(dt) for _ in range(k)]
            w = (1 + 0.1 * torch.randn(N, device="cuda")).to(dt)
            res = None if res_dt is None else \
                [torch.randn(M, N, device="cuda").to(res_dt) for _ in range(k)]
            if res is None:
                same = torch.equal(rt.rms_norm(xs[0], w, out_dtype=out_dtype),
                                   base.rms_norm(xs[0], w, out_dtype=out_dtype))
            else:
                r1, r2 = res[0].clone(), res[0].clone()
                same = torch.equal(rt.fused_add_rms_norm(xs[0], r1, w)[0],
                                   base.fused_add_rms_norm(xs[0], r2, w)[0]) and \
                    torch.equal(r1, r2)
            us = host_rounds_us({"empty": empty_launch_calls(),
                                 "torch": torch_calls(xs, w, res),
                                 "base": calls_for(base, xs, w, out_dtype, res),
                                 "ours": calls_for(rt, xs, w, out_dtype, res)}, n)
            print(f"{M:>4} {N:>6} {label:<13} {us['empty']:7.2f} {us['torch']:7.2f} "
                  f"{us['base']:7.2f} {us['ours']:7.2f} {us['base'] - us['ours']:9.2f} "
                  f"{us['torch'] / us['ours']:10.3f}" + ("" if same else "  OUTPUTS DIFFER"),
                  flush=True)


if __name__ == "__main__":
    main()
