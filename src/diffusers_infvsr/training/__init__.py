"""Reusable parts of InfVSR training (`examples/train_infvsr.py`): data, degradations, losses, model set-up."""

from .data import VideoClipDataset, count_frames, find_clips, load_frames
from .degradations import (
    BlurKernel,
    DegradationConfig,
    DegradationParams,
    DegradationRound,
    degrade,
    degrade_video,
    jpeg_compress,
    sample_degradation_params,
    video_compress,
)
from .distillation import distribution_matching_loss, fake_score_loss, flow_matching_target, predict_clean_sample
from .losses import (
    LatentWindow,
    add_flow_noise,
    decode_latents,
    dmd_loss,
    pixel_losses,
    random_latent_window,
    sample_noise_levels,
    temporal_difference_loss,
)
from .modeling import load_transformer, replace_text_projection


__all__ = [
    "BlurKernel",
    "DegradationConfig",
    "DegradationParams",
    "DegradationRound",
    "LatentWindow",
    "VideoClipDataset",
    "add_flow_noise",
    "count_frames",
    "decode_latents",
    "degrade",
    "degrade_video",
    "distribution_matching_loss",
    "dmd_loss",
    "fake_score_loss",
    "flow_matching_target",
    "find_clips",
    "jpeg_compress",
    "load_frames",
    "load_transformer",
    "pixel_losses",
    "predict_clean_sample",
    "random_latent_window",
    "replace_text_projection",
    "sample_degradation_params",
    "sample_noise_levels",
    "temporal_difference_loss",
    "video_compress",
]
