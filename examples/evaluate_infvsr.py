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
Evaluate upscaled videos: fidelity against ground truth, temporal consistency, and chunk seams.

Metrics, per frame then averaged per video, then over videos:
  PSNR and SSIM on RGB and on the BT.601 Y channel (needs ground truth);
  LPIPS (AlexNet, v0.1) and DISTS (needs ground truth and locally available weights: skipped with a notice otherwise);
  E*warp: flow warping error (Lai et al. 2018) x 1e-3, flow by OpenCV DIS (preset medium) on the output frames (or on
  the ground truth with --warp-flow gt), occlusions by forward-backward consistency.
With --seams (long videos), each chunk boundary of InfVSR's chunking (9 frames, then 12) is compared with the
consecutive frames inside the neighbouring chunks, by mean absolute difference and by warping error.

Frames are read one at a time, so videos of any length fit in memory. Inputs are video files or folders of frames, or
folders holding several of them (matched to the ground truth by name).

    python examples/evaluate_infvsr.py --outputs results/ --gt REDS4/GT/ --report eval/reds4
    python examples/evaluate_infvsr.py --outputs long_output.mp4 --seams --report eval/long
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from diffusers_infvsr.metrics import DISTS, LPIPS, chunk_starts, pair_warping_error, psnr, seam_scores, ssim
from diffusers_infvsr.video import VIDEO_EXTENSIONS, frame_files
from diffusers_infvsr.video import read_frames as read_video_frames


FLOW_ESTIMATOR = (
    "OpenCV DIS optical flow (preset medium, 8-bit luma); occlusion mask by forward-backward consistency (Lai et al. "
    "2018); squared RGB error in [0, 1] summed over channels, averaged over valid pixels and frame pairs; x 1e-3"
)
COLUMNS = {
    "psnr": "PSNR",
    "psnr_y": "PSNR-Y",
    "ssim": "SSIM",
    "ssim_y": "SSIM-Y",
    "lpips": "LPIPS",
    "dists": "DISTS",
    "ewarp": "E*warp (x1e-3)",
    "seam_score_diff": "seam (diff)",
    "seam_score_warp": "seam (warp)",
}


def find_videos(path: Path) -> dict[str, Path]:
    """Videos under `path` by name: a video file, a folder of frames, or a folder of those."""
    if path.is_file():
        return {path.stem: path}
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist.")
    if frame_files(path):
        return {path.name: path}
    videos = {
        child.stem if child.is_file() else child.name: child
        for child in sorted(path.iterdir())
        if (child.is_file() and child.suffix.lower() in VIDEO_EXTENSIONS) or (child.is_dir() and frame_files(child))
    }
    if not videos:
        raise FileNotFoundError(f"No video files or frame folders in {path}.")
    return videos


def read_frames(path: Path):
    """Yield `(H, W, 3)` uint8 RGB frames of a video file (PyAV) or a folder of images (sorted by name)."""
    if path.is_dir():
        for image in frame_files(path):
            with PIL.Image.open(image) as frame:
                yield np.asarray(frame.convert("RGB"))
        return
    yield from read_video_frames(path)


def load_perceptual(names: list[str], device: torch.device) -> tuple[dict, dict]:
    """The perceptual metrics whose weights are available locally, and a notice for each one that is not."""
    loaders = {"lpips": lambda: LPIPS.from_pretrained("alex"), "dists": DISTS.from_pretrained}
    models, skipped = {}, {}
    for name in names:
        try:
            models[name] = loaders[name]().to(device)
        except FileNotFoundError as error:
            skipped[name] = str(error)
            print(f"NOTICE: {name.upper()} skipped, its weights are not available locally. {error}")
    return models, skipped


def _to_tensor(frame: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.array(frame)).to(device).permute(2, 0, 1)[None].float() / 255  # a writable copy


@torch.no_grad()
def evaluate_video(
    output_path: Path,
    gt_path: Path | None,
    perceptual: dict,
    ewarp: bool = True,
    warp_flow: str = "output",
    seams: bool = False,
    crop_border: int = 0,
    device: torch.device = torch.device("cpu"),
) -> dict:
    """Per-video means of every metric (and per-boundary seam values with `seams`), reading one frame at a time."""
    per_frame = {name: [] for name in ("psnr", "psnr_y", "ssim", "ssim_y", *perceptual)} if gt_path else {}
    differences, warp_errors = [], []
    gt_frames = read_frames(gt_path) if gt_path else None
    previous = previous_gt = None
    num_frames = 0
    for frame in read_frames(output_path):
        gt = next(gt_frames, None) if gt_frames is not None else None
        if gt_frames is not None and gt is None:
            raise ValueError(f"{output_path} has more frames than its ground truth {gt_path}.")
        if gt is not None:
            if gt.shape != frame.shape:
                raise ValueError(f"{output_path}: frame {num_frames} is {frame.shape}, the ground truth {gt.shape}.")
            x, y = _to_tensor(frame, device), _to_tensor(gt, device)
            for y_channel, suffix in ((False, ""), (True, "_y")):
                per_frame[f"psnr{suffix}"].append(psnr(x, y, crop_border, y_channel).item())
                per_frame[f"ssim{suffix}"].append(ssim(x, y, crop_border, y_channel).item())
            for name, model in perceptual.items():
                per_frame[name].append(model(x, y).item())
        current = frame.astype(np.float32) / 255
        current_gt = gt.astype(np.float32) / 255 if gt is not None and warp_flow == "gt" else None
        if previous is not None:
            differences.append(float(np.abs(current - previous).mean()))
            if ewarp:
                warp_errors.append(pair_warping_error(previous, current, previous_gt, current_gt))
        previous, previous_gt = current, current_gt
        num_frames += 1
    if gt_frames is not None and next(gt_frames, None) is not None:
        raise ValueError(f"{output_path} has fewer frames ({num_frames}) than its ground truth {gt_path}.")
    if num_frames == 0:
        raise ValueError(f"{output_path} has no frames.")

    result = {"frames": num_frames, **{name: float(np.mean(values)) for name, values in per_frame.items()}}
    if warp_errors:
        result["ewarp"] = 1000 * float(np.nanmean(warp_errors))
    boundaries = chunk_starts(num_frames)
    if seams and boundaries:
        result["seams_diff"] = seam_scores(differences, boundaries)
        result["seam_score_diff"] = result["seams_diff"]["seam_score"]
        if warp_errors:
            result["seams_warp"] = seam_scores(warp_errors, boundaries)
            result["seam_score_warp"] = result["seams_warp"]["seam_score"]
    return result


def _format(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def mean_over_videos(results: dict) -> dict:
    """The mean of each metric over the videos that have it."""
    means = {}
    for key in COLUMNS:
        values = [result[key] for result in results.values() if key in result]
        if values:
            means[key] = float(np.mean(values))
    return means


def markdown_report(results: dict, means: dict, skipped: dict) -> str:
    """Per-video and mean table, seam tables per video, and the notices."""
    columns = list(means)
    lines = ["| video | frames | " + " | ".join(COLUMNS[key] for key in columns) + " |"]
    lines.append("|---" * (len(columns) + 2) + "|")
    for name, result in results.items():
        values = " | ".join(_format(result.get(key)) for key in columns)
        lines.append(f"| {name} | {result['frames']} | {values} |")
    total_frames = sum(result["frames"] for result in results.values())
    lines.append(f"| **mean** | {total_frames} | " + " | ".join(_format(means[key]) for key in columns) + " |")
    for name, result in results.items():
        for kind in ("diff", "warp"):
            if f"seams_{kind}" not in result:
                continue
            seams = result[f"seams_{kind}"]
            lines += [
                "",
                f"Seams of {name} by {'mean absolute difference' if kind == 'diff' else 'warping error'}:",
                "",
            ]
            lines += ["| boundary frame | across | within neighbours | ratio |", "|---|---|---|---|"]
            for entry in seams["boundaries"]:
                lines.append(
                    f"| {entry['frame']} | {entry['seam']:.5f} | {entry['within']:.5f} | {_format(entry['ratio'])} |"
                )
    lines += ["", f"E*warp: {FLOW_ESTIMATOR}."]
    lines += [f"NOTICE: {name.upper()} skipped: {reason}" for name, reason in skipped.items()]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outputs", type=Path, required=True, help="Upscaled video(s): file, frame folder or folder.")
    parser.add_argument("--gt", type=Path, help="Ground-truth HR video(s), matched by name.")
    parser.add_argument("--report", type=Path, required=True, help="Writes <report>.md and <report>.json.")
    parser.add_argument("--no-perceptual", action="store_true", help="Skip LPIPS and DISTS.")
    parser.add_argument("--no-ewarp", action="store_true", help="Skip the warping error (the slowest metric).")
    parser.add_argument("--warp-flow", choices=("output", "gt"), default="output", help="Frames the flow is taken on.")
    parser.add_argument("--seams", action="store_true", help="Report consistency at every chunk boundary.")
    parser.add_argument("--crop-border", type=int, default=0, help="Pixels ignored at each border for PSNR / SSIM.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    outputs = find_videos(args.outputs)
    gts = find_videos(args.gt) if args.gt else {}
    if args.gt and not set(outputs) & set(gts):
        raise ValueError(f"No output video has a ground truth of the same name: {sorted(outputs)} vs {sorted(gts)}.")
    if args.warp_flow == "gt" and not args.gt:
        raise ValueError("--warp-flow gt needs --gt.")
    perceptual, skipped = (
        ({}, {}) if args.no_perceptual or not args.gt else load_perceptual(["lpips", "dists"], device)
    )

    results = {}
    for name, path in outputs.items():
        if args.gt and name not in gts:
            print(f"NOTICE: {name} has no ground truth; only the temporal metrics are computed.")
        results[name] = evaluate_video(
            path,
            gts.get(name),
            perceptual,
            ewarp=not args.no_ewarp,
            warp_flow=args.warp_flow if name in gts else "output",
            seams=args.seams,
            crop_border=args.crop_border,
            device=device,
        )
        print(f"{name}: " + ", ".join(f"{COLUMNS[k]} {_format(v)}" for k, v in results[name].items() if k in COLUMNS))

    means = mean_over_videos(results)
    report = markdown_report(results, means, skipped)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.with_suffix(".md").write_text(report)
    summary = {
        "videos": results,
        "mean": means,
        "skipped": skipped,
        "settings": {**{k: str(v) for k, v in vars(args).items()}, "ewarp_estimator": FLOW_ESTIMATOR},
    }
    args.report.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(report)
    return summary


if __name__ == "__main__":
    main()
