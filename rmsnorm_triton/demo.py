"""`rmsnorm-triton demo [MODEL_DIR]`: load every norm through ExLlamaV2RMSNorm, check it in fp64.

Without a directory, a tiny Llama-style and a tiny Gemma-style checkpoint are written to a
temporary directory first. Each norm normalizes random hidden states (fp16 and fp32 in, fp16 and
fp32 out) and is compared with an fp64 evaluation of the same formula on the stored fp16 weight.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .exllamav2 import ExLlamaV2RMSNorm
from .loading import open_model, save_checkpoint
from .ops import INTERPRET

# Relative error (||out - ref|| / ||ref||) allowed per output dtype: about one ulp.
TOLERANCE = {torch.float16: 1e-3, torch.float32: 1e-5}
IN_DTYPES = (torch.float16, torch.float32)
TOKENS = 7


@dataclass
class Check:
    model: str
    key: str
    shape: tuple
    in_dtype: torch.dtype
    out_dtype: torch.dtype
    err: float
    tol: float
    us: float

    @property
    def ok(self) -> bool:
        return self.err <= self.tol   # False for NaN too


def path_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU Triton ({torch.cuda.get_device_name(device)})"
    if INTERPRET:
        return "CPU Triton interpreter"
    return "CPU torch reference (TRITON_INTERPRET unset)"


def norm_keys(model) -> list[str]:
    """Module keys of every tensor named *norm.weight (layernorm.weight included)."""
    return [k[:-len(".weight")] for k in model.keys() if k.endswith("norm.weight")]


def reference64(x, weight, eps, bias=None):
    """exllamav2's formula in fp64: fp16 inputs clamped, stored weight (bias already in it)."""
    h = x.double()
    if x.dtype == torch.float16:
        h = h.clamp(-65504.0, 65504.0)
    y = h * torch.rsqrt(h.square().mean(-1, keepdim=True) + eps) * weight.double()
    return y if bias is None else y + bias.double()


def _time_us(fn, device) -> float:
    reps = 20 if device.type == "cuda" else 1   # the interpreter is slow; one call tells enough
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / reps * 1e6


def check_model(name: str, path, device: torch.device, gen: torch.Generator) -> list[Check]:
    model = open_model(path, device)
    print(f"{name}: {path}  norm_eps={model.config.norm_eps:g}  "
          f"norm_constant_bias={model.config.arch.lm.norm_constant_bias:g}")
    checks = []
    for key in norm_keys(model):
        norm = ExLlamaV2RMSNorm(model, key)
        norm.load()
        n = norm.weight.shape[0]
        x32 = (0.5 + 2.0 * torch.randn(1, TOKENS, n, generator=gen)).to(device)
        for in_dtype in IN_DTYPES:
            x = x32.to(in_dtype)
            ref = reference64(x, norm.weight, norm.variance_epsilon, norm.bias)
            for output_fp32 in (False, True):
                out = norm.forward(x, output_fp32=output_fp32)
                err = ((out.double() - ref).norm() / ref.norm()).item()
                us = _time_us(lambda: norm.forward(x, output_fp32=output_fp32), device)
                checks.append(Check(name, key, tuple(x.shape), in_dtype, out.dtype, err,
                                    TOLERANCE[out.dtype], us))
        norm.unload()
    return checks


def tiny_checkpoints(root: Path, gen: torch.Generator) -> list[tuple[str, Path]]:
    """A 2-layer Llama-style (bf16 on disk) and Gemma-style (fp32 on disk) checkpoint."""
    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    out = []
    for name, arch, model_type, hidden, norms, dtype in (
            ("tiny-llama", "LlamaForCausalLM", "llama", 256,
             ("input_layernorm", "post_attention_layernorm"), torch.bfloat16),
            ("tiny-gemma", "Gemma2ForCausalLM", "gemma2", 200,
             ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
              "post_feedforward_layernorm"), torch.float32)):
        layers = 2
        gemma = model_type.startswith("gemma")
        config = {"architectures": [arch], "model_type": model_type, "rms_norm_eps": 1e-6,
                  "hidden_size": hidden, "num_hidden_layers": layers, "vocab_size": 64}
        # Gemma stores w where the model scales by (1 + w): small values around 0.
        norm_w = (lambda: 0.1 * randn(hidden)) if gemma else (lambda: 1.0 + 0.1 * randn(hidden))
        tensors = {"model.embed_tokens.weight": randn(64, hidden).to(dtype),
                   "model.norm.weight": norm_w().to(dtype)}
        for i in range(layers):
            tensors[f"model.layers.{i}.self_attn.q_proj.weight"] = randn(hidden, hidden).to(dtype)
            for norm in norms:
                tensors[f"model.layers.{i}.{norm}.weight"] = norm_w().to(dtype)
        out.append((name, save_checkpoint(root / name, config, tensors)))
    return out


def print_table(checks: list[Check]) -> None:
    short = {torch.float16: "fp16", torch.float32: "fp32"}
    kw = max(len("key"), *(len(c.key) for c in checks))
    head = (f"{'model':<12} {'key':<{kw}} {'shape':<16} {'in->out':<10} {'rel err / tol':<19} "
            f"{'us':>9}")
    print(head)
    print("-" * len(head))
    for c in checks:
        dtypes = f"{short[c.in_dtype]}->{short[c.out_dtype]}"
        errs = f"{c.err:.2e} / {c.tol:.0e}"
        print(f"{c.model:<12} {c.key:<{kw}} {str(c.shape):<16} {dtypes:<10} {errs:<19} "
              f"{c.us:>9.1f}{'' if c.ok else '  FAIL'}")


def run_demo(model_dir=None, device=None) -> int:
    """0 if every norm is within tolerance, 1 if any is not, 2 if the input cannot be used."""
    try:
        device = torch.device(device if device is not None
                              else "cuda" if torch.cuda.is_available() else "cpu")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device} asked for, but no CUDA GPU is available")
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}")
        return 2
    print(f"path: {path_name(device)}")
    gen = torch.Generator().manual_seed(0)
    try:
        if model_dir is None:
            with tempfile.TemporaryDirectory(prefix="rmsnorm_triton_demo_") as tmp:
                checks = [c for name, path in tiny_checkpoints(Path(tmp), gen)
                          for c in check_model(name, path, device, gen)]
        else:
            checks = check_model(Path(model_dir).name, model_dir, device, gen)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: {e}")
        return 2
    if not checks:
        print(f"error: no *norm.weight tensors in {model_dir}")
        return 2
    print_table(checks)
    failed = sum(not c.ok for c in checks)
    verdict = "PASS" if not failed else "FAIL"
    print(f"verdict: {verdict}: {len(checks) - failed}/{len(checks)} checks within tolerance "
          f"({path_name(device)})")
    return 0 if not failed else 1
