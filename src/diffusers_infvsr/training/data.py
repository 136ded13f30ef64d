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
"""Training clips: random windows of high-quality videos with their low-quality versions synthesized on the fly."""

import os
from pathlib import Path

import av
import numpy as np
import PIL.Image
import torch

from ..video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, frame_files
from .degradations import DegradationConfig, degrade_video, sample_degradation_params


def find_clips(root: str | os.PathLike) -> list[Path]:
    r"""
    All clips under `root`, sorted: every video file, and every folder that directly holds image files (one frame per
    file, in file-name order, as REDS' `train_sharp/000/00000000.png`).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Training data folder not found: {root}")
    clips = []
    for folder, _, files in os.walk(root):
        folder = Path(folder)
        if any(Path(name).suffix.lower() in IMAGE_EXTENSIONS for name in files):
            clips.append(folder)
        clips.extend(folder / name for name in files if Path(name).suffix.lower() in VIDEO_EXTENSIONS)
    return sorted(clips)


def count_frames(clip: str | os.PathLike) -> int:
    """Number of frames of a video file or frame folder."""
    clip = Path(clip)
    if clip.is_dir():
        return len(frame_files(clip))
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return stream.frames
        return sum(1 for _ in container.decode(stream))


def load_frames(clip: str | os.PathLike, start: int = 0, num_frames: int | None = None) -> torch.Tensor:
    r"""
    Frames `[start, start + num_frames)` (all from `start` if `None`) of a video file or frame folder, as a `(T, 3, H,
    W)` uint8 RGB tensor.
    """
    clip = Path(clip)
    stop = None if num_frames is None else start + num_frames
    if clip.is_dir():
        frames = [np.asarray(PIL.Image.open(path).convert("RGB")) for path in frame_files(clip)[start:stop]]
    else:
        frames = []
        with av.open(str(clip)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if stop is not None and index >= stop:
                    break
                if index >= start:
                    frames.append(frame.to_ndarray(format="rgb24"))
    if not frames or (num_frames is not None and len(frames) != num_frames):
        raise ValueError(f"{clip} has fewer than {stop} frames." if stop else f"{clip} has no frames.")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


class VideoClipDataset(torch.utils.data.Dataset):
    r"""
    Random training windows of high-quality (HQ) clips and their low-quality (LQ) versions.

    Each item takes a clip, a random window of `num_frames` consecutive frames, a random `resolution` crop and
    optionally a horizontal flip, then degrades it with [`degrade_video`] under parameters drawn once for the whole
    window. All randomness comes from `(seed, epoch, index)`, so an item is reproducible whatever the worker or the
    order it is loaded in. The dataset shuffles its clips itself, with a permutation drawn from `(seed, epoch)`: use
    it with a sequential sampler and call [`~VideoClipDataset.set_epoch`] every epoch (accelerate's prepared data
    loaders do on `set_epoch`).

    Args:
        root (`str`): Folder searched by [`find_clips`] (video files and frame folders).
        num_frames (`int`, defaults to 33): Frames per window.
        resolution (`tuple[int, int]`, defaults to `(720, 1280)`): HQ crop `(height, width)`, multiples of `scale`.
        degradation ([`DegradationConfig`], *optional*): Degradation settings (and the scale).
        random_flip (`bool`, defaults to `False`): Flip each window horizontally with probability 1/2.
        shuffle (`bool`, defaults to `True`): Visit the clips in a new random order every epoch.
        seed (`int`, defaults to 0): Seed of all random choices.

    Items are dicts with `"hq_frames"` `(T, 3, H, W)` and `"lq_frames"` `(T, 3, H / scale, W / scale)`, both uint8.

    Example:

    ```py
    >>> dataset = VideoClipDataset("REDS/train_sharp", num_frames=33, resolution=(720, 1280), random_flip=True)
    >>> dataset.set_epoch(0)
    >>> item = dataset[0]
    >>> item["hq_frames"].shape, item["lq_frames"].shape
    (torch.Size([33, 3, 720, 1280]), torch.Size([33, 3, 180, 320]))
    ```
    """

    def __init__(
        self,
        root: str | os.PathLike,
        num_frames: int = 33,
        resolution: tuple[int, int] = (720, 1280),
        degradation: DegradationConfig | None = None,
        random_flip: bool = False,
        shuffle: bool = True,
        seed: int = 0,
    ):
        self.degradation = degradation or DegradationConfig()
        scale = self.degradation.scale
        if resolution[0] % scale or resolution[1] % scale:
            raise ValueError(f"`resolution` {tuple(resolution)} must be a multiple of the scale {scale}.")
        clips = find_clips(root)
        self.clips, self.num_clip_frames = [], []
        for clip in clips:
            length = count_frames(clip)
            if length >= num_frames:
                self.clips.append(clip)
                self.num_clip_frames.append(length)
        if not self.clips:
            raise ValueError(
                f"No clip under {root} has at least {num_frames} frames (found {len(clips)} clips: video files with "
                f"extensions {VIDEO_EXTENSIONS} or folders of {IMAGE_EXTENSIONS} frames)."
            )
        self.num_skipped = len(clips) - len(self.clips)
        self.num_frames = num_frames
        self.resolution = tuple(resolution)
        self.random_flip = random_flip
        self.shuffle = shuffle
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: its clip order and its random crops, flips and degradations."""
        self.epoch = epoch
        order = np.arange(len(self.clips))
        self.order = np.random.default_rng([self.seed, epoch]).permutation(order) if self.shuffle else order

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        clip_index = int(self.order[index])
        rng = np.random.default_rng([self.seed, self.epoch, clip_index])
        start = int(rng.integers(self.num_clip_frames[clip_index] - self.num_frames + 1))
        frames = load_frames(self.clips[clip_index], start, self.num_frames)
        height, width = self.resolution
        if frames.shape[-2] < height or frames.shape[-1] < width:
            raise ValueError(
                f"{self.clips[clip_index]} has frames of {tuple(frames.shape[-2:])}, smaller than the crop "
                f"{self.resolution}; lower `resolution`."
            )
        top = int(rng.integers(frames.shape[-2] - height + 1))
        left = int(rng.integers(frames.shape[-1] - width + 1))
        frames = frames[..., top : top + height, left : left + width]
        if self.random_flip and rng.random() < 0.5:
            frames = frames.flip(-1)
        params = sample_degradation_params(self.degradation, rng)
        lq_frames = degrade_video(frames, params, self.degradation.scale)
        return {"hq_frames": frames.contiguous(), "lq_frames": lq_frames}
