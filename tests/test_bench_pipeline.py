import json

import pytest
import torch
from conftest import load_script, lr_video, make_tiny_pipeline

from diffusers_infvsr.vae_stream import WanVAEStream


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/bench_pipeline.py")


def test_stage_timer_times_each_stage_and_detaches(bench):
    pipe = make_tiny_pipeline()
    original_encode = WanVAEStream.encode
    timer = bench.StageTimer(torch.device("cpu"))
    with timer.attached(pipe):
        list(pipe.stream(list(lr_video(10)), output_type="np"))  # two chunks
    assert all(seconds > 0 for seconds in timer.totals.values()), timer.totals
    # Everything is restored: nothing is timed any more.
    assert WanVAEStream.encode is original_encode and "forward" not in vars(pipe.transformer)
    before = dict(timer.totals)
    list(pipe.stream(list(lr_video(9)), output_type="np"))
    assert timer.totals == before


def test_num_chunks_follows_the_pipeline(bench):
    assert [bench.num_chunks(n) for n in (1, 9, 10, 21, 22, 384)] == [1, 1, 2, 2, 3, 33]


def test_tiny_cpu_scaling_run_writes_complete_json(bench, tmp_path):
    output = tmp_path / "result.json"
    argv = ["--config", "tiny", "--device", "cpu", "--frames", "9", "--height", "16", "--width", "16"]
    report = bench.main([*argv, "--repeats", "1", "--threads", "1", "--scaling", "1,2", "--output", str(output)])

    saved = json.loads(output.read_text())
    assert saved == json.loads(json.dumps(report))
    environment, settings = saved["environment"], saved["settings"]
    for key in ("device", "device_name", "torch", "diffusers", "commit", "date", "cpu_count"):
        assert environment[key] not in (None, "", "unknown"), key
    assert settings["output_size"] == [64, 64] and settings["config"] == "tiny" and settings["dtype"] == "fp32"
    assert [result["frames"] for result in saved["results"]] == [9, 18]
    assert [result["chunks"] for result in saved["results"]] == [1, 2]
    for result in saved["results"]:
        assert result["total_s"] > 0 and result["fps"] == pytest.approx(result["frames"] / result["total_s"])
        per_chunk = result["per_chunk_s"]
        assert set(per_chunk) == {"vae_encode", "dit", "vae_decode", "image_encoder", "host_io", "total"}
        assert all(per_chunk[stage] > 0 for stage in ("vae_encode", "dit", "vae_decode", "image_encoder"))
        stages = sum(per_chunk[stage] for stage in ("vae_encode", "dit", "vae_decode", "image_encoder", "host_io"))
        assert stages == pytest.approx(per_chunk["total"])
        assert (
            result["memory_kind"] == "peak_rss" and result["torch_threads"] == 1 and result["load_average_1min"] >= 0
        )
        assert result["peak_memory_bytes"] > result["baseline_memory_bytes"] > 0
    assert (tmp_path / saved["plot"]).stat().st_size > 0
