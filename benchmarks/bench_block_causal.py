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
Time and peak memory of one Stage II training step of the DiT alone: the block-causal forward
(`CausalWanTransformer3DModel(..., chunk_frames=[3, 3, 3], cache_frames=3)`) and its backward, with random weights.

Peak memory is the growth of the process's peak RSS during the timed step (on CPU; the peak is reset through
`/proc/self/clear_refs` just before), or `torch.cuda.max_memory_allocated` above the memory held before the step (on
CUDA). Run it with `MALLOC_MMAP_THRESHOLD_=65536` on CPU, as below, so that peaks are reproducible (glibc's adaptive
heap otherwise makes them vary by hundreds of MiB). The default is a mid-size configuration that a CPU runs in seconds: 2 blocks of 4 heads x 64, and 9 latent
frames of 36 x 64 (a 288 x 512 clip), i.e. 5184 tokens.

    MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/bench_block_causal.py
    python benchmarks/bench_block_causal.py --device cuda --dtype bf16 --layers 30 --heads 12 --head-dim 128 \
        --height 60 --width 90
"""

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import torch
from bench_pipeline import RESULTS_DIR, environment, save_record

import diffusers_infvsr
from diffusers_infvsr import CausalWanTransformer3DModel


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--frames", type=int, default=9, help="Latent frames (chunks of 3).")
    parser.add_argument("--height", type=int, default=36, help="Latent height.")
    parser.add_argument("--width", type=int, default=64, help="Latent width.")
    parser.add_argument("--device", type=str, default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="Timed steps after one warm-up step.")
    parser.add_argument("--label", type=str, default=None)
    parser.add_argument("--output", type=str, default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(0)
    dim = args.heads * args.head_dim
    model = CausalWanTransformer3DModel(
        num_attention_heads=args.heads,
        attention_head_dim=args.head_dim,
        in_channels=16,
        out_channels=16,
        text_dim=512,
        freq_dim=256,
        ffn_dim=4 * dim,
        num_layers=args.layers,
    ).to(device, dtype)
    latents = torch.randn(1, 16, args.frames, args.height, args.width, device=device, dtype=dtype)
    context = torch.randn(1, 145, 512, device=device, dtype=dtype)
    timestep = torch.tensor([400.0], device=device)
    chunks = [3] * (args.frames // 3) + ([args.frames % 3] if args.frames % 3 else [])

    def step():
        model.zero_grad(set_to_none=True)
        out = model(latents, timestep, context, chunk_frames=chunks, cache_frames=3, return_dict=False)[0]
        out.float().square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    times, cpu_times, peaks = [], [], []
    for _ in range(args.repeats):
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
            before = rss_kib("VmRSS") * 1024
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else rss_kib("VmHWM") * 1024
        peaks.append(peak - before)

    tokens = args.frames * (args.height // 2) * (args.width // 2)
    result = {
        "benchmark": "block_causal_training_step",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "package_path": str(Path(diffusers_infvsr.__file__).resolve().parent),
        **environment(device),
        "threads": args.threads,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "load_average_1min": os.getloadavg()[0],
        "config": {**vars(args), "tokens": tokens, "chunks": chunks, "dense_mask_bytes": tokens * tokens},
        "step_s": times,
        "median_step_s": sorted(times)[len(times) // 2],
        "cpu_step_s": cpu_times,
        "median_cpu_step_s": sorted(cpu_times)[len(cpu_times) // 2],
        "peak_memory_growth_bytes": peaks,
        "median_peak_memory_growth_mib": sorted(peaks)[len(peaks) // 2] / 2**20,
    }
    print(
        f"{tokens} tokens, chunks {chunks}: median step {result['median_step_s']:.2f} s (CPU time "
        f"{result['median_cpu_step_s']:.2f} s), peak memory growth "
        f"{result['median_peak_memory_growth_mib']:.0f} MiB ({args.device}, {args.dtype}, {args.threads} thread(s))"
    )
    label = args.label or result["commit"].replace("+", "-")
    output = Path(args.output or RESULTS_DIR / f"{device.type}_{datetime.date.today()}_block_causal_{label}.json")
    save_record(result, output)


if __name__ == "__main__":
    main()
