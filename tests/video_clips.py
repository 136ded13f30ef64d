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


def make_scenes_clip(path, scenes=(("testsrc2", 30), ("smptebars", 20), ("rgbtestsrc", 25)), size="32x24",
                     extra=()) -> str:  # fmt: skip
    r"""Shots of lavfi `(source, frames)` one after another (a hard cut between them) at 25 fps, key frames every 10
    frames and B-frames, with a sine tone (AAC) as long as the video; `extra` is added to the output options."""
    shots = [f"{source}=size={size}:rate=25:duration={frames / 25}[s{index}]" for index, (source, frames)
             in enumerate(scenes)]  # fmt: skip
    video = (
        ";".join(shots) + ";" + "".join(f"[s{index}]" for index in range(len(scenes))) + f"concat=n={len(scenes)}[v]"
    )
    seconds = sum(frames for _, frames in scenes) / 25
    ffmpeg("-filter_complex", video, "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-map", "[v]",
           "-map", "0:a", "-c:v", "libx264", "-g", "10", "-bf", "2", "-pix_fmt", "yuv420p", "-c:a", "aac", *extra,
           path)  # fmt: skip
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


def make_flash_clip(path, frames=40, flash=25, vfr=False, size="16x16", audio_tracks=1, extra=()) -> str:
    r"""
    Black frames with one white flash frame (frame `flash`) and, in each audio track, a 1 kHz beep that starts at the
    flash (AAC, silence elsewhere). `vfr` shows the first 10 frames at 10 fps and the rest at 30 fps; otherwise 30
    fps. `extra` is added to the output options (e.g. `-f mpegts`, metadata).
    """
    pts = "if(lt(N,10),N*3,20+N)/(30*TB)" if vfr else "N/(30*TB)"
    flash_time = (flash / 10 if flash < 10 else (20 + flash) / 30) if vfr else flash / 30
    duration = ((20 + frames) / 30 if vfr else frames / 30) + 0.1
    video = f"drawbox=c=white:t=fill:enable='eq(n,{flash})',setpts='{pts}'"
    beep = f"aevalsrc='if(between(t,{flash_time},{flash_time + 0.03}),sin(2*PI*1000*t),0)':s=48000:d={duration}"
    arguments = ["-f", "lavfi", "-i", f"color=c=black:size={size}:rate=30"]
    for _ in range(audio_tracks):
        arguments += ["-f", "lavfi", "-i", beep]
    arguments += ["-map", "0:v", *[item for index in range(audio_tracks) for item in ("-map", f"{index + 1}:a")]]
    arguments += ["-vf", video, "-fps_mode", "passthrough", "-frames:v", frames, "-c:v", "libx264", "-pix_fmt",
                  "yuv420p", "-c:a", "aac", *extra]  # fmt: skip
    ffmpeg(*arguments, path)
    return str(path)


def video_times(path) -> list[float]:
    """Presentation time in seconds of every video frame, in display order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sorted(float(frame.pts * stream.time_base) for frame in container.decode(stream))


def flash_time(path) -> float:
    """Time of the brightest video frame."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [(frame.to_ndarray(format="gray").mean(), frame.pts) for frame in container.decode(stream)]
        return float(max(frames)[1] * stream.time_base)


def beep_times(path, threshold=0.2) -> list[float]:
    """Time of the first loud sample in each audio track."""
    times = []
    with av.open(str(path)) as container:
        tracks = len(container.streams.audio)
    for index in range(tracks):
        with av.open(str(path)) as container:
            stream = container.streams.audio[index]
            for frame in container.decode(stream):
                samples = np.abs(frame.to_ndarray()).max(axis=0)
                loud = np.flatnonzero(samples > threshold)
                if loud.size:
                    times.append(float(frame.pts * stream.time_base) + loud[0] / frame.sample_rate)
                    break
    return times
