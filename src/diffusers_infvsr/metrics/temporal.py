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
Temporal consistency: the flow warping error of Lai et al. (ECCV 2018) with OpenCV's DIS optical flow, and a seam
score that compares consecutive frames across chunk boundaries with consecutive frames inside chunks.

Frames are `(H, W, 3)` float arrays in [0, 1].
"""

from collections.abc import Sequence

import cv2
import numpy as np

from ..pipeline_infvsr import CHUNK_FRAMES, FIRST_CHUNK_FRAMES


def dis_optical_flow(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    r"""
    Dense optical flow from `source` to `target` with OpenCV's DIS (Kroeger et al. 2016, preset "medium", on 8-bit
    luma): `source[p] ~ target[p + flow[p]]`, as an `(H, W, 2)` float32 array of (x, y) displacements in pixels.

    Example:

    ```py
    >>> flow = dis_optical_flow(frames[0], frames[1])
    ```
    """

    def gray(frame):
        return cv2.cvtColor((np.clip(frame, 0, 1) * 255).round().astype(np.uint8), cv2.COLOR_RGB2GRAY)

    estimator = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return estimator.calc(gray(source), gray(target), None)


def backward_warp(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""
    `image` sampled at `p + flow[p]` (bilinear) and the boolean mask of pixels whose sample lies inside the frame.

    Example:

    ```py
    >>> warped, inside = backward_warp(next_frame, dis_optical_flow(frame, next_frame))  # warped ~ frame
    ```
    """
    height, width = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    map_x, map_y = grid_x + flow[..., 0], grid_y + flow[..., 1]
    warped = cv2.remap(image.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    return warped, inside


def pair_warping_error(
    frame: np.ndarray, next_frame: np.ndarray, flow_frame: np.ndarray = None, flow_next_frame: np.ndarray = None
) -> float:
    r"""
    Warping error between two consecutive frames (Lai et al. 2018): `next_frame` is warped onto `frame` with the
    forward flow, pixels that are occluded (forward-backward check `|F + B(p + F)|^2 < 0.01 (|F|^2 + |B(p + F)|^2) +
    0.5` fails) or that leave the frame are masked out, and the squared RGB error summed over channels is averaged
    over the remaining pixels. `nan` when no pixel remains.

    Args:
        frame, next_frame (`np.ndarray`): `(H, W, 3)` frames in [0, 1].
        flow_frame, flow_next_frame (`np.ndarray`, *optional*):
            Frames to estimate the flow and occlusions on instead (e.g. the ground truth); default the frames.
    """
    flow_frame = frame if flow_frame is None else flow_frame
    flow_next_frame = next_frame if flow_next_frame is None else flow_next_frame
    forward = dis_optical_flow(flow_frame, flow_next_frame)
    backward = dis_optical_flow(flow_next_frame, flow_frame)
    warped, inside = backward_warp(next_frame, forward)
    backward_at_target, _ = backward_warp(backward, forward)
    mismatch = ((forward + backward_at_target) ** 2).sum(-1)
    magnitude = (forward**2).sum(-1) + (backward_at_target**2).sum(-1)
    valid = inside & (mismatch < 0.01 * magnitude + 0.5)
    if not valid.any():
        return float("nan")
    squared_error = ((frame.astype(np.float32) - warped) ** 2).sum(-1)
    return float(squared_error[valid].mean())


def warping_error(frames: Sequence[np.ndarray], flow_frames: Sequence[np.ndarray] | None = None) -> float:
    r"""
    Flow warping error E_warp of a video: [`pair_warping_error`] averaged over consecutive pairs. Papers print it as
    E*warp in units of 1e-3 (the value times 1000).

    Example:

    ```py
    >>> 1000 * warping_error(list_of_frames)  # E*warp (x 1e-3)
    ```
    """
    if len(frames) < 2:
        raise ValueError("The warping error needs at least two frames.")
    flow_frames = frames if flow_frames is None else flow_frames
    errors = [
        pair_warping_error(frames[t], frames[t + 1], flow_frames[t], flow_frames[t + 1])
        for t in range(len(frames) - 1)
    ]
    return float(np.nanmean(errors))


def chunk_starts(
    num_frames: int, first_chunk_frames: int = FIRST_CHUNK_FRAMES, chunk_frames: int = CHUNK_FRAMES
) -> list[int]:
    r"""
    Indices of the frames that start a new chunk (after the first), for InfVSR's chunking of one scene.

    Example:

    ```py
    >>> chunk_starts(40)
    [9, 21, 33]
    ```
    """
    return list(range(first_chunk_frames, num_frames, chunk_frames))


def _ratio(numerator: float, denominator: float) -> float:
    if denominator > 0:
        return numerator / denominator
    return float("nan") if numerator == 0 or np.isnan(denominator) else float("inf")


def seam_scores(pair_values: Sequence[float], boundaries: Sequence[int]) -> dict:
    r"""
    How much more consecutive frames differ across chunk boundaries than inside chunks.

    `pair_values[t]` measures the change from frame `t` to frame `t + 1` (e.g. the mean absolute difference, or
    [`pair_warping_error`]); `boundaries` are the first frames of chunks (see [`chunk_starts`]). For each boundary `b`
    the seam value is `pair_values[b - 1]` and the reference is the mean over the pairs inside the chunk before and
    the chunk after; the ratio is about 1 for an invisible seam. The overall `seam_score` is the mean seam value over
    the mean of all within-chunk pairs.

    Example:

    ```py
    >>> differences = [np.abs(a - b).mean() for a, b in zip(frames, frames[1:])]
    >>> seam_scores(differences, chunk_starts(len(frames)))["seam_score"]
    ```
    """
    num_pairs = len(pair_values)
    boundaries = sorted(b for b in boundaries if 0 < b <= num_pairs)
    if not boundaries:
        raise ValueError("The video has no chunk boundary: a seam score needs frames on both sides of one.")
    values = np.asarray(pair_values, dtype=np.float64)
    edges = [0, *boundaries, num_pairs + 1]  # chunk k holds frames [edges[k], edges[k + 1])

    def within(start, end):  # pairs (t, t + 1) with both frames in [start, end)
        return values[start : max(start, end - 1)]

    per_boundary = []
    for index, boundary in enumerate(boundaries, start=1):
        neighbours = np.concatenate([within(edges[index - 1], boundary), within(boundary, edges[index + 1])])
        reference = float(np.nanmean(neighbours)) if neighbours.size else float("nan")
        seam = float(values[boundary - 1])
        per_boundary.append({"frame": boundary, "seam": seam, "within": reference, "ratio": _ratio(seam, reference)})
    all_within = np.concatenate([within(start, end) for start, end in zip(edges[:-1], edges[1:])])
    seam_mean = float(np.nanmean([entry["seam"] for entry in per_boundary]))
    within_mean = float(np.nanmean(all_within)) if all_within.size else float("nan")
    return {
        "boundaries": per_boundary,
        "seam_mean": seam_mean,
        "within_mean": within_mean,
        "seam_score": _ratio(seam_mean, within_mean),
    }
