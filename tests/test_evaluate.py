import json
from pathlib import Path

import av
import cv2
import numpy as np
import PIL.Image
import pytest
import torch
from conftest import load_script
from skimage.metrics import peak_signal_noise_ratio

from diffusers_infvsr.metrics import perceptual


@pytest.fixture(scope="module")
def evaluate():
    return load_script("examples/evaluate_infvsr.py")


def moving_video(num_frames: int = 30, size: int = 32) -> list[np.ndarray]:
    """uint8 frames of a smooth image drifting right by half a pixel per frame."""
    noise = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    image = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    frames = []
    for t in range(num_frames):
        shift = np.float32([[1, 0, 0.5 * t], [0, 1, 0]])
        frames.append((cv2.warpAffine(image, shift, (size, size), borderMode=cv2.BORDER_REFLECT) * 255).round())
    return [frame.astype(np.uint8) for frame in frames]


def save_folder(frames, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for index, frame in enumerate(frames):
        PIL.Image.fromarray(frame).save(folder / f"{index:04d}.png")
    return folder


def save_video(frames, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_evaluation_report(evaluate, tmp_path, monkeypatch):
    # No perceptual weights anywhere: LPIPS and DISTS must be skipped with a notice, never computed with random weights.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(perceptual, "_package_file", lambda *parts: None)
    gt = moving_video()
    # The output: noisy, and its second chunk (InfVSR's chunks: 9, then 12 frames) 12% brighter: seams at 9 and 21.
    rng = np.random.default_rng(1)
    output = [
        np.clip(frame + rng.normal(0, 3, frame.shape) + (30 if 9 <= t < 21 else 0), 0, 255).astype(np.uint8)
        for t, frame in enumerate(gt)
    ]
    save_folder(gt, tmp_path / "gt" / "clip_a")
    save_folder(output, tmp_path / "outputs" / "clip_a")
    save_video(output, tmp_path / "outputs" / "clip_b.mp4")

    summary = evaluate.main(
        [
            "--outputs",
            str(tmp_path / "outputs"),
            "--gt",
            str(tmp_path / "gt"),
            "--report",
            str(tmp_path / "report"),
            "--seams",
        ]
    )

    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["mean"] == pytest.approx(summary["mean"])
    clip_a, clip_b = saved["videos"]["clip_a"], saved["videos"]["clip_b"]
    expected_psnr = np.mean([peak_signal_noise_ratio(g, o, data_range=255) for g, o in zip(gt, output)])
    assert clip_a["frames"] == 30 and clip_a["psnr"] == pytest.approx(expected_psnr, rel=1e-6)
    assert 0 < clip_a["ssim"] < 1 and 0 < clip_a["ssim_y"] < 1 and clip_a["psnr_y"] > 0
    assert set(saved["skipped"]) == {"lpips", "dists"} and "lpips" not in clip_a and "dists" not in clip_a
    assert clip_a["ewarp"] > 0
    assert [entry["frame"] for entry in clip_a["seams_diff"]["boundaries"]] == [9, 21]
    assert clip_a["seam_score_diff"] > 2 and clip_a["seam_score_warp"] > 2
    # A video file without ground truth: temporal metrics only.
    assert clip_b["frames"] == 30 and "psnr" not in clip_b and clip_b["ewarp"] > 0
    assert saved["mean"]["psnr"] == pytest.approx(clip_a["psnr"])

    markdown = (tmp_path / "report.md").read_text()
    assert "| clip_a | 30 |" in markdown and "| **mean** | 60 |" in markdown
    assert "NOTICE: LPIPS skipped" in markdown and "NOTICE: DISTS skipped" in markdown
    assert "OpenCV DIS" in markdown and "Seams of clip_a" in markdown


def test_frame_count_mismatch_is_an_error(evaluate, tmp_path):
    frames = moving_video(num_frames=6, size=16)
    save_folder(frames, tmp_path / "gt")
    save_folder(frames[:5], tmp_path / "out")
    with pytest.raises(ValueError, match="fewer frames"):
        evaluate.evaluate_video(tmp_path / "out", tmp_path / "gt", perceptual={})
