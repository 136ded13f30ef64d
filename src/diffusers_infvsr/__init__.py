"""InfVSR (streaming one-step diffusion video super-resolution) for Hugging Face diffusers."""

import importlib
from typing import TYPE_CHECKING


__version__ = "0.1.0.dev0"

# Names are imported on first use, so that `infvsr --help` and argument errors answer without importing torch.
_LAZY_IMPORTS = {
    "CausalWanKVCache": ".models",
    "CausalWanTransformer3DModel": ".models",
    "CausalWanTransformerOutput": ".models",
    "DAPEImageEncoder": ".models",
    "block_causal_attention_mask": ".models",
    "InfVSRPipeline": ".pipeline_infvsr",
    "InfVSRPipelineOutput": ".pipeline_infvsr",
    "InfVSRStreamState": ".pipeline_infvsr",
    "StreamMarker": ".pipeline_infvsr",
    "InfVSRScheduler": ".scheduling_infvsr",
    "WanVAEStream": ".vae_stream",
}

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

if TYPE_CHECKING:
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


def __getattr__(name: str):
    if name not in _LAZY_IMPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY_IMPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
