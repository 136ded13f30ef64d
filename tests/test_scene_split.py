"""One video split by scene among processes: seeking to a scene, the planning pass, `torchrun` runs and their failures."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from test_ranks import ENV, free_port
from test_scenes import shot
from video_clips import decode, make_scenes_clip

from diffusers_infvsr import StreamMarker
from diffusers_infvsr.cli import main
from diffusers_infvsr.pipeline_infvsr import insert_markers
from diffusers_infvsr.scenes import SceneMarker
from diffusers_infvsr.video import H264Writer, JobFolder, decode_frames, probe_video, scene_split, work_folder
from diffusers_infvsr.video.ranks import assign_largest_first
from diffusers_infvsr.video.scene_split import Scene, ScenePlan, frame_hash, plan_scenes


@pytest.mark.parametrize("container", ["mp4", "mkv", "ts"])
def test_seeking_to_a_timestamp_gives_the_frames_of_a_full_decode(tmp_path, container):
    path = make_scenes_clip(tmp_path / f"clip.{container}")  # key frames every 10 frames, B-frames
    full = list(decode_frames(path))
    for index in (0, 10, 17, 29, 30, 74):  # key frames, frames between them, the last
        frames = list(decode_frames(path, max_frames=6, first_pts=full[index].pts))
        expected = full[index : index + 6]
        assert [frame.pts for frame in frames] == [frame.pts for frame in expected]
        for frame, reference in zip(frames, expected):
            np.testing.assert_array_equal(frame.image, reference.image)


def write_lossless(path, frames) -> str:
    writer = H264Writer(str(path), frames[0].shape[1], frames[0].shape[0], Fraction(25), lossless=True)
    for frame in frames:
        writer.write(frame)
    writer.close()
    return str(path)


def test_the_plan_replays_the_markers_of_the_online_pass(tmp_path):
    # The clip of test_scenes: cuts at 40 and 70, a reference refresh at 91 (a flash shorter than a scene at 70-74).
    red, green, blue = (200, 30, 30), (20, 200, 40), (10, 10, 220)
    video = shot(40, red, 0) + shot(30, green, 1) + shot(5, blue, 2) + shot(30, green, 3)
    path = write_lossless(tmp_path / "clip.mp4", video)
    decoded = list(decode_frames(path))
    online = list(SceneMarker().mark(frame.image for frame in decoded))  # what one process sees, streaming

    plan = plan_scenes(probe_video(path))
    assert plan.scene_starts == [0, 40, 70] and plan.reference_refreshes == [91] and plan.frames == 105
    assert (plan.first_pts, plan.last_pts) == (decoded[0].pts, decoded[-1].pts)
    replayed = []
    for start, scene in zip(plan.scene_starts, plan.scenes):
        assert scene.first_pts == decoded[start].pts and scene.first_frame_hash == frame_hash(decoded[start].image)
        if start:
            replayed.append(StreamMarker.NEW_SCENE)  # a process starts a fresh stream here
        images = [frame.image for frame in decoded[start : start + scene.frames]]
        replayed += insert_markers(images, reference_refreshes=scene.reference_refreshes)
    assert len(replayed) == len(online)
    assert all(a is b if isinstance(a, StreamMarker) else np.array_equal(a, b) for a, b in zip(replayed, online))

    partial = plan_scenes(probe_video(path), start=1.2, max_frames=50)  # frames 30-79, as a job from --start sees them
    online = SceneMarker()
    list(online.mark(frame.image for frame in decoded[30:80]))
    assert partial.scene_starts == online.scene_starts == [0, 40]  # the cut at 40 comes before min_scene_len
    assert partial.frames == 50 and partial.first_pts == decoded[30].pts


def test_a_scene_whose_seek_lands_wrong_is_decoded_from_the_start(tmp_path, monkeypatch):
    path = make_scenes_clip(tmp_path / "clip.mp4")
    full = list(decode_frames(path))
    scene = Scene(full[30].pts, 20, frame_hash(full[30].image))
    source = probe_video(path)

    def seeking_one_frame_late(path, *args, first_pts=None, **kwargs):
        frames = decode_frames(path, *args, first_pts=first_pts, **kwargs)
        if first_pts is not None:
            next(frames)
        return frames

    monkeypatch.setattr(scene_split, "decode_frames", seeking_one_frame_late)
    frames = list(scene_split._decode_scene(source, scene, allow_damaged=False))
    assert [frame.pts for frame in frames] == [frame.pts for frame in full[30:50]]
    np.testing.assert_array_equal(np.stack([f.image for f in frames]), np.stack([f.image for f in full[30:50]]))

    changed = Scene(full[30].pts, 20, frame_hash(full[0].image))  # the file no longer has the planned frame
    with pytest.raises(scene_split.VideoFileError, match="decodes differently from its planning pass"):
        list(scene_split._decode_scene(source, changed, allow_damaged=False))


def launch(processes: int, *arguments) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
            free_port(), "-m", "diffusers_infvsr.cli", *map(str, arguments)]  # fmt: skip


def audio_packets(path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(packet) for packet in container.demux(audio=0) if packet.size]


def video_pts(path) -> list[int]:
    with av.open(str(path)) as container:
        return sorted(frame.pts for frame in container.decode(video=0))


def test_two_processes_share_the_scenes_of_one_video_and_write_what_one_process_writes(tmp_path, tiny_pipeline_dir):
    # Cuts at 30 and 65 (the one at 35 is too early after 30); the scene from 30 refreshes its reference frame at 51.
    shots = (("testsrc2", 30), ("rgbtestsrc", 5), ("smptebars", 30), ("testsrc", 20))
    clip = make_scenes_clip(tmp_path / "clip.mkv", shots, extra=("-metadata", "title=three shots"))
    options = ["--model", tiny_pipeline_dir, "--lossless", "--scale", "2"]
    result = subprocess.run(launch(2, clip, "-o", tmp_path / "two.mkv", *options), capture_output=True, text=True,
                            env=ENV, timeout=300)  # fmt: skip
    assert main([clip, "-o", str(tmp_path / "one.mkv"), *map(str, options)]) == 0

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote") == 1 and "85 frames, 3 scenes on 2 processes" in result.stdout
    assert "planning scenes" in result.stderr
    # Progress bars show on rank 0 only (diffusers' rule): its share is the 35-frame scene; rank 1 did the other two.
    assert set(re.findall(r"\[scenes on rank 0\] clip.mkv: .*?\d+/(\d+)", result.stderr)) == {"35"}
    assert sorted(os.listdir(tmp_path)) == ["clip.mkv", "one.mkv", "two.mkv"]  # no job folder or lock left
    one, two = tmp_path / "one.mkv", tmp_path / "two.mkv"
    np.testing.assert_array_equal(decode(two), decode(one))
    assert video_pts(two) == video_pts(one)
    assert audio_packets(two) == audio_packets(one)  # copied as the single process copies them
    with av.open(str(two)) as container:
        assert container.metadata.get("title") == "three shots"


def rank_pid(launcher: int, rank: int) -> int | None:
    """The process id of `rank` among the children of the launcher process."""
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environment = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if parent == launcher and f"RANK={rank}".encode() in environment:
            return int(entry.name)
    return None


def test_a_killed_process_leaves_its_scenes_to_resume_identically(tmp_path, tiny_pipeline_dir):
    clip = make_scenes_clip(tmp_path / "clip.mp4")  # scenes of 30, 20 and 25 frames
    assert assign_largest_first([30, 20, 25], 2) == [[0], [1, 2]]
    options = ["--model", tiny_pipeline_dir, "--lossless", "--scale", "2", "--checkpoint-interval", "0"]
    command = launch(2, clip, "-o", tmp_path / "two.mp4", *options)
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job = work_folder(tmp_path / "two.mp4")
    deadline = time.monotonic() + 240
    while not list(job.glob("scene-000002/checkpoint-*.pt")):  # rank 1, 9 frames into its second scene
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint on rank 1"
        time.sleep(0.02)
    os.kill(rank_pid(process.pid, 1), signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)  # the launcher stops rank 0 too
    assert process.returncode != 0 and "SIGKILL" in stderr
    assert not (tmp_path / "two.mp4").exists() and (job / "plan.json").exists()
    assert (job / "scene-000001" / "done.json").exists() and not (job / "scene-000002" / "done.json").exists()

    result = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "planning scenes" not in result.stderr  # the saved plan is used
    wrote = [line for line in result.stdout.splitlines() if "wrote" in line]
    assert len(wrote) == 1 and "75 frames, 3 scenes on 2 processes, resumed after" in wrote[0]
    assert main([clip, "-o", str(tmp_path / "one.mp4"), *map(str, options)]) == 0
    np.testing.assert_array_equal(decode(tmp_path / "two.mp4"), decode(tmp_path / "one.mp4"))
    assert not job.exists()


def test_a_resumed_job_runs_the_unfinished_scenes_or_continues_a_single_process_job(tmp_path):
    clip = make_scenes_clip(tmp_path / "clip.mp4")
    source, job = probe_video(clip), JobFolder(tmp_path / "out.mp4")
    settings = {"start": 0.0, "max_frames": None, "scene_threshold": 27.0}
    job.start(settings)
    planned = scene_split._prepare(job, source, settings, resuming=False, allow_damaged=False)
    assert planned["pending"] == [0, 1, 2] and ScenePlan.from_dict(planned["plan"]).scene_starts == [0, 30, 50]
    for index, segments in ((0, ["segment-000000-0.mp4"]), (2, ["segment-000000-50.mp4", "segment-000001-59.mp4"])):
        folder = job.path / f"scene-{index:06d}"
        folder.mkdir()
        (folder / "done.json").write_text(json.dumps({"segments": segments}))
        for name in segments:
            (folder / name).touch()
    (job.path / "scene-000002" / "segment-000001-59.mp4").unlink()  # a finished scene that lost a segment: redone
    resumed = scene_split._prepare(job, source, settings, resuming=True, allow_damaged=False)
    assert resumed == {"plan": planned["plan"], "pending": [1, 2]}  # the saved plan, not a new pass

    single = JobFolder(tmp_path / "single.mp4")
    single.start(settings)
    (single.path / "checkpoint-000000009.pt").touch()  # a single process's interrupted job
    assert scene_split._prepare(single, source, settings, resuming=True, allow_damaged=False) == {"alone": True}


class TwoRanks:
    """Rank `rank` of 2, the launcher stood in for: `meetings` are what the other process brings to each gather."""

    num_ranks, device = 2, None

    def __init__(self, rank: int, meetings: list):
        self.rank, self.meetings, self.brought = rank, list(meetings), []

    def __call__(self, cpu, share_work):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        pass

    def gather(self, result):
        self.brought.append(result)
        other = self.meetings.pop(0)
        return [result, other] if self.rank == 0 else [other, result]


def test_rank_0_reports_another_process_that_cannot_start_and_leaves_nothing(tmp_path, tiny_pipeline_dir,
                                                                               monkeypatch, capsys):  # fmt: skip
    ranks = TwoRanks(0, [{"error": "Cannot load the model 'x': gone"}, {"failed": [], "done_before": 0}])
    monkeypatch.setattr("diffusers_infvsr.video.ranks.Ranks", ranks)
    clip = make_scenes_clip(tmp_path / "clip.mp4")
    assert main([clip, "-o", str(tmp_path / "out.mp4"), "--model", str(tiny_pipeline_dir)]) == 1
    assert ranks.brought[0]["error"] is None and ranks.meetings == []  # rank 0 was ready; both meetings held
    assert ranks.brought[0]["source"].path == clip  # what the others decode with
    assert capsys.readouterr().err.count("error: rank 1: Cannot load the model 'x': gone") == 1
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4"]  # no job folder, no lock


def test_a_process_that_cannot_start_tells_the_others_and_prints_nothing(tmp_path, monkeypatch, capsys):
    ranks = TwoRanks(1, [{"error": None}, {"failed": ["clip.mp4"], "done_before": 0}])
    monkeypatch.setattr("diffusers_infvsr.video.ranks.Ranks", ranks)
    clip = make_scenes_clip(tmp_path / "clip.mp4")
    assert main([clip, "-o", str(tmp_path / "out.mp4"), "--model", str(tmp_path / "no-model")]) == 1
    assert ranks.brought[0]["error"].startswith("Cannot load the model") and ranks.meetings == []
    assert "error:" not in capsys.readouterr().err  # rank 0 reports it


def test_only_rank_0_checks_the_input_and_its_failures_reach_the_others(tmp_path, tiny_pipeline_dir, monkeypatch,
                                                                        capsys):  # fmt: skip
    clip = make_scenes_clip(tmp_path / "clip.mp4")
    options = ["--model", str(tiny_pipeline_dir), "--scale", "40"]  # more positions than the tiny model's table
    scans = []
    monkeypatch.setattr("diffusers_infvsr.video.jobs.scan_packets", lambda path: scans.append(path))

    ranks = TwoRanks(1, [{"error": "stopped by rank 0"}, {"failed": [clip], "done_before": 0}])
    monkeypatch.setattr("diffusers_infvsr.video.ranks.Ranks", ranks)
    assert main([clip, "-o", str(tmp_path / "out.mp4"), *options]) == 1
    assert scans == [] and ranks.meetings == []  # rank 1 waits for rank 0's check instead of scanning the file too
    assert "error:" not in capsys.readouterr().err

    monkeypatch.undo()
    ranks = TwoRanks(0, [{"error": None, "source": None}, {"failed": [], "done_before": 0}])
    monkeypatch.setattr("diffusers_infvsr.video.ranks.Ranks", ranks)
    assert main([clip, "-o", str(tmp_path / "out.mp4"), *options]) == 1
    assert "needs 80 positions a side" in ranks.brought[0]["error"] and ranks.meetings == []  # told, not left waiting
    assert capsys.readouterr().err.count("error: ") == 1
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4"]


def test_a_scene_failing_on_another_process_is_reported_and_one_process_resumes_the_rest(
    tmp_path, tiny_pipeline_dir, monkeypatch, capsys
):
    """Rank 0 of 2 (the launcher stood in for) runs scene 0; rank 1 reports that its scenes failed."""
    failure = {"error": "out.mp4 was not finished: the disk is full", "resumed": 0}
    ranks = TwoRanks(0, [{"error": None}, {"error": None}, failure, {"failed": [], "done_before": 0}])
    monkeypatch.setattr("diffusers_infvsr.video.ranks.Ranks", ranks)
    clip = make_scenes_clip(tmp_path / "clip.mp4")  # scenes of 30 (rank 0), 20 and 25 frames (rank 1)
    options = ["--model", str(tiny_pipeline_dir), "--lossless", "--scale", "2"]
    output = tmp_path / "out.mp4"
    assert main([clip, "-o", str(output), *options]) == 1
    assert ranks.meetings == []
    assert capsys.readouterr().err.count("error: rank 1: out.mp4 was not finished: the disk is full") == 1
    job = work_folder(output)
    assert (job / "plan.json").exists() and (job / "scene-000000" / "done.json").exists()
    assert not output.exists() and not (job / "scene-000001").exists()

    monkeypatch.undo()
    assert main([clip, "-o", str(output), *options, "--resume"]) == 0  # one process takes the split job over
    assert (
        "wrote" in (printed := capsys.readouterr().out) and "75 frames, 3 scenes, resumed after 30 frames" in printed
    )
    assert main([clip, "-o", str(tmp_path / "one.mp4"), *options]) == 0
    np.testing.assert_array_equal(decode(output), decode(tmp_path / "one.mp4"))
