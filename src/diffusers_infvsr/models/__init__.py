from .image_encoder_dape import DAPEImageEncoder
from .transformer_causal_wan import (
    CausalWanKVCache,
    CausalWanTransformer3DModel,
    CausalWanTransformerOutput,
    block_causal_attention_mask,
)


__all__ = [
    "CausalWanKVCache",
    "CausalWanTransformer3DModel",
    "CausalWanTransformerOutput",
    "DAPEImageEncoder",
    "block_causal_attention_mask",
]
