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
"""`infvsr`: upscale video files with InfVSR, streaming, with scene cuts, audio and resumable jobs.

infvsr input.mp4 -o output.mp4 --model path/or/hub-id [--scale 4]
infvsr videos/ -o upscaled/ --model path/or/hub-id
"""

import argparse
import os
import sys
from pathlib import Path

import torch
from diffusers.models.attention_dispatch import AttentionBackendName

from .pipeline_infvsr import InfVSRPipeline
from .video import VIDEO_EXTENSIONS, VideoFileError, probe_video, upscale_video


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class ModelLoadError(Exception):
    """The model named by `--model` cannot be loaded."""


def parse_time(value: str) -> float:
    """Seconds (`12.5`) or a timecode (`MM:SS`, `HH:MM:SS.mmm`)."""
    try:
        seconds = 0.0
        for part in value.split(":"):
            seconds = seconds * 60 + float(part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a time: use seconds (12.5) or HH:MM:SS.mmm") from None
    if seconds < 0 or value.count(":") > 2:
        raise argparse.ArgumentTypeError(f"{value!r} is not a time: use seconds (12.5) or HH:MM:SS.mmm")
    return seconds


def positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return int(value)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="infvsr",
        description="Upscale videos with InfVSR (streaming one-step diffusion video super-resolution).",
        epilog="Exit status: 0 when every video was written, 1 on errors, 130 when interrupted (then run the same "
        "command with --resume to continue).",
    )
    parser.add_argument("input", help="A video file, or a folder of videos.")
    parser.add_argument("-o", "--output", required=True, help="Output .mp4/.mkv/.mov file, or a folder.")
    parser.add_argument("--model", required=True, help="InfVSR diffusers folder or Hub id.")
    parser.add_argument("--scale", type=positive_int, default=4, help="Integer upscaling factor (default 4).")
    quality = parser.add_argument_group("output")
    quality.add_argument("--crf", type=int, default=18, help="x264 quality, lower is better (default 18).")
    quality.add_argument("--lossless", action="store_true", help="Lossless x264 in yuv444p.")
    quality.add_argument("--start", type=parse_time, default=0.0, help="Start time (seconds or HH:MM:SS.mmm).")
    quality.add_argument("--max-frames", type=positive_int, help="Upscale at most this many frames.")
    quality.add_argument("--overwrite", action="store_true", help="Replace existing outputs or interrupted jobs.")
    quality.add_argument("--resume", action="store_true", help="Continue interrupted jobs where they stopped.")
    quality.add_argument(
        "--checkpoint-interval",
        type=float,
        default=120.0,
        help="Seconds between resume checkpoints, taken at chunk boundaries (0: after every chunk; default 120).",
    )
    scenes = parser.add_argument_group("scenes")
    scenes.add_argument("--no-scene-detect", action="store_true", help="One stream for the whole video.")
    scenes.add_argument(
        "--scene-threshold", type=float, default=27.0, help="Content threshold for scene cuts (default 27)."
    )
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", help="Torch device (default: cuda when available, else cpu).")
    runtime.add_argument("--dtype", choices=DTYPES, help="Weights dtype (default: bf16 on CUDA, fp32 otherwise).")
    runtime.add_argument("--cpu-offload", action="store_true", help="Keep idle models in CPU memory.")
    runtime.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks.")
    runtime.add_argument(
        "--attention-backend",
        choices=[backend.value for backend in AttentionBackendName],
        metavar="NAME",
        help="diffusers attention backend, e.g. flash, _flash_3, sage, native (default: native).",
    )
    return parser.parse_args(argv)


def plan_jobs(input_path: Path, output_path: Path) -> list[tuple[Path, Path]]:
    """The (input, output) pairs: one file, or every video in a folder (outputs named after the inputs)."""
    if not input_path.exists():
        raise VideoFileError(f"{input_path}: no such file or folder.")
    if input_path.is_dir():
        if output_path.suffix and not output_path.is_dir():
            raise VideoFileError(f"The input {input_path} is a folder, so the output must be a folder, not a file.")
        videos = sorted(path for path in input_path.iterdir() if path.suffix.lower() in VIDEO_EXTENSIONS)
        if not videos:
            raise VideoFileError(f"{input_path} contains no video files ({', '.join(VIDEO_EXTENSIONS)}).")
        return [(video, output_path / f"{video.stem}.mp4") for video in videos]
    if output_path.is_dir():
        output_path = output_path / f"{input_path.stem}.mp4"
    return [(input_path, output_path)]


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".infvsr-write-check-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise VideoFileError(f"Cannot write to the output folder {folder}: {error.strerror}.") from error


def load_pipeline(args: argparse.Namespace) -> InfVSRPipeline:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    try:
        pipe = InfVSRPipeline.from_pretrained(args.model, dtype=dtype)
    except Exception as error:  # a bad path, an unknown Hub id or no network: all end the same way for the user
        raise ModelLoadError(
            f"Cannot load the model {args.model!r}: {str(error).rstrip('.')}. Pass an InfVSR diffusers folder (made with `python -m "
            "diffusers_infvsr.convert`) or a Hub id that holds one."
        ) from error
    if args.cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if args.attention_backend:
        pipe.transformer.set_attention_backend(args.attention_backend)
    if args.compile:
        pipe.transformer.compile_repeated_blocks(dynamic=True)
    return pipe


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        jobs = plan_jobs(Path(args.input), Path(args.output))
        folder_mode = Path(args.input).is_dir()
        if not folder_mode:  # fail before loading the model
            probe_video(jobs[0][0])
            if jobs[0][1].exists() and not args.overwrite:
                raise VideoFileError(f"{jobs[0][1]} already exists. Pass --overwrite to replace it.")
        check_writable(jobs[0][1].parent)
        pipe = load_pipeline(args)
    except (VideoFileError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    failures = []
    for index, (input_path, output_path) in enumerate(jobs, start=1):
        prefix = f"[{index}/{len(jobs)}] " if folder_mode else ""
        pipe.set_progress_bar_config(desc=f"{prefix}{input_path.name}", unit="frame")
        try:
            result = upscale_video(
                input_path,
                output_path,
                pipe,
                upscale_factor=args.scale,
                start=args.start,
                max_frames=args.max_frames,
                crf=args.crf,
                lossless=args.lossless,
                scene_detection=not args.no_scene_detect,
                scene_threshold=args.scene_threshold,
                overwrite=args.overwrite,
                resume=args.resume,
                checkpoint_interval=args.checkpoint_interval,
            )
        except VideoFileError as error:
            print(f"error: {error}", file=sys.stderr)
            failures.append(input_path)
            continue
        except KeyboardInterrupt:
            print(
                f"\ninterrupted: {output_path} was not written. Run the same command with --resume to continue.",
                file=sys.stderr,
            )
            return 130
        resumed = f", resumed after {result.resumed_from} frames" if result.resumed_from else ""
        print(
            f"{prefix}wrote {result.output_path}: {result.num_frames} frames, {len(result.scene_starts)} scenes{resumed}"
        )

    if folder_mode:
        print(f"done: {len(jobs) - len(failures)} of {len(jobs)} videos written", file=sys.stderr)
        for failure in failures:
            print(f"  failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
