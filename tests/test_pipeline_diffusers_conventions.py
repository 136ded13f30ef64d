"""InfVSRPipeline against what diffusers promises of every pipeline, in the spirit of diffusers' PipelineTesterMixin:
loading arguments, saving, Hub remote code, model card, offloading, settings in the config."""

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_VAE_CONFIG, lr_video, make_tiny_pipeline
from diffusers import AutoencoderKLWan, DiffusionPipeline, PipelineQuantizationConfig
from diffusers.pipelines.pipeline_loading_utils import _get_custom_components_and_folders, _get_pipeline_class
from huggingface_hub import ModelCard
from remote_code_worker import WORKER_CLIP, run_without_package

import diffusers_infvsr.pipeline_infvsr as pipeline_module
from diffusers_infvsr import InfVSRPipeline, vae_stream
from diffusers_infvsr.hub import MODEL_CARD_REPO_PLACEHOLDER, default_model_card_path, render_model_card


pytestmark = pytest.mark.usefixtures("single_thread")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def load(path, **kwargs) -> InfVSRPipeline:
    pipe = InfVSRPipeline.from_pretrained(path, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    state = b.state_dict()
    return all(torch.equal(value.float(), state[key].float()) for key, value in a.state_dict().items())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny pipeline with non-default settings, saved once; its frames on a 10-frame clip (two chunks)."""
    pipe = make_tiny_pipeline()
    pipe.cache_frames = 2
    path = tmp_path_factory.mktemp("saved")
    pipe.save_pretrained(path)
    return path, pipe, pipe(video=lr_video(**WORKER_CLIP), output_type="np").frames


def hub_cache(folder: Path, root: Path, repo_id: str = "someone/infvsr-tiny") -> Path:
    """Lay `folder` out as huggingface_hub's cache holds a downloaded repository (snapshot + refs/main)."""
    repo = root / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return root / "hub"


# 1. Loading goes through DiffusionPipeline.from_pretrained and honours its arguments.


def test_settings_live_in_the_config_and_survive_save_reload_and_from_pipe(saved, tmp_path):
    path, pipe, _ = saved
    model_index = json.loads((path / "model_index.json").read_text())
    assert model_index["cache_frames"] == 2 and model_index["vae_tile_latent_stride"] == 110
    assert load(path).cache_frames == 2
    overridden = load(path, cache_frames=1, vae_tile_threshold=64)
    assert (overridden.cache_frames, overridden.config.vae_tile_threshold) == (1, 64)
    assert InfVSRPipeline.from_pipe(pipe).cache_frames == 2
    assert InfVSRPipeline.from_pipe(pipe, cache_frames=0).config.cache_frames == 0


def test_dtype_variant_safetensors_and_low_cpu_mem_usage(saved, tmp_path):
    path, pipe, _ = saved
    mixed = load(path, dtype={"transformer": torch.bfloat16, "default": torch.float32})
    assert mixed.transformer.dtype == torch.bfloat16
    assert mixed.vae.dtype == mixed.image_encoder.dtype == torch.float32
    assert load(path, dtype=torch.bfloat16).image_encoder.dtype == torch.bfloat16
    assert weights_equal(load(path, low_cpu_mem_usage=True).transformer, pipe.transformer)
    # As for the stock Wan transformer, whose `_keep_in_fp32_modules` the causal one inherits.
    with pytest.raises(ValueError, match="keep_in_fp32_modules"):
        load(path, low_cpu_mem_usage=False)

    pipe.save_pretrained(tmp_path / "variant", variant="v1")
    assert (tmp_path / "variant" / "transformer" / "diffusion_pytorch_model.v1.safetensors").is_file()
    assert weights_equal(load(tmp_path / "variant", variant="v1").transformer, pipe.transformer)
    with pytest.raises(ValueError, match="variant=v2"):
        load(tmp_path / "variant", variant="v2")

    pipe.save_pretrained(tmp_path / "pickle", safe_serialization=False)
    assert (tmp_path / "pickle" / "transformer" / "diffusion_pytorch_model.bin").is_file()
    assert weights_equal(load(tmp_path / "pickle", use_safetensors=False).vae, pipe.vae)
    with pytest.raises(EnvironmentError):
        load(tmp_path / "pickle", use_safetensors=True)


def test_device_map_quantization_and_component_overrides(saved):
    path, pipe, expected = saved
    mapped = load(path, device_map="cpu")
    assert mapped.hf_device_map == "cpu" and weights_equal(mapped.transformer, pipe.transformer)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers deprecates the quanto backend for 1.0
        from diffusers import QuantoConfig
        from optimum.quanto import QLinear

        config = PipelineQuantizationConfig(quant_mapping={"transformer": QuantoConfig(weights_dtype="int8")})
        quantized = load(path, quantization_config=config)
    assert isinstance(quantized.transformer.blocks[0].attn1.to_q, QLinear)
    assert not isinstance(quantized.image_encoder.proj, QLinear)
    # int8 weights (per-channel scales) on the tiny random model: pixel values in [0, 1] move by well under 5%.
    frames = quantized(video=lr_video(**WORKER_CLIP), output_type="np").frames
    assert np.abs(frames - expected).mean() < 0.005 and np.abs(frames - expected).max() < 0.05

    torch.manual_seed(1)
    other_vae = AutoencoderKLWan(**TINY_VAE_CONFIG).eval()
    swapped = load(path, vae=other_vae, image_encoder=None)
    assert swapped.vae is other_vae and swapped.image_encoder is None
    assert weights_equal(swapped.transformer, pipe.transformer)


def test_hub_id_with_revision_cache_dir_and_offline_arguments(saved, tmp_path, monkeypatch):
    path, _, expected = saved
    cache_dir = hub_cache(path, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = load("someone/infvsr-tiny", cache_dir=cache_dir, revision=COMMIT, local_files_only=True, token=False)
    assert pipe.cache_frames == 2 and pipe.config._name_or_path == "someone/infvsr-tiny"
    np.testing.assert_allclose(pipe(video=lr_video(**WORKER_CLIP), output_type="np").frames, expected, atol=1e-5)
    with pytest.raises(EnvironmentError):
        load("someone/not-cached", cache_dir=cache_dir)


def test_the_hub_download_step_accepts_the_folder_for_the_package_class(saved):
    # Online (or with a cached file listing) `download` reads model_index.json through the pipeline class, checks
    # every custom component against the repository's files, and resolves the class to size the download.
    path = saved[0]
    config = InfVSRPipeline._dict_from_json_file(path / "model_index.json")
    assert config["_class_name"] == "InfVSRPipeline"
    files = [str(file.relative_to(path)) for file in path.rglob("*") if file.is_file()]
    custom, _ = _get_custom_components_and_folders("someone/infvsr-tiny", config, files)
    assert custom == {
        "transformer": "transformer_causal_wan",
        "image_encoder": "image_encoder_dape",
        "scheduler": "scheduling_infvsr",
    }
    assert _get_pipeline_class(InfVSRPipeline, config) is InfVSRPipeline


def test_diffusion_pipeline_from_pretrained_names_what_to_pass(saved):
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(saved[0])


# 2. Loading without the package: remote code generated from the package's own modules.


@pytest.mark.filterwarnings(
    "ignore::DeprecationWarning"
)  # torch.jit deprecations raised while saving a compiled module
def test_saved_folder_ships_the_package_modules_as_remote_code(saved, tmp_path):
    saved[1].transformer = torch.compile(saved[1].transformer)  # saved as the class it wraps, as diffusers does
    saved[1].save_pretrained(tmp_path)
    saved[1].transformer = saved[1].transformer._orig_mod
    path = tmp_path
    model_index = json.loads((path / "model_index.json").read_text())
    assert model_index["_class_name"] == ["pipeline_infvsr", "InfVSRPipeline"]
    assert model_index["transformer"] == ["transformer_causal_wan", "CausalWanTransformer3DModel"]
    assert model_index["image_encoder"] == ["image_encoder_dape", "DAPEImageEncoder"]
    assert model_index["scheduler"] == ["scheduling_infvsr", "InfVSRScheduler"]
    assert model_index["vae"] == ["diffusers", "AutoencoderKLWan"]
    package = Path(pipeline_module.__file__).parent
    for shipped, source in [
        ("transformer/transformer_causal_wan.py", "models/transformer_causal_wan.py"),
        ("image_encoder/image_encoder_dape.py", "models/image_encoder_dape.py"),
        ("scheduler/scheduling_infvsr.py", "scheduling_infvsr.py"),
        ("vae_stream.py", "vae_stream.py"),
    ]:
        assert (path / shipped).read_text() == (package / source).read_text(), shipped
    # The pipeline module is the package's, with its relative imports pointed at the shipped files.
    shipped_pipeline = (path / "pipeline_infvsr.py").read_text()
    assert "from .transformer.transformer_causal_wan import" in shipped_pipeline
    assert (
        shipped_pipeline.replace(".transformer.transformer_causal_wan", ".models.transformer_causal_wan")
        .replace(".image_encoder.image_encoder_dape", ".models.image_encoder_dape")
        .replace(".scheduler.scheduling_infvsr", ".scheduling_infvsr")
        == (package / "pipeline_infvsr.py").read_text()
    )


def test_loads_with_diffusers_alone_from_a_folder_and_an_offline_hub_cache(saved, tmp_path):
    path, _, expected = saved
    frames, stdout = run_without_package(path, tmp_path / "folder")
    assert stdout.split() == [
        "diffusers_modules.local.pipeline_infvsr",
        "diffusers_modules.local.transformer_causal_wan",
        "2",
    ]
    np.testing.assert_allclose(frames, expected, rtol=0, atol=1e-5)

    cache = hub_cache(path, tmp_path / "cache")
    frames, _ = run_without_package("someone/infvsr-tiny", tmp_path / "hub", {"HF_HUB_CACHE": str(cache)})
    np.testing.assert_allclose(frames, expected, rtol=0, atol=1e-5)


# 3. The model card.


def test_push_to_hub_uploads_remote_code_and_a_card_naming_the_repository(saved, tmp_path, monkeypatch):
    uploads = {}

    class RepoUrl(str):
        repo_id = "someone/infvsr-tiny"

    monkeypatch.setattr(pipeline_module, "create_repo", lambda repo_id, **kwargs: RepoUrl(repo_id))

    def upload(self, folder, repo_id, **kwargs):
        uploads[repo_id] = {str(p.relative_to(folder)): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}

    monkeypatch.setattr(InfVSRPipeline, "_upload_folder", upload)
    saved[1].push_to_hub("infvsr-tiny")
    files = uploads["someone/infvsr-tiny"]
    assert {"model_index.json", "pipeline_infvsr.py", "transformer/transformer_causal_wan.py"} <= files.keys()
    card = ModelCard(files["README.md"].decode())  # parses and checks the metadata block (validate() needs the Hub)
    assert card.data.library_name == "diffusers"
    assert MODEL_CARD_REPO_PLACEHOLDER not in card.text and '"someone/infvsr-tiny"' in card.text

    saved[1].save_pretrained(tmp_path / "pushed", push_to_hub=True, repo_id="infvsr-tiny")
    assert (tmp_path / "pushed" / "README.md").read_text() == files["README.md"].decode()


def test_model_card_snippets_load_by_both_routes(saved, tmp_path):
    card = render_model_card(default_model_card_path(), "someone/infvsr-tiny")
    assert ModelCard(card).data.pipeline_tag == "video-to-video"
    python_blocks = re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL)
    loads = [line.strip() for block in python_blocks for line in block.splitlines() if ".from_pretrained(" in line]
    assert len(loads) == 2
    assert any(line.startswith("pipe = InfVSRPipeline.from_pretrained") for line in loads)
    assert any("DiffusionPipeline.from_pretrained" in line and "trust_remote_code=True" in line for line in loads)

    # Run both loading lines as written (bf16 on CPU), against the repository in an offline Hub cache.
    cache = hub_cache(saved[0], tmp_path)
    script = "\n".join(
        ["import torch", "from diffusers import DiffusionPipeline", "from diffusers_infvsr import InfVSRPipeline"]
        + [line.replace('.to("cuda")', "") for line in loads]
        + ["print(type(pipe).__name__, pipe.transformer.dtype)"]
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "home")}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["InfVSRPipeline", "torch.bfloat16"]


# 4. Low memory: every offload path runs the streaming pipeline with caches and tiles.


def group_offload(offload_type, **kwargs):
    def enable(pipe, tmp):
        pipe.enable_group_offload(
            torch.device("cpu"), offload_type=offload_type, offload_to_disk_path=str(tmp), **kwargs
        )
        # Offloaded to disk, the weights' in-memory storage is a placeholder: poison it, so that a group that is not
        # onloaded before it computes (CPU-only tests cannot see devices) turns the frames into NaN.
        for component in (pipe.transformer, pipe.vae, pipe.image_encoder):
            for parameter in component.parameters():
                parameter.data.fill_(float("nan"))

    return enable


OFFLOADS = {
    "model_cpu_offload": lambda pipe, tmp: pipe.enable_model_cpu_offload(device="cpu"),
    "sequential_cpu_offload": lambda pipe, tmp: pipe.enable_sequential_cpu_offload(device="cpu"),
    "group_offload_block": group_offload("block_level", num_blocks_per_group=1),
    "group_offload_leaf": group_offload("leaf_level"),
}


def tiled_pipeline() -> InfVSRPipeline:
    pipe = make_tiny_pipeline()
    pipe.vae_tile_threshold, pipe.vae_tile_latent_size, pipe.vae_tile_latent_stride = 16, 3, 2  # 2 x 2 tiles
    return pipe


@pytest.fixture(scope="module")
def tiled_reference():
    return tiled_pipeline()(video=lr_video(**WORKER_CLIP), output_type="np").frames


@pytest.mark.parametrize("offload", sorted(OFFLOADS))
def test_offloading_matches_the_plain_run(offload, tiled_reference, tmp_path):
    pipe = tiled_pipeline()
    OFFLOADS[offload](pipe, tmp_path)
    if offload == "sequential_cpu_offload":
        # torch 2.13 copies a Parameter moved to "cpu:0" (the device accelerate's hooks are given) into a plain
        # tensor, which accelerate then fails to offload; on an accelerator the index is real and this is moot.
        for component in (pipe.transformer, pipe.vae, pipe.image_encoder):
            for module in component.modules():
                hook = getattr(module, "_hf_hook", None)
                for align_hook in getattr(hook, "hooks", [hook]):
                    if getattr(align_hook, "execution_device", None) is not None:
                        align_hook.execution_device = torch.device("cpu")
        assert pipe.transformer.proj_out.weight.device.type == "meta"
    frames = pipe(video=lr_video(**WORKER_CLIP), output_type="np").frames
    # The same float32 kernels on the same weights: equal up to rounding in the hooks' copies.
    np.testing.assert_allclose(frames, tiled_reference, rtol=0, atol=1e-6)


def test_fp8_layerwise_casting_stays_close_to_the_plain_run(tiled_reference):
    pipe = tiled_pipeline()
    for component in (pipe.transformer, pipe.vae, pipe.image_encoder):
        component.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert pipe.transformer.blocks[0].ffn.net[2].weight.dtype == torch.float8_e4m3fn
    frames = pipe(video=lr_video(**WORKER_CLIP), output_type="np").frames
    # e4m3 keeps 3 mantissa bits (relative weight error up to 6%): on pixel values in [0, 1] the tiny random model
    # stays within 0.03 on average.
    assert np.abs(frames - tiled_reference).mean() < 0.03
    assert np.abs(frames - tiled_reference).max() > 1e-4  # the casting took effect


# 7. / 9. Settings and their semantics.


def test_vae_enable_tiling_is_honoured_with_the_vaes_tile_settings(tiled_reference):
    pipe = make_tiny_pipeline()
    # 24 / 16 output pixels = 3 / 2 latent pixels: the same tiles as `tiled_pipeline`, asked for through the VAE.
    pipe.vae.enable_tiling(24, 24, 16, 16)
    frames = pipe(video=lr_video(**WORKER_CLIP), output_type="np").frames
    np.testing.assert_array_equal(frames, tiled_reference)
    untiled = make_tiny_pipeline()(video=lr_video(**WORKER_CLIP), output_type="np").frames
    assert np.abs(untiled - tiled_reference).max() > 1e-4


@pytest.mark.parametrize("cache_frames", [1, 3])
def test_the_configured_cache_length_is_used(cache_frames):
    pipe = make_tiny_pipeline()
    pipe.cache_frames = cache_frames
    caches = []
    pipe.transformer.register_forward_hook(
        lambda module, args, kwargs, output: caches.append(output[1]), with_kwargs=True
    )
    frames = pipe(video=lr_video(33, 8, 8, seed=3), output_type="np").frames
    assert [cache.cache_frames for cache in caches] == [cache_frames] * 3
    assert [cache.num_frames for cache in caches] == [cache_frames] * 3
    assert [cache.next_frame for cache in caches] == [3, 6, 9]
    other = make_tiny_pipeline()
    other.cache_frames = 4 - cache_frames
    assert np.abs(other(video=lr_video(33, 8, 8, seed=3), output_type="np").frames[:, 9:] - frames[:, 9:]).max() > 1e-4


def test_a_reference_refresh_keeps_the_kv_cache(tiny_pipeline):
    seen = []

    def record(module, args, kwargs):
        cache = kwargs["kv_cache"]
        seen.append((cache.num_frames, cache.next_frame, args[2].clone()))

    tiny_pipeline.transformer.register_forward_pre_hook(record, with_kwargs=True)
    video = lr_video(33, 8, 8, seed=3)
    video[21:] = lr_video(12, 8, 8, seed=4)
    tiny_pipeline(video=video, reference_refreshes=[21], output_type="np")
    assert [(frames, start) for frames, start, _ in seen] == [(0, 0), (3, 3), (3, 6)]
    assert torch.equal(seen[0][2], seen[1][2]) and not torch.equal(seen[1][2], seen[2][2])


def test_idle_tile_caches_are_parked_in_host_memory(monkeypatch):
    # CPU-only tests cannot see devices, so record the order of events instead: moves of a tile's cache (with the
    # device asked for) and the encoder / decoder calls that use it.
    events = []
    real_move = vae_stream._move_cache

    def spy(cache, device):
        events.append(("move", id(cache), str(device)))
        real_move(cache, device)

    monkeypatch.setattr(vae_stream, "_move_cache", spy)
    pipe = tiled_pipeline()
    for coder in (pipe.vae.encoder, pipe.vae.decoder):
        coder.register_forward_pre_hook(
            lambda module, args, kwargs: events.append(("run", id(kwargs["feat_cache"]), None)), with_kwargs=True
        )
    pipe(video=lr_video(**WORKER_CLIP), output_type="np")

    caches = {cache for _, cache, _ in events}
    assert len(caches) == 8  # 2 x 2 tiles, each with an encoder and a decoder cache
    for cache in caches:
        own = [(kind, device) for kind, moved, device in events if moved == cache]
        pattern = "".join("R" if kind == "run" else "M" for kind, _ in own)
        # Two chunks: each use is bracketed by a move onto the execution device and one back to host memory.
        assert re.fullmatch("(MR+M){2}", pattern), pattern
        assert [device for kind, device in own if kind == "move"][1::2] == ["cpu", "cpu"]
