"""What `rmsnorm-triton tune` searches, and how it measures one workload.

A workload (Case) is a hidden size, a row bucket, input and output dtypes and the fused add on
or off. Its candidates are the legal launch configs around the heuristic's choice; each one is
launched through the forward's own launcher, checked against the torch reference (every output
element: out starts as NaN) and then timed on the GPU.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch
import triton

from . import ops
from .config import (
    INTERPRET,
    MAX_BLOCK_M,
    MAX_SINGLE_TILE_N,
    MAX_SPLITS,
    MAX_TILE_ELEMS,
    LaunchConfig,
    heuristic_config,
    table_key,
)
from .reference import fused_add_rms_norm_reference, rms_norm_reference
from .timing import eager_us, graph_us, n_sets, rmsnorm_bytes, scrub_l2
from .validate import check_inputs

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
WARPS = (4, 8, 16, 32)
# Looped rows read x twice (the second time from L2): worth trying where a whole row makes a
# big tile; from 4K tiles (rows of 2049 elements and more): the heuristic loops 16-bit x to a
# 4-byte output from 4096 columns. 32 warps halve the rows in flight, so that L2 still holds a
# row's first pass for its second (the heuristic's pick at 16385-18432 columns).
LOOP_MIN_N, CHUNKS, CHUNK_WARPS = 4096, (2048, 4096, 8192, 16384), (8, 16, 32)
# Split-row slices: 16 warps too, the heuristic's pick for 16-bit x to fp32 in 8192 slices.
SLICES, SLICE_WARPS = (2048, 4096, 8192, 16384), (4, 8, 16)
# Below this many rows a row per program leaves SMs idle, so splitting rows is worth a try;
# above it the split-row kernel only adds its exchange of partial sums.
SPLIT_MAX_BUCKET = 512
# A single tile lives in registers: past 64K elements per program even 32 warps would hold more
# than 64 fp32 values per thread.
# Packing more rows than this into a program only lengthens it; 16K elements already fill it.
MULTI_ROW_TILE = 16384
# Fp32 values per thread: below 4 a thread cannot issue a 16-byte load of 16-bit data (more
# warps only add reduction steps); above 64 the tile spills out of registers.
MIN_PER_THREAD, MAX_PER_THREAD = 4, 64
# Row buckets are timed with at most this much traffic per call: more rows only add waves of
# the same work, and 16K rows of 256K elements would not fit in memory.
MEASURE_BYTES = 1 << 30
# Buckets up to here are launch-bound: time them inside a CUDA graph, as they run in decode.
GRAPH_MAX_BUCKET = 1024
EPS = 1e-6
# Relative error against the fp32-math reference, by output dtype: about one ulp.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@dataclass(frozen=True)
class Case:
    n_cols: int
    bucket: int
    x_dtype: torch.dtype
    out_dtype: torch.dtype
    fused: bool

    @property
    def key(self) -> str:
        """The table entry this case writes: the plain norm's, which the fused add takes too
        (config.pick_config), so that the two stay equal bit for bit."""
        return table_key(self.n_cols, self.bucket, self.x_dtype, self.out_dtype, False)

    @property
    def nbytes_per_row(self) -> int:
        return rmsnorm_bytes(1, self.n_cols, self.x_dtype, None, self.out_dtype,
                             self.x_dtype if self.fused else None)

    @property
    def rows(self) -> int:
        cap = max(1, MEASURE_BYTES // self.nbytes_per_row)
        return min(self.bucket, 1 << (cap.bit_length() - 1))    # a power of two, as buckets

    def candidates(self, on_gpu: bool = not INTERPRET) -> list[LaunchConfig]:
        """candidates() for this case (the tuner's residual has x's dtype)."""
        return candidates(self.n_cols, self.bucket, self.x_dtype.itemsize, on_gpu,
                          self.out_dtype.itemsize)

    @property
    def label(self) -> str:
        name = {v: k for k, v in DTYPES.items()}
        return (f"N={self.n_cols} rows={self.bucket} {name[self.x_dtype]}->"
                f"{name[self.out_dtype]}{' +add' if self.fused else ''}")


def cfg_str(c: Optional[LaunchConfig]) -> str:
    if c is None:
        return "-"
    how = f"split{c.splits}" if c.splits > 1 else "loop" if c.looped else "tile"
    return f"{c.block_m}x{c.block_n} w{c.num_warps} {how}"


def candidates(n_cols: int, bucket: int, x_itemsize: int, on_gpu: bool = not INTERPRET,
               out_itemsize: int = 0) -> list[LaunchConfig]:
    """The heuristic's choice first, then every legal config around it. Split-row configs only
    on a GPU (the interpreter runs programs one at a time; a split row waits on its siblings)."""
    found = [heuristic_config(n_cols, bucket, x_itemsize, on_gpu, out_itemsize)]

    def add(c):
        if c not in found:
            found.append(c)

    def fits(elems, warps):
        return MIN_PER_THREAD <= elems / (32 * warps) <= MAX_PER_THREAD

    full = triton.next_power_of_2(n_cols)
    block_m = 1
    while (block_m * full <= MAX_TILE_ELEMS and block_m <= min(bucket, MAX_BLOCK_M)
           and (block_m == 1 or block_m * full <= MULTI_ROW_TILE)):
        for w in WARPS:
            if fits(block_m * full, w):
                add(LaunchConfig(block_m, full, w, looped=False))
        block_m *= 2
    for chunk in CHUNKS:
        if full >= LOOP_MIN_N and chunk < full:     # one chunk would only read the row twice
            for w in CHUNK_WARPS:
                if fits(chunk, w):
                    add(LaunchConfig(1, chunk, w, looped=True))
    if on_gpu and (full > MAX_SINGLE_TILE_N or bucket <= SPLIT_MAX_BUCKET):
        for sl in SLICES:
            if sl < full and triton.cdiv(n_cols, sl) <= MAX_SPLITS:
                for w in SLICE_WARPS:
                    if fits(sl, w):
                        add(LaunchConfig(1, sl, w, looped=False,
                                         splits=triton.cdiv(n_cols, sl)))
    return found


def launch(p, weight, cfg: LaunchConfig) -> None:
    """The forward's own launcher with an explicit config instead of pick_config's."""
    ops._launch(p, EPS, 0.0, False, False, cfg)


def make_inputs(case: Case, device, rand: bool = True):
    """check_inputs' views of one input set: x, residual (fused), the weight, out."""
    shape = (case.rows, case.n_cols)

    def make(dtype):
        if rand:
            return (0.5 + 2 * torch.randn(shape, device=device)).to(dtype)
        return torch.empty(shape, dtype=dtype, device=device)
    w = (1 + 0.1 * torch.randn(case.n_cols, device=device)).to(case.x_dtype) if rand \
        else torch.empty(case.n_cols, dtype=case.x_dtype, device=device)
    out = None if device == "meta" else torch.empty(shape, dtype=case.out_dtype, device=device)
    # Meta tensors share address 0, which check_inputs would call overlapping: no out= there.
    p = check_inputs(make(case.x_dtype), w, residual=make(case.x_dtype) if case.fused else None,
                     out=out, out_dtype=case.out_dtype if out is None else None, eps=EPS)
    return p, w


class Workload:
    """Input sets of one case and the reference that every candidate must reproduce."""

    def __init__(self, case: Case, device):
        self.case = case
        k = n_sets(case.rows * case.nbytes_per_row) if device.type == "cuda" else 1
        self.sets, ws = zip(*(make_inputs(case, device) for _ in range(k)))
        self.w = ws[0]
        p = self.sets[0]
        if case.fused:
            self.res0 = p.residual.clone()
            self.ref = fused_add_rms_norm_reference(p.x, self.res0.clone(), self.w, EPS,
                                                    out_dtype=case.out_dtype)
        else:
            self.ref = (rms_norm_reference(p.x, self.w, EPS, out_dtype=case.out_dtype), None)

    def verify(self, cfg: LaunchConfig) -> Optional[str]:
        """None if cfg writes the reference's result (every element: out starts as NaN)."""
        p = self.sets[0]
        if self.case.fused:
            p.residual.copy_(self.res0)
        p.out.fill_(float("nan"))
        launch(p, self.w, cfg)
        for got, want in zip((p.out, p.residual), self.ref):
            if want is None:
                continue
            err = ((got.float() - want.float()).norm() / want.float().norm()).item()
            if not err <= TOL[got.dtype]:
                return f"wrong result: rel err {err:.2e}"
        return None

    def time_us(self, cfg: LaunchConfig) -> float:
        calls = [functools.partial(launch, p, self.w, cfg) for p in self.sets]
        # Candidates share these inputs: a looped one loads them evict_last, and those lines
        # outlive the timers' flush, so the next candidate would read part of them from L2.
        scrub_l2()
        if self.case.bucket <= GRAPH_MAX_BUCKET:
            return graph_us(calls, target_ms=2.0, max_calls=500)
        return eager_us(calls, warmup=5, rep=20)


@dataclass
class Result:
    case: Case
    heuristic: LaunchConfig
    heuristic_us: Optional[float]
    best: Optional[LaunchConfig]
    best_us: Optional[float]
    chosen: Optional[LaunchConfig]      # None: keep the heuristic (no table entry)
    timed: int
    dropped: dict

    @property
    def speedup(self) -> Optional[float]:
        """Heuristic time / time of what the table now gives (1.0 when the heuristic stays)."""
        if self.heuristic_us is None:
            return None
        return self.heuristic_us / self.best_us if self.chosen is not None else 1.0


def short_error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:160]


def tune_case(case: Case, device, min_gain: float) -> Result:
    cands = case.candidates()
    work = Workload(case, device)
    times, dropped = {}, {}
    for cfg in cands:
        try:
            why = work.verify(cfg)
            if why is None:
                times[cfg] = work.time_us(cfg)
        except Exception as e:
            why = short_error(e)
        if why:
            dropped[cfg] = why
    heur = cands[0]
    best = min(times, key=times.get, default=None)
    heur_us, best_us = times.get(heur), times.get(best)
    if best is None or best == heur:
        chosen = None
    elif heur_us is None or best_us < heur_us * (1 - min_gain):
        chosen = best
    else:
        chosen = None
    return Result(case, heur, heur_us, best, best_us, chosen, len(times), dropped)
