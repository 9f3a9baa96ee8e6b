"""Host cost of one decode-sized forward_tp call, per stage, with a cProfile.

    python bench/profile_tp.py [--gpus N]
"""
import argparse
import cProfile
import pstats

import torch

import rmsnorm_triton as rt
from rmsnorm_triton.timing import host_us
from rmsnorm_triton.parallel import forward_tp


def _us(fn):
    """Wall time per call of back-to-back calls, host overhead included."""
    return host_us([fn], n=500)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    args = ap.parse_args()
    devs = [f"cuda:{i}" for i in range(args.gpus)]
    x = torch.randn(8, 8192, device="cuda:0", dtype=torch.bfloat16)
    ws = [torch.ones(8192, device=d, dtype=torch.bfloat16) for d in devs]
    variants = {f"forward_tp fused={f} fanout={bool(b)}": rt.TPContext(devs, fused=f,
                                                                        fanout_max_bytes=b)
                for f, b in ((False, 0), (True, 0), (True, 1 << 62))}
    # Interleaved rounds: this host's speed drifts by 2x between loops a second apart.
    seen = {name: [] for name in variants}
    for _ in range(5):
        for name, ctx in variants.items():
            seen[name].append(host_us([lambda: forward_tp(ctx, rt.BROADCAST_RS, x, ws, None,
                                                          1e-6)], n=300, repeats=3))
    for name, v in seen.items():
        v.sort()
        print(f"{name}: median {v[2]:.1f} us, min {v[0]:.1f} us over 5 rounds")
    print(f"rms_norm on cuda:0: {_us(lambda: rt.rms_norm(x, ws[0])):.1f} us")
    print(f"torch.cuda.Event()+record: "
          f"{_us(lambda: torch.cuda.Event().record()):.1f} us")
    s = torch.cuda.Stream()

    def enter_stream():
        with torch.cuda.stream(s):
            pass
    print(f"with torch.cuda.stream(): {_us(enter_stream):.1f} us")
    ctx = rt.TPContext(devs, fused=True)          # the default: the fanout at this size
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(300):
        forward_tp(ctx, rt.BROADCAST_RS, x, ws, None, 1e-6)
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(22)


if __name__ == "__main__":
    main()
