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
Speed and memory of `InfVSRPipeline.stream` on synthetic input, with random weights (speed and memory do not depend
on the weight values, so nothing is downloaded).

Every measurement runs in a fresh subprocess, so the peak memory of one run is not hidden by an earlier, larger one:
peak RSS on CPU (`ru_maxrss`, with glibc's mmap threshold fixed so transient peaks are reproducible), peak allocated
memory on CUDA (`torch.cuda.max_memory_allocated`). Each process builds the pipeline, streams a warm-up video, then
`--repeats` timed runs; the run with the median wall time is reported, with its process CPU time (less sensitive to
other load on a shared machine) and the 1-minute load average. Stage times are taken from outside the pipeline: the VAE encode and
decode of `WanVAEStream`, the DiT forward and the DAPE reference encoding (CUDA synchronised around each); `host_io`
is the rest (making input frames, host/device copies, bicubic upsampling, conversion of the output to numpy).

    python benchmarks/bench_pipeline.py --config tiny --frames 24
    python benchmarks/bench_pipeline.py --config tiny --frames 24 --scaling 1,4,16
    python benchmarks/bench_pipeline.py --config full --device cuda --dtype bf16 --height 180 --width 320 --frames 33 \
        --scaling 1,3 --attention-backend flash
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from diffusers_infvsr.metrics import chunk_starts


RESULTS_DIR = Path(__file__).resolve().parent / "results"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
STAGES = ("vae_encode", "dit", "vae_decode", "image_encoder")

# A scaled-down InfVSR with the real latent width (16 channels) and chunking: fast on CPU, same code paths.
TINY_CONFIGS = {
    "transformer": {
        "num_attention_heads": 2,
        "attention_head_dim": 32,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": 32,
        "freq_dim": 32,
        "ffn_dim": 128,
        "num_layers": 2,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
    },
    "vae": {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1},
    "image_encoder": {
        "image_size": 32,
        "patch_size": 4,
        "embed_dim": 8,
        "depths": [2, 2],
        "num_heads": [2, 2],
        "window_size": 4,
        "projection_dim": 32,
    },
}


def full_configs() -> dict:
    """The released InfVSR: Wan2.1 1.3B DiT (text_dim 512), Wan2.1 VAE and DAPE Swin-L 384 (library defaults)."""
    from diffusers_infvsr.conversion import INFVSR_TRANSFORMER_CONFIG

    return {"transformer": dict(INFVSR_TRANSFORMER_CONFIG), "vae": {}, "image_encoder": {}}


@contextlib.contextmanager
def build_on(device: torch.device, dtype: torch.dtype):
    """Create tensors on `device` in `dtype`: random weights are made in place, never as float32 copies on the host."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(previous)


def build_pipeline(config: str, device: torch.device, dtype: torch.dtype, attention_backend: str | None):
    """An `InfVSRPipeline` with random weights, the `"tiny"` or `"full"` configuration."""
    from diffusers import AutoencoderKLWan

    from diffusers_infvsr import CausalWanTransformer3DModel, DAPEImageEncoder, InfVSRPipeline, InfVSRScheduler

    configs = TINY_CONFIGS if config == "tiny" else full_configs()
    torch.manual_seed(0)
    with build_on(device, dtype):
        pipe = InfVSRPipeline(
            transformer=CausalWanTransformer3DModel(**configs["transformer"]).eval(),
            vae=AutoencoderKLWan(**configs["vae"]).eval(),
            image_encoder=DAPEImageEncoder(**configs["image_encoder"]).eval(),
            scheduler=InfVSRScheduler(),
        )
    if attention_backend:
        pipe.transformer.set_attention_backend(attention_backend)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def synthetic_frames(num_frames: int, height: int, width: int):
    """A generator of random uint8 `(3, height, width)` frames: input memory stays one frame."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(num_frames):
        yield torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)


def num_chunks(num_frames: int) -> int:
    """Chunks of one scene: 9 frames, then 12."""
    return 1 + len(chunk_starts(num_frames))


class StageTimer:
    """Accumulates wall time per stage; synchronises CUDA at both ends of every timed call."""

    def __init__(self, device: torch.device):
        self.device = device
        self.totals = dict.fromkeys(STAGES, 0.0)

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def wrap(self, stage: str, function):
        def timed(*args, **kwargs):
            start = self.now()
            try:
                return function(*args, **kwargs)
            finally:
                self.totals[stage] += self.now() - start

        return timed

    @contextlib.contextmanager
    def attached(self, pipe):
        """Time `WanVAEStream.encode` / `decode` and the forward of the DiT and the image encoder of `pipe`."""
        from diffusers_infvsr.vae_stream import WanVAEStream

        originals = {"encode": WanVAEStream.encode, "decode": WanVAEStream.decode}
        modules = {"dit": pipe.transformer, "image_encoder": pipe.image_encoder}
        for stage, module in modules.items():
            module.forward = self.wrap(stage, module.forward)
        WanVAEStream.encode = self.wrap("vae_encode", originals["encode"])
        WanVAEStream.decode = self.wrap("vae_decode", originals["decode"])
        try:
            yield self
        finally:
            WanVAEStream.encode, WanVAEStream.decode = originals["encode"], originals["decode"]
            for module in modules.values():
                del module.forward  # back to the class's forward


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def current_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    import psutil

    return psutil.Process().memory_info().rss


def run_worker(args) -> dict:
    """Build, warm up, time `--repeats` runs of `--frames` frames; one process, one frame count."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = build_pipeline(args.config, device, DTYPES[args.dtype], args.attention_backend)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    baseline = current_memory_bytes(device)

    def stream(num_frames):
        frames = synthetic_frames(num_frames, args.height, args.width)
        for _ in pipe.stream(frames, upscale_factor=args.scale, output_type="np"):
            pass  # like writing to a file: nothing is kept

    stream(min(args.frames, 21))  # warm-up: a first and a later chunk
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    runs = []
    for _ in range(args.repeats):
        timer = StageTimer(device)
        with timer.attached(pipe):
            start, cpu_start = timer.now(), time.process_time()
            stream(args.frames)
            total, cpu = timer.now() - start, time.process_time() - cpu_start
        runs.append({"total_s": total, "cpu_s": cpu, **{f"{stage}_s": t for stage, t in timer.totals.items()}})
    peak = peak_memory_bytes(device)

    median = sorted(runs, key=lambda run: run["total_s"])[(len(runs) - 1) // 2]  # the run with the median time
    chunks = num_chunks(args.frames)
    host_io = median["total_s"] - sum(median[f"{stage}_s"] for stage in STAGES)
    return {
        "frames": args.frames,
        "chunks": chunks,
        "total_s": median["total_s"],
        "fps": args.frames / median["total_s"],
        "time_per_frame_s": median["total_s"] / args.frames,
        "cpu_time_per_frame_s": median["cpu_s"] / args.frames,
        "per_chunk_s": {
            **{stage: median[f"{stage}_s"] / chunks for stage in STAGES},
            "host_io": host_io / chunks,
            "total": median["total_s"] / chunks,
        },
        "peak_memory_bytes": peak,
        "memory_kind": "cuda_max_memory_allocated" if device.type == "cuda" else "peak_rss",
        "baseline_memory_bytes": baseline,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "repeats": runs,
    }


def run_in_subprocess(args, num_frames: int) -> dict:
    command = [sys.executable, __file__, "--worker", "--frames", str(num_frames)]
    for name in ("config", "device", "dtype", "height", "width", "scale", "repeats", "threads", "attention_backend"):
        value = getattr(args, name)
        if value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]
    # Large blocks straight from mmap and back: glibc's adaptive heap otherwise makes transient RSS peaks vary by
    # tens of MiB from run to run.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        raise RuntimeError(f"Benchmark worker failed ({' '.join(command)}):\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def save_record(record: dict, output: Path, plot=None) -> None:
    """Write `record` as JSON to `output` and, given `plot(record, path)`, a PNG beside it; say where."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n")
    if plot is None:
        print(f"saved {output}")
        return
    plot(record, output.with_suffix(".png"))
    print(f"saved {output} and {output.with_suffix('.png')}")


def environment(device: torch.device) -> dict:
    import diffusers

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=Path(__file__).parent
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            models = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
            device_name = models[0].split(":", 1)[1].strip() if models else device_name
    return {
        "device": device.type,
        "device_name": device_name,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "commit": commit + ("+dirty" if dirty else ""),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def format_table(results: list[dict]) -> str:
    header = (
        "| frames | chunks | total s | FPS | ms/frame | CPU ms/frame | ms/chunk: encode | DiT | decode | DAPE "
        "| host I/O | peak MiB | vs first |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    first = results[0]
    for result in results:
        chunk = result["per_chunk_s"]
        lines.append(
            f"| {result['frames']} | {result['chunks']} | {result['total_s']:.2f} | {result['fps']:.1f} "
            f"| {1000 * result['time_per_frame_s']:.1f} | {1000 * result['cpu_time_per_frame_s']:.1f} "
            f"| {1000 * chunk['vae_encode']:.1f} | {1000 * chunk['dit']:.1f} "
            f"| {1000 * chunk['vae_decode']:.1f} | {1000 * chunk['image_encoder']:.1f} | {1000 * chunk['host_io']:.1f} "
            f"| {result['peak_memory_bytes'] / 2**20:.0f} "
            f"| time/frame x{result['time_per_frame_s'] / first['time_per_frame_s']:.2f}, "
            f"CPU/frame x{result['cpu_time_per_frame_s'] / first['cpu_time_per_frame_s']:.2f}, "
            f"memory x{result['peak_memory_bytes'] / first['peak_memory_bytes']:.2f} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = [result["frames"] for result in results]
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    time_axis.plot(frames, [result["total_s"] for result in results], "o-", label="total")
    time_axis.set(xlabel="frames", ylabel="seconds", title="time (linear is ideal)")
    per_frame_axis = time_axis.twinx()
    for key, color in (("time_per_frame_s", "tab:orange"), ("cpu_time_per_frame_s", "tab:red")):
        per_frame_axis.plot(frames, [1000 * result[key] for result in results], "s--", color=color)
    per_frame_axis.set_ylabel("ms per frame, wall (orange) and CPU (red), dashed")
    per_frame_axis.set_ylim(bottom=0)
    memory_axis.plot(frames, [result["peak_memory_bytes"] / 2**20 for result in results], "o-", color="tab:green")
    memory_axis.set(xlabel="frames", ylabel="MiB", title=f"peak memory, {results[0]['memory_kind']} (flat is ideal)")
    memory_axis.set_ylim(bottom=0)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--frames", type=int, default=24, help="Frames per run (the base count in scaling mode).")
    parser.add_argument("--height", type=int, help="LR height (default 32 tiny, 180 full).")
    parser.add_argument("--width", type=int, help="LR width (default 32 tiny, 320 full).")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--attention-backend", help="diffusers attention backend for the DiT, e.g. flash, _native_cudnn"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--scaling", help="Comma-separated multiples of --frames, e.g. 1,3,10: one run each, side by side, and a plot."
    )
    parser.add_argument("--output", type=Path, help="JSON path (default: benchmarks/results/<device>_<date>_...json)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.height = args.height or (32 if args.config == "tiny" else 180)
    args.width = args.width or (32 if args.config == "tiny" else 320)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return {}
    multiples = [int(m) for m in args.scaling.split(",")] if args.scaling else [1]
    device = torch.device(args.device)
    results = [run_in_subprocess(args, args.frames * multiple) for multiple in multiples]
    settings = {
        name: getattr(args, name)
        for name in (
            "config",
            "height",
            "width",
            "scale",
            "dtype",
            "device",
            "attention_backend",
            "repeats",
            "threads",
        )
    }
    settings["output_size"] = [args.height * args.scale, args.width * args.scale]
    report = {"environment": environment(device), "settings": settings, "results": results}

    tag = "scaling" if args.scaling else "run"
    device_tag = report["environment"]["device_name"] if device.type == "cuda" else "cpu"
    stem = f"{device_tag}_{datetime.date.today().isoformat()}_{args.config}_{args.dtype}_{tag}_{args.frames}f"
    stem = "".join(c if c.isalnum() or c in "-_." else "-" for c in stem)
    output = args.output or RESULTS_DIR / f"{stem}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    if args.scaling:
        report["plot"] = output.with_suffix(".png").name
        plot(
            results,
            output.with_suffix(".png"),
            f"{args.config} {args.dtype} {device_tag}, {args.height}x{args.width} x{args.scale}",
        )
    output.write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"{args.config} config, {args.dtype}, {report['environment']['device_name']}, LR {args.height}x{args.width} x{args.scale}"
    )
    print(format_table(results))
    print(f"Saved {output}")
    return report


if __name__ == "__main__":
    main()
