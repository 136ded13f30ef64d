import logging

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from diffusers_infvsr.metrics import (
    DISTS,
    LPIPS,
    backward_warp,
    chunk_starts,
    dis_optical_flow,
    pair_warping_error,
    perceptual,
    psnr,
    seam_scores,
    ssim,
    warping_error,
)


def as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None]


def smooth_image(height: int, width: int, seed: int, coarse: int = 12) -> np.ndarray:
    """(height, width, 3) float32 in [0, 1] with image-like, spatially smooth content."""
    noise = np.random.default_rng(seed).random((coarse, coarse, 3)).astype(np.float32)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)


# ----- PSNR / SSIM -----


def test_psnr_known_values():
    black, white = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
    assert psnr(black, torch.full_like(black, 0.1)).item() == pytest.approx(20.0)
    assert psnr(black, white).item() == pytest.approx(0.0)
    # Studio-range luma: black is 16/255 and white 235/255, so the Y-channel PSNR is -20 log10(219 / 255).
    assert psnr(black, white, y_channel=True).item() == pytest.approx(-20 * np.log10(219 / 255))
    # Only the (cropped) border differs.
    noisy = black.clone()
    noisy[..., 0, :] = 1
    assert psnr(black, noisy, crop_border=1).item() == float("inf")


def test_psnr_matches_scikit_image():
    rng = np.random.default_rng(0)
    a = rng.random((20, 24, 3))
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    assert psnr(as_tensor(a), as_tensor(b)).item() == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1), 1e-10)


@pytest.mark.parametrize("crop_border", [0, 4])
def test_ssim_matches_scikit_image_on_rgb_and_luma(crop_border):
    rng = np.random.default_rng(1)
    a = smooth_image(48, 40, seed=2, coarse=16).astype(np.float64)
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    options = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 1}
    crop = (slice(crop_border, a.shape[0] - crop_border), slice(crop_border, a.shape[1] - crop_border))

    expected_rgb = structural_similarity(a[crop], b[crop], channel_axis=2, **options)
    assert ssim(as_tensor(a), as_tensor(b), crop_border).item() == pytest.approx(expected_rgb, abs=1e-10)
    # scikit-image's own BT.601 conversion, independent of `rgb_to_y`.
    luma_a, luma_b = rgb2ycbcr(a)[..., 0] / 255, rgb2ycbcr(b)[..., 0] / 255
    expected_y = structural_similarity(luma_a[crop], luma_b[crop], **options)
    assert ssim(as_tensor(a), as_tensor(b), crop_border, y_channel=True).item() == pytest.approx(expected_y, abs=1e-10)
    assert ssim(as_tensor(a), as_tensor(a)).item() == pytest.approx(1.0)


# ----- DISTS -----

VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
VGG16_L2_POOLS_AFTER = [2, 7, 14, 21]  # convs followed by ReLU then L2 pooling
VGG16_STAGE_ENDS = [2, 7, 14, 21, 28]  # relu1_2 ... relu5_3


def reference_dists(weights: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DISTS written from the paper: VGG16 with Hann-window L2 pooling, global texture and structure terms."""
    hann = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16

    def stages(image):
        h = (image - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
            1, 3, 1, 1
        )
        outputs = [image]
        for index in VGG16_CONVS:
            h = F.relu(F.conv2d(h, weights[f"features.{index}.weight"], weights[f"features.{index}.bias"], padding=1))
            if index in VGG16_STAGE_ENDS:
                outputs.append(h)
            if index in VGG16_L2_POOLS_AFTER:
                kernel = hann.expand(h.shape[1], 1, 3, 3)
                h = torch.sqrt(F.conv2d(h**2, kernel, stride=2, padding=1, groups=h.shape[1]) + 1e-12)
        return outputs

    alpha, beta = weights["alpha"].flatten(), weights["beta"].flatten()
    alpha, beta = alpha / (alpha.sum() + beta.sum()), beta / (alpha.sum() + beta.sum())
    texture, structure = [], []
    for fx, fy in zip(stages(x), stages(y)):
        fx, fy = fx.flatten(2), fy.flatten(2)  # (N, C, pixels)
        mx, my = fx.mean(-1), fy.mean(-1)
        vx, vy = fx.var(-1, unbiased=False), fy.var(-1, unbiased=False)
        cov = ((fx - mx[..., None]) * (fy - my[..., None])).mean(-1)
        texture.append((2 * mx * my + 1e-6) / (mx**2 + my**2 + 1e-6))
        structure.append((2 * cov + 1e-6) / (vx + vy + 1e-6))
    return 1 - (torch.cat(texture, 1) * alpha + torch.cat(structure, 1) * beta).sum(1)


@pytest.fixture
def no_local_weights(tmp_path, monkeypatch):
    """No torch hub cache and no installed weight packages: only explicitly given files exist."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(perceptual, "_package_file", lambda *parts: None)
    monkeypatch.setattr(perceptual.sys, "prefix", str(tmp_path / "prefix"))
    return tmp_path


def save_torchvision_vgg16(path, seed=0):
    """A file laid out like torchvision's vgg16 state dict (features and classifier), with random values."""
    torch.manual_seed(seed)
    state_dict = {key: value.clone() for key, value in perceptual.vgg16_features("max").state_dict().items()}
    state_dict = {f"features.{key}": value for key, value in state_dict.items()}
    state_dict.update({"classifier.0.weight": torch.randn(8, 8), "classifier.0.bias": torch.randn(8)})
    torch.save(state_dict, path)
    return state_dict


def test_dists_matches_reference_implementation():
    torch.manual_seed(0)
    model = DISTS()
    x, y = torch.rand(2, 3, 48, 40), torch.rand(2, 3, 48, 40)
    expected = reference_dists(model.state_dict(), x, y)
    torch.testing.assert_close(model(x, y), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model(x, y, batch_average=True), expected.mean(), rtol=1e-4, atol=1e-5)


def test_dists_properties_and_gradients():
    torch.manual_seed(0)
    model = DISTS()
    assert all(not parameter.requires_grad for parameter in model.parameters())
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    assert model(x, x).abs().max() < 1e-5  # D(x, x) = 0 up to the stabilising constants
    torch.testing.assert_close(model(x, y), model(y, x), rtol=1e-5, atol=1e-6)  # the formula is symmetric
    assert (model(x, y) > 1e-3).all()
    x.requires_grad_(True)
    model(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


def test_dists_loads_torchvision_vgg16_and_alpha_beta(no_local_weights):
    vgg = save_torchvision_vgg16(no_local_weights / "vgg16.pth")
    alpha, beta = torch.rand(1, 1475, 1, 1), torch.rand(1, 1475, 1, 1)
    torch.save({"alpha": alpha, "beta": beta}, no_local_weights / "dists.pt")
    model = DISTS.from_pretrained(no_local_weights / "vgg16.pth", no_local_weights / "dists.pt")
    torch.testing.assert_close(model.features[28].weight, vgg["features.28.weight"])
    torch.testing.assert_close(model.alpha, alpha)
    torch.testing.assert_close(model.beta, beta)
    assert not model.training and not model.alpha.requires_grad


def test_dists_missing_weights(no_local_weights, caplog):
    torch.save({"alpha": torch.rand(1, 1475, 1, 1), "beta": torch.rand(1, 1475, 1, 1)}, no_local_weights / "d.pt")
    with pytest.raises(FileNotFoundError, match="VGG16") as error:
        DISTS.from_pretrained(dists_weights=no_local_weights / "d.pt")
    assert "vgg16-397923af.pth" in str(error.value) and "vgg16_weights" in str(error.value)
    save_torchvision_vgg16(no_local_weights / "v.pth")
    with pytest.raises(FileNotFoundError, match="alpha/beta") as error:
        DISTS.from_pretrained(vgg16_weights=no_local_weights / "v.pth")
    assert "DISTS_pytorch" in str(error.value) and "dists_weights" in str(error.value)
    # A path that is given but missing always raises, even when untrained weights are allowed.
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        DISTS.from_pretrained(vgg16_weights=no_local_weights / "missing.pth", allow_untrained=True)
    with caplog.at_level(logging.WARNING):
        model = DISTS.from_pretrained(allow_untrained=True)
    assert "RANDOM weights" in caplog.text and isinstance(model, DISTS)


def test_dists_rejects_wrong_weight_files(no_local_weights):
    save_torchvision_vgg16(no_local_weights / "v.pth")
    for bad in ({"weights": torch.zeros(3)}, {"alpha": torch.zeros(1475), "beta": torch.zeros(1475)}):
        torch.save(bad, no_local_weights / "bad.pt")
        with pytest.raises(ValueError, match="not a DISTS alpha/beta file"):
            DISTS.from_pretrained(no_local_weights / "v.pth", no_local_weights / "bad.pt")
    # The VGG16 features load strictly: a missing tensor is an error, not a silently random layer.
    vgg = torch.load(no_local_weights / "v.pth")
    del vgg["features.28.bias"]
    torch.save(vgg, no_local_weights / "v.pth")
    torch.save({"alpha": torch.rand(1, 1475, 1, 1), "beta": torch.rand(1, 1475, 1, 1)}, no_local_weights / "d.pt")
    with pytest.raises(RuntimeError, match="features.28.bias|28.bias"):
        DISTS.from_pretrained(no_local_weights / "v.pth", no_local_weights / "d.pt")


def test_official_alpha_beta_if_installed():
    path = perceptual._package_file("DISTS_pytorch", "weights.pt")
    if path is None:
        pytest.skip("DISTS_pytorch is not installed")
    weights = torch.load(path, map_location="cpu", weights_only=True)
    assert weights["alpha"].shape == weights["beta"].shape == (1, sum(DISTS.channels), 1, 1)
    assert (weights["alpha"].sum() + weights["beta"].sum()).item() == pytest.approx(1.0, abs=1e-4)


# ----- LPIPS -----


def reference_lpips(model: LPIPS, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS from the paper: scaled inputs, unit-normalised features, 1x1 weights on squared differences."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    total = 0
    hx, hy = (2 * x - 1 - shift) / scale, (2 * y - 1 - shift) / scale
    tap = 0
    for index, layer in enumerate(model.features):
        hx, hy = layer(hx), layer(hy)
        if index in model.taps:
            nx = hx / hx.pow(2).sum(1, keepdim=True).sqrt().add(1e-10)
            ny = hy / hy.pow(2).sum(1, keepdim=True).sqrt().add(1e-10)
            weight = model.linear_layers[tap].weight.flatten()
            total = total + ((nx - ny) ** 2 * weight.view(1, -1, 1, 1)).sum(1).mean((1, 2))
            tap += 1
    return total


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_reference_and_loads_official_layout(net, no_local_weights):
    torch.manual_seed(0)
    source = LPIPS(net)
    for layer in source.linear_layers:
        layer.weight.data.uniform_(0, 1)
    backbone = {f"features.{key}": value for key, value in source.features.state_dict().items()}
    backbone["classifier.1.weight"] = torch.zeros(2, 2)
    torch.save(backbone, no_local_weights / "backbone.pth")
    linear = {f"lin{k}.model.1.weight": layer.weight.detach().clone() for k, layer in enumerate(source.linear_layers)}
    torch.save(linear, no_local_weights / "lin.pth")
    model = LPIPS.from_pretrained(net, no_local_weights / "backbone.pth", no_local_weights / "lin.pth")

    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(model(x, y), reference_lpips(source, x, y), rtol=1e-4, atol=1e-6)
    assert model(x, x).abs().max() == 0
    with pytest.raises(FileNotFoundError, match="backbone"):
        LPIPS.from_pretrained(net, lpips_weights=no_local_weights / "lin.pth")


# ----- temporal consistency -----


def warped_video(num_frames: int = 8, size: int = 96, speed: float = 1.0) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames made by warping one image again and again with a known smooth flow: frame[t + 1](p) = frame[t](p + flow)."""
    grid_y, grid_x = np.mgrid[0:size, 0:size].astype(np.float32)
    flow = speed * np.stack([1.5 + 0.8 * np.sin(grid_y / 15), 0.7 * np.cos(grid_x / 20)], -1).astype(np.float32)
    frames = [smooth_image(size, size, seed=0)]
    for _ in range(num_frames - 1):
        frames.append(backward_warp(frames[-1], flow)[0])
    return frames, flow


def test_dis_flow_recovers_a_known_flow():
    frames, flow = warped_video(num_frames=2)
    estimate = dis_optical_flow(frames[1], frames[0])  # frames[1](p) = frames[0](p + flow(p))
    endpoint_error = np.linalg.norm(estimate - flow, axis=-1)[8:-8, 8:-8]
    assert np.median(endpoint_error) < 0.2


def test_warping_error_is_near_zero_for_a_warped_video_and_large_for_shuffled_frames():
    frames, _ = warped_video()
    consistent = warping_error(frames)
    shuffled = warping_error([frames[i] for i in (3, 0, 6, 1, 5, 2, 7, 4)])
    noisy = warping_error(
        [f + np.random.default_rng(i).normal(0, 0.02, f.shape).astype(np.float32) for i, f in enumerate(frames)]
    )
    assert 1000 * consistent < 0.3  # E*warp (x 1e-3)
    assert shuffled > 5 * consistent and noisy > 5 * consistent


def test_warping_error_formula_on_a_static_scene():
    # Flow on identical frames is zero: the error is the per-pixel squared RGB difference summed over channels.
    frame = smooth_image(32, 32, seed=3)
    brighter = np.clip(frame + 0.1, 0, 1)
    expected = ((brighter - frame) ** 2).sum(-1).mean()
    assert pair_warping_error(frame, brighter, flow_frame=frame, flow_next_frame=frame) == pytest.approx(
        expected, rel=1e-4
    )
    assert warping_error([frame, frame, frame]) == 0


def test_chunk_starts_follow_the_pipeline_chunking():
    assert chunk_starts(9) == []
    assert chunk_starts(10) == [9]
    assert chunk_starts(45) == [9, 21, 33]


def test_seam_score_detects_an_injected_seam():
    frames, _ = warped_video(num_frames=45, size=48, speed=0.3)
    boundaries = chunk_starts(len(frames))

    def differences(video):
        return [float(np.abs(a - b).mean()) for a, b in zip(video, video[1:])]

    clean = seam_scores(differences(frames), boundaries)
    # Every other chunk is 6% brighter: a jump at each boundary, nothing inside the chunks.
    edges = [0, *boundaries, len(frames)]
    seamed = [f + 0.06 * (np.searchsorted(edges, t, side="right") % 2) for t, f in enumerate(frames)]
    result = seam_scores(differences(seamed), boundaries)

    assert 0.7 < clean["seam_score"] < 1.3
    assert all(0.7 < entry["ratio"] < 1.3 for entry in clean["boundaries"])
    assert result["seam_score"] > 2
    assert [entry["frame"] for entry in result["boundaries"]] == [9, 21, 33]
    assert all(entry["ratio"] > 1.5 for entry in result["boundaries"]), result["boundaries"]
    # Motion-compensated, the warping error separates the seam from the motion even more clearly.
    warp_errors = [pair_warping_error(a, b) for a, b in zip(seamed, seamed[1:])]
    assert seam_scores(warp_errors, boundaries)["seam_score"] > 5
    with pytest.raises(ValueError, match="no chunk boundary"):
        seam_scores([0.1] * 5, [])
