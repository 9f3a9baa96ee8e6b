"""Every kernel path once, on small shapes, each checked against the fp64 oracle.

Run under compute-sanitizer by scripts/sanitize.py (memcheck, racecheck, initcheck), and once
without it first so that every kernel is compiled and cached before the slow runs. Paths:
single tile, several rows per program, odd N, the split-row kernel (a GPU's long rows), the
looped kernel (forced: a tuned table may pick it), strided and non-collapsible views, fused add
with an fp32 residual, accumulate, clamp, bias, Gemma offset, in place, every in/out dtype pair,
the tensor-parallel fanout kernel (its copies all on this one device), and repeat calls through
their launch plans (single tile, split-row, fused add).

Exit status: 0 all cases matched, 3 a case failed, 0 with a message when there is no GPU.
"""
import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

# --cpu checks this script itself through the Triton interpreter, which must be chosen before
# the kernels are imported.
if "--cpu" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import rmsnorm_triton as rt  # noqa: E402
from helpers import (DTYPES, assert_close, assert_guard_intact, poisoned, rand_w,  # noqa: E402
                     rand_x, rmsnorm_ref)
from rmsnorm_triton.config import LOOP_CHUNK_N, LaunchConfig  # noqa: E402

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
DEV = "cpu" if "--cpu" in sys.argv else "cuda"


@contextlib.contextmanager
def looped_kernel():
    """Force the two-pass looped kernel, as a tuned-table entry would."""
    looped = LaunchConfig(block_m=1, block_n=LOOP_CHUNK_N, num_warps=16, looped=True)
    saved = rt.ops.pick_config
    rt.ops.pick_config = lambda *args: looped
    try:
        yield
    finally:
        rt.ops.pick_config = saved


def norm(M, N, x_dtype=BF16, w_dtype=BF16, out_dtype=None, *, gemma=False, bias_dtype=None,
         accumulate=False, clamp=False, strided_x=False):
    out_dtype = out_dtype or x_dtype
    x = rand_x((M, N + 64 if strided_x else N), x_dtype, DEV)[:, :N]
    if clamp:
        x[0, 0], x[-1, N - 1] = float("inf"), float("-inf")
    w = rand_w(N, w_dtype, DEV, gemma=gemma) if w_dtype else None
    b = torch.randn(N, device=DEV).to(bias_dtype) if bias_dtype else None
    offset = 1.0 if gemma else 0.0
    buf, out = poisoned(M, N, out_dtype, DEV)
    start = rand_x((M, N), out_dtype, DEV)
    if accumulate:
        out.copy_(start)
    rt.rms_norm(x, w, bias=b, weight_offset=offset, out=out, accumulate=accumulate,
                clamp_fp16_input=clamp)
    want = rmsnorm_ref(x, w, weight_offset=offset, bias=b, clamp=clamp)
    assert_close(out, start.double() + want if accumulate else want)
    assert_guard_intact(buf, N)


def fused(M, N, x_dtype=BF16, res_dtype=FP32):
    x, w = rand_x((M, N), x_dtype, DEV), rand_w(N, x_dtype, DEV)
    residual = rand_x((M, N), res_dtype, DEV)
    want_res = (x.float() + residual.float()).to(res_dtype)
    buf, out = poisoned(M, N, x_dtype, DEV)
    rt.fused_add_rms_norm(x, residual, w, out=out)
    assert torch.equal(residual, want_res), "residual is not round(x + residual)"
    assert_close(out, rmsnorm_ref(residual, w))
    assert_guard_intact(buf, N)


def in_place(M, N):
    x, w = rand_x((M, N), FP16, DEV), rand_w(N, FP16, DEV)
    want = rmsnorm_ref(x, w)
    rt.rms_norm(x, w, out=x)
    assert_close(x, want)


def non_collapsible(N):
    # Transposed leading dims: x and out are staged through contiguous copies.
    x = rand_x((3, 2, N + 8), FP16, DEV)[..., :N].transpose(0, 1)
    buf = torch.full((3, 2, N + 8), float("nan"), dtype=FP32, device=DEV)
    out = buf[..., :N].transpose(0, 1)
    w = rand_w(N, FP32, DEV)
    rt.rms_norm(x, w, out=out)
    assert_close(out, rmsnorm_ref(x, w))
    assert torch.isnan(buf[..., N:]).all()


def fanout(M, N, copies=3):
    """The fanout kernel writing `copies` outputs, each with its own weight and bias."""
    x = rand_x((M, N), FP16, DEV)
    ws = [rand_w(N, FP16, DEV, gemma=True) for _ in range(copies)]
    bs = [torch.randn(N, device=DEV).to(BF16) for _ in range(copies)]
    dev = torch.device(DEV, 0) if DEV == "cuda" else torch.device(DEV)
    plan = rt.ops.fanout_plan(x, [dev] * copies, ws, bs, 1e-6, out_dtype=FP32,
                              weight_offset=1.0)
    outs = plan.outputs(x, ws)
    for o in outs:
        o.fill_(float("nan"))
    plan.launch(x, ws, bs, outs)
    for w, b, y in zip(ws, bs, outs):
        assert_close(y, rmsnorm_ref(x, w, weight_offset=1.0, bias=b))


def planned(M, N):
    """Repeat calls with new outputs: the second one takes its launch plan (plans.py), which
    for long rows also takes the stream's split-row slots, kept from the first call."""
    w = rand_w(N, BF16, DEV)
    for _ in range(2):
        x = rand_x((M, N), BF16, DEV)
        assert_close(rt.rms_norm(x, w), rmsnorm_ref(x, w))
        res = rand_x((M, N), FP32, DEV)
        want_res = x.float() + res
        y, _ = rt.fused_add_rms_norm(x, res, w)
        assert_close(y, rmsnorm_ref(want_res, w))


def cases(quick):
    c = [
        ("single-tile N4096", lambda: norm(4, 4096, BF16, FP32)),
        ("multi-row N128 M7", lambda: norm(7, 128, FP16, FP16)),
        ("odd N4095", lambda: norm(3, 4095, FP32, BF16, FP16)),
        ("N1", lambda: norm(5, 1, BF16, BF16, FP32)),
        ("strided x and out", lambda: norm(6, 1000, BF16, FP32, strided_x=True)),
        ("non-collapsible x and out", lambda: non_collapsible(1000)),
        ("no weight", lambda: norm(3, 1000, FP16, None)),
        ("gemma offset", lambda: norm(3, 1000, BF16, BF16, FP32, gemma=True)),
        ("bias", lambda: norm(3, 1000, FP16, FP32, bias_dtype=BF16)),
        ("accumulate", lambda: norm(3, 1000, BF16, BF16, FP32, accumulate=True)),
        ("clamp", lambda: norm(3, 1000, FP16, FP16, clamp=True)),
        ("fused fp32 residual", lambda: fused(5, 1000)),
        ("fused fp16 residual", lambda: fused(3, 999, FP16, FP16)),
        ("in place", lambda: in_place(4, 1000)),
        ("split N40000", lambda: norm(2, 40000, BF16, BF16)),
        ("split N40000 all features", lambda: norm(2, 40000, FP16, FP32, FP32, gemma=True,
                                                   bias_dtype=BF16, accumulate=True, clamp=True)),
        ("split fused fp32 residual", lambda: fused(2, 40000)),
        ("split in place", lambda: in_place(2, 40000)),
        ("fanout 3 copies N999", lambda: fanout(5, 999)),
        ("plans N1000", lambda: planned(3, 1000)),
        ("split plans N40000", lambda: planned(2, 40000)),
        # From SPLIT_CAP_MIN_ROWS rows, 16-bit split rows compile under a register cap
        # (config.split_register_cap) where this Triton was measured with it, and fp16 rows to
        # fp32 from SPLIT_WIDE_OUT_CAP_MIN_ROWS rows under a lower cap.
        ("split capped M512 N65536", lambda: norm(512, 65536, FP16, FP16)),
        ("split capped fused bf16 residual", lambda: fused(512, 65536, BF16, BF16)),
        ("split capped fp16 -> fp32 M64 N65536", lambda: norm(64, 65536, FP16, FP16, FP32)),
    ]
    looped = [
        ("looped N40000", lambda: norm(2, 40000, BF16, BF16)),
        ("looped N40000 all features", lambda: norm(2, 40000, FP16, FP32, FP32, gemma=True,
                                                    bias_dtype=BF16, accumulate=True,
                                                    clamp=True, strided_x=True)),
        ("looped fused fp32 residual", lambda: fused(2, 40001)),
    ]
    pairs = [(f"dtypes {xd}->{od}".replace("torch.", ""),
              lambda xd=xd, od=od: norm(3, 1000, xd, xd, od)) for xd in DTYPES for od in DTYPES]
    if quick:
        c, pairs = c[:4] + c[11:12] + c[14:15] + c[-3:], pairs[::4]
        looped = looped[:1]
    return c + pairs, looped


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a third of the cases")
    ap.add_argument("--cpu", action="store_true", help="run in the Triton interpreter (slow; "
                    "checks this script, not the GPU)")
    args = ap.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        print("sanitize_driver: skipped, no CUDA GPU")
        return 0
    torch.manual_seed(0)
    plain, looped = cases(args.quick)
    failures, t0 = [], time.time()
    for forced, group in ((False, plain), (True, looped)):
        for name, run in group:
            try:
                with looped_kernel() if forced else contextlib.nullcontext():
                    run()
                if DEV == "cuda":
                    torch.cuda.synchronize()
            except Exception as e:      # report every case, then fail
                failures.append(f"{name}: {type(e).__name__}: {e}")
    n = len(plain) + len(looped)
    for f in failures:
        print("FAILED", f)
    print(f"sanitize_driver: {n - len(failures)}/{n} cases matched fp64 in {time.time() - t0:.1f}s")
    return 3 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
