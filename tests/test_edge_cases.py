"""Edge values with defined results (docs/errors.md, "Edge values"), on both kernel paths.

Each test compares with the fp64 oracle where the formula is finite, and with the exact
result the fp32 formula defines where it is not (zeros, NaN, +-inf). Rows never affect one
another, so a poisoned row is checked next to clean rows that must come out bit for bit as
they do without it.
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import rmsnorm_triton as rt
from rmsnorm_triton.config import LOOP_CHUNK_N, MAX_N, LaunchConfig
from helpers import (DTYPES, assert_close, assert_guard_intact, poisoned, rand_w, rand_x,
                     rmsnorm_ref)

# inf and NaN are the point here: numpy, under the interpreter, warns about each one it makes.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
FP16_MAX = 65504.0
ON_GPU = torch.cuda.is_available()
# 1000 fits one tile. 40000 > config.MAX_SINGLE_TILE_N is a long row: the interpreter streams it
# twice (looped), a GPU splits it over programs that share partial sums.
PATHS = [pytest.param(1000, id="single-tile"), pytest.param(40000, id="long-row")]


def _name(d):
    return str(d).replace("torch.", "")


def _with_clean_rows(x, bad_rows, device):
    """x with its bad rows replaced by random finite ones: the run to compare clean rows with."""
    clean = x.clone()
    clean[bad_rows] = rand_x((len(bad_rows), x.shape[1]), x.dtype, device)
    return clean


# ---- rows of zeros ----------------------------------------------------------------------------

@pytest.mark.parametrize("N", PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("variant", ["plain", "gemma", "bias", "accumulate", "fused"])
def test_zero_row_with_positive_eps_gives_zeros(device, N, dtype, variant):
    x, w = rand_x((3, N), dtype, device), rand_w(N, dtype, device, gemma=variant == "gemma")
    x[1] = 0
    offset = 1.0 if variant == "gemma" else 0.0
    bias = torch.randn(N, device=device).to(dtype) if variant == "bias" else None
    buf, out = poisoned(3, N, dtype, device)
    if variant == "accumulate":
        start = rand_x((3, N), dtype, device)
        out.copy_(start)
        rt.rms_norm(x, w, bias=bias, weight_offset=offset, out=out, accumulate=True)
        want = start.double() + rmsnorm_ref(x, w, weight_offset=offset)
        assert torch.equal(out[1], start[1]), "adding the zero row's 0 changed out"
    elif variant == "fused":
        residual = rand_x((3, N), dtype, device)
        x[1] = -residual[1]          # x + residual is exactly zero in row 1
        rt.fused_add_rms_norm(x, residual, w, out=out)
        assert torch.equal(residual[1], torch.zeros_like(residual[1]))
        want = rmsnorm_ref(residual, w)
        assert torch.equal(out[1], torch.zeros_like(out[1]))
    else:
        rt.rms_norm(x, w, bias=bias, weight_offset=offset, out=out)
        want = rmsnorm_ref(x, w, weight_offset=offset, bias=bias)
        expect_row = bias if bias is not None else torch.zeros_like(out[1])
        assert torch.equal(out[1], expect_row), "a zero row must give exactly 0 (+ bias)"
    assert_close(out, want)
    assert_guard_intact(buf, N)


@pytest.mark.parametrize("N", PATHS)
def test_zero_row_with_zero_eps_is_nan_as_torch(device, N):
    x, w = rand_x((3, N), FP32, device), rand_w(N, FP32, device)
    x[1] = 0
    out = rt.rms_norm(x, w, eps=0.0)
    # 0 * rsqrt(0) = 0 * inf: torch's own rms_norm gives the same NaN row.
    assert torch.isnan(F.rms_norm(x, (N,), w, eps=0.0)[1]).all()
    assert torch.isnan(out[1]).all()
    clean_rows = [0, 2]
    assert_close(out[clean_rows], rmsnorm_ref(x[clean_rows], w, eps=0.0))


# ---- subnormal and tiny inputs ----------------------------------------------------------------

@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_subnormal_fp16_inputs_are_exact(device, eps):
    # fp16 subnormals (below 6.1e-5) are normal fp32 numbers: nothing is lost.
    x = (torch.rand(4, 1000, device=device) * 8e-5 - 4e-5).to(FP16)
    assert (x.abs() < torch.finfo(FP16).tiny).float().mean() > 0.5
    w = rand_w(1000, FP16, device)
    assert_close(rt.rms_norm(x, w, eps=eps), rmsnorm_ref(x, w, eps=eps))


# The Triton interpreter's own bf16 -> fp32 conversion turns bf16 subnormals into other numbers
# (interpreter.py, _convert_float); on a GPU the conversion is a shift and keeps them.
BF16_SUBNORMALS = pytest.param(BF16, id="bfloat16", marks=pytest.mark.skipif(
    rt.ops.INTERPRET, reason="the Triton interpreter converts bf16 subnormals to fp32 wrongly"))


@pytest.mark.parametrize("N", PATHS)
@pytest.mark.parametrize("dtype", [BF16_SUBNORMALS, FP32], ids=_name)
def test_subnormal_fp32_bf16_inputs_with_eps(device, N, dtype):
    x = (rand_x((2, N), FP32, device) * 5e-40).to(dtype)
    assert (x != 0).float().mean() > 0.9 and (x.abs() < torch.finfo(FP32).tiny).all()
    w = rand_w(N, FP32, device)
    # y = x * rsqrt(eps) * w: about 1e-36, a normal fp32 number; subnormal x is not flushed.
    assert_close(rt.rms_norm(x, w, eps=1e-6, out_dtype=FP32), rmsnorm_ref(x, w, eps=1e-6))


@pytest.mark.parametrize("N", PATHS)
def test_tiny_row_with_zero_eps_is_signed_inf(device, N):
    x = rand_x((2, N), FP32, device) * 1e-30    # normal numbers whose fp32 squares are 0
    x[x == 0] = 1e-30
    out = rt.rms_norm(x, None, eps=0.0)
    assert torch.equal(out, torch.sign(x) * float("inf"))
    assert torch.equal(out, rt.rms_norm_reference(x, None, eps=0.0))


def test_subnormal_row_with_zero_eps_is_not_finite(device):
    # The squares underflow to 0 and rsqrt(0) is inf; whether the subnormal x is then kept (inf)
    # or flushed (0 * inf = NaN) is the GPU's business, so only non-finiteness is defined.
    x = (rand_x((2, 1000), FP32, device) * 1e-40).clamp_min(1e-42)
    assert not torch.isfinite(rt.rms_norm(x, None, eps=0.0)).any()


# ---- large values -------------------------------------------------------------------------

@pytest.mark.parametrize("N", PATHS)
def test_fp16_near_max_sums_squares_in_fp32(device, N):
    signs = torch.randint(0, 2, (3, N), device=device) * 2 - 1
    x = (signs * 60000.0).to(FP16)
    x[2, ::7] = FP16_MAX
    w = rand_w(N, FP16, device)
    out = rt.rms_norm(x, w)
    # In fp16, 60000**2 is inf; summed in fp32 the row normalizes to about +-w.
    assert_close(out, rmsnorm_ref(x, w))
    assert torch.allclose(out[0].float().abs(), w.float().abs(), rtol=2e-3)


@pytest.mark.parametrize("N", PATHS)
def test_huge_bf16_within_fp32_sum_to_fp32_out(device, N):
    # Largest scale whose fp32 sum of squares stays finite (E[x^2] = 4.25 * scale^2 per element).
    scale = 2e18 / N ** 0.5
    x = rand_x((3, N), FP32, device, scale=2.0).mul(scale).to(BF16)
    assert x.abs().max() > 1e16
    w = rand_w(N, BF16, device)
    assert_close(rt.rms_norm(x, w, out_dtype=FP32), rmsnorm_ref(x, w))


@pytest.mark.xfail(strict=True, reason="the fp32 sum of squares overflows to inf and rsqrt(inf) "
                   "= 0 zeroes the row (docs/errors.md, Known limits)")
@pytest.mark.parametrize("N", PATHS)
def test_huge_bf16_beyond_fp32_sum(device, N):
    x = (rand_x((2, N), FP32, device) * 1e30).to(BF16)
    w = rand_w(N, BF16, device)
    assert_close(rt.rms_norm(x, w, out_dtype=FP32), rmsnorm_ref(x, w))


# ---- non-finite inputs stay in their row ------------------------------------------------------

@pytest.mark.parametrize("N", PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
@pytest.mark.parametrize("op", ["rms_norm", "fused_add"])
def test_inf_and_nan_stay_in_their_row(device, N, dtype, op):
    x, w = rand_x((4, N), dtype, device), rand_w(N, dtype, device)
    poison = torch.zeros(4, N, device=device)
    poison[1, 3], poison[2, 5], poison[3, 7] = float("inf"), float("-inf"), float("nan")
    residual = rand_x((4, N), FP32, device)

    def run(values, poisoned):
        bad = poison if poisoned else torch.zeros_like(poison)
        if op == "rms_norm":
            return rt.rms_norm(values + bad.to(dtype), w)
        return rt.fused_add_rms_norm(values, residual.clone() + bad, w)[0]

    out = run(x, True)
    clean = run(_with_clean_rows(x, [1, 2, 3], device), False)
    assert torch.equal(out[0], clean[0]), "a non-finite row changed another row"
    for row, col in ((1, 3), (2, 5)):
        # rsqrt(inf) = 0: NaN (inf * 0) at the infinity, 0 everywhere else in the row.
        assert torch.isnan(out[row, col])
        rest = torch.cat([out[row, :col], out[row, col + 1:]])
        assert torch.equal(rest.abs(), torch.zeros_like(rest))
    assert torch.isnan(out[3]).all()


@pytest.mark.parametrize("N", PATHS)
def test_clamp_turns_fp16_inf_into_max(device, N):
    x, w = rand_x((3, N), FP16, device), rand_w(N, FP16, device)
    x[0, 10], x[1, 20], x[1, 21], x[2, 30] = float("inf"), float("-inf"), float("inf"), float("nan")
    out = rt.rms_norm(x, w, clamp_fp16_input=True, out_dtype=FP32)
    # Exactly what the finite +-65504 gives: the clamp happens before anything else.
    as_max = torch.where(torch.isinf(x), torch.sign(x) * FP16_MAX, x.float()).to(FP16)
    assert torch.equal(out[:2], rt.rms_norm(as_max, w, out_dtype=FP32)[:2])
    assert_close(out[:2], rmsnorm_ref(x[:2], w, clamp=True), FP32)
    # The package's choice: NaN is not a number to clamp, so its row stays NaN.
    assert torch.isnan(out[2]).all()


@pytest.mark.parametrize("dtype", [BF16, FP32], ids=_name)
def test_clamp_is_a_no_op_for_other_dtypes(device, dtype):
    x, w = rand_x((2, 256), dtype, device), rand_w(256, dtype, device)
    x[0, 3] = float("inf")
    out = rt.rms_norm(x, w, clamp_fp16_input=True)
    assert torch.isnan(out[0, 3]) and torch.equal(out[1], rt.rms_norm(x, w)[1])


# ---- eps and N ----------------------------------------------------------------------------

@pytest.mark.parametrize("N", PATHS)
@pytest.mark.parametrize("eps", [0.0, 1e-12, 1e6])
@pytest.mark.parametrize("dtype", [BF16, FP32], ids=_name)
def test_extreme_eps(device, N, eps, dtype):
    x, w = rand_x((3, N), dtype, device), rand_w(N, dtype, device)
    out = rt.rms_norm(x, w, eps=eps)
    assert_close(out, rmsnorm_ref(x, w, eps=eps))
    if eps == 1e6:       # eps dominates: y is about x / 1000
        assert out.float().abs().max() < 0.1


@pytest.mark.parametrize("variant", ["plain", "gemma", "bias", "eps0"])
@pytest.mark.parametrize("dtype", DTYPES, ids=_name)
def test_n_equals_one(device, variant, dtype):
    x = rand_x((9, 1), dtype, device)
    w = rand_w(1, dtype, device, gemma=variant == "gemma")
    bias = torch.randn(1, device=device).to(dtype) if variant == "bias" else None
    eps = 0.0 if variant == "eps0" else 1e-6
    offset = 1.0 if variant == "gemma" else 0.0
    buf, out = poisoned(9, 1, dtype, device)
    rt.rms_norm(x, w, eps, bias=bias, weight_offset=offset, out=out)
    # One element per row: y = x / sqrt(x^2 + eps) * w, about sign(x) * w.
    assert_close(out, rmsnorm_ref(x, w, eps, weight_offset=offset, bias=bias))
    assert_guard_intact(buf, 1)


@pytest.mark.parametrize("N", [3, 1001, 4095, 32767, 32769, 70001])
def test_odd_n(device, N):
    x, w = rand_x((2, N), BF16, device), rand_w(N, FP32, device)
    buf, out = poisoned(2, N, FP16, device)
    rt.rms_norm(x, w, out=out)
    assert_close(out, rmsnorm_ref(x, w))
    assert_guard_intact(buf, N)


# ---- long rows with each feature --------------------------------------------------------------

@pytest.fixture(params=["default"] + (["forced-looped"] if ON_GPU else []))
def long_row_kernel(request, monkeypatch):
    """On a GPU also the looped kernel, which a tuned table may pick over the split-row one."""
    if request.param == "forced-looped":
        looped = LaunchConfig(block_m=1, block_n=LOOP_CHUNK_N, num_warps=16, looped=True)
        monkeypatch.setattr(rt.ops, "pick_config", lambda *args: looped)
    return request.param


# Every feature but "in-place" writes a row-strided poisoned out (poisoned()'s guard band).
LOOPED_FEATURES = ["plain", "fp32-weight", "no-weight", "gemma", "bias", "accumulate", "clamp",
                   "fused-fp32-residual", "fp32-out", "strided-x", "in-place"]


@pytest.mark.parametrize("N", [40000, 70001])
@pytest.mark.parametrize("feature", LOOPED_FEATURES)
def test_long_row_features(device, long_row_kernel, N, feature):
    M = 2
    x = rand_x((M, N), FP16, device)
    w = None if feature == "no-weight" else rand_w(
        N, FP32 if feature == "fp32-weight" else FP16, device, gemma=feature == "gemma")
    kw = {"weight_offset": 1.0} if feature == "gemma" else {}
    out_dtype = FP32 if feature == "fp32-out" else FP16
    buf, out = poisoned(M, N, out_dtype, device)
    if feature == "strided-x":
        x = rand_x((M, N + 77), FP16, device)[:, :N]
    if feature == "bias":
        kw["bias"] = torch.randn(N, device=device).to(BF16)
    if feature == "clamp":
        x[0, 5], x[1, N - 1] = float("inf"), float("-inf")
        kw["clamp_fp16_input"] = True
    h = x
    if feature == "fused-fp32-residual":
        residual = rand_x((M, N), FP32, device)
        want_residual = (x.float() + residual)
        rt.fused_add_rms_norm(x, residual, w, out=out, **kw)
        torch.testing.assert_close(residual, want_residual, rtol=0, atol=0)
        h = residual
    elif feature == "accumulate":
        start = rand_x((M, N), FP16, device)
        out.copy_(start)
        rt.rms_norm(x, w, out=out, accumulate=True)
    elif feature == "in-place":
        want = rmsnorm_ref(x, w)
        assert rt.rms_norm(x, w, out=x).data_ptr() == x.data_ptr()
        assert_close(x, want)
        return
    else:
        rt.rms_norm(x, w, out=out, **kw)
    want = rmsnorm_ref(h, w, weight_offset=kw.get("weight_offset", 0.0), bias=kw.get("bias"),
                       clamp=feature == "clamp")
    if feature == "accumulate":
        want = start.double() + want
    assert_close(out, want)
    assert_guard_intact(buf, N)


@pytest.mark.parametrize("N", [40000, 70001])
def test_long_row_non_collapsible_views(device, long_row_kernel, N):
    # Transposed leading dims: no single row stride describes x or out, so both are staged.
    x = rand_x((2, 2, N + 5), BF16, device)[..., :N].transpose(0, 1)
    residual = rand_x((2, 2, N), FP32, device).transpose(0, 1)
    buf = torch.full((2, 2, N + 64), float("nan"), dtype=FP32, device=device)
    out = buf[..., :N].transpose(0, 1)
    w = rand_w(N, BF16, device)
    want_residual = x.float() + residual
    rt.fused_add_rms_norm(x, residual, w, out=out)
    torch.testing.assert_close(residual, want_residual, rtol=0, atol=0)
    assert_close(out, rmsnorm_ref(residual, w))
    assert torch.isnan(buf[..., N:]).all(), "the kernel wrote past the end of a row"


@pytest.mark.parametrize("which", ["weight", "bias"])
def test_strided_weight_and_bias(device, which):
    N = 256
    x = rand_x((4, N), FP32, device)
    every_other = torch.randn(2 * N, device=device)[::2]     # shape (N,), stride 2
    w, bias = (every_other, None) if which == "weight" else (None, every_other)
    assert_close(rt.rms_norm(x, w, bias=bias), rmsnorm_ref(x, w, bias=bias))


# ---- the longest rows ---------------------------------------------------------------------

_LONGEST_ROWS = f"""
import sys, torch
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import rmsnorm_triton as rt
from helpers import rel_err, rmsnorm_ref
for n in (1 << 20, 1 << 22, {MAX_N}):
    x = (0.5 + 2 * torch.randn(2, n, device="cuda")).to(torch.bfloat16)
    y = rt.rms_norm(x, None)
    torch.cuda.synchronize()
    print(n, rel_err(y, rmsnorm_ref(x)), flush=True)
"""


@pytest.mark.skipif(not ON_GPU, reason="rows past 32K elements take the split-row kernel only on "
                    "a GPU; the interpreter streams them, and odd N up to 70001 cover that")
def test_longest_rows_finish_on_gpu():
    # The split-row kernel's programs wait for the other programs of their row: a row with more
    # programs than the GPU holds at once would spin forever. A child process turns a hang into
    # a failure instead of a stuck suite.
    try:
        run = subprocess.run([sys.executable, "-c", _LONGEST_ROWS], capture_output=True,
                             text=True, timeout=60)
    except subprocess.TimeoutExpired as e:
        done = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout
        pytest.fail(f"rows of up to {MAX_N} elements did not finish in 60 s; done: {done!r}")
    assert run.returncode == 0, run.stderr[-3000:]
    results = [line.split() for line in run.stdout.strip().splitlines()]
    assert [int(n) for n, _ in results] == [1 << 20, 1 << 22, MAX_N]
    for n, err in results:
        assert float(err) < 8e-3, f"N={n}: rel err {err}"


def _free_gpu_bytes() -> int:
    return torch.cuda.mem_get_info()[0] if ON_GPU else 0


@pytest.mark.skipif(_free_gpu_bytes() < 14e9, reason="offsets past 2**31 elements need ~13 GB "
                    "of free GPU memory (three 4 GB buffers); the interpreter's pointers are host "
                    "arrays")
@pytest.mark.parametrize("M,N,fused", [(3, 4096, False), (512, 9216, False), (3, 65536, False),
                                       (3, 4096, True)],
                         ids=["tile", "looped", "split", "fused-add"])
def test_row_offsets_past_2_31_elements(M, N, fused):
    """The last row of x, the residual and the output starts at element 2**31 or later: a 32-bit
    row offset would wrap and read or write another row (vLLM's int32-index bug). The row
    stride stays under 2**31 (Triton types it i32), so only the kernels' 64-bit row index keeps
    the product right."""
    stride = -(-(1 << 31) // (M - 1))
    assert stride < 1 << 31 and stride * (M - 1) >= 1 << 31
    span = stride * (M - 1) + N
    buffers, x, out, r = [], None, None, None

    def far_rows(fill):
        buffers.append(torch.full((span,), fill, dtype=BF16, device="cuda"))
        return buffers[-1].as_strided((M, N), (stride, 1))
    try:
        x, out = far_rows(0.0), far_rows(float("nan"))
        x.copy_(rand_x((M, N), BF16, "cuda"))
        w = rand_w(N, BF16, "cuda")
        if fused:
            r = far_rows(0.0)
            r.copy_(rand_x((M, N), BF16, "cuda"))
            s = (x.double() + r.double()).to(BF16)
            rt.fused_add_rms_norm(x, r, w, out=out)
            assert torch.equal(r, s)
            want = rmsnorm_ref(s, w)
        else:
            rt.rms_norm(x, w, out=out)
            want = rmsnorm_ref(x, w)
        assert_close(out, want)
    finally:
        del buffers[:], x, out, r          # every view too, so the 4 GB blocks can go
        torch.cuda.empty_cache()


# ---- negative views -------------------------------------------------------------------------
# torch's lazy negation (torch._neg_view; conj() views of complex tensors set it too) leaves
# the memory holding -t. The kernels read memory, so such a tensor must be materialized first,
# also after a plain call of the same shape has left a fast path (a plan) behind.

@pytest.mark.parametrize("which", ["x", "weight", "bias"])
def test_negative_view_inputs(device, which):
    N = 256
    x, w = rand_x((4, N), FP32, device), rand_w(N, FP32, device)
    bias = torch.randn(N, device=device)
    rt.rms_norm(x, w, bias=bias)               # the plain call first: it leaves a plan
    args = {"x": x, "weight": w, "bias": bias}
    args[which] = torch._neg_view(-args[which])
    assert args[which].is_neg()
    want = rmsnorm_ref(x, w, bias=bias)
    for _ in range(2):                         # the first call and a repeat one
        assert_close(rt.rms_norm(args["x"], args["weight"], bias=args["bias"]), want)


@pytest.mark.parametrize("accumulate", [False, True])
def test_negative_view_out(device, accumulate):
    N = 256
    x, w = rand_x((4, N), BF16, device), rand_w(N, BF16, device)
    start = rand_x((4, N), FP32, device)
    out = torch._neg_view(-start) if accumulate else torch._neg_view(
        torch.full((4, N), float("nan"), device=device))
    rt.rms_norm(x, w, out=out, accumulate=accumulate)
    want = rmsnorm_ref(x, w) + (start.double() if accumulate else 0)
    assert_close(out.resolve_neg(), want)


def test_negative_view_residual(device):
    N = 256
    x, w = rand_x((4, N), BF16, device), rand_w(N, BF16, device)
    base = rand_x((4, N), FP32, device)
    rt.fused_add_rms_norm(x, base.clone(), w)  # the plain call first: it leaves a plan
    residual = torch._neg_view(-base)
    y, _ = rt.fused_add_rms_norm(x, residual, w)
    want_residual = x.float() + base
    torch.testing.assert_close(residual.resolve_neg(), want_residual, rtol=0, atol=0)
    assert_close(y, rmsnorm_ref(want_residual, w), dtype=BF16)


@pytest.mark.parametrize("dtype", [BF16, FP32], ids=_name)
def test_column_views_of_one_buffer_that_share_no_element(device, dtype):
    """x, out and the residual may be column slices of one buffer (a concatenation buffer, or
    the halves of buf.split(N, -1)) where no element is shared: accepted, and each result is
    the oracle's, the rest of the buffer untouched."""
    M, N = 6, 48
    w = rand_w(N, dtype, device)
    buf = rand_x((M, 3 * N + 5), dtype, device)
    keep = buf.clone()
    x, out = buf[:, :N], buf[:, N + 5:2 * N + 5]
    want = rmsnorm_ref(x, w)
    assert rt.rms_norm(x, w, out=out) is out
    assert_close(out, want)
    assert torch.equal(buf[:, :N], keep[:, :N]) and torch.equal(buf[:, 2 * N + 5:],
                                                                keep[:, 2 * N + 5:])
    pair = rand_x((M, 2 * N), dtype, device)
    x, residual = pair.split(N, -1)
    want_res = (x.double() + residual.double()).to(dtype)
    x_before = x.clone()
    y, r = rt.fused_add_rms_norm(x, residual, w)
    assert r is residual and torch.equal(x, x_before)
    assert_close(residual, want_res.double(), tol=1e-2 if dtype == BF16 else None)
    assert_close(y, rmsnorm_ref(residual, w))


def test_row_views_of_another_row_period_still_overlap(device):
    """Only views with one row period can be told apart by columns: here out's row 1 is x's
    row 2, in a buffer both read with different row strides."""
    buf = torch.zeros(512, device=device)
    x = buf.as_strided((4, 8), (16, 1))
    out = buf.as_strided((4, 8), (24, 1), 8)
    with pytest.raises(ValueError, match="out overlaps x"):
        rt.rms_norm(x, out=out)
