"""Launchers: rms_norm and fused_add_rms_norm, and their torch.library custom ops.

Eager calls go straight to `_launch` (no dispatcher hop on the hot path); under torch.compile
the public functions call the registered custom ops, whose fake implementations let Dynamo
trace through without a graph break.
"""
from __future__ import annotations

from typing import Optional

import torch

from rmsnorm_triton.kernels.rmsnorm import (
    rmsnorm_fwd_fanout_kernel,
    rmsnorm_fwd_kernel,
    rmsnorm_fwd_split_kernel,
)

from . import plans, split_slots
from .config import (
    DECODE_MAX_ROWS,
    COMPILE_OPTIONS,
    HELD_ADD_CHUNK_N,
    INTERPRET,
    SPLIT_MAX_REGISTERS,
    SPLIT_WIDE_OUT_MAX_REGISTERS,
    LaunchConfig,
    config_generation,
    device_name,
    fanout_params_late,
    hold_row,
    next_pow2,
    pick_config,
    preload_weight,
    row_bucket,
    row_mask,
    row_vectors,
    split_register_cap,
)
from .launcher import CachedLauncher
from .reference import fused_add_rms_norm_reference, rms_norm_reference
from .validate import (Prepared, as_rows, check_args, check_inputs, check_traced_flags,
                       on_device)

MAX_FANOUT = 8      # outputs rmsnorm_fwd_fanout_kernel can write (its y0..y7)


def _needs_grad(*tensors) -> bool:
    """Autograd must see the computation: the kernels are forward-only."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                           for t in tensors)


def _version_bumper():
    """mark_written: torch._C._increment_version where it takes a sequence of tensors (0.15 us
    a call on the CPU machine against 0.28 through the public wrapper), else the public
    torch.autograd.graph.increment_version. One call layer: it runs on the hot path."""
    raw = getattr(torch._C, "_increment_version", None)
    try:
        raw((torch.empty(0),))
    except Exception:           # another signature, or none: the public function
        return torch.autograd.graph.increment_version

    def mark_written(t: torch.Tensor) -> None:
        """Tell autograd that a kernel wrote t in place, as torch's own in-place ops do: a
        tensor that an autograd graph saved and a kernel then overwrote raises at backward,
        instead of giving a wrong gradient. Only kernel writes: torch's own copies (the
        reference path) bump versions themselves, and a second bump would break the
        reference's own saved tensors. (An inference-mode tensor has no version.)"""
        raw((t,))
    return mark_written


mark_written = _version_bumper()


def _use_reference(x, *tensors) -> bool:
    """CPU tensors without the interpreter, and autograd, take the torch path (which is what
    torch.compile traces too when gradients are needed).

    So do arguments that are not tensors at all: the reference's validation names them.
    """
    if not isinstance(x, torch.Tensor) or not all(t is None or isinstance(t, torch.Tensor)
                                                   for t in tensors):
        return True
    device_type = x.device.type
    if device_type != "cuda" and (not INTERPRET or device_type == "meta"):
        # Meta tensors hold no data for the interpreter to run on: the reference gives shapes.
        return True
    return _needs_grad(x, *tensors)


def _launch(p: Prepared, eps, weight_offset, accumulate, clamp_fp16_input,
            cfg: Optional[LaunchConfig] = None, plan_key=None, operands=None):
    """Run the kernel on prepared views; `cfg` overrides pick_config (the tuner passes one).

    With a `plan_key` (and the caller's (x, weight, bias) as `operands`), the launch is
    remembered so that the next call with that signature skips straight to it (plans.py).
    """
    x, res, out, weight, bias = p.x, p.residual, p.out, p.weight, p.bias
    n_rows, n_cols = x.shape
    dev = out.device          # x's device, or a peer's that reads x (tensor parallelism)
    dev_index = dev.index if dev.type == "cuda" else -1
    generation = config_generation()     # a plan made from a superseded table is not kept
    # Whether the config or the launcher rests on the held tensor's alignment (a held row, the
    # split row in its place, a register-capped split row), and on which; None: it does not
    # (plans.Plan.made_aligned).
    made_aligned = None
    normalized = x if res is None else res      # the tensor a held row holds
    if cfg is None:
        # The clamp is compiled out but for fp16 x (flags below).
        plain = bias is None and not accumulate and not (
            clamp_fp16_input and x.dtype == torch.float16)
        cfg = pick_config(n_cols, row_bucket(n_rows), x.dtype, out.dtype, res is not None,
                          dev_index, None if res is None else res.dtype, plain)
        if plain and hold_row(cfg, normalized.element_size()):
            # The rows' length and stride are the signature's (never held if they are off
            # vectors, whatever the pointer); the pointer's alignment is the call's.
            if row_vectors(n_cols, normalized.stride(0)):
                made_aligned = not plans.misaligned(normalized, weight)
            if not made_aligned:
                cfg = pick_config(n_cols, row_bucket(n_rows), x.dtype, out.dtype,
                                  res is not None, dev_index,
                                  None if res is None else res.dtype, False)
    masked = cfg.splits == 1 and row_mask(cfg)
    # None for what the kernel does not read: Triton compiles it out (kernels/rmsnorm.py).
    scalars = (n_rows if masked else None, n_cols, x.stride(0),
               None if res is None else res.stride(0), out.stride(0), float(eps))
    flags = (("HAS_WEIGHT", weight is not None), ("HAS_BIAS", bias is not None),
             ("HAS_RESIDUAL", res is not None), ("ACCUMULATE", bool(accumulate)),
             ("CLAMP_FP16", bool(clamp_fp16_input) and x.dtype == torch.float16),
             # + 0.0 turns -0.0 into 0.0: the two compare equal, so they share plans and
             # cached kernels, and must then mean the same thing.
             ("WEIGHT_OFFSET", float(weight_offset) + 0.0), ("BLOCK_N", cfg.block_n))
    if cfg.splits > 1:
        cap = split_register_cap(cfg, n_rows, x.dtype, out.element_size(),
                                 None if res is None else res.dtype,
                                 None if weight is None else weight.dtype, dev_index,
                                 plain=weight is not None and bias is None and not accumulate)
        if cap is not None:
            # Capped, only vector loads and stores keep from spilling: the output's, weight's
            # and residual's pointers 16-byte aligned (a plan's output is new, so aligned; the
            # plan keeps to this call's alignment of the others, plans.alignment_fits).
            strides = (out.stride(0),) if res is None else (out.stride(0), res.stride(0))
            if row_vectors(n_cols, *strides):
                made_aligned = not (plans.misaligned(normalized, weight)
                                    or out.data_ptr() & 15)
            if not made_aligned:
                cap = None
        launcher = _split_launcher(cap)
        grid = n_rows * cfg.splits
        flags += (("SPLITS", cfg.splits), ("SPLITS_P2", next_pow2(cfg.splits)))
    else:
        launcher, grid = _launch_rows, -(-n_rows // cfg.block_m)
        hold = hold_row(cfg, normalized.element_size())
        flags += (("BLOCK_M", cfg.block_m), ("LOOPED", cfg.looped),
                  ("LOOP_N", n_cols if cfg.looped else 0),
                  ("PRELOAD_W", preload_weight(cfg, n_rows, x.dtype, out.element_size(),
                                               res is not None, dev_index,
                                               _param_bytes(weight, bias))),
                  ("ROW_MASK", masked),
                  ("HOLD_X", hold), ("ADD_CHUNK_N", HELD_ADD_CHUNK_N if hold and res is not None
                                     else 0))
    if n_rows > 0:
        args = (x, res, weight, bias, out)
        # Triton launches on the current device: follow the output (tensor parallelism).
        if dev.type == "cuda" and dev_index != torch.cuda.current_device():
            with torch.cuda.device(dev):
                _run_kernel(launcher, grid, cfg, dev_index, args, scalars, flags)
        else:
            _run_kernel(launcher, grid, cfg, dev_index, args, scalars, flags)
    if plan_key is not None:
        plans.remember(plan_key, p, *operands, launcher, grid, scalars, flags, cfg.num_warps,
                       cfg.splits, generation, made_aligned)
    if p.residual_user is not None:
        p.residual_user.copy_(res.view(p.shape))
    if p.out_user is not None:
        return p.out_user.copy_(out.view(p.shape))
    return out if out.shape == p.shape else out.view(p.shape)


def _param_bytes(weight, bias) -> int:
    """Bytes a column of the weight and the bias, which a tile fetches together."""
    return sum(t.element_size() for t in (weight, bias) if t is not None)


def _launcher(kernel, **options) -> CachedLauncher:
    # The interpreter runs Python, not compiled kernels: it always takes Triton's own path.
    return CachedLauncher(kernel, enabled=not INTERPRET, options={**COMPILE_OPTIONS, **options})


_launch_rows = _launcher(rmsnorm_fwd_kernel)
_launch_split = _launcher(rmsnorm_fwd_split_kernel)
_launch_split_capped = _launcher(rmsnorm_fwd_split_kernel, maxnreg=SPLIT_MAX_REGISTERS)
_launch_split_capped_wide = _launcher(rmsnorm_fwd_split_kernel,
                                      maxnreg=SPLIT_WIDE_OUT_MAX_REGISTERS)
_launch_fanout = _launcher(rmsnorm_fwd_fanout_kernel)


def _split_launcher(cap: Optional[int]) -> CachedLauncher:
    """The split-row launcher that compiles under `cap` registers a thread (split_register_cap;
    None: uncapped). Looked up per call, so a test may swap one."""
    if cap is None:
        return _launch_split
    return _launch_split_capped if cap == SPLIT_MAX_REGISTERS else _launch_split_capped_wide


def fanout_plan(x, devices, weights, biases, eps, *, out_dtype=None, weight_offset=0.0,
                clamp_fp16_input=False) -> Optional[plans.FanoutPlan]:
    """A plan that writes rms_norm(x, weights[i], eps, bias=biases[i]) on devices[i] for every
    i with one kernel on x's device, reading a peer's weight and writing its output over peer
    access (tensor parallelism; parallel.py checks that access and orders the streams).

    Raises what rms_norm raises for bad arguments. None where this form has no fanout launch
    (the caller normalizes per device instead): more than MAX_FANOUT devices, an x or weight
    the kernel cannot address as it is, GPUs of different models (the kernel is compiled for
    x's), a split-row config, a looped one to a wider output, or a config that differs
    between the devices (copy i must equal device i's own rms_norm). The answer depends on
    the call's signature only; gradients are the caller's to refuse (the kernel is
    forward-only).
    """
    if not 1 <= len(devices) <= MAX_FANOUT:
        return None
    for i, (dev, w, b) in enumerate(zip(devices, weights, biases)):
        try:
            check_args(x, w, bias=b, out_dtype=out_dtype, eps=eps, weight_offset=weight_offset,
                       clamp_fp16_input=clamp_fp16_input, device=dev)
        except (TypeError, ValueError) as e:
            raise on_device(e, i, dev) from e
    if x.numel() == 0 or any(t is not None and (t.is_neg() or not t.is_contiguous())
                             for t in (*weights, *biases)):
        return None
    n_cols = x.shape[-1]
    n_rows = x.numel() // n_cols
    x2d = as_rows(x, n_cols, writable=False)
    if x2d is None:
        return None
    out_dtype = out_dtype or x.dtype
    indices = [d.index if d.type == "cuda" else -1 for d in devices]
    if len({device_name(i) for i in indices}) > 1:
        return None
    cfgs = {pick_config(n_cols, row_bucket(n_rows), x.dtype, out_dtype, False, i)
            for i in indices}
    cfg = cfgs.pop()
    # A looped config to a wider output in a call past decode size (16-bit -> fp32 from 512
    # rows of 4096+) reads x in place on every GPU instead: those reads beat a fanout, which
    # pushes the 4-byte outputs over NVLink (bench/RESULTS.md, "To an fp32 output"). Decode
    # calls that loop to fp32 (config.DECODE_WIDE_OUT_*) keep the fanout: one launch, not one
    # a GPU (2 x H200, 1-8 x 8192 bf16 in a graph: 7.3-7.7 us against 19.9-20.5 read in place).
    wider_out = out_dtype.itemsize > x.dtype.itemsize
    # The fanout kernel holds no row in 16 bits: a tile that needs it takes the per-GPU path.
    if cfgs or cfg.splits > 1 or cfg.looped and wider_out and n_rows > DECODE_MAX_ROWS or \
            hold_row(cfg, x.element_size()):
        return None
    has_w, has_b = weights[0] is not None, biases[0] is not None
    if any((w is not None) != has_w for w in weights) or \
            any((b is not None) != has_b for b in biases):
        return None
    flags = (("HAS_WEIGHT", has_w), ("HAS_BIAS", has_b),
             ("CLAMP_FP16", bool(clamp_fp16_input) and x.dtype == torch.float16),
             ("WEIGHT_OFFSET", float(weight_offset) + 0.0),     # as _launch: -0.0 is 0.0
             ("BLOCK_M", cfg.block_m), ("BLOCK_N", cfg.block_n), ("LOOPED", cfg.looped),
             ("LOOP_N", n_cols if cfg.looped else 0), ("COPIES", len(devices)),
             ("PRELOAD_W", not fanout_params_late(
                 cfg, n_rows, sum(_param_bytes(w, b) for w, b in zip(weights, biases)))))
    scalars = (n_rows, n_cols, x2d.stride(0), n_cols, float(eps))
    return plans.FanoutPlan(x, devices, out_dtype, _launch_fanout, -(-n_rows // cfg.block_m),
                            scalars, flags, cfg.num_warps, MAX_FANOUT, has_w, has_b)


def _run_kernel(launcher, grid, cfg: LaunchConfig, dev_index: int, args, scalars, flags):
    if cfg.splits > 1:
        args += (split_slots.split_workspace(args[0].shape[0], cfg.splits, args[4].device),)
    launcher(grid, dev_index, (*args, *scalars), flags, cfg.num_warps)


def _rms_norm_impl(x, weight, eps, bias, weight_offset, out_dtype, out, accumulate,
                   clamp_fp16_input):
    if _use_reference(x, weight, bias):
        return rms_norm_reference(x, weight, eps, bias=bias, weight_offset=weight_offset,
                                  out_dtype=out_dtype, out=out, accumulate=accumulate,
                                  clamp_fp16_input=clamp_fp16_input)
    p = check_inputs(x, weight, bias=bias, out=out, out_dtype=out_dtype, eps=eps,
                     weight_offset=weight_offset, accumulate=accumulate,
                     clamp_fp16_input=clamp_fp16_input)
    key = None if out is not None or accumulate else plans.norm_key(
        x, weight, bias, eps, weight_offset, out_dtype, clamp_fp16_input)
    y = _launch(p, eps, weight_offset, accumulate, clamp_fp16_input, plan_key=key,
                operands=(x, weight, bias))
    if out is None:
        return y
    mark_written(out)
    return out


def _fused_add_impl(x, residual, weight, eps, bias, weight_offset, out_dtype, out):
    if _use_reference(x, residual, weight, bias):
        return fused_add_rms_norm_reference(x, residual, weight, eps, bias=bias,
                                            weight_offset=weight_offset, out_dtype=out_dtype,
                                            out=out)[0]
    p = check_inputs(x, weight, bias=bias, residual=residual, out=out, out_dtype=out_dtype,
                     eps=eps, weight_offset=weight_offset, fused=True)
    key = None if out is not None else plans.fused_key(x, residual, weight, bias, eps,
                                                        weight_offset, out_dtype)
    y = _launch(p, eps, weight_offset, False, False, plan_key=key, operands=(x, weight, bias))
    mark_written(residual)
    if out is not None:
        mark_written(out)
    return y if out is None else out


# ---- torch.library custom ops: what torch.compile sees ----------------------------------------

@torch.library.custom_op("rmsnorm_triton::rms_norm", mutates_args=())
def _rms_norm_op(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                 eps: float, weight_offset: float, out_dtype: Optional[torch.dtype],
                 clamp_fp16_input: bool) -> torch.Tensor:
    return _rms_norm_impl(x, weight, eps, bias, weight_offset, out_dtype, None, False,
                          clamp_fp16_input)


@_rms_norm_op.register_fake
def _(x, weight, bias, eps, weight_offset, out_dtype, clamp_fp16_input):
    return torch.empty_like(x, dtype=out_dtype or x.dtype, memory_format=torch.contiguous_format)


@torch.library.custom_op("rmsnorm_triton::rms_norm_out", mutates_args=("out",))
def _rms_norm_out_op(x: torch.Tensor, weight: Optional[torch.Tensor],
                     bias: Optional[torch.Tensor], out: torch.Tensor, eps: float,
                     weight_offset: float, accumulate: bool, clamp_fp16_input: bool) -> None:
    _rms_norm_impl(x, weight, eps, bias, weight_offset, None, out, accumulate, clamp_fp16_input)


@_rms_norm_out_op.register_fake
def _(x, weight, bias, out, eps, weight_offset, accumulate, clamp_fp16_input):
    return None


@torch.library.custom_op("rmsnorm_triton::fused_add_rms_norm", mutates_args=("residual",))
def _fused_add_op(x: torch.Tensor, residual: torch.Tensor, weight: Optional[torch.Tensor],
                  bias: Optional[torch.Tensor], eps: float, weight_offset: float,
                  out_dtype: Optional[torch.dtype]) -> torch.Tensor:
    return _fused_add_impl(x, residual, weight, eps, bias, weight_offset, out_dtype, None)


@_fused_add_op.register_fake
def _(x, residual, weight, bias, eps, weight_offset, out_dtype):
    return torch.empty_like(x, dtype=out_dtype or x.dtype, memory_format=torch.contiguous_format)


@torch.library.custom_op("rmsnorm_triton::fused_add_rms_norm_out",
                         mutates_args=("residual", "out"))
def _fused_add_out_op(x: torch.Tensor, residual: torch.Tensor, weight: Optional[torch.Tensor],
                      bias: Optional[torch.Tensor], out: torch.Tensor, eps: float,
                      weight_offset: float) -> None:
    _fused_add_impl(x, residual, weight, eps, bias, weight_offset, None, out)


@_fused_add_out_op.register_fake
def _(x, residual, weight, bias, out, eps, weight_offset):
    return None


# ---- public API --------------------------------------------------------------------------------

def rms_norm(x, weight=None, eps=1e-6, *, bias=None, weight_offset=0.0, out_dtype=None,
             out=None, accumulate=False, clamp_fp16_input=False):
    """RMSNorm over the last dim of x [..., N], fp32 math, one rounding to the output dtype.

    y = x / sqrt(mean(x**2) + eps) * (weight + weight_offset) [+ bias]; written to `out`
    (which may be x itself) or a new tensor of `out_dtype` (default x.dtype). With
    accumulate=True, out += y (rounded once). clamp_fp16_input clamps fp16 x to +-65504 first.
    """
    if torch.compiler.is_compiling():
        if not _needs_grad(x, weight, bias):
            check_traced_flags(eps, weight_offset, out, out_dtype, accumulate, clamp_fp16_input)
            eps, weight_offset = float(eps), float(weight_offset)
            if out is None:
                return _rms_norm_op(x, weight, bias, eps, weight_offset, out_dtype,
                                    clamp_fp16_input)
            _rms_norm_out_op(x, weight, bias, out, eps, weight_offset, accumulate,
                             clamp_fp16_input)
            return out
    elif out is None and accumulate is False:
        # `is False`: any other accumulate takes the full path, which checks it.
        plan = plans.norm_plan(x, weight, bias, eps, weight_offset, out_dtype, clamp_fp16_input)
        if plan is not None:
            return plan.norm(x, weight, bias)
    return _rms_norm_impl(x, weight, eps, bias, weight_offset, out_dtype, out, accumulate,
                          clamp_fp16_input)


def fused_add_rms_norm(x, residual, weight=None, eps=1e-6, *, bias=None, weight_offset=0.0,
                       out_dtype=None, out=None):
    """residual <- round(residual.dtype, x + residual) in place; returns (norm(residual), residual).

    Equals the unfused two steps bit for bit; residual may be fp32 under fp16/bf16 x. Like
    torch's in-place ops, it bumps residual's (and out's) version for autograd.
    """
    if torch.compiler.is_compiling():
        if not _needs_grad(x, residual, weight, bias):
            check_traced_flags(eps, weight_offset, out, out_dtype)
            eps, weight_offset = float(eps), float(weight_offset)
            if out is None:
                return (_fused_add_op(x, residual, weight, bias, eps, weight_offset, out_dtype),
                        residual)
            _fused_add_out_op(x, residual, weight, bias, out, eps, weight_offset)
            return out, residual
    elif out is None:
        plan = plans.fused_plan(x, residual, weight, bias, eps, weight_offset, out_dtype)
        if plan is not None:
            y = plan.fused_add(x, residual, weight, bias)
            if y is not None:
                mark_written(residual)
                return y, residual
    return _fused_add_impl(x, residual, weight, eps, bias, weight_offset, out_dtype, out), residual
