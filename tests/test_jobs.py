"""Jobs behind `infvsr`: finished work survives every failure, job files are atomic, one job per output, resume
identity, folder mode. Failures are injected into `upscale_video` runs of the tiny random pipeline."""

import errno
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import run_infvsr
from video_clips import decode, make_clip, probe, video_times

from diffusers_infvsr import InfVSRPipeline
from diffusers_infvsr.cli import plan_jobs
from diffusers_infvsr.video import JobLock, VideoFileError, jobs, upscale_video, work_folder


OPTIONS = {"lossless": True, "checkpoint_interval": 0}  # a checkpoint after every chunk: 9 and 21 frames


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return Path(make_clip(tmp_path_factory.mktemp("job-input") / "clip.mp4", frames=21, size="16x16", audio=True))


@pytest.fixture(scope="module")
def reference(clip, tmp_path_factory, tiny_pipe):
    """Frames and audio of an uninterrupted run."""
    output = tmp_path_factory.mktemp("job-reference") / "reference.mp4"
    upscale_video(clip, output, tiny_pipe, **OPTIONS)
    return decode(output), probe(output)["audio"]


def assert_same_as(reference, output):
    np.testing.assert_array_equal(decode(output), reference[0])
    assert probe(output)["audio"] == reference[1]
    assert not work_folder(output).exists() and not list(output.parent.glob(".*infvsr-lock"))


def interrupt_at_checkpoint(monkeypatch, number):
    """Ctrl-C right after the `number`-th checkpoint was saved."""
    saved = jobs.JobFolder.save_checkpoint
    calls = []

    def save_then_interrupt(self, stream_state):
        saved(self, stream_state)
        calls.append(stream_state["frames_done"])
        if len(calls) == number:
            raise KeyboardInterrupt

    monkeypatch.setattr(jobs.JobFolder, "save_checkpoint", save_then_interrupt)


def test_a_failed_mux_keeps_the_job_and_resume_finishes_it(clip, reference, tmp_path, tiny_pipe, monkeypatch):
    output = tmp_path / "out.mp4"
    job = work_folder(output)
    mux = jobs.mux_output
    targets = []

    def watched_mux(video, target, *args):
        assert not output.exists()  # never muxed under the final name
        targets.append(Path(target))
        if len(targets) == 1:
            raise VideoFileError("Writing failed: Invalid data found when processing input (a corrupt AAC packet)")
        mux(video, target, *args)

    monkeypatch.setattr(jobs, "mux_output", watched_mux)
    with pytest.raises(VideoFileError, match="corrupt AAC packet.*kept in .*--resume.*without the input's other"):
        upscale_video(clip, output, tiny_pipe, **OPTIONS)
    assert not output.exists() and (job / "video.mp4").is_file() and (job / "joined.json").is_file()

    result = upscale_video(clip, output, tiny_pipe, resume=True, **OPTIONS)
    assert result.resumed_from == result.num_frames == 21  # only the mux was left
    assert [target.parent for target in targets] == [job, job]
    assert_same_as(reference, output)


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (needs root), so that a full disk is a real ENOSPC from the kernel."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mount]).returncode:
        pytest.skip("needs root to mount a tmpfs")
    yield mount
    subprocess.run(["umount", "-l", mount], check=True)


def fill(path: Path) -> None:
    with open(path, "ab") as file:
        try:
            while True:
                file.write(b"\0" * 65536)
                file.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC


@pytest.mark.parametrize("phase", ["segment", "checkpoint", "join-check", "join"])
def test_a_full_disk_keeps_the_work_and_resume_finishes_it(phase, small_disk, clip, reference, tiny_pipe, monkeypatch):
    output, filler = small_disk / "out.mp4", small_disk / "filler"
    if phase == "segment":  # the disk fills up while the second segment is written
        write, frames = jobs.H264Writer.write, []

        def write_on_a_filling_disk(self, frame, pts=None):
            frames.append(pts)
            if len(frames) == 12:
                fill(filler)
            write(self, frame, pts)

        monkeypatch.setattr(jobs.H264Writer, "write", write_on_a_filling_disk)
    elif phase == "checkpoint":
        save, calls = jobs.JobFolder.save_checkpoint, []

        def save_on_a_full_disk(self, stream_state):
            calls.append(1)
            if len(calls) == 2:
                fill(filler)
            save(self, stream_state)

        monkeypatch.setattr(jobs.JobFolder, "save_checkpoint", save_on_a_full_disk)
    else:
        join = jobs.join_segments

        def join_on_a_full_disk(*args):
            fill(filler)
            join(*args)

        check = jobs.check_free_space
        if phase == "join-check":  # the free-space check before the join finds the disk full
            monkeypatch.setattr(jobs, "check_free_space", lambda *args: (fill(filler), check(*args)))
            message = "needs [0-9.]+ MiB free"
        else:  # the check passed, then the disk fills up during the join
            monkeypatch.setattr(jobs, "check_free_space", lambda *args: None)
            monkeypatch.setattr(jobs, "join_segments", join_on_a_full_disk)
            message = ""

    with pytest.raises(VideoFileError, match="the disk is full") as error:
        upscale_video(clip, output, tiny_pipe, **OPTIONS)
    if phase == "join-check":
        assert "needs" in str(error.value) and "MiB free" in str(error.value), message
    assert "--resume" in str(error.value)
    job = work_folder(output)
    assert not output.exists() and json.loads((job / "job.json").read_text())["lossless"]
    assert not list(job.glob("*.partial*"))  # no half-written checkpoint, join or output
    checkpoints = sorted(job.glob("checkpoint-*.pt"))
    assert checkpoints and all(torch.load(path, weights_only=True)["segments"] for path in checkpoints)

    monkeypatch.undo()
    filler.unlink()
    result = upscale_video(clip, output, tiny_pipe, resume=True, **OPTIONS)
    assert result.resumed_from == (9 if phase in ("segment", "checkpoint") else 21)
    assert_same_as(reference, output)


def test_a_damaged_newest_checkpoint_falls_back_and_resume_ignores_paths(
    clip, reference, tmp_path, tiny_pipeline_dir, tiny_pipe, monkeypatch
):
    output = tmp_path / "out.mp4"
    interrupt_at_checkpoint(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        upscale_video(clip, output, tiny_pipe, **OPTIONS)
    monkeypatch.undo()
    newest, previous = jobs.JobFolder(output).checkpoints()
    assert (newest.name, previous.name) == ("checkpoint-000000021.pt", "checkpoint-000000009.pt")
    newest.write_bytes(newest.read_bytes()[:100])  # e.g. cut off by a crash of the machine

    # The same content under another name and date, the same weights from another path, another interval.
    moved = tmp_path / "elsewhere" / "renamed.mp4"
    moved.parent.mkdir()
    shutil.copy(clip, moved)
    os.utime(moved, (1, 1))
    model_copy = tmp_path / "model-copy"
    shutil.copytree(tiny_pipeline_dir, model_copy)
    other_pipe = InfVSRPipeline.from_pretrained(model_copy)
    other_pipe.set_progress_bar_config(disable=True)
    with pytest.raises(VideoFileError, match=r"Cannot resume .* \(crf\)\. .*add --overwrite"):
        upscale_video(moved, output, other_pipe, resume=True, crf=30, **OPTIONS)
    result = upscale_video(moved, output, other_pipe, resume=True, lossless=True, checkpoint_interval=7)
    assert result.resumed_from == 9
    assert_same_as(reference, output)


def test_segments_rejoin_on_the_inputs_timeline_when_mp4_stores_a_finer_time_base(tmp_path, tiny_pipe):
    """Matroska counts in 1/1000 s, which the MP4 segments store as 1/16000: segment starts (named in the unit the
    frames were written in) must be rescaled when joined, so a checkpoint after every chunk changes nothing."""
    source = make_clip(tmp_path / "input.mkv", frames=21, size="16x16")
    upscale_video(source, tmp_path / "segmented.mp4", tiny_pipe, **OPTIONS)
    upscale_video(source, tmp_path / "whole.mp4", tiny_pipe, lossless=True, checkpoint_interval=float("inf"))
    np.testing.assert_array_equal(decode(tmp_path / "segmented.mp4"), decode(tmp_path / "whole.mp4"))
    np.testing.assert_allclose(video_times(tmp_path / "segmented.mp4"), video_times(source), rtol=0, atol=1e-9)


def test_a_damaged_job_file_is_reported_and_overwrite_starts_over(clip, tmp_path, tiny_pipe):
    output = tmp_path / "out.mp4"
    work_folder(output).mkdir()
    (work_folder(output) / "job.json").write_bytes(b"")  # left by a full disk before job files were atomic
    with pytest.raises(VideoFileError, match="job.json is missing or damaged.*add --overwrite"):
        upscale_video(clip, output, tiny_pipe, resume=True, max_frames=3)
    result = upscale_video(clip, output, tiny_pipe, resume=True, overwrite=True, max_frames=3)
    assert result.resumed_from == 0 and probe(output)["frames"] == 3


def test_one_job_per_output(clip, tmp_path, tiny_pipeline_dir, tiny_pipe):
    output = tmp_path / "out.mp4"
    job = work_folder(output)
    with JobLock(output):  # a live job, held by this process
        job.mkdir()
        (job / "job.json").write_text("{}")
        for extra in ([], ["--overwrite"], ["--resume"], ["--resume", "--overwrite"]):
            result = run_infvsr(clip, "-o", output, "--model", tiny_pipeline_dir, *extra)
            assert result.returncode == 1, result.stderr
            [line] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
            assert f"being written by another infvsr run (process {os.getpid()} on {socket.gethostname()}" in line
            assert "Traceback" not in result.stderr
        with pytest.raises(VideoFileError, match="being written by another infvsr run"):
            upscale_video(clip, output, tiny_pipe, overwrite=True)
        assert (job / "job.json").read_text() == "{}"  # the live job is untouched

    # A lock file whose process is gone (a crash) is stale: the next run takes it over.
    lock = output.with_name(".out.mp4.infvsr-lock")
    lock.write_text(json.dumps({"pid": 2**22 + 1, "host": socket.gethostname(), "started": "earlier"}))
    assert upscale_video(clip, output, tiny_pipe, overwrite=True, max_frames=3).num_frames == 3
    assert not lock.exists()


def test_folder_mode_names_clashes_before_any_work_and_accepts_every_format(tmp_path, tiny_pipeline_dir):
    folder = tmp_path / "videos"
    folder.mkdir()
    make_clip(folder / "clip.mp4", frames=3, size="16x16")
    shutil.copy(folder / "clip.mp4", folder / "clip.webm")
    result = run_infvsr(folder, "-o", tmp_path / "out", "--model", tiny_pipeline_dir, "--overwrite")
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "clip.mp4 and clip.webm would both be written to" in line and "Rename one" in line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())

    (folder / "clip.webm").unlink()
    (folder / "anim.gif").write_bytes(b"GIF89a")
    assert [source.name for source, _ in plan_jobs(folder, tmp_path / "out")] == ["anim.gif", "clip.mp4"]


def test_folder_resume_skips_finished_videos_and_continues_interrupted_ones(
    clip, tmp_path, tiny_pipeline_dir, tiny_pipe, monkeypatch
):
    folder, out = tmp_path / "videos", tmp_path / "upscaled"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4"):
        shutil.copy(clip, folder / name)
    upscale_video(folder / "a.mp4", out / "a.mp4", tiny_pipe, max_frames=3)
    finished = (out / "a.mp4").stat().st_mtime_ns
    interrupt_at_checkpoint(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        upscale_video(folder / "b.mp4", out / "b.mp4", tiny_pipe, max_frames=12, checkpoint_interval=0)

    result = run_infvsr(folder, "-o", out, "--model", tiny_pipeline_dir, "--max-frames", 12, "--resume",
                        "--checkpoint-interval", 0)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stdout and "a.mp4: already done" in result.stdout
    assert "b.mp4: 12 frames" in result.stdout and "resumed after 9 frames" in result.stdout
    assert "done: 2 of 2 videos written (1 already done)" in result.stderr
    assert (out / "a.mp4").stat().st_mtime_ns == finished and probe(out / "b.mp4")["frames"] == 12
