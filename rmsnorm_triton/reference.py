"""The formula of DESIGN.md in plain torch (fp32 math): the CPU path and the tests' twin."""
from __future__ import annotations

import torch

from .validate import check_args


def _norm_fp32(h, weight, bias, eps, weight_offset):
    y = h * torch.rsqrt(h.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * (weight.float() + weight_offset)
    elif weight_offset != 0.0:
        y = y * (1.0 + weight_offset)
    if bias is not None:
        y = y + bias.float()
    return y


def _finish(y, x, out, out_dtype, accumulate):
    if accumulate:
        y = out.float() + y
    y = y.to(out.dtype if out is not None else (out_dtype or x.dtype))
    if out is None:
        return y
    out.copy_(y)
    return out


def rms_norm_reference(x, weight=None, eps=1e-6, *, bias=None, weight_offset=0.0,
                       out_dtype=None, out=None, accumulate=False, clamp_fp16_input=False):
    """Same signature and results as rms_norm, in eager torch (differentiable)."""
    check_args(x, weight, bias=bias, out=out, out_dtype=out_dtype, eps=eps,
               weight_offset=weight_offset, accumulate=accumulate,
               clamp_fp16_input=clamp_fp16_input)
    h = x.float()
    if clamp_fp16_input and x.dtype == torch.float16:
        h = h.clamp(-65504.0, 65504.0)          # keeps NaN, as the kernel does
    return _finish(_norm_fp32(h, weight, bias, eps, weight_offset), x, out, out_dtype, accumulate)


def fused_add_rms_norm_reference(x, residual, weight=None, eps=1e-6, *, bias=None,
                                 weight_offset=0.0, out_dtype=None, out=None):
    """residual <- round(x + residual) in place, then its norm: the unfused two steps."""
    check_args(x, weight, bias=bias, residual=residual, out=out, out_dtype=out_dtype, eps=eps,
               weight_offset=weight_offset, fused=True)
    residual.copy_((x.float() + residual.float()).to(residual.dtype))
    y = _norm_fp32(residual.float(), weight, bias, eps, weight_offset)
    return _finish(y, x, out, out_dtype, False), residual
