"""Swap the RMSNorms of a transformers (or any torch) model for rmsnorm_triton.RMSNorm.

Nothing here imports transformers: HF norms are recognised by class name, so this works with any
transformers version and with remote-code models.
"""
from __future__ import annotations

import warnings

from torch import nn

from .module import RMSNorm


def is_rms_norm(m: nn.Module) -> bool:
    """torch.nn.RMSNorm, or a class named *RMSNorm (LlamaRMSNorm, Gemma3RMSNorm, ...)."""
    return isinstance(m, nn.RMSNorm) or type(m).__name__.endswith("RMSNorm")


def patch_model(model: nn.Module) -> int:
    """Replace every RMSNorm submodule of `model` in place; returns how many were replaced.

    Replacements share the original Parameters, so tied weights and later load_state_dict calls
    keep working. A module already ours is left alone. A norm that RMSNorm.from_module cannot
    reproduce (gated variants, an HF norm without a weight, another formula) is kept, with one
    warning naming it: the model stays correct, only that norm is not accelerated.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch_model expects an nn.Module, got {type(model).__name__}")
    replaced: dict[int, RMSNorm] = {}   # one replacement per module, even if it is reused
    skipped: list[str] = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, RMSNorm) or not is_rms_norm(child):
                continue
            new = replaced.get(id(child))
            if new is None:
                try:
                    new = RMSNorm.from_module(child)
                except (TypeError, ValueError) as e:
                    skipped.append(f"{_join(parent_name, child_name)} ({e})")
                    continue
                replaced[id(child)] = new
            setattr(parent, child_name, new)
    if skipped:
        warnings.warn(f"rmsnorm_triton.patch_model kept {len(skipped)} norm(s) it cannot "
                      f"reproduce: {'; '.join(skipped[:5])}", stacklevel=2)
    return len(replaced)


def _join(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent else child
