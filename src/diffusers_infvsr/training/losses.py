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
"""InfVSR's training losses: patch-wise pixel supervision through the frozen VAE decoder, and distribution matching."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler
from torch.utils.checkpoint import checkpoint

from ..vae_stream import count_causal_convs, latent_statistics


@dataclass(frozen=True)
class LatentWindow:
    """A spatial window `[top, top + height) x [left, left + width)` in latent pixels."""

    top: int
    left: int
    height: int
    width: int

    def crop(self, tensor: torch.Tensor, scale: int = 1) -> torch.Tensor:
        """The window of `tensor` (`(..., H, W)`), with coordinates multiplied by `scale` (8 for decoded pixels)."""
        top, left = self.top * scale, self.left * scale
        return tensor[..., top : top + self.height * scale, left : left + self.width * scale]


def random_latent_window(
    latent_size: tuple[int, int], window_size: tuple[int, int], generator: torch.Generator | None = None
) -> LatentWindow:
    r"""A uniformly placed window of `window_size` latent pixels (clipped to `latent_size`)."""
    height, width = min(window_size[0], latent_size[0]), min(window_size[1], latent_size[1])
    top = int(torch.randint(latent_size[0] - height + 1, (1,), generator=generator))
    left = int(torch.randint(latent_size[1] - width + 1, (1,), generator=generator))
    return LatentWindow(top, left, height, width)


def decode_latents(vae: AutoencoderKLWan, latents: torch.Tensor, gradient_checkpointing: bool = False) -> torch.Tensor:
    r"""
    Decode normalized Wan latents `(B, z_dim, F, h, w)` into pixels `(B, 3, 1 + 4 (F - 1), 8h, 8w)` in about [-1, 1],
    differentiably (the VAE itself stays frozen), one latent frame at a time as diffusers' `AutoencoderKLWan.decode`.
    The result is not clamped, so that the loss has gradients everywhere.

    With `gradient_checkpointing`, each latent frame's decoder pass is recomputed in the backward pass: the activations
    held for backward are those of one latent frame instead of the whole clip. The causal convolution caches passed
    from frame to frame are inputs and outputs of each checkpointed call, so recomputation sees the same state.
    """
    mean, std = latent_statistics(vae, latents)
    latents = vae.post_quant_conv((latents * std + mean).to(vae.dtype))

    def decode_frame(latent_frame, cache, first_chunk):
        cache = list(cache)  # the decoder updates its cache in place: work on a copy of the input state
        frame = vae.decoder(latent_frame, feat_cache=cache, feat_idx=[0], first_chunk=first_chunk)
        return frame, cache

    cache = [None] * count_causal_convs(vae.decoder)
    frames = []
    for index in range(latents.shape[2]):
        latent_frame = latents[:, :, index : index + 1]
        if gradient_checkpointing and torch.is_grad_enabled():
            frame, cache = checkpoint(decode_frame, latent_frame, cache, index == 0, use_reentrant=False)
        else:
            frame, cache = decode_frame(latent_frame, cache, index == 0)
        frames.append(frame)
    return torch.cat(frames, dim=2)


def temporal_difference_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""The mean of `((target[t + 1] - target[t]) - (prediction[t + 1] - prediction[t]))^2` over `(B, C, T, H, W)`."""
    return F.mse_loss(prediction.diff(dim=2), target.diff(dim=2))


def pixel_losses(
    prediction: torch.Tensor,
    target: torch.Tensor,
    dists: torch.nn.Module | None = None,
    mse_weight: float = 1.0,
    dists_weight: float = 1.0,
    temporal_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    r"""
    InfVSR's `L_pix = MSE + DISTS + temporal difference` between clips `(B, 3, T, H, W)` in [0, 1] (weighted), in
    float32 with autocast disabled, whatever the caller's autocast.

    Returns:
        `dict`: `"mse"`, `"temporal"`, `"dists"` (when `dists` is given and its weight is not 0) and their weighted sum
        `"pixel"`.
    """
    # Float32 with autocast off: DISTS's VGG features under bf16 autocast give gradients far from the float32 ones.
    with torch.autocast(device_type=prediction.device.type, enabled=False):
        prediction, target = prediction.float(), target.float()
        losses = {"mse": F.mse_loss(prediction, target), "temporal": temporal_difference_loss(prediction, target)}
        total = mse_weight * losses["mse"] + temporal_weight * losses["temporal"]
        if dists is not None and dists_weight != 0:
            frames = prediction.transpose(1, 2).flatten(0, 1), target.transpose(1, 2).flatten(0, 1)
            losses["dists"] = dists(*frames, batch_average=True)
            total = total + dists_weight * losses["dists"]
    losses["pixel"] = total
    return losses


def sample_noise_levels(
    scheduler: FlowMatchEulerDiscreteScheduler,
    batch_size: int,
    min_timestep: int = 20,
    max_timestep: int = 980,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""
    Uniform draws from the scheduler's training table (`scheduler.sigmas` as built at initialization, shifted as
    configured), restricted to timesteps `1000 * sigma` in `[min_timestep, max_timestep]`.

    Returns:
        `(timesteps, sigmas)`, each of shape `(batch_size,)` on `device`.
    """
    sigmas = scheduler.sigmas.double()
    timesteps = sigmas * scheduler.config.num_train_timesteps
    allowed = ((timesteps >= min_timestep) & (timesteps <= max_timestep)).nonzero().flatten()
    if len(allowed) == 0:
        raise ValueError(f"No timestep of the schedule lies in [{min_timestep}, {max_timestep}].")
    picks = allowed[torch.randint(len(allowed), (batch_size,), generator=generator)]
    return timesteps[picks].float().to(device), sigmas[picks].float().to(device)


def add_flow_noise(sample: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The flow-matching interpolation `(1 - sigma) x0 + sigma noise`, with `sigmas` of shape `(batch_size,)`."""
    sigmas = sigmas.view(-1, *([1] * (sample.ndim - 1))).to(sample.dtype)
    return (1 - sigmas) * sample + sigmas * noise


def dmd_loss(generated: torch.Tensor, real_prediction: torch.Tensor, fake_prediction: torch.Tensor) -> torch.Tensor:
    r"""
    Distribution matching distillation loss (Yin et al., DMD/DMD2) of generator samples `generated` (with gradient),
    given the clean-sample predictions of the real (teacher) and fake (student-distribution) score models at a noised
    copy of them.

    The gradient with respect to `generated` is `(fake_prediction - real_prediction) / w` per element (divided by the
    number of elements), with `w = mean |generated - real_prediction|` per sample, the DMD normalization. The scores
    receive no gradient.
    """
    with torch.no_grad():
        generated_detached = generated.detach().float()
        real_prediction, fake_prediction = real_prediction.float(), fake_prediction.float()
        dims = tuple(range(1, generated.ndim))
        weight = (generated_detached - real_prediction).abs().mean(dim=dims, keepdim=True).clamp_min(1e-6)
        gradient = torch.nan_to_num((fake_prediction - real_prediction) / weight)
        target = generated_detached - gradient
    return 0.5 * F.mse_loss(generated.float(), target)
