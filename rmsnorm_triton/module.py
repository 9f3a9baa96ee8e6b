"""RMSNorm as an nn.Module: a drop-in for torch.nn.RMSNorm and the HF *RMSNorm classes.

The state_dict is {"weight"[, "bias"]}, the keys those classes use, so checkpoints load as they
are. One numerical difference, by design: HF Llama rounds x * rstd to the input dtype before the
weight multiply (two roundings); this module computes everything in fp32 and rounds once, so
fp16/bf16 outputs can differ from HF Llama's by about one ulp, and are closer to the exact value.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from .ops import rms_norm
from .parallel import forward_tp
from .reference import rms_norm_reference
from .validate import FLOAT_DTYPES, check_flag, check_scalars, materialized

# from_module runs an HF norm once to learn whether it scales by w or by (1 + w). Both candidates
# are computed here in fp32 from the same weight; a genuine match differs by rounding only.
_PROBE_TOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}
_EPS_ATTRS = ("variance_epsilon", "eps")


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x**2) + eps) * (weight + weight_offset) [+ bias], over the last dim.

    weight_offset=1.0 is Gemma's (1 + w) form. With a non-zero offset the weight starts at
    zeros, as Gemma's does (so a fresh Gemma norm scales by 1); otherwise at ones, as Llama's.
    out_dtype=None writes x's dtype. eps=None uses torch.finfo(x.dtype).eps at each call, as
    torch.nn.RMSNorm does. elementwise_affine=False: no weight (as torch.nn.RMSNorm's), so
    y = x / rms(x) * (1 + weight_offset).

    `out_dtype_rule`, with out_dtype None, says which dtype the output takes: "input" (the
    default: x's), "promoted" (torch.promote_types(x.dtype, weight.dtype), as HF Llama's
    `weight * h.to(input_dtype)`: an fp32 weight makes a bf16 input's output fp32) or
    "weight" (the weight's, as T5's norm, which casts to a 16-bit weight's dtype). from_module
    sets it from what the converted norm returns.
    """

    def __init__(self, hidden_size: int, eps: Optional[float] = 1e-6, *,
                 weight_offset: float = 0.0,
                 bias: bool = False, out_dtype: Optional[torch.dtype] = None, device=None,
                 dtype: Optional[torch.dtype] = None, elementwise_affine: bool = True):
        super().__init__()
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int):
            raise TypeError(f"hidden_size must be an int, got {type(hidden_size).__name__} "
                            f"({hidden_size!r})")
        if hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {hidden_size}")
        check_scalars(1e-6 if eps is None else eps, weight_offset)
        check_flag("bias", bias)
        check_flag("elementwise_affine", elementwise_affine)
        if bias and not elementwise_affine:
            raise ValueError("bias=True needs elementwise_affine=True (a norm without a weight "
                             "has no bias either)")
        for name, dt in (("out_dtype", out_dtype), ("dtype", dtype)):
            if dt is not None and dt not in FLOAT_DTYPES:
                raise TypeError(f"{name} must be float16, bfloat16, float32 or None, got {dt}")
        self.hidden_size = hidden_size
        self.eps = None if eps is None else float(eps)
        self.weight_offset = float(weight_offset)
        self.out_dtype = out_dtype
        self.out_dtype_rule = "input"
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
        if bias:
            self.bias = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.constant_(self.weight, 0.0 if self.weight_offset else 1.0)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @property
    def variance_epsilon(self) -> float:
        """HF Llama's name for eps, for code that reads it off the norm it replaced."""
        return self.eps

    def _eps_for(self, x) -> float:
        if self.eps is not None:
            return self.eps
        first = _first_tensor(x)
        return 1e-6 if first is None else torch.finfo(first.dtype).eps   # else rms_norm names x

    def _out_dtype_for(self, x) -> Optional[torch.dtype]:
        rule = self.out_dtype_rule
        if rule == "input" or self.out_dtype is not None or self.weight is None:
            return self.out_dtype
        if rule == "weight":
            return self.weight.dtype
        first = _first_tensor(x)
        if first is None:
            return self.out_dtype       # rms_norm names what x is
        return torch.promote_types(first.dtype, self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = self.out_dtype
        if self.out_dtype_rule != "input":
            out_dtype = self._out_dtype_for(x)
        return rms_norm(x, self.weight, self._eps_for(x), bias=self.bias,
                        weight_offset=self.weight_offset, out_dtype=out_dtype)

    def extra_repr(self) -> str:
        s = f"{self.hidden_size}, eps={self.eps}"
        if self.weight_offset:
            s += f", weight_offset={self.weight_offset}"
        if self.bias is not None:
            s += ", bias=True"
        if self.weight is None:
            s += ", elementwise_affine=False"
        if self.out_dtype is not None:
            s += f", out_dtype={self.out_dtype}"
        if self.out_dtype_rule != "input":
            s += f", out_dtype_rule={self.out_dtype_rule!r}"
        return s

    def tp_split(self, broadcast_type: int, context) -> None:
        """Replicate weight (and bias) to the devices `context` (a TPContext) gives that type.

        The replicas are plain tensors, outside the state_dict and untouched by .to(); call
        tp_split again after changing the weight.
        """
        devices = context.devices_for(broadcast_type)
        self.tp_context, self.broadcast_type = context, broadcast_type
        # materialized: a strided or negative-view replica would be copied on every call.
        self.tp_weights = [None if self.weight is None else
                           materialized(self.weight.detach().to(d)) for d in devices]
        self.tp_biases = None if self.bias is None else [materialized(self.bias.detach().to(d))
                                                         for d in devices]

    def forward_tp(self, x, *, fused=None) -> list:
        """x: one tensor (broadcast first) or a list, one per device -> one result per device."""
        if getattr(self, "tp_context", None) is None:
            raise RuntimeError("forward_tp needs tp_split(broadcast_type, context) first")
        return forward_tp(self.tp_context, self.broadcast_type, x, self.tp_weights,
                          self.tp_biases, self._eps_for(x), weight_offset=self.weight_offset,
                          out_dtype=self._out_dtype_for(x), fused=fused)

    @classmethod
    def from_module(cls, m: nn.Module) -> "RMSNorm":
        """An RMSNorm computing what `m` computes, sharing m's weight (and bias) Parameters.

        `m` is a torch.nn.RMSNorm or an HF-style norm with a 1-D `weight` and an `eps` or
        `variance_epsilon` attribute. torch.nn.RMSNorm's eps=None (the finfo eps of the input
        dtype, at run time) is kept as it is.

        Whether an HF norm scales by w or by (1 + w) (Gemma, Qwen3-Next, ...) is not knowable from
        its name (Gemma3n's norm scales by w), so `m` is run once on a small fp32 probe and the
        form that reproduces its output is taken; neither matching raises ValueError. The probe
        runs a copy of `m` given known weights (on the CPU for a norm on the meta device, built
        before its weights load), so neither the name nor m's current values are trusted. A
        second probe, with an input of another dtype than the weight's, tells whether m's
        output takes the input's dtype, the two promoted or the weight's (`out_dtype_rule`).
        torch.nn.RMSNorm(elementwise_affine=False) converts to a norm without a weight.
        """
        if isinstance(m, RMSNorm):
            return m
        if not isinstance(m, nn.Module):
            raise TypeError(f"from_module expects an nn.Module, got {type(m).__name__}")
        name = type(m).__name__
        weight, bias = getattr(m, "weight", None), getattr(m, "bias", None)
        if isinstance(m, nn.RMSNorm) and weight is None:
            return _from_unweighted(m)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
            shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else None
            raise ValueError(f"{name} must have a 1-D weight to convert (a scale over the last "
                             f"dim), got weight={shape if shape is not None else weight!r}")
        if weight.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}.weight must be float16, bfloat16 or float32, "
                            f"got {weight.dtype}")
        if not isinstance(bias, torch.Tensor) or bias.shape != weight.shape:
            bias = None

        if isinstance(m, nn.RMSNorm):
            eps, offset, rule = m.eps, 0.0, "input"
        else:
            eps = _hf_eps(m)
            offset, rule = _probe_form(m, weight, bias, eps)

        new = cls(weight.shape[0], eps, weight_offset=offset, bias=bias is not None,
                  device="meta", dtype=weight.dtype)
        new.out_dtype_rule = rule
        # Share, not copy: tied or later-loaded weights stay one tensor.
        new.weight = _as_parameter(weight)
        if bias is not None:
            new.bias = _as_parameter(bias)
        new.train(m.training)
        return new


def _first_tensor(x) -> Optional[torch.Tensor]:
    """x, or the first of a list of tensors (forward_tp's per-device input); None otherwise."""
    first = x[0] if isinstance(x, (list, tuple)) and x else x
    return first if isinstance(first, torch.Tensor) else None


def _from_unweighted(m: nn.RMSNorm) -> RMSNorm:
    """torch.nn.RMSNorm(elementwise_affine=False): x / rms(x) over its one normalized dim."""
    shape = tuple(m.normalized_shape)
    if len(shape) != 1:
        raise ValueError(f"RMSNorm normalizes over the last dim only; this torch.nn.RMSNorm "
                         f"normalizes over the last {len(shape)} (normalized_shape={shape})")
    new = RMSNorm(shape[0], m.eps, elementwise_affine=False)
    new.train(m.training)
    return new


class GemmaRMSNorm(RMSNorm):
    """Gemma's norm: scales by (1 + weight), weight initialised to zeros."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, *, weight_offset: float = 1.0,
                 **kwargs):
        super().__init__(hidden_size, eps, weight_offset=weight_offset, **kwargs)


def _as_parameter(t: torch.Tensor) -> nn.Parameter:
    return t if isinstance(t, nn.Parameter) else nn.Parameter(t, requires_grad=t.requires_grad)


def _hf_eps(m: nn.Module) -> float:
    for attr in _EPS_ATTRS:
        eps = getattr(m, attr, None)
        if isinstance(eps, (int, float)) and not isinstance(eps, bool):
            return float(eps)
    raise ValueError(f"{type(m).__name__} has no numeric eps: looked for attributes "
                     f"{', '.join(_EPS_ATTRS)}")


def _stand_in(m: nn.Module, has_bias: bool, device: torch.device) -> tuple:
    """A copy of m on `device` whose weight (and bias) hold known, non-uniform values, to probe
    its form: (module, weight, bias). m itself is untouched.

    Known values, not m's own: a norm built on the meta device has none, and freshly initialised
    ones (zeros, ones) can make another formula look like a norm. A shallow copy, so hooks and
    whatever they reference (an offloading map) are not copied: the probe calls the class's
    forward. A module holding other parameters or buffers is not a plain norm: refused."""
    others = [k for k, t in (*m._parameters.items(), *m._buffers.items())
              if t is not None and k not in ("weight", "bias")]
    if others:
        raise ValueError(f"cannot convert {type(m).__name__}: it holds tensors besides weight "
                         f"and bias ({', '.join(others)})")
    stand_in = copy.copy(m)
    stand_in._parameters = {k: None if p is None else nn.Parameter(
        torch.empty(p.shape, dtype=p.dtype, device=device), requires_grad=False)
        for k, p in m._parameters.items()}
    stand_in._buffers = {k: None if b is None else torch.empty(b.shape, dtype=b.dtype,
                                                               device=device)
                         for k, b in m._buffers.items()}
    weight, bias = stand_in.weight, stand_in.bias if has_bias else None
    with torch.no_grad():
        weight.copy_(torch.linspace(0.25, 0.75, weight.shape[0], device=device))
        if bias is not None:
            bias.copy_(torch.linspace(-0.2, 0.3, bias.shape[0], device=device))
    return stand_in, weight, bias


def _other_dtype(dtype: torch.dtype) -> torch.dtype:
    """An input dtype that a weight of `dtype` promotes: bf16 under fp32 and fp16 weights,
    fp16 under bf16 ones (which promote to fp32 together)."""
    return torch.float16 if dtype == torch.bfloat16 else torch.bfloat16


def _probe_out_dtype_rule(m: nn.Module, probe: nn.Module, x: torch.Tensor,
                          w_dtype: torch.dtype) -> str:
    """The dtype m's output takes, from one call with an input of another dtype than the
    weight's, chosen so that the input's, the promoted and the weight's dtype tell the rules
    apart wherever they differ (under an fp32 weight "promoted" and "weight" agree). A norm
    that cannot run on mixed dtypes is taken as "input": what it returns when they match."""
    x_dtype = _other_dtype(w_dtype)
    try:
        got = type(m).forward(probe, x.to(x_dtype))
    except Exception:
        return "input"
    # Later entries win a tie: under an fp32 weight, "promoted" names Llama's form.
    rules = {w_dtype: "weight", torch.promote_types(x_dtype, w_dtype): "promoted",
             x_dtype: "input"}
    rule = rules.get(getattr(got, "dtype", None))
    if rule is None:
        raise ValueError(f"cannot convert {type(m).__name__}: for a {x_dtype} input and a "
                         f"{w_dtype} weight it returned {getattr(got, 'dtype', type(got))}, "
                         f"not the input's, the weight's or the two promoted")
    return rule


def _probe_form(m: nn.Module, weight: torch.Tensor, bias, eps: float) -> tuple:
    """(offset, out_dtype_rule): offset 0.0 if m computes n * w, 1.0 if n * (1 + w), where
    n = x / rms(x); the rule "input" if its output takes x's dtype (Gemma's `.type_as(x)`),
    "promoted" for torch.promote_types(x.dtype, w.dtype) (HF Llama's
    `weight * h.to(input_dtype)`), "weight" for w's dtype (T5's cast to a 16-bit weight)."""
    name = type(m).__name__
    # A meta norm cannot run: its stand-in runs on the CPU.
    device = torch.device("cpu") if weight.device.type == "meta" else weight.device
    try:
        probe, weight, bias = _stand_in(m, bias is not None, device)
        n = weight.shape[0]
        # Deterministic, off-centre, non-zero rows: both candidates far from zero and apart.
        x = torch.linspace(-1.5, 3.0, 2 * n, device=device).view(2, n)
        with torch.no_grad():
            # The class's forward, not the instance's: hooks (statistics, offloading) stay silent.
            got = type(m).forward(probe, x)
            if not isinstance(got, torch.Tensor) or got.shape != x.shape or \
                    got.device != x.device:
                raise ValueError(f"cannot convert {name}: it returned {type(got).__name__} "
                                 f"{getattr(got, 'shape', '')} on "
                                 f"{getattr(got, 'device', '')} for an x of shape "
                                 f"{tuple(x.shape)} on {x.device}")
            errs = {}
            for offset in (0.0, 1.0):
                ref = rms_norm_reference(x, weight, eps, bias=bias,
                                         weight_offset=offset).double()
                errs[offset] = ((got.double() - ref).norm()
                                / ref.norm().clamp_min(1e-30)).item()
            rule = _probe_out_dtype_rule(m, probe, x, weight.dtype)
    except ValueError:
        raise
    except Exception as e:  # any failure means: not a plain norm we can stand in for
        raise ValueError(f"cannot convert {name}: running it on a probe input failed "
                         f"({type(e).__name__}: {e})") from e
    best = min(errs, key=errs.get)
    tol = _PROBE_TOL[weight.dtype]
    if not errs[best] <= tol:
        raise ValueError(f"cannot convert {name}: its output matches neither x/rms(x)*w "
                         f"(rel err {errs[0.0]:.2e}) nor x/rms(x)*(1+w) "
                         f"(rel err {errs[1.0]:.2e}); tolerance {tol:.0e}")
    return best, rule
