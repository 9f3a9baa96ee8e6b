"""Host floor of a decode-sized forward_tp call on 2+ GPUs, next to forward_tp itself.

    python bench/tp_floor.py [--gpus N] [--rounds R]

Any route that returns new outputs, one per GPU, ordered on each GPU's current stream, does at
least this much on the host: allocate every output on its device, make x's stream wait for each
peer's stream (the peer's new block may still be read by its earlier work), launch one kernel,
and make each peer's stream wait for that kernel: per peer, a record and a wait each way (with
2 GPUs, four event operations). `floor` does exactly that with torch's own calls and an empty
Triton kernel launched through the package's direct launcher (no row work, no checks, no route
decisions); its parts are timed alone too. Rows, wall time per call of
back-to-back calls (`timing.host_us`), median over interleaved rounds (this host's speed drifts
between loops a second apart):

  forward_tp        the default context, x (bf16) on cuda:0, N = 8192
  floor             allocations + four event operations + one empty launch
  floor: allocs     the outputs' allocations alone (new_empty on each device's weight)
  floor: events     the records and waits alone
  floor: launch     the empty launch alone
  rms_norm          one local rms_norm on cuda:0 (for scale)
  naive loop        rms_norm(x.to(gpu)) per GPU (the issue's "naive Python loop of P2P copies")
"""
import argparse
import statistics

import torch
import triton

import rmsnorm_triton as rt
from rmsnorm_triton.launcher import make_runner
from rmsnorm_triton.parallel import forward_tp
from rmsnorm_triton.timing import host_us

N = 8192


@triton.jit
def _empty(x_ptr):
    pass


def floor_calls(x, ws):
    """(full floor, allocations, events, launch) as zero-argument calls."""
    src = x.device.index
    producer = torch.cuda.current_stream(src)
    peers = [torch.cuda.current_stream(w.device) for w in ws if w.device.index != src]
    free = {s.device_index: torch.cuda.Event() for s in peers}
    done = torch.cuda.Event()
    runner = make_runner(_empty[(1,)](x), ())
    raw_stream = torch._C._cuda_getCurrentRawStream
    xp = x.data_ptr()

    def allocs():
        return [w.new_empty(x.shape) for w in ws]

    def launch():
        runner(1, raw_stream(src), (xp,) if runner.int_pointers else (x,))

    def events():
        for s in peers:
            e = free[s.device_index]
            e.record(s)
            producer.wait_event(e)
        done.record(producer)
        for s in peers:
            s.wait_event(done)

    def full():
        outs = allocs()
        for s in peers:
            e = free[s.device_index]
            e.record(s)
            producer.wait_event(e)
        launch()
        done.record(producer)
        for s in peers:
            s.wait_event(done)
        return outs
    return full, allocs, events, launch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    devs = [f"cuda:{i}" for i in range(args.gpus)]
    ctx = rt.TPContext(devs)
    ws = [(1 + 0.1 * torch.randn(N, device=d)).to(torch.bfloat16) for d in devs]
    print(f"{torch.cuda.get_device_name(0)} x {args.gpus}, torch {torch.__version__}, "
          f"triton {triton.__version__}; us a call, median of {args.rounds} interleaved rounds")
    for m in (1, 8, 64):
        x = torch.randn(m, N, device=devs[0], dtype=torch.bfloat16)
        # Bit-equal to each GPU's own rms_norm, before timing anything.
        for y, d, w in zip(forward_tp(ctx, rt.BROADCAST_RS, x, ws, None, 1e-6), devs, ws):
            assert torch.equal(y, rt.rms_norm(x.to(d), w, 1e-6)), d
        full, allocs, events, launch = floor_calls(x, ws)
        rows = {
            "forward_tp": lambda: forward_tp(ctx, rt.BROADCAST_RS, x, ws, None, 1e-6),
            "floor": full,
            "floor: allocs": allocs,
            "floor: events": events,
            "floor: launch": launch,
            "rms_norm": lambda: rt.rms_norm(x, ws[0], 1e-6),
            "naive loop": lambda: [rt.rms_norm(x.to(d), w, 1e-6) for d, w in zip(devs, ws)],
        }
        seen = {name: [] for name in rows}
        for _ in range(args.rounds):
            for name, fn in rows.items():
                seen[name].append(host_us([fn], n=300, repeats=3))
        cells = ", ".join(f"{name} {statistics.median(v):.1f}" for name, v in seen.items())
        print(f"{m} x {N}: {cells}")


if __name__ == "__main__":
    main()
