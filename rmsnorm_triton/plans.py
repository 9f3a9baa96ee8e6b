"""Launch plans: a repeat call skips validation and launch decisions.

A call's *signature* is everything `check_args` and `pick_config` look at apart from data
pointers: shapes, strides, dtypes, devices, flags and scalar arguments. The first call with a
signature takes the full path (validate, build row views, pick a config, launch) and leaves a
`Plan`; a later call with the same signature allocates its output and launches. On a slow host
that is the difference between ~40 us and ~15 us a decode-sized call. x's strides are part of
the signature even where x is contiguous: a slice such as h[:, -1:, :] of a (1, T, H) tensor
has strides that name T, so each T takes the full path once. That buys the common case, x with
the standard strides, an allocation with no keyword to parse (Plan._new_out).

Only the common forms get plans: a new output (no `out=`), tensors the kernel addresses as they
are (no staging copy), no gradients, the current device. Everything else takes the full path on
every call. A split-row call takes its stream's partial-sum slots (split_slots.py). What
depends on data pointers is checked per call: 16-byte alignment (Triton specializes on it), null
pointers (torch's lazy zero tensors) and, for the fused add, that the residual it writes
overlaps no tensor it reads.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from . import config, split_slots
from .launcher import CachedLauncher, Runner
from .validate import Prepared, _byte_range, check_dense

_MAX_PLANS = 4096
_plans: dict = {}
_current_device = getattr(torch._C, "_cuda_getDevice", None)
_set_device = getattr(torch._C, "_cuda_setDevice", None)
# What Triton's driver reads for the launch stream (torch's current raw stream).
_current_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _operand_key(t):
    # is_neg: a negative view's memory holds -t; it takes the full path, which copies it.
    return None if t is None else (t.shape, t.dtype, t.device, t.is_contiguous(), t.is_neg())


def norm_key(x, weight, bias, eps, weight_offset, out_dtype, clamp_fp16_input):
    """The signature of rms_norm(x, weight, eps, ...) with out=None, or None (no plan)."""
    if x.__class__ is not torch.Tensor:
        # Subclasses (and FX proxies) take the full path, whose output is a plain tensor.
        return None
    try:
        # Classes too: eps=True must not share the plan of eps=1 (bool is refused). The strides
        # tell the plan whether x's own layout is the standard one (Plan._new_out).
        return (x.shape, x.stride(), x.is_neg(), x.dtype, x.device,
                _operand_key(weight), bias if bias is None else _operand_key(bias), eps,
                eps.__class__, weight_offset, weight_offset.__class__, out_dtype,
                clamp_fp16_input)
    except (AttributeError, RuntimeError):
        # Not a tensor, or a sparse or nested one (no strides): the full path names it.
        return None


def norm_plan(x, weight, bias, eps, weight_offset, out_dtype, clamp_fp16_input):
    """The plan of rms_norm(x, weight, eps, ...) with out=None, where one exists and may run
    this call (_runnable), else None. Key, lookup and checks take three Python calls here
    where they took six: each call layer costs about 0.05-0.1 us on the CPU machine."""
    try:
        plan = _plans.get(norm_key(x, weight, bias, eps, weight_offset, out_dtype,
                                   clamp_fp16_input))
    except TypeError:               # an unhashable argument: the full path reports it
        return None
    return _runnable(plan, x, weight, bias, None)


def fused_key(x, residual, weight, bias, eps, weight_offset, out_dtype):
    """The signature of fused_add_rms_norm(x, residual, weight, eps, ...) with out=None."""
    if x.__class__ is not torch.Tensor or residual.__class__ is not torch.Tensor:
        return None
    try:
        return (x.shape, x.stride(), x.is_neg(), x.dtype, x.device, residual.shape,
                residual.stride(), residual.is_neg(), residual.dtype, residual.device,
                _operand_key(weight), _operand_key(bias), eps, eps.__class__, weight_offset,
                weight_offset.__class__, out_dtype)
    except (AttributeError, RuntimeError):
        return None


def fused_plan(x, residual, weight, bias, eps, weight_offset, out_dtype):
    """norm_plan for fused_add_rms_norm(x, residual, weight, eps, ...) with out=None."""
    try:
        plan = _plans.get(fused_key(x, residual, weight, bias, eps, weight_offset, out_dtype))
    except TypeError:
        return None
    return _runnable(plan, x, weight, bias, residual)


def _runnable(plan, x, weight, bias, residual):
    """`plan`, if it may run this call: Triton launches on the current GPU (a plan made for
    another steps aside), the kernels are forward-only (nothing for autograd to record), and
    where the config rests on the held tensor's alignment (a held row, or the split row that
    an unaligned call takes in its place) or the launcher does (a register-capped split row),
    this call's alignment is the plan's. So a signature
    takes one config per alignment, and the fused add and the unfused norm of its residual
    take the same one."""
    if plan is None or plan.dev_index >= 0 and _current_device() != plan.dev_index:
        return None
    if not alignment_fits(plan, x if residual is None else residual, weight):
        return None
    if torch.is_grad_enabled() and (
            x.requires_grad or weight is not None and weight.requires_grad
            or bias is not None and bias.requires_grad
            or residual is not None and residual.requires_grad):
        return None
    return plan


def alignment_fits(plan, held, weight) -> bool:
    """Whether this call's alignment (`misaligned`) is the one plan's config was picked for,
    where it was picked for one (Plan.made_aligned)."""
    return plan.made_aligned is None or misaligned(held, weight) is not plan.made_aligned


def misaligned(held, weight) -> bool:
    """Whether the tensor a held row holds (x, or the fused add's residual) or the weight is
    off 16 bytes (with config.row_vectors, which the key pins: whether a held row or a
    register-capped split row loads vectors)."""
    return bool((held.data_ptr() | (0 if weight is None else weight.data_ptr())) & 15)


def lookup(key) -> Optional["Plan"]:
    if key is None:
        return None
    try:
        return _plans.get(key)
    except TypeError:               # an unhashable argument: the full path reports it
        return None


def _refuse_lazy(*named) -> None:
    """A data pointer of 0 in a non-empty call: a lazy zero tensor, which the signature does
    not tell from a real one. check_dense names it (TypeError)."""
    for name, t in named:
        if t is not None:
            check_dense(name, t)


def _standard_strides(shape) -> tuple:
    """The strides of a contiguous tensor of this shape, as torch.empty gives them."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _extent(t: Optional[torch.Tensor]) -> int:
    """Bytes from t's first element to one past its last."""
    if t is None or t.numel() == 0:
        return 0
    start, end = _byte_range(t)
    return end - start


class Plan:
    """One signature's launch: output allocation, grid, and the arguments that never change."""
    __slots__ = ("out_shape", "out_dtype", "device", "dev_index", "grid", "scalars", "launcher",
                 "constexprs", "num_warps", "runner", "extents", "like_x", "standard_x",
                 "same_as_x", "parts_shape", "made_aligned")

    def __init__(self, p: Prepared, launcher: CachedLauncher, grid: int, scalars: tuple,
                 constexprs: tuple, num_warps: int, splits: int = 1,
                 x_strides: Optional[tuple] = None, made_aligned: Optional[bool] = None):
        self.out_shape, self.out_dtype, self.device = p.shape, p.out.dtype, p.out.device
        # empty_like costs ~2 us less than torch.empty on a slow host; a peer's output (tensor
        # parallelism) lives on another GPU than x, so it takes torch.empty.
        self.like_x = p.x.device == p.out.device
        # x's own strides (the caller's tensor, which the key pins) are the standard ones:
        # empty_like(x) keeps them without being told, and with x's dtype it needs no keyword
        # at all. Each keyword spared saves ~0.1 us of argument parsing on the CPU machine,
        # more on a slow host.
        self.standard_x = self.like_x and x_strides == _standard_strides(p.shape)
        self.same_as_x = self.standard_x and p.out.dtype == p.x.dtype
        self.dev_index = self.device.index if self.device.type == "cuda" else -1
        self.grid, self.scalars, self.launcher = grid, scalars, launcher
        self.constexprs, self.num_warps = constexprs, num_warps
        # None: not looked for yet; False: this Triton has no runner taking int pointers for
        # this kernel, so every call takes the launcher's own path without asking again.
        self.runner: Union[Runner, None, bool] = None
        # residual, x, weight, bias: the fused add checks per call that the first overlaps none
        # of the others (data pointers are not part of the signature).
        self.extents = tuple(_extent(t) for t in (p.residual, p.x, p.weight, p.bias))
        # The split-row kernel's slots: rows and programs a row (ops._run_kernel).
        self.parts_shape = (p.x.shape[0], splits) if splits > 1 else None
        # Whether the config or launcher was picked for an aligned held tensor (a held row, a
        # register-capped split row) or an unaligned one (the split row in a held row's place,
        # an uncapped one); None where alignment did not enter (_runnable).
        self.made_aligned = made_aligned

    def launch(self, x, residual, weight, bias, out) -> bool:
        """Write out; False, launching nothing, where the residual that the fused add writes
        overlaps a tensor it reads (the full path says how)."""
        if self.grid == 0:
            return True
        # An absent operand is passed as None, which Triton compiles out (kernels/rmsnorm.py).
        xp, op = x.data_ptr(), out.data_ptr()
        bits = xp | op
        rp = wp = bp = None
        if weight is not None:
            wp = weight.data_ptr()
            bits |= wp
        if bias is not None:
            bp = bias.data_ptr()
            bits |= bp
        if residual is not None:
            rp = residual.data_ptr()
            bits |= rp
            if self._overlaps(rp, xp, wp, bp):
                return False
        if not xp or rp == 0 or wp == 0 or bp == 0:
            _refuse_lazy(("x", x), ("residual", residual), ("weight", weight), ("bias", bias))
        # Triton specializes pointers on 16-byte alignment; the runner is the aligned kernel,
        # kept only where it takes pointers as ints (launcher.make_runner).
        runner = self.runner
        if runner and not bits & 15 and self.launcher.enabled:
            try:
                # ints: the key put every tensor on this plan's GPU (or a readable peer's)
                if self.parts_shape is None:
                    runner(self.grid, _current_stream(self.dev_index),
                           (xp, rp, wp, bp, op, *self.scalars))
                else:
                    parts = split_slots.split_workspace(*self.parts_shape, self.device)
                    runner(self.grid, _current_stream(self.dev_index),
                           (xp, rp, wp, bp, op, parts.data_ptr(), *self.scalars))
                return True
            except (AttributeError, TypeError):
                # An incompatible Triton: this call and every later one take its own path.
                self.launcher.enabled = False
        self._launch_by_tensors(x, residual, weight, bias, out, aligned=not bits & 15)
        return True

    def _overlaps(self, rp, xp, wp, bp) -> bool:
        """The residual's bytes (from rp) meet those of x, weight or bias (data pointers are
        not part of the signature; a lazy tensor's 0 meets nothing and is refused later)."""
        r_size, x_size, w_size, b_size = self.extents
        r_end = rp + r_size
        return bool(xp and xp < r_end and rp < xp + x_size
                    or wp and wp < r_end and rp < wp + w_size
                    or bp and bp < r_end and rp < bp + b_size)

    def _launch_by_tensors(self, x, residual, weight, bias, out, aligned: bool) -> None:
        """The launcher's own path (first call of a plan, unaligned pointers, another Triton).
        The first aligned call looks for the runner that later calls take, once."""
        launcher = self.launcher
        parts = () if self.parts_shape is None else \
            (split_slots.split_workspace(*self.parts_shape, self.device),)
        args = (x, residual, weight, bias, out, *parts, *self.scalars)
        launcher(self.grid, self.dev_index, args, self.constexprs, self.num_warps)
        if self.runner is None and aligned:
            runner = launcher.runner(self.dev_index, args, self.constexprs, self.num_warps)
            self.runner = runner if runner is not None and runner.int_pointers else False

    def _new_out(self, x):
        """The output, where it is not a plain empty_like(x): norm and fused_add take that
        one themselves (same_as_x), sparing the hot path a call."""
        if self.standard_x:
            return torch.empty_like(x, dtype=self.out_dtype)
        if self.like_x:
            # contiguous_format: standard strides also where x's size-1 dims have odd ones.
            return torch.empty_like(x, dtype=self.out_dtype,
                                    memory_format=torch.contiguous_format)
        return torch.empty(self.out_shape, dtype=self.out_dtype, device=self.device)

    def norm(self, x, weight, bias):
        out = torch.empty_like(x) if self.same_as_x else self._new_out(x)
        self.launch(x, None, weight, bias, out)
        return out

    def norm_on_device(self, x, weight, bias):
        """norm() for a plan whose GPU need not be current: a peer reading x (parallel.py)."""
        prev = _current_device()
        if prev == self.dev_index:
            return self.norm(x, weight, bias)
        _set_device(self.dev_index)
        try:
            return self.norm(x, weight, bias)
        finally:
            _set_device(prev)

    def fused_add(self, x, residual, weight, bias):
        """None when residual overlaps what the kernel reads (the full path says how)."""
        out = torch.empty_like(x) if self.same_as_x else self._new_out(x)
        return out if self.launch(x, residual, weight, bias, out) else None


def fanout_key(x, devices, weights, biases, eps, weight_offset, out_dtype, clamp_fp16_input):
    """The signature of one fanout launch (x normalized once, a copy per device), or None."""
    key = norm_key(x, None, None, eps, weight_offset, out_dtype, clamp_fp16_input)
    if key is None:
        return None
    try:
        return ("fanout", key, tuple(devices), tuple(_operand_key(w) for w in weights),
                tuple(_operand_key(b) for b in biases))
    except (AttributeError, RuntimeError):
        return None


_PLAIN = (torch.Tensor, torch.nn.Parameter)       # new_empty gives a plain tensor for these
NO_FANOUT = object()        # a signature that fanout_plan refused: not asked again


class FanoutPlan:
    """rms_norm(x, weights[i], bias=biases[i]) for every device i, in one launch on x's GPU.

    Built by ops.fanout_plan, which checked every argument and picked the launch config each
    device's own rms_norm would take (so copy i equals that call bit for bit). Outputs are
    allocated on their devices' current streams; the launch runs on x's GPU's current stream,
    and ordering the two is the caller's job (parallel.py)."""
    __slots__ = ("out_shape", "out_dtype", "devices", "src", "grid", "scalars", "launcher",
                 "constexprs", "num_warps", "runner", "pad", "absent", "has_weight",
                 "has_bias")

    def __init__(self, x, devices, out_dtype, launcher: CachedLauncher, grid: int,
                 scalars: tuple, constexprs: tuple, num_warps: int, slots: int,
                 has_weight: bool, has_bias: bool):
        self.out_shape, self.out_dtype = x.shape, out_dtype
        self.devices = tuple(devices)
        self.src = x.device.index if x.device.type == "cuda" else -1
        self.grid, self.scalars, self.launcher = grid, scalars, launcher
        self.constexprs, self.num_warps = constexprs, num_warps
        self.pad = (None,) * (slots - len(devices))     # unused kernel slots
        self.absent = (None,) * len(devices)            # a weight or bias slot per copy
        self.has_weight, self.has_bias = has_weight, has_bias
        self.runner: Optional[Runner] = None

    def outputs(self, x, weights) -> list:
        if self.has_weight and all(w.__class__ in _PLAIN for w in weights):
            # new_empty on the device's own weight: ~2 us less than torch.empty(device=) on a
            # slow host (no device argument to parse). Other subclasses would return their own.
            return [w.new_empty(self.out_shape, dtype=self.out_dtype) for w in weights]
        return [torch.empty(self.out_shape, dtype=self.out_dtype, device=d)
                for d in self.devices]

    def launch(self, x, weights, biases, outs) -> None:
        """Write outs (from outputs()) on x's GPU's current stream."""
        if self.grid == 0:
            return
        # Unused kernel slots and absent operands are None: Triton compiles them out.
        xp = x.data_ptr()
        absent, pad = self.absent, self.pad
        yps = [o.data_ptr() for o in outs]
        wps = [w.data_ptr() for w in weights] if self.has_weight else []
        bps = [b.data_ptr() for b in biases] if self.has_bias else []
        if not xp or 0 in wps or 0 in bps:
            _refuse_lazy(("x", x), *[(f"weights[{i}]", w) for i, w in enumerate(weights)],
                         *[(f"biases[{i}]", b) for i, b in enumerate(biases)])
        bits = xp
        for p in (*yps, *wps, *bps):
            bits |= p
        ptrs = (xp, *yps, *pad, *(wps or absent), *pad, *(bps or absent), *pad)
        # Triton launches on the current device: switch to x's GPU for this call.
        prev = self.src if self.src < 0 else _current_device()
        if prev != self.src:
            _set_device(self.src)
        try:
            runner, launcher = self.runner, self.launcher
            if runner is not None and runner.int_pointers and not bits & 15 and launcher.enabled:
                try:
                    runner(self.grid, _current_stream(self.src), (*ptrs, *self.scalars))
                    return
                except (AttributeError, TypeError):
                    launcher.enabled = False
            tensors = (x, *outs, *pad, *(weights if self.has_weight else absent), *pad,
                       *(biases if self.has_bias else absent), *pad)
            args = (*tensors, *self.scalars)
            launcher(self.grid, self.src, args, self.constexprs, self.num_warps)
            if runner is None and not bits & 15:
                self.runner = launcher.runner(self.src, args, self.constexprs, self.num_warps)
        finally:
            if prev != self.src:
                _set_device(prev)


def store(key, plan, generation: int) -> None:
    """Keep `plan` (or NO_FANOUT) for `key`, unless the tuned table changed since `generation`
    was read, before the plan's config was picked."""
    if key is None or generation != config.config_generation():
        return
    if len(_plans) >= _MAX_PLANS:
        _plans.clear()
    _plans[key] = plan


def remember(key, p: Prepared, x, weight, bias, launcher: CachedLauncher, grid: int,
             scalars: tuple, constexprs: tuple, num_warps: int, splits: int,
             generation: int, made_aligned: Optional[bool] = None) -> None:
    """Store a plan for `key` if this call's form allows one (see the module docstring).

    `generation`: config's, read before the launch config was picked; if the tuned table
    changed since, the config may be superseded and no plan is kept."""
    if key is None or p.out_user is not None or p.residual_user is not None:
        return
    if generation != config.config_generation():
        return
    if p.x.data_ptr() != x.data_ptr() or p.weight is not weight or p.bias is not bias:
        return                      # a staging copy was made: the plan would skip it
    if not p.out.is_contiguous():
        return
    if len(_plans) >= _MAX_PLANS:
        _plans.clear()
    try:
        _plans[key] = Plan(p, launcher, grid, scalars, constexprs, num_warps, splits,
                           x.stride(), made_aligned)
    except TypeError:
        pass


def clear() -> None:
    _plans.clear()
    split_slots.clear()


config._cache_listeners.append(clear)    # a new tuned table changes the configs plans hold

