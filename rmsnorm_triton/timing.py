"""Measuring tools shared by `rmsnorm-triton tune` and `bench`: the bytes model, the copy ceiling,
device-time medians, per-call times inside a CUDA graph, and an empty Triton kernel as the yardstick
for launch cost. bench/bench_utils.py re-exports them for the scripts.

Every timer takes a list of zero-argument calls (one per input set) and cycles through them, so
that inputs smaller than the L2 cache are not timed hot from the previous call (see `n_sets`);
each call's result is kept until its set comes round again, so new outputs rotate too (`_cycle`).
Nothing here is imported by the forward path.
"""
from __future__ import annotations

import datetime
import functools
import itertools
import platform
import statistics
import time
from typing import Callable, Sequence

import torch
import triton
import triton.language as tl

Call = Callable[[], object]

# H100's L2 is 50 MB; used only when the device does not report its own.
DEFAULT_L2_BYTES = 50 * 2**20
MAX_SETS = 64


def rmsnorm_bytes(M, N, x_dtype, w_dtype, out_dtype, residual_dtype=None) -> int:
    """Bytes an ideal kernel moves: read x, write out, read the weight once; with the fused add,
    also read and write the residual. rstd and other side outputs are not counted."""
    per_elem = x_dtype.itemsize + out_dtype.itemsize
    if residual_dtype is not None:
        per_elem += 2 * residual_dtype.itemsize
    return M * N * per_elem + (N * w_dtype.itemsize if w_dtype is not None else 0)


def l2_bytes() -> int:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return int(getattr(props, "L2_cache_size", 0) or DEFAULT_L2_BYTES)


def n_sets(bytes_per_call: int, l2: int | None = None) -> int:
    """How many input sets to rotate through so that the sets together span twice the L2 and each
    call finds its inputs evicted. Capped: the smallest decode shapes stay L2-resident, which is
    also where they live in a real model (the previous kernel just wrote them)."""
    l2 = l2 or l2_bytes()
    if bytes_per_call >= 2 * l2:
        return 1
    return max(1, min(MAX_SETS, -(-2 * l2 // max(bytes_per_call, 1))))


def _cycle(calls: Sequence[Call]) -> Call:
    """One call after another, each call's result kept until that call comes round again.

    A provider allocates its output, and dropping it at once would hand the next call the same
    freed block: every call would write one address range, whose dirty lines stay in L2 (a
    CUDA graph's pool reuses it within the capture too). Kept, outputs rotate over as many
    buffers as the inputs, as in a model, where the next kernel reads a norm's output and its
    memory is written again only after other traffic has gone through L2."""
    held: list = [None] * len(calls)
    slots = itertools.cycle(range(len(calls)))

    def call():
        i = next(slots)
        held[i] = None          # freed first: call i writes into the block it wrote last time
        held[i] = calls[i]()
    return call


_FLUSH_BYTES = 256 * 2**20      # do_bench's L2 flush: a memset of this size before each call
# The longest hold: a call whose host path takes longer than half of it still has part of its
# host time counted (no provider measured comes near: Liger's slowest eager call took ~0.4 ms).
_MAX_HOLD_US = 5000.0


def eager_us(calls: Sequence[Call], warmup: int = 10, rep: int = 50) -> float:
    """Median device time of one eager call after an L2 flush, in microseconds: the host's
    launch cost does not show (`host_us` is the timer that includes it).

    triton's do_bench (the same 256 MB memset before each call, warmup and rep in ms, the
    median), with one step added: after the flush a sleep kernel holds the GPU for longer than
    the call's host path takes, so the call is queued before its start event runs. Under
    do_bench alone, a provider whose host path outlasts the flush had that host time counted as
    its device time, in some processes and not others: torch.compile at 1 x 4096 bf16 measured
    5.3 us in one full grid and 64 us in another (bench/RESULTS.md).

    The flush, the hold and the events are on the current GPU: a call that also works on other
    GPUs must make the current one wait for them (bench/tp_wide_out.py does). A call that
    synchronizes with the host cannot be held, and its host time still counts."""
    fn = _cycle(calls)
    fn()
    torch.cuda.synchronize()
    dev = torch.cuda.current_device()
    flush = _flush_buffer(dev)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    start.record()
    for _ in range(5):
        flush.zero_()
        fn()
    end.record()
    host_us_per_call = (time.perf_counter() - t0) * 1e6 / 5
    end.synchronize()
    estimate_ms = max(start.elapsed_time(end) / 5, 1e-3)
    hold_us = min(2 * host_us_per_call + 20, _MAX_HOLD_US)
    hold_cycles = int(hold_us * _sleep_cycles_per_us(dev))
    for _ in range(max(1, int(warmup / estimate_ms))):
        fn()
    n = max(10, int(rep / (estimate_ms + hold_us * 1e-3)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends):
        flush.zero_()
        torch.cuda._sleep(hold_cycles)
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e3


@functools.cache
def _flush_buffer(dev: int) -> torch.Tensor:
    """The flush's buffer on GPU `dev` (the current one), kept for the process."""
    return torch.empty(_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")


@functools.cache
def _sleep_cycles_per_us(dev: int) -> float:
    """torch.cuda._sleep spins for a number of clock cycles: how many take a microsecond on GPU
    `dev`, the current one (timed once; the hold only needs to outlast the host)."""
    cycles = 2_000_000
    torch.cuda._sleep(1000)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return cycles / max(start.elapsed_time(end) * 1e3, 1.0)


def host_rounds_us(call_sets: dict, n: int = 1000, repeats: int = 7) -> dict:
    """Wall time per call of n back-to-back eager calls, for each entry of `call_sets`: what an
    eager decode loop pays, host overhead included (max of host and device time per call). The
    median of `repeats` loops an entry. The entries' loops take turns, each round starting at
    the next entry: a host's launch speed drifts within seconds (one grid's F.rms_norm loop
    took 12.4 us a call at one row and 18.6 us at the next), so loops compared with each other
    run in the same rounds; single loops move by 50% or more in a shared host's hiccups.
    n = 1000: on the H100's host, loops of 300 calls (3.3-6.6 ms) spread the difference between
    two packages' norms (median 0.2-0.4 us a call) over -2.7 to +2.6 us from row to row, loops
    of 2000 calls over -0.8 to +1.2 (`bench/results/ab_host_path_h100_n300.txt`, `_n2000.txt`)."""
    fns = {name: _cycle(calls) for name, calls in call_sets.items()}
    for fn in fns.values():
        for _ in range(min(n, 10)):
            fn()
    torch.cuda.synchronize()
    names = list(fns)
    per_call = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = fns[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            torch.cuda.synchronize()
            per_call[name].append((time.perf_counter() - t0) / n * 1e6)
    return {name: sorted(v)[repeats // 2] for name, v in per_call.items()}


def host_us(calls: Sequence[Call], n: int = 1000, repeats: int = 7) -> float:
    """host_rounds_us of one entry."""
    return host_rounds_us({"": calls}, n, repeats)[""]


def graph_us(calls: Sequence[Call], target_ms: float = 4.0, max_calls: int = 1000,
             replays: int = 5) -> float:
    """Per-call time, in microseconds, of `calls` captured back to back in one CUDA graph and
    replayed: graph time / number of calls. This is the cost a captured decode step pays."""
    # Compile, autotune and allocate before capture, on a side stream as capture requires.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for fn in calls:
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for fn in calls[:20]:
            fn()
        torch.cuda.synchronize()
    torch.cuda.current_stream().wait_stream(side)
    # Host-bound estimate, so an upper bound on device time: the graph gets at least target_ms.
    est_us = max((time.perf_counter() - t0) * 1e6 / min(len(calls), 20), 0.5)
    k = len(calls)
    n = max(k, min(max_calls, int(target_ms * 1e3 / est_us)))
    n = -(-n // k) * k
    graph = torch.cuda.CUDAGraph()
    rotate = _cycle(calls)       # outputs rotate inside the graph's pool too (see _cycle)
    with torch.cuda.graph(graph):
        for _ in range(n):
            rotate()
    graph.replay()          # the untimed replay keeps the GPU busy while the timed ones queue
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
    for s, e in zip(starts, ends):
        s.record()
        graph.replay()
        e.record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    del graph, rotate
    return times[len(times) // 2] * 1e3 / n


@triton.jit
def _l2_scrub_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    # evict_last loads: they take the place of lines an earlier kernel loaded evict_last.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(src_ptr + offs, mask=offs < n, other=0.0, eviction_policy="evict_last")
    tl.store(dst_ptr + tl.program_id(0), tl.sum(v, axis=0))


_SCRUB_BLOCK = 4096


@functools.cache
def _scrub_buffers(dev: int) -> tuple:
    """What the scrub reads on GPU `dev` (the current one), twice its L2, and one sum a
    program."""
    n = 2 * l2_bytes() // 4                     # fp32 elements
    return (torch.ones(n, device="cuda"),
            torch.empty(triton.cdiv(n, _SCRUB_BLOCK), device="cuda"))


def scrub_l2() -> None:
    """Leave no earlier kernel's data protected in L2 before a provider is timed.

    Lines loaded with `evict_last` (torch.compile's looped reductions load x that way, and so
    does our looped path) outlive do_bench's flush (a memset, which does not displace them):
    Nsight Compute counted 10 MB less DRAM read for a kernel run after one that had loaded its
    input evict_last (bench/RESULTS.md, "Eviction hints, and timing after an L2 flush"). A
    provider timed after another on the same inputs then reads part of them from L2. Reading
    twice the L2 with evict_last here moves that protection to a buffer no provider reads."""
    src, dst = _scrub_buffers(torch.cuda.current_device())
    _l2_scrub_kernel[(dst.numel(),)](src, dst, src.numel(), BLOCK=_SCRUB_BLOCK)


def copy_ceiling_gbps(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy of a 1 GiB buffer: (read + write) bytes / median time, in GB/s."""
    src = torch.randn(nbytes // 2, dtype=torch.float16, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(functools.partial(dst.copy_, src), return_mode="median")
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / (ms * 1e-3) / 1e9


@triton.jit
def _empty_kernel(x_ptr):
    # Does nothing on purpose: the cost of a Triton launch and nothing else.
    pass


def empty_launch_calls() -> list[Call]:
    """A call of an empty Triton kernel on the current GPU: the floor any Triton kernel pays."""
    buf = torch.empty(1, device="cuda")
    return [lambda: _empty_kernel[(1,)](buf)]


def empty_launch_us() -> dict[str, float]:
    """The empty kernel's eager, host-loop and graph times."""
    calls = empty_launch_calls()
    return {"eager": eager_us(calls), "host": host_us(calls),
            "graph": graph_us(calls)}


def _version(dist: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def header_lines(ceiling_gbps: float, empty: dict[str, float] | None = None) -> list[str]:
    """GPU, versions, date and the yardsticks every number of the run is relative to."""
    dev = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(dev)
    peers = ", ".join(f"{d} {v}" for d in ("liger-kernel", "flash-attn", "quack-kernels")
                      if (v := _version(d)))
    lines = [
        f"GPU: {torch.cuda.get_device_name(dev)} ({props.multi_processor_count} SMs, "
        f"{props.total_memory / 2**30:.0f} GiB, L2 {l2_bytes() / 2**20:.0f} MiB)",
        f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}, "
        f"python {platform.python_version()}" + (f"; peers: {peers}" if peers else ""),
        f"date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"copy ceiling (1 GiB device-to-device, read + write): {ceiling_gbps:.0f} GB/s",
    ]
    if empty:
        lines.append(f"empty Triton kernel: {empty['eager']:.2f} us eager (device), "
                     f"{empty['host']:.2f} us per call in a host loop, "
                     f"{empty['graph']:.2f} us in a CUDA graph")
    return lines
