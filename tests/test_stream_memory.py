import os
import subprocess
import sys
from pathlib import Path


WORKER = Path(__file__).with_name("stream_memory_worker.py")


def peak_memory(chunks: int) -> tuple[int, int]:
    """(RSS before streaming, peak RSS) in KiB of a fresh process streaming `chunks` chunks."""
    # Large blocks straight from mmap and back: glibc's adaptive heap otherwise makes transient peaks vary by ~70 MiB
    # from run to run, which would hide (or fake) growth of that size.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run(
        [sys.executable, str(WORKER), "--chunks", str(chunks)], capture_output=True, text=True, check=True, env=env
    )
    baseline, peak = map(int, result.stdout.split())
    return baseline, peak


def test_memory_stays_flat_for_8x_more_frames():
    # 3 chunks = 33 frames, 24 chunks = 285 frames of 128 x 128 through the streaming VAE and causal transformer.
    short_baseline, short_peak = peak_memory(3)
    long_baseline, long_peak = peak_memory(24)

    assert long_peak < 1.10 * short_peak
    # Stricter: the memory used by streaming itself (peak above the loaded models) grows by less than 10% too. Keeping
    # every output frame would add ~56 MiB and a cache that never dropped frames ~50 MiB, against ~115 MiB used.
    short_work, long_work = short_peak - short_baseline, long_peak - long_baseline
    assert long_work < 1.10 * short_work, (short_work, long_work)
