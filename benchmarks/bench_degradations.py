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
Seconds to degrade one training clip (`diffusers_infvsr.training.degrade`) on one thread, the work a data loader
worker does per clip.

The clip is a slow pan over matplotlib's sample photograph (a natural image), resized to cover the requested size.
Each seed draws a different set of degradation parameters (kernels, resizes, noise, codecs); the report gives the
time of every seed, their mean and median, and the process CPU time.

    python benchmarks/bench_degradations.py --frames 33 --height 720 --width 1280 --seeds 8
"""

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import PIL.Image
import torch
from bench_pipeline import RESULTS_DIR, environment, save_record

import diffusers_infvsr
from diffusers_infvsr.training import degrade


def natural_clip(frames: int, height: int, width: int) -> torch.Tensor:
    """(frames, 3, height, width) uint8: a pan of one pixel per frame over a natural photograph."""
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    image = PIL.Image.open(path).convert("RGB")
    zoom = max((height + frames) / image.height, (width + frames) / image.width)
    image = image.resize((round(image.width * zoom) + 1, round(image.height * zoom) + 1), PIL.Image.BICUBIC)
    array = np.asarray(image)
    clip = np.stack([array[index : index + height, index : index + width] for index in range(frames)])
    return torch.from_numpy(clip).permute(0, 3, 1, 2).contiguous()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--seeds", type=int, default=8, help="Degradation draws timed (seeds 0 .. N-1).")
    parser.add_argument("--label", type=str, default=None, help="Name of the run in the output file.")
    parser.add_argument("--output", type=str, default=None, help="JSON path (default: under benchmarks/results/).")
    args = parser.parse_args()

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    clip = natural_clip(args.frames, args.height, args.width)
    degrade(clip[:5, :, :64, :64], seed=0)  # warm-up: codecs and kernels loaded once
    times, cpu_times = [], []
    for seed in range(args.seeds):
        start, cpu_start = time.perf_counter(), time.process_time()
        lq = degrade(clip, seed=seed)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        print(f"seed {seed}: {times[-1]:.2f} s (CPU {cpu_times[-1]:.2f} s), output {tuple(lq.shape)}", flush=True)

    result = {
        "benchmark": "degradations",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "package_path": str(Path(diffusers_infvsr.__file__).resolve().parent),
        **environment(torch.device("cpu")),
        "threads": 1,
        "load_average_1min": os.getloadavg()[0],
        "opencv": cv2.__version__,
        "clip": [args.frames, 3, args.height, args.width],
        "seconds_per_clip": times,
        "cpu_seconds_per_clip": cpu_times,
        "mean_s": float(np.mean(times)),
        "median_s": float(np.median(times)),
        "mean_cpu_s": float(np.mean(cpu_times)),
    }
    print(
        f"{args.frames} x {args.height} x {args.width}: mean {result['mean_s']:.2f} s, median {result['median_s']:.2f} s"
        f" per clip (CPU mean {result['mean_cpu_s']:.2f} s), one thread"
    )
    label = args.label or result["commit"].replace("+", "-")
    output = Path(args.output or RESULTS_DIR / f"cpu_{datetime.date.today()}_degradations_{label}.json")
    save_record(result, output)


if __name__ == "__main__":
    main()
