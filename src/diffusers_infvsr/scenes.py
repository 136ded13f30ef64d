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
"""Online scene-cut detection and reference refresh for streaming, with PySceneDetect's `ContentDetector`."""

from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np
from scenedetect import ContentDetector
from scenedetect.common import FrameTimecode

from .pipeline_infvsr import CHUNK_FRAMES, FIRST_CHUNK_FRAMES, StreamMarker


def _timecode(frame_index: int) -> FrameTimecode:
    # Lengths are given in frames, so the rate only labels timecodes.
    return FrameTimecode(frame_index, fps=30.0)


def _bgr(frame: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(frame[..., ::-1])


class SceneMarker:
    r"""
    Marks scene cuts and reference refreshes in a stream of frames, online, for [`InfVSRPipeline.stream`], as the
    InfVSR release does:

    - Cuts come from PySceneDetect's `ContentDetector` (HSV content difference, `threshold` 27, scenes of at least
      `min_scene_len` frames). Its flash filter reports a cut up to `min_scene_len` frames late, so frames are held
      back by that many frames (the only frames this adds to memory) until any cut among them is known.
      `StreamMarker.NEW_SCENE` goes before the first frame of every scene but the first.
    - Within a scene, at the start of every chunk (9 frames, then 12) that is at least `reference_interval` frames
      after the current reference frame, the chunk's first frame is compared with the reference by a fresh
      `ContentDetector(reference_threshold, min_scene_len=0)`; if that reports a cut, `StreamMarker.REFRESH_REFERENCE`
      goes before the frame and it becomes the new reference (the caches are kept).

    Args:
        threshold (`float`, defaults to 27.0): Cut threshold of the content score.
        min_scene_len (`int`, defaults to 15): Minimum scene length in frames.
        reference_threshold (`float`, defaults to 27.0): Content score from which the reference frame is refreshed.
        reference_interval (`int`, defaults to 15): Minimum number of frames between reference refreshes.

    Example:

    ```py
    >>> from diffusers_infvsr.scenes import SceneMarker

    >>> marker = SceneMarker()
    >>> for frame in pipe.stream(marker.mark(frames)):  # frames: uint8 (H, W, 3) RGB arrays
    ...     writer.write(frame)
    >>> marker.scene_starts  # first frame of every scene
    [0, 240, 611]
    ```
    """

    def __init__(
        self,
        threshold: float = 27.0,
        min_scene_len: int = 15,
        reference_threshold: float = 27.0,
        reference_interval: int = 15,
    ):
        self.threshold = threshold
        self.min_scene_len = min_scene_len
        self.reference_threshold = reference_threshold
        self.reference_interval = reference_interval
        self.scene_starts: list[int] = []
        self.reference_refreshes: list[int] = []

    def _reference_changed(self, reference: np.ndarray, frame: np.ndarray) -> bool:
        detector = ContentDetector(threshold=self.reference_threshold, min_scene_len=0)
        detector.process_frame(_timecode(0), _bgr(reference))
        return bool(detector.process_frame(_timecode(1), _bgr(frame)))

    def mark(self, frames: Iterable[np.ndarray]) -> Iterator:
        r"""
        Yield the frames of `frames` (uint8 `(height, width, 3)` RGB arrays) in order, with [`StreamMarker`] values
        before the frames they apply to. Fills `scene_starts` and `reference_refreshes` (frame indices) on the way.
        """
        detector = ContentDetector(threshold=self.threshold, min_scene_len=self.min_scene_len)
        look_ahead = detector.event_buffer_length
        self.scene_starts, self.reference_refreshes = [], []
        pending: deque[tuple[int, np.ndarray]] = deque()
        cuts: set[int] = set()
        scene_start = reference_index = 0
        reference = None
        next_chunk_start = 0

        def release(index: int, frame: np.ndarray) -> Iterator:
            nonlocal scene_start, reference, reference_index, next_chunk_start
            if index == 0 or index in cuts:
                if index > 0:
                    yield StreamMarker.NEW_SCENE
                self.scene_starts.append(index)
                scene_start, reference, reference_index = index, frame, index
                next_chunk_start = index
            if index == next_chunk_start:
                is_scene_start = index == scene_start
                if (
                    not is_scene_start
                    and index - reference_index >= self.reference_interval
                    and self._reference_changed(reference, frame)
                ):
                    yield StreamMarker.REFRESH_REFERENCE
                    self.reference_refreshes.append(index)
                    reference, reference_index = frame, index
                next_chunk_start = index + (FIRST_CHUNK_FRAMES if is_scene_start else CHUNK_FRAMES)
            yield frame

        index = -1
        for index, frame in enumerate(frames):
            cuts.update(cut.frame_num for cut in detector.process_frame(_timecode(index), _bgr(frame)))
            pending.append((index, frame))
            while pending and pending[0][0] <= index - look_ahead:
                yield from release(*pending.popleft())
        if index >= 0:
            cuts.update(cut.frame_num for cut in detector.post_process(_timecode(index)))
        while pending:
            yield from release(*pending.popleft())
