"""rms_norm and fused_add_rms_norm against the fp64 oracle, on CPU (interpreter) and GPU."""
import pytest
import torch

import rmsnorm_triton as rt
from rmsnorm_triton.config import LaunchConfig
from rmsnorm_triton.ops import _launch
from rmsnorm_triton.validate import check_inputs
from helpers import (DTYPES, assert_close, assert_guard_intact, poisoned, rand_w, rand_x,
                     rmsnorm_ref)

ON_GPU = torch.cuda.is_available()
INTERPRET = rt.ops.INTERPRET


def assert_rounded_like(got, want):
    """Equal bit for bit; the interpreter truncates bf16 stores, so there one ulp is allowed."""
    if INTERPRET and got.dtype == torch.bfloat16:
        torch.testing.assert_close(got, want, rtol=2 ** -7, atol=0)
    else:
        torch.testing.assert_close(got, want, rtol=0, atol=0)
BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


def _name(d):
    return str(d).replace("torch.", "")


# Every (x, weight, out) dtype triple on a shape that exercises multi-row programs and masking.
DTYPE_CASES = [pytest.param(xd, wd, od, id=f"x{_name(xd)}-w{_name(wd)}-o{_name(od)}")
               for xd in DTYPES for wd in DTYPES for od in DTYPES]


@pytest.mark.parametrize("x_dtype,w_dtype,out_dtype", DTYPE_CASES)
def test_dtype_pairings(device, x_dtype, w_dtype, out_dtype):
    M, N = 7, 1000
    x, w = rand_x((M, N), x_dtype, device), rand_w(N, w_dtype, device)
    buf, out = poisoned(M, N, out_dtype, device)
    rt.rms_norm(x, w, 1e-5, out=out)
    assert_close(out, rmsnorm_ref(x, w, 1e-5))
    assert_guard_intact(buf, N)


SHAPES = [(1, 128), (7, 1000), (4, 4095), (3, 8192), (2, 65536), (1, 1), (5, 3), (33, 96)]
if ON_GPU:
    SHAPES += [(4096, 128), (4096, 4096), (64, 262144), (4, 1 << 20), (8, 1000003)]


@pytest.mark.parametrize("M,N", SHAPES, ids=[f"M{m}-N{n}" for m, n in SHAPES])
@pytest.mark.parametrize("dtype", [BF16, FP16, FP32], ids=_name)
def test_shapes(device, M, N, dtype):
    x, w = rand_x((M, N), dtype, device), rand_w(N, dtype, device)
    buf, out = poisoned(M, N, dtype, device)
    y = rt.rms_norm(x, w, out=out)
    assert y.data_ptr() == out.data_ptr()
    assert_close(out, rmsnorm_ref(x, w))
    assert_guard_intact(buf, N)


@pytest.mark.parametrize("N", [1000, 40000], ids=["single-tile", "looped"])
def test_huge_n_default_output(device, N):
    x = rand_x((3, N), BF16, device)
    y = rt.rms_norm(x, None)
    assert y.dtype == BF16 and y.shape == x.shape
    assert_close(y, rmsnorm_ref(x))


@pytest.mark.parametrize("N", [1000, 40000], ids=["single-tile", "looped"])
@pytest.mark.parametrize("with_weight", [True, False], ids=["weight", "no-weight"])
def test_gemma_offset_added_in_fp32(device, N, with_weight):
    x = rand_x((4, N), BF16, device)
    # Small Gemma weights: adding 1 in bf16 before the product would erase them.
    w = rand_w(N, BF16, device, gemma=True) if with_weight else None
    out = rt.rms_norm(x, w, weight_offset=1.0, out_dtype=FP32)
    assert_close(out, rmsnorm_ref(x, w, weight_offset=1.0), FP32, tol=1e-5)


@pytest.mark.parametrize("N", [1000, 40000], ids=["single-tile", "looped"])
def test_bias(device, N):
    x, w = rand_x((5, N), FP16, device), rand_w(N, FP32, device)
    b = torch.randn(N, device=device).to(BF16)
    assert_close(rt.rms_norm(x, w, bias=b, out_dtype=FP32), rmsnorm_ref(x, w, bias=b), FP32)


@pytest.mark.parametrize("N", [1000, 40000], ids=["single-tile", "looped"])
@pytest.mark.parametrize("out_dtype", [FP16, FP32], ids=_name)
def test_accumulate(device, N, out_dtype):
    x, w = rand_x((3, N), FP16, device), rand_w(N, FP16, device)
    buf, out = poisoned(3, N, out_dtype, device)
    start = rand_x((3, N), out_dtype, device)
    out.copy_(start)
    rt.rms_norm(x, w, out=out, accumulate=True)
    assert_close(out, start.double() + rmsnorm_ref(x, w))
    assert_guard_intact(buf, N)


def test_clamp_fp16_input(device):
    x = rand_x((3, 512), FP16, device)
    x[0, 7], x[1, 3], x[2, 100] = float("inf"), float("-inf"), 60000.0
    w = rand_w(512, FP16, device)
    y = rt.rms_norm(x, w, clamp_fp16_input=True, out_dtype=FP32)
    assert_close(y, rmsnorm_ref(x, w, clamp=True), FP32)
    # Without the clamp, an infinite input poisons its row as the formula says.
    assert not torch.isfinite(rt.rms_norm(x, w)[0]).all()


@pytest.mark.parametrize("N", [1000, 40000], ids=["single-tile", "looped"])
@pytest.mark.parametrize("x_dtype,res_dtype", [(BF16, BF16), (BF16, FP32), (FP16, FP32),
                                               (FP32, FP32), (FP16, FP16)],
                         ids=lambda d: _name(d))
def test_fused_add_equals_unfused(device, N, x_dtype, res_dtype):
    M = 6
    x, w = rand_x((M, N), x_dtype, device), rand_w(N, x_dtype, device)
    residual = rand_x((M, N), res_dtype, device)
    want_res = (x.float() + residual.float()).to(res_dtype)
    buf, out = poisoned(M, N, x_dtype, device)
    y, res = rt.fused_add_rms_norm(x, residual, w, out=out)
    assert res is residual and y.data_ptr() == out.data_ptr()
    assert_rounded_like(residual, want_res)
    # Bit for bit the two-step result: the norm of the updated residual, same kernel family.
    torch.testing.assert_close(out, rt.rms_norm(residual.clone(), w, out_dtype=x_dtype),
                               rtol=0, atol=0)
    assert_close(out, rmsnorm_ref(want_res, w))
    assert_guard_intact(buf, N)


def test_fused_add_writes_into_x(device):
    """vLLM's convention: the normalized output may overwrite the input."""
    x, residual = rand_x((4, 256), BF16, device), rand_x((4, 256), BF16, device)
    w = rand_w(256, BF16, device)
    want_res = (x.float() + residual.float()).to(BF16)
    y, _ = rt.fused_add_rms_norm(x, residual, w, out=x)
    assert y.data_ptr() == x.data_ptr()
    assert_close(x, rmsnorm_ref(want_res, w))


@pytest.mark.parametrize("N", [1000, 40000], ids=["single-tile", "looped"])
def test_in_place(device, N):
    x, w = rand_x((3, N), FP16, device), rand_w(N, FP16, device)
    ref = rmsnorm_ref(x, w)
    assert rt.rms_norm(x, w, out=x).data_ptr() == x.data_ptr()
    assert_close(x, ref)


def test_row_strided_views_run_without_copy(device):
    big = rand_x((9, 1536), BF16, device)
    x = big[:, 256:1280]                               # rows 1536 apart
    w = rand_w(1024, BF16, device)
    obig, out = poisoned(9, 1024, FP32, device)
    rt.rms_norm(x, w, out=out)
    assert_close(out, rmsnorm_ref(x, w))
    assert_guard_intact(obig, 1024)
    q, k = torch.split(rand_x((5, 3 * 64), FP16, device), [128, 64], dim=-1)
    assert_close(rt.rms_norm(k, None), rmsnorm_ref(k))
    assert_close(rt.rms_norm(q, None), rmsnorm_ref(q))


def test_leading_dims_and_non_collapsible_layouts(device):
    x3 = rand_x((2, 5, 96), BF16, device)
    w = rand_w(96, BF16, device)
    y = rt.rms_norm(x3, w)
    assert y.shape == x3.shape
    assert_close(y, rmsnorm_ref(x3, w))
    xt = rand_x((5, 2, 96), BF16, device).transpose(0, 1)      # no single row stride
    assert_close(rt.rms_norm(xt, w), rmsnorm_ref(xt, w))
    xc = rand_x((96, 4), FP32, device).t()                      # column stride 4: copied once
    assert_close(rt.rms_norm(xc, w), rmsnorm_ref(xc, w))
    outt = torch.full((5, 2, 96), float("nan"), dtype=FP32, device=device).transpose(0, 1)
    rt.rms_norm(xt, w, out=outt)
    assert_close(outt, rmsnorm_ref(xt, w))
    xe = rand_x((1, 96), FP16, device).expand(4, 96)            # stride-0 rows are fine to read
    assert_close(rt.rms_norm(xe, w), rmsnorm_ref(xe, w))


def test_non_collapsible_residual_is_updated_in_place(device):
    x = rand_x((3, 2, 64), BF16, device)
    residual = rand_x((2, 3, 64), FP32, device).transpose(0, 1)
    want_res = (x.float() + residual.float())
    w = rand_w(64, BF16, device)
    y, res = rt.fused_add_rms_norm(x, residual, w)
    assert res is residual
    torch.testing.assert_close(residual, want_res, rtol=0, atol=0)
    assert_close(y, rmsnorm_ref(want_res, w))


@pytest.mark.parametrize("shape", [(0, 64), (2, 0, 64), (0, 40000)], ids=str)
def test_zero_rows(device, shape):
    x = torch.empty(shape, dtype=BF16, device=device)
    y = rt.rms_norm(x, rand_w(shape[-1], BF16, device), out_dtype=FP32)
    assert y.shape == x.shape and y.dtype == FP32
    y, r = rt.fused_add_rms_norm(x, torch.empty(shape, dtype=FP32, device=device))
    assert y.shape == x.shape


def test_reference_matches_kernel(device):
    x, w = rand_x((4, 300), BF16, device), rand_w(300, FP32, device)
    b = torch.randn(300, device=device)
    kw = dict(bias=b, weight_offset=1.0, out_dtype=FP32)
    torch.testing.assert_close(rt.rms_norm(x, w, **kw), rt.rms_norm_reference(x, w, **kw),
                               rtol=2e-6, atol=2e-6)


def test_autograd_inputs_take_the_differentiable_path(device):
    x = rand_x((3, 64), FP32, device).requires_grad_()
    w = rand_w(64, FP32, device).requires_grad_()
    y = rt.rms_norm(x, w)
    y.sum().backward()
    assert x.grad is not None and w.grad is not None
    assert_close(y.detach(), rmsnorm_ref(x.detach(), w.detach()))


PATHS = [pytest.param(LaunchConfig(1, 32768, 16, False), id="single-tile"),
         pytest.param(LaunchConfig(2, 32768, 16, False), id="two-rows-per-program"),
         pytest.param(LaunchConfig(1, 4096, 8, True), id="looped"),
         # 16-bit x held as loaded (config.hold_row); the fp32 residual is not held.
         pytest.param(LaunchConfig(1, 65536, 32, False), id="held-row"),
         pytest.param(LaunchConfig(1, 4096, 4, False, splits=7), id="split-row",
                      marks=pytest.mark.skipif(not ON_GPU, reason="the split-row path waits "
                                               "across programs; the interpreter runs them "
                                               "one at a time"))]


@pytest.mark.parametrize("cfg", PATHS)
@pytest.mark.parametrize("fused_add", [False, True], ids=["norm", "fused-add"])
def test_every_kernel_path(device, cfg, fused_add):
    """Each way of covering a row gives the oracle's answer, with every feature on."""
    M, N = 3, 27001                                   # odd N, not a multiple of any chunk
    x, w = rand_x((M, N), FP16, device), rand_w(N, BF16, device, gemma=True)
    b = torch.randn(N, device=device)
    residual = rand_x((M, N), FP32, device) if fused_add else None
    want_in = (x.float() + residual) if fused_add else x
    buf, out = poisoned(M, N, FP32, device)
    start = rand_x((M, N), FP32, device)
    out.copy_(start)
    p = check_inputs(x, w, bias=b, residual=residual, out=out, weight_offset=1.0,
                     accumulate=not fused_add)
    _launch(p, 1e-6, 1.0, not fused_add, not fused_add, cfg)
    want = rmsnorm_ref(want_in, w, 1e-6, weight_offset=1.0, bias=b)
    if not fused_add:
        want = want + start.double()
    else:
        torch.testing.assert_close(residual, want_in, rtol=0, atol=0)
    assert_close(out, want)
    assert_guard_intact(buf, N)


@pytest.mark.parametrize("offset", [1, 3, 8], ids=lambda o: f"offset{o}")
def test_alignment_changes_between_calls(device, offset):
    """A launch cached for 16-byte-aligned rows must not be reused for misaligned ones."""
    N = 1024 + 8
    w = rand_w(N, BF16, device)
    flat = rand_x((4 * N + 64,), BF16, device)
    aligned = flat[: 4 * N].view(4, N)
    shifted = flat[offset: offset + 4 * N].view(4, N)
    for x in (aligned, shifted, aligned, shifted):
        assert_close(rt.rms_norm(x, w), rmsnorm_ref(x, w))


@pytest.mark.skipif(not ON_GPU or INTERPRET, reason="the launch cache serves compiled kernels")
def test_launch_cache_keys_on_specialization(device):
    from rmsnorm_triton.ops import _launch_rows
    x, w = rand_x((3, 512), FP16, device), rand_w(512, FP16, device)
    rt.rms_norm(x, w)
    before = len(_launch_rows.kernels)
    rt.rms_norm(rand_x((3, 512), FP16, device), w)           # same specialization: reused
    assert len(_launch_rows.kernels) == before
    rt.rms_norm(rand_x((3, 512), FP16, device), w, out_dtype=FP32)   # new out dtype: new entry
    assert len(_launch_rows.kernels) == before + 1


class _ArgSpy:
    """Records the arguments and meta-parameters each launch of the wrapped kernel gets."""

    def __init__(self, kernel):
        self.kernel, self.calls = kernel, []

    def __getitem__(self, grid):
        def run(*args, **meta):
            self.calls.append((args, meta))
            return self.kernel[grid](*args, **meta)
        return run


@pytest.mark.parametrize("cfg,masked", [(LaunchConfig(1, 512, 4, False), False),
                                        (LaunchConfig(2, 512, 4, False), True),
                                        (LaunchConfig(1, 128, 4, True), False)],
                         ids=["row-a-program", "two-rows", "looped"])
@pytest.mark.parametrize("has_w,has_b,fused", [(True, False, False), (False, True, True),
                                               (True, True, True), (False, False, False)],
                         ids=["weight", "bias-add", "weight-bias-add", "bare"])
def test_unused_operands_reach_the_kernel_as_none(device, monkeypatch, cfg, masked, has_w,
                                                  has_b, fused):
    """Triton compiles a None argument out: the residual, weight and bias, the row count and
    the residual's stride are None exactly where the launch does not read them, and the
    result still matches the oracle in a poisoned buffer."""
    M, N = 5, 300
    spy = _ArgSpy(rt.ops._launch_rows.fn)
    monkeypatch.setattr(rt.ops._launch_rows, "fn", spy)
    monkeypatch.setattr(rt.ops._launch_rows, "kernels", {})     # the first launch goes via fn
    x = rand_x((M, N), FP32, device)
    w = rand_w(N, FP32, device) if has_w else None
    b = rand_x((N,), FP32, device, scale=0.5) if has_b else None
    r = rand_x((M, N), FP32, device) if fused else None
    h = x if r is None else x + r
    buf, out = poisoned(M, N, FP32, device)
    _launch(check_inputs(x, w, bias=b, residual=r, out=out, eps=1e-6, fused=fused), 1e-6, 0.0,
            False, False, cfg)
    (args, meta), = spy.calls
    _, r_arg, w_arg, b_arg, _, n_rows, _, _, stride_r, _, _ = args
    assert (r_arg is None, w_arg is None, b_arg is None) == (not fused, not has_w, not has_b)
    assert (stride_r is None, n_rows is None, meta["ROW_MASK"]) == (not fused, not masked,
                                                                     masked)
    assert_close(out, rmsnorm_ref(h, w, bias=b))
    assert_guard_intact(buf, N)


def test_launch_cache_key_tells_none_from_a_value_and_where_it_is():
    from rmsnorm_triton.launcher import _spec_key
    t = torch.zeros(4)
    forms = [(t, None, 16), (None, t, 16), (t, t, 16), (t, None, None), (t, t, None),
             (t, None, 17), (t, None, 1), (None, None, 16)]
    assert len({_spec_key(a) for a in forms}) == len(forms)


def test_out_is_returned_itself_and_numpy_scalars_are_accepted(device):
    import numpy as np
    x, w = rand_x((4, 64), BF16, device), rand_w(64, BF16, device)
    out = torch.empty(4, 64, dtype=FP32, device=device)
    assert rt.rms_norm(x, w, np.float32(1e-5), out=out, weight_offset=np.float64(0.0)) is out
    assert_close(out, rmsnorm_ref(x, w, float(np.float32(1e-5))))
    res = rand_x((4, 64), FP32, device)
    y, r = rt.fused_add_rms_norm(x, res, w, out=out)
    assert y is out and r is res


def test_reference_path_names_a_missing_residual():
    from rmsnorm_triton.reference import fused_add_rms_norm_reference
    with pytest.raises(TypeError, match="residual must be a torch.Tensor"):
        fused_add_rms_norm_reference(torch.randn(2, 8), None)


@pytest.mark.parametrize("preload", [True, False], ids=["weight-early", "weight-late"])
def test_weight_fetch_order_does_not_change_results(device, monkeypatch, preload):
    """config.preload_weight only moves the weight/bias loads: same bits either way."""
    from rmsnorm_triton import ops, plans
    M, N = 9, 1000
    x, w, b = rand_x((M, N), BF16, device), rand_w(N, FP32, device), rand_w(N, BF16, device)
    want = rt.rms_norm(x, w, bias=b, weight_offset=1.0)
    monkeypatch.setattr(ops, "preload_weight", lambda *args: preload)
    plans.clear()
    buf, out = poisoned(M, N, BF16, device)
    rt.rms_norm(x, w, bias=b, weight_offset=1.0, out=out)
    assert_guard_intact(buf, N)
    assert_close(out, rmsnorm_ref(x, w, weight_offset=1.0, bias=b))
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    plans.clear()


@pytest.mark.parametrize("w_dtype,b_dtype,early", [
    (FP32, None, False),        # an fp32 weight spilled fetched first in the 32K tile
    (BF16, BF16, False),        # so did a 16-bit weight with a bias
    (None, FP32, False),        # and an fp32 bias alone
    (BF16, None, True),         # a 16-bit weight alone did not: first, as at other widths
    (None, None, True),
])
def test_wide_tiles_fetch_weight_and_bias_late_past_4_bytes_a_column(device, monkeypatch,
                                                                     w_dtype, b_dtype, early):
    """config.preload_weight is told the weight's and the bias's bytes a column: in the 32768
    tile (a decode-sized call of 24577 columns) 4 or more are fetched after the reduction, as
    the launch's flags show; the result holds either way."""
    from rmsnorm_triton import ops, plans
    M, N = 2, 24577
    x = rand_x((M, N), BF16, device)
    w = None if w_dtype is None else rand_w(N, w_dtype, device)
    b = None if b_dtype is None else rand_w(N, b_dtype, device)
    launched, run = [], ops._run_kernel
    monkeypatch.setattr(ops, "_run_kernel", lambda *a: launched.append(dict(a[6])) or run(*a))
    plans.clear()
    buf, out = poisoned(M, N, BF16, device)
    rt.rms_norm(x, w, bias=b, out=out)
    assert [(f["BLOCK_N"], f["PRELOAD_W"]) for f in launched] == [(32768, early)]
    assert_guard_intact(buf, N)
    assert_close(out, rmsnorm_ref(x, w, bias=b))
    plans.clear()


def test_fx_symbolic_trace_names_the_argument():
    """Tracing hands rms_norm a Proxy: the error says what x must be, as for any non-tensor."""
    import torch.fx

    class Net(torch.nn.Module):
        def forward(self, x):
            return rt.rms_norm(x, None)

    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        torch.fx.symbolic_trace(Net())


# ---- in-place writes are visible to autograd ---------------------------------------------------

def _saved_by_autograd(t):
    """A loss whose backward needs t's values as they are now (t * p saves t for p's grad)."""
    p = torch.ones_like(t, requires_grad=True)
    return (p * t).sum()


@pytest.mark.parametrize("call", ["fused-add", "fused-add-out", "norm-out", "norm-in-place",
                                  "norm-accumulate"])
def test_kernel_writes_bump_the_version_autograd_checks(device, call):
    """The kernels write residual and out behind autograd's back; they count as in-place ops
    (as torch's own and vLLM's registered ops do), so a tensor an autograd graph saved and a
    call then overwrote raises at backward instead of giving a wrong gradient. Twice: the
    first call takes the full path, the second the launch plan where there is one."""
    N = 64
    w = rand_w(N, torch.bfloat16, device)
    for _ in range(2):
        x, residual = rand_x((3, N), torch.bfloat16, device), rand_x((3, N), torch.float32,
                                                                      device)
        out = torch.zeros(3, N, dtype=torch.float32, device=device)
        written = {"fused-add": residual, "fused-add-out": residual, "norm-out": out,
                   "norm-in-place": x, "norm-accumulate": out}[call]
        want_written = {"fused-add": (x.float() + residual),
                        "fused-add-out": (x.float() + residual)}.get(call)
        loss, before = _saved_by_autograd(written), written._version
        if call == "fused-add":
            rt.fused_add_rms_norm(x, residual, w)
        elif call == "fused-add-out":
            rt.fused_add_rms_norm(x, residual, w, out=torch.empty_like(x))
        elif call == "norm-in-place":
            rt.rms_norm(x, w, out=x)
        else:
            rt.rms_norm(x, w, out=out, accumulate=call == "norm-accumulate")
        assert written._version > before
        if want_written is not None:
            torch.testing.assert_close(written, want_written, rtol=0, atol=0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


def test_inference_tensors_are_written_without_a_version(device):
    """Inference-mode tensors have no version counter; the in-place calls still work on them."""
    N = 64
    with torch.inference_mode():
        x, w = rand_x((3, N), torch.float16, device), rand_w(N, torch.float16, device)
        residual = rand_x((3, N), torch.float16, device)
        want = (x.float() + residual.float()).half()
        y, r = rt.fused_add_rms_norm(x, residual, w)
        assert r is residual and torch.equal(residual, want)
        assert_close(y, rmsnorm_ref(want, w))
        rt.rms_norm(x, w, out=x)


def test_meta_tensors_give_shapes_and_dtypes():
    """Meta tensors (a model built before its weights load) hold no data: every call returns
    meta results of the right shape and dtype, under the interpreter too, and validates as
    usual."""
    x = torch.empty(2, 3, 64, device="meta", dtype=torch.bfloat16)
    w = torch.empty(64, device="meta", dtype=torch.float32)
    y = rt.rms_norm(x, w, out_dtype=torch.float32)
    assert (y.device.type, y.shape, y.dtype) == ("meta", x.shape, torch.float32)
    residual = torch.empty(2, 3, 64, device="meta", dtype=torch.float32)
    y, r = rt.fused_add_rms_norm(x, residual, w)
    assert (y.shape, y.dtype, r is residual) == (x.shape, torch.bfloat16, True)
    with pytest.raises(ValueError, match=r"weight must have shape \(64,\)"):
        rt.rms_norm(x, w[:-1])


@pytest.mark.parametrize("res_dtype", [FP32, torch.bfloat16], ids=["fp32-residual",
                                                                   "bf16-residual"])
def test_backward_through_the_fused_add(device, res_dtype):
    """Gradients take the reference path, whose own graph saves the updated residual (for an
    fp32 residual, that tensor itself): only kernel writes bump versions, so its backward runs
    and gives the fp64 gradient."""
    x = rand_x((3, 64), FP32, device).requires_grad_()
    w = rand_w(64, FP32, device).requires_grad_()
    residual = rand_x((3, 64), res_dtype, device)
    r64 = residual.double()
    g = rand_x((3, 64), FP32, device)
    y, _ = rt.fused_add_rms_norm(x, residual, w)
    (y * g).sum().backward()
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    h = (x64 + r64).to(res_dtype).double() if res_dtype != FP32 else x64 + r64
    want = h * torch.rsqrt(h.square().mean(-1, keepdim=True) + 1e-6) * w64
    (want * g.double()).sum().backward()
    assert_close(w.grad, w64.grad, FP32)
    assert_close(x.grad, x64.grad, FP32)       # the rounding to bf16 passes gradients as is


def test_flags_are_checked_on_the_repeat_call_path_too(device):
    """A repeat call finds its launch plan without the full checks: a flag that is not a bool
    must still be refused there, not read by its truthiness."""
    x, w = rand_x((3, 64), torch.bfloat16, device), rand_w(64, torch.bfloat16, device)
    rt.rms_norm(x, w)
    rt.rms_norm(x, w)                       # the plan exists now
    for bad in (None, [], "False"):
        with pytest.raises(TypeError, match="accumulate must be a bool"):
            rt.rms_norm(x, w, accumulate=bad)
    with pytest.raises(TypeError, match="clamp_fp16_input must be a bool"):
        rt.rms_norm(x, w, clamp_fp16_input=None)
