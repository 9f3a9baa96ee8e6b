"""rmsnorm_triton: fused RMSNorm Triton kernels for inference engines."""
from . import distributed
from .exllamav2 import ExLlamaV2RMSNorm
from .hf import patch_model
from .loading import open_model
from .module import GemmaRMSNorm, RMSNorm
from .ops import fused_add_rms_norm, rms_norm
from .parallel import (
            BROADCAST_ID,
            BROADCAST_KV,
            BROADCAST_Q,
            BROADCAST_RS,
            BROADCAST_VC,
            TPContext,
)
from .reference import rms_norm_reference

__version__ = "0.1.0"

__all__ = ["rms_norm", "fused_add_rms_norm", "rms_norm_reference", "__version__"]
__all__ += ["RMSNorm", "GemmaRMSNorm", "patch_model", "open_model", "ExLlamaV2RMSNorm"]
__all__ += ["TPContext", "distributed", "BROADCAST_KV", "BROADCAST_ID", "BROADCAST_VC",
            "BROADCAST_RS", "BROADCAST_Q"]
