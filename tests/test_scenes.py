import numpy as np
import pytest

from diffusers_infvsr import StreamMarker
from diffusers_infvsr.scenes import SceneMarker


def shot(num_frames, color, seed):
    """Frames of one flat-coloured shot with a little noise and a slow drift (no cut inside)."""
    rng = np.random.default_rng(seed)
    base = np.zeros((24, 32, 3), np.int64) + np.array(color)
    return [
        np.clip(base + rng.integers(-3, 4, base.shape) + index % 3, 0, 255).astype(np.uint8)
        for index in range(num_frames)
    ]


def frame_indices_after_markers(items):
    """{marker: [index of the frame each marker precedes]} and the frames in order."""
    found, frames = {StreamMarker.NEW_SCENE: [], StreamMarker.REFRESH_REFERENCE: []}, []
    waiting = []
    for item in items:
        if isinstance(item, StreamMarker):
            waiting.append(item)
            continue
        for marker in waiting:
            found[marker].append(len(frames))
        waiting = []
        frames.append(item)
    return found, frames


def test_cuts_flashes_and_reference_refresh():
    red, green, blue = (200, 30, 30), (20, 200, 40), (10, 10, 220)
    # Cuts at 40 and 70; a 5-frame blue flash at 70 is shorter than min_scene_len, so 70-104 is one scene whose
    # reference (the blue frame 70) no longer matches from frame 75: the first chunk start at least 15 frames after
    # the reference is 70 + 9 + 12 = 91.
    video = shot(40, red, 0) + shot(30, green, 1) + shot(5, blue, 2) + shot(30, green, 3)
    marker = SceneMarker()
    found, frames = frame_indices_after_markers(marker.mark(video))
    assert all(a is b for a, b in zip(frames, video)) and len(frames) == len(video)
    assert found[StreamMarker.NEW_SCENE] == [40, 70]
    assert marker.scene_starts == [0, 40, 70]
    assert found[StreamMarker.REFRESH_REFERENCE] == marker.reference_refreshes == [91]

    # Without the flash the scene keeps its reference; with a higher threshold nothing is cut.
    steady = shot(40, red, 0) + shot(40, green, 1)
    marker = SceneMarker()
    found, _ = frame_indices_after_markers(marker.mark(steady))
    assert found == {StreamMarker.NEW_SCENE: [40], StreamMarker.REFRESH_REFERENCE: []}
    found, _ = frame_indices_after_markers(SceneMarker(threshold=255, reference_threshold=255).mark(steady))
    assert found == {StreamMarker.NEW_SCENE: [], StreamMarker.REFRESH_REFERENCE: []}


@pytest.mark.parametrize("min_scene_len", [0, 15])
def test_holds_back_no_more_than_its_look_ahead(min_scene_len):
    video = shot(30, (200, 30, 30), 0) + shot(30, (20, 200, 40), 1)
    pulled = 0

    def frames():
        nonlocal pulled
        for frame in video:
            pulled += 1
            yield frame

    released, most_held = 0, 0
    for item in SceneMarker(min_scene_len=min_scene_len).mark(frames()):
        if isinstance(item, np.ndarray):
            released += 1
            most_held = max(most_held, pulled - released)
    assert released == len(video)
    assert most_held == min_scene_len  # frames waiting for a possible late cut, besides the one being released
