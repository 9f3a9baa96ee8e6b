"""Every shape, dtype, device, stride and value check, in one place.

`check_inputs` turns the user's tensors into 2-D row views the kernel can address (copying only
layouts that no single row stride describes) and raises TypeError/ValueError naming the argument
and the values it saw.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional

import torch

from .config import MAX_N

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_DTYPE_NAMES = "float16, bfloat16 or float32"


@dataclass(slots=True)
class Prepared:
    """2-D views for the kernel, and where results must be copied back afterwards."""
    x: torch.Tensor                        # [M, N], column stride 1
    weight: Optional[torch.Tensor]         # [N], contiguous
    bias: Optional[torch.Tensor]           # [N], contiguous
    residual: Optional[torch.Tensor]       # [M, N] the kernel updates in place
    out: torch.Tensor                      # [M, N] the kernel writes
    shape: torch.Size                      # the caller's x.shape
    out_user: Optional[torch.Tensor]       # caller's out, when `out` is a staging copy of it
    residual_user: Optional[torch.Tensor]  # caller's residual, when `residual` is a copy


def _check_float(name: str, t, allow_none: bool = True) -> None:
    if t is None and allow_none:
        return
    check_dense(name, t)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be {_DTYPE_NAMES}, got {t.dtype}")


def check_dense(name: str, t) -> None:
    """A tensor whose memory strides describe: kernels and copies would misread any other."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_nested or t.layout != torch.strided:
        kind = "a nested" if t.is_nested else f"a {t.layout}"
        raise TypeError(f"{name} must be a dense tensor (torch.strided layout), got {kind} "
                        "tensor")
    if not torch.compiler.is_compiling() and t._is_zerotensor():
        # torch's lazy zeros (autograd internals) have no memory behind them at all; under
        # torch.compile (which cannot trace this query) tensors are fake and never lazy.
        raise TypeError(f"{name} must be a dense tensor with memory, got a lazy zero tensor "
                        "(torch._efficientzerotensor); pass torch.zeros(...) instead")


def materialized(t: torch.Tensor) -> torch.Tensor:
    """t's values in contiguous memory the kernels and collectives can read as it is: copied
    where t is strided or a negative view (torch's lazy negation bit, which contiguous() keeps);
    t itself otherwise."""
    return t.resolve_neg().contiguous()


def check_flag(name: str, value) -> None:
    """A bool argument: True/False, numpy's bools, or an integer 0 or 1. Anything else
    ("False", None, 1.0, a tensor) is refused rather than read by its truthiness (or, for a
    GPU tensor, by a host synchronization)."""
    if value is True or value is False:
        return
    cls = value.__class__
    if cls.__module__ == "numpy" and cls.__name__ in ("bool", "bool_"):
        return
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return
    raise TypeError(f"{name} must be a bool, got {cls.__name__} ({value!r})")


def _finite(v) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:          # an int past float range
        return False


def check_scalars(eps, weight_offset) -> None:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a float, got {type(eps).__name__} ({eps!r})")
    if not _finite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if isinstance(weight_offset, bool) or not isinstance(weight_offset, numbers.Real):
        raise TypeError(f"weight_offset must be a float, got {type(weight_offset).__name__} "
                        f"({weight_offset!r})")
    if not _finite(weight_offset):
        raise ValueError(f"weight_offset must be finite, got {weight_offset!r}")


def as_rows(t: torch.Tensor, n_cols: int, writable: bool) -> Optional[torch.Tensor]:
    """A [M, N] view of t with one row stride and unit column stride, or None if none exists.

    Writable views also need rows that do not overlap (an expanded input may repeat a row).
    A negative view (torch's lazy negation bit) has none either: its memory holds -t.
    """
    if t.is_neg():
        return None
    if t.dim() == 2 and (t.stride(1) == 1 or n_cols == 1) and n_cols > 0:
        rows = t if t.stride(1) == 1 else t.as_strided(t.shape, (t.stride(0), 1))
        if writable and rows.shape[0] > 1 and rows.stride(0) < n_cols:
            return None
        return rows
    if t.dim() == 0 or (t.stride(-1) != 1 and n_cols > 1):
        return None
    try:
        rows = t.view(-1, n_cols)
    except RuntimeError:
        return None
    if n_cols == 1 and rows.stride(1) != 1:
        rows = rows.as_strided(rows.shape, (rows.stride(0), 1))
    if writable and rows.shape[0] > 1 and rows.stride(0) < n_cols:
        return None
    return rows


def _byte_range(t: torch.Tensor) -> tuple[int, int]:
    extent = sum((s - 1) * st for s, st in zip(t.shape, t.stride())) + 1
    return t.data_ptr(), t.data_ptr() + extent * t.element_size()


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b may share a byte: their byte ranges meet, unless both are rows of one
    row stride whose columns fall in each other's gaps (_disjoint_rows)."""
    if a.device != b.device or a.numel() == 0 or b.numel() == 0 or a.device.type == "meta":
        return False
    a0, a1 = _byte_range(a)
    b0, b1 = _byte_range(b)
    return a0 < b1 and b0 < a1 and not _disjoint_rows(a, b)


def _row_bytes(t: torch.Tensor) -> Optional[tuple[int, int]]:
    """(row stride, row width) in bytes where t is two or more rows of contiguous columns with
    one row stride no shorter than a row; else None."""
    n_cols = t.shape[-1] if t.dim() else 0
    rows = as_rows(t, n_cols, writable=False) if n_cols else None
    if rows is None or rows.shape[0] < 2:
        return None
    width, period = n_cols * t.element_size(), rows.stride(0) * t.element_size()
    return (period, width) if period >= width else None


def _disjoint_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two row views of one row stride share no byte although their byte ranges meet:
    each row of b lies in the gap after a row of a (x = big[:, :N] and out = big[:, N:], or the
    halves of buf.split(N, -1)). False wherever that is not certain."""
    la, lb = _row_bytes(a), _row_bytes(b)
    if la is None or lb is None or la[0] != lb[0]:
        return False
    period = la[0]
    offset = (b.data_ptr() - a.data_ptr()) % period     # b's columns within a's row period
    return la[1] <= offset and offset + lb[1] <= period


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
            and a.dtype == b.dtype)


def _has_repeated_elements(t: torch.Tensor) -> bool:
    """Whether two indices of t can name one memory location (only for strides that nest:
    each dim's stride at least the span of the dims inside it, taken by stride order)."""
    span = 0
    for n, st in sorted(((n, st) for n, st in zip(t.shape, t.stride()) if n > 1),
                        key=lambda d: d[1]):
        if st <= span:
            return True
        span += (n - 1) * st
    return False


def on_device(e: Exception, i: int, device) -> Exception:
    """Tensor parallelism checks each device's call with the single-device checks, whose
    messages say "weight", "bias" and "out": the same error, naming the device and its list
    entries too. Raised from a plain except clause, which costs nothing until it fires."""
    return type(e)(f"device {i} of the split ({device}), with weights[{i}], biases[{i}] and "
                   f"out[{i}]: {e}")


def _check_out_flags(out, out_dtype, accumulate) -> None:
    if out is not None and out_dtype is not None and out.dtype != out_dtype:
        raise ValueError(f"out has dtype {out.dtype} but out_dtype={out_dtype}; pass one of them")
    if accumulate and out is None:
        raise ValueError("accumulate=True adds into out: pass out=")


def check_traced_flags(eps, weight_offset, out=None, out_dtype=None, accumulate=False,
                       clamp_fp16_input=False) -> None:
    """What check_args checks without reading a tensor, for a call that torch.compile traces
    into the custom ops (which take eps as a float and no accumulate flag). eps and
    weight_offset may be symbolic there (SymInt, SymFloat)."""
    for name, v in (("eps", eps), ("weight_offset", weight_offset)):
        if isinstance(v, bool) or not isinstance(v, (numbers.Real, torch.SymInt,
                                                     torch.SymFloat)):
            raise TypeError(f"{name} must be a float, got {type(v).__name__} ({v!r})")
    check_flag("accumulate", accumulate)
    check_flag("clamp_fp16_input", clamp_fp16_input)
    _check_out_flags(out, out_dtype, accumulate)


def check_args(x, weight=None, *, bias=None, residual=None, out=None, out_dtype=None,
               eps=1e-6, weight_offset=0.0, accumulate=False, clamp_fp16_input=False,
               device=None, fused=False) -> None:
    """Raise TypeError/ValueError for any bad argument; touches no data.

    `device` is where the kernel runs: x's own device unless a caller (tensor parallelism)
    lets a GPU read x from a peer; every other tensor must live there.
    """
    _check_float("x", x, allow_none=False)
    _check_float("weight", weight)
    _check_float("bias", bias)
    _check_float("residual", residual, allow_none=not fused)
    _check_float("out", out)
    check_scalars(eps, weight_offset)
    check_flag("accumulate", accumulate)
    check_flag("clamp_fp16_input", clamp_fp16_input)
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype must be {_DTYPE_NAMES} or None, got {out_dtype}")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (the hidden size), got a scalar")
    n_cols = x.shape[-1]
    if not 1 <= n_cols <= MAX_N:
        raise ValueError(f"x's last dimension (hidden size) must be in [1, {MAX_N}], "
                         f"got {n_cols} (x.shape={tuple(x.shape)})")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dim() != 1 or t.shape[0] != n_cols):
            raise ValueError(f"{name} must have shape ({n_cols},) to match x.shape="
                             f"{tuple(x.shape)}, got {tuple(t.shape)}")
    dev = device or x.device
    for name, t in (("weight", weight), ("bias", bias), ("residual", residual), ("out", out)):
        if t is not None and t.device != dev:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}: "
                             "all tensors must be on one device")
    for name, t in (("residual", residual), ("out", out)):
        if t is not None and t.shape != x.shape:
            raise ValueError(f"{name} must have x's shape {tuple(x.shape)}, got {tuple(t.shape)}")
    _check_out_flags(out, out_dtype, accumulate)
    if x.numel() == 0:
        return
    for name, t in (("out", out), ("residual", residual)):
        if t is None:
            continue
        if _has_repeated_elements(t):
            raise ValueError(f"{name} has overlapping elements (shape {tuple(t.shape)}, stride "
                             f"{t.stride()}): every element is written, so each needs its own "
                             "memory")
        if not _same_view(t, x) and _overlaps(t, x):
            raise ValueError(f"{name} overlaps x without being the same view of it; pass "
                             f"{name}=x for in place, or a separate buffer")
        for src_name, src in (("weight", weight), ("bias", bias)):
            if src is not None and _overlaps(t, src):
                raise ValueError(f"{name} overlaps {src_name}, which every row reads")
    if out is not None and residual is not None and _overlaps(out, residual):
        raise ValueError("out overlaps residual, which must keep round(x + residual)")


def check_inputs(x, weight=None, *, bias=None, residual=None, out=None, out_dtype=None,
                 eps=1e-6, weight_offset=0.0, accumulate=False, clamp_fp16_input=False,
                 device=None, fused=False) -> Prepared:
    """check_args, then the 2-D views the kernel addresses (copies only where none exists)."""
    check_args(x, weight, bias=bias, residual=residual, out=out, out_dtype=out_dtype, eps=eps,
               weight_offset=weight_offset, accumulate=accumulate,
               clamp_fp16_input=clamp_fp16_input, device=device, fused=fused)
    n_cols = x.shape[-1]
    n_rows = x.numel() // n_cols

    x2d = as_rows(x, n_cols, writable=False)
    if x2d is None:
        x2d = materialized(x).view(n_rows, n_cols)

    res2d, res_user = None, None
    if residual is not None:
        res2d = as_rows(residual, n_cols, writable=True)
        if res2d is None:
            res2d, res_user = materialized(residual).view(n_rows, n_cols), residual

    out_user = None
    if out is None:
        out2d = torch.empty((n_rows, n_cols), dtype=out_dtype or x.dtype,
                            device=device or x.device)
    else:
        out2d = as_rows(out, n_cols, writable=True)
        if out2d is None:
            out_user = out
            out2d = (materialized(out) if accumulate else torch.empty_like(
                out, memory_format=torch.contiguous_format)).view(n_rows, n_cols)
    # The kernel indexes weight and bias with unit stride and reads their memory as it is:
    # w[::2] and negative views are copied once.
    weight = None if weight is None else materialized(weight)
    bias = None if bias is None else materialized(bias)
    return Prepared(x2d, weight, bias, res2d, out2d, x.shape, out_user, res_user)
