"""Test videos made with the ffmpeg binary shipped with imageio-ffmpeg (lavfi sources), and readers for outputs."""

import subprocess
from fractions import Fraction

import av
import imageio_ffmpeg
import numpy as np


FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg(*arguments) -> None:
    subprocess.run([FFMPEG, "-nostdin", "-v", "error", "-y", *map(str, arguments)], check=True)


def make_clip(path, frames, size="24x16", rate="25", source="testsrc2", audio=False, lossless=False) -> str:
    """A `frames`-frame clip of a lavfi `source`; `audio` adds a sine tone (AAC) as long as the video."""
    arguments = ["-f", "lavfi", "-i", f"{source}=size={size}:rate={rate}"]
    if audio:
        arguments += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-c:a", "aac", "-shortest"]
    encoding = ["-qp", "0", "-pix_fmt", "yuv444p"] if lossless else ["-pix_fmt", "yuv420p"]
    ffmpeg(*arguments, "-frames:v", frames, "-c:v", "libx264", *encoding, path)
    return str(path)


def decode(path) -> np.ndarray:
    """All frames of a video as a (frames, height, width, 3) uint8 array."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def _packet_span(container, stream) -> float:
    """Seconds from the first packet's start to the last packet's end (containers need not store durations)."""
    times = [(p.pts, p.pts + p.duration) for p in container.demux(stream) if p.pts is not None]
    return float((max(end for _, end in times) - min(start for start, _ in times)) * stream.time_base)


def probe(path) -> dict:
    """Frame count, size, exact rate and pixel format of the video; codec and duration of audio/subtitles."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        info = {
            "frames": sum(1 for _ in container.decode(video=0)),
            "size": (video.codec_context.width, video.codec_context.height),
            "fps": Fraction(video.average_rate),
            "pix_fmt": video.codec_context.pix_fmt,
            "subtitles": [s.codec_context.name for s in container.streams.subtitles],
        }
        audio_streams = len(container.streams.audio)
    info["audio"] = []
    for index in range(audio_streams):  # one pass per stream: demuxing consumes the file
        with av.open(str(path)) as container:
            stream = container.streams.audio[index]
            info["audio"].append((stream.codec_context.name, _packet_span(container, stream)))
    return info
