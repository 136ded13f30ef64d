"""The overlapped job (decoding, the model and encoding in three threads) against the serial one: the same frames and
checkpoints; a failure or Ctrl-C in any stage gives one message, stops every thread and leaves a resumable job."""

import re
import threading
from pathlib import Path

import av
import numpy as np
import pytest
from video_clips import decode, ffmpeg, make_clip

from diffusers_infvsr import InfVSRPipeline
from diffusers_infvsr.cli import EXIT_FAILED, EXIT_INTERRUPTED, main
from diffusers_infvsr.video import DamagedVideoError, jobs, upscale_video, work_folder, writing


OPTIONS = {"lossless": True, "checkpoint_interval": 0}  # a checkpoint after every chunk


def run_with_timeout(function, timeout: float = 90):
    """`function()`, failing the test instead of hanging when it does not return within `timeout` seconds."""
    outcome = {}

    def target():
        try:
            outcome["result"] = function()
        except BaseException as error:  # noqa: BLE001 - raised again in the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"the job still runs after {timeout} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def stage_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("infvsr-")]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """Two shots (16 + 14 frames of 16 x 16) joined: a scene cut, and chunks of 9, 7 | 9, 5 frames."""
    folder = tmp_path_factory.mktemp("overlap-input")
    shots = [make_clip(folder / f"{name}.mp4", frames, size="16x16", source=name)
             for name, frames in (("testsrc2", 16), ("smptebars", 14))]  # fmt: skip
    ffmpeg("-i", shots[0], "-i", shots[1], "-filter_complex", "concat=n=2", "-c:v", "libx264", folder / "clip.mp4")
    return folder / "clip.mp4"


def segment_frames(job_path: Path, names: list[str]) -> int:
    total = 0
    for name in names:
        with av.open(str(job_path / name)) as container:
            total += sum(1 for _ in container.decode(video=0))
    return total


def run_recording_checkpoints(clip, output, pipe, monkeypatch, overlap):
    """Run a job; return its result, its frames and, for every checkpoint, (frames done, frames in its segments)."""
    save = jobs.JobFolder.save_checkpoint
    checkpoints = []

    def save_and_record(self, stream_state):
        checkpoints.append((stream_state["frames_done"], segment_frames(self.path, self.segments)))
        save(self, stream_state)

    with monkeypatch.context() as patch:
        patch.setattr(jobs.JobFolder, "save_checkpoint", save_and_record)
        result = run_with_timeout(lambda: upscale_video(clip, output, pipe, overlap=overlap, **OPTIONS))
    return result, decode(output), checkpoints


@pytest.fixture(scope="module")
def serial(clip, tiny_pipe, tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        output = tmp_path_factory.mktemp("overlap-serial") / "serial.mp4"
        return run_recording_checkpoints(clip, output, tiny_pipe, monkeypatch, overlap=False)


def test_overlapped_job_equals_the_serial_one(clip, serial, tiny_pipe, tmp_path, monkeypatch):
    result, frames, checkpoints = run_recording_checkpoints(clip, tmp_path / "out.mp4", tiny_pipe, monkeypatch, True)
    serial_result, serial_frames, serial_checkpoints = serial
    assert result.scene_starts == serial_result.scene_starts == [0, 16]
    assert frames.shape == (30, 64, 64, 3)
    np.testing.assert_array_equal(frames, serial_frames)
    # A checkpoint at every chunk boundary, and each holds exactly the frames its segments hold.
    assert checkpoints == serial_checkpoints == [(9, 9), (16, 16), (25, 25), (30, 30)]
    assert not stage_threads()


def fail_in_decoding(monkeypatch, error=OSError(5, "injected read failure")):
    decode_frames = jobs.decode_frames

    def failing(*args, **kwargs):
        for index, frame in enumerate(decode_frames(*args, **kwargs)):
            if index == 29:  # scene detection looks 15 frames ahead: the model has done its first chunk only
                raise error
            yield frame

    monkeypatch.setattr(jobs, "decode_frames", failing)


def fail_in_model(monkeypatch, error=RuntimeError("injected model failure")):
    restore_chunk = InfVSRPipeline._restore_chunk
    calls = []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise error
        return restore_chunk(self, *args, **kwargs)

    monkeypatch.setattr(InfVSRPipeline, "_restore_chunk", failing)


def fail_in_encoding(monkeypatch):
    write = writing.H264Writer.write
    calls = []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 20:
            raise OSError(5, "injected write failure")
        return write(self, *args, **kwargs)

    monkeypatch.setattr(writing.H264Writer, "write", failing)


# stage: (injection, exit status, message, frames done at the last checkpoint before the failure)
FAILURES = {
    "decoding": (fail_in_decoding, EXIT_FAILED, "error: .*injected read failure.*--resume", 9),
    "damage found while decoding": (  # the type crosses the threads: its own message and hint
        lambda patch: fail_in_decoding(patch, DamagedVideoError("clip.mp4 is damaged (injected).", 29)),
        EXIT_FAILED,
        r"error: clip.mp4 is damaged \(injected\)\. The 9 frames done so far are kept .*--allow-damaged --resume",
        9,
    ),
    "model": (fail_in_model, EXIT_FAILED, "error: .*injected model failure.*--resume", 16),
    "encoding": (fail_in_encoding, EXIT_FAILED, "error: .*injected write failure.*--resume", 16),
    "ctrl-c in the model": (
        lambda patch: fail_in_model(patch, KeyboardInterrupt()),
        EXIT_INTERRUPTED,
        "interrupted: run the same command with --resume",
        16,
    ),
}


@pytest.mark.parametrize("stage", FAILURES)
def test_a_failure_in_any_stage_stops_all_and_resume_finishes(
    stage, clip, serial, tiny_pipeline_dir, tmp_path, monkeypatch, capsys
):
    inject, exit_status, message, resumed_from = FAILURES[stage]
    output = tmp_path / "out.mp4"
    command = [str(clip), "-o", str(output), "--model", str(tiny_pipeline_dir), "--lossless"]
    command += ["--checkpoint-interval", "0"]
    with monkeypatch.context() as patch:
        inject(patch)
        assert run_with_timeout(lambda: main(command)) == exit_status
    errors = capsys.readouterr().err
    lines = [line for line in errors.splitlines() if line.startswith(("error:", "interrupted:"))]
    assert len(lines) == 1 and re.match(message, lines[0]) and "Traceback" not in errors, errors
    assert not stage_threads()
    assert not output.exists() and list(work_folder(output).glob("checkpoint-*.pt"))

    assert run_with_timeout(lambda: main([*command, "--resume"])) == 0
    assert f"resumed after {resumed_from} frames" in capsys.readouterr().out
    np.testing.assert_array_equal(decode(output), serial[1])
