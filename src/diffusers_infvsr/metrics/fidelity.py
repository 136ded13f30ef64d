# Copyright 2026 The diffusers-infvsr authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""PSNR and SSIM, on RGB or on the BT.601 luma (Y) channel, as super-resolution papers compute them."""

import torch
import torch.nn.functional as F


def rgb_to_y(images: torch.Tensor) -> torch.Tensor:
    r"""
    BT.601 luma of `(N, 3, H, W)` RGB in [0, 1], studio range as MATLAB's `rgb2ycbcr` (Y in [16/255, 235/255]).

    Example:

    ```py
    >>> rgb_to_y(torch.ones(1, 3, 2, 2)).flatten()[0] * 255
    tensor(235.)
    ```
    """
    weights = images.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1) / 255
    return (images * weights).sum(1, keepdim=True) + 16 / 255


def _prepare(x: torch.Tensor, y: torch.Tensor, crop_border: int, y_channel: bool):
    if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"Expected two (N, 3, H, W) images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}.")
    x, y = x.double(), y.double()
    if y_channel:
        x, y = rgb_to_y(x), rgb_to_y(y)
    if crop_border:
        x, y = (
            x[..., crop_border:-crop_border, crop_border:-crop_border],
            y[..., crop_border:-crop_border, crop_border:-crop_border],
        )
    return x, y


def psnr(x: torch.Tensor, y: torch.Tensor, crop_border: int = 0, y_channel: bool = False) -> torch.Tensor:
    r"""
    Peak signal-to-noise ratio in dB of `(N, 3, H, W)` images in [0, 1] (peak 1), one value per image; `inf` for
    identical images.

    Args:
        crop_border (`int`, defaults to 0): Pixels ignored at each border.
        y_channel (`bool`, defaults to `False`): Compare the BT.601 luma instead of RGB.

    Example:

    ```py
    >>> psnr(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.1))
    tensor([20.], dtype=torch.float64)
    ```
    """
    x, y = _prepare(x, y, crop_border, y_channel)
    mse = ((x - y) ** 2).mean((1, 2, 3))
    return 10 * torch.log10(1 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coordinates = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    window = torch.exp(-(coordinates**2) / (2 * sigma**2))
    return window / window.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, crop_border: int = 0, y_channel: bool = False) -> torch.Tensor:
    r"""
    Structural similarity (Wang et al. 2004) of `(N, 3, H, W)` images in [0, 1], one value per image: 11 x 11 Gaussian
    window (sigma 1.5), K1 = 0.01, K2 = 0.03, statistics over the valid (unpadded) windows, mean over pixels and
    channels. Equals scikit-image's `structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)` and BasicSR's `calculate_ssim`.

    Args:
        crop_border (`int`, defaults to 0): Pixels ignored at each border.
        y_channel (`bool`, defaults to `False`): Compare the BT.601 luma instead of RGB.

    Example:

    ```py
    >>> ssim(frames, reference, y_channel=True)  # (N,)
    ```
    """
    x, y = _prepare(x, y, crop_border, y_channel)
    channels = x.shape[1]
    window = _gaussian_window().to(x.device)

    def blur(image):
        image = F.conv2d(image, window.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
        return F.conv2d(image, window.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)

    c1, c2 = 0.01**2, 0.03**2
    mean_x, mean_y = blur(x), blur(y)
    var_x = blur(x * x) - mean_x**2
    var_y = blur(y * y) - mean_y**2
    cov = blur(x * y) - mean_x * mean_y
    ssim_map = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean((1, 2, 3))
