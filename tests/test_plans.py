"""Repeat calls take a memoized launch plan (plans.py): same answers and same errors as the
full path, whatever changed between calls that the plan's signature does not cover."""
import pytest
import torch

import rmsnorm_triton as rt
from rmsnorm_triton import config, plans
from helpers import assert_close, poison_allocator, rand_w, rand_x, rmsnorm_ref

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


@pytest.fixture(autouse=True)
def _no_plans():
    plans.clear()
    yield
    plans.clear()


def test_repeat_calls_take_one_plan_and_match_the_oracle(device):
    M, N = 6, 320
    w = rand_w(N, BF16, device)
    rt.rms_norm(rand_x((2, 3, N), BF16, device), w, 1e-5)
    assert len(plans._plans) == 1
    flat = rand_x((M * N + 8,), BF16, device)
    # Fresh data, then a view 2 bytes off 16-byte alignment (another Triton specialization).
    for x in (rand_x((2, 3, N), BF16, device), flat[1:1 + M * N].view(2, 3, N),
              rand_x((2, 3, N), BF16, device)):
        poison_allocator((2, 3, N), BF16, device)
        y = rt.rms_norm(x, w, 1e-5)
        assert y.shape == x.shape and y.dtype == BF16 and y.stride() == (3 * N, N, 1)
        assert_close(y, rmsnorm_ref(x, w, 1e-5))
    assert len(plans._plans) == 1


def test_a_plan_covers_row_strided_views_and_other_out_dtypes(device):
    N = 256
    big = rand_x((5, 2 * N), FP16, device)
    w = rand_w(N, FP32, device)
    for _ in range(3):
        x = big[:, :N]                      # rows 2N apart: read in place, no copy
        poison_allocator((5, N), FP32, device)
        y = rt.rms_norm(x, w, out_dtype=FP32)
        assert y.dtype == FP32 and y.is_contiguous()
        assert_close(y, rmsnorm_ref(x, w))
        big = rand_x((5, 2 * N), FP16, device)
    assert len(plans._plans) == 1


def test_inputs_that_need_a_copy_get_no_plan(device):
    N = 128
    w = rand_w(N, BF16, device)
    for _ in range(2):
        x = rand_x((N, 4), BF16, device).t()        # columns not contiguous: staged
        assert_close(rt.rms_norm(x, w), rmsnorm_ref(x, w))
        w_strided = rand_w(2 * N, BF16, device)[::2]  # weight copied to unit stride
        xc = rand_x((4, N), BF16, device)
        assert_close(rt.rms_norm(xc, w_strided), rmsnorm_ref(xc, w_strided))
    assert len(plans._plans) == 0


def test_a_non_contiguous_weight_of_the_same_shape_is_not_read_as_contiguous(device):
    N = 192
    x = rand_x((3, N), BF16, device)
    rt.rms_norm(x, rand_w(N, BF16, device))
    w_strided = rand_w(2 * N, BF16, device)[::2]
    assert_close(rt.rms_norm(x, w_strided), rmsnorm_ref(x, w_strided))


def test_a_plan_does_not_accept_what_the_full_path_refuses(device):
    x, w = rand_x((2, 64), BF16, device), rand_w(64, BF16, device)
    rt.rms_norm(x, w, 1)                 # an int eps is a number: accepted, planned
    with pytest.raises(TypeError, match="eps must be a float"):
        rt.rms_norm(x, w, True)          # hashes like 1, but a bool is refused
    rt.rms_norm(x, w, weight_offset=0)
    with pytest.raises(TypeError, match="weight_offset must be a float"):
        rt.rms_norm(x, w, weight_offset=False)
    with pytest.raises(ValueError, match="weight must have shape"):
        rt.rms_norm(x, rand_w(65, BF16, device))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        rt.rms_norm(x.tolist(), w)


def test_gradients_leave_the_plan(device):
    x, w = rand_x((2, 64), FP32, device), rand_w(64, FP32, device)
    rt.rms_norm(x, w)
    xg = x.clone().requires_grad_()
    y = rt.rms_norm(xg, w)
    assert y.grad_fn is not None
    y.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_gradients_of_any_fused_add_operand_leave_the_plan(device):
    M, N = 2, 64
    w, b = rand_w(N, FP32, device), rand_w(N, FP32, device)
    rt.fused_add_rms_norm(rand_x((M, N), FP32, device), rand_x((M, N), FP32, device), w, bias=b)
    assert len(plans._plans) == 1
    for grad_of in ("x", "residual", "weight", "bias"):
        args = {"x": rand_x((M, N), FP32, device), "residual": rand_x((M, N), FP32, device),
                "weight": w.clone(), "bias": b.clone()}
        args[grad_of].requires_grad_()
        res_in = args["residual"].detach().clone()
        y, _ = rt.fused_add_rms_norm(args["x"], args["residual"].clone(), args["weight"],
                                     bias=args["bias"])
        assert y.grad_fn is not None, grad_of
        want = rmsnorm_ref(args["x"].detach() + res_in, args["weight"].detach(),
                           bias=args["bias"].detach())
        assert_close(y.detach(), want)


def test_fused_add_plan_matches_the_oracle_and_updates_the_residual(device):
    M, N = 5, 384
    w = rand_w(N, BF16, device)
    for _ in range(3):
        x, res = rand_x((M, N), BF16, device), rand_x((M, N), FP32, device)
        want_res = (x.float() + res).to(FP32)
        poison_allocator((M, N), BF16, device)
        y, r = rt.fused_add_rms_norm(x, res, w)
        assert r is res
        torch.testing.assert_close(res, want_res, rtol=0, atol=0)
        assert_close(y, rmsnorm_ref(want_res, w))
    assert len(plans._plans) == 1


def test_fused_add_plan_checks_overlap_on_every_call(device):
    M, N = 4, 128
    w = rand_w(N, BF16, device)
    buf = rand_x((2 * M * N,), BF16, device)
    rt.fused_add_rms_norm(buf[:M * N].view(M, N), buf[M * N:].view(M, N), w)
    assert len(plans._plans) == 1
    with pytest.raises(ValueError, match="residual overlaps x"):
        rt.fused_add_rms_norm(buf[:M * N].view(M, N), buf[N:N + M * N].view(M, N), w)
    with pytest.raises(ValueError, match="residual overlaps weight"):
        rt.fused_add_rms_norm(buf[:M * N].view(M, N), buf[M * N:].view(M, N),
                              buf[M * N:M * N + N])
    b = rand_w(N, BF16, device)
    rt.fused_add_rms_norm(buf[:M * N].view(M, N), buf[M * N:].view(M, N), w, bias=b)
    assert len(plans._plans) == 2
    with pytest.raises(ValueError, match="residual overlaps bias"):
        rt.fused_add_rms_norm(buf[:M * N].view(M, N), buf[M * N:].view(M, N), w,
                              bias=buf[2 * M * N - N:])
    # The same view as x is allowed (residual = 2x): the plan steps aside for the full path.
    x = rand_x((M, N), BF16, device)
    want = (x.float() * 2).to(BF16)
    y, r = rt.fused_add_rms_norm(x, x, w)
    torch.testing.assert_close(r, want, rtol=0, atol=0)
    assert_close(y, rmsnorm_ref(want, w))


def test_a_new_tuned_table_drops_the_plans(device):
    x, w = rand_x((2, 64), BF16, device), rand_w(64, BF16, device)
    rt.rms_norm(x, w)
    assert len(plans._plans) == 1
    config.clear_caches()
    assert len(plans._plans) == 0


def test_accumulate_without_out_is_refused_with_a_plan_present(device):
    x, w = rand_x((4, 64), BF16, device), rand_w(64, BF16, device)
    rt.rms_norm(x, w)
    assert len(plans._plans) == 1
    with pytest.raises(ValueError, match="accumulate=True adds into out"):
        rt.rms_norm(x, w, accumulate=True)


@pytest.mark.parametrize("out_dtype", [None, FP32])
def test_plan_outputs_have_standard_strides(device, out_dtype):
    """A decode slice with odd strides on size-1 dims, and a plain tensor of the same shape
    (which allocates its output without being told the layout): the same output layout on
    every call."""
    w = rand_w(64, BF16, device)
    strides = set()
    for i in range(6):
        x = rand_x((1, 7, 64), BF16, device)[:, -1:, :] if i % 2 else \
            rand_x((1, 1, 64), BF16, device)
        assert x.is_contiguous() and (x.stride() != (64, 64, 1)) == bool(i % 2)
        y = rt.rms_norm(x, w, out_dtype=out_dtype)
        strides.add(y.stride())
        assert y.dtype == (out_dtype or BF16)
        assert_close(y, rmsnorm_ref(x, w))
    assert strides == {(64, 64, 1)}
    assert len(plans._plans) == 2


def test_tensor_subclasses_take_the_full_path(device):
    class Tagged(torch.Tensor):
        pass

    w = rand_w(64, BF16, device)
    for _ in range(2):
        x = rand_x((4, 64), BF16, device).as_subclass(Tagged)
        y = rt.rms_norm(x, w)
        assert type(y) is torch.Tensor
        assert_close(y, rmsnorm_ref(x.as_subclass(torch.Tensor), w))
    assert len(plans._plans) == 0


def test_negative_zero_offset_means_zero(device):
    """-0.0 == 0.0, so they share plans and kernels: the output's zeros must not depend on
    which of the two came first (both add +0.0)."""
    x = rand_x((2, 64), FP32, device)
    w = rand_w(64, FP32, device)
    w[::2] = -0.0
    first = rt.rms_norm(x, w, weight_offset=-0.0)
    plans.clear()
    rt.rms_norm(x, w, weight_offset=0.0)
    again = rt.rms_norm(x, w, weight_offset=-0.0)
    assert torch.equal(torch.signbit(first), torch.signbit(again))


def test_a_plan_made_across_a_table_change_is_not_kept(device, monkeypatch):
    from rmsnorm_triton import ops
    real = ops.pick_config

    def pick_then_clear(*args):
        cfg = real(*args)
        config.clear_caches()          # another thread writes a new tuned table meanwhile
        return cfg

    monkeypatch.setattr(ops, "pick_config", pick_then_clear)
    x, w = rand_x((2, 64), BF16, device), rand_w(64, BF16, device)
    assert_close(rt.rms_norm(x, w), rmsnorm_ref(x, w))
    assert len(plans._plans) == 0


@pytest.mark.parametrize("N", [40000, 70001])
def test_long_row_plans_match_the_oracle(device, N):
    """Rows past config.MAX_SINGLE_TILE_N: on a GPU the split-row kernel, whose plan also
    takes the stream's partial-sum slots; in the interpreter the looped kernel."""
    M = 3
    w, bias = rand_w(N, BF16, device), torch.randn(N, device=device).to(BF16)
    for _ in range(3):
        x = rand_x((M, N), BF16, device)
        poison_allocator((M, N), BF16, device)
        y = rt.rms_norm(x, w, bias=bias, weight_offset=1.0)
        assert_close(y, rmsnorm_ref(x, w, weight_offset=1.0, bias=bias))
        res = rand_x((M, N), FP32, device)
        want_res = x.float() + res
        poison_allocator((M, N), BF16, device)
        y, _ = rt.fused_add_rms_norm(x, res, w)
        torch.testing.assert_close(res, want_res, rtol=0, atol=0)
        assert_close(y, rmsnorm_ref(want_res, w))
    assert len(plans._plans) == 2
    if device == "cuda":
        assert all(p.parts_shape is not None for p in plans._plans.values()), \
            "expected the split-row kernel on a GPU"


def test_lazy_zero_tensors_are_refused_on_the_plan_path(device):
    """torch's lazy zeros have the signature of a real tensor but no memory (data_ptr 0): a
    plan left by a plain call must refuse them as the full path does, not launch on null."""
    M, N = 4, 256
    x, w = rand_x((M, N), BF16, device), rand_w(N, BF16, device)
    rt.rms_norm(x, w)
    rt.fused_add_rms_norm(x, rand_x((M, N), BF16, device), w)
    assert len(plans._plans) == 2
    zeros_w = torch._efficientzerotensor((N,), dtype=BF16, device=device)
    zeros_x = torch._efficientzerotensor((M, N), dtype=BF16, device=device)
    for call in (lambda: rt.rms_norm(x, zeros_w), lambda: rt.rms_norm(zeros_x, w),
                 lambda: rt.fused_add_rms_norm(x, rand_x((M, N), BF16, device), zeros_w)):
        with pytest.raises(TypeError, match="lazy zero tensor"):
            call()


class _RecordingLauncher:
    """Stands in for the split-row kernel's launcher (the interpreter cannot run that kernel:
    its programs wait for each other): records every launch and writes the oracle's result."""
    enabled = True

    def __init__(self):
        self.calls = []

    def __call__(self, grid, dev_index, args, constexprs, num_warps):
        x, w, out, parts = args[0], args[2], args[4], args[5]
        self.calls.append((grid, [a.__class__ for a in args], parts.data_ptr(), args[6:],
                           constexprs, num_warps, parts.clone()))
        out.copy_(rmsnorm_ref(x, w).to(out.dtype))

    def runner(self, *args):
        return None


def test_split_row_plan_launches_with_the_full_paths_arguments(device, monkeypatch):
    from rmsnorm_triton import ops
    fake = _RecordingLauncher()
    monkeypatch.setattr(ops, "_launch_split", fake)
    monkeypatch.setattr(ops, "pick_config",
                        lambda *a: config.LaunchConfig(1, 256, 4, False, splits=4))
    M, N = 3, 1000
    w = rand_w(N, BF16, device)
    for _ in range(2):                      # the full path, then the plan
        x = rand_x((M, N), BF16, device)
        poison_allocator((M, N), BF16, device)
        assert_close(rt.rms_norm(x, w), rmsnorm_ref(x, w))
    assert len(plans._plans) == 1 and len(fake.calls) == 2
    first, planned = fake.calls         # (grid, argument classes, slots' address, scalars, ...)
    assert first[0] == M * 4
    assert first[:2] == planned[:2] and first[3:6] == planned[3:6]
    if device == "cuda":                # one stream's slots, kept from call to call
        assert first[2] == planned[2]
    for ws in (first[6], planned[6]):   # int64 slots, every row's in one round (none ran)
        assert ws.dtype == torch.int64 and ws.shape[0] >= M and ws.shape[1] == 4
        assert bool((ws[:M] >> 32 == (ws[:M, :1] >> 32)).all())


_CAPPED, _CAPPED_WIDE, _UNCAPPED = ("_launch_split_capped", "_launch_split_capped_wide",
                                    "_launch_split")


def _shifted(shape, dtype, device, shift: bool):
    """rand_x's values in a tensor whose data starts 2 bytes past 16-byte alignment (shift)."""
    if not shift:
        return rand_x(shape, dtype, device)
    n = torch.Size(shape).numel()
    flat = torch.empty(n + 8, dtype=dtype, device=device)
    t = flat[1:n + 1].view(shape)
    t.copy_(rand_x(shape, dtype, device))
    return t


def _recording_split_launchers(monkeypatch, slice_n: int) -> dict:
    """Caps on as with Triton 3.6, every call's config 2 slices of slice_n on SPLIT_WARPS, and
    each split-row launcher replaced by a recorder: launcher name -> recorder."""
    from rmsnorm_triton import ops
    monkeypatch.setattr(config, "SPLIT_CAP_HERE", True)
    launchers = {name: _RecordingLauncher() for name in (_UNCAPPED, _CAPPED, _CAPPED_WIDE)}
    for name, fake in launchers.items():
        monkeypatch.setattr(ops, name, fake)
    cfg = config.LaunchConfig(1, slice_n, config.SPLIT_WARPS, False, splits=2)
    monkeypatch.setattr(ops, "pick_config", lambda *a: cfg)
    return launchers


@pytest.mark.parametrize("M,x_dtype,out_dtype,res_dtype,bias,slice_n,launcher,off", [
    # 16-bit rows in 8192 slices on 8 warps, 512 rows
    (512, BF16, BF16, None, False, config.SPLIT_SLICE_N_16BIT, _CAPPED, None),
    (600, BF16, BF16, BF16, False, config.SPLIT_SLICE_N_16BIT, _CAPPED, None),  # residual
    (511, BF16, BF16, None, False, config.SPLIT_SLICE_N_16BIT, _UNCAPPED, None),  # fewer rows
    (512, BF16, FP32, None, False, config.SPLIT_SLICE_N_16BIT, _UNCAPPED, None),  # fp32 out
    (512, BF16, BF16, FP32, False, config.SPLIT_SLICE_N_16BIT, _UNCAPPED, None),  # fp32 res
    (512, BF16, BF16, None, True, config.SPLIT_SLICE_N_16BIT, _UNCAPPED, None),   # a bias
    # fp16 to fp32 in 4096 slices on 8 warps, from 64 rows
    (64, FP16, FP32, None, False, config.SPLIT_SLICE_N, _CAPPED_WIDE, None),
    (63, FP16, FP32, None, False, config.SPLIT_SLICE_N, _UNCAPPED, None),       # smaller calls
    (64, BF16, FP32, None, False, config.SPLIT_SLICE_N, _UNCAPPED, None),       # bf16: level
    (64, FP16, FP32, None, True, config.SPLIT_SLICE_N, _UNCAPPED, None),        # a bias spills
    (64, FP16, FP32, FP16, False, config.SPLIT_SLICE_N, _UNCAPPED, None),       # the fused add
    # Capped, only 16-byte vectors keep from spilling: the weight's and the residual's pointers
    # aligned, the row length a multiple of 16. x never spills, but plans are keyed on the
    # alignment of the tensor normalized, x for the norm, so the norm of unaligned x runs
    # uncapped; x of the fused add is free.
    (512, BF16, BF16, None, False, config.SPLIT_SLICE_N_16BIT, _UNCAPPED, "weight"),
    (512, BF16, BF16, None, False, config.SPLIT_SLICE_N_16BIT, _UNCAPPED, "x"),
    (512, BF16, BF16, None, False, config.SPLIT_SLICE_N_16BIT, _UNCAPPED, "cols"),
    (600, BF16, BF16, BF16, False, config.SPLIT_SLICE_N_16BIT, _UNCAPPED, "residual"),
    (600, BF16, BF16, BF16, False, config.SPLIT_SLICE_N_16BIT, _CAPPED, "x"),
    (64, FP16, FP32, None, False, config.SPLIT_SLICE_N, _UNCAPPED, "weight"),
    (64, FP16, FP32, None, False, config.SPLIT_SLICE_N, _UNCAPPED, "cols"),
])
def test_split_rows_take_the_register_capped_launcher_by_rule(device, monkeypatch, M, x_dtype,
                                                              out_dtype, res_dtype, bias,
                                                              slice_n, launcher, off):
    """The full path and the plan it leaves launch through the same launcher; `off`: which
    operand is off 16-byte vectors."""
    from rmsnorm_triton import ops
    launchers = _recording_split_launchers(monkeypatch, slice_n)
    N = 2 * slice_n - (8 if off == "cols" else 0)
    x = _shifted((M, N), x_dtype, device, off == "x")
    w = _shifted((N,), x_dtype, device, off == "weight")
    b = rand_w(N, x_dtype, device) if bias else None
    for _ in range(2):                      # the full path, then the plan
        if res_dtype is None:
            ops.rms_norm(x, w, bias=b, out_dtype=out_dtype)
        else:
            ops.fused_add_rms_norm(x, _shifted((M, N), res_dtype, device, off == "residual"), w,
                                   bias=b, out_dtype=out_dtype)
    assert len(plans._plans) == 1
    used = [name for name, fake in launchers.items() if fake.calls]
    assert used == [launcher]
    assert [call[0] for call in launchers[used[0]].calls] == [2 * M] * 2


@pytest.mark.parametrize("case,launcher", [
    ("aligned", _CAPPED_WIDE),
    ("out off", _UNCAPPED),             # out=: a capped fp16 -> fp32 store spilled 160 bytes
    ("out stride off", _UNCAPPED),      # rows of out= 8 elements apart from a multiple of 16
    ("fp32 weight", _UNCAPPED),         # spilled capped
])
def test_calls_with_out_or_another_weight_leave_the_cap(device, monkeypatch, case, launcher):
    from rmsnorm_triton import ops
    launchers = _recording_split_launchers(monkeypatch, config.SPLIT_SLICE_N)
    M, N = 64, 2 * config.SPLIT_SLICE_N
    x = rand_x((M, N), FP16, device)
    w = rand_w(N, FP32 if case == "fp32 weight" else FP16, device)
    if case == "out off":
        out = _shifted((M, N), FP32, device, True)
    elif case == "out stride off":
        out = torch.empty((M, N + 8), dtype=FP32, device=device)[:, :N]
    else:
        out = torch.empty((M, N), dtype=FP32, device=device)
    ops.rms_norm(x, w, out=out)
    used = [name for name, fake in launchers.items() if fake.calls]
    assert used == [launcher]
    assert_close(out, rmsnorm_ref(x, w))


def test_a_fused_add_with_a_residual_stride_off_16_runs_uncapped(device, monkeypatch):
    from rmsnorm_triton import ops
    launchers = _recording_split_launchers(monkeypatch, config.SPLIT_SLICE_N_16BIT)
    M, N = 512, 2 * config.SPLIT_SLICE_N_16BIT
    x, w = rand_x((M, N), BF16, device), rand_w(N, BF16, device)
    residual = rand_x((M, N + 8), BF16, device)[:, :N]
    ops.fused_add_rms_norm(x, residual, w)
    assert [name for name, fake in launchers.items() if fake.calls] == [_UNCAPPED]


def test_a_capped_plan_keeps_to_its_alignment(device, monkeypatch):
    """The fused add's residual changes from call to call: an unaligned one does not run the
    plan an aligned one left (its register-capped launcher would spill), nor the reverse."""
    from rmsnorm_triton import ops
    launchers = _recording_split_launchers(monkeypatch, config.SPLIT_SLICE_N_16BIT)
    M, N = 512, 2 * config.SPLIT_SLICE_N_16BIT
    x, w = rand_x((M, N), BF16, device), rand_w(N, BF16, device)
    used = []
    for shift in (False, True, True, False):
        before = {name: len(fake.calls) for name, fake in launchers.items()}
        ops.fused_add_rms_norm(x, _shifted((M, N), BF16, device, shift), w)
        used += [name for name, fake in launchers.items() if len(fake.calls) > before[name]]
    assert used == [_CAPPED, _UNCAPPED, _UNCAPPED, _CAPPED]


def test_the_capped_launcher_compiles_with_the_cap_and_the_other_without():
    from rmsnorm_triton import ops
    assert ops._launch_split_capped.options == {**config.COMPILE_OPTIONS,
                                                "maxnreg": config.SPLIT_MAX_REGISTERS}
    assert ops._launch_split_capped_wide.options == {
        **config.COMPILE_OPTIONS, "maxnreg": config.SPLIT_WIDE_OUT_MAX_REGISTERS}
    assert ops._launch_split.options == config.COMPILE_OPTIONS
    assert ops._launch_split_capped.fn is ops._launch_split.fn
    assert ops._launch_split_capped_wide.fn is ops._launch_split.fn


def test_every_launcher_pins_floating_point_contraction():
    """Triton 3.10 turns fma contraction off by default; the package's numbers must not move
    with that, so every launcher asks for it (and Triton 3.9 then has no default to warn of)."""
    from rmsnorm_triton import ops
    from rmsnorm_triton.launcher import CachedLauncher
    launchers = [v for v in vars(ops).values() if isinstance(v, CachedLauncher)]
    assert len(launchers) == 5
    assert all(ln.options["enable_fp_fusion"] is True for ln in launchers)


class _OptionsKernel:
    """A jit function stand-in: records the options each launch passes, returns no kernel."""

    def __init__(self):
        self.meta = []

    def __getitem__(self, grid):
        return lambda *args, **meta: self.meta.append(meta)


@pytest.mark.parametrize("enabled", [True, False])
def test_cached_launcher_passes_its_compile_options_on_every_triton_launch(enabled):
    from rmsnorm_triton.launcher import CachedLauncher
    fn = _OptionsKernel()
    launcher = CachedLauncher(fn, enabled=enabled, options={"maxnreg": 40})
    for _ in range(2):              # no compiled kernel comes back: each call goes to Triton
        launcher(3, 0, (1, 2), (("BLOCK_N", 64),), 4)
    assert fn.meta == [{"BLOCK_N": 64, "num_warps": 4, "maxnreg": 40}] * 2
    plain = CachedLauncher(fn, enabled=enabled)
    plain(3, 0, (1, 2), (("BLOCK_N", 64),), 4)
    assert fn.meta[-1] == {"BLOCK_N": 64, "num_warps": 4}


def test_a_failing_runners_fallback_keeps_the_compile_options(monkeypatch):
    """A cached runner that an incompatible Triton breaks hands the call to Triton's own path,
    which must still compile with the launcher's options."""
    from types import SimpleNamespace

    from rmsnorm_triton import launcher as launcher_module
    stub = SimpleNamespace(active=SimpleNamespace(get_current_stream=lambda index: 0))
    monkeypatch.setattr(launcher_module, "driver", stub)
    fn = _OptionsKernel()
    capped = launcher_module.CachedLauncher(fn, options={"maxnreg": 40})
    capped.launch_cached(_Runner(TypeError("changed launcher")), 3, 0, (1, 2),
                         (("BLOCK_N", 64),), 4)
    assert fn.meta == [{"BLOCK_N": 64, "num_warps": 4, "maxnreg": 40}]
    assert not capped.enabled


def _planned(device, M=4, N=128, fused=False):
    """x, weight, residual (fp32: its sum is exact in the interpreter too) and the one plan
    a first call of that form leaves."""
    x, w = rand_x((M, N), BF16, device), rand_w(N, BF16, device)
    res = rand_x((M, N), FP32, device) if fused else None
    if fused:
        rt.fused_add_rms_norm(x, res.clone(), w)
    else:
        rt.rms_norm(x, w)
    (plan,) = plans._plans.values()
    return x, w, res, plan


class _Runner:
    """A stand-in for launcher.make_runner's direct runner: records what a planned call hands
    it (int pointers and the plan's scalars), or raises what an incompatible Triton would."""
    int_pointers = True

    def __init__(self, error=None):
        self.calls, self.error = [], error

    def __call__(self, grid, stream, args):
        if self.error is not None:
            raise self.error
        self.calls.append((grid, args))


@pytest.mark.parametrize("fused", [False, True])
def test_a_planned_call_hands_the_runner_int_pointers_and_the_plans_scalars(device, fused,
                                                                            monkeypatch):
    x, w, res, plan = _planned(device, fused=fused)
    runner = _Runner()
    monkeypatch.setattr(plan, "runner", runner)
    monkeypatch.setattr(plan.launcher, "enabled", True)
    monkeypatch.setattr(plans, "_current_stream", lambda index: 0)
    y = rt.fused_add_rms_norm(x, res, w)[0] if fused else rt.rms_norm(x, w)
    ((grid, args),) = runner.calls
    want = (x.data_ptr(), res.data_ptr() if fused else None, w.data_ptr(), None, y.data_ptr())
    assert grid == plan.grid and args == (*want, *plan.scalars)
    assert all(a.__class__ is int for a in want if a is not None)


@pytest.mark.parametrize("fused", [False, True])
def test_a_runner_that_fails_turns_the_fast_path_off_and_the_call_still_writes(device, fused,
                                                                               monkeypatch):
    x, w, res, plan = _planned(device, fused=fused)
    monkeypatch.setattr(plan, "runner", _Runner(TypeError("an unknown launcher layout")))
    monkeypatch.setattr(plan.launcher, "enabled", True)
    monkeypatch.setattr(plans, "_current_stream", lambda index: 0)
    poison_allocator(x.shape, BF16, device)
    if fused:
        want_res = x.float() + res
        y, _ = rt.fused_add_rms_norm(x, res, w)
        torch.testing.assert_close(res, want_res, rtol=0, atol=0)
        assert_close(y, rmsnorm_ref(want_res, w))
    else:
        assert_close(rt.rms_norm(x, w), rmsnorm_ref(x, w))
    assert plan.launcher.enabled is False


class _LauncherWithoutIntPointers:
    """A launcher whose cached runners take tensors only (a Triton with another launcher
    layout): plans must ask for one once, not on every call."""
    enabled = True

    def __init__(self):
        self.asked = 0

    def __call__(self, grid, dev_index, args, constexprs, num_warps):
        x, w, out = args[0], args[2], args[4]
        out.copy_(rmsnorm_ref(x, w).to(out.dtype))

    def runner(self, *args):
        self.asked += 1

        def by_tensors(grid, stream, args):
            raise AssertionError("a runner without int pointers must not be handed ints")
        by_tensors.int_pointers = False
        return by_tensors


def test_a_runner_without_int_pointers_is_looked_for_once(device, monkeypatch):
    from rmsnorm_triton import ops
    fake = _LauncherWithoutIntPointers()
    monkeypatch.setattr(ops, "_launch_rows", fake)
    w = rand_w(128, BF16, device)
    for _ in range(5):
        x = rand_x((4, 128), BF16, device)
        poison_allocator((4, 128), BF16, device)
        assert_close(rt.rms_norm(x, w), rmsnorm_ref(x, w))
    assert len(plans._plans) == 1 and fake.asked == 1


def test_an_overlapping_residual_launches_nothing_on_the_plan_path(device):
    M, N = 4, 128
    w = rand_w(N, BF16, device)
    buf = rand_x((2 * M * N,), BF16, device)
    rt.fused_add_rms_norm(rand_x((M, N), BF16, device), rand_x((M, N), BF16, device), w)
    assert len(plans._plans) == 1
    before = buf.clone()
    with pytest.raises(ValueError, match="residual overlaps x"):
        rt.fused_add_rms_norm(buf[:M * N].view(M, N), buf[N:N + M * N].view(M, N), w)
    torch.testing.assert_close(buf, before, rtol=0, atol=0)


def test_no_grad_calls_with_operands_that_require_grad_take_the_plan(device):
    M, N = 3, 64
    w = rand_w(N, FP32, device).requires_grad_()
    x = rand_x((M, N), FP32, device).requires_grad_()
    with torch.no_grad():
        for _ in range(3):
            res = rand_x((M, N), FP32, device).requires_grad_()
            want_res = x + res
            assert_close(rt.rms_norm(x, w), rmsnorm_ref(x, w))
            y, r = rt.fused_add_rms_norm(x, res, w)
            torch.testing.assert_close(r, want_res, rtol=0, atol=0)
            assert_close(y, rmsnorm_ref(want_res, w))
    assert len(plans._plans) == 2
