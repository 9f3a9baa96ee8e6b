"""ops.fanout_plan: one kernel writing every tensor-parallel device's copy (parallel.py's small
fused sources). On the CPU all copies live on one device; on a GPU too (2+ GPUs: test_parallel)."""
import pytest
import torch

import rmsnorm_triton as rt
from helpers import assert_close, rand_w, rand_x, rmsnorm_ref
from rmsnorm_triton import parallel, plans
from rmsnorm_triton.config import pick_config, row_bucket
from rmsnorm_triton.ops import MAX_FANOUT, fanout_plan

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
DEV = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
EPS = 1e-6


def _run(x, ws, bs, **kw):
    """The plan's outputs, NaN-poisoned before the launch; also returns the plan."""
    plan = fanout_plan(x, [DEV] * len(ws), ws, bs, EPS, **kw)
    assert plan is not None
    outs = plan.outputs(x, ws)
    for o in outs:
        o.fill_(float("nan"))
    plan.launch(x, ws, bs, outs)
    return outs


@pytest.mark.parametrize("copies", [1, 2, 3, MAX_FANOUT])
@pytest.mark.parametrize("x_dtype,out_dtype", [(BF16, None), (FP16, FP32), (FP32, BF16)],
                         ids=["bf16", "fp16-fp32", "fp32-bf16"])
@pytest.mark.parametrize("shape", [(1, 4096), (3, 100), (2, 5, 96)], ids=str)
def test_every_copy_equals_its_own_rms_norm(copies, x_dtype, out_dtype, shape):
    """Copy i uses weights[i] and biases[i] and equals rms_norm with them bit for bit."""
    torch.manual_seed(copies)
    n = shape[-1]
    x = rand_x(shape, x_dtype, DEV)
    ws = [rand_w(n, x_dtype, DEV, gemma=True) for _ in range(copies)]
    bs = [rand_w(n, FP32, DEV) for _ in range(copies)]
    outs = _run(x, ws, bs, out_dtype=out_dtype, weight_offset=1.0)
    want_dtype = out_dtype or x_dtype
    for w, b, y in zip(ws, bs, outs):
        assert y.shape == x.shape and y.dtype == want_dtype and y.device == DEV
        assert_close(y, rmsnorm_ref(x, w, EPS, weight_offset=1.0, bias=b))
        torch.testing.assert_close(y, rt.rms_norm(x, w, EPS, bias=b, out_dtype=out_dtype,
                                                  weight_offset=1.0), rtol=0, atol=0)


# Rows whose launch config loops: long rows in the interpreter; on a GPU 513-1024 rows of
# 4097-6144 16-bit elements (config.LOOP_1K_ROW_BYTES), 16-bit -> fp32 from 512 rows of 4096,
# and 4-byte x from 32K columns past 512 rows. LOOPED_WIDER_SHAPE is past decode size (its
# fanout is refused without a launch, so the interpreter need not run 300 long rows).
ON_CPU = DEV.type == "cpu"
LOOPED_SHAPE = (3, 40000) if ON_CPU else (600, 5120)
LOOPED_4BYTE_SHAPE = (3, 40000) if ON_CPU else (1024, 32768)
LOOPED_WIDER_SHAPE = (300, 40000) if ON_CPU else (1024, 4096)


def _config(shape, x_dtype, out_dtype):
    return pick_config(shape[-1], row_bucket(shape[0]), x_dtype, out_dtype, False,
                       DEV.index if DEV.type == "cuda" else -1)


@pytest.mark.parametrize("x_dtype,out_dtype,copies,has_w,has_b", [
    (BF16, BF16, 2, True, True),
    (FP16, FP16, MAX_FANOUT, True, True),
    (BF16, BF16, 3, False, True),
    (FP32, BF16, 1, True, False),           # a narrower output: the fanout applies
], ids=["bf16", "fp16-8-copies", "bf16-bias-only", "fp32-to-bf16"])
def test_looped_config_copies_equal_rms_norm(x_dtype, out_dtype, copies, has_w, has_b):
    """A looped config takes the fanout's looped path: copy i equals rms_norm bit for bit."""
    shape = LOOPED_4BYTE_SHAPE if x_dtype == FP32 else LOOPED_SHAPE
    assert _config(shape, x_dtype, out_dtype).looped
    torch.manual_seed(copies)
    n = shape[-1]
    x = rand_x(shape, x_dtype, DEV)
    if x_dtype == FP16:
        x[0, 7] = float("inf")          # clamped to 65504 in both passes over the row
    ws = [rand_w(n, x_dtype, DEV, gemma=True) if has_w else None for _ in range(copies)]
    bs = [rand_w(n, FP32, DEV) if has_b else None for _ in range(copies)]
    kw = dict(out_dtype=out_dtype, weight_offset=1.0, clamp_fp16_input=True)
    outs = _run(x, ws, bs, **kw)
    for w, b, y in zip(ws, bs, outs):
        assert y.dtype == out_dtype
        assert_close(y, rmsnorm_ref(x, w, EPS, weight_offset=1.0, bias=b, clamp=True))
        torch.testing.assert_close(y, rt.rms_norm(x, w, EPS, bias=b, **kw), rtol=0, atol=0)


@pytest.mark.parametrize("rows,cols,copies,w_dtype,b_dtype,early", [
    (1, 24577, 1, BF16, None, True),        # 2 bytes a column: beside the row
    (1, 24577, 1, FP32, None, False),       # 4: each copy's weight once the sum is known
    (1, 24577, 1, BF16, BF16, False),
    (1, 24577, 2, BF16, None, False),       # every copy's weight counts
    (1, 24577, 3, FP32, FP32, False),
    (1, 24577, 2, None, BF16, False),       # biases alone count too
    (2, 24577, 2, BF16, None, True),        # more rows: first, whatever the bytes
    (1, 9000, 3, FP32, FP32, True),         # a 16384 tile: first
], ids=["bf16", "fp32", "bf16-bias", "2-bf16", "3-fp32-bias", "2-biases", "2-rows", "16k-tile"])
def test_wide_tiles_fetch_the_copies_params_late_from_4_bytes_a_column(rows, cols, copies,
                                                                       w_dtype, b_dtype, early):
    """In a 32768-wide tile (a decode-sized call of 24577 columns) of one row all copies'
    weights and biases of 4 bytes a column or more are fetched after the reduction (fetched
    first they spilled: config.fanout_params_late); every copy still equals its own rms_norm."""
    shape = (rows, cols)
    assert _config(shape, BF16, BF16).block_n == (32768 if cols > 16384 else 16384)
    torch.manual_seed(copies)
    x = rand_x(shape, BF16, DEV)
    ws = [None if w_dtype is None else rand_w(shape[1], w_dtype, DEV) for _ in range(copies)]
    bs = [None if b_dtype is None else rand_w(shape[1], b_dtype, DEV) for _ in range(copies)]
    plan = fanout_plan(x, [DEV] * copies, ws, bs, EPS)
    assert dict(plan.constexprs)["PRELOAD_W"] is early
    for w, b, y in zip(ws, bs, _run(x, ws, bs)):
        assert_close(y, rmsnorm_ref(x, w, EPS, bias=b))
        torch.testing.assert_close(y, rt.rms_norm(x, w, EPS, bias=b), rtol=0, atol=0)


def test_looped_config_to_a_wider_output_has_no_fanout():
    """Past decode size its peers read x in place instead (ops.fanout_plan says why)."""
    assert _config(LOOPED_WIDER_SHAPE, BF16, FP32).looped
    x = rand_x(LOOPED_WIDER_SHAPE, BF16, DEV)
    ws = [rand_w(x.shape[-1], BF16, DEV) for _ in range(2)]
    assert fanout_plan(x, [DEV] * 2, ws, [None, None], EPS, out_dtype=FP32) is None
    assert fanout_plan(x, [DEV] * 2, ws, [None, None], EPS) is not None


@pytest.mark.parametrize("shape,has_b", [((8, 8192), False), ((3, 6000), True)], ids=str)
def test_decode_rows_looping_to_fp32_keep_the_fanout(shape, has_b):
    """16-bit decode rows to fp32 loop (config.DECODE_WIDE_OUT_*) and still take one fanout
    launch, whose copies equal rms_norm bit for bit."""
    assert _config(shape, BF16, FP32).looped
    x = rand_x(shape, BF16, DEV)
    ws = [rand_w(shape[-1], BF16, DEV, gemma=True) for _ in range(2)]
    bs = [rand_w(shape[-1], FP32, DEV) if has_b else None for _ in range(2)]
    assert fanout_plan(x, [DEV] * 2, ws, bs, EPS, out_dtype=FP32, weight_offset=1.0) is not None
    outs = _run(x, ws, bs, out_dtype=FP32, weight_offset=1.0)
    for w, b, y in zip(ws, bs, outs):
        assert y.dtype == FP32
        assert_close(y, rmsnorm_ref(x, w, EPS, weight_offset=1.0, bias=b))
        torch.testing.assert_close(y, rt.rms_norm(x, w, EPS, bias=b, out_dtype=FP32,
                                                  weight_offset=1.0), rtol=0, atol=0)


def test_no_weight_row_strided_x_and_clamp():
    big = rand_x((6, 160), FP16, DEV)
    big[0, 3] = float("inf")
    x = big[:, :128]                        # rows 160 apart: read in place
    outs = _run(x, [None, None], [None, None], clamp_fp16_input=True)
    want = rt.rms_norm(x, None, EPS, clamp_fp16_input=True)
    for y in outs:
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y, want, rtol=0, atol=0)


@pytest.mark.parametrize("case", ["too-many", "strided-weight", "mixed-weights",
                                  "x-not-addressable"])
def test_forms_without_a_fanout_launch_return_none(case):
    n = 64
    x = rand_x((4, n), BF16, DEV)
    ws = [rand_w(n, BF16, DEV) for _ in range(2)]
    bs = [None, None]
    if case == "too-many":
        ws, bs = [ws[0]] * (MAX_FANOUT + 1), [None] * (MAX_FANOUT + 1)
    elif case == "strided-weight":
        ws[1] = rand_w(2 * n, BF16, DEV)[::2]
    elif case == "mixed-weights":
        ws[1] = None
    else:
        x = rand_x((4, 2 * n), BF16, DEV)[:, ::2]      # no unit column stride
    assert fanout_plan(x, [DEV] * len(ws), ws, bs, EPS) is None


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(weights=[torch.ones(63)]), ValueError, r"weight must have shape \(64,\)"),
    (dict(weights=[torch.ones(64, dtype=torch.int32)]), TypeError, "weight must be"),
    (dict(eps=-1.0), ValueError, "eps must be"),
    (dict(out_dtype=torch.int8), TypeError, "out_dtype must be"),
])
def test_bad_arguments_raise_like_rms_norm(kwargs, exc, match):
    x = rand_x((4, 64), BF16, DEV)
    ws = [w.to(DEV) for w in kwargs.pop("weights", [torch.ones(64, dtype=BF16)])]
    args = dict(eps=EPS, out_dtype=None)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        fanout_plan(x, [DEV] * len(ws), ws, [None] * len(ws), args.pop("eps"), **args)


@pytest.fixture
def fanout_asks(monkeypatch):
    """A list that grows by one each time parallel.py asks for a fanout plan (no memoized
    plans to start from)."""
    asked = []

    def counting(*args, **kwargs):
        asked.append(1)
        return fanout_plan(*args, **kwargs)

    monkeypatch.setattr(parallel, "fanout_plan", counting)
    plans.clear()
    return asked


def test_forward_tp_asks_once_per_signature_and_never_under_autograd(fanout_asks):
    """A refused signature is remembered (long rows would otherwise re-validate every call);
    a call that autograd must see never gets a plan (the kernel is forward-only)."""
    asked = fanout_asks
    ctx = rt.TPContext([DEV.type] if DEV.type == "cpu" else [DEV])
    devs = ctx.devices_for(rt.BROADCAST_RS)
    x = rand_x((3, 64), BF16, DEV)
    ws = [rand_w(64, BF16, DEV)]
    strided = [rand_w(128, BF16, DEV)[::2]]          # refused: not addressable as it is
    kw = dict(out_dtype=None, weight_offset=0.0, clamp_fp16_input=False)
    for _ in range(3):
        assert parallel._fanout_plan_for(ctx, x, devs, strided, None, EPS, **kw) is None
    assert len(asked) == 1
    assert parallel._fanout_plan_for(ctx, x, devs, ws, None, EPS, **kw) is not None
    with torch.enable_grad():
        grad_ws = [ws[0].clone().requires_grad_()]
        assert parallel._fanout_plan_for(ctx, x, devs, grad_ws, None, EPS, **kw) is None


def test_lazy_zero_weight_is_refused_at_launch():
    """A plan's signature cannot tell torch's lazy zeros (no memory) from a real weight."""
    x = rand_x((3, 64), torch.bfloat16, DEV)
    ws = [rand_w(64, torch.bfloat16, DEV) for _ in range(2)]
    plan = fanout_plan(x, [DEV] * 2, ws, [None, None], EPS)
    lazy = [ws[0], torch._efficientzerotensor((64,), dtype=torch.bfloat16, device=DEV)]
    with pytest.raises(TypeError, match=r"weights\[1\] must be a dense tensor with memory"):
        plan.launch(x, lazy, [None, None], plan.outputs(x, ws))


@pytest.mark.skipif(DEV.type != "cuda", reason="the fanout runs on CUDA devices only")
@pytest.mark.parametrize("out_dtype,rows,fanout", [(FP32, 2048, True), (FP32, 4096, False),
                                                   (BF16, 4096, True)], ids=str)
def test_forward_tp_takes_no_fanout_to_a_wider_output_past_8mb(fanout_asks, out_dtype, rows,
                                                               fanout):
    """A fanout to fp32 pushes twice x's bytes over NVLink: past 8 MB of x, peers read x
    instead. The result equals rms_norm either way."""
    ctx = rt.TPContext([DEV])
    x = rand_x((rows, 2048), BF16, DEV)         # 8 MB or 16 MB
    w = rand_w(2048, BF16, DEV)
    (y,) = parallel.forward_tp(ctx, rt.BROADCAST_RS, x, [w], [None], EPS, out_dtype=out_dtype)
    assert bool(fanout_asks) == fanout
    assert torch.equal(y, rt.rms_norm(x, w, EPS, out_dtype=out_dtype))
