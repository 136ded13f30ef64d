import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.models.attention_dispatch import _AttentionBackendRegistry

from diffusers_infvsr import CausalWanTransformer3DModel


TINY_TRANSFORMER_CONFIG = {
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "in_channels": 4,
    "out_channels": 4,
    "text_dim": 16,
    "freq_dim": 32,
    "ffn_dim": 32,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 32,
}

TINY_VAE_CONFIG = {
    "base_dim": 8,
    "z_dim": 4,
    "dim_mult": [1, 2, 2, 2],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
    "latents_mean": [0.1, -0.2, 0.3, 0.0],
    "latents_std": [1.5, 0.7, 1.2, 2.0],
}


@pytest.fixture(autouse=True)
def restore_active_attention_backend():
    """diffusers' `set_attention_backend` also sets the process-wide active backend, which every later model without
    a backend of its own then uses: keep one test's choice from changing the numerics of the tests after it."""
    active = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry.set_active_backend(active)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for modules of tiny tensors: avoids OpenMP overhead on small, shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_transformer() -> CausalWanTransformer3DModel:
    torch.manual_seed(0)
    return CausalWanTransformer3DModel(**TINY_TRANSFORMER_CONFIG).eval()


@pytest.fixture
def tiny_vae() -> AutoencoderKLWan:
    torch.manual_seed(0)
    return AutoencoderKLWan(**TINY_VAE_CONFIG).eval()


def smooth_video(frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A (1, 3, frames, height, width) video in [-1, 1] with image-like (spatially smooth) content."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3 * frames, max(2, height // 8), max(2, width // 8), generator=generator) * 2 - 1
    fine = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return fine.view(1, 3, frames, height, width).clamp(-1, 1)


TINY_DAPE_CONFIG = {
    "image_size": 32,
    "patch_size": 4,
    "embed_dim": 8,
    "depths": [2, 2],
    "num_heads": [2, 2],
    "window_size": 4,
    "projection_dim": TINY_TRANSFORMER_CONFIG["text_dim"],
}


def make_tiny_pipeline():
    from diffusers_infvsr import DAPEImageEncoder, InfVSRPipeline, InfVSRScheduler

    torch.manual_seed(0)
    transformer = CausalWanTransformer3DModel(**TINY_TRANSFORMER_CONFIG).eval()
    vae = AutoencoderKLWan(**TINY_VAE_CONFIG).eval()
    image_encoder = DAPEImageEncoder(**TINY_DAPE_CONFIG).eval()
    pipe = InfVSRPipeline(transformer=transformer, vae=vae, image_encoder=image_encoder, scheduler=InfVSRScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A tiny random InfVSR pipeline saved once per test session."""
    path = tmp_path_factory.mktemp("tiny-infvsr")
    make_tiny_pipeline().save_pretrained(path)
    return path


@pytest.fixture
def tiny_pipeline():
    return make_tiny_pipeline()


@pytest.fixture(scope="session")
def tiny_pipe(tiny_pipeline_dir):
    """The tiny pipeline loaded from `tiny_pipeline_dir`, shared by the tests that only run it."""
    from diffusers_infvsr import InfVSRPipeline

    pipe = InfVSRPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def lr_video(frames: int, height: int = 16, width: int = 16, seed: int = 0) -> np.ndarray:
    """(frames, height, width, 3) uint8 low-resolution frames with smooth content."""
    video = (smooth_video(frames, height, width, seed)[0].permute(1, 2, 3, 0) + 1) * 127.5
    return video.round().to(torch.uint8).numpy()


def load_script(relative_path: str):
    """Import a script of the repository (e.g. `benchmarks/bench_pipeline.py`) as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
