"""forward_tp from bf16 to an fp32 output (or a bf16 one) on 2+ GPUs: which route is faster.

    python bench/tp_wide_out.py [MxN[:bf16],...]

x lives on cuda:0; every GPU has its own weight. Routes, each checked bit for bit against
rms_norm on each GPU first:
  fanout      one kernel on cuda:0 writes every copy over NVLink (forced at any size), where the
              config has a fanout form; a looped config to fp32 has none, and the cell then
              times peer reads (marked "fanout*")
  peer reads  each GPU's kernel reads x over NVLink and writes its copy locally
  default     what forward_tp picks (TPContext defaults)
  tile+fanout the launch config replaced by a one-tile config through a tuned table (16 warps to
              fp32, 8 to bf16), so that the fanout takes a tile where the heuristic loops
              (16-bit -> fp32 from 512 rows of 4096+, bf16 -> bf16 at 513-1024 rows of
              4097-6144)
Columns: device time (timing.eager_us; the call ends with cuda:0 waiting for every GPU, since
the timer's flush, hold and events are on cuda:0) / host-inclusive time a call (timing.host_us).
"""
import os
import sys
import tempfile

# The tile+fanout route writes a tuned table: never into the user's cache.
os.environ["RMSNORM_TRITON_CACHE"] = tempfile.mkdtemp(prefix="tp_wide_out_")

import torch  # noqa: E402

import rmsnorm_triton as rt  # noqa: E402
from rmsnorm_triton import config  # noqa: E402
from rmsnorm_triton.ops import fanout_plan  # noqa: E402
from rmsnorm_triton.parallel import TPContext, forward_tp  # noqa: E402
from rmsnorm_triton.timing import eager_us, host_us  # noqa: E402
from bench_tp import join_on_first  # noqa: E402

SHAPES = "64x8192,256x8192,512x4096,1024x4096,4096x8192,1024x2048,2048x2048,4096x2048"
BF16, FP32 = torch.bfloat16, torch.float32
EPS = 1e-6


def _tile_table(N: int, M: int, out_dtype) -> None:
    """A tuned table whose only entry gives (N, M's bucket) one tile a row (or clears it)."""
    name = torch.cuda.get_device_name(0)
    warps = 16 if out_dtype == FP32 else 8
    entries = {} if N == 0 else {config.table_key(N, config.row_bucket(M), BF16, out_dtype,
                                                  False):
                                 config.LaunchConfig(1, config.next_pow2(N), warps, False)}
    config.save_table(config.cache_path(name), name, entries)


def main() -> None:
    devs = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    if len(devs) < 2:
        raise SystemExit("needs 2+ CUDA GPUs")
    ctxs = {"fanout": TPContext(devs, fused=True, fanout_max_bytes=1 << 62),
            "peer reads": TPContext(devs, fused=True, fanout_max_bytes=0),
            "default": TPContext(devs), "tile+fanout": TPContext(devs, fused=True,
                                                                 fanout_max_bytes=1 << 62)}
    print(f"{len(devs)} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}; "
          "device / host-inclusive us a call")
    for spec in (sys.argv[1] if len(sys.argv) > 1 else SHAPES).split(","):
        shape, _, out_name = spec.partition(":")
        M, N = map(int, shape.split("x"))
        if out_name not in ("", "fp32", "bf16"):
            raise SystemExit(f"{spec}: the output is fp32 (default) or bf16")
        out_dtype = BF16 if out_name == "bf16" else FP32
        x = (0.5 + 2 * torch.randn(M, N, device=devs[0])).to(BF16)
        ws = [(1 + 0.1 * torch.randn(N, device=d)).to(BF16) for d in devs]
        cells = []
        for name, ctx in ctxs.items():
            _tile_table(N if name == "tile+fanout" else 0, M, out_dtype)
            ys = forward_tp(ctx, rt.BROADCAST_RS, x, ws, [None] * len(devs), EPS,
                            out_dtype=out_dtype)
            for d, y, w in zip(devs, ys, ws):
                if not torch.equal(y, rt.rms_norm(x.to(d), w, EPS, out_dtype=out_dtype)):
                    raise SystemExit(f"{spec} {name}: copy on {d} differs from rms_norm")

            def call(ctx=ctx):
                ys = forward_tp(ctx, rt.BROADCAST_RS, x, ws, [None] * len(devs), EPS,
                                out_dtype=out_dtype)
                join_on_first(devs)
                return ys
            wall = host_us([call], n=200, repeats=5)
            if name == "fanout" and fanout_plan(x, devs, ws, [None] * len(devs), EPS,
                                                out_dtype=out_dtype) is None:
                name += "*"
            cells.append(f"{name} {eager_us([call]):7.1f} / {wall:6.1f}")
        _tile_table(0, M, out_dtype)
        print(f"{M:>5} x {N:<5} bf16 -> {str(out_dtype)[6:]}, x {x.numel() * 2 / 2**20:5.1f} MB: "
              + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
