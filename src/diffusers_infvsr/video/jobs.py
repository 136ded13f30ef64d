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
"""Jobs: one output file at a time, under a lock, in a hidden folder beside it that holds the job's identity,
atomic checkpoints and finished segments, so that no failure loses finished work and `--resume` continues it.

Layout of the job folder `.NAME.infvsr-partial/`:

- `job.json`: what makes the output's pixels (input content, model weights, settings); resuming needs the same.
- `segment-NNNNNN-PTS.mp4`: finished H.264 segments; their timestamps count from 0 (MP4 keeps them exactly only
  then) and belong at PTS (the input's time base, counted from the first frame of the job).
- `checkpoint-FFFFFFFFF.pt`: stream state after F frames and the segments holding them; the newest two are kept.
- `video.mp4` + `joined.json`: all segments joined once every frame is done; only the final mux is left.
- `plan.json` and `scene-NNNNNN/`: a job whose scenes are shared among processes (`video/scene_split.py`); each
  scene's folder holds its own segments and checkpoints, and `done.json` once the scene is finished.

torch and the pipeline are imported where frames are restored, so that every check before a job (`check_job`, the
lock) answers without them.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .overlap import BackgroundIterator
from .ranks import Ranks
from .reading import (
    HDR_TRANSFERS,
    DamagedVideoError,
    VideoFileError,
    VideoInfo,
    decode_frames,
    probe_video,
    scan_packets,
)
from .writing import (
    OUTPUT_EXTENSIONS,
    H264Writer,
    check_free_space,
    check_stream_copy,
    extra_streams_size,
    join_segments,
    mux_output,
)


if TYPE_CHECKING:
    from ..pipeline_infvsr import InfVSRPipeline

logger = logging.getLogger(__name__)

JOB_FORMAT = 2  # bump when the job folder's layout changes
MAX_OUTPUT_SIDE = 8192  # H.264 level 6.2 (the highest) allows at most 8192 pixels a side


def work_folder(output_path: str | os.PathLike) -> Path:
    """The hidden job folder beside `output_path`."""
    output_path = Path(output_path)
    return output_path.with_name(f".{output_path.name}.infvsr-partial")


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: Path, write: Callable) -> None:
    r"""Write `path` through `write(file)` into a temporary file beside it, flushed to disk, then renamed over it: a
    reader sees the old file or the complete new one, never a half-written one (also when the disk fills up)."""
    temporary = path.with_name(path.name + ".partial")
    try:
        with open(temporary, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


class JobLock:
    r"""
    One job per output: an exclusive `flock` on `.NAME.infvsr-lock` beside the output, which names the holder's
    process id and host. The kernel drops the lock when its process dies, so a lock left by a crash (a stale lock) is
    simply taken over; where `flock` is unavailable (some network file systems) a lock whose process is gone from this
    host counts as stale.

    Example:

    ```py
    >>> with JobLock("out.mp4"):
    ...     ...  # a second run on out.mp4 now fails with a VideoFileError naming this process
    ```
    """

    def __init__(self, output_path: str | os.PathLike):
        output_path = Path(output_path)
        self.output_path = output_path
        self.path = output_path.with_name(f".{output_path.name}.infvsr-lock")
        self.descriptor: int | None = None

    def _holder(self) -> str:
        try:
            owner = json.loads(self.path.read_text())
            return f"process {owner['pid']} on {owner['host']}, started {owner['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def _stale_without_flock(self) -> bool:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return True
        if owner.get("host") != socket.gethostname():
            return False
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._acquire()
        except OSError as error:
            raise VideoFileError(f"Cannot write to the output folder {self.path.parent}: {error.strerror}.") from error

    def _acquire(self) -> None:
        while True:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                raise VideoFileError(
                    f"{self.output_path} is being written by another infvsr run ({self._holder()}). Wait for it to "
                    "finish, or stop that run first; --overwrite never takes over a live job."
                ) from None
            except OSError as error:
                if error.errno != errno.ENOLCK or not self._stale_without_flock():
                    os.close(descriptor)
                    raise VideoFileError(
                        f"{self.output_path} is locked by {self._holder()}. If that run is gone, delete {self.path}."
                    ) from None
            try:
                same_file = os.stat(self.path).st_ino == os.fstat(descriptor).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:  # not removed by its previous holder between our open and our lock
                break
            os.close(descriptor)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(descriptor, 0)
        os.write(descriptor, json.dumps(owner).encode())
        self.descriptor = descriptor

    def release(self) -> None:
        if self.descriptor is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.descriptor)
            self.descriptor = None

    def __enter__(self) -> "JobLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def input_fingerprint(path: str | os.PathLike, block: int = 1 << 20, samples: int = 16) -> str:
    r"""A fingerprint of a file's content, not its name or date: its size and a hash of its first and last `block`
    bytes and `samples` blocks spread over it (fast for files of any size)."""
    size = os.path.getsize(path)
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as file:
        offsets = {0, max(size - block, 0)} | {size * index // samples for index in range(1, samples)}
        for offset in sorted(offsets):
            file.seek(offset)
            digest.update(file.read(block))
    return digest.hexdigest()


def model_fingerprint(pipe: InfVSRPipeline) -> str:
    r"""A fingerprint of the pipeline's weights (names, shapes, dtypes and up to 4096 values of every tensor), the same
    whichever path or Hub id they were loaded from."""
    import torch

    digest = hashlib.blake2b(digest_size=16)
    for component in ("transformer", "vae", "image_encoder"):
        for name, tensor in getattr(pipe, component).state_dict().items():
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)].to("cpu", torch.float64).numpy()
            digest.update(f"{component}.{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(sample.tobytes())
    return digest.hexdigest()


def _load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing, or damaged (e.g. 0 bytes after a full disk under an older version)


class JobFolder:
    r"""
    The hidden folder of one output's job: its identity, its segments and its checkpoints (see the module's
    docstring). All files in it are written atomically, so a failure at any moment leaves a resumable folder. `path`
    names another folder for part of the job (one scene of a video split among processes).
    """

    def __init__(self, output_path: Path, path: Path | None = None):
        self.output_path = output_path
        self.path = path or work_folder(output_path)
        self.segments: list[str] = []

    @property
    def video(self) -> Path:
        return self.path / "video.mp4"

    def settings(self) -> dict | None:
        return _load_json(self.path / "job.json")

    def joined(self) -> dict | None:
        joined = _load_json(self.path / "joined.json")
        return joined if joined is not None and self.video.exists() else None

    def start(self, settings: dict) -> None:
        """A fresh job: an empty folder with `settings` as its identity."""
        if self.path.exists():
            shutil.rmtree(self.path)
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        self.path.mkdir()
        self.write_json("job.json", settings)

    def write_json(self, name: str, data: dict) -> None:
        write_atomically(self.path / name, lambda file: file.write(json.dumps(data, indent=2).encode()))

    def checkpoints(self) -> list[Path]:
        """Checkpoint files, newest first."""
        return sorted(self.path.glob("checkpoint-*.pt"), reverse=True)

    def save_checkpoint(self, stream_state: dict) -> None:
        import torch

        path = self.path / f"checkpoint-{stream_state['frames_done']:09d}.pt"
        write_atomically(path, lambda file: torch.save({"stream": stream_state, "segments": self.segments}, file))
        for old in self.checkpoints()[2:]:
            old.unlink()

    def load_checkpoint(self) -> dict | None:
        r"""The newest checkpoint that loads and whose segments are all there (a damaged newest one falls back to
        the one before it); segments written after it are deleted."""
        import torch

        for path in self.checkpoints():
            try:
                checkpoint = torch.load(path, weights_only=True)
            except Exception:  # noqa: BLE001 - any damage (truncation, bad zip, bad pickle) means: use an older one
                continue
            if all((self.path / name).exists() for name in checkpoint["segments"]):
                self.keep_segments(checkpoint["segments"])
                return checkpoint
        self.keep_segments([])
        return None

    def keep_segments(self, segments: list[str]) -> None:
        self.segments = list(segments)
        for leftover in self.path.glob("segment-*"):
            if leftover.name not in self.segments:
                leftover.unlink()

    def next_segment(self, start: int) -> Path:
        """The file of the next segment, whose first frame is shown at `start`."""
        return self.path / f"segment-{len(self.segments):06d}-{start}.mp4"

    def join(self, joined: dict, time_base: Fraction, segments: list[tuple[str, int]] | None = None) -> None:
        r"""Join the segments (frames written in `time_base`; default: this folder's, else `(path, start)` pairs) into
        `video.mp4`, after checking the free space it needs, and record `joined` with it; then this folder's segments
        and checkpoints are deleted, which frees their space for the final mux."""
        segments = self.segments_with_starts() if segments is None else segments
        check_free_space(self.path, sum(os.path.getsize(path) for path, _ in segments), "Joining the video segments")
        partial = self.path / "video.partial.mp4"
        try:
            join_segments(segments, str(partial), time_base)
            with open(partial, "rb") as file:
                os.fsync(file.fileno())
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, self.video)
        self.write_json("joined.json", joined)
        self.keep_segments([])
        for checkpoint in self.checkpoints():
            checkpoint.unlink()

    def segments_with_starts(self) -> list[tuple[str, int]]:
        return [(str(self.path / name), int(name.rsplit("-", 1)[1].split(".")[0])) for name in self.segments]


class _SegmentWriter:
    """Writes frames into the job's current segment; a checkpoint closes it, the next frame opens a new one."""

    def __init__(self, job: JobFolder, size, source: VideoInfo, time_base: Fraction, crf: int, lossless: bool):
        self.job, self.size, self.source, self.crf, self.lossless = job, size, source, crf, lossless
        self.time_base = time_base
        self.writer: H264Writer | None = None
        self.current: Path | None = None
        self.start = 0

    def write(self, frame: np.ndarray, pts: int) -> None:
        if self.writer is None:
            self.current, self.start = self.job.next_segment(pts), pts
            self.writer = H264Writer(str(self.current), *self.size, self.source.fps, self.crf, self.lossless,
                                     time_base=self.time_base, color=self.source.color,
                                     sample_aspect_ratio=self.source.sample_aspect_ratio)  # fmt: skip
        self.writer.write(frame, pts - self.start)

    def close_segment(self) -> bool:
        """Finish the segment being written, if any; return whether there was one."""
        if self.writer is None:
            return False
        writer, self.writer = self.writer, None
        writer.close()
        with open(self.current, "rb") as file:
            os.fsync(file.fileno())
        self.job.segments.append(self.current.name)
        return True

    def discard(self) -> None:
        """Drop the segment being written (after a failure); finished segments stay."""
        if self.writer is not None:
            try:
                self.writer.container.close()
            except Exception:  # noqa: BLE001 - the segment is deleted anyway
                pass
            self.writer = None
            self.current.unlink(missing_ok=True)


def _skip_frames(items: Iterable, num_frames: int) -> Iterator:
    """`items` (frames and markers) after its first `num_frames` frames, with the markers that follow them."""
    items = iter(items)
    for item in items:
        if num_frames == 0:
            yield item
            break
        if isinstance(item, np.ndarray):
            num_frames -= 1
    yield from items


@dataclass
class UpscaleResult:
    r"""
    What [`upscale_video`] did.

    Args:
        output_path (`str`): The finished file.
        num_frames (`int`): Frames written.
        scene_starts (`list[int]`): First frame of every scene (`[0]` without scene detection; empty when a resumed
            job only had its final mux left).
        reference_refreshes (`list[int]`): Frames that became the reference within a scene.
        resumed_from (`int`): Frames taken over from an interrupted run (0 for a fresh run).
    """

    output_path: str
    num_frames: int
    scene_starts: list[int]
    reference_refreshes: list[int]
    resumed_from: int = 0


def check_output_size(width: int, height: int, upscale_factor: int) -> None:
    """Raise `VideoFileError` if H.264 cannot hold frames of `width` x `height` upscaled by `upscale_factor`."""
    out_width, out_height = width * upscale_factor, height * upscale_factor
    if max(out_width, out_height) > MAX_OUTPUT_SIDE:
        raise VideoFileError(
            f"{width}x{height} upscaled x{upscale_factor} is {out_width}x{out_height}, but H.264 allows at most "
            f"{MAX_OUTPUT_SIDE} pixels a side. Use a smaller --scale, or downscale the input first."
        )


def _check_model_frame_size(pipe: InfVSRPipeline, width: int, height: int, upscale_factor: int) -> None:
    # Spatial RoPE positions come from a table: one row per 16 output pixels (VAE x8, patch 2).
    rows = pipe.transformer.config.rope_max_seq_len
    tokens = max(-(-side * upscale_factor // 16) for side in (width, height))
    if tokens > rows:
        raise VideoFileError(
            f"{width}x{height} upscaled x{upscale_factor} needs {tokens} positions a side, but the model's position "
            f"table has {rows} (at most {rows * 16} output pixels a side). Use a smaller --scale or a smaller input."
        )


def check_job(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    upscale_factor: int = 4,
    crf: int = 18,
    overwrite: bool = False,
    allow_damaged: bool = False,
    start: float = 0.0,
) -> VideoInfo:
    r"""
    Every check of a job that needs no model, so that a command can fail before loading one: the output's name and
    type, the input (readable, SDR, intact unless `allow_damaged`, with frames after `start`), the output frame
    size, and whether the input's other streams fit the output container. Returns the input's [`VideoInfo`].

    Raises:
        `VideoFileError`: with a message that says what to do.
    """
    input_path, output_path = os.fspath(input_path), Path(output_path)
    if output_path.suffix.lower() not in OUTPUT_EXTENSIONS:
        raise VideoFileError(f"{output_path}: the output must be one of {', '.join(OUTPUT_EXTENSIONS)}.")
    if output_path.is_dir():
        raise VideoFileError(f"{output_path} is a folder; name an output file.")
    if output_path.exists() and not overwrite:
        raise VideoFileError(f"{output_path} already exists. Pass --overwrite to replace it.")
    if os.path.abspath(input_path) == os.path.abspath(output_path):
        raise VideoFileError(f"{output_path} is the input file; choose another output name.")
    if not 0 <= crf <= 51:
        raise VideoFileError(f"crf must be between 0 and 51, got {crf}.")
    source = probe_video(input_path)
    if source.color.is_hdr:
        raise VideoFileError(
            f"{input_path} is HDR ({HDR_TRANSFERS[source.color.transfer]}). InfVSR restores SDR video only, and "
            "upscaling the HDR signal as SDR would change its colours. Tone-map it to SDR (BT.709) first."
        )
    check_output_size(source.width, source.height, upscale_factor)
    scan = scan_packets(input_path)
    if scan.damage is not None and not allow_damaged:
        raise scan.damage
    source.frame_grid = scan.frame_grid
    if scan.damage is None:
        source.num_frames = scan.frames
    if start > 0 and next(decode_frames(input_path, start, 1, allow_damaged), None) is None:
        raise VideoFileError(f"{input_path} has no video frames after {start} s.")
    check_stream_copy(source, str(output_path))
    return source


def interlaced_warning(source: VideoInfo) -> str:
    return (
        f"{source.path} is interlaced. InfVSR upscales every frame as a progressive picture, so combing is upscaled "
        "too; for a clean result deinterlace it first, e.g. `ffmpeg -i IN -vf bwdif -c:a copy OUT.mkv`."
    )


def _resume_or_start(job: JobFolder, settings: dict, overwrite: bool, resume: bool) -> bool:
    """Prepare the job folder; return whether an interrupted job is continued."""
    if job.path.exists():
        saved = job.settings()
        if resume and saved == settings:
            return True
        if not overwrite:
            if not resume:
                raise VideoFileError(
                    f"An interrupted job for {job.output_path} exists ({job.path}). Pass --resume to continue it, or "
                    "--overwrite to discard it and start over."
                )
            if saved is None:
                problem = "its job.json is missing or damaged, so it cannot be checked"
            else:
                changed = sorted(key for key in settings.keys() | saved.keys() if settings.get(key) != saved.get(key))
                problem = f"it used other settings, input or model ({', '.join(changed)})"
            raise VideoFileError(
                f"Cannot resume {job.output_path}: {problem}. Run it with the same input, model and settings, or "
                "add --overwrite to discard it and start over."
            )
    try:
        job.start(settings)
    except OSError as error:
        raise VideoFileError(
            f"Cannot write to the output folder {job.output_path.parent}: {error.strerror}."
        ) from error
    return False


def _disk_full(job: JobFolder, error: BaseException) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        error = error.__cause__ or error.__context__
    try:  # torch.save and some muxers report a full disk without its errno
        return shutil.disk_usage(job.path).free < 2**20
    except OSError:
        return False


def _kept_message(job: JobFolder, error: BaseException) -> str:
    what = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    if _disk_full(job, error):
        what = f"the disk is full ({what})"
    return (
        f"{job.output_path} was not finished: {what}. The work done so far is kept in {job.path}; fix the cause (e.g. "
        "free disk space) and run the same command with --resume to continue."
    )


def upscale_video(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    pipe: InfVSRPipeline,
    upscale_factor: int = 4,
    start: float = 0.0,
    max_frames: int | None = None,
    crf: int = 18,
    lossless: bool = False,
    scene_detection: bool = True,
    scene_threshold: float = 27.0,
    overwrite: bool = False,
    resume: bool = False,
    checkpoint_interval: float = 120.0,
    allow_damaged: bool = False,
    overlap: bool = True,
    source: VideoInfo | None = None,
    ranks: Ranks | None = None,
) -> UpscaleResult | None:
    r"""
    Upscale a video file into an H.264 file with InfVSR, streaming: frames are decoded, restored and encoded chunk by
    chunk, so memory stays flat however long the video is. Every frame keeps its input timestamp (variable frame
    rates stay variable); rotation, pixel shape and colour tags carry over; audio, subtitles, chapters, cover art and
    attachments are copied unchanged. Nothing appears under `output_path` until the file is complete: the work
    happens in a hidden, locked job folder beside it, with checkpoints at chunk boundaries at most every
    `checkpoint_interval` seconds, from which `resume=True` continues an interrupted or failed job with the same
    frames as an uninterrupted run. No failure deletes finished work.

    Args:
        input_path, output_path (`str`): Input video; output `.mp4` (default), `.mkv` or `.mov` file.
        pipe ([`InfVSRPipeline`]): The loaded pipeline (its progress bar shows frames, rate and time left).
        upscale_factor (`int`, defaults to 4): Integer scale.
        start (`float`, defaults to 0): Start time in seconds, counted from the first video frame.
        max_frames (`int`, *optional*): Upscale at most this many frames.
        crf (`int`, defaults to 18): x264 quality, 0-51 (lower is better).
        lossless (`bool`, defaults to `False`): Lossless x264 in yuv444p.
        scene_detection (`bool`, defaults to `True`):
            Detect scene cuts online ([`~scenes.SceneMarker`]) and restart the stream at each; refresh the reference
            frame within scenes.
        scene_threshold (`float`, defaults to 27.0): Content threshold for cuts and reference refreshes.
        overwrite (`bool`, defaults to `False`):
            Replace an existing output, or discard an interrupted job (never one that a live process holds).
        resume (`bool`, defaults to `False`): Continue an interrupted job for this output, if there is one.
        checkpoint_interval (`float`, defaults to 120): Seconds between checkpoints; 0 saves after every chunk.
        allow_damaged (`bool`, defaults to `False`):
            Go on past damaged input (missing frames then show the frame before them) instead of refusing it.
        overlap (`bool`, defaults to `True`):
            Decode (with scene detection), restore and encode at the same time, in three threads joined by bounded
            queues, so that the device does not wait for the host. `False` runs them one after the other in the
            calling thread: slower, with the same output and job files; meant for debugging and profiling.
        source ([`VideoInfo`], *optional*):
            What [`check_job`] returned for these same arguments, when the caller already ran it (the `infvsr` command
            does, before loading the model): the input is then not scanned and checked a second time.
        ranks ([`~video.ranks.Ranks`], *optional*):
            The processes of a `torchrun` / `accelerate launch` run, all of which call this for the same video: its
            scenes are then shared among them ([`~video.scene_split.upscale_by_scene`]) and the result, the same
            frames as one process makes, is returned on rank 0 (`None` on the others). A job split this way is also
            resumed this way, by any number of processes.

    Raises:
        `VideoFileError`: for unusable input or output, or a failure during the job, with a message that says what to
        do; once frames exist, the job folder is kept for `resume=True`.

    Example:

    ```py
    >>> from diffusers_infvsr import InfVSRPipeline
    >>> from diffusers_infvsr.video import upscale_video

    >>> pipe = InfVSRPipeline.from_pretrained("path/to/InfVSR-diffusers", dtype=torch.bfloat16).to("cuda")
    >>> upscale_video("input.mp4", "output.mp4", pipe)
    UpscaleResult(output_path='output.mp4', num_frames=1440, scene_starts=[0, 311, 902], ...)
    ```
    """
    input_path, output_path = os.fspath(input_path), Path(output_path)
    pipe.check_inputs(upscale_factor)
    settings = {
        "format": JOB_FORMAT,
        "input": input_fingerprint(input_path),
        "model": model_fingerprint(pipe),
        "dtype": str(pipe.transformer.dtype),
        "upscale_factor": upscale_factor,
        "start": start,
        "max_frames": max_frames,
        "crf": crf,
        "lossless": lossless,
        "scene_detection": scene_detection,
        "scene_threshold": scene_threshold,
    }
    from .scene_split import PLAN_FILE, upscale_by_scene

    job = JobFolder(output_path)
    split = scene_detection and ranks is not None and ranks.num_ranks > 1
    if split or (resume and (job.path / PLAN_FILE).exists()):
        ranks = ranks or Ranks(share_work=False)
        return upscale_by_scene(input_path, job, source, pipe, settings, ranks, overwrite, resume,
                                checkpoint_interval, allow_damaged, overlap)  # fmt: skip
    source = checked_source(input_path, output_path, source, pipe, settings, overwrite, allow_damaged)
    with JobLock(output_path):
        resuming = _resume_or_start(job, settings, overwrite, resume)
        return _run_job(job, source, pipe, settings, resuming, checkpoint_interval, allow_damaged, overlap)


def checked_source(input_path: str, output_path: Path, source: VideoInfo | None, pipe: InfVSRPipeline,
                   settings: dict, overwrite: bool, allow_damaged: bool) -> VideoInfo:  # fmt: skip
    """The input's [`VideoInfo`] once every check of the job has passed ([`check_job`], unless `source` is its
    answer already, and the model's frame size)."""
    upscale_factor = settings["upscale_factor"]
    if source is None:
        source = check_job(input_path, output_path, upscale_factor, settings["crf"], overwrite, allow_damaged,
                           settings["start"])  # fmt: skip
        if source.interlaced:
            logger.warning(interlaced_warning(source))
    _check_model_frame_size(pipe, source.width, source.height, upscale_factor)
    return source


def _run_job(
    job: JobFolder,
    source: VideoInfo,
    pipe: InfVSRPipeline,
    settings: dict,
    resuming: bool,
    checkpoint_interval: float,
    allow_damaged: bool,
    overlap: bool,
) -> UpscaleResult:
    joined = job.joined() if resuming else None
    marker = None
    resumed_from = 0
    if joined is None:
        checkpoint = job.load_checkpoint() if resuming else None
        state = pipe.load_stream_state(checkpoint["stream"]) if checkpoint else None
        resumed_from = state.frames_done if state else 0
        marker, joined = _upscale_frames(
            job, source, pipe, settings, state, checkpoint_interval, allow_damaged, overlap
        )
    finish_job(job, source, joined)
    return UpscaleResult(
        output_path=str(job.output_path),
        num_frames=joined["frames"],
        scene_starts=marker.scene_starts if marker else ([0] if resumed_from == 0 else []),
        reference_refreshes=marker.reference_refreshes if marker else [],
        resumed_from=resumed_from if marker else joined["frames"],
    )


def finish_job(job: JobFolder, source: VideoInfo, joined: dict) -> None:
    r"""The last step of a job whose frames are all in `video.mp4`: add the input's other streams into the output, put
    it under its final name and delete the job folder."""
    temporary_output = job.path / f"output{job.output_path.suffix}"
    try:
        check_free_space(job.path, extra_streams_size(source, joined["duration"]), "Adding the audio and subtitles")
        mux_output(str(job.video), str(temporary_output), source, joined["start"], joined["duration"])
    except (OSError, VideoFileError) as error:
        temporary_output.unlink(missing_ok=True)
        raise VideoFileError(
            f"{_kept_message(job, error)} The upscaled video without the input's other streams is {job.video}; "
            f"`ffmpeg -i {job.video} -c copy out.mkv` makes it playable on its own."
        ) from error
    os.replace(temporary_output, job.output_path)
    shutil.rmtree(job.path)


def _restore_frames(pipe, items, upscale_factor, total, state, checkpoint_interval) -> Iterator:
    r"""
    The model stage: the stream's frames as `(height, width, 3)` uint8 tensors on the host, each with the CUDA event
    that marks its copy done (`None` off CUDA), and after the last frame of every chunk due for a checkpoint, the
    stream state as of that chunk (a `dict`). Frames become uint8 on the device; on CUDA they come back through pinned
    memory without waiting, so the next chunk is launched while they travel.
    """
    import torch

    due: list[dict] = []
    last_checkpoint = time.monotonic()

    def take_checkpoint(pipe: InfVSRPipeline, state) -> None:
        nonlocal last_checkpoint
        if time.monotonic() - last_checkpoint >= checkpoint_interval:
            snapshot = state.state_dict()
            # On the CPU `state_dict()` shares tensors with the live stream, which moves on while this is written.
            due.append(copy.deepcopy(snapshot) if pipe._execution_device.type == "cpu" else snapshot)
            last_checkpoint = time.monotonic()

    stream = pipe.stream(
        items, upscale_factor, "pt", total_frames=total, state=state, callback_on_chunk_end=take_checkpoint
    )
    with contextlib.closing(stream):
        try:
            for frame in stream:
                yield from due  # the state after the previous chunk, whose frames all came before
                due.clear()
                image = frame.mul(255).round().to(torch.uint8).permute(1, 2, 0)
                if image.device.type != "cuda":
                    yield image.cpu(), None
                    continue
                host = torch.empty(image.shape, dtype=torch.uint8, pin_memory=True)
                host.copy_(image, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record()
                yield host, ready
        except (Exception, KeyboardInterrupt):
            yield from due  # a failure in the next chunk keeps the checkpoint of the chunks before it
            raise
    yield from due


def _upscale_frames(job, source, pipe, settings, state, checkpoint_interval, allow_damaged, overlap):
    r"""Restore every frame into segments, then join them into `video.mp4`; return the scene marker and the join."""
    from ..scenes import SceneMarker

    marker = None
    if settings["scene_detection"]:
        marker = SceneMarker(threshold=settings["scene_threshold"], reference_threshold=settings["scene_threshold"])
    start, max_frames = settings["start"], settings["max_frames"]
    decoded = decode_frames(source.path, start, max_frames, allow_damaged)
    span = restore_into_segments(job, decoded, marker.mark if marker else iter, source, pipe, settings, state,
                                 expected_frames(source, start, max_frames), checkpoint_interval, overlap)  # fmt: skip
    joined = joined_record(source, span.first_pts, span.last_pts, span.frames)
    with keeping_finished_work(job):
        job.join(joined, output_time_base(source))
    return marker, joined


def expected_frames(source: VideoInfo, start: float, max_frames: int | None) -> int | None:
    """How many frames a job from `start` covers, as far as the input's frame count is known (for progress bars)."""
    total = max(source.num_frames - round(start * source.fps), 0) if source.num_frames else None
    if max_frames is not None:
        total = min(total, max_frames) if total is not None else max_frames
    return total


def output_time_base(source: VideoInfo) -> Fraction:
    """The time base of the output's frames: the input's frame grid where it has one (e.g. 30000/1001 fps stored in
    milliseconds is then written exactly again), else the input's time base."""
    return 1 / source.frame_grid if source.frame_grid else source.time_base


def joined_record(source: VideoInfo, first_pts: int, last_pts: int, frames: int) -> dict:
    """What `joined.json` records of a job's frames: their number, start and duration in seconds."""
    return {
        "frames": frames,
        "start": float(first_pts * source.time_base),
        "duration": float((last_pts - first_pts) * source.time_base) + float(1 / source.fps),
    }


@dataclass
class Span:
    """Frames written into a job's segments: the input timestamps of the job's first frame and of the last frame
    written, and how many frames the job's folder holds."""

    first_pts: int
    last_pts: int
    frames: int


def restore_into_segments(
    job: JobFolder,
    decoded: Iterator,
    mark: Callable[[Iterator[np.ndarray]], Iterator],
    source: VideoInfo,
    pipe: InfVSRPipeline,
    settings: dict,
    state,
    total: int | None,
    checkpoint_interval: float,
    overlap: bool,
    first_pts: int | None = None,
) -> Span:
    r"""
    Restore the frames of `decoded` ([`DecodedFrame`]s) into the segments of `job`, with checkpoints; `mark` adds the
    stream markers (scene cuts, reference refreshes). The stream continues from `state` (the first `state.frames_done`
    frames are done). Output timestamps count from `first_pts` (default: the first frame's).

    Three stages: decoding with the markers, the model, and encoding into segments (which also saves the checkpoints,
    so a checkpoint always follows every frame before it into a closed segment). With `overlap` the first two run in
    background threads, a bounded number of frames ahead of the next stage; without it, one after the other in this
    thread. Both give the same frames and the same job files.
    """
    from ..pipeline_infvsr import CHUNK_FRAMES

    resumed_from = state.frames_done if state else 0
    # Timestamps of frames read and not yet written: appended by the decoding stage, taken by the encoding stage.
    timestamps: deque[int] = deque()
    first: list[int] = [] if first_pts is None else [first_pts]

    def frames() -> Iterator[np.ndarray]:
        for frame in decoded:
            if not first:
                first.append(frame.pts)
            timestamps.append(frame.pts)
            yield frame.image

    items = _skip_frames(mark(frames()), resumed_from)
    size = (source.width * settings["upscale_factor"], source.height * settings["upscale_factor"])
    time_base, grid = output_time_base(source), source.frame_grid

    def output_pts(pts: int) -> int:
        return round((pts - first[0]) * source.time_base * grid) if grid else pts - first[0]

    output = _SegmentWriter(job, size, source, time_base, settings["crf"], settings["lossless"])
    frames_written, skipped, last = resumed_from, resumed_from, None
    with keeping_finished_work(job, output.discard, lambda: frames_written):
        with contextlib.ExitStack() as stages:
            if overlap:
                items = stages.enter_context(BackgroundIterator(items, 2 * CHUNK_FRAMES, "infvsr-decode"))
            else:
                stages.enter_context(contextlib.closing(items))
            restored = _restore_frames(pipe, items, settings["upscale_factor"], total, state, checkpoint_interval)
            if overlap:  # closed first on the way out: the model stops after its chunk, then decoding stops
                restored = stages.enter_context(BackgroundIterator(restored, CHUNK_FRAMES, "infvsr-model"))
            else:
                stages.enter_context(contextlib.closing(restored))
            for item in restored:
                if isinstance(item, dict):  # every frame before this checkpoint is in the segment: close and save
                    if output.close_segment():
                        job.save_checkpoint(item)
                    continue
                image, ready = item
                if ready is not None:
                    ready.synchronize()
                while skipped:  # the timestamps of frames done before the resume
                    last, skipped = timestamps.popleft(), skipped - 1
                last = timestamps.popleft()
                output.write(image.numpy(), output_pts(last))
                frames_written += 1
        while skipped:  # every frame was done before the resume
            last, skipped = timestamps.popleft(), skipped - 1
        output.close_segment()
    return Span(first[0], last, frames_written)


@contextlib.contextmanager
def keeping_finished_work(job: JobFolder, discard: Callable[[], None] = lambda: None, frames_done=lambda: 0):
    r"""Turn any failure inside into a [`VideoFileError`] that says how to go on, after `discard()` drops the segment
    being written: the job folder is kept with its finished segments and checkpoints for `--resume`, or deleted when
    it holds none yet."""
    try:
        yield
    except KeyboardInterrupt:
        discard()
        raise
    except DamagedVideoError as error:
        discard()
        if not job.segments and not job.checkpoints():  # nothing done yet: nothing to keep
            shutil.rmtree(job.path)
            raise
        raise DamagedVideoError(
            f"{error} The {frames_done()} frames done so far are kept in {job.path}: add --allow-damaged --resume to "
            "the same command to go on past the damage.",
            error.frames_before,
        ) from error
    except Exception as error:  # noqa: BLE001 - whatever failed, keep the finished work and say how to continue
        discard()
        if not job.segments and not job.checkpoints():  # nothing done yet: nothing to keep
            shutil.rmtree(job.path)
            if isinstance(error, VideoFileError):
                raise
            raise VideoFileError(f"{job.output_path} was not written: {error}") from error
        raise VideoFileError(_kept_message(job, error)) from error
