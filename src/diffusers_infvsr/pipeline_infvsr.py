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
"""InfVSRPipeline: streaming one-step diffusion video super-resolution with a causal Wan2.1 DiT."""

import enum
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, ContextParallelConfig, DiffusionPipeline
from diffusers.utils import BaseOutput, logging, replace_example_docstring
from diffusers.video_processor import VideoProcessor
from huggingface_hub import create_repo

from .hub import (
    default_model_card_path,
    package_class_name,
    package_component_modules,
    render_model_card,
    write_remote_code,
)
from .models.image_encoder_dape import DAPEImageEncoder
from .models.transformer_causal_wan import CausalWanKVCache, CausalWanTransformer3DModel
from .scheduling_infvsr import InfVSRScheduler
from .vae_stream import WanVAEStream


logger = logging.get_logger(__name__)

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> from diffusers.utils import export_to_video, load_video
        >>> from diffusers_infvsr import InfVSRPipeline

        >>> pipe = InfVSRPipeline.from_pretrained("path/to/InfVSR-diffusers", dtype=torch.bfloat16).to("cuda")
        >>> video = load_video("low_resolution.mp4")  # list of PIL images
        >>> frames = pipe(video=video, upscale_factor=4).frames[0]
        >>> export_to_video(frames, "upscaled.mp4", fps=24)

        >>> # Unbounded input: stream frames from a generator, get frames back chunk by chunk.
        >>> for frame in pipe.stream(frame_generator, output_type="np"):
        ...     writer.write(frame)
        ```
"""


# Pixel frames per chunk. With the causal Wan VAE (4x in time) both give 3 latent frames: 1 + 4 * 2 and 4 * 3.
FIRST_CHUNK_FRAMES = 9
CHUNK_FRAMES = 12


class StreamMarker(enum.Enum):
    r"""
    In-band markers for [`InfVSRPipeline.stream`], placed in the frame iterable before the frame they apply to.

    - `NEW_SCENE`: the next frame starts a new scene: new KV cache, temporal index 0, new VAE causal state and a new
      reference frame (the current chunk ends early).
    - `REFRESH_REFERENCE`: take a new reference frame for the visual prompt at the next chunk start, keeping the caches.
    """

    NEW_SCENE = "new_scene"
    REFRESH_REFERENCE = "refresh_reference"


def insert_markers(frames: Iterable, scene_starts: Iterable[int] = (), reference_refreshes: Iterable[int] = ()):
    r"""
    The frames of `frames` with [`StreamMarker`] values before the frames they apply to, given by frame index: known
    cuts and refreshes (e.g. from an earlier [`~scenes.SceneMarker`] pass) replayed for [`InfVSRPipeline.stream`].

    ```py
    >>> list(insert_markers("abcd", scene_starts=[0, 2], reference_refreshes=[3]))
    ['a', 'b', <StreamMarker.NEW_SCENE: 'new_scene'>, 'c', <StreamMarker.REFRESH_REFERENCE: 'refresh_reference'>, 'd']
    ```
    """
    scene_starts, reference_refreshes = set(scene_starts), set(reference_refreshes)
    for index, frame in enumerate(frames):
        if index in scene_starts and index > 0:
            yield StreamMarker.NEW_SCENE
        if index in reference_refreshes:
            yield StreamMarker.REFRESH_REFERENCE
        yield frame


@dataclass
class InfVSRPipelineOutput(BaseOutput):
    r"""
    Output of [`InfVSRPipeline`].

    Args:
        frames (`torch.Tensor`, `np.ndarray` or `list[list[PIL.Image.Image]]`):
            The upscaled video, batch first: `(1, frames, height, width, 3)` for `"np"`, `(1, frames, 3, height,
            width)` for `"pt"`, one list of PIL images for `"pil"`, or the restored latents `(1, 16, latent_frames,
            height, width)` for `"latent"` (scenes concatenated).
    """

    frames: torch.Tensor | np.ndarray | list[list[PIL.Image.Image]]


@dataclass
class _SceneState:
    """Everything that restarts at a scene cut."""

    vae_stream: WanVAEStream
    kv_cache: CausalWanKVCache
    visual_prompt: torch.Tensor | None = None
    refresh_reference: bool = False

    @property
    def chunk_size(self) -> int:
        return FIRST_CHUNK_FRAMES if self.kv_cache.next_frame == 0 else CHUNK_FRAMES


@dataclass
class InfVSRStreamState:
    r"""
    Where a [`~InfVSRPipeline.stream`] stands between two chunks: the caches of the current scene, the visual prompt
    and the number of frames done. Passed to `callback_on_chunk_end`; `state_dict()` saves it and
    [`~InfVSRPipeline.load_stream_state`] restores it, so an interrupted job can continue where it stopped.

    Args:
        upscale_factor (`int`): Scale of the stream.
        frames_done (`int`): Input frames restored so far (markers not counted).
        frame_size (`tuple[int, int]`, *optional*): `(height, width)` of the input frames, once known.
        refresh_pending (`bool`): A `REFRESH_REFERENCE` marker waits for the next chunk start.
    """

    upscale_factor: int
    frames_done: int = 0
    frame_size: tuple[int, int] | None = None
    refresh_pending: bool = False
    scene: _SceneState | None = None

    def state_dict(self) -> dict:
        """Plain tensors and values (on the CPU), loadable with `torch.load(..., weights_only=True)`."""
        scene = None
        if self.scene is not None:
            prompt = self.scene.visual_prompt
            scene = {
                "vae_stream": self.scene.vae_stream.state_dict(),
                "kv_cache": self.scene.kv_cache.state_dict(),
                "visual_prompt": prompt.cpu() if prompt is not None else None,
                "refresh_reference": self.scene.refresh_reference,
            }
        return {
            "upscale_factor": self.upscale_factor,
            "frames_done": self.frames_done,
            "frame_size": self.frame_size,
            "refresh_pending": self.refresh_pending,
            "scene": scene,
        }


class InfVSRPipeline(DiffusionPipeline):
    r"""
    Video super-resolution with InfVSR: the video is cut into chunks (9 frames, then 12), each restored by a single
    forward pass of a causal Wan2.1 DiT that attends to its own tokens and a rolling KV cache of the previous chunk,
    conditioned on a DAPE visual prompt of a reference frame. Memory is constant in the video length.

    Args:
        transformer ([`CausalWanTransformer3DModel`]): The causal DiT (`text_dim=512`).
        vae ([`~diffusers.AutoencoderKLWan`]): The Wan2.1 VAE, driven in streaming mode.
        image_encoder ([`DAPEImageEncoder`]): Swin-L visual-prompt encoder with DAPE merged.
        scheduler ([`InfVSRScheduler`]): Flow-matching schedule (shift 5) and the one-step timestep.

        cache_frames (`int`, defaults to 3):
            Past latent frames each chunk attends to through the KV cache (the paper's M = 3; 0 disables the cache).
        vae_tile_threshold (`int`, defaults to 1024):
            The VAE works in spatial tiles when the padded output height exceeds this many pixels (as in the release).
            `pipe.vae.enable_tiling()` tiles every frame larger than one tile instead, with the VAE's tile settings.
        vae_tile_latent_size (`int`, defaults to 128), vae_tile_latent_stride (`int`, defaults to 110):
            Tile side and distance between tile starts, in latent pixels (8 output pixels each).

    The settings are part of the pipeline config: they are saved in `model_index.json`, reloaded by `from_pretrained`
    (where they may also be overridden, e.g. `from_pretrained(path, cache_frames=2)`), and carried over by
    `from_pipe`. Assigning one (`pipe.cache_frames = 2`) updates the config.
    """

    model_cpu_offload_seq = "image_encoder->transformer->vae"

    def __init__(
        self,
        transformer: CausalWanTransformer3DModel,
        vae: AutoencoderKLWan,
        image_encoder: DAPEImageEncoder,
        scheduler: InfVSRScheduler,
        cache_frames: int = 3,
        vae_tile_threshold: int = 1024,
        vae_tile_latent_size: int = 128,
        vae_tile_latent_stride: int = 110,
    ):
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae, image_encoder=image_encoder, scheduler=scheduler)
        self.register_to_config(
            cache_frames=cache_frames,
            vae_tile_threshold=vae_tile_threshold,
            vae_tile_latent_size=vae_tile_latent_size,
            vae_tile_latent_stride=vae_tile_latent_stride,
        )
        self.vae_scale_factor_spatial = vae.config.scale_factor_spatial if vae is not None else 8
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor_spatial)
        # Plain attributes mirrored in the config: assigning one later updates the config too (DiffusionPipeline).
        self.cache_frames = cache_frames
        self.vae_tile_threshold = vae_tile_threshold
        self.vae_tile_latent_size = vae_tile_latent_size
        self.vae_tile_latent_stride = vae_tile_latent_stride

    # `model_index.json` is in the Hub's remote-code layout so that diffusers alone can load it (see `hub.py`). Read
    # back by this class, it names this class (for `download` and `from_pretrained`, which both read the file here)
    # and, once the files are local, the installed component classes: `DiffusionPipeline.from_pretrained` then runs
    # unchanged and executes no code from the repository.

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict:
        return package_class_name(super()._dict_from_json_file(json_file), cls)

    @classmethod
    def extract_init_dict(cls, config_dict: dict, **kwargs):
        return super().extract_init_dict(package_component_modules(config_dict, cls), **kwargs)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ):
        r"""
        [`~diffusers.DiffusionPipeline.save_pretrained`], plus the package's source as Hub remote code, so the folder
        also loads with `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` where `diffusers_infvsr`
        is not installed. With `push_to_hub=True` (and `repo_id=...`), the model card names the repository.
        """
        super().save_pretrained(
            save_directory, safe_serialization=safe_serialization, variant=variant, max_shard_size=max_shard_size
        )
        write_remote_code(self, save_directory)
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", str(save_directory).split(os.path.sep)[-1])
            self._push_folder(save_directory, repo_id, **kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
    ) -> str:
        r"""
        Upload the pipeline (weights, remote code and a model card that names `repo_id`) to the Hugging Face Hub.

        Example:

        ```py
        >>> pipe.push_to_hub("your-name/InfVSR-diffusers")
        ```
        """
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, safe_serialization=safe_serialization, variant=variant)
            return self._push_folder(
                folder, repo_id, commit_message=commit_message, private=private, token=token, create_pr=create_pr
            )

    def _push_folder(self, folder, repo_id, commit_message=None, private=None, token=None, create_pr=False):
        repo_id = create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        template = default_model_card_path()
        if template is not None:
            card = render_model_card(template, repo_id)
            Path(folder, "README.md").write_text(card, encoding="utf-8")
        return self._upload_folder(folder, repo_id, token=token, commit_message=commit_message, create_pr=create_pr)

    def enable_context_parallel(self, config: ContextParallelConfig) -> None:
        r"""
        Run the transformer of one stream on several processes (one GPU each) with diffusers' context parallelism:
        every chunk's tokens are split over the processes, which exchange them in attention (Ulysses: all-to-all over
        the heads; ring: the keys and values passed around), together with the KV cache. Helps when one scene is long
        or the frames are large (4K); spreading scenes or videos over processes is faster otherwise.

        Every process calls this and then the same `stream`/`__call__` with the same frames; all get the same output,
        and the VAE and image encoder run whole on each. `torch.distributed` must be initialised first (e.g. launched
        with `torchrun`). This is `pipe.transformer.enable_parallelism(config=config)`.

        Example:

        ```py
        >>> # torchrun --nproc_per_node 2 upscale.py
        >>> import torch.distributed as dist
        >>> from diffusers import ContextParallelConfig

        >>> dist.init_process_group()
        >>> device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        >>> pipe = InfVSRPipeline.from_pretrained("path/to/InfVSR-diffusers", dtype=torch.bfloat16).to(device)
        >>> pipe.enable_context_parallel(ContextParallelConfig(ulysses_degree=dist.get_world_size()))
        >>> frames = pipe(video=video).frames[0]  # the same video on every process
        ```
        """
        self.transformer.enable_parallelism(config=config)

    def check_inputs(self, upscale_factor) -> None:
        if isinstance(upscale_factor, bool) or not isinstance(upscale_factor, (int, np.integer)) or upscale_factor < 1:
            raise ValueError(f"`upscale_factor` must be an integer >= 1, got {upscale_factor!r}.")

    @staticmethod
    def frame_to_tensor(frame) -> torch.Tensor:
        r"""
        One low-resolution frame as a float `(3, height, width)` tensor in [0, 1]. Accepts a PIL image, a `(height,
        width, 3)` numpy array (uint8, or float in [0, 1]) or a `(3, height, width)` tensor (uint8, or float in [0, 1]).
        """
        if isinstance(frame, PIL.Image.Image):
            frame = np.asarray(frame.convert("RGB"))
        if isinstance(frame, np.ndarray):
            if frame.ndim != 3 or frame.shape[-1] != 3:
                raise ValueError(f"A numpy frame must have shape (height, width, 3), got {frame.shape}.")
            frame = torch.from_numpy(np.array(frame)).permute(2, 0, 1)  # a copy: the array may be read-only
        if not isinstance(frame, torch.Tensor):
            raise ValueError(f"Frames must be PIL images, numpy arrays or torch tensors, got {type(frame).__name__}.")
        if frame.ndim != 3 or frame.shape[0] != 3:
            raise ValueError(
                f"A frame must have 3 (RGB) channels, shaped (3, height, width); got {tuple(frame.shape)}."
            )
        if frame.dtype == torch.uint8:
            return frame.float() / 255
        frame = frame.float()
        if not torch.isfinite(frame).all():
            raise ValueError("The video contains NaN or infinite values.")
        if frame.min() < 0 or frame.max() > 1:
            raise ValueError(
                f"Float frames must be in [0, 1], got values in [{frame.min().item():.3g}, {frame.max().item():.3g}]. "
                "Pass uint8 frames or divide by 255."
            )
        return frame

    @staticmethod
    def video_to_frames(video) -> list:
        r"""Split a whole video (list of frames, `(T, H, W, 3)` array, `(T, 3, H, W)` or `(1, 3, T, H, W)` tensor)."""
        if isinstance(video, np.ndarray):
            if video.ndim != 4:
                raise ValueError(f"A numpy video must have shape (frames, height, width, 3), got {video.shape}.")
            return list(video)
        if isinstance(video, torch.Tensor):
            if video.ndim == 5:
                if video.shape[0] != 1:
                    raise ValueError(
                        f"A 5-D video tensor must be (1, 3, frames, height, width), got {tuple(video.shape)}."
                    )
                video = video[0].transpose(0, 1)
            if video.ndim != 4:
                raise ValueError(
                    f"A video tensor must be (frames, 3, height, width) or (1, 3, frames, height, width), got "
                    f"{tuple(video.shape)}."
                )
            return list(video)
        if isinstance(video, (list, tuple)):
            return list(video)
        raise ValueError(
            f"`video` must be a list of frames, a numpy array or a torch tensor, got {type(video).__name__}."
        )

    def _vae_stream(self, output_height: int) -> WanVAEStream:
        vae = self.vae
        if vae.use_tiling:
            # `vae.enable_tiling(...)`: tiles of the VAE's own size and stride (square: the height settings).
            if (vae.tile_sample_min_width, vae.tile_sample_stride_width) != (
                vae.tile_sample_min_height,
                vae.tile_sample_stride_height,
            ):
                logger.warning(
                    "The streaming VAE uses square tiles: taking `tile_sample_min_height` and "
                    "`tile_sample_stride_height`, ignoring the width settings of `vae.enable_tiling`."
                )
            tile_size = vae.tile_sample_min_height // self.vae_scale_factor_spatial
            tile_stride = vae.tile_sample_stride_height // self.vae_scale_factor_spatial
        elif output_height > self.vae_tile_threshold:
            tile_size, tile_stride = self.vae_tile_latent_size, self.vae_tile_latent_stride
        else:
            tile_size = tile_stride = None
        return WanVAEStream(vae, tile_size, tile_stride, offload_idle_tiles=tile_size is not None)

    def _new_scene(self, frame_size: tuple[int, int], upscale_factor: int) -> _SceneState:
        output_height = math.ceil(frame_size[0] * upscale_factor / 16) * 16
        return _SceneState(self._vae_stream(output_height), CausalWanKVCache(self.cache_frames))

    def load_stream_state(self, state_dict: dict) -> InfVSRStreamState:
        r"""
        Rebuild a stream position saved with [`InfVSRStreamState.state_dict`], to pass as `state=` to
        [`~InfVSRPipeline.stream`] (same pipeline weights and settings as when it was saved).
        """
        device = self._execution_device
        frame_size = tuple(state_dict["frame_size"]) if state_dict["frame_size"] is not None else None
        state = InfVSRStreamState(
            upscale_factor=state_dict["upscale_factor"],
            frames_done=state_dict["frames_done"],
            frame_size=frame_size,
            refresh_pending=state_dict["refresh_pending"],
        )
        saved_scene = state_dict["scene"]
        if saved_scene is not None:
            state.scene = self._new_scene(frame_size, state.upscale_factor)
            state.scene.vae_stream.load_state_dict(saved_scene["vae_stream"], device)
            state.scene.kv_cache = CausalWanKVCache.from_state_dict(saved_scene["kv_cache"], device)
            prompt = saved_scene["visual_prompt"]
            state.scene.visual_prompt = prompt.to(device) if prompt is not None else None
            state.scene.refresh_reference = saved_scene["refresh_reference"]
        return state

    def _restore_chunk(self, frames: list[torch.Tensor], scene: _SceneState, upscale_factor: int):
        """Upscale, encode, one DiT step and decode of one chunk; returns (pixels in [-1, 1], restored latents)."""
        device, dtype = self._execution_device, self.transformer.dtype
        num_frames = len(frames)
        first = scene.kv_cache.next_frame == 0
        padded_frames = num_frames + (-(num_frames - int(first)) % 4)  # 1 + 4k for a scene's first chunk, else 4k
        frames = frames + [frames[-1]] * (padded_frames - num_frames)

        low_res = torch.stack(frames).to(device=device, dtype=torch.float32)  # (T, 3, h, w) in [0, 1]
        if scene.visual_prompt is None or scene.refresh_reference:
            scene.visual_prompt = self.image_encoder.encode_reference(low_res[:1])
            scene.refresh_reference = False
        upscaled = F.interpolate(
            low_res * 2 - 1, scale_factor=upscale_factor, mode="bicubic", align_corners=False, antialias=True
        )
        height, width = upscaled.shape[-2:]
        upscaled = F.pad(upscaled, (0, -width % 16, 0, -height % 16), mode="replicate")
        video = upscaled.transpose(0, 1).unsqueeze(0)  # (1, 3, T, H, W)

        latents = scene.vae_stream.encode(video).to(dtype)
        timestep = torch.full((1,), self.scheduler.timestep, device=device)
        velocity, scene.kv_cache = self.transformer(
            latents, timestep, scene.visual_prompt.to(dtype), kv_cache=scene.kv_cache, return_dict=False
        )
        restored = self.scheduler.one_step(velocity, latents)
        pixels = scene.vae_stream.decode(restored)
        return pixels[:, :, :num_frames, :height, :width], restored

    @torch.no_grad()
    def stream(
        self,
        frames: Iterable,
        upscale_factor: int = 4,
        output_type: str = "np",
        total_frames: int | None = None,
        state: InfVSRStreamState | None = None,
        callback_on_chunk_end: Callable[["InfVSRPipeline", InfVSRStreamState], None] | None = None,
    ) -> Iterator:
        r"""
        Upscale frames from any iterable (e.g. a generator over a video of unknown length), yielding upscaled frames
        chunk by chunk. Only one chunk of input frames is held at a time, so memory does not grow with the video.

        Args:
            frames (`Iterable`):
                Low-resolution frames (PIL images, `(H, W, 3)` arrays, or `(3, H, W)` tensors; uint8 or float in
                [0, 1]), optionally interleaved with [`StreamMarker`] values to mark scene cuts and reference refreshes.
            upscale_factor (`int`, defaults to 4): Integer scale.
            output_type (`str`, defaults to `"np"`):
                `"np"` yields `(H, W, 3)` float arrays in [0, 1], `"pt"` `(3, H, W)` tensors in [0, 1], `"pil"` PIL
                images, `"latent"` the restored latents of each chunk `(1, 16, latent_frames, h, w)`.
            total_frames (`int`, *optional*): Number of frames, for the progress bar.
            state (`InfVSRStreamState`, *optional*):
                Continue a stream from this position (from [`~InfVSRPipeline.load_stream_state`]); `frames` then
                starts with the first frame not done yet. The scale is taken from the state.
            callback_on_chunk_end (`Callable`, *optional*):
                Called as `callback_on_chunk_end(pipe, state)` after the last frame of every chunk has been consumed,
                e.g. to save `state.state_dict()` together with everything written so far.

        Yields:
            Upscaled frames in order (or one latent tensor per chunk for `output_type="latent"`).
        """
        if state is None:
            self.check_inputs(upscale_factor)
            state = InfVSRStreamState(upscale_factor)
        if output_type not in ("np", "pt", "pil", "latent"):
            raise ValueError(f"`output_type` must be 'np', 'pt', 'pil' or 'latent', got {output_type!r}.")
        buffer = []
        # tqdm treats an infinite total as unknown: it then shows frames done and the rate.
        progress = self.progress_bar(total=total_frames if total_frames is not None else float("inf"))
        progress.update(state.frames_done)

        def run_chunk():
            pixels, restored = self._restore_chunk(buffer, state.scene, state.upscale_factor)
            if output_type == "latent":
                yield restored
            else:
                yield from self.video_processor.postprocess_video(pixels, output_type=output_type)[0]
            state.frames_done += len(buffer)
            progress.update(len(buffer))
            buffer.clear()
            if callback_on_chunk_end is not None:
                callback_on_chunk_end(self, state)

        try:
            for item in frames:
                if item is StreamMarker.NEW_SCENE:
                    if buffer:
                        yield from run_chunk()
                    state.scene = None
                    continue
                if item is StreamMarker.REFRESH_REFERENCE:
                    state.refresh_pending = True
                    continue
                frame = self.frame_to_tensor(item)
                frame_size = tuple(frame.shape[-2:])
                if state.frame_size is None:
                    state.frame_size = frame_size
                elif frame_size != state.frame_size:
                    raise ValueError(
                        f"All frames must have the same size: the video started with (height, width) = "
                        f"{state.frame_size}, but frame {state.frames_done + len(buffer)} has {frame_size}."
                    )
                if state.scene is None:
                    state.scene = self._new_scene(frame_size, state.upscale_factor)
                if not buffer and state.refresh_pending:
                    state.scene.refresh_reference, state.refresh_pending = True, False
                buffer.append(frame)
                if len(buffer) == state.scene.chunk_size:
                    yield from run_chunk()
            if buffer:
                yield from run_chunk()
            if state.frame_size is None:
                raise ValueError("The video is empty: at least one frame is needed.")
        finally:
            progress.close()
            self.maybe_free_model_hooks()

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        video,
        upscale_factor: int = 4,
        scene_starts: Iterable[int] = (),
        reference_refreshes: Iterable[int] = (),
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> InfVSRPipelineOutput | tuple:
        r"""
        Upscale a whole video held in memory. For long videos use [`~InfVSRPipeline.stream`], which this calls.

        Args:
            video (`list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
                Low-resolution frames: a list of PIL images or arrays, a `(T, H, W, 3)` array (uint8, or float in
                [0, 1]), or a `(T, 3, H, W)` / `(1, 3, T, H, W)` tensor (uint8, or float in [0, 1]). Any frame count
                >= 1 and any size; padding is added and removed as in the official release.
            upscale_factor (`int`, defaults to 4): Integer scale.
            scene_starts (`Iterable[int]`, *optional*):
                Indices of frames that start a new scene (cache, temporal index, VAE state and reference restart).
            reference_refreshes (`Iterable[int]`, *optional*):
                Indices of frames from which the next chunk takes a new reference frame, keeping the caches.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` or `"latent"`.
            return_dict (`bool`, defaults to `True`): Return an [`InfVSRPipelineOutput`] instead of a tuple.

        Examples:

        Returns:
            [`InfVSRPipelineOutput`] or `tuple`: the upscaled frames.
        """
        frames = self.video_to_frames(video)
        if not frames:
            raise ValueError("The video is empty: at least one frame is needed.")
        marked = insert_markers(frames, scene_starts, reference_refreshes)
        outputs = list(self.stream(marked, upscale_factor, output_type, total_frames=len(frames)))
        if output_type == "latent":
            result = torch.cat(outputs, dim=2)
        elif output_type == "pil":
            result = [outputs]
        elif output_type == "np":
            result = np.stack(outputs)[None]
        else:
            result = torch.stack(outputs)[None]

        if not return_dict:
            return (result,)
        return InfVSRPipelineOutput(frames=result)
