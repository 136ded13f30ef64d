"""Tests of examples/train_infvsr.py and diffusers_infvsr.training, with tiny random models on CPU."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import PIL.Image
import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import TINY_TRANSFORMER_CONFIG, TINY_VAE_CONFIG, load_script, smooth_video
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file

from diffusers_infvsr import CausalWanTransformer3DModel, InfVSRPipeline, WanVAEStream
from diffusers_infvsr.metrics import DISTS
from diffusers_infvsr.training import (
    DegradationConfig,
    VideoClipDataset,
    add_flow_noise,
    decode_latents,
    distribution_matching_loss,
    dmd_loss,
    fake_score_loss,
    flow_matching_target,
    load_transformer,
    pixel_losses,
    predict_clean_sample,
    replace_text_projection,
    sample_noise_levels,
    temporal_difference_loss,
)


SCORE_TEXT_DIM = 24  # the score models' "umT5" dimension; the generator's DAPE dimension is TINY text_dim (16)


pytestmark = pytest.mark.usefixtures("single_thread")


def write_frames(folder: Path, frames: np.ndarray) -> Path:
    """(T, H, W, 3) uint8 frames as a folder of PNG files."""
    folder.mkdir(parents=True)
    for index, frame in enumerate(frames):
        PIL.Image.fromarray(frame).save(folder / f"{index:08d}.png")
    return folder


def write_video(path: Path, frames: np.ndarray) -> Path:
    """(T, H, W, 3) uint8 frames as a nearly lossless H.264 file."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=24, options={"crf": "1"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """(1, 3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    return ((video[0].permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_pipeline_dir):
    root = tmp_path_factory.mktemp("train-infvsr")
    score_config = {**TINY_TRANSFORMER_CONFIG, "text_dim": SCORE_TEXT_DIM}
    torch.manual_seed(1)
    # A Wan T2V pipeline layout (`transformer/` subfolder), as Wan-AI/Wan2.1-T2V-1.3B-Diffusers.
    WanTransformer3DModel(**score_config).save_pretrained(root / "wan-t2v" / "transformer")
    save_file({"prompt_embeds": torch.randn(1, 8, SCORE_TEXT_DIM)}, root / "prompt_embeds.safetensors")
    save_file({"prompt_embeds": torch.randn(1, 8, SCORE_TEXT_DIM)}, root / "negative_prompt_embeds.safetensors")

    clips = root / "clips"
    for index in range(2):
        write_frames(clips / f"{index:03d}", to_uint8_frames(smooth_video(33, 32, 32, seed=index)))
    write_video(clips / "002.mp4", to_uint8_frames(smooth_video(33, 32, 32, seed=2)))
    for index in range(6):  # enough 9-frame clips for several generator + fake-score steps per epoch
        write_frames(root / "many" / f"{index:03d}", to_uint8_frames(smooth_video(9, 32, 32, seed=10 + index)))
    write_frames(root / "static" / "clip", to_uint8_frames(smooth_video(1, 32, 32, seed=3)).repeat(9, axis=0))

    # The overfitting clip decodes a constant latent with the pipeline's frozen VAE, so the one-step generator can
    # reach it exactly (the tiny random encoder passes little information about arbitrary content).
    vae = InfVSRPipeline.from_pretrained(tiny_pipeline_dir).vae
    latents = torch.tensor([1.0, -1.0, 0.6, -0.6]).view(1, 4, 1, 1, 1).expand(1, 4, 3, 4, 4)
    write_frames(root / "overfit" / "clip", to_uint8_frames(WanVAEStream(vae).decode(latents)))
    return {"root": root, "pipeline": tiny_pipeline_dir, "wan_t2v": root / "wan-t2v"}


@pytest.fixture(scope="module")
def train_script():
    return load_script("examples/train_infvsr.py")


def run_training(train_script, args: list[str]) -> dict:
    AcceleratorState._reset_state(reset_partial_state=True)
    return train_script.main(train_script.parse_args([*map(str, args), "--report_to", "none"]))


def base_args(assets, output_dir, stage: int = 1, data: str = "clips", num_frames: int = 9) -> list:
    args = [
        "--stage", stage, "--pretrained_model_name_or_path", assets["pipeline"],
        "--train_data_dir", assets["root"] / data, "--output_dir", output_dir,
        "--num_frames", num_frames, "--resolution", 32, 32, "--decode_window", 16, 16,
        "--dists_weight", 0, "--learning_rate", 1e-3, "--checkpointing_steps", 1000,
    ]  # fmt: skip
    if stage == 2:
        args += ["--real_score_model_name_or_path", assets["wan_t2v"], "--fake_score_updates", 1]
        args += ["--prompt_embeds_path", assets["root"] / "prompt_embeds.safetensors"]
        args += ["--negative_prompt_embeds_path", assets["root"] / "negative_prompt_embeds.safetensors"]
    return args


def clip_pixel_loss(train_script, transformer, assets) -> float:
    """MSE + temporal loss of the whole overfitting clip (its epoch-0 degradation)."""
    pipe = InfVSRPipeline.from_pretrained(assets["pipeline"])
    item = VideoClipDataset(assets["root"] / "overfit", num_frames=9, resolution=(32, 32))[0]
    with torch.no_grad():
        latents, prompt, hq = train_script.prepare_inputs(
            {k: v[None] for k, v in item.items()}, pipe.vae, pipe.image_encoder, 4
        )
        velocity = transformer(latents, torch.tensor([pipe.scheduler.timestep]), prompt).sample
        decoded = decode_latents(pipe.vae, pipe.scheduler.one_step(velocity, latents))
    return pixel_losses((decoded + 1) / 2, hq, dists=None)["pixel"].item()


@pytest.fixture(scope="module")
def stage1_run(train_script, assets):
    output_dir = assets["root"] / "stage1"
    args = base_args(assets, output_dir, data="overfit")
    args += ["--decode_window", 32, 32, "--learning_rate", 1e-2, "--max_train_steps", 30]
    return output_dir, run_training(train_script, args)


def test_stage1_overfits_one_clip(train_script, assets, stage1_run):
    initial = InfVSRPipeline.from_pretrained(assets["pipeline"]).transformer
    before = clip_pixel_loss(train_script, initial, assets)
    after = clip_pixel_loss(train_script, stage1_run[1]["generator"], assets)
    assert after < 0.5 * before, (before, after)


def test_final_folder_loads_and_upscales(stage1_run):
    output_dir, models = stage1_run
    pipe = InfVSRPipeline.from_pretrained(output_dir)
    trained = models["generator"].state_dict()
    assert all(torch.equal(value, trained[name]) for name, value in pipe.transformer.state_dict().items())
    pipe.set_progress_bar_config(disable=True)
    low_res = to_uint8_frames(smooth_video(9, 8, 8, seed=5))
    frames = pipe(video=low_res, output_type="np").frames
    assert frames.shape == (1, 9, 32, 32, 3) and np.isfinite(frames).all()
    card = (output_dir / "README.md").read_text()
    assert card.startswith("---") and "## This checkpoint" in card and "Stage I" in card


def test_stage2_trains_generator_and_fake_score_only(train_script, assets, monkeypatch):
    layouts = []
    forward = CausalWanTransformer3DModel.forward

    def recording_forward(self, *args, **kwargs):
        layouts.append((kwargs.get("chunk_frames"), kwargs.get("cache_frames")))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(CausalWanTransformer3DModel, "forward", recording_forward)
    output_dir = assets["root"] / "stage2"
    args = base_args(assets, output_dir, stage=2, num_frames=33)
    args += ["--generator_init_transformer", assets["wan_t2v"], "--max_train_steps", 3, "--checkpointing_steps", 3]
    models = run_training(train_script, args)

    # 33 frames -> 9 latent frames: three chunks of 3 under the block-causal mask with a 3-frame cache.
    assert layouts[:3] == [([3, 3, 3], 3)] * 3
    wan_t2v = WanTransformer3DModel.from_pretrained(assets["wan_t2v"], subfolder="transformer").state_dict()

    def changed(model):
        state = model.state_dict()
        return [
            name
            for name in wan_t2v
            if state[name].shape == wan_t2v[name].shape and not torch.equal(state[name], wan_t2v[name])
        ]

    generator_changed = changed(models["generator"])
    assert any(name.startswith("blocks.") for name in generator_changed)
    assert models["generator"].config.text_dim == TINY_TRANSFORMER_CONFIG["text_dim"]
    assert any(name.startswith("blocks.") for name in changed(models["fake_score"]))
    assert changed(models["real_score"]) == []
    checkpoint = output_dir / "checkpoint-3"
    assert {"transformer", "fake_score", "optimizer.bin", "optimizer_1.bin"} <= set(os.listdir(checkpoint))


def test_fake_score_updates_resume_exactly_on_fresh_samples(train_script, assets, monkeypatch):
    calls = []  # (model, grad enabled, input) of every transformer forward
    for cls in (CausalWanTransformer3DModel, WanTransformer3DModel):
        monkeypatch.setattr(cls, "forward", recording(cls, cls.forward, calls))
    args = base_args(assets, assets["root"] / "resume-full", stage=2, data="many")
    args += ["--fake_score_updates", 2, "--fake_score_learning_rate", 3e-4, "--max_train_steps", 3]
    args += ["--checkpointing_steps", 1]
    full = run_training(train_script, args)

    # Each step: the generator's batch, then 2 fake-score updates, each generating on a batch of its own (no grad)
    # and training the fake score on that sample; the real score runs twice (guidance), the fake score once for DMD.
    step = [(name, grad) for name, grad, _ in calls[:8]]
    assert step == [
        ("CausalWanTransformer3DModel", True),
        ("WanTransformer3DModel", False), ("WanTransformer3DModel", False), ("WanTransformer3DModel", False),
        ("CausalWanTransformer3DModel", False), ("WanTransformer3DModel", True),
        ("CausalWanTransformer3DModel", False), ("WanTransformer3DModel", True),
    ]  # fmt: skip
    generator_inputs = [inputs for name, _, inputs in calls[:8] if name == "CausalWanTransformer3DModel"]
    assert not torch.equal(generator_inputs[1], generator_inputs[2])
    assert all(not torch.equal(generator_inputs[0], other) for other in generator_inputs[1:])
    assert len(calls) == 3 * 8

    checkpoint = assets["root"] / "resume-full" / "checkpoint-2"
    fake_optimizer = torch.load(checkpoint / "optimizer_1.bin", weights_only=False)
    assert [group["lr"] for group in fake_optimizer["param_groups"]] == [3e-4]
    settings = json.loads((checkpoint / "train_settings.json").read_text())
    assert settings["fake_score_updates"] == 2 and settings["fake_score_learning_rate"] == 3e-4

    # 6 clips, 3 batches per step: checkpoint-1 is in the middle of the first epoch.
    resumed_dir = assets["root"] / "resume-part"
    shutil.copytree(assets["root"] / "resume-full" / "checkpoint-1", resumed_dir / "checkpoint-1")
    args[args.index("--output_dir") + 1] = resumed_dir
    resumed = run_training(train_script, [*args, "--resume_from_checkpoint", "latest"])
    for name in ("generator", "fake_score"):
        expected, actual = full[name].state_dict(), resumed[name].state_dict()
        assert all(torch.equal(expected[key], actual[key]) for key in expected), name
    at_step_1 = CausalWanTransformer3DModel.from_pretrained(resumed_dir / "checkpoint-1", subfolder="transformer")
    step_1 = at_step_1.state_dict()
    assert any(not torch.equal(value, step_1[key]) for key, value in full["generator"].state_dict().items())

    changed = [*args, "--resume_from_checkpoint", "checkpoint-1"]
    changed[changed.index("--fake_score_updates", changed.index("--fake_score_updates") + 1) + 1] = 3
    with pytest.raises(ValueError, match="fake_score_updates 2 -> 3"):
        run_training(train_script, changed)


def recording(cls, forward, calls):
    def record(self, hidden_states, *args, **kwargs):
        calls.append((cls.__name__, torch.is_grad_enabled(), hidden_states.detach().clone()))
        return forward(self, hidden_states, *args, **kwargs)

    return record


def launch(args: list, tmp_path: Path) -> subprocess.CompletedProcess:
    """The README's launch command with 2 processes (on CPU, gloo), running the script through the rank worker."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    command += [str(Path(__file__).parent / "train_launch_worker.py"), *map(str, args), "--report_to", "none"]
    # A fresh HF_HOME: no `accelerate config` default file is read.
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def test_two_process_launch_keeps_ranks_identical_and_resumes_exactly(assets, tmp_path):
    output_dir = tmp_path / "launched"
    args = base_args(assets, output_dir, stage=2, data="many")
    args += ["--max_train_steps", 3, "--gradient_checkpointing", "--random_flip"]
    args += [
        "--checkpointing_steps",
        1,
        "--checkpoints_total_limit",
        2,
        "--dists_weight",
        1,
        "--dists_allow_untrained",
    ]
    args += ["--validation_video", assets["root"] / "clips" / "002.mp4", "--validation_steps", 3]
    result = launch(args, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "fps=" in result.stderr  # throughput in the progress bar
    assert "Num processes: 2" in result.stderr and "MULTI_CPU" in result.stderr
    checkpoints = sorted(d for d in os.listdir(output_dir) if d.startswith("checkpoint"))
    assert checkpoints == ["checkpoint-2", "checkpoint-3"], (checkpoints, result.stderr[-3000:])
    assert (output_dir / "model_index.json").is_file() and (output_dir / "validation" / "step-3.mp4").is_file()
    assert "PSNR" in (output_dir / "README.md").read_text()
    ranks = [load_file(output_dir / f"rank{rank}.safetensors") for rank in (0, 1)]
    initial = WanTransformer3DModel.from_pretrained(assets["wan_t2v"], subfolder="transformer").state_dict()
    assert any(not torch.equal(value, initial[key[len("fake_score.") :]]) for key, value in ranks[0].items()
               if key.startswith("fake_score."))  # fmt: skip
    assert ranks[0].keys() == ranks[1].keys()
    assert all(torch.equal(ranks[0][key], ranks[1][key]) for key in ranks[0])

    resumed_dir = tmp_path / "resumed"
    shutil.copytree(output_dir / "checkpoint-2", resumed_dir / "checkpoint-2")
    args[args.index("--output_dir") + 1] = resumed_dir
    result = launch([*args, "--resume_from_checkpoint", "latest"], tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    resumed = load_file(resumed_dir / "rank0.safetensors")
    assert all(torch.equal(ranks[0][key], resumed[key]) for key in ranks[0])


@pytest.mark.parametrize("missing", ["explicit", "default"])
def test_dists_on_without_weights_is_refused(train_script, assets, tmp_path, monkeypatch, missing):
    args = base_args(assets, tmp_path / "out") + ["--dists_weight", 1, "--max_train_steps", 1]
    if missing == "explicit":
        args += ["--dists_vgg16_weights", tmp_path / "vgg16.pth"]
    else:
        # No VGG16 in the torch hub cache.
        monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="--dists_weight 0"):
        run_training(train_script, args)


def test_8bit_adam_needs_bitsandbytes(train_script, assets, tmp_path):
    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed.")
    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        run_training(train_script, base_args(assets, tmp_path / "out") + ["--use_8bit_adam"])


@pytest.mark.parametrize(
    "change, message",
    [
        (["--stage", "2"], "real_score_model_name_or_path"),
        (["--stage", "2", "--real_score_model_name_or_path", "x", "--prompt_embeds_path", "p"], "negative_prompt"),
        (["--num_frames", "10"], "1 \\+ 4k"),
        (["--resolution", "40", "48"], "multiples of 16"),
        (["--decode_window", "12", "16"], "multiples of 8"),
    ],
)
def test_invalid_arguments(train_script, change, message):
    args = ["--stage", "1", "--pretrained_model_name_or_path", "x", "--train_data_dir", "y", *change]
    with pytest.raises(ValueError, match=message):
        train_script.parse_args(args)


def test_generator_init_from_wan_t2v(assets, tmp_path):
    generator = load_transformer(CausalWanTransformer3DModel, assets["wan_t2v"])
    source = generator.state_dict()
    assert replace_text_projection(generator, 16)
    assert not replace_text_projection(generator, 16)
    generator.save_pretrained(tmp_path / "generator")
    reloaded = load_transformer(CausalWanTransformer3DModel, tmp_path / "generator").state_dict()
    assert reloaded["condition_embedder.text_embedder.linear_1.weight"].shape == (24, 16)
    kept = [name for name in source if not name.startswith("condition_embedder.text_embedder.linear_1.")]
    assert len(kept) == len(source) - 2
    assert all(torch.equal(source[name], reloaded[name]) for name in kept)
    out = generator(torch.randn(1, 4, 3, 4, 4), torch.tensor([400.0]), torch.randn(1, 5, 16)).sample
    assert out.shape == (1, 4, 3, 4, 4)


def test_decode_latents_is_streaming_decode_with_gradients():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(**TINY_VAE_CONFIG).eval().requires_grad_(False)
    latents = torch.randn(1, 4, 3, 4, 5, requires_grad=True)
    decoded = decode_latents(vae, latents)
    torch.testing.assert_close(decoded.clamp(-1, 1), WanVAEStream(vae).decode(latents.detach()))
    checkpointed = decode_latents(vae, latents, gradient_checkpointing=True)
    torch.testing.assert_close(checkpointed, decoded)
    (gradient,) = torch.autograd.grad(decoded.square().sum(), latents)
    (checkpointed_gradient,) = torch.autograd.grad(checkpointed.square().sum(), latents)
    assert gradient.abs().sum() > 0
    torch.testing.assert_close(checkpointed_gradient, gradient)


def test_dmd_loss_gradient_is_normalized_score_difference():
    torch.manual_seed(0)
    generated = torch.randn(2, 4, 3, 4, 4, requires_grad=True)
    real, fake = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 4, 3, 4, 4)
    (gradient,) = torch.autograd.grad(dmd_loss(generated, real, fake), generated)
    weight = (generated.detach() - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    torch.testing.assert_close(gradient, (fake - real) / weight / generated.numel())
    # Equal scores: nothing to match.
    (gradient,) = torch.autograd.grad(dmd_loss(generated, real, real), generated)
    assert gradient.abs().max() == 0


def test_noise_levels_come_from_the_shifted_schedule():
    from diffusers_infvsr import InfVSRScheduler

    scheduler = InfVSRScheduler()
    timesteps, sigmas = sample_noise_levels(scheduler, 64, 20, 980, generator=torch.Generator().manual_seed(0))
    assert ((timesteps >= 20) & (timesteps <= 980)).all()
    torch.testing.assert_close(timesteps, sigmas * 1000)
    assert all(torch.isclose(scheduler.sigmas.float(), sigma).any() for sigma in sigmas)


def test_dataset_windows_are_reproducible(assets):
    kwargs = {"num_frames": 9, "resolution": (16, 16), "random_flip": True, "seed": 7}
    dataset = VideoClipDataset(assets["root"] / "clips", **kwargs)
    assert len(dataset) == 3 and dataset.clips[-1].suffix == ".mp4"
    items = [dataset[index] for index in range(3)]
    assert all(item["hq_frames"].shape == (9, 3, 16, 16) and item["lq_frames"].shape == (9, 3, 4, 4) for item in items)
    assert all(item["hq_frames"].dtype == item["lq_frames"].dtype == torch.uint8 for item in items)
    again = VideoClipDataset(assets["root"] / "clips", **kwargs)
    assert all(torch.equal(items[i]["lq_frames"], again[i]["lq_frames"]) for i in range(3))
    again.set_epoch(1)
    assert not all(torch.equal(items[i]["hq_frames"], again[i]["hq_frames"]) for i in range(3))
    with pytest.raises(ValueError, match="at least 40 frames"):
        VideoClipDataset(assets["root"] / "clips", num_frames=40)


def test_flow_noise_is_the_linear_interpolation():
    sample, noise, sigmas = torch.randn(3, 4, 2, 2, 2), torch.randn(3, 4, 2, 2, 2), torch.tensor([0.0, 0.25, 1.0])
    noisy = add_flow_noise(sample, noise, sigmas)
    for index, sigma in enumerate(sigmas.tolist()):
        torch.testing.assert_close(noisy[index], (1 - sigma) * sample[index] + sigma * noise[index])


def test_fake_score_target_is_the_flow_velocity():
    sample, noise = torch.randn(2, 4, 3, 4, 4, dtype=torch.float64), torch.randn(2, 4, 3, 4, 4, dtype=torch.float64)
    sigma, step = torch.tensor([0.3, 0.6], dtype=torch.float64), 1e-6
    derivative = (add_flow_noise(sample, noise, sigma + step) - add_flow_noise(sample, noise, sigma - step)) / (
        2 * step
    )
    torch.testing.assert_close(flow_matching_target(sample, noise), derivative)

    class Echo(torch.nn.Module):  # predicts x_t itself
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(()))

        def forward(self, noisy, timestep, context, return_dict=False):
            return (noisy * self.weight,)

    sample, noise, sigmas = sample.float(), noise.float(), sigma.float()
    loss = fake_score_loss(Echo(), sample, noise, sigmas * 1000, sigmas, torch.zeros(2, 1, 1))
    noisy = (1 - sigmas.view(-1, 1, 1, 1, 1)) * sample + sigmas.view(-1, 1, 1, 1, 1) * noise
    torch.testing.assert_close(loss, ((noisy - (noise - sample)) ** 2).mean())


def test_temporal_loss_compares_frame_differences():
    target = torch.randn(1, 3, 5, 4, 4)
    frames = torch.arange(5.0).view(1, 1, 5, 1, 1)
    rows = torch.arange(4.0).view(1, 1, 1, 4, 1)
    # A drift of 0.5 per frame changes every temporal difference by 0.5; a ramp over the rows changes none.
    torch.testing.assert_close(temporal_difference_loss(target + 0.5 * frames, target), torch.tensor(0.25))
    torch.testing.assert_close(temporal_difference_loss(target + rows, target), torch.tensor(0.0))


def test_dataset_degrades_each_clip_with_one_parameter_set(assets):
    noiseless = {"gaussian_sigma": (0.0, 0.0), "poisson_scale": (0.0, 0.0)}
    config = DegradationConfig.from_dict({"first": noiseless, "second": noiseless, "video_compression_prob": 0.0})
    for seed in range(4):
        dataset = VideoClipDataset(assets["root"] / "static", num_frames=9, resolution=(32, 32), degradation=config,
                                   seed=seed)  # fmt: skip
        lq = dataset[0]["lq_frames"]
        assert all(torch.equal(frame, lq[0]) for frame in lq), seed


def test_pixel_losses_run_in_float32_under_autocast():
    torch.manual_seed(0)
    dists = DISTS.from_pretrained(allow_untrained=True)
    prediction = torch.rand(1, 3, 3, 32, 32, requires_grad=True)
    target = (prediction.detach() + 0.05 * torch.randn_like(prediction)).clamp(0, 1)
    weights = {"mse_weight": 0.0, "temporal_weight": 0.0}  # DISTS alone: the other terms' gradients are larger
    (reference,) = torch.autograd.grad(pixel_losses(prediction, target, dists, **weights)["pixel"], prediction)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = pixel_losses(prediction, target, dists, **weights)
    (gradient,) = torch.autograd.grad(losses["pixel"], prediction)
    assert losses["dists"].dtype == torch.float32 and reference.abs().max() > 0
    torch.testing.assert_close(gradient, reference, rtol=1e-5, atol=1e-9)

    # MSE and the temporal loss too: their gradients are exact float32 differences.
    prediction_bf16_autocast = prediction.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total = pixel_losses(prediction_bf16_autocast, target, dists=None)["pixel"]
    (gradient,) = torch.autograd.grad(total, prediction_bf16_autocast)
    difference = prediction.detach() - target
    expected = 2 * difference / difference.numel()
    expected[:, :, 1:] += 2 * difference.diff(dim=2) / difference[:, :, 1:].numel()
    expected[:, :, :-1] -= 2 * difference.diff(dim=2) / difference[:, :, 1:].numel()
    torch.testing.assert_close(gradient, expected, rtol=1e-5, atol=1e-9)


def test_real_score_guidance_formula():
    class Scaled(torch.nn.Module):  # velocity = x_t * mean(context)
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(()))

        def forward(self, noisy, timestep, context, return_dict=False):
            return (noisy * context.mean() * self.weight,)

    noisy, sigmas = torch.randn(2, 4, 3, 2, 2), torch.tensor([0.2, 0.7])
    cond, negative = torch.full((2, 1, 1), 3.0), torch.full((2, 1, 1), -1.0)
    s = sigmas.view(-1, 1, 1, 1, 1)
    x0_cond, x0_negative = noisy - s * noisy * 3.0, noisy - s * noisy * -1.0
    guided = predict_clean_sample(Scaled(), noisy, sigmas * 1000, sigmas, cond, negative, guidance_scale=4.0)
    torch.testing.assert_close(guided, x0_negative + 4.0 * (x0_cond - x0_negative))
    torch.testing.assert_close(predict_clean_sample(Scaled(), noisy, sigmas * 1000, sigmas, cond), x0_cond)


def test_dmd_gradient_is_zero_when_real_and_fake_are_one_bf16_network():
    torch.manual_seed(0)
    score = WanTransformer3DModel(**{**TINY_TRANSFORMER_CONFIG, "text_dim": SCORE_TEXT_DIM}).to(torch.bfloat16)
    generated = torch.randn(1, 4, 3, 4, 4, requires_grad=True)
    noise, sigmas = torch.randn(1, 4, 3, 4, 4), torch.tensor([0.55])
    cond = torch.randn(1, 8, SCORE_TEXT_DIM)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # The negative prompt equal to the conditional one: the guided real prediction is the fake one.
        loss = distribution_matching_loss(generated, score, score, noise, sigmas * 1000, sigmas, cond, cond, 4.0)
    (gradient,) = torch.autograd.grad(loss, generated)
    assert gradient.abs().max() == 0
