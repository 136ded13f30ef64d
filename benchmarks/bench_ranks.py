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
"""
Frames per second of `infvsr` with 1 process and with `torchrun --nproc_per_node N` (gloo, CPU, one thread per
process), and whether the outputs are the same, frame for frame (`--lossless`): on a folder of two-scene clips (the
videos are shared among the processes), or with `--one-video` on one clip of `--scenes` scenes (its scenes are shared).
Random weights of the tiny model of bench_pipeline.py; the time includes each process's start and model load.

    python benchmarks/bench_ranks.py --videos 4 --frames 24 --processes 2
    python benchmarks/bench_ranks.py --one-video --scenes 6 --frames 240 --processes 2

Prints the numbers and saves JSON (device, command, commit) and a PNG under `results/`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from bench_overlap import make_input
from bench_pipeline import RESULTS_DIR, build_pipeline, environment, save_record

from diffusers_infvsr.video import probe_video
from diffusers_infvsr.video.scene_split import plan_scenes


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def run_infvsr(processes: int, source: Path, output: Path, model: Path, scale: int) -> tuple[list[str], float]:
    command = [sys.executable, "-m", "diffusers_infvsr.cli", str(source), "-o", str(output), "--model", str(model),
               "--lossless", "--scale", str(scale), "--device", "cpu"]  # fmt: skip
    if processes > 1:
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        command[1:3] = [*launcher, "-m", "diffusers_infvsr.cli"]
    environment_variables = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    subprocess.run(command, check=True, env=environment_variables, capture_output=True)
    return command, time.perf_counter() - started


def outputs(path: Path) -> list[Path]:
    return sorted(path.iterdir()) if path.is_dir() else [path]


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3))
    processes = list(record["frames_per_s"])
    bars = axis.bar([f"{count} process{'es' if count != '1' else ''}" for count in processes],
                    [record["frames_per_s"][count] for count in processes], color=["tab:gray", "tab:blue"])  # fmt: skip
    axis.bar_label(bars, fmt="%.2f")
    axis.set_ylim(0, 1.15 * max(record["frames_per_s"].values()))
    axis.set_ylabel("frames/s (incl. start and model load)")
    what = f"one video, {record['scenes']} scenes" if record["one_video"] else f"{record['videos']} videos"
    same = "identical frames" if record["identical_frames"] else "FRAMES DIFFER"
    axis.set_title(f"{what}, {record['frames']} frames, {record['input_size']} x{record['scale']}: {same}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=24, help="Frames per video, or of the one video.")
    parser.add_argument("--one-video", action="store_true", help="One video of --scenes scenes instead of a folder.")
    parser.add_argument("--scenes", type=int, default=6, help="Scenes of the one video (about equal lengths).")
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--output", help="JSON path (default: results/cpu_<date>_ranks[_one_video].json).")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model = scratch / "model"
        build_pipeline("tiny", torch.device("cpu"), torch.float32, None).save_pretrained(model)
        if args.one_video:
            source, suffix = scratch / "clip.mp4", ".mp4"
            make_input(source, args.frames, args.width, args.height, args.scenes)
        else:
            source, suffix = scratch / "videos", ""
            source.mkdir()
            for index in range(args.videos):
                make_input(source / f"clip-{index}.mp4", args.frames + index, args.width, args.height)
        timings, commands = {}, {}
        for processes in (1, args.processes):
            commands[processes], timings[processes] = run_infvsr(
                processes, source, scratch / f"out-{processes}{suffix}", model, args.scale
            )
        one, many = outputs(scratch / f"out-1{suffix}"), outputs(scratch / f"out-{args.processes}{suffix}")
        same_names = args.one_video or [path.name for path in one] == [path.name for path in many]
        identical = same_names and all(np.array_equal(decode(a), decode(b)) for a, b in zip(one, many))
        frames = sum(len(decode(path)) for path in one)
        if args.one_video:  # the decode-only pass that the first process runs before the scenes are shared
            started = time.perf_counter()
            plan_scenes(probe_video(source))
            planning_s = time.perf_counter() - started

    record = {
        **environment(torch.device("cpu")),
        "command": " ".join(["python", *sys.argv]),
        "infvsr_commands": {str(processes): " ".join(command[1:]) for processes, command in commands.items()},
        "one_video": args.one_video,
        "videos": 1 if args.one_video else args.videos,
        "scenes": args.scenes if args.one_video else 2 * args.videos,
        "frames": frames,
        "input_size": f"{args.width}x{args.height}",
        "scale": args.scale,
        "load_average_1min": os.getloadavg()[0],
        "wall_s": {str(processes): seconds for processes, seconds in timings.items()},
        "frames_per_s": {str(processes): frames / seconds for processes, seconds in timings.items()},
        "speedup": timings[1] / timings[args.processes],
        "identical_frames": identical,
    }
    if args.one_video:
        record["planning_pass_s"] = planning_s
    print(json.dumps(record, indent=2))
    name = f"cpu_{record['date'][:10]}_ranks{'_one_video' if args.one_video else ''}"
    output = Path(args.output or RESULTS_DIR / f"{name}.json")
    save_record(record, output, plot)
    return record


if __name__ == "__main__":
    main()
