"""ExLlamaV2RMSNorm: exllamav2's RMSNorm module API, on the rmsnorm_triton kernel.

Kept from exllamav2: the weight is stored in fp16 with Gemma's constant bias already added to it
in fp16 (so results match exllamav2's, including that rounding); fp16 out unless output_fp32;
fp16 inputs clamped to +-65504; eps from model.config.norm_eps; numel() == 0.
Beyond it: bf16 inputs, any hidden size, a `.bias` tensor, and a tensor-parallel forward that
honours output_fp32 and intermediates.
"""
from __future__ import annotations

import torch
from torch import nn

from .ops import rms_norm
from .reference import rms_norm_reference
from .validate import check_dense, materialized

PLACEHOLDER_EPS = 1e-6   # exllamav2's value until load() reads the model's


class ExLlamaV2RMSNorm:
    """The norm stored under `key` (`key + ".weight"`, optionally `key + ".bias"`) in `model`.

    `model` needs `.config.norm_eps`, `.get_tensor(key)`, `.has_tensor(key)` (see open_model),
    and for tensor parallelism `.tp_context`. `archparams` (default model.config.arch.lm) needs
    `.norm_constant_bias`: 1.0 for Gemma's (1 + w) norms.
    """

    def __init__(self, model, key: str, archparams=None):
        if not isinstance(key, str):
            raise TypeError(f"key must be a str (the tensor name's prefix), got "
                            f"{type(key).__name__} ({key!r})")
        missing = [a for a in ("config", "get_tensor") if not hasattr(model, a)]
        if missing:
            raise TypeError(f"model must have config and get_tensor (rt.open_model returns "
                            f"one), got {type(model).__name__} without {', '.join(missing)}")
        if archparams is None:
            archparams = model.config.arch.lm
        if not isinstance(getattr(archparams, "norm_constant_bias", None), (int, float)):
            raise TypeError(f"archparams must have a numeric norm_constant_bias, got "
                            f"{type(archparams).__name__} without one")
        self.model = model
        self.key = key
        self.archparams = archparams
        self.alt_key = None
        self.footprint = -1
        self.is_tp = False
        self.broadcast_type = None
        self.weight = None     # fp16 Parameter; a list of per-device tensors after tp_split
        self.bias = None       # like weight, or None; [] after tp_split without a bias
        self.variance_epsilon = PLACEHOLDER_EPS

    # ---- loading -------------------------------------------------------------------------------

    def load(self, device_context: bool = True) -> None:
        """Read the weight (and bias) as fp16; add norm_constant_bias to the fp16 weight."""
        weight = self._read(self.key + ".weight")
        bias = self._read(self.key + ".bias") if self._has(self.key + ".bias") else None
        if bias is not None and bias.shape != weight.shape:
            raise ValueError(f"{self.key}.bias must have the weight's shape "
                             f"{tuple(weight.shape)}, got {tuple(bias.shape)}")
        offset = self.archparams.norm_constant_bias
        if offset:
            # In fp16, as exllamav2 does: stored = fp16(fp16(w) + bias). Out of place: the
            # model may hand out the same tensor again on the next load().
            weight = weight + offset
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.variance_epsilon = float(self.model.config.norm_eps)
        self.is_tp = False

    def _has(self, name: str) -> bool:
        """model.has_tensor where the model has it; otherwise ask get_tensor."""
        has = getattr(self.model, "has_tensor", None)
        if has is not None:
            return bool(has(name))
        try:
            self.model.get_tensor(name)
        except KeyError:
            return False
        return True

    def _read(self, name: str) -> torch.Tensor:
        t = self.model.get_tensor(name)
        check_dense(name, t)
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D (hidden_size,), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        t = materialized(t.half())       # else copied on every call
        # fp32/bf16 values past 65504 would become inf and silently poison every output.
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} has values that are not finite in float16")
        return t

    def unload(self) -> None:
        self.weight = None
        self.bias = None
        self.is_tp = False

    def get_weight(self) -> torch.Tensor:
        """The weight as the checkpoint meant it: stored - norm_constant_bias, in fp16 (lossy)."""
        self._check_loaded()
        w = _first(self.weight).data
        offset = self.archparams.norm_constant_bias
        return w - offset if offset else w

    def weight_footprint(self) -> int:
        """Bytes of the stored fp16 weight (and bias); before load(), 2 * hidden_size as
        exllamav2 estimates it for planning."""
        if self.weight is None:
            hidden_size = getattr(self.model.config, "hidden_size", None)
            if not isinstance(hidden_size, int):
                raise ValueError(f"{self.key!r} is not loaded and model.config.hidden_size is "
                                 f"{hidden_size!r}: cannot estimate its footprint")
            return 2 * hidden_size
        tensors = (_first(self.weight), _first(self.bias))
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def numel(self) -> int:
        return 0   # left out of parameter counts, as in exllamav2

    def scratch_space_fixed(self) -> int:
        return 0

    def scratch_space(self) -> int:
        return 0

    def _check_loaded(self) -> None:
        if self.weight is None:
            raise RuntimeError(f"ExLlamaV2RMSNorm {self.key!r} is not loaded: call load() first")

    # ---- forward -------------------------------------------------------------------------------

    def forward(self, hidden_states, cache=None, attn_params=None, past_len=None,
                intermediates=False, loras=None, output_fp32=False, **kwargs):
        """Normalize `hidden_states` [..., hidden_size] (fp16, bf16 or fp32): fp16 out, or fp32."""
        if self.is_tp:
            return self.forward_tp(hidden_states, cache, attn_params, past_len, intermediates,
                                   loras, output_fp32, **kwargs)
        self._check_loaded()
        out = rms_norm(hidden_states, self.weight, self.variance_epsilon, bias=self.bias,
                       out_dtype=torch.float32 if output_fp32 else torch.float16,
                       clamp_fp16_input=True)
        return {"hidden_states": out} if intermediates else out

    def forward_torch(self, hidden_states, cache=None, attn_params=None, past_len=None,
                      intermediates=False, loras=None, output_fp32=False, **kwargs):
        """forward() in plain PyTorch: the same formula (fp32 math, one rounding), unsplit only."""
        if self.is_tp:
            raise RuntimeError(f"forward_torch runs unsplit modules; {self.key!r} is split "
                               "across devices (use forward)")
        self._check_loaded()
        out = rms_norm_reference(hidden_states, self.weight, self.variance_epsilon,
                                 bias=self.bias,
                                 out_dtype=torch.float32 if output_fp32 else torch.float16,
                                 clamp_fp16_input=True)
        return {"hidden_states": out} if intermediates else out

    # ---- tensor parallelism --------------------------------------------------------------------

    def _tp_context(self):
        ctx = getattr(self.model, "tp_context", None)
        if ctx is None:
            raise RuntimeError(f"{self.key!r}: model.tp_context is None; set a TPContext first")
        return ctx

    def tp_split(self, broadcast_type: int) -> None:
        """Replicate the whole weight (and bias) to each device of that split, in its order."""
        self._check_loaded()
        devices = self._tp_context().devices_for(broadcast_type)
        weight, bias = _first(self.weight), _first(self.bias)
        # .to() returns the tensor itself when it already lives on that device.
        self.weight = [materialized(weight.data.to(d)) for d in devices]
        self.bias = [] if bias is None else [materialized(bias.data.to(d)) for d in devices]
        self.broadcast_type = broadcast_type
        self.is_tp = True

    def forward_tp(self, hidden_states, cache=None, attn_params=None, past_len=None,
                   intermediates=False, loras=None, output_fp32=False, **kwargs):
        """One tensor (broadcast first) or a list with one per device -> a list, one per device."""
        from .parallel import forward_tp

        if not self.is_tp:
            raise RuntimeError(f"{self.key!r} is not split: call tp_split(broadcast_type) first")
        outs = forward_tp(self._tp_context(), self.broadcast_type, hidden_states, self.weight,
                          self.bias, self.variance_epsilon,
                          out_dtype=torch.float32 if output_fp32 else torch.float16,
                          clamp_fp16_input=True)
        return {"hidden_states": outs} if intermediates else outs


def _first(t):
    """The unsplit tensor, or the first device's replica after tp_split; None for no bias."""
    if isinstance(t, list):
        return t[0] if t else None
    return t
