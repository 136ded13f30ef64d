"""The `infvsr` command and `upscale_video`, end to end on generated clips with a tiny random pipeline."""

import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import scenedetect
import torch
from video_clips import decode, ffmpeg, make_clip, probe

from diffusers_infvsr.cli import CommandError, check_attention_backend, load_pipeline, parse_args
from diffusers_infvsr.video import H264Writer, VideoFileError, read_frames, upscale_video


INFVSR = shutil.which("infvsr", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run_infvsr(*arguments, **kwargs) -> subprocess.CompletedProcess:
    assert INFVSR, "the `infvsr` console script is not installed: pip install -e ."
    return subprocess.run([INFVSR, *map(str, arguments)], capture_output=True, text=True, env=ENV, **kwargs)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_fractional_rate_audio_and_subtitles_survive(tmp_path, tiny_pipeline_dir, suffix):
    clip = make_clip(tmp_path / "clip.mp4", frames=23, rate="30000/1001", audio=True)
    (tmp_path / "subs.srt").write_text("1\n00:00:00,100 --> 00:00:00,600\nHello\n")
    source = tmp_path / "input.mkv"
    ffmpeg("-i", clip, "-i", tmp_path / "subs.srt", "-map", "0", "-map", "1", "-c", "copy", "-c:s", "srt", source)
    output = tmp_path / "out" / f"upscaled{suffix}"

    result = run_infvsr(source, "-o", output, "--model", tiny_pipeline_dir)
    assert result.returncode == 0, result.stderr
    assert "23 frames" in result.stdout

    before, after = probe(source), probe(output)
    assert after["frames"] == 23
    assert after["size"] == (4 * 24, 4 * 16) and after["pix_fmt"] == "yuv420p"
    assert after["fps"] == Fraction(30000, 1001)
    [(codec, duration)] = after["audio"]
    assert codec == before["audio"][0][0] == "aac"
    assert abs(duration - before["audio"][0][1]) < 1024 / 48000  # copied whole AAC frames, not re-encoded
    assert after["subtitles"] == (["mov_text"] if suffix == ".mp4" else before["subtitles"])  # MP4 needs mov_text
    assert sorted(os.listdir(output.parent)) == [output.name]  # no job folder or temporary left behind


def test_odd_size_scale_start_and_max_frames(tmp_path, tiny_pipeline_dir):
    source = make_clip(tmp_path / "odd.mp4", frames=30, size="15x9", rate="25", source="testsrc", lossless=True)
    output = tmp_path / "odd-x3.mp4"
    # 30 frames at 25 fps: starting at 0.8 s leaves 10, fewer than --max-frames.
    result = run_infvsr(source, "-o", output, "--model", tiny_pipeline_dir, "--scale", 3, "--start", "0.8",
                        "--max-frames", 15, "--no-scene-detect")  # fmt: skip
    assert result.returncode == 0, result.stderr
    after = probe(output)
    assert after["frames"] == 10 and after["size"] == (45, 27) and after["pix_fmt"] == "yuv444p"
    assert after["audio"] == [] and after["fps"] == 25


def test_read_frames_seeks_exactly_and_stops(tmp_path):
    source = make_clip(tmp_path / "clip.mp4", frames=30, rate="30000/1001", lossless=True)
    everything = decode(source)
    frames = np.stack(list(read_frames(source, start=10 * 1001 / 30000, max_frames=7)))
    np.testing.assert_array_equal(frames, everything[10:17])


def test_scene_cuts_restart_the_stream(tmp_path, tiny_pipe):
    # Three shots written with one lossless encoder, so the second shot decodes to the same pixels in both files.
    shots = [decode(make_clip(tmp_path / f"{name}.mp4", frames, size="16x16", source=name)) for name, frames in
             [("testsrc2", 20), ("smptebars", 20), ("rgbtestsrc", 17)]]  # fmt: skip
    joined, second = tmp_path / "cuts.mp4", tmp_path / "second.mp4"
    for path, frames in [(joined, np.concatenate(shots)), (second, shots[1])]:
        writer = H264Writer(str(path), 16, 16, Fraction(25), lossless=True)
        for frame in frames:
            writer.write(frame)
        writer.close()

    # The library's own offline scan finds the same cuts as our online, look-ahead-bounded use of it.
    offline = [start.frame_num for start, _ in scenedetect.detect(str(joined), scenedetect.ContentDetector())]
    result = upscale_video(joined, tmp_path / "cuts-x4.mkv", tiny_pipe, lossless=True)
    assert result.scene_starts == offline == [0, 20, 40]
    alone = upscale_video(second, tmp_path / "second-x4.mkv", tiny_pipe, lossless=True)
    assert alone.scene_starts == [0]

    upscaled, upscaled_alone = decode(tmp_path / "cuts-x4.mkv"), decode(tmp_path / "second-x4.mkv")
    assert len(upscaled) == 57
    np.testing.assert_array_equal(upscaled[20:40], upscaled_alone)
    # Without scene detection the second scene continues the first stream and comes out differently.
    upscale_video(joined, tmp_path / "one-stream.mkv", tiny_pipe, lossless=True, scene_detection=False)
    assert np.abs(decode(tmp_path / "one-stream.mkv")[20:40].astype(int) - upscaled_alone).max() > 2


PEAK_RSS = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_memory_is_flat_in_video_length(tmp_path, tiny_pipeline_dir):
    peaks = {}
    for frames in (60, 600):
        source = make_clip(tmp_path / f"{frames}.mp4", frames=frames, size="8x8", rate="25")
        command = [INFVSR, source, "-o", tmp_path / f"{frames}-x4.mp4", "--model", tiny_pipeline_dir]
        env = {**ENV, "MALLOC_MMAP_THRESHOLD_": "65536"}  # freed buffers go back to the OS, as in test_stream_memory
        result = subprocess.run([sys.executable, "-c", PEAK_RSS, *map(str, command)], capture_output=True, text=True,
                                env=env, check=True)  # fmt: skip
        peaks[frames] = int(result.stdout)
        assert probe(tmp_path / f"{frames}-x4.mp4")["frames"] == frames
    assert peaks[600] <= 1.10 * peaks[60], peaks


def wait_for_checkpoint(work: Path, process: subprocess.Popen, more_than: int) -> int:
    """Frames done in the job's checkpoint, once it holds more than `more_than`."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        checkpoints = sorted(work.glob("checkpoint-*.pt"))
        if checkpoints:
            done = int(checkpoints[-1].stem.split("-")[1])  # the name says how many frames it holds
            if done > more_than:
                return done
        time.sleep(0.05)
    raise TimeoutError("no checkpoint")


def hear_ctrl_c() -> None:
    """In a child process: take SIGINT as Ctrl-C even when the tests run as a background job of a shell without job
    control (which starts them with SIGINT ignored, and Python then leaves it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_kill_and_resume_give_the_uninterrupted_frames(tmp_path, tiny_pipeline_dir):
    source = make_clip(tmp_path / "clip.mp4", frames=57, size="16x16", rate="24", audio=True)
    options = ["--model", tiny_pipeline_dir, "--lossless", "--checkpoint-interval", 0]
    assert run_infvsr(source, "-o", tmp_path / "reference.mp4", *options).returncode == 0

    output, work = tmp_path / "resumed.mp4", tmp_path / ".resumed.mp4.infvsr-partial"
    command = [INFVSR, *map(str, [source, "-o", output, *options])]
    # A crash (SIGKILL) after the first chunk: nothing under the final name.
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done = wait_for_checkpoint(work, process, more_than=0)
    # Paused (it keeps its lock), so that the run is not near its end when the resumed run below is interrupted.
    process.send_signal(signal.SIGSTOP)
    # A second run on the same output, even with --overwrite, is refused and leaves the live job alone.
    job_file = (work / "job.json").read_text()
    second = run_infvsr(*command[1:], "--overwrite")
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert f"being written by another infvsr run (process {process.pid} on" in second.stderr
    assert (work / "job.json").read_text() == job_file and list(work.glob("segment-*"))
    process.kill()
    process.wait()
    assert not output.exists() and work.is_dir()
    # The killed run may have saved more checkpoints after the one seen above: wait for one past them all.
    done = max(int(checkpoint.stem.split("-")[1]) for checkpoint in work.glob("checkpoint-*.pt"))

    # Ctrl-C of the resumed run, one chunk later: exit code 130 and a hint.
    process = subprocess.Popen(
        command + ["--resume"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=hear_ctrl_c,
    )  # fmt: skip
    done = wait_for_checkpoint(work, process, more_than=done)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "--resume" in stderr, stderr[-3000:]
    assert not output.exists()

    result = run_infvsr(*command[1:], "--resume")
    assert result.returncode == 0, result.stderr
    resumed_from = int(result.stdout.split("resumed after ")[1].split()[0])
    assert done <= resumed_from < 57  # from the last checkpoint, which may be one chunk after the one we saw
    np.testing.assert_array_equal(decode(output), decode(tmp_path / "reference.mp4"))
    assert probe(output)["audio"] == probe(tmp_path / "reference.mp4")["audio"]
    assert not work.exists()


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-inputs")
    good = make_clip(folder / "good.mp4", frames=9, size="16x16")
    (folder / "notes.mp4").write_text("not a video\n")
    data = Path(good).read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])  # the index (moov) of this MP4 is at the end
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=16x16:rate=25", "-frames:v", 0, "-c:v", "libx264", folder / "empty.mkv")
    for size in ("16x16", "24x16"):
        make_clip(folder / f"{size}.ts", frames=12, size=size)
    (folder / "resized.ts").write_bytes((folder / "16x16.ts").read_bytes() + (folder / "24x16.ts").read_bytes())
    (folder / "a-file").write_text("")
    (folder / "existing.mp4").write_text("keep me")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=16x16:rate=25", "-frames:v", 3, "-vf",
           "setparams=color_trc=smpte2084:color_primaries=bt2020:colorspace=bt2020nc", "-c:v", "libx264", folder / "hdr.mp4")  # fmt: skip
    ffmpeg("-i", good, "-c", "copy", "-movflags", "+faststart", folder / "faststart.mp4")
    data = (folder / "faststart.mp4").read_bytes()
    (folder / "cut-faststart.mp4").write_bytes(data[: len(data) * 2 // 3])  # the index is intact, frames are missing
    return folder


NO_CUDA = "cuda" if not torch.cuda.is_available() else None


@pytest.mark.parametrize(
    "arguments, code, message",
    [
        (["--crf", "-5"], 2, "error: argument --crf: expected an x264 CRF from 0 to 51, got '-5'"),
        (["--crf", "52"], 2, "error: argument --crf: expected an x264 CRF from 0 to 51, got '52'"),
        (["--scale", "0"], 2, "error: argument --scale: expected an integer >= 1, got '0'"),
        (["--max-frames", "0"], 2, "error: argument --max-frames: expected an integer >= 1"),
        (["--start", "-3"], 2, "error: argument --start: '-3' is not a time"),
        (["--start", "1:2:3:4"], 2, "error: argument --start: '1:2:3:4' is not a time"),
        (["--checkpoint-interval", "-1"], 2, "error: argument --checkpoint-interval: expected a number of seconds"),
        (["--checkpoint-interval", "nan"], 2, "error: argument --checkpoint-interval: expected a number of seconds"),
        (["--scene-threshold", "0"], 2, "error: argument --scene-threshold: expected a content threshold in (0, 255]"),
        (["--dtype", "fp8"], 2, "error: argument --dtype: invalid choice: 'fp8'"),
        (["--no-such-option"], 2, "error: unrecognized arguments: --no-such-option"),
        (["--scale", "1000"], 1, "16x16 upscaled x1000 is 16000x16000, but H.264 allows at most 8192 pixels a side"),
        (["--device", "potato"], 1, "--device 'potato' is not a torch device"),
        pytest.param(
            ["--device", "cuda"],
            1,
            "--device cuda: this machine has no cuda device. Use --device cpu",
            marks=pytest.mark.skipif(NO_CUDA is None, reason="CUDA is available"),
        ),  # fmt: skip
        (["--attention-backend", "nope"], 1, "--attention-backend 'nope' is unknown; choose one of"),
        (["--input", "missing.mp4"], 1, "missing.mp4: no such file"),
        (["--input", "notes.mp4"], 1, "notes.mp4 cannot be read as a video"),
        (["--input", "truncated.mp4"], 1, "corrupt or truncated"),
        (["--input", "cut-faststart.mp4"], 1, "cut-faststart.mp4 is damaged after frame"),
        (["--input", "empty.mkv"], 1, "empty.mkv contains no video frames"),
        (["--input", "hdr.mp4"], 1, "hdr.mp4 is HDR (PQ (SMPTE ST 2084)). InfVSR restores SDR video only"),
        (["--start", "60"], 1, "good.mp4 has no video frames after 60.0 s"),
        (
            ["--input", "resized.ts", "--allow-damaged", "--model", "TINY"],
            1,
            "the frame size changes from 16x16 to 24x16 at frame 12",
        ),
        (["--output", "a-file/out.mp4"], 1, "Cannot write to the output folder a-file"),
        (["--output", "existing.mp4"], 1, "existing.mp4 already exists. Pass --overwrite"),
        (["--output", "out.avi"], 1, "the output must be one of .mp4, .mkv, .mov"),
        (["--model", "no/such-model"], 1, "Cannot load the model 'no/such-model'"),
        (["--model", "."], 1, "no file named model_index.json"),
        (["--model", "TINY", "--scale", "40"], 1, "needs 40 positions a side, but the model's position table has 32"),
    ],
)
def test_every_bad_argument_gives_one_error_line(bad_inputs, tiny_pipeline_dir, arguments, code, message):
    # A model that cannot load: any check that comes first fails before loading it.
    options = {"--input": "good.mp4", "--output": "out.mp4", "--model": "no/such-model"}
    rest, items = [], iter(arguments)
    for item in items:
        if item in options:
            options[item] = next(items).replace("TINY", str(tiny_pipeline_dir))
        else:
            rest.append(item)
    command = [options["--input"], "-o", options["--output"], "--model", options["--model"], *rest]
    result = run_infvsr(*command, cwd=bad_inputs)
    assert result.returncode == code, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (bad_inputs / "out.mp4").exists() and (bad_inputs / "existing.mp4").read_text() == "keep me"
    assert not list(bad_inputs.glob(".*infvsr-*"))


def test_interlaced_input_is_reported_before_the_model_loads(tmp_path):
    interlaced = tmp_path / "interlaced.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=16x16:rate=25", "-frames:v", 3, "-flags", "+ildct+ilme",
           "-c:v", "libx264", "-x264opts", "tff=1", interlaced)  # fmt: skip
    result = run_infvsr(interlaced, "-o", tmp_path / "out.mp4", "--model", "no/such-model")
    [warning] = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert "interlaced.mkv is interlaced" in warning and "-vf bwdif" in warning
    assert result.returncode == 1 and "Cannot load the model" in result.stderr  # the warning came first


IMPORTS_AFTER = """
import sys, time
from diffusers_infvsr.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(sorted(name for name in ("torch", "diffusers", "av") if name in sys.modules))
"""


@pytest.mark.parametrize("arguments", [["--help"], ["in.mp4", "-o", "out.mp4", "--model", "m", "--crf", "-5"]])
def test_help_and_argument_errors_import_no_torch(arguments):
    result = subprocess.run([sys.executable, "-c", IMPORTS_AFTER, *arguments], capture_output=True, text=True, env=ENV)
    assert result.stdout.splitlines()[-1] == "[]", result.stdout + result.stderr
    start = time.perf_counter()
    assert run_infvsr("--help").returncode == 0
    assert time.perf_counter() - start < 3.0  # about 0.2 s; generous for a busy machine


def test_every_option_reaches_the_job(bad_inputs, tiny_pipeline_dir, monkeypatch, tmp_path):
    import diffusers_infvsr.video as video
    from diffusers_infvsr.cli import main

    class Called(BaseException):
        pass

    calls = []

    def record(*args, **kwargs):
        calls.append(kwargs)
        raise Called

    monkeypatch.setattr(video, "upscale_video", record)
    arguments = [bad_inputs / "good.mp4", "-o", tmp_path / "out.mkv", "--model", tiny_pipeline_dir, "--scale", 3,
                 "--start", "00:00.04", "--max-frames", 7, "--crf", 33, "--lossless", "--no-scene-detect",
                 "--scene-threshold", 42, "--overwrite", "--resume", "--checkpoint-interval", 5, "--allow-damaged",
                 "--no-overlap"]  # fmt: skip
    with pytest.raises(Called):
        main(list(map(str, arguments)))
    assert calls[0].pop("source").path == str(bad_inputs / "good.mp4")  # checked before the model loaded
    assert calls == [
        {
            "upscale_factor": 3,
            "start": 0.04,
            "max_frames": 7,
            "crf": 33,
            "lossless": True,
            "scene_detection": False,
            "scene_threshold": 42.0,
            "overwrite": True,
            "resume": True,
            "checkpoint_interval": 5.0,
            "allow_damaged": True,
            "overlap": False,
            "ranks": None,  # one process
        }
    ]


def test_one_file_is_scanned_and_checked_once(bad_inputs, tiny_pipeline_dir, monkeypatch, tmp_path):
    """The command checks the input before loading the model and hands that check to the job: the packet scan reads
    the whole file, so it must not run twice."""
    from diffusers_infvsr.cli import main
    from diffusers_infvsr.video import jobs

    scans = []
    scan = jobs.scan_packets
    monkeypatch.setattr(jobs, "scan_packets", lambda path: scans.append(path) or scan(path))
    arguments = [bad_inputs / "good.mp4", "-o", tmp_path / "out.mp4", "--model", tiny_pipeline_dir]
    assert main(list(map(str, arguments))) == 0
    assert scans == [str(bad_inputs / "good.mp4")]


def test_scene_threshold_decides_the_cuts(tmp_path, tiny_pipe):
    shots = [make_clip(tmp_path / f"{name}.mp4", 16, size="16x16", source=name) for name in ("testsrc2", "smptebars")]
    joined = tmp_path / "two-shots.mkv"
    ffmpeg("-i", shots[0], "-i", shots[1], "-filter_complex", "concat=n=2", "-c:v", "libx264", joined)
    assert upscale_video(joined, tmp_path / "cut.mkv", tiny_pipe, max_frames=20).scene_starts == [0, 16]
    assert upscale_video(joined, tmp_path / "one.mkv", tiny_pipe, max_frames=20, scene_threshold=255).scene_starts == [
        0
    ]


def test_folder_mode_reports_bad_files_and_processes_the_rest(bad_inputs, tiny_pipeline_dir, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("good.mp4", "notes.mp4", "resized.ts"):
        shutil.copy(bad_inputs / name, folder / name)
    (folder / "readme.txt").write_text("not a video extension: ignored")
    result = run_infvsr(folder, "-o", tmp_path / "upscaled", "--model", tiny_pipeline_dir)
    assert result.returncode == 1
    assert "done: 1 of 3 videos written" in result.stderr
    assert "failed: " in result.stderr and "notes.mp4" in result.stderr and "resized.ts" in result.stderr
    assert sorted(os.listdir(tmp_path / "upscaled")) == ["good.mp4"]
    assert probe(tmp_path / "upscaled" / "good.mp4")["frames"] == 9


def test_existing_output_is_replaced_only_with_overwrite(bad_inputs, tiny_pipeline_dir, tmp_path):
    output = tmp_path / "out.mp4"
    output.write_text("old")
    assert run_infvsr(bad_inputs / "good.mp4", "-o", output, "--model", tiny_pipeline_dir).returncode == 1
    assert output.read_text() == "old"
    options = ["--model", tiny_pipeline_dir, "--overwrite", "--max-frames", 5]
    result = run_infvsr(bad_inputs / "good.mp4", "-o", output, *options)
    assert result.returncode == 0, result.stderr
    assert probe(output)["frames"] == 5  # of 9


def test_runtime_options_reach_the_pipeline(tiny_pipeline_dir):
    default = load_pipeline(parse_args(["in.mp4", "-o", "out.mp4", "--model", str(tiny_pipeline_dir)]))
    assert default.transformer.dtype == torch.float32 and not hasattr(default.transformer, "_hf_hook")  # CPU

    arguments = ["--dtype", "bf16", "--attention-backend", "_native_math", "--cpu-offload", "--device", "cpu"]
    pipe = load_pipeline(parse_args(["in.mp4", "-o", "out.mp4", "--model", str(tiny_pipeline_dir), *arguments]))
    assert pipe.transformer.dtype == pipe.vae.dtype == torch.bfloat16
    assert hasattr(pipe.transformer, "_hf_hook") and hasattr(pipe.vae, "_hf_hook")
    assert {block.attn1.processor._attention_backend.value for block in pipe.transformer.blocks} == {"_native_math"}
    with pytest.raises(CommandError, match="--attention-backend 'no-such-backend' is unknown"):
        check_attention_backend("no-such-backend")


def test_leftover_jobs_are_resumed_only_with_the_same_settings(tmp_path, tiny_pipe):
    source = make_clip(tmp_path / "clip.mp4", frames=9, size="16x16")
    output = tmp_path / "out.mp4"
    job = tmp_path / ".out.mp4.infvsr-partial"
    job.mkdir()
    (job / "job.json").write_text('{"upscale_factor": 2}')
    with pytest.raises(VideoFileError, match="An interrupted job for .* exists .* Pass --resume to continue it"):
        upscale_video(source, output, tiny_pipe)
    with pytest.raises(VideoFileError, match="Cannot resume .* other settings, input or model .*upscale_factor"):
        upscale_video(source, output, tiny_pipe, resume=True)
    assert not output.exists() and job.is_dir()
    assert upscale_video(source, output, tiny_pipe, overwrite=True).num_frames == 9
    assert not job.exists()
    # --resume without an interrupted job simply runs.
    result = upscale_video(source, tmp_path / "fresh.mp4", tiny_pipe, resume=True)
    assert result.num_frames == 9 and result.resumed_from == 0
