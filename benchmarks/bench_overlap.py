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
Wall time of `upscale_video` with its three stages overlapped (the default) and one after the other (`overlap=False`),
next to the time of each stage alone: decoding with scene detection, the model (to uint8 frames on the host), and
encoding. Overlapped, a job can approach its slowest stage; in series it takes their sum. Random weights.

    python benchmarks/bench_overlap.py --frames 60 --height 72 --width 128 --scale 2 --threads 1

`--config tiny` is the tiny model of bench_pipeline.py; `--config micro` (default) is the same with a 2-channel VAE, so
that on a CPU the model is about as fast as decoding and encoding are (as on a GPU with the full model), and the
overlap shows. Prints the numbers and saves JSON (device, command, commit) and a PNG under `results/`.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg
import torch
from bench_pipeline import RESULTS_DIR, TINY_CONFIGS, build_pipeline, environment, save_record

from diffusers_infvsr.scenes import SceneMarker
from diffusers_infvsr.video import H264Writer, decode_frames, probe_video, upscale_video
from diffusers_infvsr.video.jobs import _restore_frames


MICRO_VAE = {"base_dim": 2, "z_dim": 16, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 0}


SCENE_SOURCES = ("testsrc2", "smptebars", "rgbtestsrc", "testsrc", "smptehdbars", "yuvtestsrc")


def make_input(path: Path, frames: int, width: int, height: int, scenes: int = 2) -> None:
    """A `frames`-frame H.264 clip of `scenes` lavfi test patterns of about equal length one after another (hard cuts
    between them), with AAC audio."""
    import subprocess

    bounds = [frames * index // scenes for index in range(scenes + 1)]
    shots = [f"{SCENE_SOURCES[index % len(SCENE_SOURCES)]}=size={width}x{height}:rate=25:"
             f"duration={(bounds[index + 1] - bounds[index]) / 25}[s{index}]" for index in range(scenes)]  # fmt: skip
    video = ";".join(shots) + ";" + "".join(f"[s{index}]" for index in range(scenes)) + f"concat=n={scenes}[v]"
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-filter_complex", video, "-f", "lavfi", "-i",
               f"sine=frequency=440:duration={frames / 25}", "-map", "[v]", "-map", "0:a", "-frames:v", str(frames), "-shortest",
               "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)]  # fmt: skip
    subprocess.run(command, check=True)


def stage_times(pipe, path: str, scale: int, crf: int, scratch: Path) -> dict:
    """Seconds of each stage run alone over the whole clip, the way the job runs it."""
    started = time.perf_counter()
    marker = SceneMarker()
    items = list(marker.mark(frame.image for frame in decode_frames(path)))
    decode_s = time.perf_counter() - started

    started = time.perf_counter()
    restored = list(_restore_frames(pipe, items, scale, None, None, float("inf")))
    model_s = time.perf_counter() - started

    source = probe_video(path)
    height, width = restored[0][0].shape[:2]
    started = time.perf_counter()
    writer = H264Writer(str(scratch / "encoded.mp4"), width, height, source.fps, crf)
    for image, _ in restored:
        writer.write(image.numpy())
    writer.close()
    encode_s = time.perf_counter() - started
    return {"decode_and_scenes_s": decode_s, "model_s": model_s, "encode_s": encode_s}


def job_time(pipe, path: str, scale: int, crf: int, scratch: Path, overlap: bool) -> float:
    output = scratch / f"out-{overlap}.mp4"
    started = time.perf_counter()
    upscale_video(path, output, pipe, upscale_factor=scale, crf=crf, overwrite=True, overlap=overlap)
    return time.perf_counter() - started


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = record["stages_s"]
    figure, axis = plt.subplots(figsize=(7, 3.2))
    left = 0.0
    for name, color in (("decode_and_scenes_s", "tab:blue"), ("model_s", "tab:orange"), ("encode_s", "tab:green")):
        axis.barh("stages alone (sum)", stages[name], left=left, color=color, label=name[:-2].replace("_", " "))
        left += stages[name]
    axis.barh("serial job", record["serial_s"], color="tab:gray")
    axis.barh("overlapped job", record["overlapped_s"], color="tab:purple")
    axis.set_xlabel("seconds (median)")
    axis.set_title(f"{record['frames']} frames, {record['input_size']} x{record['scale']}, {record['config']} model")
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--config", choices=("micro", "tiny"), default="micro")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--height", type=int, default=72)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--crf", type=int, default=18)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", help="JSON path (default: results/cpu_<date>_overlap_<config>.json).")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.config == "micro":
        TINY_CONFIGS["vae"] = MICRO_VAE
    pipe = build_pipeline("tiny", torch.device("cpu"), torch.float32, None)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        clip = scratch / "input.mp4"
        make_input(clip, args.frames, args.width, args.height)
        job_time(pipe, str(clip), args.scale, args.crf, scratch, True)  # warm-up
        runs = {"stages": [], "serial": [], "overlapped": []}
        for _ in range(args.repeats):  # interleaved, so that other load on the machine hits every variant alike
            runs["stages"].append(stage_times(pipe, str(clip), args.scale, args.crf, scratch))
            runs["serial"].append(job_time(pipe, str(clip), args.scale, args.crf, scratch, False))
            runs["overlapped"].append(job_time(pipe, str(clip), args.scale, args.crf, scratch, True))

    stages = {name: statistics.median(run[name] for run in runs["stages"]) for name in runs["stages"][0]}
    record = {
        **environment(torch.device("cpu")),
        "command": " ".join(["python", *sys.argv]),
        "config": args.config,
        "frames": args.frames,
        "input_size": f"{args.width}x{args.height}",
        "scale": args.scale,
        "crf": args.crf,
        "threads": args.threads,
        "repeats": args.repeats,
        "load_average_1min": os.getloadavg()[0],
        "stages_s": stages,
        "stage_sum_s": sum(stages.values()),
        "slowest_stage_s": max(stages.values()),
        "serial_s": statistics.median(runs["serial"]),
        "overlapped_s": statistics.median(runs["overlapped"]),
        "runs": runs,
    }
    record["speedup"] = record["serial_s"] / record["overlapped_s"]
    print(json.dumps({key: value for key, value in record.items() if key != "runs"}, indent=2))

    output = Path(args.output or RESULTS_DIR / f"cpu_{record['date'][:10]}_overlap_{args.config}.json")
    save_record(record, output, plot)
    return record


if __name__ == "__main__":
    main()
