"""A 64K-element row in one program, held as its own 16-bit values (config.hold_row, HOLD_X).

The program widens the held values to fp32 twice, once for the sum of squares and once to
normalize; the fused add writes its updated residual in chunks first and reads it back whole.
Every result is held against the fp64 oracle, and the fused add against the unfused norm of its
updated residual, bit for bit. The interpreter runs these configs when passed explicitly; on a
GPU the heuristic picks them too.
"""
import pytest
import torch

import rmsnorm_triton as rt
from rmsnorm_triton import config, ops, plans
from rmsnorm_triton.config import HELD_ROW_N, HELD_ROW_WARPS, LaunchConfig, heuristic_config
from rmsnorm_triton.ops import _launch, fanout_plan
from rmsnorm_triton.validate import check_inputs

from helpers import assert_close, assert_guard_intact, poisoned, rand_w, rand_x, rmsnorm_ref

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
HELD = LaunchConfig(1, HELD_ROW_N, HELD_ROW_WARPS, False)
EPS = 1e-6


def _norm(x, w, cfg=HELD, out=None, **kw):
    """rms_norm through `cfg`, into `out` (or a new tensor)."""
    p = check_inputs(x, w, out=out, eps=EPS, **kw)
    return _launch(p, EPS, kw.get("weight_offset", 0.0), kw.get("accumulate", False),
                   kw.get("clamp_fp16_input", False), cfg)


def _fused(x, residual, w, cfg=HELD, **kw):
    p = check_inputs(x, w, residual=residual, eps=EPS, fused=True, **kw)
    return _launch(p, EPS, kw.get("weight_offset", 0.0), False, False, cfg)


def test_the_held_config_holds_16_bits_only():
    assert config.hold_row(HELD, 2)
    assert not config.hold_row(HELD, 4)                        # fp32 values: no 16-bit form
    assert not config.hold_row(LaunchConfig(1, 32768, 32, False), 2)     # fp32 fits there
    assert not config.hold_row(LaunchConfig(1, 8192, 16, True), 2)
    assert not config.hold_row(LaunchConfig(1, 8192, 8, False, splits=8), 2)


@pytest.mark.parametrize("dtype", [BF16, FP16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("N", [65536, 40001])
@pytest.mark.parametrize("weight", ["w", "gemma", "none"])
def test_held_norm_matches_the_oracle(device, dtype, N, weight):
    M = 3
    x = rand_x((M, N), dtype, device)
    w = None if weight == "none" else rand_w(N, dtype, device, gemma=weight == "gemma")
    offset = 1.0 if weight == "gemma" else 0.0
    buf, out = poisoned(M, N, dtype, device)
    _norm(x, w, out=out, weight_offset=offset)
    assert_close(out, rmsnorm_ref(x, w, EPS, weight_offset=offset))
    assert_guard_intact(buf, N)


@pytest.mark.parametrize("x_dtype,res_dtype", [(BF16, BF16), (FP16, FP16), (FP32, BF16)],
                         ids=["bf16", "fp16", "fp32-x-bf16-residual"])
@pytest.mark.parametrize("N", [65536, 40001])
def test_held_fused_add_equals_the_unfused_norm(device, x_dtype, res_dtype, N):
    M = 2
    x, residual = rand_x((M, N), x_dtype, device), rand_x((M, N), res_dtype, device)
    w = rand_w(N, BF16, device)
    before, looped_residual = residual.clone(), residual.clone()
    _fused(x, looped_residual, w, LaunchConfig(1, 8192, 16, True))
    y = _fused(x, residual, w)
    # The same rounding of x + residual as every other path (the interpreter truncates bf16).
    assert torch.equal(residual, looped_residual)
    assert_close(residual, x.double() + before.double())
    assert torch.equal(y, _norm(residual.clone(), w, out_dtype=y.dtype))
    assert_close(y, rmsnorm_ref(residual, w, EPS))


def test_held_norm_with_bias_and_accumulate(device):
    M, N = 2, 50000
    x, w = rand_x((M, N), BF16, device), rand_w(N, BF16, device)
    b = torch.randn(N, device=device).to(BF16)
    start = rand_x((M, N), BF16, device)
    out = start.clone()
    _norm(x, w, out=out, bias=b, accumulate=True)
    assert_close(out, rmsnorm_ref(x, w, EPS, bias=b) + start.double(), tol=2e-2)


def test_held_fp16_special_values(device):
    """The second widening keeps zeros, subnormals, the largest half, and the clamp's work on
    infinities (an add of 0.0 is what keeps the compiler from merging it with the first)."""
    M, N = 2, 65536
    x = rand_x((M, N), FP16, device)
    x[0, :6] = torch.tensor([0.0, -0.0, 6e-8, -3e-5, 65504.0, -65504.0])
    x[1, :3] = torch.tensor([float("inf"), -float("inf"), 1e-7])
    w = rand_w(N, FP16, device)
    y = _norm(x, w, clamp_fp16_input=True)
    assert_close(y, rmsnorm_ref(x, w, EPS, clamp=True))
    assert y[0, 0] == 0 and y[0, 1] == 0
    plain = _norm(x[:1], w)
    assert_close(plain, rmsnorm_ref(x[:1], w, EPS))
    # Subnormal inputs (a row of small values scales them up): within one output ulp (of a
    # subnormal output: 2**-24).
    tiny = rand_x((1, N), FP16, device) * 1e-3
    tiny[0, :4] = torch.tensor([6e-8, -6e-8, 3e-6, -1e-5])
    assert (tiny[0, :4].abs() < torch.finfo(FP16).tiny).all()
    y = _norm(tiny, None)
    want = rmsnorm_ref(tiny, None, EPS)[0, :4]
    ulp = torch.maximum(want.abs() * 2.0 ** -10, torch.full_like(want, 2.0 ** -24))
    assert ((y[0, :4].double() - want).abs() <= ulp).all(), (y[0, :4], want)


@pytest.mark.parametrize("itemsizes,rows,cols,held", [
    ((2, 2), config.HELD_ROW_MIN_ROWS, 65536, True),
    ((2, 2), 4096, config.HELD_ROW_MIN_N, True),
    ((2, 2), 4096, config.HELD_ROW_MIN_N - 1, False),          # half the tile idle: split
    ((2, 2), config.HELD_ROW_MIN_ROWS // 2, 65536, False),     # few rows: split, every SM busy
    ((2, 4), 4096, 65536, False),                              # to fp32 the held kernel spills
    ((4, 4), 4096, 65536, False),
    ((2, 2), 4096, 65537, False),                              # past the held tile
])
def test_the_heuristic_holds_long_16bit_rows(monkeypatch, itemsizes, rows, cols, held):
    x_size, out_size = itemsizes
    if config.INTERPRET:
        cfg = heuristic_config(cols, rows, x_size, True, out_size)
        assert cfg.splits == 1 and cfg.looped            # the interpreter streams long rows
    monkeypatch.setattr(config, "INTERPRET", False)      # the rule as a GPU process sees it
    monkeypatch.setattr(config, "HELD_ROW_HERE", True)
    cfg = heuristic_config(cols, rows, x_size, True, out_size)
    assert (cfg == HELD) == held, cfg
    assert cfg.splits > 1 or held, cfg
    assert heuristic_config(cols, rows, x_size, True, out_size, plain=False).splits > 1
    # A Triton whose held kernel was not found free of spills keeps the split row.
    monkeypatch.setattr(config, "HELD_ROW_HERE", False)
    assert heuristic_config(cols, rows, x_size, True, out_size).splits > 1


@pytest.mark.parametrize("version,here", [("3.6.0", True), ("3.7.1", True), ("3.8.0", False),
                                          ("3.9.0", True), ("3.10.0", False), ("main", False)])
def test_held_rows_follow_the_triton_version(monkeypatch, version, here):
    monkeypatch.setattr(config.triton, "__version__", version)
    assert (config._triton_minor() in config.HELD_ROW_TRITONS) is here


def test_held_rows_need_16_byte_vectors(device):
    """config.row_vectors and plans.misaligned: the held tensor's row length and stride
    multiples of 16 elements, its pointer and the weight's on 16 bytes."""
    buf = rand_x((4, 65536 + 16), BF16, device)
    x, w = buf[:, :65536], rand_w(65536, BF16, device)     # row stride 65552: 16 x 4097
    assert config.row_vectors(65536, x.stride(0)) and not plans.misaligned(x, w)
    assert config.row_vectors(49152, x[:, :49152].stride(0))
    assert not config.row_vectors(65528, x[:, :65528].stride(0))     # 8 past a multiple of 16
    assert config.row_vectors(65536, buf[:, 1:65537].stride(0)) and \
        plans.misaligned(buf[:, 1:], w)
    assert plans.misaligned(x, _shifted(w)) and not plans.misaligned(x, None)
    for pad in (4, 8):                                              # strides 65540, 65544
        padded = rand_x((4, 65536 + pad), BF16, device)[:, :65536]
        assert not config.row_vectors(65536, padded.stride(0))

LOOPED = LaunchConfig(1, 8192, 16, True)


@pytest.fixture
def gpu_decisions(monkeypatch):
    """ops' launch decisions as a GPU that holds rows makes them, on any device: the held row
    where its rule allows (bucket aside, so that a few rows do), a looped config where the split
    row would run (the interpreter cannot run that one)."""
    picked = []

    def pick(n_cols, bucket, x_dtype, out_dtype, has_residual, device_index,
             residual_dtype=None, plain=True):
        normalized = (residual_dtype or x_dtype) if has_residual else x_dtype
        held = plain and normalized.itemsize == 2 and out_dtype.itemsize == 2 and \
            config.HELD_ROW_MIN_N <= n_cols <= HELD_ROW_N
        picked.append(HELD if held else LOOPED)
        return picked[-1]
    monkeypatch.setattr(ops, "pick_config", pick)
    plans.clear()
    yield picked
    plans.clear()


def _shifted(t):
    """t's values in a tensor 2 bytes off 16-byte alignment (row stride unchanged)."""
    flat = torch.empty(t.numel() + 8, dtype=t.dtype, device=t.device)
    out = flat[1:t.numel() + 1].view(t.shape)
    return out.copy_(t)


def test_fused_add_equals_the_unfused_norm_whatever_the_alignment(device, gpu_decisions):
    """The held row is taken only where the held tensor and the weight are 16-byte aligned.
    The fused add decides on its residual (and the weight) as the unfused norm of it does, x
    and the output aside; a plan runs only calls of the alignment it was made for. So in any
    order of calls, fused == unfused bit for bit, and a call's result does not depend on the
    calls before it."""
    M, N = 2, 65536
    x0, r0, w0 = rand_x((M, N), BF16, device), rand_x((M, N), BF16, device), rand_w(N, BF16, device)
    first = {}
    # (x, residual, weight, out) aligned or not; every combination, twice, in one plan table.
    combos = [(xa, ra, wa, oa) for xa in (True, False) for ra in (True, False)
              for wa in (True, False) for oa in (True, False)]
    for xa, ra, wa, oa in combos * 2:
        x = x0 if xa else _shifted(x0)
        r = r0.clone() if ra else _shifted(r0)
        w = w0 if wa else _shifted(w0)
        out = torch.empty(M, N, dtype=BF16, device=device)
        out = out if oa else _shifted(out)
        y, _ = rt.fused_add_rms_norm(x, r, w, out=out)
        assert torch.equal(y, rt.rms_norm(r, w)), (xa, ra, wa, oa)
        key = (ra, wa)                  # what the config may rest on
        assert torch.equal(first.setdefault(key, y.clone()), y), (xa, ra, wa, oa)
    assert gpu_decisions[-1] == LOOPED and HELD in gpu_decisions        # both configs ran
    for xa in (True, False, True):
        x = x0 if xa else _shifted(x0)
        y = rt.rms_norm(x, w0)
        assert torch.equal(first.setdefault(("norm", xa), y.clone()), y), xa
        assert_close(y, rmsnorm_ref(x0, w0, EPS))


def test_bf16_clamp_flag_keeps_the_held_row(device, gpu_decisions):
    """clamp_fp16_input is compiled out for bf16 x, so such calls (exllamav2 passes it) are
    held like plain ones; fp16 ones are not (held, the clamp spilled)."""
    M, N = 2, 65536
    x, w = rand_x((M, N), BF16, device), rand_w(N, BF16, device)
    assert torch.equal(rt.rms_norm(x, w, clamp_fp16_input=True), _norm(x, w))
    (plan,) = plans._plans.values()
    assert plan.made_aligned is True
    plans.clear()
    x16, w16 = x.to(FP16), w.to(FP16)
    assert torch.equal(rt.rms_norm(x16, w16, clamp_fp16_input=True),
                       _norm(x16, w16, LOOPED, clamp_fp16_input=True))


@pytest.mark.skipif(not torch.cuda.is_available() or not config.HELD_ROW_HERE,
                    reason="the heuristic's GPU pick, with a Triton that holds rows")
def test_public_calls_take_the_held_row_on_a_gpu():
    M, N = config.HELD_ROW_MIN_ROWS, 65536
    assert config.pick_config(N, M, BF16, BF16, False, 0) == HELD
    assert config.pick_config(N, M, FP32, BF16, True, 0, BF16) == HELD
    assert config.pick_config(N, M, BF16, BF16, False, 0, None, False).splits > 1   # a bias
    x, w = rand_x((M, N), BF16, "cuda"), rand_w(N, BF16, "cuda")
    y = rt.rms_norm(x, w)
    assert_close(y, rmsnorm_ref(x, w, EPS))
    assert torch.equal(rt.rms_norm(x, w), y)                   # the plan's repeat call
    residual = rand_x((M, N), BF16, "cuda")
    y2, r2 = rt.fused_add_rms_norm(x, residual, w)
    assert torch.equal(y2, rt.rms_norm(r2, w))
    # The fanout kernel holds no row: tensor parallelism normalizes on each GPU instead.
    dev = torch.device("cuda", 0)
    assert fanout_plan(x, [dev, dev], [w, w], [None, None], EPS) is None
    small, w16k = rand_x((64, 16384), BF16, "cuda"), rand_w(16384, BF16, "cuda")
    assert fanout_plan(small, [dev, dev], [w16k, w16k], [None, None], EPS) is not None   # a tile


@pytest.mark.skipif(not torch.cuda.is_available() or not config.HELD_ROW_HERE,
                    reason="the heuristic's GPU pick, with a Triton that holds rows")
def test_misaligned_calls_take_the_split_row():
    """A held plan steps aside for a call whose pointers are off 16 bytes: the full path then
    takes the split row (held, such loads cannot be vectors and the kernel spills)."""
    M, N = config.HELD_ROW_MIN_ROWS, 65536
    w = rand_w(N, BF16, "cuda")
    flat = rand_x((M * N + 8,), BF16, "cuda")
    aligned, shifted = flat[:M * N].view(M, N), flat[1:M * N + 1].view(M, N)
    for x in (aligned, shifted, aligned, shifted):
        plans.clear()
        y = rt.rms_norm(x, w)
        assert_close(y, rmsnorm_ref(x, w, EPS))
        y2 = rt.rms_norm(x, w)                              # the plan's path
        assert torch.equal(y, y2)
        (plan,) = plans._plans.values()
        assert plan.made_aligned is (x is aligned)
        assert dict(plan.constexprs).get("HOLD_X", False) is (x is aligned)
    plans.clear()
    rt.rms_norm(aligned, w)
    (plan,) = plans._plans.values()
    assert plan.made_aligned
    assert plans.norm_plan(shifted, w, None, 1e-6, 0.0, None, False) is None
    assert_close(rt.rms_norm(shifted, w), rmsnorm_ref(shifted, w, EPS))
    # The fused add decides on its residual alone, as the unfused norm of it does: a shifted x
    # or weight leaves it held, and the two equal bit for bit, in any order of calls (a plan
    # runs only calls of the alignment it was made for).
    shifted_w = rand_w(N + 8, BF16, "cuda")[1:N + 1]
    r_flat = torch.empty(M * N + 8, dtype=BF16, device="cuda")
    shifted_r = r_flat[1:M * N + 1].view(M, N)
    plans.clear()
    for x, r_aligned, weight in ((shifted, True, w), (aligned, False, w), (aligned, True, w),
                                 (aligned, True, shifted_w), (shifted, False, shifted_w)):
        r = aligned.clone() if r_aligned else shifted_r
        r.copy_(rand_x((M, N), BF16, "cuda"))
        start = r.clone()
        for _ in range(2):                                  # the full path, then the plan
            r.copy_(start)
            y, _ = rt.fused_add_rms_norm(x, r, weight)
            assert torch.equal(y, rt.rms_norm(r, weight))
            plan = plans.fused_plan(x, r, weight, None, 1e-6, 0.0, None)
            assert plan is not None and plan.made_aligned is (r_aligned and weight is w)


@pytest.mark.skipif(not torch.cuda.is_available() or not config.HELD_ROW_HERE,
                    reason="the heuristic's GPU pick, with a Triton that holds rows")
def test_the_peer_launch_keeps_held_plans_to_their_alignment():
    """Tensor parallelism's launch reading x where it lives (parallel._norm_from_peer, here on
    x's own GPU) takes plans as rms_norm does: each alignment its own config, the same bits."""
    from rmsnorm_triton.parallel import _norm_from_peer
    M, N = config.HELD_ROW_MIN_ROWS, 65536
    x, w = rand_x((M, N), BF16, "cuda"), rand_w(N, BF16, "cuda")
    shifted = _shifted(x)
    plans.clear()
    for src in (x, shifted, x, shifted, x):
        got = _norm_from_peer(src, src.device, w, None, None, EPS, None, 0.0, False)
        assert torch.equal(got, rt.rms_norm(src, w, EPS))
        (peer_plan,) = [p for k, p in plans._plans.items() if k[0] == "peer"]
        assert peer_plan.made_aligned is (src is x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_held_rows_replay_in_a_cuda_graph():
    M, N = config.HELD_ROW_MIN_ROWS, 65536
    x, w = rand_x((M, N), FP16, "cuda"), rand_w(N, FP16, "cuda")
    residual = rand_x((M, N), FP16, "cuda")
    start = residual.clone()
    rt.rms_norm(x, w)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):          # warm up (compile) outside the capture
        rt.fused_add_rms_norm(x, residual.clone(), w)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = rt.rms_norm(x, w)
        y2, _ = rt.fused_add_rms_norm(x, residual, w)
    x.copy_(rand_x((M, N), FP16, "cuda"))
    residual.copy_(start)
    y.fill_(float("nan"))
    y2.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert_close(y, rmsnorm_ref(x, w, EPS))
    want_residual = x.double() + start.double()
    assert_close(residual, want_residual)
    assert torch.equal(y2, rt.rms_norm(residual, w))
