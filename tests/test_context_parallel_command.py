"""`infvsr --context-parallel`: one video on 2 gloo CPU processes under torchrun equals one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import ENV
from test_context_parallel import free_port
from video_clips import decode, ffmpeg, make_clip

from diffusers_infvsr.video import VideoFileError, upscale_video
from diffusers_infvsr.video.context_parallel import check_context_parallel_split


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """Two shots of 16 and 5 frames: a scene cut at 16 and chunks of 9, 7 and 5 frames (3, 2 and 2 latent frames).
    16x16 upscaled x4 is 4x4 tokens a latent frame: an even split over 2 processes."""
    folder = tmp_path_factory.mktemp("context_parallel_clip")
    shots = [make_clip(folder / f"{name}.mp4", frames, size="16x16", source=name)
             for name, frames in (("testsrc2", 16), ("smptebars", 5))]  # fmt: skip
    ffmpeg("-i", shots[0], "-i", shots[1], "-filter_complex", "concat=n=2", "-c:v", "libx264", folder / "clip.mp4")
    return str(folder / "clip.mp4")


def torchrun_infvsr(report_folder, *arguments) -> subprocess.CompletedProcess:
    """`infvsr ARGUMENTS` on 2 gloo CPU processes under torchrun; each writes its counts into `report_folder`."""
    worker = Path(__file__).with_name("cli_context_parallel_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
               str(worker), str(report_folder), *map(str, arguments)]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)


@pytest.fixture(scope="module")
def two_processes(clip, tiny_pipeline_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("context_parallel_command")
    output = folder / "out" / "upscaled.mp4"
    result = torchrun_infvsr(folder, clip, "-o", output, "--model", tiny_pipeline_dir, "--device", "cpu", "--lossless",
                             "--checkpoint-interval", 0, "--context-parallel", "ulysses")  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = [json.loads((folder / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    return output, reports, result


def test_two_processes_write_the_frames_of_one(two_processes, clip, tiny_pipe, tmp_path):
    output, reports, result = two_processes
    assert result.stdout.count("wrote") == 1 and "21 frames, 2 scenes" in result.stdout  # rank 0 alone writes
    assert sorted(os.listdir(output.parent)) == [output.name]  # no job folder, lock or second file left behind
    # Both ranks ran the transformer through Ulysses' all-to-all: query, key, value and output of 2 self-attention
    # layers for 3 chunks. Checkpoints would hold rank 0's share of the KV cache only: none is saved.
    expected_report = {"exit": 0, "all_to_all": 4 * 2 * 3, "checkpoints": 0}
    assert reports[0] == reports[1] == expected_report

    single = tmp_path / "single.mp4"
    assert upscale_video(clip, single, tiny_pipe, lossless=True).scene_starts == [0, 16]
    parallel, expected = decode(output).astype(int), decode(single).astype(int)
    assert parallel.shape == expected.shape == (21, 64, 64, 3)
    # The fp32 outputs differ by about 1e-6 (the same sums in another order, see test_context_parallel.py); after
    # rounding to uint8 a value near a .5 boundary may flip by one level, which the lossless yuv444p round trip can
    # turn into at most 2 levels of RGB. Rare: measured none on this clip, 13 of 258048 values on a one-scene clip; at most 0.1 % may differ at all.
    difference = np.abs(parallel - expected)
    assert difference.max() <= 2 and (difference > 0).mean() <= 1e-3


@pytest.mark.parametrize(
    "environment, extra, message",
    [
        ({}, [], "--context-parallel ulysses runs one video on several processes (one GPU each): launch the command "
                 "with `torchrun --nproc_per_node N"),
        ({"WORLD_SIZE": "2"}, ["--input-is-folder"], "give one video file, not a folder"),
        ({"WORLD_SIZE": "2"}, ["--resume"], "--resume is not available with --context-parallel"),
        ({"WORLD_SIZE": "2", "RANK": "0"}, [], "--context-parallel needs a GPU for every process; this machine has none"),
    ],
)  # fmt: skip
def test_context_parallel_errors_come_before_the_model(clip, tmp_path, environment, extra, message):
    source = str(Path(clip).parent) if "--input-is-folder" in extra else clip
    extra = [argument for argument in extra if argument != "--input-is-folder"]
    launch = {name: value for name, value in ENV.items() if name not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    output = tmp_path / "out.mp4"
    command = [sys.executable, "-m", "diffusers_infvsr.cli", source, "-o", str(output), "--model", "no/such-model",
               "--context-parallel", "ulysses", *extra]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env={**launch, **environment})
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert result.returncode != 0 and "Traceback" not in result.stderr and "Cannot load the model" not in result.stderr
    assert not output.exists() and not list(tmp_path.glob(".*infvsr-*"))


def test_a_stream_that_does_not_split_is_refused_before_it_starts(tiny_pipe):
    # Tokens a latent frame: 16x16 x4 -> 4x4; 20x20 x4 -> 5x5; 15x9 x3 -> 48x32 (padded) -> 3x2. The tiny model has
    # 2 heads.
    check_context_parallel_split(tiny_pipe, 16, 16, 4, "ulysses", 2)
    check_context_parallel_split(tiny_pipe, 20, 20, 4, "ring", 5)
    check_context_parallel_split(tiny_pipe, 15, 9, 3, "ring", 6)
    with pytest.raises(VideoFileError, match=r"20x20 upscaled x4 gives 5x5 = 25 a frame"):
        check_context_parallel_split(tiny_pipe, 20, 20, 4, "ring", 2)
    with pytest.raises(VideoFileError, match=r"over 3 processes .* gives 5x5 = 25 a frame"):
        # A full chunk (3 latent frames, 75 tokens) would split, but a short last chunk of 1 latent frame not.
        check_context_parallel_split(tiny_pipe, 20, 20, 4, "ring", 3)
    with pytest.raises(VideoFileError, match=r"15x9 upscaled x3 gives 3x2 = 6 a frame"):
        check_context_parallel_split(tiny_pipe, 15, 9, 3, "ring", 4)
    with pytest.raises(VideoFileError, match="the model's 2 attention heads .* not evenly over 4"):
        check_context_parallel_split(tiny_pipe, 16, 16, 4, "ulysses", 4)


def test_a_failure_of_rank_0_before_the_stream_stops_every_process(tiny_pipeline_dir, tmp_path):
    # Rank 0 refuses the frame size after loading the model; rank 1 waits for it at a barrier and must not hang.
    odd = make_clip(tmp_path / "odd.mp4", frames=9, size="20x20")
    output = tmp_path / "out.mp4"
    reports = tmp_path / "reports"
    reports.mkdir()
    result = torchrun_infvsr(reports, odd, "-o", output, "--model", tiny_pipeline_dir, "--device", "cpu",
                             "--context-parallel", "ulysses")  # fmt: skip
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "gives 5x5 = 25 a frame" in errors[0], result.stderr
    assert sorted(os.listdir(tmp_path)) == ["odd.mp4", "reports"]  # no output, job folder or lock


def test_an_interrupted_job_is_not_taken_over(clip, tmp_path):
    output = tmp_path / "out.mp4"
    job = tmp_path / ".out.mp4.infvsr-partial"
    job.mkdir()
    (job / "job.json").write_text("{}")
    launch = {name: value for name, value in ENV.items() if name not in ("RANK", "LOCAL_RANK")}
    command = [sys.executable, "-m", "diffusers_infvsr.cli", clip, "-o", str(output), "--model", "no/such-model",
               "--context-parallel", "ring"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env={**launch, "WORLD_SIZE": "2"})
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "--context-parallel cannot resume it: pass --overwrite" in errors[0], result.stderr
    assert result.returncode == 1 and (job / "job.json").read_text() == "{}"
