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
"""Writing video files: incremental H.264 encoding with the input's timestamps and colours, joining segments, and
the final mux that adds the input's audio, subtitles, chapters and attachments."""

import os
import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np

from .reading import ColorTags, VideoFileError, VideoInfo


OUTPUT_EXTENSIONS = (".mp4", ".mkv", ".mov")
_MP4_FAMILY = (".mp4", ".mov", ".m4v")
_TEXT_SUBTITLES = ("subrip", "srt", "ass", "ssa", "webvtt", "mov_text", "text")


class H264Writer:
    r"""
    Encodes uint8 RGB frames into an H.264 file as they come (libx264 through PyAV).

    Args:
        path (`str`): Output file (`.mp4`, `.mkv` or `.mov`; MP4 keeps the timestamps exact when they start at 0).
        width, height (`int`): Frame size.
        fps (`fractions.Fraction`): Nominal frame rate; frames without a timestamp are spaced by it.
        crf (`int`, defaults to 18): x264 constant rate factor (lower is better; 0 is not lossless in 4:2:0).
        lossless (`bool`, defaults to `False`): Lossless x264 (`qp 0`) in yuv444p.
        time_base (`fractions.Fraction`, *optional*): Unit of the timestamps given to `write` (the input's).
        color (`ColorTags`, *optional*):
            Colour tags to carry over; RGB is converted to YUV with its matrix and range. Defaults to BT.709, limited.
        sample_aspect_ratio (`fractions.Fraction`, *optional*): Pixel shape to carry over.

    The pixel format is yuv420p, or yuv444p when `lossless` or when a side is odd (4:2:0 needs even sides).

    Example:

    ```py
    >>> writer = H264Writer("out.mp4", 64, 48, Fraction(30), time_base=Fraction(1, 90000))
    >>> writer.write(frame, pts=3000)  # frame: (48, 64, 3) uint8 RGB, shown at 3000 / 90000 s
    >>> writer.close()
    ```
    """

    def __init__(
        self,
        path: str,
        width: int,
        height: int,
        fps: Fraction,
        crf: int = 18,
        lossless: bool = False,
        time_base: Fraction | None = None,
        color: ColorTags | None = None,
        sample_aspect_ratio: Fraction | None = None,
    ):
        self.color = color or ColorTags(primaries=1, transfer=1, matrix=1, range=1)
        self.time_base = time_base or 1 / Fraction(fps)
        self.container = av.open(path, mode="w")
        try:
            options = {"qp": "0"} if lossless else {"crf": str(crf)}
            self.stream = self.container.add_stream("libx264", rate=fps, options=options)
            self.stream.width, self.stream.height = width, height
            self.stream.pix_fmt = "yuv444p" if lossless or width % 2 or height % 2 else "yuv420p"
            self.stream.time_base = self.stream.codec_context.time_base = self.time_base
            context = self.stream.codec_context
            context.colorspace, context.color_primaries = self.color.matrix, self.color.primaries
            context.color_trc, context.color_range = self.color.transfer, self.color.sws_range
            if sample_aspect_ratio:
                context.sample_aspect_ratio = sample_aspect_ratio
        except BaseException:
            self.container.close()
            raise
        self.frames_written = 0

    def write(self, frame: np.ndarray, pts: int | None = None) -> None:
        """Encode one `(height, width, 3)` uint8 RGB frame, shown at `pts` (in `time_base`; default: the next frame
        at the nominal rate)."""
        video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(
            format=self.stream.pix_fmt, dst_colorspace=self.color.sws_matrix, dst_color_range=self.color.sws_range
        )
        video_frame.pts = self.frames_written if pts is None else pts
        self.frames_written += 1
        self.container.mux(self.stream.encode(video_frame))

    def close(self) -> None:
        try:
            self.container.mux(self.stream.encode())
        finally:
            self.container.close()


def join_segments(segments: list[tuple[str, int]], output_path: str, time_base: Fraction) -> None:
    r"""
    Concatenate H.264 segments into one video-only file without re-encoding. Each segment is `(path, start)`: its
    timestamps count from 0 (MP4 keeps them exactly only then) and are moved to `start`, given in `time_base` (the
    unit the frames were written in; the MP4 muxer may store them in a finer one, e.g. 1/16000 for 1/1000).
    """
    with av.open(output_path, mode="w") as output:
        output_stream = None
        for path, start in segments:
            with av.open(path) as segment:
                stream = segment.streams.video[0]
                if output_stream is None:
                    output_stream = output.add_stream_from_template(stream)
                offset = round(start * time_base / stream.time_base)
                for packet in segment.demux(stream):
                    if packet.dts is None:  # the demuxer's final empty packet
                        continue
                    packet.pts, packet.dts = packet.pts + offset, packet.dts + offset
                    packet.stream = output_stream
                    output.mux(packet)


def _run_ffmpeg(arguments: list[str], what: str) -> None:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *arguments]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise VideoFileError(f"{what} failed: {result.stderr.strip()[-1000:]}")


def _stream_copy_arguments(source: VideoInfo, output_path: str) -> list[str]:
    """Map and copy everything of input 1 but its main video: audio, subtitles, cover art, attachments (Matroska),
    chapters and metadata. Text subtitles become mov_text in MP4 and SubRip in Matroska."""
    matroska = Path(output_path).suffix.lower() == ".mkv"
    arguments = ["-map", "1:a?", "-map", "1:s?", "-map", "1:v:disp:attached_pic?"]
    arguments += ["-map", "1:t?"] if matroska else []
    arguments += ["-map_metadata", "1", "-map_chapters", "1", "-c", "copy"]
    if not matroska and source.subtitle_codecs:
        arguments += ["-c:s", "mov_text"]
    elif matroska and "mov_text" in source.subtitle_codecs:
        arguments += ["-c:s", "srt"]
    return arguments


def check_stream_copy(source: VideoInfo, output_path: str) -> None:
    r"""
    Raise `VideoFileError` now, not after hours of work, if the audio, subtitle or attached streams of `source`
    cannot be copied into a file of `output_path`'s type (a short test mux into a temporary folder).
    """
    with tempfile.TemporaryDirectory() as scratch:
        arguments = ["-f", "lavfi", "-i", "color=size=16x16:duration=0.1", "-t", "0.1", "-i", source.path]
        arguments += ["-map", "0:v", *_stream_copy_arguments(source, output_path), "-c:v:0", "libx264"]
        try:
            _run_ffmpeg(arguments + [os.path.join(scratch, "check" + Path(output_path).suffix)], "A test mux")
        except VideoFileError as error:
            codecs = ", ".join(source.audio_codecs + source.subtitle_codecs)
            hint = (
                "Write an .mkv output instead, which takes any codec."
                if Path(output_path).suffix != ".mkv"
                else ("Remove the stream that fails from the input first (ffmpeg -map).")
            )
            raise VideoFileError(
                f"{source.path}: its audio/subtitle/attached streams ({codecs}) cannot be copied into a "
                f"{Path(output_path).suffix} file. {hint} ({error})"
            ) from error


def extra_streams_size(source: VideoInfo, duration: float) -> int:
    """Estimated bytes of the streams copied from `source` for `duration` seconds (all but its main video)."""
    with av.open(source.path) as container:
        video = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic][0]
        total = os.path.getsize(source.path)
        if container.duration and video.bit_rate:
            video_bytes = video.bit_rate * container.duration / av.time_base / 8
            return int(max(total - video_bytes, 0) * min(duration / (container.duration / av.time_base), 1.0))
        return total  # unknown split: assume the worst


def check_free_space(folder: str | os.PathLike, needed: int, what: str) -> None:
    r"""Raise `OSError(ENOSPC)` with a message stating the bytes needed when `folder`'s file system has less free
    space than `needed` bytes (plus 1% and 1 MiB for the container overhead)."""
    needed = int(needed * 1.01) + 2**20
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise OSError(
            28, f"{what} needs {needed / 2**20:.1f} MiB free on {folder}'s disk, but only {free / 2**20:.1f} MiB are"
        )


def mux_output(video_path: str, output_path: str, source: VideoInfo, start: float, duration: float) -> None:
    r"""
    Write `output_path` from the video-only file `video_path` (its first frame at 0) and the streams of `source`
    that are not its main video, copied from `start` seconds (on the input's own timeline, so a stream whose
    timestamps start late stays in sync) for `duration` seconds. The rotation of `source` is carried over.
    """
    video_input = ["-display_rotation:v:0", str(source.rotation)] if source.rotation else []
    offset = source.start_time - source.container_start_time + start
    arguments = [*video_input, "-i", video_path, "-ss", f"{offset:.6f}", "-t", f"{duration:.6f}", "-i", source.path]
    # -copypriorss 0: packets before the start are dropped, not kept with negative times (which some muxers shift).
    arguments += ["-map", "0:v", *_stream_copy_arguments(source, output_path), "-copypriorss", "0"]
    if Path(output_path).suffix.lower() in _MP4_FAMILY:
        arguments += ["-movflags", "+faststart"]
    _run_ffmpeg(arguments + [output_path], f"Writing {output_path}")
