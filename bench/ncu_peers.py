"""Our kernel next to each peer's and a plain copy of the same rows, one call each, for Nsight
Compute: where a row is behind, what the kernels do differently.

    M=smsp__inst_executed.sum,dram__bytes_read.sum,dram__bytes_write.sum
    ncu --profile-from-start off --clock-control none --cache-control all \\
        --section SpeedOfLight --section Occupancy --section LaunchStats \\
        --section WarpStateStats --metrics $M -o peers \\
        python3 bench/ncu_peers.py 512x896:bf16:bf16,... > labels.txt
    ncu --import peers.ncu-rep --csv --page details --print-units base > peers.csv
    python3 bench/ncu_peers.py --table peers.csv labels.txt

Rows: MxN:x:out[:add][@block_m/block_n/warps/looped] (several, comma-separated). Each row runs
ours (`rms_norm`, or `fused_add_rms_norm` with a residual of x's dtype), torch.compile of the
fp32-math reference, Liger where it imports and supports the row, and, to another output dtype,
`out.copy_(x)` (x read, the output written: our bytes less the weight's; a same-dtype copy is a
cudaMemcpy, which the profiler does not see); `@...` adds our kernel with that launch config.
Everything is compiled and warmed up first; only the calls between cudaProfilerStart and Stop
are profiled (`--profile-from-start off`), so the launch order, which the driver writes to
stdout as `KERNEL row provider` lines, matches the report's kernels. `--cache-control all` flushes
the caches before each kernel: the eager timer's conditions.
"""
import csv
import sys

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
EPS = 1e-6
# The report's metrics a table row shows: (section metric name, column heading).
COLUMNS = [("Duration", "us"), ("DRAM Throughput", "DRAM %"),
           ("dram__bytes_read.sum", "read MB"), ("dram__bytes_write.sum", "write MB"),
           ("Registers Per Thread", "regs"), ("Block Size", "threads"), ("Grid Size", "grid"),
           ("Theoretical Occupancy", "occ th %"), ("Achieved Occupancy", "occ %"),
           ("smsp__inst_executed.sum", "instr"),
           ("Warp Cycles Per Issued Instruction", "cyc/instr"),
           ("L2 Cache Throughput", "L2 %")]


def parse_row(spec):
    spec, _, cfg = spec.partition("@")
    shape, x, out, *add = spec.split(":")
    M, N = map(int, shape.split("x"))
    config = None
    if cfg:
        from rmsnorm_triton.config import LaunchConfig
        m, n, w, looped = cfg.split("/")
        config = LaunchConfig(int(m), int(n), int(w), looped in ("1", "True", "true"))
    return M, N, DTYPES[x], DTYPES[out], add == ["add"], config


def calls_for(M, N, x_dtype, out_dtype, add, config):
    """label -> zero-argument call, every one checked against the fp32 reference first."""
    import rmsnorm_triton as rt
    from rmsnorm_triton import ops, providers as P
    from rmsnorm_triton.validate import check_inputs

    x = (0.5 + 2 * torch.randn(M, N, device="cuda")).to(x_dtype)
    w = (1 + 0.1 * torch.randn(N, device="cuda")).to(x_dtype)
    r = torch.randn(M, N, device="cuda").to(x_dtype) if add else None
    out = torch.empty(M, N, device="cuda", dtype=out_dtype)
    # The fused add updates r in place: every call is checked against a fresh copy of it.
    res = {name: (r.clone() if add else None) for name in ("ours", "cfg", "compile", "liger")}
    calls = {}
    if add:
        calls["ours"] = lambda: rt.fused_add_rms_norm(x, res["ours"], w, EPS, out_dtype=out_dtype,
                                                      out=out)[0]
    else:
        calls["ours"] = lambda: rt.rms_norm(x, w, EPS, out_dtype=out_dtype, out=out)
    if config is not None:
        def with_config():
            p = check_inputs(x, w, residual=res["cfg"], out_dtype=out_dtype, eps=EPS, fused=add)
            got = ops._launch(p, EPS, 0.0, False, False, config)
            return got[0] if isinstance(got, tuple) else got
        calls["ours@" + "/".join(map(str, (config.block_m, config.block_n, config.num_warps,
                                           int(config.looped))))] = with_config
    P.prepare_compile()
    if add:
        fused = torch.compile(P._fused_add_fp32, dynamic=False)
        calls["torch.compile"] = lambda: fused(x, res["compile"], w, EPS, out_dtype)
    else:
        norm = torch.compile(P._rms_norm_fp32, dynamic=False)
        calls["torch.compile"] = lambda: norm(x, w, EPS, out_dtype)
    if out_dtype == x_dtype:
        try:
            if add:
                from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction as L
                calls["liger"] = lambda: L.apply(x, res["liger"], w, EPS)[0]
            else:
                from liger_kernel.ops.rms_norm import LigerRMSNormFunction as L
                calls["liger"] = lambda: L.apply(x, w, EPS)
        except ImportError:
            pass
    if out_dtype != x_dtype:
        # A same-dtype copy_ is a cudaMemcpy, not a kernel: Nsight Compute would not see it.
        calls["copy"] = lambda: out.copy_(x)
    want = (P._fused_add_fp32(x, r.clone(), w, EPS, out_dtype) if add
            else P._rms_norm_fp32(x, w, EPS, out_dtype)).float()
    for name, call in calls.items():
        if name == "copy":
            continue
        for key in res:
            if res[key] is not None:
                res[key].copy_(r)
        torch.testing.assert_close(call().float(), want, rtol=1e-2, atol=1e-2,
                                   msg=lambda m, name=name: f"{name}: {m}")
    return calls


def profile(specs):
    rows = [(spec, calls_for(*parse_row(spec))) for spec in specs]
    for _, calls in rows:            # warm: compiled, autotuned, allocated
        for call in calls.values():
            call()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for spec, calls in rows:
        for name, call in calls.items():
            call()
            print(f"KERNEL {spec.split('@')[0]} {name}")
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def table(report_csv, labels_txt):
    """One line a kernel: the label the driver printed and the COLUMNS of the report."""
    with open(labels_txt) as f:
        labels = [line.split()[1:] for line in f if line.startswith("KERNEL ")]
    kernels = {}
    with open(report_csv, newline="") as f:
        for rec in csv.DictReader(line for line in f if line.startswith('"')):
            k = kernels.setdefault(int(rec["ID"]), {"name": rec["Kernel Name"]})
            k[rec["Metric Name"]] = rec["Metric Value"]
            k["Block Size"], k["Grid Size"] = rec["Block Size"], rec["Grid Size"]
    if len(kernels) != len(labels):
        raise SystemExit(f"{len(kernels)} kernels in the report, {len(labels)} labels")
    print("| row | provider | kernel | " + " | ".join(h for _, h in COLUMNS) + " |")
    print("|" + "---|" * (3 + len(COLUMNS)))
    for (row, provider), (_, k) in zip(labels, sorted(kernels.items())):
        cells = []
        for metric, _ in COLUMNS:
            v = k.get(metric, "")
            if v and metric.startswith("dram__bytes"):
                v = f"{float(v.replace(',', '')) / 1e6:.1f}"
            elif v and metric == "Duration":                # base units: ns
                v = f"{float(v.replace(',', '')) / 1e3:.2f}"
            cells.append(v)
        print(f"| {row} | {provider} | {k['name'][:28]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if sys.argv[1] == "--table":
        table(sys.argv[2], sys.argv[3])
    else:
        profile(sys.argv[1].split(","))
