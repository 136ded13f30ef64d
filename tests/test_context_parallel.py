import socket
import subprocess
import sys
from pathlib import Path

import torch


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def test_ulysses_streaming_on_two_gloo_processes_equals_one_process(tmp_path):
    """diffusers' ContextParallelConfig (Ulysses, 2 CPU processes) with the KV cache, over 4 chunks."""
    output = tmp_path / "results.pt"
    worker = Path(__file__).with_name("context_parallel_worker.py")
    result = subprocess.run(
        [sys.executable, str(worker), str(output), free_port()], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = torch.load(output, weights_only=True)["ulysses"]
    for cache_frames in (2, 3, 5):  # a cache shorter than, equal to and longer than a chunk
        (single, single_frames), (parallel, parallel_frames) = (
            results["single"][cache_frames],
            results["parallel"][cache_frames],
        )
        assert single_frames == parallel_frames == cache_frames
        # fp32 rounding: the same sums in another order (attention over all-to-all-gathered heads).
        torch.testing.assert_close(parallel, single, rtol=0, atol=1e-5)
    # The cache matters on this input, so the comparison covers it.
    assert (results["single"][2][0] - results["single"][5][0]).abs().max() > 1e-3
