"""Quality metrics for video super-resolution: fidelity, perceptual distances and temporal consistency."""

from .fidelity import psnr, rgb_to_y, ssim
from .perceptual import DISTS, LPIPS, L2Pooling
from .temporal import (
    backward_warp,
    chunk_starts,
    dis_optical_flow,
    pair_warping_error,
    seam_scores,
    warping_error,
)


__all__ = [
    "DISTS",
    "LPIPS",
    "L2Pooling",
    "backward_warp",
    "chunk_starts",
    "dis_optical_flow",
    "pair_warping_error",
    "psnr",
    "rgb_to_y",
    "seam_scores",
    "ssim",
    "warping_error",
]
