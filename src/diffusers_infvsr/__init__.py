"""InfVSR (streaming one-step diffusion video super-resolution) for Hugging Face diffusers."""

from .models import (
    CausalWanKVCache,
    CausalWanTransformer3DModel,
    CausalWanTransformerOutput,
    block_causal_attention_mask,
)


__version__ = "0.1.0.dev0"

__all__ = [
    "CausalWanKVCache",
    "CausalWanTransformer3DModel",
    "CausalWanTransformerOutput",
    "block_causal_attention_mask",
]
