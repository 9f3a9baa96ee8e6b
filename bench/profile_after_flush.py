"""Kernel times after an L2 flush (as do_bench's eager timer leaves the cache), ours against
torch.compile, from torch.profiler: which kernels a call runs and how long each takes.

    python bench/profile_after_flush.py [MxN,...]

bf16 in, fp32 out, four rotating inputs; prints the median device time of every kernel name
(the flush itself included) and the median of events recorded around the call. It does not
scrub L2 between the two providers: what one loads `evict_last` survives the flush and moves
the other's time (bench/RESULTS.md, "Eviction hints, and timing after an L2 flush").
"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import rmsnorm_triton as rt
from rmsnorm_triton import providers as P

CALLS = 40


def main():
    shapes = [tuple(map(int, s.split("x"))) for s in (sys.argv[1] if len(sys.argv) > 1
                                                     else "4096x5120,4096x8192").split(",")]
    P.prepare_compile()
    compiled = torch.compile(P._rms_norm_fp32, dynamic=False)
    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    for M, N in shapes:
        xs = [(0.5 + 2 * torch.randn(M, N, device="cuda")).to(torch.bfloat16) for _ in range(4)]
        w = (1 + 0.1 * torch.randn(N, device="cuda")).to(torch.bfloat16)
        fns = {"ours": lambda x: rt.rms_norm(x, w, 1e-6, out_dtype=torch.float32),
               "torch.compile": lambda x: compiled(x, w, 1e-6, torch.float32)}
        for name, fn in fns.items():
            for x in xs:
                fn(x)
            torch.cuda.synchronize()
            held = [None] * len(xs)

            def call(i):
                held[i % len(xs)] = None
                held[i % len(xs)] = fn(xs[i % len(xs)])

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for i in range(CALLS):
                    flush.zero_()
                    call(i)
                torch.cuda.synchronize()
            times = {}
            for e in prof.events():
                if e.device_type == torch.autograd.DeviceType.CUDA:
                    times.setdefault(e.name[:60], []).append(e.device_time)
            kernels = {k: round(sorted(v)[len(v) // 2], 2) for k, v in times.items()}
            start, end = torch.cuda.Event(True), torch.cuda.Event(True)
            around = []
            for i in range(CALLS):
                flush.zero_()
                start.record()
                call(i)
                end.record()
                torch.cuda.synchronize()
                around.append(start.elapsed_time(end) * 1e3)
            print(f"{M}x{N} {name}: kernels (median us) {kernels}; "
                  f"events around the call {sorted(around)[CALLS // 2]:.2f} us", flush=True)


if __name__ == "__main__":
    main()
