# Copyright 2026 The diffusers-infvsr authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
Deep perceptual distances in plain torch: DISTS (Ding et al. 2020) and LPIPS v0.1 (Zhang et al. 2018).

The backbones are written with torchvision's state-dict names (`features.0.weight`, ...), so torchvision's VGG16 /
AlexNet files load strictly without importing torchvision. Weight files are looked up locally and never downloaded.
"""

import importlib.util
import logging
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn


logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VGG16_FILE = "vgg16-397923af.pth"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
_VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"
_ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_FILE}"

# Indices of the ReLU outputs used by DISTS and LPIPS in torchvision's `vgg16().features` (relu1_2 ... relu5_3) and
# `alexnet().features` (relu1 ... relu5).
VGG16_TAPS = (3, 8, 15, 22, 29)
ALEXNET_TAPS = (1, 4, 7, 9, 11)
_POOLING_INDICES = (4, 9, 16, 23)


class L2Pooling(nn.Module):
    r"""
    The L2 pooling of DISTS, which replaces VGG's max pooling to reduce aliasing: `sqrt(g * x^2)` with a normalized
    3 x 3 Hann window `g`, stride 2, padding 1, per channel.

    Example:

    ```py
    >>> L2Pooling(64)(torch.rand(1, 64, 32, 32)).shape
    torch.Size([1, 64, 16, 16])
    ```
    """

    def __init__(self, channels: int):
        super().__init__()
        window = torch.hann_window(5, periodic=False)[1:-1]  # [0.5, 1, 0.5]
        kernel = window[:, None] * window[None, :]
        self.register_buffer("kernel", (kernel / kernel.sum()).expand(channels, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.conv2d(x**2, self.kernel, stride=2, padding=1, groups=x.shape[1])
        return (pooled + 1e-12).sqrt()


def vgg16_features(pooling: str = "max") -> nn.Sequential:
    """torchvision's `vgg16().features` up to relu5_3 (30 layers), with max or DISTS' L2 pooling (`"max"` / `"l2"`)."""
    if pooling not in ("max", "l2"):
        raise ValueError(f"`pooling` must be 'max' or 'l2', got {pooling!r}.")
    layers, channels = [], 3
    for width in (64, 64, "pool", 128, 128, "pool", 256, 256, 256, "pool", 512, 512, 512, "pool", 512, 512, 512):
        if width == "pool":
            layers.append(nn.MaxPool2d(2, 2) if pooling == "max" else L2Pooling(channels))
        else:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
    return nn.Sequential(*layers)


def alexnet_features() -> nn.Sequential:
    """torchvision's `alexnet().features` up to relu5 (12 layers)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1),
        nn.ReLU(),
    )


def _tapped(features: nn.Sequential, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
    outputs = []
    for index, layer in enumerate(features[: taps[-1] + 1]):
        x = layer(x)
        if index in taps:
            outputs.append(x)
    return outputs


def _hub_checkpoint(filename: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def _package_file(package: str, *parts: str) -> str | None:
    """Path of a data file inside an installed package, found without importing it (many import torchvision)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], *parts)


def _resolve(what: str, explicit, candidates: list, how: str, allow_missing: bool) -> str | None:
    """The first existing candidate (or the explicit path); otherwise raise or, if `allow_missing`, warn."""
    if explicit is not None:
        if not os.path.isfile(explicit):
            raise FileNotFoundError(f"{what}: {explicit} does not exist.")
        return str(explicit)
    candidates = [path for path in candidates if path is not None]
    for path in candidates:
        if os.path.isfile(path):
            return path
    message = f"{what} not found; looked in: {', '.join(candidates)}. {how}"
    if not allow_missing:
        raise FileNotFoundError(message)
    logger.warning(f"{message} Using RANDOM weights: the distance is meaningless except for tests.")
    return None


def _load(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_features(features: nn.Sequential, path: str) -> None:
    """Load the `features.*` entries of a torchvision checkpoint strictly (its `classifier.*` is not used)."""
    state_dict = _load(path)
    features_state = {
        key[len("features.") :]: value for key, value in state_dict.items() if key.startswith("features.")
    }
    if not features_state:
        raise ValueError(f"{path} has no `features.*` weights; expected a torchvision state dict.")
    features.load_state_dict(features_state, strict=True)


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


class DISTS(nn.Module):
    r"""
    DISTS, the Deep Image Structure and Texture Similarity distance (Ding et al., TPAMI 2020), as in the authors' code:
    VGG16 with L2 pooling; for the image and the five stages relu1_2 ... relu5_3, per channel, a texture term
    `(2 mu_x mu_y + c) / (mu_x^2 + mu_y^2 + c)` and a structure term `(2 cov_xy + c) / (var_x + var_y + c)` (global
    spatial statistics, c = 1e-6), weighted by the learned `alpha` and `beta` (normalized to sum to one):
    `D = 1 - sum(alpha * texture + beta * structure)`.

    `DISTS()` has random weights (alpha and beta drawn from N(0.1, 0.01) as in the authors' code); use
    [`~DISTS.from_pretrained`] for the real metric. All parameters are frozen; the distance is differentiable with
    respect to the inputs, so it can serve as a training loss.

    Example:

    ```py
    >>> dists = DISTS.from_pretrained()  # looks for the VGG16 and alpha/beta files locally
    >>> dists(output_frames, target_frames)  # (N, 3, H, W) in [0, 1] -> (N,)
    ```
    """

    channels = (3, 64, 128, 256, 512, 512)

    def __init__(self):
        super().__init__()
        self.features = vgg16_features(pooling="l2")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.alpha = nn.Parameter(torch.empty(1, sum(self.channels), 1, 1).normal_(0.1, 0.01))
        self.beta = nn.Parameter(torch.empty(1, sum(self.channels), 1, 1).normal_(0.1, 0.01))
        _freeze(self)

    @classmethod
    def from_pretrained(cls, vgg16_weights=None, dists_weights=None, allow_untrained: bool = False) -> "DISTS":
        r"""
        DISTS with torchvision's ImageNet VGG16 and the authors' alpha/beta, from local files only.

        Args:
            vgg16_weights (`str`, *optional*):
                torchvision's VGG16 state dict; by default `<torch hub dir>/checkpoints/vgg16-397923af.pth`.
            dists_weights (`str`, *optional*):
                The authors' `{"alpha", "beta"}` file; by default the `weights.pt` of an installed `DISTS_pytorch`
                package, or piq's or pyiqa's copy in the torch hub cache.
            allow_untrained (`bool`, defaults to `False`):
                When a default file is missing, warn and keep random weights instead of raising (for tests only). A
                path that is given but does not exist always raises.

        Raises:
            `FileNotFoundError`: naming the missing file, where it was looked for and how to supply it.
        """
        model = cls()
        vgg_path = _resolve(
            "DISTS: VGG16 weights (torchvision)",
            vgg16_weights,
            [_hub_checkpoint(VGG16_FILE)],
            f"Download {_VGG16_URL} into {os.path.dirname(_hub_checkpoint(VGG16_FILE))} or pass `vgg16_weights`.",
            allow_untrained,
        )
        hub = torch.hub.get_dir()
        dists_path = _resolve(
            "DISTS: alpha/beta weights",
            dists_weights,
            [
                _package_file("DISTS_pytorch", "weights.pt"),
                os.path.join(sys.prefix, "weights.pt"),
                os.path.join(hub, "checkpoints", "dists_weights.pt"),
                os.path.join(hub, "pyiqa", "DISTS_weights-f5e65c96.pth"),
            ],
            "Install them with `pip install --no-deps DISTS_pytorch` (the package ships `weights.pt`) or pass "
            "`dists_weights`.",
            allow_untrained,
        )
        if vgg_path is not None:
            _load_features(model.features, vgg_path)
        if dists_path is not None:
            weights = _load(dists_path)
            shape = tuple(model.alpha.shape)
            if not isinstance(weights, dict) or any(
                not isinstance(weights.get(name), torch.Tensor) or tuple(weights[name].shape) != shape
                for name in ("alpha", "beta")
            ):
                found = (
                    {k: tuple(getattr(v, "shape", ())) for k, v in weights.items()}
                    if isinstance(weights, dict)
                    else weights
                )
                raise ValueError(f"{dists_path} is not a DISTS alpha/beta file of shape {shape} each: found {found}.")
            model.alpha.copy_(weights["alpha"])
            model.beta.copy_(weights["beta"])
        return model

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, *_tapped(self.features, (x - self.mean) / self.std, VGG16_TAPS)]

    def forward(self, x: torch.Tensor, y: torch.Tensor, batch_average: bool = False) -> torch.Tensor:
        r"""
        Args:
            x, y (`torch.Tensor`): `(N, 3, H, W)` images in [0, 1].
            batch_average (`bool`, defaults to `False`): Return the mean over the batch instead of `(N,)`.
        """
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"DISTS needs two (N, 3, H, W) images of one shape, got {tuple(x.shape)}, {tuple(y.shape)}."
            )
        total = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / total, self.channels, dim=1)
        betas = torch.split(self.beta / total, self.channels, dim=1)
        similarity = 0
        c = 1e-6
        for fx, fy, alpha, beta in zip(self._stages(x), self._stages(y), alphas, betas):
            mean_x, mean_y = fx.mean((2, 3), keepdim=True), fy.mean((2, 3), keepdim=True)
            var_x = ((fx - mean_x) ** 2).mean((2, 3), keepdim=True)
            var_y = ((fy - mean_y) ** 2).mean((2, 3), keepdim=True)
            cov = (fx * fy).mean((2, 3), keepdim=True) - mean_x * mean_y
            texture = (2 * mean_x * mean_y + c) / (mean_x**2 + mean_y**2 + c)
            structure = (2 * cov + c) / (var_x + var_y + c)
            similarity = similarity + (alpha * texture + beta * structure).sum((1, 2, 3))
        distance = 1 - similarity
        return distance.mean() if batch_average else distance


class LPIPS(nn.Module):
    r"""
    LPIPS v0.1 (Zhang et al., CVPR 2018): unit-normalized AlexNet or VGG16 features of both images, squared
    differences weighted per channel by the learned linear layers, averaged over space and summed over the five
    layers.

    `LPIPS(net)` has random weights; [`~LPIPS.from_pretrained`] loads torchvision's backbone and the official linear
    layers (`lin{k}.model.1.weight`, as shipped in the `lpips` package) from local files.

    Example:

    ```py
    >>> lpips = LPIPS.from_pretrained("alex")
    >>> lpips(output_frames, target_frames)  # (N, 3, H, W) in [0, 1] -> (N,)
    ```
    """

    _nets = {
        "alex": (alexnet_features, ALEXNET_TAPS, (64, 192, 384, 256, 256), ALEXNET_FILE, _ALEXNET_URL),
        "vgg": (vgg16_features, VGG16_TAPS, (64, 128, 256, 512, 512), VGG16_FILE, _VGG16_URL),
    }

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in self._nets:
            raise ValueError(f"`net` must be one of {sorted(self._nets)}, got {net!r}.")
        build, self.taps, channels, _, _ = self._nets[net]
        self.net = net
        self.features = build()
        self.linear_layers = nn.ModuleList(nn.Conv2d(width, 1, 1, bias=False) for width in channels)
        # The official scaling layer, for inputs in [-1, 1].
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        _freeze(self)

    @classmethod
    def from_pretrained(cls, net: str = "alex", backbone_weights=None, lpips_weights=None) -> "LPIPS":
        r"""
        LPIPS with torchvision's ImageNet backbone and the official v0.1 linear layers, from local files only.

        Args:
            net (`str`, defaults to `"alex"`): `"alex"` or `"vgg"`.
            backbone_weights (`str`, *optional*):
                torchvision's state dict; by default `alexnet-owt-7be5be79.pth` / `vgg16-397923af.pth` in
                `<torch hub dir>/checkpoints`.
            lpips_weights (`str`, *optional*):
                The linear layers; by default `weights/v0.1/<net>.pth` of an installed `lpips` package.

        Raises:
            `FileNotFoundError`: naming the missing file, where it was looked for and how to supply it.
        """
        model = cls(net)
        _, _, _, backbone_file, backbone_url = cls._nets[net]
        backbone_path = _resolve(
            f"LPIPS-{net}: backbone weights (torchvision)",
            backbone_weights,
            [_hub_checkpoint(backbone_file)],
            f"Download {backbone_url} into {os.path.dirname(_hub_checkpoint(backbone_file))} or pass "
            "`backbone_weights`.",
            allow_missing=False,
        )
        lpips_path = _resolve(
            f"LPIPS-{net}: linear-layer weights",
            lpips_weights,
            [_package_file("lpips", "weights", "v0.1", f"{net}.pth")],
            "Install them with `pip install --no-deps lpips` or pass `lpips_weights`.",
            allow_missing=False,
        )
        _load_features(model.features, backbone_path)
        linear = _load(lpips_path)
        expected = [f"lin{index}.model.1.weight" for index in range(len(model.linear_layers))]
        if sorted(linear) != expected:
            raise ValueError(f"{lpips_path} is not an LPIPS v0.1 file: expected {expected}, found {sorted(linear)}.")
        model.linear_layers.load_state_dict({f"{index}.weight": linear[key] for index, key in enumerate(expected)})
        return model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r"""`x`, `y`: `(N, 3, H, W)` images in [0, 1]; returns the `(N,)` distances."""
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS needs two (N, 3, H, W) images of one shape, got {tuple(x.shape)}, {tuple(y.shape)}."
            )
        distance = 0
        features_x = _tapped(self.features, (x * 2 - 1 - self.shift) / self.scale, self.taps)
        features_y = _tapped(self.features, (y * 2 - 1 - self.shift) / self.scale, self.taps)
        for fx, fy, linear in zip(features_x, features_y, self.linear_layers):
            fx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
            fy = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
            distance = distance + linear((fx - fy) ** 2).mean((1, 2, 3))
        return distance
