"""What a captured split-row call pays for zeroing its own slots, measured alone.

    python bench/ab_capture_slots.py [MxN,...] [rounds]

A split-row call (rows past 32K elements) captured in a CUDA graph takes zeroed slots of its
own, so each replay runs a fill kernel before the split-row kernel (split_slots.py says why).
Three graphs of the same calls, per-call time (`timing.graph_us`, inputs and outputs rotating):
- shipped: `rms_norm` as captured today (fill + split-row kernel);
- slots zeroed once: the same launch given slots zeroed before the capture. Graph replays run
  in order, and each launch moves every slot on by one round, so they stay correct without
  the fill; each form's outputs, poisoned first, are checked against the fp32 reference after
  three replays of a graph of its own;
- fill alone: the `torch.zeros` a captured call makes, and nothing else.
bf16, weight, no bias; medians of interleaved rounds, L2 scrubbed before each.
"""
import sys

import torch

import rmsnorm_triton as rt
from rmsnorm_triton import providers as P, split_slots
from rmsnorm_triton.config import pick_config, row_bucket
from rmsnorm_triton.timing import graph_us, n_sets
from bench_utils import interleaved_medians

SHAPES = [(1, 65536), (8, 131072), (64, 65536), (256, 65536), (64, 262144)]


def main():
    shapes = ([tuple(map(int, s.split("x"))) for s in sys.argv[1].split(",")]
              if len(sys.argv) > 1 else SHAPES)
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    shipped = split_slots.split_workspace
    for M, N in shapes:
        cfg = pick_config(N, row_bucket(M), torch.bfloat16, torch.bfloat16, False, 0)
        if cfg.splits < 2:
            print(f"{M}x{N}: not split ({cfg})")
            continue
        sets = n_sets(M * N * 4)
        xs = [(0.5 + 2 * torch.randn(M, N, device="cuda")).to(torch.bfloat16)
              for _ in range(sets)]
        w = (1 + 0.1 * torch.randn(N, device="cuda")).to(torch.bfloat16)
        outs = [torch.empty_like(x) for x in xs]
        zeroed = torch.zeros((M, cfg.splits), dtype=torch.int64, device="cuda")

        def kept(n_rows, splits, device):
            assert n_rows <= zeroed.shape[0] and splits == zeroed.shape[1], (n_rows, splits)
            return zeroed

        def norm(x, o):
            return lambda: rt.rms_norm(x, w, 1e-6, out=o)

        def with_zeroed(x, o):
            def call():
                split_slots.split_workspace = kept
                try:
                    return rt.rms_norm(x, w, 1e-6, out=o)
                finally:
                    split_slots.split_workspace = shipped
            return call

        calls = {"shipped": [norm(x, o) for x, o in zip(xs, outs)],
                 "slots zeroed once": [with_zeroed(x, o) for x, o in zip(xs, outs)],
                 "fill alone": [lambda: torch.zeros((M, cfg.splits), dtype=torch.int64,
                                                    device="cuda")]}
        times = interleaved_medians(calls, graph_us, rounds)
        for name in ("shipped", "slots zeroed once"):     # each form, replayed on its own
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for call in calls[name]:
                    call()
            for o in outs:
                o.fill_(float("nan"))
            for _ in range(3):
                graph.replay()
            for x, o in zip(xs, outs):
                want = P._rms_norm_fp32(x, w, 1e-6, torch.bfloat16).float()
                torch.testing.assert_close(o.float(), want, rtol=1e-2, atol=1e-2,
                                           msg=lambda m, name=name: f"{name}: {m}")
            del graph
        print(f"{M}x{N} bf16, {cfg.splits} splits of {cfg.block_n}, graph_us, medians of "
              f"{rounds} rounds, {sets} sets: " + ", ".join(
                  f"{name} {us:.2f} us" for name, us in times.items())
              + f"; shipped - zeroed once {times['shipped'] - times['slots zeroed once']:.2f} us")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
