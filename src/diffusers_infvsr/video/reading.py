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
"""Reading video files: probing, an integrity scan of the packets, and lazy decoding with the frames' timestamps."""

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".m4v", ".avi", ".webm", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg", ".flv",
                    ".wmv", ".3gp", ".ogv", ".mxf", ".gif")  # fmt: skip
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# Transfer characteristics (ITU-T H.273) of HDR video: SMPTE ST 2084 (PQ) and ARIB STD-B67 (HLG).
HDR_TRANSFERS = {16: "PQ (SMPTE ST 2084)", 18: "HLG (ARIB STD-B67)"}
# Matrix coefficients (H.273) -> the swscale matrix that converts them; unspecified decodes as BT.601, as in ffmpeg.
_SWS_MATRIX = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}


class VideoFileError(Exception):
    """A video file that cannot be read or written; the message names the file, the problem and what to do."""


class DamagedVideoError(VideoFileError):
    """The video stream is truncated or corrupt; `frames_before` frames before the damage are intact."""

    def __init__(self, message: str, frames_before: int):
        super().__init__(message)
        self.frames_before = frames_before


@dataclass(frozen=True)
class ColorTags:
    r"""Colour description of a video stream (ITU-T H.273 code points, as in ffmpeg): primaries, transfer, matrix,
    range (0 = unspecified)."""

    primaries: int = 0
    transfer: int = 0
    matrix: int = 0
    range: int = 0

    @property
    def is_hdr(self) -> bool:
        return self.transfer in HDR_TRANSFERS

    @property
    def sws_matrix(self) -> int:
        """The matrix that converts these YUV values to RGB and back."""
        return _SWS_MATRIX.get(self.matrix, 5)

    @property
    def sws_range(self) -> int:
        return 2 if self.range == 2 else 1  # full ("JPEG") or limited ("MPEG", also when unspecified)


@dataclass
class VideoInfo:
    r"""
    What `probe_video` found in a file.

    Args:
        path (`str`): The file.
        width, height (`int`): Coded frame size of the first video stream.
        fps (`fractions.Fraction`): Average frame rate (e.g. `30000/1001`); timestamps are kept per frame anyway.
        num_frames (`int`, *optional*): Frame count from the container, or estimated from the duration.
        duration (`float`, *optional*): Duration of the video stream in seconds.
        time_base (`fractions.Fraction`): Time base of the video timestamps.
        start_time (`float`): Presentation time of the first video frame in seconds (not 0 in e.g. MPEG-TS).
        container_start_time (`float`): Start of the earliest stream in seconds (ffmpeg's `-ss` counts from it).
        rotation (`int`): Display rotation in degrees (counter-clockwise, as ffmpeg's `-display_rotation`).
        sample_aspect_ratio (`fractions.Fraction`, *optional*): Pixel shape (e.g. `32/27` for anamorphic DVD).
        color (`ColorTags`): Colour primaries, transfer, matrix and range.
        interlaced (`bool`): The first frame is interlaced.
        frame_grid (`fractions.Fraction`, *optional*): See [`PacketScan`]; filled in by a packet scan.
        audio_codecs, subtitle_codecs (`list[str]`): Codecs of the audio and subtitle streams.
    """

    path: str
    width: int
    height: int
    fps: Fraction
    num_frames: int | None
    duration: float | None
    time_base: Fraction = Fraction(1, 90000)
    start_time: float = 0.0
    container_start_time: float = 0.0
    rotation: int = 0
    sample_aspect_ratio: Fraction | None = None
    color: ColorTags = field(default_factory=ColorTags)
    interlaced: bool = False
    frame_grid: Fraction | None = None
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


def _video_stream(container: av.container.InputContainer, path: str) -> av.VideoStream:
    streams = [
        stream for stream in container.streams.video if not stream.disposition & av.stream.Disposition.attached_pic
    ]
    if not streams:
        raise VideoFileError(f"{path} has no video stream. Pass a video file.")
    return streams[0]


def _damage_hint(path: str, frames_before: int, seconds: float | None) -> str:
    where = f"after frame {frames_before}" + (f" ({seconds:.3f} s)" if seconds is not None else "")
    return (
        f"{path} is damaged {where}: {{}}. Repair or re-encode it, pass --max-frames {frames_before} to upscale the "
        "frames before the damage, or --allow-damaged to go on (missing frames then show the frame before them, so "
        "audio stays in sync)."
    )


def probe_video(path: str | os.PathLike) -> VideoInfo:
    r"""
    Read the size, frame rate, timing, orientation, pixel shape, colour tags and audio/subtitle codecs of a video file
    (decoding only its first frame).

    Raises:
        `VideoFileError`: if the file is missing, is not a video, or is corrupt.

    Example:

    ```py
    >>> info = probe_video("input.mp4")
    >>> info.fps, info.width, info.height, info.rotation
    (Fraction(30000, 1001), 640, 360, 90)
    ```
    """
    path = os.fspath(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        fps = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not fps or not stream.width or not stream.height:
            raise VideoFileError(f"{path}: the video stream has no frame rate or frame size; the file is damaged.")
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError as error:
            raise VideoFileError(_damage_hint(path, 0, None).format(f"the first frame cannot be decoded ({error})"))
        if first is None:
            raise VideoFileError(f"{path} contains no video frames (it is empty or cut off).")
        start_time = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        sample_aspect_ratio = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        return VideoInfo(
            path=path,
            width=stream.width,
            height=stream.height,
            fps=Fraction(fps),
            num_frames=stream.frames or (round(duration * fps) if duration else None),
            duration=duration,
            time_base=Fraction(stream.time_base),
            start_time=start_time,
            container_start_time=container.start_time / av.time_base
            if container.start_time is not None
            else start_time,
            rotation=round(first.rotation) % 360,
            sample_aspect_ratio=Fraction(sample_aspect_ratio) if sample_aspect_ratio else None,
            color=ColorTags(
                int(first.color_primaries), int(first.color_trc), int(first.colorspace), int(first.color_range)
            ),
            interlaced=bool(first.interlaced_frame),
            audio_codecs=[audio.codec_context.name for audio in container.streams.audio],
            subtitle_codecs=[subtitle.codec_context.name for subtitle in container.streams.subtitles],
        )


@dataclass
class PacketScan:
    r"""
    What [`scan_packets`] found.

    Args:
        frames (`int`): Video packets (frames) present.
        damage (`DamagedVideoError`, *optional*): Where and how the video stream is damaged, if it is.
        frame_grid (`fractions.Fraction`, *optional*):
            The exact frame rate whose grid every timestamp rounds from, when the container's time base cannot hold
            it (e.g. 30000/1001 fps in Matroska's milliseconds); `None` when the timestamps are exact or off the grid.
    """

    frames: int
    damage: DamagedVideoError | None = None
    frame_grid: Fraction | None = None


def scan_packets(path: str | os.PathLike) -> PacketScan:
    r"""
    Read the video packets once, without decoding (about as fast as reading the file): count them, look for damage
    (a corrupt packet, fewer packets than the container's frame count or duration promise, a cut-off MPEG-TS packet)
    and for the exact frame rate behind rounded timestamps.
    """
    path = os.fspath(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        time_base, origin = stream.time_base, stream.start_time or 0
        rate = stream.guessed_rate
        on_grid = bool(rate) and (1 / (rate * time_base)).denominator != 1  # only a rounding time base needs it
        tolerance = time_base * rate / 2 + Fraction(1, 10**6) if on_grid else 0
        count, end = 0, None

        def damaged(what: str, seconds: float | None = None) -> PacketScan:
            return PacketScan(count, DamagedVideoError(_damage_hint(path, count, seconds).format(what), count))

        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                if packet.is_corrupt:
                    return damaged("a corrupt packet", float((packet.pts or 0) * time_base))
                count += 1
                if packet.pts is not None:
                    packet_end = (packet.pts + (packet.duration or 0)) * time_base
                    end = packet_end if end is None else max(end, packet_end)
                    position = (packet.pts - origin) * time_base * rate if on_grid else 0
                    on_grid = on_grid and abs(position - round(position)) <= tolerance
        except av.FFmpegError as error:
            return damaged(f"reading failed ({error})")
        if stream.frames and count < stream.frames:
            return damaged(f"the container lists {stream.frames} frames but only {count} are present (truncated)")
        promised = _promised_end(container, stream)
        if promised is not None and end is not None and promised - end > Fraction(3, 2) / (rate or 25):
            message = f"the video stops at {float(end):.3f} s of the {float(promised):.3f} s the container lists"
            return damaged(message + " (truncated)", float(end))
        if container.format.name == "mpegts" and all(os.path.getsize(path) % size for size in (188, 192, 204)):
            return damaged("the file ends inside a transport-stream packet (truncated)")
        return PacketScan(count, frame_grid=Fraction(rate) if on_grid else None)


def check_integrity(path: str | os.PathLike) -> None:
    """Raise the `DamagedVideoError` that [`scan_packets`] finds, if any."""
    damage = scan_packets(path).damage
    if damage is not None:
        raise damage


def _promised_end(container: av.container.InputContainer, stream: av.VideoStream) -> Fraction | None:
    """End of the video stream in seconds as the container's header states it, if it does."""
    start = (stream.start_time or 0) * stream.time_base
    if stream.duration:
        return start + stream.duration * stream.time_base
    tag = stream.metadata.get("DURATION")  # Matroska's per-stream duration, "HH:MM:SS.nnnnnnnnn"
    if tag:
        hours, minutes, seconds = tag.split(":")
        return Fraction(int(hours) * 3600 + int(minutes) * 60) + Fraction(seconds)
    if container.duration and container.format.name.startswith("matroska"):
        return Fraction(container.duration, av.time_base) + start
    return None


def _seek_lands_before(path: str, target: int, threshold: float) -> bool:
    """Whether seeking to `target` starts decoding at or before `threshold` (the seek is exact enough to use).
    Containers without an index (e.g. MPEG-TS) can land after it; those are then decoded from the start."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        try:
            container.seek(target, stream=stream, backward=True)
            first = next(container.decode(stream), None)
        except av.FFmpegError:
            return False
        return first is not None and first.pts is not None and first.pts <= threshold


@dataclass
class DecodedFrame:
    r"""
    One decoded frame.

    Args:
        image (`np.ndarray`): `(height, width, 3)` uint8 RGB.
        pts (`int`): Presentation timestamp in the stream's time base.
        time (`float`): Presentation time in seconds.
    """

    image: np.ndarray
    pts: int
    time: float


def decode_frames(
    path: str | os.PathLike,
    start: float = 0.0,
    max_frames: int | None = None,
    allow_damaged: bool = False,
    first_pts: int | None = None,
) -> Iterator[DecodedFrame]:
    r"""
    Decode a video lazily with each frame's timestamp (memory does not depend on its length).

    Args:
        path (`str`): The video file.
        start (`float`, defaults to 0):
            Skip the frames shown before this many seconds after the first frame (frame-accurate; streams whose
            timestamps do not start at 0, as in MPEG-TS, count from their first frame).
        max_frames (`int`, *optional*): Stop after this many frames.
        allow_damaged (`bool`, defaults to `False`): Go on past corrupt packets and decoding errors instead of raising.
        first_pts (`int`, *optional*):
            Instead of `start`: begin at the frame whose [`DecodedFrame`] `pts` is this (e.g. a scene's first frame
            from an earlier pass), decoding from the key frame before it.

    Raises:
        `DamagedVideoError`: where a packet cannot be decoded, or the decoder drops frames.
        `VideoFileError`: if the frame size changes mid-stream.
    """
    path = os.fspath(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        time_base = stream.time_base
        origin = stream.start_time or 0
        color = None
        if first_pts is not None:
            target = threshold = origin + first_pts
        else:
            target = origin + int(start / time_base)
            threshold = origin + start / time_base - Fraction(1, 2) / (stream.average_rate or 1000) / time_base
        skipping = start > 0 or bool(first_pts)
        if skipping and _seek_lands_before(path, target, threshold):
            container.seek(target, stream=stream, backward=True)
        size, count, sent, last_pts, interlaced = None, 0, 0, None, False

        def damaged(what: str) -> DamagedVideoError:
            message = _damage_hint(path, count, float((last_pts - origin) * time_base) if last_pts else None)
            return DamagedVideoError(message.format(what), count)

        def packets():
            nonlocal sent
            for packet in container.demux(stream):
                if packet.size and packet.is_corrupt and not allow_damaged:
                    raise damaged("a corrupt packet")
                sent += bool(packet.size)
                yield packet

        for packet in packets():
            try:
                frames = packet.decode()
            except av.FFmpegError as error:
                if allow_damaged:
                    continue
                raise damaged(f"decoding failed ({error})") from error
            for frame in frames:
                pts = frame.pts if frame.pts is not None else (last_pts or origin) + 1
                if skipping and pts < threshold:
                    continue
                if frame.is_corrupt and not allow_damaged:
                    raise damaged("a frame decoded with errors")
                last_pts = pts
                if size is None:
                    size = (frame.height, frame.width)
                    color = ColorTags(matrix=int(frame.colorspace), range=int(frame.color_range))
                    interlaced = frame.interlaced_frame  # field pictures may come as two packets
                elif (frame.height, frame.width) != size:
                    raise VideoFileError(
                        f"{path}: the frame size changes from {size[1]}x{size[0]} to {frame.width}x{frame.height} "
                        f"at frame {count}. Split the video where the size changes, or scale it to one size first."
                    )
                image = frame.reformat(
                    format="rgb24", src_colorspace=color.sws_matrix, src_color_range=color.sws_range
                ).to_ndarray()
                count += 1
                yield DecodedFrame(image, int(pts - origin), float((pts - origin) * time_base))
                if max_frames is not None and count >= max_frames:
                    return
        if not allow_damaged and not skipping and not interlaced and sent > count:
            raise damaged(f"the decoder produced {count} frames from {sent} packets")


def read_frames(path: str | os.PathLike, start: float = 0.0, max_frames: int | None = None) -> Iterator[np.ndarray]:
    r"""
    Decode a video lazily, one `(height, width, 3)` uint8 RGB frame at a time (see [`decode_frames`]).

    Raises:
        `VideoFileError`: if the file cannot be decoded, or the frame size changes mid-stream.
    """
    for frame in decode_frames(path, start, max_frames):
        yield frame.image
