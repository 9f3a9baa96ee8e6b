"""The implementations `bench` compares, each called the way its users call it.

A provider is a function that imports its package (raising ImportError when it is missing) and
returns `make(variant) -> build`; `build(x, w, residual)` returns a zero-argument call that gives
(out, updated residual or None). `make` raises Unsupported for a variant the provider has no
API for (fp32 output from bf16 input, a residual of another dtype, ...).
"""
from __future__ import annotations

import inspect

import torch

EPS = 1e-6
F = torch.nn.functional


class Unsupported(Exception):
    pass


def ours():
    import rmsnorm_triton as rt

    def make(v):
        if v.res is None:
            return lambda x, w, r: lambda: (rt.rms_norm(x, w, EPS, out_dtype=v.out), None)
        return lambda x, w, r: lambda: rt.fused_add_rms_norm(x, r, w, EPS, out_dtype=v.out)
    return make


def torch_eager():
    """F.rms_norm; another output or weight dtype or the residual add costs the extra kernels
    it costs (a weight of a wider dtype: the normalized tensor upcast to it)."""
    def make(v):
        if v.res is None:
            if v.out == v.x == v.weight:
                return lambda x, w, r: lambda: (F.rms_norm(x, x.shape[-1:], w, EPS), None)

            wide = torch.promote_types(v.out, v.weight)

            def build(x, w, r):
                w_wide = w.to(wide)
                return lambda: (F.rms_norm(x.to(wide), x.shape[-1:], w_wide, EPS).to(v.out),
                                None)
            return build

        wide = torch.promote_types(v.res, v.weight)

        def build(x, w, r):
            w_wide = w.to(wide)

            def call():
                r.add_(x)
                return F.rms_norm(r.to(wide), r.shape[-1:], w_wide, EPS).to(v.out), r
            return call
        return build
    return make


def _rms_norm_fp32(x, w, eps: float, out_dtype: torch.dtype):
    h = x.float()
    return (h * torch.rsqrt(h.square().mean(-1, keepdim=True) + eps) * w.float()).to(out_dtype)


def _fused_add_fp32(x, r, w, eps: float, out_dtype: torch.dtype):
    s = (x.float() + r.float()).to(r.dtype)
    r.copy_(s)                                   # in place, as vLLM's fused_add_rms_norm
    return _rms_norm_fp32(s, w, eps, out_dtype)


def prepare_compile() -> None:
    """dynamic=False compiles once per shape and dtype: allow that many recompiles."""
    cfg = torch._dynamo.config
    for names in (("recompile_limit", "cache_size_limit"),
                  ("accumulated_recompile_limit", "accumulated_cache_size_limit")):
        name = next((n for n in names if hasattr(cfg, n)), None)
        if name:
            setattr(cfg, name, max(getattr(cfg, name), 4096))


def compiled():
    """torch.compile (default mode, dynamic=False) of the plain fp32-math function."""
    norm = torch.compile(_rms_norm_fp32, dynamic=False)
    fused = torch.compile(_fused_add_fp32, dynamic=False)

    def make(v):
        if v.res is None:
            return lambda x, w, r: lambda: (norm(x, w, EPS, v.out), None)
        return lambda x, w, r: lambda: (fused(x, r, w, EPS, v.out), r)
    return make


def liger():
    """Liger-Kernel's autograd functions with their default (Llama) casting mode."""
    try:
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction as norm
    except ImportError:
        from liger_kernel.ops import LigerRMSNormFunction as norm
    try:
        from liger_kernel.ops.fused_add_rms_norm import (
            LigerFusedAddRMSNormFunction as fused,
        )
    except ImportError:
        fused = None

    def make(v):
        if v.out != v.x:
            raise Unsupported("no output dtype option")
        if v.res is None:
            return lambda x, w, r: lambda: (norm.apply(x, w, EPS), None)
        if fused is None:
            raise Unsupported("no fused add in this version")
        if v.res != v.x:
            raise Unsupported("residual must have x's dtype")
        return lambda x, w, r: lambda: tuple(fused.apply(x, r, w, EPS))
    return make


def flash_attn():
    """flash-attn's Triton layer norm in RMS mode; prenorm=True returns the updated residual."""
    from flash_attn.ops.triton.layer_norm import rms_norm_fn
    has_out_dtype = "out_dtype" in inspect.signature(rms_norm_fn).parameters

    def make(v):
        kw = {}
        if v.out != v.x:
            if not has_out_dtype:
                raise Unsupported("no out_dtype in this version")
            kw["out_dtype"] = v.out
        if v.res is None:
            return lambda x, w, r: lambda: (rms_norm_fn(x, w, None, eps=EPS, **kw), None)
        return lambda x, w, r: lambda: tuple(rms_norm_fn(
            x, w, None, residual=r, eps=EPS, prenorm=True,
            residual_in_fp32=r.dtype == torch.float32, **kw))
    return make


def quack():
    from quack.rmsnorm import rmsnorm

    def make(v):
        if v.res is None:
            return lambda x, w, r: lambda: (rmsnorm(x, w, out_dtype=v.out, eps=EPS), None)
        return lambda x, w, r: lambda: tuple(rmsnorm(
            x, w, residual=r, out_dtype=v.out, residual_dtype=r.dtype, eps=EPS, prenorm=True))
    return make


PROVIDERS = {"ours": ours, "torch": torch_eager, "compile": compiled, "liger": liger,
             "flash_attn": flash_attn, "quack": quack}
