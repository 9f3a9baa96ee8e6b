"""Where an eager row's time goes, ours against torch.compile, under the bench's own eager timer's
sequence (`timing.eager_us`: L2 flush, a sleep kernel holding the GPU, start event, call, end
event): torch.profiler gives each kernel's start and end on the GPU, to set beside the time
between the events.

    python bench/profile_after_flush.py [MxN[:x:out],...] [rounds] [memset|read]

Default rows: the eager rows the 18:10 grid had behind torch.compile. For each row and provider
(interleaved over `rounds`, L2 scrubbed before each, inputs and outputs rotating as in the
bench), the median over a round's calls, then the median over rounds, of each of (taken
separately, so they need not add up):
- events: the start-to-end event time, what `eager_us` reports;
- kernels: the provider's kernels' summed durations, and their names;
- lead: from the sleep kernel's end to the provider's first kernel's start (the GPU's front end
  and the start event; the host's launch is hidden behind the hold, as long as the hold
  outlasts it: an `events` far above lead + kernels says it did not);
- tail: from the provider's last kernel's end to the next flush's start, which includes the end
  event and the next iteration's flush launch (informational: not part of `events`).
The flush is the timer's memset of 256 MB (default), or a read of 256 MB (`read`, a sum), to
see how much of a difference the memset's L2 state makes. Calls are told apart by kernel names
(the sleep kernel's, the flush's): a call whose kernels could not be found is reported.
"""
import statistics
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import rmsnorm_triton as rt
from rmsnorm_triton import providers as P
from rmsnorm_triton.timing import n_sets, rmsnorm_bytes, scrub_l2
from bench_utils import parse_rows

EPS = 1e-6
CALLS = 60
# ~0.5 ms at H100 clocks: longer than either provider's host path under the profiler (a hold of
# ~0.1 ms let torch.compile's host path show in some rows' events).
HOLD_CYCLES = 1_000_000
DEFAULT_ROWS = ("1024x2048:bf16:fp32,1024x2048:fp16:fp32,4096x2048:bf16:fp32,"
                "4096x2048:fp16:fp32,512x7168:fp16:fp16,512x8192:bf16:bf16,512x8192:fp16:fp16")


def device_events(prof):
    """(name, start us, end us) of every GPU activity, in start order."""
    evs = [(e.name, e.time_range.start, e.time_range.end) for e in prof.events()
           if e.device_type == torch.autograd.DeviceType.CUDA]
    return sorted(evs, key=lambda e: e[1])


def split_calls(evs, flush_names):
    """The activities between each sleep kernel and the next flush: one call's kernels."""
    calls, current, after_sleep = [], None, None
    for name, start, end in evs:
        if "spin" in name.lower():                 # torch.cuda._sleep's kernel
            current, after_sleep = [], end
        elif name in flush_names:
            if current:
                calls.append((after_sleep, current, start))
            current = None
        elif current is not None:
            current.append((name, start, end))
    return calls


def profile_provider(fns, flush, flush_names):
    held = [None] * len(fns)
    for i, fn in enumerate(fns):
        held[i] = fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(True), torch.cuda.Event(True)) for _ in range(CALLS)]
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i, (s, e) in enumerate(events):
            k = i % len(fns)
            flush.zero_()
            torch.cuda._sleep(HOLD_CYCLES)
            s.record()
            held[k] = None
            held[k] = fns[k]()
            e.record()
        flush.zero_()                              # closes the last call in split_calls
        torch.cuda.synchronize()
    around = [s.elapsed_time(e) * 1e3 for s, e in events]
    calls = split_calls(device_events(prof), flush_names)
    if len(calls) != CALLS:
        print(f"  note: {len(calls)} of {CALLS} calls found in the profile", flush=True)
    kernels = [sum(end - start for _, start, end in ks) for _, ks, _ in calls]
    lead = [ks[0][1] - sleep_end for sleep_end, ks, _ in calls]
    tail = [nxt - ks[-1][2] for _, ks, nxt in calls]
    names = sorted({n[:50] for _, ks, _ in calls for n, _, _ in ks})
    med = statistics.median
    return dict(events=med(around), kernels=med(kernels), lead=med(lead), tail=med(tail),
                n=len(calls), names=names)


class Flush:
    """What runs before each call: `zero_()` memsets 256 MB of int32 (as the timer does), or
    sums 256 MB of fp32."""

    def __init__(self, how):
        if how not in ("memset", "read"):
            raise SystemExit(f"flush: memset or read, not {how!r}")
        self.how = how
        dtype = torch.int32 if how == "memset" else torch.float32
        self.buf = torch.ones(256 << 18, dtype=dtype, device="cuda")
        self.sum = torch.empty((), dtype=torch.float32, device="cuda")

    def zero_(self):
        if self.how == "memset":
            self.buf.zero_()
        else:
            torch.sum(self.buf, dim=0, out=self.sum)


def main():
    rows = parse_rows(sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else DEFAULT_ROWS)
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    P.prepare_compile()
    compiled = torch.compile(P._rms_norm_fp32, dynamic=False)
    flush = Flush(sys.argv[3] if len(sys.argv) > 3 else "memset")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        flush.zero_()
        torch.cuda.synchronize()
    flush_names = {name for name, _, _ in device_events(prof)}
    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}; flush ({flush.how}): "
          f"{flush_names}")
    for M, N, x_dtype, out_dtype in rows:
        sets = n_sets(rmsnorm_bytes(M, N, x_dtype, x_dtype, out_dtype))
        xs = [(0.5 + 2 * torch.randn(M, N, device="cuda")).to(x_dtype) for _ in range(sets)]
        w = (1 + 0.1 * torch.randn(N, device="cuda")).to(x_dtype)
        providers = {
            "ours": [lambda x=x: rt.rms_norm(x, w, EPS, out_dtype=out_dtype) for x in xs],
            "torch.compile": [lambda x=x: compiled(x, w, EPS, out_dtype) for x in xs]}
        samples = {name: [] for name in providers}
        for r in range(rounds):
            for name in list(providers)[r % 2:] + list(providers)[:r % 2]:
                scrub_l2()
                samples[name].append(profile_provider(providers[name], flush, flush_names))
        label = f"{M}x{N} {str(x_dtype)[6:]}->{str(out_dtype)[6:]}"
        for name, runs in samples.items():
            cols = {k: statistics.median(run[k] for run in runs)
                    for k in ("events", "kernels", "lead", "tail")}
            print(f"{label:28s} {name:14s} events {cols['events']:7.2f}  kernels "
                  f"{cols['kernels']:7.2f}  lead {cols['lead']:5.2f}  tail {cols['tail']:5.2f}"
                  f"  us (calls {runs[0]['n']}; {', '.join(runs[0]['names'])})", flush=True)


if __name__ == "__main__":
    main()
