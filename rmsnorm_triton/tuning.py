"""`rmsnorm-triton tune`: offline search for the fastest launch config of each workload.

For every hidden size x dtype pair x row bucket x fused add on/off, the candidates of
tune_space.py that compute the right answer are timed on this GPU; the fastest replaces the
heuristic's choice when it beats it by more than the noise. The fused add and the plain norm
share one entry (the fused add must equal the unfused steps bit for bit): where both forms of a
workload are tuned, the plain norm's result is written and the fused add's is reported only.
Results are merged into the table `pick_config` reads (config.cache_path), saved atomically
after every hidden size, so an interrupted run keeps what it measured. Kernels compile in
worker processes, ahead of the timing that needs them.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Optional

import torch
import triton

from . import ops
from .config import (
    LaunchConfig,
    cache_dir,
    cache_path,
    device_name,
    load_table,
    row_bucket,
    row_vectors,
    save_table,
    split_register_cap,
)
from .launcher import CachedLauncher
from .tune_space import (
    DTYPES,
    Case,
    Result,
    cfg_str,
    launch,
    make_inputs,
    short_error,
    tune_case,
)

DEFAULT_SIZES = (1024, 2048, 4096, 5120, 7168, 8192, 16384, 32768, 65536, 131072, 262144)
DEFAULT_PAIRS = ("bf16:bf16", "fp16:fp16", "bf16:fp32", "fp32:fp32")
DEFAULT_ROWS = (1, 64, 1024, 16384)
# Rough costs for the --dry-run estimate (H100 host, 16 cores).
COMPILE_S, TIME_S = 0.4, 0.06


# ---- ahead-of-time compilation -------------------------------------------------------------

class _Warmup:
    """Stands in for a kernel: `kernel[grid](*args)` compiles for those args, runs nothing."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def warm(*args, **meta):
            args = [a.dtype if isinstance(a, torch.Tensor) else a for a in args]
            self.kernel.warmup(*args, grid=grid, **meta)
        return warm


def _compile_in_worker(case: Case, cfg: LaunchConfig) -> Optional[str]:
    """In a worker process: compile what `launch` would run for this case (ops._launch on meta
    tensors, its kernels swapped for _Warmup) into Triton's on-disk cache, where the tuner's
    own launch then finds it."""
    launchers = [v for v in vars(ops).values() if isinstance(v, CachedLauncher)]
    saved = [(ln.fn, ln.enabled) for ln in launchers]
    try:
        for ln in launchers:
            ln.fn, ln.enabled = _Warmup(ln.fn), False
        p, w = make_inputs(case, "meta", rand=False)
        launch(p, w, cfg)
        return None
    except Exception as e:      # the tuner meets the same error when it launches, and drops it
        return f"{type(e).__name__}: {e}"[:200]
    finally:
        for ln, (fn, enabled) in zip(launchers, saved):
            ln.fn, ln.enabled = fn, enabled


def _spec(case: Case, cfg: LaunchConfig) -> tuple:
    """Cases that compile to the same kernel (Triton specializes ints == 1 and % 16 == 0; the
    row count also decides a split-row launch's register cap)."""
    rows = 1 if case.rows == 1 else 16 if case.rows % 16 == 0 else 0
    # The tuner's tensors are new and contiguous: aligned, rows n_cols apart (ops._launch).
    cap = split_register_cap(cfg, case.rows, case.x_dtype, case.out_dtype.itemsize,
                             case.x_dtype if case.fused else None) \
        if row_vectors(case.n_cols) else None
    return case.n_cols, rows, case.x_dtype, case.out_dtype, case.fused, cfg, cap


class Compiler:
    """Compiles every candidate in worker processes, ahead of the timing that needs it."""

    def __init__(self, workers: int):
        self.pool = None
        if workers > 1:
            try:
                self.pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
            except Exception as e:
                print(f"# compiling in this process ({e})", file=sys.stderr)
        self.pending: dict[int, list[Future]] = {}
        self.seen: set = set()

    def submit(self, n_cols: int, cases: list[Case]) -> None:
        if self.pool is None:
            return
        jobs = []
        for case in cases:
            for cfg in case.candidates():
                if _spec(case, cfg) not in self.seen:
                    self.seen.add(_spec(case, cfg))
                    jobs.append((case, cfg))
        try:
            self.pending[n_cols] = [self.pool.submit(_compile_in_worker, *j) for j in jobs]
        except Exception as e:
            print(f"# compiling in this process ({e})", file=sys.stderr)
            self.pool = None

    def wait(self, n_cols: int) -> None:
        for f in self.pending.pop(n_cols, []):
            try:
                f.result()
            except Exception:       # a dead worker: the kernel compiles in this process instead
                pass

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


# ---- the command -----------------------------------------------------------------------------

def plan_cases(args) -> list[Case]:
    buckets = list(dict.fromkeys(row_bucket(r) for r in args.rows))   # keys are buckets
    return [Case(n, b, x, o, f) for n in args.sizes for x, o in args.pairs for b in buckets
            for f in {"both": (False, True), "on": (True,), "off": (False,)}[args.fused]]


def _by_size(cases: list[Case]) -> dict[int, list[Case]]:
    groups: dict[int, list[Case]] = {}
    for c in cases:
        groups.setdefault(c.n_cols, []).append(c)
    return groups


def print_plan(cases: list[Case], args) -> None:
    n_timings, kernels = 0, set()
    print(f"plan: {len(cases)} cases = {len(args.sizes)} hidden sizes x {len(args.pairs)} dtype "
          f"pairs x {len(args.rows)} row buckets x fused add {args.fused}")
    for n, group in _by_size(cases).items():
        k0 = len(kernels)
        t = 0
        for c in group:
            cands = c.candidates()
            t += len(cands)
            kernels.update(_spec(c, cfg) for cfg in cands)
        n_timings += t
        print(f"  N={n:>7}: {len(group)} cases, {t} candidate timings, "
              f"{len(kernels) - k0} kernels to compile")
        seen = set()
        for c in group:
            form = (c.bucket, c.x_dtype.itemsize, c.out_dtype.itemsize)
            if form in seen:
                continue
            seen.add(form)
            cands = c.candidates()
            print(f"      rows {c.bucket:>5} ({c.rows} timed), {c.x_dtype.itemsize}-byte x, "
                  f"{c.out_dtype.itemsize}-byte out: "
                  + ", ".join(cfg_str(x) for x in cands))
    workers = max(1, args.workers)
    est = len(kernels) * COMPILE_S / workers + n_timings * TIME_S
    print(f"total: {n_timings} timings, {len(kernels)} kernels; roughly {est / 60:.0f} min on an "
          f"H100 with {workers} compile workers (less with a warm Triton cache); "
          f"budget --max-seconds {args.max_seconds:.0f}")
    print(f"writes: {cache_dir()}/<GPU name>__triton-{triton.__version__}.json")


class _Progress:
    def __init__(self, total: int):
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc="tune", unit="case", file=sys.stderr,
                            mininterval=1.0)
        except ImportError:
            self.bar = None
        self.n, self.total = 0, total

    def update(self, label: str) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=False)
            self.bar.update(1)
        else:
            print(f"[{self.n}/{self.total}] {label}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _us(v) -> str:
    return f"{v:8.2f}" if v is not None else f"{'-':>8}"


def _reported_only(case: Case, plain: frozenset) -> bool:
    """A fused-add case whose shared entry a plain-norm case of the run writes (`plain`: their
    keys): its result is reported, not written."""
    return case.fused and case.key in plain


def print_summary(results: list[Result], plain: frozenset = frozenset()) -> None:
    """plain: the entries a plain-norm case of this run wrote (a fused case there is reported
    only)."""
    name = {v: k for k, v in DTYPES.items()}
    print(f"\n{'N':>7} {'rows':>5} {'dtypes':<11} {'add':>3}  {'heuristic':<20} {'us':>8}  "
          f"{'best':<20} {'us':>8}  {'speedup':>7}  note")
    for r in results:
        c = r.case
        sp = f"{r.speedup:6.2f}x" if r.speedup is not None else f"{'-':>7}"
        shared = _reported_only(c, plain)
        note = "reported; the norm's entry applies" if shared else \
            "tuned" if r.chosen else "heuristic kept"
        if r.heuristic in r.dropped:
            note = f"HEURISTIC FAILED: {r.dropped[r.heuristic]}"
        elif r.dropped:
            note += f"; {len(r.dropped)} dropped"
        print(f"{c.n_cols:>7} {c.bucket:>5} {name[c.x_dtype] + '->' + name[c.out_dtype]:<11} "
              f"{int(c.fused):>3}  {cfg_str(r.heuristic):<20} {_us(r.heuristic_us)}  "
              f"{cfg_str(r.best):<20} {_us(r.best_us)}  {sp}  {note}")
    sps = [r.speedup for r in results
           if r.speedup and not _reported_only(r.case, plain)]
    if sps:
        g = math.exp(sum(map(math.log, sps)) / len(sps))
        written = sum(r.chosen is not None and not _reported_only(r.case, plain)
                      for r in results)
        print(f"geometric mean speedup over the heuristic: {g:.3f}x over {len(sps)} cases; "
              f"{written} table entries")


def run_tune(args) -> int:
    cases = plan_cases(args)
    if args.dry_run:
        print_plan(cases, args)
        return 0
    if not torch.cuda.is_available():
        print("rmsnorm-triton tune needs a CUDA GPU (torch.cuda.is_available() is False): it "
              "times kernels on the GPU it tunes for. `tune --dry-run` prints the plan.",
              file=sys.stderr)
        return 2
    device = torch.device("cuda", torch.cuda.current_device())
    gpu = device_name(device.index)
    path = cache_path(gpu)
    table = {} if args.fresh else load_table(path, gpu)
    print(f"tuning for {gpu}, triton {triton.__version__}: {len(cases)} cases -> {path}",
          flush=True)
    groups = _by_size(cases)
    compiler = Compiler(args.workers)
    for n, group in groups.items():
        compiler.submit(n, group)
    results, progress, t0 = [], _Progress(len(cases)), time.time()
    todo = list(cases)
    plain = frozenset(c.key for c in cases if not c.fused)
    try:
        for n, group in groups.items():
            if time.time() - t0 > args.max_seconds:
                break
            compiler.wait(n)
            for case in group:
                if time.time() - t0 > args.max_seconds:
                    break
                todo.remove(case)
                try:
                    r = tune_case(case, device, args.min_gain)
                except Exception as e:      # out of memory for its inputs, say: go on
                    print(f"# {case.label}: skipped ({short_error(e)})", file=sys.stderr)
                    continue
                results.append(r)
                if _reported_only(case, plain):
                    pass        # reported only: the plain norm's result takes the shared entry
                elif r.chosen is not None:
                    table[case.key] = r.chosen
                else:
                    table.pop(case.key, None)
                progress.update(f"{case.label}: {cfg_str(r.chosen or r.heuristic)}")
            save_table(path, gpu, table)
    finally:
        progress.close()
        compiler.close()
        if results:     # interrupted (Ctrl-C) mid-size: keep what was measured
            save_table(path, gpu, table)
    print_summary(results, plain)
    print(f"wrote {len(table)} entries to {path}")
    if todo:
        sizes = list(dict.fromkeys(c.n_cols for c in todo))
        print(f"stopped by --max-seconds {args.max_seconds:.0f}: {len(todo)} cases left; "
              f"continue with --sizes {' '.join(map(str, sizes))}")
    return 0


def _ints(s: str) -> list[int]:
    return [int(p) for p in s.split(",") if p]


def _pairs(s: str) -> list[tuple[torch.dtype, torch.dtype]]:
    out = []
    for p in s.split(","):
        x, _, o = p.replace("->", ":").partition(":")
        if x not in DTYPES or o not in DTYPES:
            raise argparse.ArgumentTypeError(f"dtype pair must look like bf16:fp32, got {p!r}")
        out.append((DTYPES[x], DTYPES[o]))
    return out


class _Flatten(argparse.Action):
    """`--sizes 1024 2048` and `--sizes 1024,2048` both work."""

    def __call__(self, parser, ns, values, option_string=None):
        setattr(ns, self.dest, [v for chunk in values for v in chunk])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", nargs="+", type=_ints, action=_Flatten,
                   default=list(DEFAULT_SIZES), metavar="N", help="hidden sizes (default: "
                   + " ".join(map(str, DEFAULT_SIZES)) + ")")
    p.add_argument("--pairs", nargs="+", type=_pairs, action=_Flatten,
                   default=_pairs(",".join(DEFAULT_PAIRS)), metavar="X:OUT",
                   help="input:output dtypes (default: " + " ".join(DEFAULT_PAIRS) + ")")
    p.add_argument("--rows", nargs="+", type=_ints, action=_Flatten,
                   default=list(DEFAULT_ROWS), metavar="M",
                   help="row buckets, powers of two (default: "
                        + " ".join(map(str, DEFAULT_ROWS)) + ")")
    p.add_argument("--fused", choices=("both", "on", "off"), default="both",
                   help="tune the fused residual add, plain norm, or both (default). The two "
                        "share one entry; with both, the plain norm's result is written")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--max-seconds", type=float, default=500.0,
                   help="stop starting cases after this long; what is done is saved "
                        "(default 500)")
    p.add_argument("--min-gain", type=float, default=0.02,
                   help="keep the heuristic unless a candidate is this much faster "
                        "(default 0.02: timing noise)")
    p.add_argument("--fresh", action="store_true",
                   help="start from an empty table instead of merging into the existing one")
    p.add_argument("--workers", type=int, default=max(1, min(16, (os.cpu_count() or 2) - 2)),
                   help="compile processes (default: cores - 2, at most 16)")
