"""Bytes model, copy ceiling and timers for the benchmark scripts.

They live in the package (rmsnorm_triton/timing.py) because `rmsnorm-triton tune` and
`rmsnorm-triton bench` need them in an installed copy too; this module is the scripts' name
for them.
"""
import contextlib
import sys

import torch

from rmsnorm_triton.timing import (copy_ceiling_gbps, eager_us, empty_launch_us, graph_us,
                                   header_lines, host_us, l2_bytes, n_sets, rmsnorm_bytes,
                                   scrub_l2)

__all__ = ["rmsnorm_bytes", "copy_ceiling_gbps", "eager_us", "graph_us", "host_us",
           "empty_launch_us", "header_lines", "l2_bytes", "n_sets", "interleaved_medians",
           "DTYPES", "parse_rows", "print_graph_eager", "ab_setup", "swapped", "compiled_forms"]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_rows(text: str) -> list[tuple]:
    """"MxN[:x:out],..." -> [(M, N, x dtype, out dtype)]; a bare MxN is bf16 -> bf16."""
    rows = []
    for spec in text.split(","):
        shape, *names = spec.split(":")
        if len(names) not in (0, 2) or not set(names) <= set(DTYPES):
            raise SystemExit(f"not a row: {spec!r} (MxN or MxN:x:out, dtypes {sorted(DTYPES)})")
        x_dtype, out_dtype = (DTYPES[n] for n in (names or ["bf16", "bf16"]))
        rows.append((*map(int, shape.split("x")), x_dtype, out_dtype))
    return rows


def interleaved_medians(calls: dict, timer, rounds: int) -> dict:
    """name -> median over `rounds` timings of timer(calls[name]) (the upper median for an even
    count). Rounds interleave the entries, each round starting at the next one, so that none
    always runs in one place of a round; L2 is scrubbed before every timing, so that no entry
    reads inputs another left protected in L2 (`evict_last`)."""
    samples = {name: [] for name in calls}
    names = list(calls)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            scrub_l2()
            samples[name].append(timer(calls[name]))
    return {name: sorted(v)[len(v) // 2] for name, v in samples.items()}


def print_graph_eager(calls: dict, rounds: int, nbytes: int, ceiling: float) -> None:
    """One line per timer (a CUDA graph, then the eager timer): each entry's median time over
    interleaved rounds and its bytes as % of the copy ceiling (GB/s)."""
    for timer_name, timer in (("graph", graph_us), ("eager", eager_us)):
        med = interleaved_medians(calls, timer, rounds)
        print(f"  {timer_name}: " + "  ".join(
            f"{name} {us:.2f} us {nbytes / us / 1e3 / ceiling * 100:.1f}%"
            for name, us in med.items()), flush=True)


def ab_setup(default_rows: str):
    """An A/B script's command line, `[MxN[:x:out],...|""] [rounds]`: (rows, rounds, copy
    ceiling in GB/s), the header line printed."""
    rows = parse_rows(sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else default_rows)
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    ceiling = copy_ceiling_gbps()
    print(f"copy ceiling {ceiling:.0f} GB/s; % of it, medians of {rounds} interleaved rounds")
    return rows, rounds, ceiling


@contextlib.contextmanager
def swapped(module, **attrs):
    """module's attributes set to attrs for the block, restored after it (an A/B arm that
    changes one launch decision of the package)."""
    saved = {name: getattr(module, name) for name in attrs}
    for name, value in attrs.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def compiled_forms(jit_fn) -> list:
    """(maxnreg or 0, registers, spills, warps) of every kernel this process compiled from
    jit_fn (Triton's JIT cache: internals, not an API)."""
    found = set()
    try:
        for cache in jit_fn.device_caches.values():
            for k in cache[0].values():
                found.add((getattr(k.metadata, "maxnreg", None) or 0, k.n_regs, k.n_spills,
                           k.metadata.num_warps))
    except (AttributeError, TypeError, IndexError) as e:
        return [f"unknown ({e})"]
    return sorted(found, key=str)
