import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from context_parallel_worker import CACHE_FRAMES


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


@pytest.fixture(scope="module")
def streamed_outputs(tmp_path_factory):
    """Single-process, Ulysses and ring outputs of one 2-process gloo launch, 4 chunks per cache length."""
    output = tmp_path_factory.mktemp("context_parallel") / "results.pt"
    worker = Path(__file__).with_name("context_parallel_worker.py")
    result = subprocess.run(
        [sys.executable, str(worker), str(output), free_port()], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(output, weights_only=True)


def test_the_cache_length_changes_the_output(streamed_outputs):
    # The cache matters on this input, so the comparisons below cover it.
    assert (streamed_outputs["single"][2][0] - streamed_outputs["single"][5][0]).abs().max() > 1e-3


@pytest.mark.parametrize("mode", ["ulysses", "ring"])
@pytest.mark.parametrize("cache_frames", CACHE_FRAMES)
def test_streaming_on_two_gloo_processes_equals_one_process(streamed_outputs, mode, cache_frames):
    """diffusers' ContextParallelConfig (2 CPU processes) with the KV cache, over 4 chunks."""
    single, single_frames = streamed_outputs["single"][cache_frames]
    parallel, parallel_frames = streamed_outputs[mode][cache_frames]
    assert single_frames == parallel_frames == cache_frames
    # fp32 rounding: the same sums in another order (Ulysses: attention over all-to-all-gathered heads; ring: partial
    # attentions over each rank's keys merged by their log-sum-exp).
    torch.testing.assert_close(parallel, single, rtol=0, atol=1e-5)
