"""Eviction hints in the single-tile kernel: x and the weight, against what we ship.

    python bench/ab_evict.py [MxN:x:out,...] [rounds] [variant,...]   # both timers
    python bench/ab_evict.py ncu|ncu-compile-last MxN:x:out[,...]     # for ncu, see below

torch.compile's reductions load x with `evict_first` (its last read) and the weight with
`evict_last`; ours loads x with the default policy and, since "The eager rows behind, located;
the weight kept in L2" (bench/RESULTS.md), the weight `evict_last` too (`w default` takes that
hint out; the results of earlier runs name the hint's variant `w last`, against a kernel
without it). The question behind it: why torch.compile's kernel measured faster than ours right
after do_bench's L2 flush (a 256 MB memset) but slower in graphs. Nsight Compute's DRAM byte
counts answered part of it (bench/RESULTS.md, "Eviction hints, and timing after an L2 flush").
Each variant is the shipped kernel with its hints rewritten in the source, compiled from its
own file and launched through the forward's own launcher (`ops._launch`) with the heuristic's
config; "shipped copy" is the shipped source again, an A/A control for the spread between two
compilations of one kernel. Every variant is checked against fp32 math first; each round
starts at the next provider, so that no provider always runs in one place of the round. The
`ncu` form warms everything up, then runs flush + call once per provider (torch.compile first,
or last with `ncu-compile-last`) between cudaProfilerStart/Stop:

    ncu --profile-from-start off --cache-control none --clock-control none \\
        --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \\
        python3 bench/ab_evict.py ncu 4096x5120:bf16:fp32
"""
import importlib.util
import pathlib
import sys
import tempfile

import torch
import triton

from rmsnorm_triton import ops
from rmsnorm_triton import providers as P
from rmsnorm_triton.launcher import CachedLauncher
from rmsnorm_triton.timing import eager_us, graph_us, n_sets, scrub_l2
from rmsnorm_triton.validate import check_inputs
from bench_utils import interleaved_medians, parse_rows

EPS = 1e-6
SHAPES = ("4096x5120:bf16:fp32,4096x8192:bf16:fp32,2048x8192:bf16:fp32,16384x8192:bf16:fp32,"
          "4096x4096:bf16:bf16,16384x8192:bf16:bf16,1024x8192:bf16:bf16,64x8192:bf16:bf16,"
          "1x8192:bf16:bf16")
KERNEL_SRC = pathlib.Path(__file__).resolve().parents[1] / "kernels" / "rmsnorm.py"
# The single-tile path's x load, and every weight/bias load (_load_cols).
X_LOAD = "cols, mask, HAS_RESIDUAL, True, CLAMP_FP16, \"\")"
W_LOAD = "tl.load(ptr + cols, mask=col_mask, other=0.0, eviction_policy=\"evict_last\")"
X_FIRST = {X_LOAD: X_LOAD.replace('""', '"evict_first"')}
W_DEFAULT = {W_LOAD: W_LOAD.replace(', eviction_policy="evict_last"', "")}
VARIANTS = {"shipped": {}, "shipped copy": {}, "x first": X_FIRST, "w default": W_DEFAULT,
            "x first, w default": {**X_FIRST, **W_DEFAULT}}


def _variant_launchers(names=None):
    src = KERNEL_SRC.read_text()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="ab_evict_"))
    launchers = {}
    for i, (name, edits) in enumerate(VARIANTS.items()):
        if names and name not in names and name != "shipped":     # the ratios' base
            continue
        text = src
        for old, new in edits.items():
            assert text.count(old) == 1, (name, old)
            text = text.replace(old, new)
        path = tmp / f"variant_{i}.py"      # Triton reads a kernel's source from its file
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(f"ab_evict_variant_{i}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        launchers[name] = CachedLauncher(mod.rmsnorm_fwd_kernel)
    return launchers


def _norm(x, w, out_dtype, launcher):
    def call():
        ops._launch_rows = launcher
        p = check_inputs(x, w, out_dtype=out_dtype, eps=EPS)
        return ops._launch(p, EPS, 0.0, False, False)
    return call


def _calls(M, N, x_dtype, out_dtype, launchers, compiled):
    xs = [(0.5 + 2 * torch.randn(M, N, device="cuda")).to(x_dtype)
          for _ in range(n_sets(M * N * (x_dtype.itemsize + out_dtype.itemsize)))]
    w = (1 + 0.1 * torch.randn(N, device="cuda")).to(x_dtype)
    want = P._rms_norm_fp32(xs[0], w, EPS, out_dtype).float()
    calls = {"torch.compile": [lambda x=x: compiled(x, w, EPS, out_dtype) for x in xs]}
    for name, launcher in launchers.items():
        got = _norm(xs[0], w, out_dtype, launcher)().float()
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)
        calls[name] = [_norm(x, w, out_dtype, launcher) for x in xs]
    return calls


def ncu_run(specs, compile_last):
    launchers = _variant_launchers()
    P.prepare_compile()
    compiled = torch.compile(P._rms_norm_fp32, dynamic=False)
    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    for spec in specs.split(","):
        calls = _calls(*parse_rows(spec)[0], launchers, compiled)
        for fns in calls.values():
            fns[0]()
        torch.cuda.synchronize()
        if compile_last:
            calls["torch.compile"] = calls.pop("torch.compile")
        torch.cuda.cudart().cudaProfilerStart()
        for name, fns in calls.items():
            scrub_l2()
            flush.zero_()
            fns[0]()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()
        print(f"{spec} profiled, in order:", ", ".join(calls))


def main():
    if sys.argv[1:2] in (["ncu"], ["ncu-compile-last"]):
        return ncu_run(sys.argv[2], sys.argv[1] == "ncu-compile-last")
    specs = (sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else SHAPES).split(",")
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    launchers = _variant_launchers(sys.argv[3].split(",") if len(sys.argv) > 3 else None)
    P.prepare_compile()
    compiled = torch.compile(P._rms_norm_fp32, dynamic=False)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton "
          f"{triton.__version__}; medians of {rounds} interleaved rounds, us")
    for spec in specs:
        calls = _calls(*parse_rows(spec)[0], launchers, compiled)
        for timer in (eager_us, graph_us):
            med = interleaved_medians(calls, timer, rounds)
            line = "  ".join(f"{name} {us:.2f} ({med['shipped'] / us:.3f}x)"
                             for name, us in med.items())
            print(f"{spec} {timer.__name__}: {line}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
