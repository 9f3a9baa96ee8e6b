"""Tensor-parallel RMSNorm: hidden states on cuda:0, a normalized copy needed on every GPU.

    python bench/bench_tp.py --gpus 2 --csv tp_2gpu.csv
    python bench/bench_tp.py --gpus 4 --csv tp_4gpu.csv

Providers (bf16, N=8192 by default; x on cuda:0; each GPU has its own weight replica):
  tp_copy     forward_tp(fused=False): P2P copies on side streams, norms on the TP streams
  tp_fused    forward_tp(fused=True): every GPU's kernel reads x over NVLink (no copy), on its
              current stream
  tp_fanout   forward_tp(fused=True) at any size through the fanout: one kernel on cuda:0 writes
              every GPU's copy over NVLink (the default: any size with one peer, up to 1 MB
              with more)
  tp_staged   forward_tp on TPContext(use_p2p=False): through pinned host memory (exllamav2's way)
  loop_naive  for each GPU: rms_norm(x.to(gpu)) on the current streams, no TPContext
  one_p2p     one P2P copy to cuda:1 and one norm there: the floor for a single peer
  nccl        one process per GPU: dist.broadcast from rank 0, then rms_norm on every rank
Columns: median_us = do_bench median of device time (L2 flushed before each call, which hides
host launch time where the host queues the call within the flush: at decode sizes on a slow host
part of it may show; timing.eager_us holds the GPU instead); every call then ends with cuda:0
waiting for all GPUs (events on cuda:0 time it). wall_us = host-inclusive time per call over
back-to-back calls and one sync of every GPU at the end (median of 5 such loops), the number
that matters at decode sizes. Graph mode captures one call across all GPUs (outputs
preallocated) and replays it. Each result is checked bit for bit against rms_norm of the same
data on the same GPU ("check" column).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from datetime import timedelta

import torch
import triton

import rmsnorm_triton as rt
from rmsnorm_triton.atomic import write_atomic, write_text_atomic
from rmsnorm_triton.parallel import (BROADCAST_RS, TPContext, capture_graph, forward_tp,
                                     norm_on_devices)

EPS = 1e-6
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FIELDS = ["gpus", "provider", "mode", "M", "N", "dtype", "median_us", "p20_us", "p80_us",
          "wall_us", "check", "note"]


# ---- timing -------------------------------------------------------------------------------------

def join_on_first(devs):
    """cuda:0's current stream waits for every GPU's current stream: "all GPUs done"."""
    first = torch.cuda.current_stream(devs[0])
    for d in devs[1:]:
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(d))
        first.wait_event(done)


def sync_all(devs):
    for d in devs:
        torch.cuda.synchronize(d)


def device_us(fn):
    ms = triton.testing.do_bench(fn, warmup=10, rep=60, quantiles=[0.5, 0.2, 0.8])
    return [1e3 * v for v in ms]


def wall_us(fn, devs, budget_s=0.05, repeats=5):
    """Host-inclusive: back-to-back calls, then one sync; per-call average. The median of
    `repeats` such loops: on a shared host a single loop can move by 2x."""
    fn()
    sync_all(devs)
    t0 = time.perf_counter()
    fn()
    sync_all(devs)
    n = max(3, min(500, int(budget_s / max(time.perf_counter() - t0, 1e-6))))
    per_call = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync_all(devs)
        per_call.append(1e6 * (time.perf_counter() - t0) / n)
    return sorted(per_call)[repeats // 2]


# ---- single-process providers -------------------------------------------------------------------

class Case:
    """Inputs, weight replicas, preallocated outputs and the expected results for one M."""

    def __init__(self, devs, M, N, dtype):
        torch.manual_seed(0)
        self.devs = devs
        self.x = (0.5 + 2 * torch.randn(M, N, device=devs[0])).to(dtype)
        w = (1 + 0.1 * torch.randn(N, device=devs[0])).to(dtype)
        self.ws = [w.to(d) for d in devs]
        self.outs = [torch.empty(M, N, dtype=dtype, device=d) for d in devs]
        self.copies = [None] + [torch.empty(M, N, dtype=dtype, device=d) for d in devs[1:]]
        self.want = [rt.rms_norm(self.x.to(d), wd, EPS) for d, wd in zip(devs, self.ws)]
        sync_all(devs)

    def check(self, got, part=None):
        """Bit-for-bit against rms_norm on each GPU; `part` picks the devices a provider covers."""
        part = part or slice(None)
        got, want = got[part], self.want[part]
        ok = len(got) == len(want) and all(torch.equal(g, e) for g, e in zip(got, want))
        return "ok" if ok else "MISMATCH"


def providers(devs, args):
    """name -> (eager call, graph call or a reason it has none, devices its check covers)."""
    contexts = {"tp_copy": TPContext(devs, fused=False),
                "tp_staged": TPContext(devs, use_p2p=False)}
    peers = all(contexts["tp_copy"].can_read(a, b) for a in devs for b in devs)
    if peers:
        contexts["tp_fused"] = TPContext(devs, fused=True, fanout_max_bytes=0)
        contexts["tp_fanout"] = TPContext(devs, fused=True, fanout_max_bytes=1 << 62)
    table = {}

    for name, ctx in contexts.items():
        def eager(c, ctx=ctx):
            return forward_tp(ctx, BROADCAST_RS, c.x, c.ws, None, EPS)

        if name == "tp_fused":
            def graph(c, ctx=ctx):
                return forward_tp(ctx, BROADCAST_RS, c.x, c.ws, None, EPS, out=c.outs)
        elif name == "tp_fanout":
            def graph(c, ctx=ctx):           # into a graph's static buffers, as engines do
                return forward_tp(ctx, BROADCAST_RS, c.x, c.ws, None, EPS, out=c.outs)
        elif name == "tp_copy":
            def graph(c, ctx=ctx):
                xs = ctx.broadcast(c.x, BROADCAST_RS, out=c.copies)
                return norm_on_devices(ctx, xs, c.ws, None, EPS, out=c.outs)
        else:
            graph = "pinned-host staging orders its buffer with events across calls"
        table[name] = (eager, graph, None)
    if not peers:
        print("# no peer access between these GPUs: tp_fused skipped", file=sys.stderr)

    def loop_naive(c):
        return [rt.rms_norm(c.x.to(d), w, EPS) for d, w in zip(c.devs, c.ws)]

    def loop_naive_graph(c):
        ys = []
        for i, (d, w) in enumerate(zip(c.devs, c.ws)):
            src = c.x if i == 0 else c.copies[i].copy_(c.x)
            ys.append(rt.rms_norm(src, w, EPS, out=c.outs[i]))
        return ys

    table["loop_naive"] = (loop_naive, loop_naive_graph, None)

    def one_p2p(c):
        return [rt.rms_norm(c.x.to(c.devs[1]), c.ws[1], EPS)]

    def one_p2p_graph(c):
        return [rt.rms_norm(c.copies[1].copy_(c.x), c.ws[1], EPS, out=c.outs[1])]

    table["one_p2p"] = (lambda c: [None] + one_p2p(c), lambda c: [None] + one_p2p_graph(c),
                        slice(1, 2))
    return {k: v for k, v in table.items() if not args.providers or k in args.providers}


def measure(case, name, call, mode, part, args):
    devs = case.devs
    row = dict(gpus=len(devs), provider=name, mode=mode, M=case.x.shape[0], N=case.x.shape[1],
               dtype=args.dtype, check="", note="")
    try:
        if mode == "graph":
            captured = []
            graph = capture_graph(lambda: captured.append(call(case)), devs)
            captured = captured[-1:]
            for o in case.outs:              # the replay, not the warm-up, must fill them
                o.fill_(float("nan"))
            sync_all(devs)                   # graph nodes on other GPUs ignore their streams
            graph.replay()
            got, fn = captured[0], graph.replay
            loop = fn
        else:
            got = call(case)
            def fn():
                call(case)
                join_on_first(devs)

            def loop():
                call(case)
        sync_all(devs)
        row["check"] = case.check(got, part)
        med, p20, p80 = device_us(fn)
        row.update(median_us=round(med, 2), p20_us=round(p20, 2), p80_us=round(p80, 2),
                   wall_us=round(wall_us(loop, devs), 2))
    except Exception as e:                   # a provider that cannot run here is reported
        row.update(check="n/a", note=_short(e))
    return row


# ---- NCCL: one process per GPU ------------------------------------------------------------------

def _fixed_count_us(fn, reps=30):
    """do_bench's method (flush L2, time one call with events) with a fixed count: every rank
    must issue the same number of collectives, which do_bench's adaptive count does not do."""
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    fn()
    marks = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
             for _ in range(reps)]
    for start, end in marks:
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    times = sorted(1e3 * s.elapsed_time(e) for s, e in marks)
    return [times[int(q * (reps - 1))] for q in (0.5, 0.2, 0.8)]


def _fixed_count_wall_us(fn, n, repeats=5):
    """wall_us for collectives: every rank runs the same number of calls."""
    per_call = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        per_call.append(1e6 * (time.perf_counter() - t0) / n)
    return sorted(per_call)[repeats // 2]


def _nccl_case(rank, world, M, n_cols, dtype_name, mode):
    import torch.distributed as dist

    dev = torch.device("cuda", rank)
    torch.manual_seed(0)                     # same data on every rank, for the check
    dtype = DTYPES[dtype_name]
    data = (0.5 + 2 * torch.randn(M, n_cols, device=dev)).to(dtype)
    w = (1 + 0.1 * torch.randn(n_cols, device=dev)).to(dtype)
    buf = data.clone() if rank == 0 else torch.empty_like(data)
    out = torch.empty_like(data)
    want = rt.rms_norm(data, w, EPS)

    def call():
        dist.broadcast(buf, 0)
        return rt.rms_norm(buf, w, EPS, out=out)

    fn = call
    if mode == "graph":
        call()                               # NCCL's communicator must exist before capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            call()
        out.fill_(float("nan"))
        fn = graph.replay
    fn()
    torch.cuda.synchronize()
    mismatch = 0.0 if torch.equal(out, want) else 1.0
    stats = _fixed_count_us(fn) + [_fixed_count_wall_us(fn, 100 if M <= 1024 else 20)]
    # The slowest rank decides when every GPU holds its result.
    t = torch.tensor(stats + [mismatch], dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    med, p20, p80, wall, bad = t.tolist()
    return dict(median_us=round(med, 2), p20_us=round(p20, 2), p80_us=round(p80, 2),
                wall_us=round(wall, 2), check="MISMATCH" if bad else "ok")


def nccl_worker(rank, world, rows, n_cols, dtype_name, mode, init_file, out_path):
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    results = []
    try:
        for M in rows:
            row = dict(gpus=world, provider="nccl", mode=mode, M=M, N=n_cols, dtype=dtype_name,
                       check="", note="")
            results.append(row)
            try:
                row.update(_nccl_case(rank, world, M, n_cols, dtype_name, mode))
            except Exception as e:           # every rank fails alike (a capture, say): stop
                row.update(check="n/a", note=_short(e))
                break
    finally:
        if rank == 0:
            write_text_atomic(out_path, json.dumps(results))
        dist.destroy_process_group()


def _short(e):
    lines = str(e).strip().splitlines() or [""]
    return f"{type(e).__name__}: {lines[0][:120]}"


def run_nccl(world, args, mode, timeout_s=90):
    """One spawn per mode, so that a failed capture cannot spoil the eager numbers."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "nccl.json")
        procs = mp.start_processes(
            nccl_worker, args=(world, args.rows, args.hidden, args.dtype, mode,
                               os.path.join(tmp, "rendezvous"), out_path),
            nprocs=world, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout_s
        try:
            while not procs.join(timeout=1):
                if time.monotonic() > deadline:
                    for p in procs.processes:
                        p.terminate()
                    raise TimeoutError(f"NCCL ranks still running after {timeout_s} s")
        except Exception as e:
            print(f"# nccl {mode}: {_short(e)}", file=sys.stderr)
            done = []
            if os.path.exists(out_path):
                with open(out_path) as f:
                    done = json.load(f)
            return done + [dict(gpus=world, provider="nccl", mode=mode, check="n/a",
                                note=_short(e))]
        with open(out_path) as f:
            return json.load(f)


# ---- report -------------------------------------------------------------------------------------

def header(devs):
    names = sorted({torch.cuda.get_device_name(d) for d in devs})
    peer = {f"{a.index}->{b.index}": torch.cuda.can_device_access_peer(a, b)
            for a in devs for b in devs if a != b}
    return (f"# {len(devs)} x {', '.join(names)}; torch {torch.__version__}, "
            f"triton {triton.__version__}; peer access {peer}")


def print_table(rows):
    cells = {}
    for r in rows:
        value = r.get("median_us")
        text = "n/a" if value in (None, "") else f"{value:.1f}/{r['wall_us']:.1f}"
        if r.get("check") == "MISMATCH":
            text += " WRONG"
        cells[(r.get("M"), f"{r['provider']}:{r['mode']}")] = text
    cols = sorted({c for _, c in cells})
    Ms = sorted({m for m, _ in cells if m is not None})
    print("us per call, device median / host-inclusive wall (x on cuda:0, all GPUs done)")
    print(f"{'M':>6} " + " ".join(f"{c:>22}" for c in cols))
    for m in Ms:
        print(f"{m:>6} " + " ".join(f"{cells.get((m, c), '-'):>22}" for c in cols))
    for r in rows:
        if r.get("note"):
            print(f"# {r['provider']} {r['mode']} M={r.get('M')}: {r['note']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=min(torch.cuda.device_count(), 4))
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 64, 1024, 4096, 16384])
    parser.add_argument("--hidden", type=int, default=8192)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--providers", nargs="*", default=None,
                        help="subset of tp_copy tp_fused tp_staged loop_naive one_p2p nccl")
    parser.add_argument("--no-graph", action="store_true", help="eager timings only")
    parser.add_argument("--csv", help="write every row here")
    args = parser.parse_args()
    if args.gpus < 2 or torch.cuda.device_count() < args.gpus:
        sys.exit(f"needs --gpus >= 2 and that many visible GPUs; "
                 f"{torch.cuda.device_count()} visible")
    devs = [torch.device("cuda", i) for i in range(args.gpus)]
    torch.cuda.set_device(devs[0])
    modes = ["eager"] if args.no_graph else ["eager", "graph"]
    print(header(devs), flush=True)

    table, rows = providers(devs, args), []
    for M in args.rows:
        case = Case(devs, M, args.hidden, DTYPES[args.dtype])
        for name, (eager, graph, part) in table.items():
            for mode in modes:
                call = eager if mode == "eager" else graph
                if isinstance(call, str):
                    rows.append(dict(gpus=len(devs), provider=name, mode=mode, M=M,
                                     N=args.hidden, dtype=args.dtype, check="n/a", note=call))
                    continue
                rows.append(measure(case, name, call, mode, part, args))
                r = rows[-1]
                print(f"M={M:>6} {name:>10} {mode:>5}: {r.get('median_us', '-')} us device, "
                      f"{r.get('wall_us', '-')} us wall, {r['check']} {r['note']}", flush=True)
        del case
        sync_all(devs)
        torch.cuda.empty_cache()
    if not args.providers or "nccl" in args.providers:
        for mode in modes:
            rows += run_nccl(len(devs), args, mode)

    print_table(rows)
    if args.csv:
        def write(tmp):
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=FIELDS, restval="")
                writer.writeheader()
                writer.writerows(rows)
        write_atomic(args.csv, write)
        print(f"# wrote {args.csv}")


if __name__ == "__main__":
    main()
