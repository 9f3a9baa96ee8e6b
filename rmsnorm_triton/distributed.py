"""Many processes (one per GPU, any number of nodes): broadcast hidden states, then normalize.

Launch with torchrun and call torch.distributed.init_process_group first (NCCL for GPUs, gloo
for CPUs); the transport is torch.distributed's own.
"""
from __future__ import annotations

import torch.distributed as dist

from .ops import rms_norm
from .validate import check_args, materialized

_NORM_KWARGS = ("bias", "weight_offset", "out_dtype", "out", "accumulate", "clamp_fp16_input")


def _check_before_collective(x, weight, eps, kw):
    """Raise on a bad argument *before* the broadcast: a rank that raised inside it would leave
    the others waiting. check_args reads shapes, dtypes and devices only, never data."""
    unknown = sorted(set(kw) - set(_NORM_KWARGS))
    if unknown:
        raise TypeError(f"broadcast_rms_norm got unexpected keyword arguments {unknown}; "
                        f"it passes on only {list(_NORM_KWARGS)}")
    check_args(x, weight, bias=kw.get("bias"), out=kw.get("out"), out_dtype=kw.get("out_dtype"),
               eps=eps, weight_offset=kw.get("weight_offset", 0.0),
               accumulate=kw.get("accumulate", False),
               clamp_fp16_input=kw.get("clamp_fp16_input", False))


def broadcast_rms_norm(x, weight=None, eps=1e-6, *, src=0, group=None, **kw):
    """torch.distributed.broadcast(x, src, group), then rms_norm(x, weight, eps, **kw).

    On rank `src`, x holds the hidden states; on every other rank, x is a buffer of the same
    shape and dtype (on that rank's device) that receives them. Every rank returns its
    normalized copy. `src` is a global rank, as in torch.distributed.broadcast. kw: any
    keyword of rms_norm (bias, weight_offset, out_dtype, out, accumulate, clamp_fp16_input).
    The receive buffer's shape is trusted: checking it against the source's would cost a
    collective of its own.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("broadcast_rms_norm needs torch.distributed initialized: call "
                           "torch.distributed.init_process_group first (e.g. under torchrun)")
    _check_before_collective(x, weight, eps, kw)
    if x.is_contiguous() and not x.is_neg():
        dist.broadcast(x, src, group=group)
        return rms_norm(x, weight, eps, **kw)
    # NCCL and gloo send one contiguous block of memory as it is: broadcast a copy holding x's
    # values, then hand the received values back to the caller's buffer as its contract says.
    flat = materialized(x)
    dist.broadcast(flat, src, group=group)
    if dist.get_rank() != src:
        x.copy_(flat)
    return rms_norm(flat, weight, eps, **kw)
