"""The eager timer with and without the GPU hold: triton's do_bench against timing.eager_us.

    python bench/ab_eager_timer.py [variant:MxN,...] [rounds] [provider,...]

Both flush L2 with a 256 MB memset before each call and take the median of event times;
eager_us then holds the GPU with a sleep kernel until the call is queued, so a provider's host
path cannot show as device time. Expected: the same time for a provider whose host path fits
under the flush (ours, an empty kernel), and less, and steadier over rounds, for one whose host
path outlasts it. Each round starts at the next provider; L2 is scrubbed before every timing.
"""
import functools
import sys

import torch
import triton

from rmsnorm_triton import benchmark as B
from rmsnorm_triton import providers as P
from rmsnorm_triton.timing import _cycle, _empty_kernel, eager_us, scrub_l2

SHAPES = "bf16:1x4096,bf16:8x4096,bf16:64x8192,bf16:1024x8192,bf16-fp32:512x8192,bf16:4096x8192"


def _do_bench_us(calls) -> float:
    return triton.testing.do_bench(_cycle(calls), warmup=10, rep=50, return_mode="median") * 1e3


def main() -> None:
    specs = (sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else SHAPES).split(",")
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    names = (sys.argv[3] if len(sys.argv) > 3 else "ours,compile,liger,torch").split(",")
    P.prepare_compile()
    buf = torch.empty(1, device="cuda")
    empty = [functools.partial(_empty_kernel[(1,)], buf)]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    print(f"{'case':28s} {'provider':8s} {'do_bench us, each round':>30s} | "
          f"{'eager_us us, each round':>30s}")
    print(f"{'empty Triton kernel':28s} {'':8s} "
          + " ".join(f"{_do_bench_us(empty):6.2f}" for _ in range(rounds)) + " | "
          + " ".join(f"{eager_us(empty):6.2f}" for _ in range(rounds)), flush=True)
    for spec in specs:
        vname, shape = spec.split(":")
        m, n = map(int, shape.split("x"))
        case = B.Case(B.VARIANTS[vname], m, n)
        calls = {}
        for name in names:
            try:
                make = P.PROVIDERS[name]()(case.v)
            except (ImportError, P.Unsupported) as e:
                print(f"{spec:28s} {name:8s} skipped: {type(e).__name__}")
                continue
            calls[name] = case.calls(make)
            bad = case.check(calls[name][0])
            if bad:
                raise SystemExit(f"{spec} {name}: {bad}")
        if not calls:
            continue
        times = {name: ([], []) for name in calls}
        order = list(calls)
        for r in range(rounds):
            for name in order[r % len(order):] + order[:r % len(order)]:
                case.reset()
                scrub_l2()
                times[name][0].append(_do_bench_us(calls[name]))
                case.reset()
                scrub_l2()
                times[name][1].append(eager_us(calls[name]))
        for name, (old, new) in times.items():
            print(f"{spec:28s} {name:8s} " + " ".join(f"{t:6.2f}" for t in old) + " | "
                  + " ".join(f"{t:6.2f}" for t in new), flush=True)
        case.free()


if __name__ == "__main__":
    main()
