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
"""Video files in and out: lazy decoding, incremental H.264 encoding, stream copy of audio and subtitles, and
`upscale_video`, the resumable file-to-file job behind the `infvsr` command."""

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
import torch

from .pipeline_infvsr import InfVSRPipeline
from .scenes import SceneMarker


VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".m4v", ".avi", ".webm", ".ts", ".mts", ".mpg", ".mpeg", ".flv", ".wmv")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
OUTPUT_EXTENSIONS = (".mp4", ".mkv", ".mov")
_MP4_FAMILY = (".mp4", ".mov", ".m4v")


class VideoFileError(Exception):
    """A video file that cannot be read or written; the message names the file, the problem and what to do."""


@dataclass
class VideoInfo:
    r"""
    What `probe_video` found in a file.

    Args:
        path (`str`): The file.
        width, height (`int`): Frame size of the first video stream.
        fps (`fractions.Fraction`): Exact frame rate (e.g. `30000/1001`).
        num_frames (`int`, *optional*): Frame count from the container, or estimated from the duration.
        duration (`float`, *optional*): Duration of the video stream in seconds.
        audio_codecs, subtitle_codecs (`list[str]`): Codecs of the audio and subtitle streams.
    """

    path: str
    width: int
    height: int
    fps: Fraction
    num_frames: int | None
    duration: float | None
    audio_codecs: list[str] = field(default_factory=list)
    subtitle_codecs: list[str] = field(default_factory=list)


def frame_files(folder: str | os.PathLike) -> list[Path]:
    """The frames of a frame folder (one image file per frame, e.g. REDS' `000/00000000.png`), in file-name order."""
    return sorted(path for path in Path(folder).iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS)


def _open(path: str) -> av.container.InputContainer:
    if not os.path.exists(path):
        raise VideoFileError(f"{path}: no such file. Check the path.")
    if os.path.isdir(path):
        raise VideoFileError(f"{path} is a folder; pass a video file, or a folder only as the command's INPUT.")
    try:
        return av.open(path)
    except av.EOFError as error:
        raise VideoFileError(f"{path} contains no video frames (it is empty or cut off).") from error
    except av.FFmpegError as error:
        raise VideoFileError(
            f"{path} cannot be read as a video ({error}). The file is not a video, or it is corrupt or truncated."
        ) from error


def probe_video(path: str | os.PathLike) -> VideoInfo:
    r"""
    Read the size, exact frame rate, length and audio/subtitle codecs of a video file without decoding it.

    Raises:
        `VideoFileError`: if the file is missing, is not a video, or is corrupt.

    Example:

    ```py
    >>> info = probe_video("input.mp4")
    >>> info.fps, info.width, info.height
    (Fraction(30000, 1001), 640, 360)
    ```
    """
    path = os.fspath(path)
    with _open(path) as container:
        if not container.streams.video:
            raise VideoFileError(f"{path} has no video stream. Pass a video file.")
        stream = container.streams.video[0]
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not fps or not stream.width or not stream.height:
            raise VideoFileError(f"{path}: the video stream has no frame rate or frame size; the file is damaged.")
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        num_frames = stream.frames or (round(duration * fps) if duration else None)
        return VideoInfo(
            path=path,
            width=stream.width,
            height=stream.height,
            fps=Fraction(fps),
            num_frames=num_frames,
            duration=duration,
            audio_codecs=[audio.codec_context.name for audio in container.streams.audio],
            subtitle_codecs=[subtitle.codec_context.name for subtitle in container.streams.subtitles],
        )


def read_frames(path: str | os.PathLike, start: float = 0.0, max_frames: int | None = None) -> Iterator[np.ndarray]:
    r"""
    Decode a video lazily, one `(height, width, 3)` uint8 RGB frame at a time (memory does not depend on its length).

    Args:
        path (`str`): The video file.
        start (`float`, defaults to 0): Skip the frames shown before this time in seconds (frame-accurate seek).
        max_frames (`int`, *optional*): Stop after this many frames.

    Raises:
        `VideoFileError`: if the file cannot be decoded, or the frame size changes mid-stream.
    """
    path = os.fspath(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if start > 0:
            container.seek(int(start / stream.time_base), stream=stream, backward=True)
        size, count = None, 0
        decoded = container.decode(stream)
        while max_frames is None or count < max_frames:
            try:
                frame = next(decoded)
            except StopIteration:
                return
            except av.FFmpegError as error:
                raise VideoFileError(
                    f"{path}: decoding failed after {count} frames ({error}); the file is corrupt or truncated. "
                    f"Re-encode or repair it, or pass --max-frames {count} to use the frames before the damage."
                ) from error
            if frame.time is not None and frame.time < start - 0.5 / float(stream.average_rate or 1000):
                continue
            if size is None:
                size = (frame.height, frame.width)
            elif (frame.height, frame.width) != size:
                raise VideoFileError(
                    f"{path}: the frame size changes from {size[1]}x{size[0]} to {frame.width}x{frame.height} at "
                    f"frame {count}. Split the video where the size changes, or scale it to one size first."
                )
            count += 1
            yield frame.to_ndarray(format="rgb24")


class H264Writer:
    r"""
    Encodes uint8 RGB frames into an H.264 file as they come (libx264 through PyAV), at an exact frame rate.

    Args:
        path (`str`): Output file (`.mp4`, `.mkv` or `.mov`).
        width, height (`int`): Frame size.
        fps (`fractions.Fraction`): Frame rate, kept exactly (e.g. `30000/1001`).
        crf (`int`, defaults to 18): x264 constant rate factor (lower is better; 0 is not lossless in 4:2:0).
        lossless (`bool`, defaults to `False`): Lossless x264 (`qp 0`) in yuv444p.

    The pixel format is yuv420p, or yuv444p when `lossless` or when a side is odd (4:2:0 needs even sides); colours
    are converted and tagged as BT.709, limited range.
    """

    def __init__(self, path: str, width: int, height: int, fps: Fraction, crf: int = 18, lossless: bool = False):
        self.container = av.open(path, mode="w")
        options = {"qp": "0"} if lossless else {"crf": str(crf)}
        self.stream = self.container.add_stream("libx264", rate=fps, options=options)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv444p" if lossless or width % 2 or height % 2 else "yuv420p"
        context = self.stream.codec_context
        context.colorspace = context.color_primaries = context.color_trc = 1  # BT.709
        context.color_range = 1  # limited ("MPEG") range
        self.frames_written = 0

    def write(self, frame: np.ndarray) -> None:
        video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(
            format=self.stream.pix_fmt, dst_colorspace="ITU709", dst_color_range="MPEG"
        )
        video_frame.pts = self.frames_written
        self.frames_written += 1
        self.container.mux(self.stream.encode(video_frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode())
        self.container.close()


def _run_ffmpeg(arguments: list[str], what: str) -> None:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *arguments]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise VideoFileError(f"{what} failed: {result.stderr.strip()[-1000:]}")


def _stream_copy_arguments(source: VideoInfo, output_path: str) -> list[str]:
    """Map and copy the audio and subtitle streams of input 1 (MP4 needs text subtitles as mov_text)."""
    arguments = ["-map", "1:a?", "-map", "1:s?", "-c", "copy"]
    if source.subtitle_codecs and Path(output_path).suffix.lower() in _MP4_FAMILY:
        arguments += ["-c:s", "mov_text"]
    return arguments


def check_stream_copy(source: VideoInfo, output_path: str) -> None:
    r"""
    Raise `VideoFileError` now, not after hours of work, if the audio or subtitle streams of `source` cannot be copied
    into a file of `output_path`'s type (a short test mux into a temporary folder).
    """
    if not source.audio_codecs and not source.subtitle_codecs:
        return
    with tempfile.TemporaryDirectory() as scratch:
        arguments = ["-f", "lavfi", "-i", "color=size=16x16:duration=0.1", "-t", "0.1", "-i", source.path]
        arguments += ["-map", "0:v", *_stream_copy_arguments(source, output_path), "-c:v", "libx264"]
        try:
            _run_ffmpeg(arguments + [os.path.join(scratch, "check" + Path(output_path).suffix)], "A test mux")
        except VideoFileError as error:
            codecs = ", ".join(source.audio_codecs + source.subtitle_codecs)
            raise VideoFileError(
                f"{source.path}: its audio/subtitle streams ({codecs}) cannot be copied into a "
                f"{Path(output_path).suffix} file. Write an .mkv output instead, which takes any codec. ({error})"
            ) from error


def join_segments(segments: list[str], output_path: str) -> None:
    """Concatenate H.264 segments into one video-only file without re-encoding, with exact timestamps."""
    with av.open(output_path, mode="w") as output:
        output_stream, offset = None, 0
        for path in segments:
            with av.open(path) as segment:
                stream = segment.streams.video[0]
                if output_stream is None:
                    output_stream = output.add_stream_from_template(stream)
                end = offset
                for packet in segment.demux(stream):
                    if packet.dts is None:  # the demuxer's final empty packet
                        continue
                    packet.pts, packet.dts = packet.pts + offset, packet.dts + offset
                    end = max(end, packet.pts + packet.duration)
                    packet.stream = output_stream
                    output.mux(packet)
                offset = end


def mux_output(segments: list[str], output_path: str, source: VideoInfo, start: float, duration: float) -> None:
    r"""
    Join encoded video `segments` without re-encoding and add the audio and subtitle streams of `source` (copied,
    trimmed to `[start, start + duration)` seconds) into `output_path`.
    """
    video_only = os.path.join(os.path.dirname(output_path), "video-only.mp4")
    join_segments(segments, video_only)
    arguments = ["-i", video_only, "-ss", f"{start:.6f}", "-t", f"{duration:.6f}", "-i", source.path, "-map", "0:v"]
    arguments += _stream_copy_arguments(source, output_path)
    if Path(output_path).suffix.lower() in _MP4_FAMILY:
        arguments += ["-movflags", "+faststart"]
    _run_ffmpeg(arguments + [output_path], f"Writing {output_path}")
    os.remove(video_only)


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
        scene_starts (`list[int]`): First frame of every scene (`[0]` without scene detection).
        reference_refreshes (`list[int]`): Frames that became the reference within a scene.
        resumed_from (`int`): Frames taken over from an interrupted run (0 for a fresh run).
    """

    output_path: str
    num_frames: int
    scene_starts: list[int]
    reference_refreshes: list[int]
    resumed_from: int = 0


class _SegmentedOutput:
    """
    The output video as numbered H.264 segments in the job folder; a checkpoint closes the current segment. Segments
    are MP4 files, whose rational time bases keep fractional frame rates exact until the final mux.
    """

    def __init__(self, folder: Path, size: tuple[int, int], fps: Fraction, crf: int, lossless: bool):
        self.folder = folder
        self.size, self.fps, self.crf, self.lossless = size, fps, crf, lossless
        self.segments: list[str] = []
        self.writer: H264Writer | None = None
        self.current: str | None = None  # name of the segment being written

    def keep_only(self, segments: list[str]) -> None:
        """Continue after `segments` (from a checkpoint); delete any segment written after it."""
        self.segments = list(segments)
        for leftover in self.folder.glob("segment-*"):
            if leftover.name not in self.segments:
                leftover.unlink()

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            self.current = f"segment-{len(self.segments):06d}.mp4"
            self.writer = H264Writer(str(self.folder / self.current), *self.size, self.fps, self.crf, self.lossless)
        self.writer.write(frame)

    def close_segment(self) -> bool:
        """Finish the segment being written, if any; return whether there was one."""
        if self.writer is None:
            return False
        self.writer.close()
        self.segments.append(self.current)
        self.writer = None
        return True

    def paths(self) -> list[str]:
        return [str(self.folder / name) for name in self.segments]


def _work_folder(output_path: Path) -> Path:
    return output_path.with_name(f".{output_path.name}.infvsr-partial")


def _job_settings(input_path: str, pipe: InfVSRPipeline, **settings) -> dict:
    stat = os.stat(input_path)
    return {
        "input": os.path.abspath(input_path),
        "input_size": stat.st_size,
        "input_mtime_ns": stat.st_mtime_ns,
        "model": str(pipe.config.get("_name_or_path", "")),
        "dtype": str(pipe.transformer.dtype),
        **settings,
    }


def _prepare_work_folder(output_path: Path, settings: dict, overwrite: bool, resume: bool) -> tuple[Path, dict | None]:
    """Create or reuse the job folder beside the output; return it and the checkpoint to resume from, if any."""
    work = _work_folder(output_path)
    settings_file = work / "job.json"
    if work.exists() and not resume:
        if not overwrite:
            raise VideoFileError(
                f"An interrupted job for {output_path} exists ({work}). Pass --resume to continue it, or --overwrite "
                "to start over."
            )
        shutil.rmtree(work)
    if work.exists():
        saved = json.loads(settings_file.read_text()) if settings_file.exists() else None
        if saved is not None and saved != settings:
            changed = sorted(key for key in settings.keys() | saved.keys() if settings.get(key) != saved.get(key))
            raise VideoFileError(
                f"Cannot resume {output_path}: the interrupted job used other settings or input ({', '.join(changed)})."
                " Run it with the same settings, or pass --overwrite to start over."
            )
        checkpoint_file = work / "checkpoint.pt"
        if saved is not None and checkpoint_file.exists():
            return work, torch.load(checkpoint_file, weights_only=True)
    try:
        output_path.parent.mkdir(parents=True, exist_ok=True)
        work.mkdir(exist_ok=True)
        settings_file.write_text(json.dumps(settings, indent=2))
    except OSError as error:
        raise VideoFileError(f"Cannot write to the output folder {output_path.parent}: {error.strerror}.") from error
    return work, None


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
) -> UpscaleResult:
    r"""
    Upscale a video file into an H.264 file with InfVSR, streaming: frames are decoded, restored and encoded chunk by
    chunk, so memory stays flat however long the video is. The frame rate is kept exactly; audio and subtitles are
    copied unchanged. Nothing appears under `output_path` until the file is complete: the work happens in a hidden
    folder beside it, which also holds a checkpoint (the stream state and the finished video segments), saved at
    chunk boundaries at most every `checkpoint_interval` seconds, from which `resume=True` continues an interrupted
    job with the same frames as an uninterrupted run.

    Args:
        input_path, output_path (`str`): Input video; output `.mp4` (default), `.mkv` or `.mov` file.
        pipe ([`InfVSRPipeline`]): The loaded pipeline (its progress bar shows frames, rate and time left).
        upscale_factor (`int`, defaults to 4): Integer scale.
        start (`float`, defaults to 0): Start time in seconds.
        max_frames (`int`, *optional*): Upscale at most this many frames.
        crf (`int`, defaults to 18): x264 quality (lower is better).
        lossless (`bool`, defaults to `False`): Lossless x264 in yuv444p.
        scene_detection (`bool`, defaults to `True`):
            Detect scene cuts online ([`~scenes.SceneMarker`]) and restart the stream at each; refresh the reference
            frame within scenes.
        scene_threshold (`float`, defaults to 27.0): Content threshold for cuts and reference refreshes.
        overwrite (`bool`, defaults to `False`): Replace an existing output, or discard an interrupted job.
        resume (`bool`, defaults to `False`): Continue an interrupted job for this output, if there is one.
        checkpoint_interval (`float`, defaults to 120): Seconds between checkpoints; 0 saves after every chunk.

    Raises:
        `VideoFileError`: for unusable input or output, with a message that says what to do.

    Example:

    ```py
    >>> from diffusers_infvsr import InfVSRPipeline
    >>> from diffusers_infvsr.video import upscale_video

    >>> pipe = InfVSRPipeline.from_pretrained("path/to/InfVSR-diffusers", torch_dtype=torch.bfloat16).to("cuda")
    >>> upscale_video("input.mp4", "output.mp4", pipe)
    UpscaleResult(output_path='output.mp4', num_frames=1440, scene_starts=[0, 311, 902], ...)
    ```
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
    source = probe_video(input_path)
    pipe.check_inputs(upscale_factor)

    def frames() -> Iterator[np.ndarray]:
        return read_frames(input_path, start, max_frames)

    probe_frames = frames()
    first_frame = next(probe_frames, None)
    probe_frames.close()
    if first_frame is None:
        raise VideoFileError(f"{input_path} has no video frames" + (f" after {start} s." if start else "."))
    height, width = first_frame.shape[:2]

    settings = _job_settings(
        input_path,
        pipe,
        upscale_factor=upscale_factor,
        start=start,
        max_frames=max_frames,
        crf=crf,
        lossless=lossless,
        scene_detection=scene_detection,
        scene_threshold=scene_threshold,
        checkpoint_interval=checkpoint_interval,
    )
    check_stream_copy(source, str(output_path))
    work, checkpoint = _prepare_work_folder(output_path, settings, overwrite, resume)
    output = _SegmentedOutput(work, (width * upscale_factor, height * upscale_factor), source.fps, crf, lossless)
    output.keep_only(checkpoint["segments"] if checkpoint else [])
    state = pipe.load_stream_state(checkpoint["stream"]) if checkpoint else None
    resumed_from = state.frames_done if state else 0

    marker = SceneMarker(threshold=scene_threshold, reference_threshold=scene_threshold) if scene_detection else None
    items = _skip_frames(marker.mark(frames()) if marker else frames(), resumed_from)
    total = max(source.num_frames - round(start * source.fps), 0) if source.num_frames else None
    if max_frames is not None:
        total = min(total, max_frames) if total is not None else max_frames
    last_checkpoint = time.monotonic()

    def save_checkpoint(pipe: InfVSRPipeline, state) -> None:
        nonlocal last_checkpoint
        if time.monotonic() - last_checkpoint < checkpoint_interval or not output.close_segment():
            return
        temporary = work / "checkpoint.pt.partial"
        torch.save({"stream": state.state_dict(), "segments": output.segments}, temporary)
        os.replace(temporary, work / "checkpoint.pt")
        last_checkpoint = time.monotonic()

    frames_written = resumed_from
    restored = pipe.stream(
        items, upscale_factor, "pt", total_frames=total, state=state, callback_on_chunk_end=save_checkpoint
    )
    try:
        for frame in restored:
            output.write(frame.mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy())
            frames_written += 1
        output.close_segment()
        temporary_output = work / output_path.name
        mux_output(output.paths(), str(temporary_output), source, start, float(frames_written / source.fps))
    except VideoFileError:
        shutil.rmtree(work)  # the input is unusable from here on: a resume would stop at the same place
        raise
    # Any other exception (Ctrl-C, a crash, out of memory) keeps the job folder for `resume=True`.
    os.replace(temporary_output, output_path)
    shutil.rmtree(work)
    return UpscaleResult(
        output_path=str(output_path),
        num_frames=frames_written,
        scene_starts=marker.scene_starts if marker else [0],
        reference_refreshes=marker.reference_refreshes if marker else [],
        resumed_from=resumed_from,
    )
