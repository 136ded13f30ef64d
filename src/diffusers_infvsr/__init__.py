"""InfVSR (streaming one-step diffusion video super-resolution) for Hugging Face diffusers."""

from .models import (
    CausalWanKVCache,
    CausalWanTransformer3DModel,
    CausalWanTransformerOutput,
    DAPEImageEncoder,
    block_causal_attention_mask,
)
from .pipeline_infvsr import InfVSRPipeline, InfVSRPipelineOutput, InfVSRStreamState, StreamMarker
from .scheduling_infvsr import InfVSRScheduler
from .vae_stream import WanVAEStream


__version__ = "0.1.0.dev0"

__all__ = [
    "CausalWanKVCache",
    "CausalWanTransformer3DModel",
    "CausalWanTransformerOutput",
    "DAPEImageEncoder",
    "InfVSRPipeline",
    "InfVSRPipelineOutput",
    "InfVSRScheduler",
    "InfVSRStreamState",
    "StreamMarker",
    "WanVAEStream",
    "block_causal_attention_mask",
]
