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

Only the standard library is imported until the arguments are checked, so `--help` and argument errors answer at
once; torch, diffusers and PyAV come after.
"""

import argparse
import math
import os
import sys
from pathlib import Path


DTYPES = ("bf16", "fp16", "fp32")
CONTEXT_PARALLEL = ("ulysses", "ring")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_STATUS = (
    "Exit status: 0 when every video was written (or was already done), 1 when a video or the model failed, 2 for a "
    "bad argument, 130 when interrupted (then run the same command with --resume to continue)."
)


class CommandError(Exception):
    """A problem the command reports as one `error:` line."""


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message}. See `{self.prog} --help`.\n")


def parse_time(value: str) -> float:
    """Seconds (`12.5`) or a timecode (`MM:SS`, `HH:MM:SS.mmm`)."""
    try:
        seconds = 0.0
        for part in value.split(":"):
            seconds = seconds * 60 + float(part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a time: use seconds (12.5) or HH:MM:SS.mmm") from None
    if not 0 <= seconds < float("inf") or value.count(":") > 2:
        raise argparse.ArgumentTypeError(f"{value!r} is not a time: use seconds (12.5) or HH:MM:SS.mmm")
    return seconds


def positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return int(value)


def crf_value(value: str) -> int:
    if not value.isdigit() or int(value) > 51:
        raise argparse.ArgumentTypeError(f"expected an x264 CRF from 0 to 51, got {value!r}")
    return int(value)


def seconds_value(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {value!r}")
    return seconds


def threshold_value(value: str) -> float:
    try:
        threshold = float(value)
    except ValueError:
        threshold = -1.0
    if not 0 < threshold <= 255:
        raise argparse.ArgumentTypeError(f"expected a content threshold in (0, 255], got {value!r}")
    return threshold


def parse_args(argv=None) -> argparse.Namespace:
    parser = _ArgumentParser(
        prog="infvsr",
        description="Upscale videos with InfVSR (streaming one-step diffusion video super-resolution). Weights: a "
        "folder made from the official release with `python -m diffusers_infvsr.convert`, or a Hub id that holds one.",
        epilog=EXIT_STATUS,
    )
    parser.add_argument("input", help="A video file, or a folder of videos.")
    parser.add_argument("-o", "--output", required=True, help="Output .mp4/.mkv/.mov file, or a folder.")
    parser.add_argument("--model", required=True, help="InfVSR diffusers folder or Hub id.")
    parser.add_argument("--scale", type=positive_int, default=4, help="Integer upscaling factor (default 4).")
    output = parser.add_argument_group("output")
    output.add_argument("--crf", type=crf_value, default=18, help="x264 quality 0-51, lower is better (default 18).")
    output.add_argument("--lossless", action="store_true", help="Lossless x264 in yuv444p.")
    output.add_argument("--start", type=parse_time, default=0.0, help="Start time (seconds or HH:MM:SS.mmm).")
    output.add_argument("--max-frames", type=positive_int, help="Upscale at most this many frames.")
    output.add_argument("--overwrite", action="store_true", help="Replace existing outputs or interrupted jobs.")
    output.add_argument("--resume", action="store_true", help="Continue interrupted jobs; skip finished outputs.")
    output.add_argument(
        "--checkpoint-interval",
        type=seconds_value,
        default=120.0,
        help="Seconds between resume checkpoints, taken at chunk boundaries (0: after every chunk; default 120).",
    )
    output.add_argument(
        "--allow-damaged",
        action="store_true",
        help="Go on past truncated or corrupt input (missing frames show the frame before them; audio stays in sync).",
    )
    scenes = parser.add_argument_group("scenes")
    scenes.add_argument("--no-scene-detect", action="store_true", help="One stream for the whole video.")
    scenes.add_argument(
        "--scene-threshold", type=threshold_value, default=27.0, help="Content threshold for scene cuts (default 27)."
    )
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", help="Torch device (default: cuda when available, else cpu).")
    runtime.add_argument("--dtype", choices=DTYPES, help="Weights dtype (default: bf16 on CUDA, fp32 otherwise).")
    runtime.add_argument("--cpu-offload", action="store_true", help="Keep idle models in CPU memory.")
    runtime.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks.")
    runtime.add_argument(
        "--no-overlap",
        action="store_true",
        help="Decode, restore and encode one after the other instead of at once (same output; for debugging).",
    )
    runtime.add_argument(
        "--attention-backend",
        metavar="NAME",
        help="diffusers attention backend, e.g. flash, _flash_3, sage, native (default: native).",
    )
    runtime.add_argument(
        "--context-parallel",
        choices=CONTEXT_PARALLEL,
        help="Run one video on all the processes of a torchrun launch together, one GPU each, the transformer split "
        "over them with diffusers' context parallelism (for one long scene or 4K frames). Saves no checkpoints.",
    )
    args = parser.parse_args(argv)
    check_context_parallel(parser, args)
    return args


def check_context_parallel(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`--context-parallel` needs several processes, one video and no `--resume` (it saves no checkpoints)."""
    if args.context_parallel is None:
        return
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        parser.error(
            f"--context-parallel {args.context_parallel} runs one video on several processes (one GPU each): launch "
            "the command with `torchrun --nproc_per_node N -m diffusers_infvsr.cli ...` (N >= 2), or leave it out"
        )
    if Path(args.input).is_dir():
        parser.error("--context-parallel runs one video on all processes: give one video file, not a folder")
    if args.resume:
        parser.error(
            "--resume is not available with --context-parallel: each process holds only its share of the KV cache, "
            "so no checkpoints are saved. Pass --overwrite to start the interrupted job again"
        )


def plan_jobs(input_path: Path, output_path: Path) -> list[tuple[Path, Path]]:
    r"""The (input, output) pairs: one file, or every video in a folder (outputs named after the inputs, `.mp4`).
    Two inputs that would share an output are an error, before any work."""
    from .video import OUTPUT_EXTENSIONS, VIDEO_EXTENSIONS, VideoFileError

    if not input_path.exists():
        raise VideoFileError(f"{input_path}: no such file or folder.")
    if not input_path.is_dir():
        if output_path.is_dir():
            output_path = output_path / f"{input_path.stem}.mp4"
        return [(input_path, output_path)]
    if output_path.suffix.lower() in OUTPUT_EXTENSIONS and not output_path.is_dir():
        raise VideoFileError(f"The input {input_path} is a folder, so the output must be a folder, not a file.")
    videos = sorted(path for path in input_path.iterdir() if path.suffix.lower() in VIDEO_EXTENSIONS)
    if not videos:
        raise VideoFileError(f"{input_path} contains no video files ({', '.join(VIDEO_EXTENSIONS)}).")
    jobs, sources = [], {}
    for video in videos:
        output = output_path / f"{video.stem}.mp4"
        if output in sources:
            raise VideoFileError(
                f"{sources[output].name} and {video.name} would both be written to {output}. Rename one of them, or "
                "upscale them one at a time with their own output names."
            )
        if output.resolve() == video.resolve():
            raise VideoFileError(f"{video} would be overwritten by its own output; choose another output folder.")
        sources[output] = video
        jobs.append((video, output))
    return jobs


def check_writable(folder: Path) -> None:
    from .video import VideoFileError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".infvsr-write-check-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise VideoFileError(f"Cannot write to the output folder {folder}: {error.strerror}.") from error


def resolve_device(name: str | None):
    """The torch device to run on; `CommandError` if it does not exist on this machine."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CommandError(f"--device {name!r} is not a torch device; use e.g. cpu, cuda or cuda:1.") from None
    available = {"cpu": lambda: 1, "cuda": torch.cuda.device_count, "xpu": lambda: torch.xpu.device_count()}
    available["mps"] = lambda: int(torch.backends.mps.is_available())
    count = available.get(device.type, lambda: 0)()
    if count == 0 or (device.index is not None and device.index >= count):
        have = f"{count} {device.type} device(s)" if count else f"no {device.type} device"
        raise CommandError(f"--device {name}: this machine has {have}. Use --device cpu, or leave it out.")
    return device


def check_attention_backend(name: str | None) -> None:
    if name is None:
        return
    from diffusers.models.attention_dispatch import AttentionBackendName

    names = [backend.value for backend in AttentionBackendName]
    if name not in names:
        raise CommandError(f"--attention-backend {name!r} is unknown; choose one of {', '.join(names)}.")


def start_context_parallel(args: argparse.Namespace):
    """Join the launch's process group (torchrun's environment) and return this process's device."""
    import torch
    import torch.distributed as dist

    if torch.accelerator.device_count() == 0:  # diffusers 0.42 places each rank on an accelerator (`rank % count`)
        raise CommandError("--context-parallel needs a GPU for every process; this machine has none.")
    device = resolve_device(args.device)
    if device.type != "cpu" and device.index is None:
        device = torch.device(device.type, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type != "cpu":
        torch.accelerator.set_device_index(device.index)
    if not dist.is_initialized():
        dist.init_process_group()
    return device


def load_pipeline(args: argparse.Namespace, device=None):
    import torch

    from .pipeline_infvsr import InfVSRPipeline

    device = device or resolve_device(args.device)
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    dtype = dtypes[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    try:
        pipe = InfVSRPipeline.from_pretrained(args.model, dtype=dtype)
    except Exception as error:  # a bad path, an unknown Hub id or no network: all end the same way for the user
        raise CommandError(
            f"Cannot load the model {args.model!r}: {str(error).rstrip('.')}. Pass an InfVSR diffusers folder (made "
            "with `python -m diffusers_infvsr.convert`) or a Hub id that holds one."
        ) from error
    if args.cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if args.attention_backend:
        pipe.transformer.set_attention_backend(args.attention_backend)
    if args.context_parallel:
        import torch.distributed as dist
        from diffusers import ContextParallelConfig

        degree = {f"{args.context_parallel}_degree": dist.get_world_size()}
        pipe.enable_context_parallel(ContextParallelConfig(**degree))
    if args.compile:
        pipe.transformer.compile_repeated_blocks(dynamic=True)
    return pipe


def follow(args: argparse.Namespace) -> int:
    """A context-parallel process other than rank 0: the same stream as rank 0, which alone writes the output."""
    import torch.distributed as dist

    from .video.context_parallel import follow_video

    pipe = load_pipeline(args, start_context_parallel(args))
    pipe.set_progress_bar_config(disable=True)
    try:
        dist.barrier()  # rank 0 has checked the job and the model
    except RuntimeError:  # rank 0 stopped before the stream, with an error line
        return EXIT_FAILED
    follow_video(args.input, pipe, args.scale, args.start, args.max_frames, not args.no_scene_detect,
                 args.scene_threshold, args.allow_damaged)  # fmt: skip
    return EXIT_OK


def _already_done(output_path: Path, args: argparse.Namespace) -> bool:
    from .video import work_folder

    return args.resume and not args.overwrite and output_path.exists() and not work_folder(output_path).exists()


def run(args: argparse.Namespace) -> int:
    """Every job, or under `torchrun` / `accelerate launch` this process's share of them (largest first; the scenes of
    a single video); the first process prints the summary of all. With `--context-parallel` all processes run the one
    video together, and the first alone writes it."""
    from .video.ranks import Ranks, launched_processes

    if args.context_parallel and int(os.environ.get("RANK", "0")) > 0:
        return follow(args)
    jobs = plan_jobs(Path(args.input), Path(args.output))
    folder_mode = Path(args.input).is_dir()
    check_writable(jobs[0][1].parent)
    # A single process imports no torch before the input and lock checks, so a refused run answers at once.
    share_work = launched_processes() > 1 and not args.context_parallel
    with Ranks(cpu=share_work and resolve_device(args.device).type == "cpu", share_work=share_work) as ranks:
        split_video = not folder_mode and ranks.num_ranks > 1 and not args.no_scene_detect
        mine = [0] if split_video else ranks.share([input_path.stat().st_size for input_path, _ in jobs])
        if not folder_mode and not split_video and ranks.num_ranks > 1 and ranks.rank == 0:
            print(f"warning: without scene detection one video is one stream, run by one process; the other "
                  f"{ranks.num_ranks - 1} wait.", file=sys.stderr)  # fmt: skip
        outcome = {"failed": [], "done_before": 0, "finished": set()}
        try:
            _run_jobs(args, jobs, mine, folder_mode, ranks, outcome, split_video)
        except Exception as error:  # noqa: BLE001 - one process's failure must not keep the others waiting below
            if ranks.num_ranks == 1:
                raise
            print(f"error: {error_message(error)}", file=sys.stderr)
            outcome["failed"] += [str(jobs[index][0]) for index in mine if index not in outcome["finished"]]
        outcomes = ranks.gather({"failed": outcome["failed"], "done_before": outcome["done_before"]})
        failures = [failure for result in outcomes for failure in result["failed"]]
        if folder_mode and ranks.rank == 0:
            done_before = sum(result["done_before"] for result in outcomes)
            already = f" ({done_before} already done)" if done_before else ""
            print(f"done: {len(jobs) - len(failures)} of {len(jobs)} videos written{already}", file=sys.stderr)
            for failure in failures:
                print(f"  failed: {failure}", file=sys.stderr)
    return EXIT_FAILED if failures else EXIT_OK


def _check_video(args: argparse.Namespace, input_path: Path, output_path: Path):
    """Every check of a single video's job that needs no model, and the lock; its `VideoInfo`."""
    from .video import JobLock, check_job, work_folder
    from .video.jobs import interlaced_warning

    source = check_job(input_path, output_path, args.scale, args.crf, args.overwrite, args.allow_damaged, args.start)
    if source.interlaced:
        print(f"warning: {interlaced_warning(source)}", file=sys.stderr)
    if args.context_parallel and work_folder(output_path).exists() and not args.overwrite:
        raise CommandError(
            f"An interrupted job for {output_path} exists ({work_folder(output_path)}). --context-parallel cannot "
            "resume it: pass --overwrite to start over, or continue it with --resume and without --context-parallel."
        )
    with JobLock(output_path):  # refuse now if another run holds it
        pass
    return source


def _load_for(args: argparse.Namespace, ranks):
    """The pipeline on this process's device."""
    device = start_context_parallel(args) if args.context_parallel else resolve_device(args.device)
    if ranks.device is not None and device.type == ranks.device.type and device.index is None:
        device = ranks.device  # this process's own GPU
    check_attention_backend(args.attention_backend)
    return load_pipeline(args, device)


def _run_jobs(args: argparse.Namespace, jobs, mine: list[int], folder_mode: bool, ranks, outcome: dict,
              split_video: bool) -> None:  # fmt: skip
    """Run the jobs numbered `mine`, recording in `outcome` the failed inputs, how many were already done and which
    jobs finished (written, skipped or failed). With `split_video` every process takes part in the one video, its
    scenes shared among them."""
    from .video import VideoFileError, upscale_video
    from .video.scene_split import abandon

    if not mine:
        return
    source = None  # checked once here (single file) or inside each job (folder)
    if not folder_mode and _already_done(jobs[0][1], args):  # the same answer on every process: none takes part
        if ranks.rank == 0:
            print(f"{jobs[0][1]} is already done (nothing to resume); pass --overwrite to redo it.", file=sys.stderr)
        return
    try:
        if not folder_mode and ranks.rank == 0:  # fail before loading the model; rank 0 tells a split video's others
            source = _check_video(args, *jobs[0])
        pipe = _load_for(args, ranks)
    except Exception as error:
        if not split_video:
            raise
        abandon(ranks, error_message(error))  # the others learn it when they meet, and rank 0 reports it
        if ranks.rank == 0:
            raise
        return
    if args.context_parallel:
        import torch.distributed as dist

        from .video.context_parallel import check_context_parallel_split

        check_context_parallel_split(pipe, source.width, source.height, args.scale, args.context_parallel,
                                     dist.get_world_size())  # fmt: skip
        dist.barrier()  # the other processes start their stream now

    on_rank = f" on rank {ranks.rank}" if ranks.num_ranks > 1 and not split_video else ""
    for index in mine:
        input_path, output_path = jobs[index]
        prefix = f"[{index + 1}/{len(jobs)}{on_rank}] " if folder_mode or on_rank else ""
        if _already_done(output_path, args):
            print(f"{prefix}skipped {output_path}: already done")
            outcome["done_before"] += 1
            outcome["finished"].add(index)
            continue
        scenes_of = f"[scenes on rank {ranks.rank}] " if split_video else prefix
        pipe.set_progress_bar_config(desc=f"{scenes_of}{input_path.name}", unit="frame")
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
                checkpoint_interval=math.inf if args.context_parallel else args.checkpoint_interval,
                allow_damaged=args.allow_damaged,
                overlap=not args.no_overlap,
                source=source,
                ranks=ranks if split_video else None,
            )
        except VideoFileError as error:
            print(f"error: {error}", file=sys.stderr)
            outcome["failed"].append(str(input_path))
            outcome["finished"].add(index)
            continue
        outcome["finished"].add(index)
        if result is None:  # this process's scenes are done; rank 0 wrote the video
            continue
        resumed = f", resumed after {result.resumed_from} frames" if result.resumed_from else ""
        scenes = f", {len(result.scene_starts)} scenes" if result.scene_starts else ""
        processes = f" on {ranks.num_ranks} processes" if split_video else ""
        print(
            f"{prefix}wrote {result.output_path}: {result.num_frames} frames{scenes}{processes}{resumed}", flush=True
        )


def error_message(error: Exception) -> str:
    """The text of the one `error:` line for an exception."""
    from .video import VideoFileError

    if isinstance(error, (CommandError, VideoFileError)):
        return str(error)
    if isinstance(error, OSError):
        return f"{error.strerror or error} ({error.filename or 'no file'}). Check the disk and permissions."
    return f"unexpected {type(error).__name__}: {error}. Please report it with the command you ran."


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command with --resume to continue.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - the command's promise: one `error:` line, never a traceback
        print(f"error: {error_message(error)}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
