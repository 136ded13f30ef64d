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
"""The flow-matching schedule of InfVSR's single restoration step."""

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SchedulerMixin  # noqa: F401  (for diffusers' loader)
from diffusers.configuration_utils import register_to_config


class InfVSRScheduler(FlowMatchEulerDiscreteScheduler):
    r"""
    [`~diffusers.FlowMatchEulerDiscreteScheduler`] (shift 5) that also holds the fixed timestep of InfVSR's one step.

    The low-resolution latent `z` is treated as the noisy sample at `one_step_timestep`, and the clean latent is
    `x0 = z - sigma * v`, with `sigma` the entry of the shifted training schedule whose `1000 * sigma` is nearest to
    the timestep. The official release stores the timestep 399 as a bfloat16 tensor, which rounds it to 400; with the
    default `timestep_precision="bfloat16"` this scheduler reproduces that (DiT timestep 400, sigma 0.40082), while
    `"float32"` uses 399 as written (sigma 0.39850).

    Args:
        num_train_timesteps (`int`, defaults to 1000): Length of the training schedule.
        shift (`float`, defaults to 5.0): Timestep shift of the schedule.
        one_step_timestep (`float`, defaults to 399.0): The timestep of the single step, as the release writes it.
        timestep_precision (`str`, defaults to `"bfloat16"`): `"bfloat16"` rounds the timestep as the release does.

    The remaining arguments are those of [`~diffusers.FlowMatchEulerDiscreteScheduler`] (used in training to noise
    samples); they do not affect the one step.

    Example:

    ```py
    >>> scheduler = InfVSRScheduler()
    >>> scheduler.timestep, round(scheduler.sigma, 5)
    (400.0, 0.40082)
    ```
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 5.0,
        one_step_timestep: float = 399.0,
        timestep_precision: str = "bfloat16",
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: str = "exponential",
        stochastic_sampling: bool = False,
    ):
        if timestep_precision not in ("bfloat16", "float32"):
            raise ValueError(f"`timestep_precision` must be 'bfloat16' or 'float32', got {timestep_precision!r}.")
        # The parent's options are restated so that a saved config loads back without unknown keys.
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            shift=shift,
            use_dynamic_shifting=use_dynamic_shifting,
            base_shift=base_shift,
            max_shift=max_shift,
            base_image_seq_len=base_image_seq_len,
            max_image_seq_len=max_image_seq_len,
            invert_sigmas=invert_sigmas,
            shift_terminal=shift_terminal,
            use_karras_sigmas=use_karras_sigmas,
            use_exponential_sigmas=use_exponential_sigmas,
            use_beta_sigmas=use_beta_sigmas,
            time_shift_type=time_shift_type,
            stochastic_sampling=stochastic_sampling,
        )

    @property
    def timestep(self) -> float:
        """The timestep given to the DiT."""
        dtype = getattr(torch, self.config.timestep_precision)
        return torch.tensor(self.config.one_step_timestep, dtype=dtype).item()

    @property
    def sigma(self) -> float:
        """The shifted-schedule sigma whose `num_train_timesteps * sigma` is nearest to `timestep`."""
        steps = self.config.num_train_timesteps
        unshifted = torch.linspace(1, 0, steps + 1, dtype=torch.float64)[:-1]
        sigmas = self.config.shift * unshifted / (1 + (self.config.shift - 1) * unshifted)
        return sigmas[(sigmas * steps - self.timestep).abs().argmin()].item()

    def one_step(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The clean sample `sample - sigma * model_output` (flow matching: `model_output` is the velocity)."""
        return sample - self.sigma * model_output
