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
"""One video split by scene among the processes of a launch.

InfVSR starts from scratch at every scene cut (KV cache, VAE state, temporal index, reference frame), so the scenes
of a video are independent jobs that give, together, exactly the frames of one stream over the whole video:

1. Rank 0 locks the output and prepares the job folder, as a single process does; the processes meet (every one has
   its model, or the error that stops them all).
2. Rank 0 plans the scenes in a decode-only pass ([`plan_scenes`]): the [`~scenes.SceneMarker`] a single process runs
   online, recording each scene's first timestamp, length, reference refreshes and a hash of its first frame. The
   plan is saved in the job folder (`plan.json`, reused on resume); the processes meet again and all take it.
3. The unfinished scenes are shared out, the longest first, each to the process with the least work so far. A scene
   is restored in its own folder `scene-NNNNNN/` of the job folder, with its own segments and checkpoints: decoding
   seeks to its first frame (checked against the hash; decoded from the start of the file when a seek does not give
   it) and replays the planned markers. `done.json` marks it finished.
4. The processes meet a last time; rank 0 joins every scene's segments and adds the input's other streams, as a
   single process does. A process whose scene failed reports it through rank 0's error line; `--resume` continues
   every unfinished scene from its checkpoints, with any number of processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import shutil
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .jobs import (
    JobFolder,
    JobLock,
    UpscaleResult,
    _kept_message,
    _resume_or_start,
    _run_job,
    checked_source,
    expected_frames,
    finish_job,
    joined_record,
    output_time_base,
    restore_into_segments,
)
from .ranks import Ranks, assign_largest_first
from .reading import DecodedFrame, VideoFileError, VideoInfo, decode_frames


if TYPE_CHECKING:
    from ..pipeline_infvsr import InfVSRPipeline

PLAN_FILE = "plan.json"


def frame_hash(image: np.ndarray) -> str:
    """A hash of a frame's pixels and shape."""
    digest = hashlib.blake2b(str(image.shape).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


@dataclass
class Scene:
    r"""
    One scene of a [`ScenePlan`].

    Args:
        first_pts (`int`): Timestamp of its first frame, as [`DecodedFrame`] gives it.
        frames (`int`): Its length in frames.
        first_frame_hash (`str`): [`frame_hash`] of its first frame.
        reference_refreshes (`list[int]`): Frames (counted from the scene's first) that refresh the reference.
    """

    first_pts: int
    frames: int
    first_frame_hash: str
    reference_refreshes: list[int] = field(default_factory=list)


@dataclass
class ScenePlan:
    r"""
    The scenes of a job's frames, in order, and the timestamps of the job's first and last frames.

    Example:

    ```py
    >>> plan = plan_scenes(source)
    >>> plan.scene_starts, plan.frames  # first frame of every scene, frames in all
    ([0, 240, 611], 1440)
    ```
    """

    scenes: list[Scene]
    first_pts: int
    last_pts: int

    @property
    def frames(self) -> int:
        return sum(scene.frames for scene in self.scenes)

    @property
    def scene_starts(self) -> list[int]:
        return list(itertools.accumulate((scene.frames for scene in self.scenes[:-1]), initial=0))

    @property
    def reference_refreshes(self) -> list[int]:
        return [start + index for start, scene in zip(self.scene_starts, self.scenes)
                for index in scene.reference_refreshes]  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ScenePlan:
        return cls([Scene(**scene) for scene in data["scenes"]], data["first_pts"], data["last_pts"])


def plan_scenes(
    source: VideoInfo,
    start: float = 0.0,
    max_frames: int | None = None,
    allow_damaged: bool = False,
    scene_threshold: float = 27.0,
) -> ScenePlan:
    r"""
    Decode the frames a job covers (from `start`, at most `max_frames`) and find their scenes and reference refreshes
    with the same [`~scenes.SceneMarker`] that [`upscale_video`] runs online, without the model. Shows a progress bar.

    Raises:
        `DamagedVideoError`: where the input is damaged (unless `allow_damaged`).
    """
    from tqdm.auto import tqdm

    from ..pipeline_infvsr import StreamMarker
    from ..scenes import SceneMarker

    timestamps: deque[int] = deque()

    def frames() -> Iterator[np.ndarray]:
        for frame in decode_frames(source.path, start, max_frames, allow_damaged):
            timestamps.append(frame.pts)
            yield frame.image

    marker = SceneMarker(threshold=scene_threshold, reference_threshold=scene_threshold)
    scenes: list[Scene] = []
    new_scene = refresh = False
    with tqdm(total=expected_frames(source, start, max_frames), desc="planning scenes", unit="frame") as progress:
        for item in marker.mark(frames()):
            if item is StreamMarker.NEW_SCENE:
                new_scene = True
            elif item is StreamMarker.REFRESH_REFERENCE:
                refresh = True
            else:
                pts = timestamps.popleft()
                if new_scene or not scenes:
                    scenes.append(Scene(pts, 0, frame_hash(item)))
                if refresh:
                    scenes[-1].reference_refreshes.append(scenes[-1].frames)
                scenes[-1].frames += 1
                new_scene = refresh = False
                progress.update()
    if not scenes:
        raise VideoFileError(f"{source.path} has no video frames to upscale.")
    return ScenePlan(scenes, scenes[0].first_pts, pts)


def _scene_folder(job: JobFolder, index: int) -> JobFolder:
    return JobFolder(job.output_path, job.path / f"scene-{index:06d}")


def _finished_segments(job: JobFolder, index: int) -> list[tuple[str, int]] | None:
    """The `(path, start)` segments of a finished scene; `None` if it is not finished (or a segment is missing)."""
    folder = _scene_folder(job, index)
    try:
        folder.segments = json.loads((folder.path / "done.json").read_text())["segments"]
    except (OSError, ValueError, KeyError):
        return None
    if not all((folder.path / name).exists() for name in folder.segments):
        return None
    return folder.segments_with_starts()


def _decode_scene(source: VideoInfo, scene: Scene, allow_damaged: bool) -> Iterator[DecodedFrame]:
    """The frames of `scene`, from a seek to its first frame; from the start of the file when the seek does not give
    the frame the plan saw (open GOPs, damage)."""
    frames = decode_frames(source.path, allow_damaged=allow_damaged, first_pts=scene.first_pts)
    first = next(frames, None)
    if first is None or first.pts != scene.first_pts or frame_hash(first.image) != scene.first_frame_hash:
        frames.close()
        frames = decode_frames(source.path, allow_damaged=allow_damaged)
        first = next((frame for frame in frames if frame.pts >= scene.first_pts), None)
        if first is None or first.pts != scene.first_pts or frame_hash(first.image) != scene.first_frame_hash:
            frames.close()
            raise VideoFileError(
                f"{source.path} decodes differently from its planning pass at timestamp {scene.first_pts} (did the "
                "file change?). Run the same command with --resume --overwrite to plan again."
            )
    yield first
    with contextlib.closing(frames):
        yield from itertools.islice(frames, scene.frames - 1)


def _restore_scene(job, plan: ScenePlan, index: int, source, pipe, settings, checkpoint_interval, allow_damaged,
                   overlap) -> int:  # fmt: skip
    """Restore scene `index` into its folder, continuing from its checkpoint; return the frames done before."""
    from ..pipeline_infvsr import insert_markers

    scene, folder = plan.scenes[index], _scene_folder(job, index)
    folder.path.mkdir(exist_ok=True)
    (folder.path / "done.json").unlink(missing_ok=True)
    checkpoint = folder.load_checkpoint()
    state = pipe.load_stream_state(checkpoint["stream"]) if checkpoint else None
    span = restore_into_segments(
        folder,
        _decode_scene(source, scene, allow_damaged),
        lambda frames: insert_markers(frames, reference_refreshes=scene.reference_refreshes),
        source,
        pipe,
        settings,
        state,
        scene.frames,
        checkpoint_interval,
        overlap,
        first_pts=plan.first_pts,
    )
    if span.frames != scene.frames:
        raise VideoFileError(
            f"{source.path}: scene {index + 1} gave {span.frames} frames where the planning pass found {scene.frames}. "
            "Run the same command with --resume --overwrite to plan again."
        )
    folder.write_json("done.json", {"segments": folder.segments})
    for old in folder.checkpoints():
        old.unlink()
    return state.frames_done if state else 0


def abandon(ranks: Ranks, error: str) -> None:
    r"""Take part in the first meeting of [`upscale_by_scene`] for a process that cannot (its checks or its model
    failed), with the `error` that rank 0 then reports and that stops every process."""
    ranks.gather({"error": error})


def _failures(meeting: list[dict]) -> str | None:
    errors = [error if rank == 0 else f"rank {rank}: {error}" for rank, result in enumerate(meeting)
              if (error := result.get("error"))]  # fmt: skip
    return "; ".join(errors) if errors else None


def upscale_by_scene(
    input_path: str,
    job: JobFolder,
    source: VideoInfo | None,
    pipe: InfVSRPipeline,
    settings: dict,
    ranks: Ranks,
    overwrite: bool,
    resume: bool,
    checkpoint_interval: float,
    allow_damaged: bool,
    overlap: bool,
) -> UpscaleResult | None:
    r"""
    The job of [`upscale_video`] with its scenes shared among `ranks` (see the module's docstring); every process of
    the launch calls it, and each returns when its share is done. Rank 0 checks the input (`source`: what
    [`check_job`] returned, if it ran already) and hands its [`VideoInfo`] to the others, which pass `None`. Returns
    the result on rank 0, `None` on the others.

    Raises:
        `VideoFileError`: on rank 0, for a failure on any process, with a message that says what to do.
    """
    lock = JobLock(job.output_path)
    try:
        error, resuming = None, False
        if ranks.rank == 0:
            try:
                source = checked_source(input_path, job.output_path, source, pipe, settings, overwrite, allow_damaged)
                lock.acquire()
                resuming = _resume_or_start(job, settings, overwrite, resume)
            except Exception as failure:  # noqa: BLE001 - every process must hear of it at the next meeting
                error = _message(job, failure)
        meeting = ranks.gather({"error": error, "source": source})
        source, failed = meeting[0].get("source"), _failures(meeting)  # none from a rank 0 that abandoned
        if failed:
            if ranks.rank == 0 and error is None and not resuming:
                shutil.rmtree(job.path)  # made just now, for nothing
            return _stop(ranks, failed)

        work = {"error": None}
        if ranks.rank == 0:
            try:
                work.update(_prepare(job, source, settings, resuming, allow_damaged))
            except Exception as failure:  # noqa: BLE001 - every process must hear of it at the next meeting
                work["error"] = _message(job, failure)
                if not resuming:
                    shutil.rmtree(job.path)  # nothing done yet
        work = ranks.gather(work)[0]
        if work["error"]:
            return _stop(ranks, work["error"])
        if work.get("alone"):  # a job that a single process started and saved checkpoints of: it continues alone
            if ranks.rank != 0:
                return None
            return _run_job(job, source, pipe, settings, True, checkpoint_interval, allow_damaged, overlap)

        plan, pending = ScenePlan.from_dict(work["plan"]), work["pending"]
        error, resumed = None, 0
        shares = assign_largest_first([plan.scenes[index].frames for index in pending], ranks.num_ranks)
        for index in [pending[share] for share in shares[ranks.rank]]:
            try:
                resumed += _restore_scene(job, plan, index, source, pipe, settings, checkpoint_interval,
                                          allow_damaged, overlap)  # fmt: skip
            except Exception as failure:  # noqa: BLE001 - reported by rank 0; the others must not wait for this one
                error = _message(job, failure)
                break
        meeting = ranks.gather({"error": error, "resumed": resumed})
        if ranks.rank != 0:
            return None
        failed = _failures(meeting)
        if failed:
            raise VideoFileError(failed)
        done_before = plan.frames - sum(plan.scenes[index].frames for index in pending)  # scenes finished before
        return _join_scenes(job, source, plan, done_before + sum(result["resumed"] for result in meeting))
    finally:
        lock.release()


def _message(job: JobFolder, failure: Exception) -> str:
    return str(failure) if isinstance(failure, VideoFileError) else _kept_message(job, failure)


def _stop(ranks: Ranks, error: str) -> None:
    if ranks.rank == 0:
        raise VideoFileError(error)


def _prepare(job: JobFolder, source: VideoInfo, settings: dict, resuming: bool, allow_damaged: bool) -> dict:
    """Rank 0's plan of the work: `{"alone": True}` to continue a single process's job, else the scene plan (made now
    or saved before) and the indices of the unfinished scenes."""
    plan_path = job.path / PLAN_FILE
    if resuming and (job.joined() is not None or (job.checkpoints() and not plan_path.exists())):
        return {"alone": True}
    try:
        plan = ScenePlan.from_dict(json.loads(plan_path.read_text())) if resuming else None
    except (OSError, ValueError, KeyError, TypeError):
        plan = None
    if plan is None:
        plan = plan_scenes(source, settings["start"], settings["max_frames"], allow_damaged,
                           settings["scene_threshold"])  # fmt: skip
        job.write_json(PLAN_FILE, plan.to_dict())
    pending = [index for index in range(len(plan.scenes)) if _finished_segments(job, index) is None]
    return {"plan": plan.to_dict(), "pending": pending}


def _join_scenes(job: JobFolder, source: VideoInfo, plan: ScenePlan, resumed_from: int) -> UpscaleResult:
    joined = joined_record(source, plan.first_pts, plan.last_pts, plan.frames)
    segments = [segment for index in range(len(plan.scenes)) for segment in _finished_segments(job, index)]
    try:
        job.join(joined, output_time_base(source), segments)
    except (OSError, VideoFileError) as error:
        raise VideoFileError(_kept_message(job, error)) from error
    for index in range(len(plan.scenes)):
        shutil.rmtree(_scene_folder(job, index).path)
    finish_job(job, source, joined)
    return UpscaleResult(
        output_path=str(job.output_path),
        num_frames=plan.frames,
        scene_starts=plan.scene_starts,
        reference_refreshes=plan.reference_refreshes,
        resumed_from=resumed_from,
    )
