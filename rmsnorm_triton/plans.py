"""Launch plans: a repeat call skips validation and launch decisions.

A call's *signature* is everything `check_args` and `pick_config` look at apart from data
pointers: shapes, strides, dtypes, devices, flags and scalar arguments. The first call with a
signature takes the full path (validate, build row views, pick a config, launch) and leaves a
`Plan`; a later call with the same signature allocates its output and launches. On a slow host
that is the difference between ~40 us and ~15 us a decode-sized call.

Only the common forms get plans: a new output (no `out=`), tensors the kernel addresses as they
are (no staging copy), no gradients, the current device. Everything else takes the full path on
every call. A split-row call takes its stream's partial-sum slots (split_slots.py). What
depends on data pointers is checked per call: 16-byte alignment (Triton specializes on it), null
pointers (torch's lazy zero tensors) and, for the fused add, that the residual it writes
overlaps no tensor it reads.
"""
from __future__ import annotations

from typing import Optional

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
        # Classes too: eps=True must not share the plan of eps=1 (bool is refused).
        # x.stride() only where x is not contiguous: it costs more than the test.
        return (x.shape, x.is_contiguous() or x.stride(), x.is_neg(), x.dtype, x.device,
                _operand_key(weight), _operand_key(bias), eps, eps.__class__,
                weight_offset, weight_offset.__class__, out_dtype, clamp_fp16_input)
    except (AttributeError, RuntimeError):
        # Not a tensor, or a sparse or nested one (no strides): the full path names it.
        return None


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


def grad_free(x, weight, bias) -> bool:
    """No autograd to record (the kernels are forward-only); cheap for tensors already keyed."""
    return not torch.is_grad_enabled() or not (
        x.requires_grad or (weight is not None and weight.requires_grad)
        or (bias is not None and bias.requires_grad))


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


def _extent(t: Optional[torch.Tensor]) -> int:
    """Bytes from t's first element to one past its last."""
    if t is None or t.numel() == 0:
        return 0
    start, end = _byte_range(t)
    return end - start


class Plan:
    """One signature's launch: output allocation, grid, and the arguments that never change."""
    __slots__ = ("out_shape", "out_dtype", "device", "dev_index", "grid", "scalars", "launcher",
                 "constexprs", "num_warps", "runner", "extents", "like_x", "parts_shape")

    def __init__(self, p: Prepared, launcher: CachedLauncher, grid: int, scalars: tuple,
                 constexprs: tuple, num_warps: int, splits: int = 1):
        self.out_shape, self.out_dtype, self.device = p.shape, p.out.dtype, p.out.device
        # empty_like costs ~2 us less than torch.empty on a slow host; a peer's output (tensor
        # parallelism) lives on another GPU than x, so it takes torch.empty.
        self.like_x = p.x.device == p.out.device
        self.dev_index = self.device.index if self.device.type == "cuda" else -1
        self.grid, self.scalars, self.launcher = grid, scalars, launcher
        self.constexprs, self.num_warps = constexprs, num_warps
        self.runner: Optional[Runner] = None
        # residual, x, weight, bias: the fused add checks per call that the first overlaps none
        # of the others (data pointers are not part of the signature).
        self.extents = tuple(_extent(t) for t in (p.residual, p.x, p.weight, p.bias))
        # The split-row kernel's slots: rows and programs a row (ops._run_kernel).
        self.parts_shape = (p.x.shape[0], splits) if splits > 1 else None

    def launch(self, x, residual, weight, bias, out) -> None:
        if self.grid == 0:
            return
        # An absent operand is passed as None, which Triton compiles out (kernels/rmsnorm.py).
        xp, op = x.data_ptr(), out.data_ptr()
        bits = xp | op
        rp = wp = bp = None
        if residual is not None:
            rp = residual.data_ptr()
            bits |= rp
        if weight is not None:
            wp = weight.data_ptr()
            bits |= wp
        if bias is not None:
            bp = bias.data_ptr()
            bits |= bp
        if not xp or rp == 0 or wp == 0 or bp == 0:
            _refuse_lazy(("x", x), ("residual", residual), ("weight", weight), ("bias", bias))
        # Triton specializes pointers on 16-byte alignment; the runner is the aligned kernel.
        aligned = not bits & 15
        runner, launcher = self.runner, self.launcher
        parts = () if self.parts_shape is None else \
            (split_slots.split_workspace(*self.parts_shape, self.device),)
        if runner is not None and runner.int_pointers and aligned and launcher.enabled:
            try:
                # ints: the key put every tensor on this plan's GPU (or a readable peer's)
                runner(self.grid, _current_stream(self.dev_index),
                       (xp, rp, wp, bp, op, *[t.data_ptr() for t in parts], *self.scalars))
                return
            except (AttributeError, TypeError):
                # An incompatible Triton: this call and every later one take its own path.
                launcher.enabled = False
        args = (x, residual, weight, bias, out, *parts, *self.scalars)
        launcher(self.grid, self.dev_index, args, self.constexprs, self.num_warps)
        if runner is None and aligned:
            self.runner = launcher.runner(self.dev_index, args, self.constexprs,
                                          self.num_warps)

    def usable(self) -> bool:
        """Triton launches on the current device: a plan made for another one steps aside."""
        return self.dev_index < 0 or _current_device() == self.dev_index

    def _new_out(self, x):
        if self.like_x:
            # contiguous_format: standard strides also where x's size-1 dims have odd ones.
            return torch.empty_like(x, dtype=self.out_dtype,
                                    memory_format=torch.contiguous_format)
        return torch.empty(self.out_shape, dtype=self.out_dtype, device=self.device)

    def norm(self, x, weight, bias):
        out = self._new_out(x)
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
        r0 = residual.data_ptr()
        r1 = r0 + self.extents[0]
        for t, size in zip((x, weight, bias), self.extents[1:]):
            if t is not None and size:
                t0 = t.data_ptr()
                if t0 < r1 and r0 < t0 + size:
                    return None
        out = self._new_out(x)
        self.launch(x, residual, weight, bias, out)
        return out


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
             generation: int) -> None:
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
        _plans[key] = Plan(p, launcher, grid, scalars, constexprs, num_warps, splits)
    except TypeError:
        pass


def clear() -> None:
    _plans.clear()
    split_slots.clear()


config._cache_listeners.append(clear)    # a new tuned table changes the configs plans hold

