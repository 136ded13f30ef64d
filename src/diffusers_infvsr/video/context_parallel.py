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
"""One video's stream on several processes under context parallelism: rank 0 runs [`upscale_video`] (the job, its
output file and its lock), every other rank runs [`follow_video`], which feeds the model the same frames and scene
markers and writes nothing. [`check_context_parallel_split`] tells before the first chunk whether the stream splits."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from .reading import VideoFileError, decode_frames


if TYPE_CHECKING:
    from ..pipeline_infvsr import InfVSRPipeline


def follow_video(
    input_path: str | os.PathLike,
    pipe: InfVSRPipeline,
    upscale_factor: int = 4,
    start: float = 0.0,
    max_frames: int | None = None,
    scene_detection: bool = True,
    scene_threshold: float = 27.0,
    allow_damaged: bool = False,
) -> None:
    r"""
    The part of a context-parallel [`upscale_video`] that a rank other than 0 plays: decode the same frames, mark the
    same scene cuts and run the same stream, so that the transformer's collectives meet rank 0's; the restored frames
    are dropped. Takes the arguments of `upscale_video` that decide the frames and the stream.

    Example:

    ```py
    >>> if dist.get_rank() == 0:
    ...     upscale_video("input.mp4", "output.mp4", pipe, checkpoint_interval=float("inf"))
    ... else:
    ...     follow_video("input.mp4", pipe)
    ```
    """
    from ..scenes import SceneMarker

    frames = (frame.image for frame in decode_frames(os.fspath(input_path), start, max_frames, allow_damaged))
    items = frames
    if scene_detection:
        items = SceneMarker(threshold=scene_threshold, reference_threshold=scene_threshold).mark(frames)
    for _ in pipe.stream(items, upscale_factor, output_type="latent"):  # the restored latents are dropped
        pass


def check_context_parallel_split(
    pipe: InfVSRPipeline, width: int, height: int, upscale_factor: int, mode: str, processes: int
) -> None:
    r"""
    Raise `VideoFileError` unless a stream of `width` x `height` frames upscaled by `upscale_factor` splits evenly
    over `processes` in context-parallel `mode` (`"ulysses"` or `"ring"`): the tokens of every chunk and of the KV
    cache, which hold whole latent frames (1 to 3: a scene's or the video's last chunk may be short), and for Ulysses
    the attention heads.
    """
    patch = pipe.transformer.config.patch_size
    sides = [math.ceil(side * upscale_factor / 16) * 16 // pipe.vae_scale_factor_spatial for side in (width, height)]
    grid = (sides[0] // patch[2], sides[1] // patch[1])  # width x height
    if grid[0] * grid[1] % processes:
        raise VideoFileError(
            f"--context-parallel over {processes} processes splits the tokens of every latent frame evenly, but "
            f"{width}x{height} upscaled x{upscale_factor} gives {grid[0]}x{grid[1]} = {grid[0] * grid[1]} a frame. "
            "Use a number of processes that divides it."
        )
    heads = pipe.transformer.config.num_attention_heads
    if mode == "ulysses" and heads % processes:
        raise VideoFileError(
            f"--context-parallel ulysses splits the model's {heads} attention heads over the processes, but not "
            f"evenly over {processes}. Use a number of processes that divides {heads}, or ring."
        )
