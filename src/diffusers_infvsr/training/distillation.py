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
"""
Distribution matching distillation (DMD) on flow-matching score models, as in DMD2, CausVid and Self-Forcing: the
generator's samples are noised, a frozen "real" score (the pretrained teacher, with classifier-free guidance) and a
trained "fake" score (which follows the generator's distribution, unguided) predict the clean sample, and the
generator is pulled along their normalized difference.
"""

import torch
import torch.nn.functional as F

from .losses import add_flow_noise, dmd_loss


def flow_matching_target(sample: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    r"""
    The velocity a flow-matching model predicts at `x_t = (1 - sigma) sample + sigma noise`: its derivative in sigma,
    `noise - sample`.
    """
    return noise - sample


def predict_clean_sample(
    model: torch.nn.Module,
    noisy: torch.Tensor,
    timesteps: torch.Tensor,
    sigmas: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    r"""
    The float32 clean-sample prediction `x0 = x_t - sigma v` of a flow-matching transformer, with classifier-free
    guidance `x0_neg + guidance_scale (x0_cond - x0_neg)` when `guidance_scale != 1`.

    The model runs in its own dtype (its input is cast to it); the conversion to `x0` uses the float32 `noisy` latent
    itself, so models of different precisions see the same `x_t` there.

    Args:
        model: A Wan-style transformer called as `model(hidden_states, timestep, encoder_hidden_states)`.
        noisy (`torch.Tensor`): `x_t`, `(B, C, F, H, W)`, float32.
        timesteps, sigmas (`torch.Tensor`): `(B,)` timesteps given to the model and the matching noise levels.
        prompt_embeds, negative_prompt_embeds (`torch.Tensor`): `(B, L, D)` conditional and negative context.
        guidance_scale (`float`): Classifier-free guidance scale; `1` uses the conditional prediction only.
    """
    dtype = next(model.parameters()).dtype

    def clean(embeds):
        velocity = model(noisy.to(dtype), timesteps, embeds.to(dtype), return_dict=False)[0]
        return noisy.float() - sigmas.view(-1, *([1] * (noisy.ndim - 1))).float() * velocity.float()

    conditional = clean(prompt_embeds)
    if guidance_scale == 1:
        return conditional
    if negative_prompt_embeds is None:
        raise ValueError("Classifier-free guidance (`guidance_scale != 1`) needs `negative_prompt_embeds`.")
    negative = clean(negative_prompt_embeds)
    return negative + guidance_scale * (conditional - negative)


def distribution_matching_loss(
    generated: torch.Tensor,
    real_score: torch.nn.Module,
    fake_score: torch.nn.Module,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    sigmas: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None = None,
    real_guidance_scale: float = 1.0,
) -> torch.Tensor:
    r"""
    The DMD loss of generator samples `generated` (with gradient): noised to `x_t` (float32) at `sigmas`, scored by
    the guided real score and the unguided fake score (no gradient to either), and [`dmd_loss`] of their predictions.
    """
    noisy = add_flow_noise(generated.detach().float(), noise.float(), sigmas)
    with torch.no_grad():
        real = predict_clean_sample(
            real_score, noisy, timesteps, sigmas, prompt_embeds, negative_prompt_embeds, real_guidance_scale
        )
        fake = predict_clean_sample(fake_score, noisy, timesteps, sigmas, prompt_embeds)
    return dmd_loss(generated, real, fake)


def fake_score_loss(
    fake_score: torch.nn.Module,
    sample: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    sigmas: torch.Tensor,
    prompt_embeds: torch.Tensor,
) -> torch.Tensor:
    r"""The fake score's flow-matching loss on (detached) generator samples: `|v(x_t) - (noise - sample)|^2`."""
    sample, noise = sample.detach().float(), noise.float()
    noisy = add_flow_noise(sample, noise, sigmas)
    velocity = fake_score(noisy, timesteps, prompt_embeds, return_dict=False)[0]
    return F.mse_loss(velocity.float(), flow_matching_target(sample, noise))
