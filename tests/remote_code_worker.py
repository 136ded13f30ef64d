"""Load an InfVSR pipeline with diffusers alone (`diffusers_infvsr` cannot be imported) and save its frames.

    python remote_code_worker.py PATH_OR_REPO_ID OUTPUT.npy [from_pretrained keyword arguments as JSON]

Tests call `run_without_package`, which runs this file in a fresh process with an empty Hugging Face home.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch


# The clip the worker upscales: `lr_video(10, 8, 8, seed=5)` of the tests (two chunks).
WORKER_CLIP = {"frames": 10, "height": 8, "width": 8, "seed": 5}


class _BlockPackage:
    """Import hook that makes `diffusers_infvsr` unavailable, as on a machine where it is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "diffusers_infvsr":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


def smooth_video(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """The tests' `lr_video` frames, rebuilt here without importing the tests' conftest."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3 * frames, max(2, height // 8), max(2, width // 8), generator=generator) * 2 - 1
    fine = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    video = fine.view(1, 3, frames, height, width).clamp(-1, 1)
    return ((video[0].permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()


def run_without_package(source, work_dir: Path, env_extra: dict | None = None, **kwargs) -> tuple[np.ndarray, str]:
    """Frames of `DiffusionPipeline.from_pretrained(source, trust_remote_code=True, **kwargs)` on the worker clip."""
    work_dir.mkdir(parents=True)
    output = work_dir / "frames.npy"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update({"HF_HOME": str(work_dir / "hf-home"), "HF_HUB_OFFLINE": "1", **(env_extra or {})})
    command = [sys.executable, __file__, str(source), str(output), json.dumps(kwargs)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=work_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(output), result.stdout


if __name__ == "__main__":
    sys.meta_path.insert(0, _BlockPackage())
    from diffusers import DiffusionPipeline

    source, output = sys.argv[1], sys.argv[2]
    kwargs = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    pipe = DiffusionPipeline.from_pretrained(source, trust_remote_code=True, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    assert not any(name.startswith("diffusers_infvsr") for name in sys.modules)
    frames = pipe(video=smooth_video(**WORKER_CLIP), output_type="np").frames
    np.save(output, frames)
    print(type(pipe).__module__, type(pipe.transformer).__module__, pipe.config.cache_frames)
