"""cudit: fused QK RMSNorm + RoPE CUDA kernels for diffusion transformers.

    import cudit
    cudit.qk_norm_rope(qkv, q_weight, k_weight, cos, sin, num_heads=24)
"""
from __future__ import annotations

from ._errors import CudaUnavailableError, NoImageError, PlanError
from ._rope3d import Rope3D
from ._planner import Exchange
from .api import exchange_bytes, qk_norm_rope, qk_norm_rope_backward, qk_sumsq

__version__ = "0.1.0"


def cubins() -> dict:
    """Shipped architectures -> cubin file, plus the PTX kept for newer GPUs."""
    from ._modules import manifest

    man = manifest()
    out = {arch: entry["file"] for arch, entry in man["archs"].items()}
    if man.get("ptx"):
        out[man["ptx"]["arch"]] = man["ptx"]["file"]
    return out


__all__ = ["qk_norm_rope", "qk_norm_rope_backward", "qk_sumsq", "Exchange", "exchange_bytes", "Rope3D", "cubins", "PlanError", "NoImageError", "CudaUnavailableError", "__version__"]
