"""`infvsr` under `torchrun`: the videos of a folder are shared among the processes (gloo on the CPU)."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
from video_clips import decode, make_clip

from diffusers_infvsr.cli import main
from diffusers_infvsr.video.ranks import assign_largest_first


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def test_largest_first_balances_the_work():
    assert assign_largest_first([5, 1, 4, 3], 2) == [[0, 1], [2, 3]]
    assert assign_largest_first([7], 3) == [[0], [], []]
    sizes = [random.Random(seed).randint(1, 100) for seed in range(40)]
    shares = assign_largest_first(sizes, 3)
    assert sorted(index for share in shares for index in share) == list(range(40))
    loads = [sum(sizes[index] for index in share) for share in shares]
    assert max(loads) - min(loads) <= max(sizes)  # greedy, largest first: within one job of each other


def test_two_processes_share_a_folder_and_write_what_one_process_writes(tmp_path, tiny_pipeline_dir):
    folder = tmp_path / "videos"
    folder.mkdir()
    make_clip(folder / "a.mp4", frames=100, size="32x16")  # the largest: rank 0 alone, long after rank 1 is done
    (folder / "broken.mp4").write_text("not a video\n")  # then rank 1 gets the rest, this one first
    make_clip(folder / "c.mp4", frames=3, size="16x16", source="smptebars")
    options = ["--model", str(tiny_pipeline_dir), "--lossless", "--scale", "2"]

    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port()]
    command = [*launch, "-m", "diffusers_infvsr.cli", str(folder), "-o", str(tmp_path / "two"), *options]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert main([str(folder), "-o", str(tmp_path / "one"), *options]) == 1

    assert result.returncode == 1, result.stderr[-3000:]  # the broken file on rank 1 is the whole run's failure
    assert "[1/3 on rank 0] wrote" in result.stdout and "a.mp4: 100 frames" in result.stdout
    assert "[3/3 on rank 1] wrote" in result.stdout and "c.mp4: 3 frames" in result.stdout
    assert result.stdout.count("wrote") == 2
    assert result.stderr.count("error: ") == 1 and "broken.mp4 cannot be read as a video" in result.stderr
    assert result.stderr.count("done: 2 of 3 videos written") == 1  # by rank 0, with rank 1's failure
    assert f"  failed: {folder / 'broken.mp4'}" in result.stderr
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one")) == ["a.mp4", "c.mp4"]
    for name in ("a.mp4", "c.mp4"):
        np.testing.assert_array_equal(decode(tmp_path / "two" / name), decode(tmp_path / "one" / name))


def test_a_killed_process_stops_the_run_and_resume_finishes_identically(tmp_path, tiny_pipeline_dir):
    folder = tmp_path / "videos"
    folder.mkdir()
    make_clip(folder / "a.mp4", frames=48, size="24x16")  # the larger: rank 0
    make_clip(folder / "b.mp4", frames=48, size="16x16", source="smptebars")  # rank 1
    options = ["--model", str(tiny_pipeline_dir), "--lossless", "--scale", "2", "--checkpoint-interval", "0"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port()]
    command = [*launch, "-m", "diffusers_infvsr.cli", str(folder), "-o", str(tmp_path / "two"), *options]

    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job = tmp_path / "two" / ".b.mp4.infvsr-partial"
    deadline = time.monotonic() + 240
    while not list(job.glob("checkpoint-*.pt")):
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint on rank 1"
        time.sleep(0.02)
    rank_1 = json.loads((tmp_path / "two" / ".b.mp4.infvsr-lock").read_text())["pid"]
    os.kill(rank_1, signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)  # the launcher stops rank 0 too: nobody waits for the dead one
    assert process.returncode != 0 and "SIGKILL" in stderr
    assert job.is_dir() and not (tmp_path / "two" / "b.mp4").exists()

    result = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[2/2 on rank 1] wrote" in result.stdout and "b.mp4: 48 frames" in result.stdout
    assert "resumed after" in result.stdout.split("b.mp4: 48 frames")[1].splitlines()[0]
    assert "done: 2 of 2 videos written" in result.stderr
    assert main([str(folder), "-o", str(tmp_path / "one"), *options]) == 0
    for name in ("a.mp4", "b.mp4"):
        np.testing.assert_array_equal(decode(tmp_path / "two" / name), decode(tmp_path / "one" / name))


def test_a_process_whose_model_fails_still_reports_at_the_end(tmp_path, monkeypatch, capsys):
    """Rank 1 of 2 (the launcher stood in for): its error becomes its result, so rank 0 is not left waiting."""
    gathered = []

    class SecondOfTwo:
        num_ranks, rank, device = 2, 1, None

        def __init__(self, cpu, share_work):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            pass

        def share(self, sizes):
            return assign_largest_first(sizes, self.num_ranks)[self.rank]

        def gather(self, result):
            gathered.append(result)
            return [{"failed": [], "done_before": 0}, result]

    monkeypatch.setattr("diffusers_infvsr.video.ranks.Ranks", SecondOfTwo)
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(bytes(200))  # rank 0
    (folder / "b.mp4").write_bytes(bytes(100))  # rank 1
    assert main([str(folder), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "no-model")]) == 1
    assert gathered == [{"failed": [str(folder / "b.mp4")], "done_before": 0}]
    stderr = capsys.readouterr().err
    assert stderr.count("error: ") == 1 and "error: Cannot load the model" in stderr
    assert "done:" not in stderr  # the summary is rank 0's
