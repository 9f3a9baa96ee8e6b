"""`rmsnorm-triton bench` (and bench/bench_rmsnorm.py): ours against the peers installed.

One row per (provider, shape, dtypes, op, mode): microseconds, GB/s and % of a copy ceiling
measured in the same process, and for our rows the throughput ratio to the fastest peer. Then
the Performance targets are checked and printed as PASS/MISS with their numbers.

Modes: `eager` = median device time per call (timing.eager_us: do_bench's method, L2 flushed,
the GPU held until the call is queued); `graph` = per-call time
inside one CUDA graph (M <= 1024); `host` = wall time per call of a back-to-back eager loop,
host overhead included (M <= 64), every provider's loops and an empty Triton kernel's taking
turns in the same rounds (timing.host_rounds_us), after the case's other timings. A provider
that is missing, refuses a case or fails is reported in the row's note and never stops the run.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from dataclasses import dataclass, fields
from typing import Callable, Optional

import torch

from . import providers as P
from .atomic import write_text_atomic
from .config import cache_path, device_name, tuned_table
from .report import markdown, plot, targets
from .timing import (
    copy_ceiling_gbps,
    eager_us,
    empty_launch_calls,
    empty_launch_us,
    graph_us,
    header_lines,
    host_rounds_us,
    n_sets,
    rmsnorm_bytes,
    scrub_l2,
)

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
SHORT = {BF16: "bf16", FP16: "fp16", FP32: "fp32"}


@dataclass(frozen=True)
class Variant:
    x: torch.dtype
    out: torch.dtype
    res: Optional[torch.dtype] = None      # set: fused residual add
    w: Optional[torch.dtype] = None        # the weight's, if not x's

    @property
    def op(self) -> str:
        return "rms_norm" if self.res is None else "fused_add"

    @property
    def weight(self) -> torch.dtype:
        return self.w or self.x

    @property
    def dtypes(self) -> str:
        s = f"{SHORT[self.x]}->{SHORT[self.out]}"
        s = s if self.res is None else f"{s} res {SHORT[self.res]}"
        return s if self.w is None else f"{s} w {SHORT[self.w]}"


VARIANTS = {
    "bf16": Variant(BF16, BF16), "fp16": Variant(FP16, FP16),
    "bf16-fp32": Variant(BF16, FP32), "fp16-fp32": Variant(FP16, FP32),
    "add-bf16": Variant(BF16, BF16, BF16), "add-fp32": Variant(BF16, BF16, FP32),
    # An fp32 weight with 16-bit activations (norms kept in fp32, as some checkpoints and
    # mixed-precision setups have them): run when named, not part of --full.
    "bf16-w32": Variant(BF16, BF16, w=FP32), "add-bf16-w32": Variant(BF16, BF16, BF16, FP32),
}
FULL_VARIANTS = ("bf16", "fp16", "bf16-fp32", "fp16-fp32", "add-bf16", "add-fp32")
# The shapes the issue's targets name: bandwidth, mid-size and decode.
KEY_SHAPES = [(4096, 4096), (16384, 8192), (4096, 32768), (2048, 65536), (512, 262144),
              (1024, 4096), (1024, 8192), (1, 8192), (8, 4096), (64, 8192)]
QUICK = ([("bf16", s) for s in KEY_SHAPES]
         + [("add-bf16", (4096, 8192)), ("add-bf16", (8, 4096)), ("add-fp32", (4096, 8192)),
            ("bf16-fp32", (4096, 8192))])
FULL_M = (1, 8, 64, 512, 1024, 4096, 16384)
FULL_N = (2048, 4096, 5120, 7168, 8192, 16384, 65536, 262144)
MAX_TRAFFIC = 2e9           # bytes per call; larger shapes only measure the same bandwidth again
GRAPH_MAX_M, HOST_MAX_M = 1024, 64
EMPTY_LAUNCH = " empty"         # time_host's name for the empty kernel (no provider's name)
EPS = 1e-6
# Loose on purpose (a few ulps of the output): it catches a wrong peer call, not rounding.
CHECK_TOL = {BF16: 1.6e-2, FP16: 2e-3, FP32: 1e-4}


@dataclass
class Row:
    provider: str
    M: int
    N: int
    dtypes: str
    op: str
    mode: str
    us: Optional[float] = None
    gbps: Optional[float] = None
    pct: Optional[float] = None
    ratio: Optional[float] = None       # ours only: best peer time / our time (>1: ours faster)
    note: str = ""
    floor_us: Optional[float] = None    # host rows: an empty Triton launch in the same rounds


def plan(args) -> list[tuple[str, tuple[int, int]]]:
    names = args.variants or (list(FULL_VARIANTS) if args.full else None)
    if args.shapes:
        shapes = args.shapes
    elif args.full:
        shapes = sorted(set(KEY_SHAPES) | {(m, n) for m in FULL_M for n in FULL_N})
    else:
        return [c for c in QUICK if names is None or c[0] in names]
    cases = [(v, s) for v in (names or ["bf16"]) for s in shapes]
    return [(v, (m, n)) for v, (m, n) in cases
            if rmsnorm_bytes(m, n, VARIANTS[v].x, VARIANTS[v].weight, VARIANTS[v].out,
                             VARIANTS[v].res) <= MAX_TRAFFIC]


def _rel_err(got, want) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30)).item()


class Case:
    """Input sets of one (variant, M, N), identical for every provider: 0.5 + 2 * randn."""

    def __init__(self, v: Variant, M: int, N: int, device="cuda"):
        self.v, self.M, self.N = v, M, N
        self.nbytes = rmsnorm_bytes(M, N, v.x, v.weight, v.out, v.res)
        k = n_sets(self.nbytes) if device == "cuda" else 1

        def rand(shape, dtype):
            return (0.5 + 2 * torch.randn(shape, device=device)).to(dtype)
        self.w = (1 + 0.1 * torch.randn(N, device=device)).to(v.weight)
        self.xs = [rand((M, N), v.x) for _ in range(k)]
        self.rs0 = [rand((M, N), v.res) for _ in range(k)] if v.res else []
        self.rs = [r.clone() for r in self.rs0]
        self.host_calls = {}        # provider -> its calls, timed together by time_host
        if v.res is None:
            self.ref = (torch.nn.functional.rms_norm(self.xs[0].float(), (N,), self.w.float(),
                                                     EPS), None)
        else:
            s = (self.xs[0].float() + self.rs0[0].float()).to(v.res)
            y = torch.nn.functional.rms_norm(s.float(), (N,), self.w.float(), EPS)
            self.ref = (y, s)

    def reset(self):
        """In-place providers grow the residual; each provider starts from the same values."""
        for r, r0 in zip(self.rs, self.rs0):
            r.copy_(r0)

    def calls(self, build) -> list[Callable]:
        rs = self.rs or [None] * len(self.xs)
        return [build(x, self.w, r) for x, r in zip(self.xs, rs)]

    def check(self, call) -> Optional[str]:
        """None if the provider's first result matches fp32 math, else what is wrong."""
        y, r = call()
        if y.dtype != self.v.out:
            return f"wrong output dtype {y.dtype}"
        err = _rel_err(y, self.ref[0])
        if not err <= CHECK_TOL[self.v.out]:
            return f"wrong result: rel err {err:.2e}"
        if self.v.res is not None:
            if r.dtype != self.v.res:
                return f"wrong residual dtype {r.dtype}"
            err = _rel_err(r, self.ref[1])
            if not err <= CHECK_TOL[self.v.res]:
                return f"wrong residual: rel err {err:.2e}"
        return None

    def free(self):
        self.xs = self.rs = self.rs0 = self.ref = self.host_calls = None


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:110]


def measure(case: Case, prov: str, build, ceiling: float, args) -> list[Row]:
    v, M, N = case.v, case.M, case.N
    modes = ["eager"] + (["graph"] if M <= GRAPH_MAX_M else []) + (["host"] if M <= HOST_MAX_M
                                                                     else [])
    rows = [Row(prov, M, N, v.dtypes, v.op, m) for m in modes]
    try:
        case.reset()
        calls = case.calls(build)
        bad = case.check(calls[0])
        case.reset()
    except Exception as e:          # a peer's refusal (too large, dtype) or a failure
        bad = _short(e)
    if bad:
        for r in rows:
            r.note = bad
        return rows
    timers = {"eager": lambda: eager_us(calls, args.warmup, args.rep),
              "graph": lambda: graph_us(calls)}
    for r in rows:
        if r.mode == "host":            # timed with the other providers' loops: time_host
            case.host_calls[prov] = calls
            continue
        try:
            scrub_l2()      # no provider reads inputs that the one before left protected in L2
            _set_time(r, timers[r.mode](), case, ceiling)
        except Exception as e:
            r.note = _short(e)
    return rows


def _set_time(r: Row, us: float, case: Case, ceiling: float) -> None:
    r.us = us
    r.gbps = case.nbytes / (us * 1e-6) / 1e9
    r.pct = 100 * r.gbps / ceiling


def time_host(case: Case, rows: list[Row], ceiling: float) -> None:
    """The host rows of one case: every measured provider's loop and an empty Triton kernel's
    take turns in the same rounds, so that a drift of the host's speed between providers'
    timings does not decide their ratio."""
    host = {r.provider: r for r in rows if r.mode == "host" and r.provider in case.host_calls}
    if not host:
        return
    try:
        us = host_rounds_us({**{p: case.host_calls[p] for p in host},
                             EMPTY_LAUNCH: empty_launch_calls()})
    except Exception as e:          # one provider's loop failed: time each on its own
        us = {}
        for p in host:
            try:
                us[p] = host_rounds_us({p: case.host_calls[p]})[p]
            except Exception as e1:
                host[p].note = _short(e1)
        print(f"# {case.M}x{case.N} {case.v.dtypes}: host loops timed apart ({_short(e)})",
              flush=True)
    for p, r in host.items():
        if p in us:
            _set_time(r, us[p], case, ceiling)
            r.floor_us = us.get(EMPTY_LAUNCH)


def fill_ratios(rows: list[Row]) -> None:
    for mode in {r.mode for r in rows}:
        same = [r for r in rows if r.mode == mode and r.us is not None]
        ours = [r for r in same if r.provider == "ours"]
        peers = [r.us for r in same if r.provider != "ours"]
        if ours and peers:
            ours[0].ratio = min(peers) / ours[0].us


COLS = f"{'provider':<10} {'M':>6} {'N':>7} {'dtypes':<20} {'op':<9} {'mode':<5} " \
       f"{'us':>9} {'GB/s':>7} {'%ceil':>6} {'ours/best':>9}  note"


def fmt(r: Row) -> str:
    def num(x, f):
        return format(x, f) if x is not None else "-"
    return (f"{r.provider:<10} {r.M:>6} {r.N:>7} {r.dtypes:<20} {r.op:<9} {r.mode:<5} "
            f"{num(r.us, '9.2f'):>9} {num(r.gbps, '7.0f'):>7} {num(r.pct, '6.1f'):>6} "
            f"{num(r.ratio, '9.2f'):>9}  {r.note}").rstrip()


def run_bench(args) -> int:
    if not torch.cuda.is_available():
        print("rmsnorm-triton bench needs a CUDA GPU: torch.cuda.is_available() is False "
              "(every number is a GPU time against that GPU's copy ceiling).", file=sys.stderr)
        return 2
    P.prepare_compile()
    cases = plan(args)
    names = args.providers or list(P.PROVIDERS)
    unknown = [n for n in names if n not in P.PROVIDERS]
    if unknown:
        print(f"unknown providers {unknown}; known: {list(P.PROVIDERS)}", file=sys.stderr)
        return 2
    makers, missing = {}, {}
    for n in names:
        try:
            makers[n] = P.PROVIDERS[n]()
        except Exception as e:      # not installed, or fails to import
            missing[n] = _short(e)

    ceiling = copy_ceiling_gbps()
    empty = empty_launch_us()
    head = header_lines(ceiling, empty)
    gpu = device_name(torch.cuda.current_device())
    head.append(f"tuned configs in use: {len(tuned_table(gpu))} ({cache_path(gpu)})")
    kind = "full" if args.full else "custom" if args.shapes else "quick"
    head.append(f"cases: {len(cases)} ({kind}); providers: {', '.join(makers) or 'none'}"
                + "".join(f"; {n} skipped ({why})" for n, why in missing.items()))
    print("\n".join(head), flush=True)
    print(COLS, flush=True)

    for path in (args.csv, args.markdown, args.plot):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Rows stream into a partial file (kept if the run is cut short); the CSV appears whole.
    out = open(args.csv + ".partial", "w", newline="") if args.csv else None
    writer = csv.writer(out) if out else None
    if writer:
        writer.writerow([f.name for f in fields(Row)])
    t0, rows = time.time(), []
    with torch.no_grad():
        for i, (vname, (M, N)) in enumerate(cases):
            if args.max_seconds and time.time() - t0 > args.max_seconds:
                print(f"# stopped after {args.max_seconds:.0f} s: {len(cases) - i} cases left",
                      flush=True)
                break
            v = VARIANTS[vname]
            try:
                case = Case(v, M, N)
            except Exception as e:      # out of memory for the inputs, say
                print(f"# {M}x{N} {v.dtypes}: skipped ({_short(e)})", flush=True)
                torch.cuda.empty_cache()
                continue
            block = []
            for n, make in makers.items():
                try:
                    build = make(v)
                except Exception as e:  # P.Unsupported: this provider has no such op/dtype
                    block.append(Row(n, M, N, v.dtypes, v.op, "eager", note=_short(e)))
                    continue
                block += measure(case, n, build, ceiling, args)
            time_host(case, block, ceiling)
            case.free()
            try:
                torch.cuda.empty_cache()
            except Exception as e:      # a peer left a sticky CUDA error: report, go on
                print(f"# after {M}x{N} {v.dtypes}: {_short(e)}", flush=True)
            fill_ratios(block)
            for r in block:
                print(fmt(r), flush=True)
                if writer:
                    writer.writerow([getattr(r, f.name) for f in fields(Row)])
            if out:
                out.flush()
            rows += block
    if out:
        out.close()
        os.replace(args.csv + ".partial", args.csv)

    summary = targets(rows, empty)
    print("\n" + "\n".join(summary), flush=True)
    if args.markdown:
        write_text_atomic(args.markdown, markdown(rows, head, summary))
        print(f"markdown: {args.markdown}")
    if args.plot:
        print(plot(rows, args.plot, head[0]))
    return 0


def _shape(s: str) -> tuple[int, int]:
    m, n = s.lower().split("x")
    return int(m), int(n)


def _list(conv):
    return lambda s: [conv(p) for p in s.split(",") if p]


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true",
                   help="the issue's key shapes, bf16, plus a few dtype/fused-add rows "
                        "(default; about 2-3 minutes on an H100)")
    g.add_argument("--full", action="store_true",
                   help=f"M in {FULL_M} x N in {FULL_N}, every dtype variant "
                        "(long: run it in pieces with --variants or --max-seconds)")
    p.add_argument("--shapes", type=_list(_shape), metavar="MxN,...",
                   help="only these shapes, e.g. 4096x4096,1x8192")
    p.add_argument("--variants", type=_list(str), metavar="NAME,...",
                   help=f"dtype/op variants: {', '.join(VARIANTS)}")
    p.add_argument("--providers", type=_list(str), metavar="NAME,...",
                   help="default: all of " + ", ".join(P.PROVIDERS))
    p.add_argument("--csv", metavar="PATH", help="write every row (written as the run goes)")
    p.add_argument("--markdown", metavar="PATH", help="write a table for bench/RESULTS.md")
    p.add_argument("--plot", metavar="PNG",
                   help="plot %% of the copy ceiling per case (needs matplotlib)")
    p.add_argument("--warmup", type=int, default=10, help="eager timer warmup, ms (default 10)")
    p.add_argument("--rep", type=int, default=50,
                   help="eager timer repetition time, ms (default 50)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="start no new case after this many seconds; the summary still prints")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench_rmsnorm", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run_bench(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
