import pytest
import torch
import torch.nn.functional as F
from original_layouts import original_dape_lora_state_dict, original_ram_state_dict
from reference_swin import lora_qkv, reference_dape_forward

from diffusers_infvsr.conversion import (
    convert_ram_dape_to_diffusers,
    load_original_checkpoint,
    merge_dape_lora,
    ram_key_shapes,
)
from diffusers_infvsr.models.image_encoder_dape import DAPEImageEncoder


# Both tiny configurations exercise shifted windows with masks (stages 0 and 1, several windows each), two patch
# mergings, and a last stage whose resolution equals the window (one window, shift forced to 0 as in the release).
# 64 / 4 = 16 -> 8 -> 4 with window 4 (shift 2); 48 / 4 = 12 -> 6 -> 3 with window 3 (shift 1).
TINY_CONFIGS = {
    "window4": {
        "image_size": 64,
        "patch_size": 4,
        "embed_dim": 8,
        "depths": (2, 3, 2),
        "num_heads": (2, 4, 8),
        "window_size": 4,
        "projection_dim": 24,
    },
    "window3": {
        "image_size": 48,
        "patch_size": 4,
        "embed_dim": 12,
        "depths": (2, 2, 2),
        "num_heads": (2, 4, 8),
        "window_size": 3,
        "projection_dim": 20,
    },
}
# fp32 model against the float64 reference; the measured maximum error is ~1e-6 on outputs of size ~1.
TOLERANCE = 1e-5
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def converted_encoder(config: dict, with_lora: bool = True) -> DAPEImageEncoder:
    ram, dape = original_ram_state_dict(config), original_dape_lora_state_dict(config)
    encoder = DAPEImageEncoder(**config).eval()
    state_dict = convert_ram_dape_to_diffusers(ram, dape if with_lora else None, config)
    encoder.load_state_dict(state_dict, strict=True)
    return encoder


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_converted_encoder_matches_reference_swin(name):
    config = TINY_CONFIGS[name]
    ram, dape = original_ram_state_dict(config), original_dape_lora_state_dict(config)
    encoder = converted_encoder(config)
    pixel_values = torch.randn(
        2, 3, config["image_size"], config["image_size"], generator=torch.Generator().manual_seed(3)
    )

    with torch.no_grad():
        output = encoder(pixel_values)
    expected = reference_dape_forward(pixel_values, ram, dape, config, scale=1 / 8)
    without_lora = reference_dape_forward(pixel_values, ram, None, config)

    side = config["image_size"] // config["patch_size"] // 4
    assert output.shape == (2, 1 + side * side, config["projection_dim"])
    assert output.dtype == torch.float32
    torch.testing.assert_close(output.double(), expected, atol=TOLERANCE, rtol=TOLERANCE)
    # The LoRA is not negligible in this test, so applying it to the wrong rows or with the wrong scale would fail.
    assert (expected - without_lora).abs().max() > 1e-2
    # The batch elements are independent.
    with torch.no_grad():
        torch.testing.assert_close(encoder(pixel_values[1:]), output[1:], atol=1e-6, rtol=1e-6)


def test_converted_encoder_without_lora_matches_reference():
    config = TINY_CONFIGS["window4"]
    ram = original_ram_state_dict(config)
    encoder = converted_encoder(config, with_lora=False)
    pixel_values = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        output = encoder(pixel_values)
    torch.testing.assert_close(
        output.double(), reference_dape_forward(pixel_values, ram, None, config), atol=TOLERANCE, rtol=TOLERANCE
    )


def test_lora_merge_equals_low_rank_path_and_keeps_k():
    generator = torch.Generator().manual_seed(0)
    dim, rank, scale = 16, 8, 1 / 8
    weight = torch.randn(3 * dim, dim, generator=generator)
    lora_A = torch.randn(2 * rank, dim, generator=generator)
    lora_B = torch.randn(2 * dim, rank, generator=generator)
    x = torch.randn(5, 7, dim, generator=generator, dtype=torch.float64)

    merged = merge_dape_lora(weight, lora_A, lora_B, scale)

    # x W'^T == x W^T + scale * x A^T B^T on the Q and V rows (explicit low-rank path, float64).
    expected = lora_qkv(
        x, weight.double(), torch.zeros(3 * dim, dtype=torch.float64), lora_A.double(), lora_B.double(), scale
    )
    torch.testing.assert_close(x @ merged.double().t(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged[:dim], weight[:dim] + scale * lora_B[:dim] @ lora_A[:rank])
    torch.testing.assert_close(merged[2 * dim :], weight[2 * dim :] + scale * lora_B[dim:] @ lora_A[rank:])
    assert torch.equal(merged[dim : 2 * dim], weight[dim : 2 * dim])
    assert merged.dtype == weight.dtype
    assert merge_dape_lora(weight.bfloat16(), lora_A, lora_B, scale).dtype == torch.bfloat16


def test_conversion_splits_qkv_keeps_k_and_biases():
    config = TINY_CONFIGS["window4"]
    ram, dape = original_ram_state_dict(config), original_dape_lora_state_dict(config)
    converted = convert_ram_dape_to_diffusers(ram, dape, config)
    for stage, depth in enumerate(config["depths"]):
        dim = config["embed_dim"] * 2**stage
        for block in range(depth):
            source = ram[f"visual_encoder.layers.{stage}.blocks.{block}.attn.qkv.weight"]
            bias = ram[f"visual_encoder.layers.{stage}.blocks.{block}.attn.qkv.bias"]
            target = f"swin.encoder.layers.{stage}.blocks.{block}.attention."
            assert torch.equal(converted[target + "k_proj.weight"], source[dim : 2 * dim])
            assert not torch.equal(converted[target + "q_proj.weight"], source[:dim])
            assert not torch.equal(converted[target + "v_proj.weight"], source[2 * dim :])
            for index, name in enumerate(("q_proj", "k_proj", "v_proj")):
                assert torch.equal(converted[target + name + ".bias"], bias[index * dim : (index + 1) * dim])
    # Conversion does not modify its inputs.
    assert torch.equal(
        ram["visual_encoder.layers.0.blocks.0.attn.qkv.weight"],
        original_ram_state_dict(config)["visual_encoder.layers.0.blocks.0.attn.qkv.weight"],
    )


def test_default_config_is_swin_large_384_with_145_tokens():
    with torch.device("meta"):
        encoder = DAPEImageEncoder()
        output = encoder(torch.empty(1, 3, 384, 384))
    assert output.shape == (1, 145, 512)
    assert encoder.num_tokens == 145
    assert encoder.proj.weight.shape == (512, 1536)
    assert encoder.swin.embeddings.patch_embeddings.projection.weight.shape == (192, 3, 4, 4)
    assert [len(layer.blocks) for layer in encoder.swin.encoder.layers] == [2, 2, 18, 2]

    # The conversion of a (meta) checkpoint with the real Swin-L shapes gives exactly the model's keys and shapes.
    ram = {key: torch.empty(shape, device="meta") for key, shape in ram_key_shapes().items()}
    assert len(ram) == 4 + 24 * 13 + 3 * 3 + 2 + 2
    dape = {}
    for stage, depth in enumerate((2, 2, 18, 2)):
        dim = 192 * 2**stage
        for block in range(depth):
            dape[f"visual_encoder.layers.{stage}.blocks.{block}.attn.qkv.lora_A"] = torch.empty(16, dim, device="meta")
            dape[f"visual_encoder.layers.{stage}.blocks.{block}.attn.qkv.lora_B"] = torch.empty(
                2 * dim, 8, device="meta"
            )
    converted = convert_ram_dape_to_diffusers(ram, dape, encoder.config)
    expected = {key: tuple(value.shape) for key, value in encoder.state_dict().items()}
    assert {key: tuple(value.shape) for key, value in converted.items()} == expected


def test_tiny_output_shape():
    encoder = DAPEImageEncoder(**TINY_CONFIGS["window3"])
    assert encoder.num_tokens == 1 + 3 * 3
    with torch.no_grad():
        assert encoder(torch.zeros(3, 3, 48, 48)).shape == (3, 10, 20)


def bilinear_antialias_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """(out, in) resampling matrix of a triangle filter widened by the downscale factor (PIL-style antialias)."""
    scale = in_size / out_size
    support = max(scale, 1.0)
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        for j in range(in_size):
            matrix[i, j] = max(0.0, 1.0 - abs(j + 0.5 - center) / support)
        matrix[i] /= matrix[i].sum()
    return matrix


@pytest.mark.parametrize("size", [(100, 150), (30, 41), (64, 64)])
def test_preprocess_resizes_antialiased_and_normalizes(size):
    encoder = DAPEImageEncoder(**TINY_CONFIGS["window4"])
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    pixel_values = encoder.preprocess(images)
    assert pixel_values.shape == (2, 3, 64, 64) and pixel_values.dtype == torch.float32

    # What torchvision's tensor Resize((64, 64), BILINEAR) computes for float tensors (antialias=True).
    resized = F.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(pixel_values, (resized - MEAN) / STD, atol=0, rtol=0)
    # An independent separable triangle-filter resampling gives the same image.
    rows, cols = bilinear_antialias_matrix(size[0], 64), bilinear_antialias_matrix(size[1], 64)
    independent = rows @ images.double() @ cols.t()
    torch.testing.assert_close(pixel_values.double(), (independent - MEAN.double()) / STD.double(), atol=2e-5, rtol=0)
    if size[0] > 64:
        plain = F.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False, antialias=False)
        assert ((plain - MEAN) / STD - pixel_values).abs().max() > 1e-2


def test_preprocess_constant_image_is_normalized_constant():
    encoder = DAPEImageEncoder(**TINY_CONFIGS["window4"])
    color = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64).view(1, 3, 1, 1)
    pixel_values = encoder.preprocess(color.expand(1, 3, 37, 90))
    assert pixel_values.dtype == torch.float32
    expected = ((color.float() - MEAN) / STD).expand(1, 3, 64, 64)
    torch.testing.assert_close(pixel_values, expected, atol=1e-6, rtol=0)


def test_encode_reference_is_preprocess_then_forward_in_model_dtype():
    config = TINY_CONFIGS["window4"]
    encoder = converted_encoder(config)
    frames = torch.rand(2, 3, 50, 70, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        output = encoder.encode_reference(frames)
        torch.testing.assert_close(output, encoder(encoder.preprocess(frames)), atol=0, rtol=0)
        assert output.dtype == torch.float32
        encoder.to(torch.bfloat16)
        output_bf16 = encoder.encode_reference(frames)
    assert output_bf16.dtype == torch.bfloat16 and output_bf16.shape == output.shape
    torch.testing.assert_close(output_bf16.float(), output, atol=0.1, rtol=0.1)


def test_bad_inputs_raise_value_errors():
    encoder = DAPEImageEncoder(**TINY_CONFIGS["window4"])
    with pytest.raises(ValueError, match=r"must have shape \(batch, 3, height, width\), got \(3, 64, 64\)"):
        encoder.preprocess(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match=r"got \(1, 4, 64, 64\)"):
        encoder.preprocess(torch.rand(1, 4, 64, 64))
    with pytest.raises(ValueError, match="float tensor"):
        encoder.preprocess(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="torch.Tensor"):
        encoder.preprocess([[0.0]])
    with pytest.raises(ValueError, match=r"must have shape \(batch, 3, 64, 64\)"):
        encoder(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match=r"must have shape \(batch, 3, 64, 64\)"):
        encoder(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"must be 64 x 64 .* got \(32, 32\)"):
        encoder(torch.zeros(1, 3, 32, 32))


def test_bad_configs_raise_value_errors():
    config = dict(TINY_CONFIGS["window4"])
    with pytest.raises(ValueError, match="equal length"):
        DAPEImageEncoder(**{**config, "num_heads": (2, 4)})
    with pytest.raises(ValueError, match="not a multiple of `window_size`"):
        DAPEImageEncoder(**{**config, "window_size": 5})
    with pytest.raises(ValueError, match="not a multiple of `window_size`"):
        DAPEImageEncoder(**{**config, "window_size": 8})  # the last stage (4 x 4) would be smaller than the window
    with pytest.raises(ValueError, match="not divisible by its 3 heads"):
        DAPEImageEncoder(**{**config, "num_heads": (3, 4, 8)})
    with pytest.raises(ValueError, match="multiple of `patch_size`"):
        DAPEImageEncoder(**{**config, "image_size": 66})


@pytest.mark.parametrize(
    "checkpoint, edit, message",
    [
        (
            "ram",
            lambda sd: sd.pop("visual_encoder.layers.1.blocks.2.mlp.fc2.bias"),
            r"RAM checkpoint is missing 'visual_encoder\.layers\.1\.blocks\.2\.mlp\.fc2\.bias' \(expected shape \(16,\)\)",
        ),
        (
            "ram",
            lambda sd: sd.__setitem__("visual_encoder.absolute_pos_embed", torch.zeros(1, 256, 8)),
            r"RAM checkpoint has an unexpected key 'visual_encoder\.absolute_pos_embed'",
        ),
        (
            "ram",
            lambda sd: sd.__setitem__("visual_encoder.layers.2.blocks.0.attn.qkv.weight", torch.zeros(32, 96)),
            r"RAM checkpoint's 'visual_encoder\.layers\.2\.blocks\.0\.attn\.qkv\.weight' has shape \(32, 96\), expected \(96, 32\)",
        ),
        (
            "ram",
            lambda sd: sd.__setitem__("image_proj.weight", torch.zeros(32, 24)),
            r"'image_proj\.weight' has shape \(32, 24\), expected \(24, 32\)",
        ),
        (
            "dape",
            lambda sd: sd.pop("visual_encoder.layers.2.blocks.1.attn.qkv.lora_B"),
            r"DAPE checkpoint is missing 'visual_encoder\.layers\.2\.blocks\.1\.attn\.qkv\.lora_B' \(expected shape \(64, 8\)\)",
        ),
        (
            "dape",
            lambda sd: sd.__setitem__("visual_encoder.layers.0.blocks.0.attn.proj.lora_A", torch.zeros(8, 8)),
            r"DAPE checkpoint has an unexpected key 'visual_encoder\.layers\.0\.blocks\.0\.attn\.proj\.lora_A'",
        ),
        (
            "dape",
            lambda sd: sd.__setitem__("visual_encoder.layers.0.blocks.1.attn.qkv.lora_A", torch.zeros(8, 8)),
            r"'visual_encoder\.layers\.0\.blocks\.1\.attn\.qkv\.lora_A' has shape \(8, 8\), expected \(16, 8\)",
        ),
    ],
)
def test_conversion_refuses_bad_checkpoints(checkpoint, edit, message):
    config = TINY_CONFIGS["window4"]
    checkpoints = {"ram": original_ram_state_dict(config), "dape": original_dape_lora_state_dict(config)}
    edit(checkpoints[checkpoint])
    with pytest.raises(ValueError, match=message):
        convert_ram_dape_to_diffusers(checkpoints["ram"], checkpoints["dape"], config)


def test_conversion_refuses_a_checkpoint_of_another_config():
    ram = original_ram_state_dict(TINY_CONFIGS["window3"])
    with pytest.raises(ValueError, match=r"RAM checkpoint .*window_size=4"):
        convert_ram_dape_to_diffusers(ram, None, TINY_CONFIGS["window4"])
    with pytest.raises(ValueError, match="Unknown `DAPEImageEncoder` config entry 'hidden_size'"):
        convert_ram_dape_to_diffusers(ram, None, {**TINY_CONFIGS["window3"], "hidden_size": 3})


def test_load_original_checkpoint_unwraps_model(tmp_path):
    config = TINY_CONFIGS["window3"]
    ram, dape = original_ram_state_dict(config), original_dape_lora_state_dict(config)
    torch.save({"model": ram, "epoch": 3}, tmp_path / "ram.pth")
    torch.save(dape, tmp_path / "dape.pth")
    loaded_ram, loaded_dape = (
        load_original_checkpoint(tmp_path / "ram.pth"),
        load_original_checkpoint(tmp_path / "dape.pth"),
    )
    assert loaded_ram.keys() == ram.keys() and loaded_dape.keys() == dape.keys()
    assert all(torch.equal(loaded_ram[key], ram[key]) for key in ram)
    encoder = DAPEImageEncoder(**config)
    encoder.load_state_dict(convert_ram_dape_to_diffusers(loaded_ram, loaded_dape, encoder.config), strict=True)


def test_save_pretrained_round_trip(tmp_path):
    config = TINY_CONFIGS["window4"]
    encoder = converted_encoder(config)
    encoder.save_pretrained(tmp_path / "image_encoder")
    loaded = DAPEImageEncoder.from_pretrained(tmp_path / "image_encoder")
    assert not loaded.training
    for key, value in config.items():
        assert loaded.config[key] == (list(value) if isinstance(value, tuple) else value), key
    pixel_values = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values), encoder(pixel_values))
    for key, value in encoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
