import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_DAPE_CONFIG, TINY_TRANSFORMER_CONFIG, lr_video
from original_layouts import (
    original_dape_lora_state_dict,
    original_ram_state_dict,
    original_wan_dit_state_dict,
    original_wan_vae_state_dict,
)
from remote_code_worker import WORKER_CLIP, run_without_package
from safetensors.torch import load_file

from diffusers_infvsr import InfVSRPipeline, convert


VAE_CONFIG = {"base_dim": 4, "z_dim": 4, "latents_mean": [0.0] * 4, "latents_std": [1.0] * 4}


@pytest.fixture(scope="module")
def release_files(tmp_path_factory):
    """The four released files, tiny, in their original layouts, plus a config for their sizes."""
    folder = tmp_path_factory.mktemp("release")
    torch.save(original_wan_dit_state_dict(TINY_TRANSFORMER_CONFIG), folder / "InfVSR.ckpt")
    torch.save(original_wan_vae_state_dict(base_dim=4, z_dim=4), folder / "Wan2.1_VAE.pth")
    torch.save({"model": original_ram_state_dict(TINY_DAPE_CONFIG)}, folder / "ram_swin_large_14m.pth")
    torch.save(original_dape_lora_state_dict(TINY_DAPE_CONFIG), folder / "DAPE.pth")
    config = {"transformer": TINY_TRANSFORMER_CONFIG, "vae": VAE_CONFIG, "image_encoder": TINY_DAPE_CONFIG}
    (folder / "sizes.json").write_text(json.dumps(config))
    return folder


def command(release_files, output_dir, *extra):
    return [
        *("--dit", str(release_files / "InfVSR.ckpt"), "--vae", str(release_files / "Wan2.1_VAE.pth")),
        *("--ram", str(release_files / "ram_swin_large_14m.pth"), "--dape", str(release_files / "DAPE.pth")),
        *("--output_dir", str(output_dir), "--config", str(release_files / "sizes.json"), *extra),
    ]


def test_convert_command_writes_a_loadable_pipeline_folder(release_files, tmp_path):
    output_dir = tmp_path / "InfVSR-diffusers"
    result = subprocess.run(
        [sys.executable, "-m", "diffusers_infvsr.convert", *command(release_files, output_dir)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr

    names = {path.name for path in output_dir.iterdir()}
    assert {"model_index.json", "README.md", "transformer", "vae", "image_encoder", "scheduler"} <= names
    assert list(output_dir.glob("*/diffusion_pytorch_model.safetensors"))
    assert (output_dir / "README.md").read_text().startswith("---\nlibrary_name: diffusers")
    assert not list(tmp_path.glob(".*partial*"))

    pipe = InfVSRPipeline.from_pretrained(output_dir)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(video=lr_video(5, 8, 8), output_type="np").frames
    assert frames.shape == (1, 5, 32, 32, 3) and np.isfinite(frames).all()
    original = original_wan_dit_state_dict(TINY_TRANSFORMER_CONFIG)
    assert torch.equal(pipe.transformer.blocks[1].attn1.to_q.weight, original["blocks.1.self_attn.q.weight"])

    # The converted folder carries the remote code: diffusers alone loads it and produces the same frames.
    expected = pipe(video=lr_video(**WORKER_CLIP), output_type="np").frames
    without_package, _ = run_without_package(output_dir, tmp_path / "diffusers-only")
    np.testing.assert_allclose(without_package, expected, rtol=0, atol=1e-5)
    # With no repository given, the model card's snippets load the output folder.
    assert f'InfVSRPipeline.from_pretrained("{output_dir}"' in (output_dir / "README.md").read_text()


def test_convert_command_in_bf16_and_push_to_hub(release_files, tmp_path, monkeypatch):
    uploads = []
    monkeypatch.setattr(convert, "create_repo", lambda repo_id, **kwargs: uploads.append(("create", repo_id)))
    monkeypatch.setattr(convert, "upload_folder", lambda **kwargs: uploads.append(("upload", kwargs["repo_id"])))
    output_dir = tmp_path / "bf16"
    assert convert.main(command(release_files, output_dir, "--dtype", "bf16", "--push_to_hub", "me/infvsr")) == 0
    assert uploads == [("create", "me/infvsr"), ("upload", "me/infvsr")]
    card = (output_dir / "README.md").read_text()
    assert 'InfVSRPipeline.from_pretrained("me/infvsr"' in card and "<this repository>" not in card
    assert 'DiffusionPipeline.from_pretrained("me/infvsr", trust_remote_code=True' in card
    for component in ("transformer", "vae", "image_encoder"):
        weights = load_file(output_dir / component / "diffusion_pytorch_model.safetensors")
        assert {tensor.dtype for tensor in weights.values()} == {torch.bfloat16}, component


def test_convert_command_refuses_bad_files_and_keeps_outputs(release_files, tmp_path, capsys):
    wrong = tmp_path / "wrong.ckpt"
    dit = original_wan_dit_state_dict(TINY_TRANSFORMER_CONFIG)
    dit["blocks.0.ffn.0.weight"] = dit["blocks.0.ffn.0.weight"][:, :-1]
    torch.save(dit, wrong)
    output_dir = tmp_path / "out"
    arguments = command(release_files, output_dir)
    arguments[arguments.index("--dit") + 1] = str(wrong)
    assert convert.main(arguments) == 1
    assert "blocks.0.ffn.net.0.proj.weight" in capsys.readouterr().err
    assert not output_dir.exists() and not list(tmp_path.glob(".*partial*"))

    arguments[arguments.index("--dit") + 1] = str(tmp_path / "missing.ckpt")
    assert convert.main(arguments) == 1
    assert "missing.ckpt" in capsys.readouterr().err

    output_dir.mkdir()
    (output_dir / "keep.txt").write_text("mine")
    assert convert.main(command(release_files, output_dir)) == 1
    assert "not empty" in capsys.readouterr().err
    assert (output_dir / "keep.txt").read_text() == "mine"
