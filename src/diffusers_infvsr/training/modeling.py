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
"""Loading the transformers that InfVSR training starts from."""

import os

import torch
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel


def load_transformer(
    cls: type[WanTransformer3DModel], name_or_path: str | os.PathLike, subfolder: str = "transformer", **kwargs
) -> WanTransformer3DModel:
    r"""
    Load a Wan transformer with `cls.from_pretrained` from a transformer folder (or Hub repository) itself, or from
    the `subfolder` of a pipeline folder (or repository) such as `Wan-AI/Wan2.1-T2V-1.3B-Diffusers`.
    """
    if os.path.isfile(os.path.join(name_or_path, "config.json")):
        return cls.from_pretrained(name_or_path, **kwargs)
    return cls.from_pretrained(name_or_path, subfolder=subfolder, **kwargs)


def replace_text_projection(transformer: WanTransformer3DModel, text_dim: int) -> bool:
    r"""
    Make `transformer` take `text_dim`-dimensional cross-attention context: when its `text_dim` differs (Wan2.1 T2V
    takes 4096-dim umT5 embeddings, InfVSR 512-dim DAPE tokens), the input layer of the text projection
    (`condition_embedder.text_embedder.linear_1`) is replaced by a freshly initialized `nn.Linear(text_dim, ...)` and
    the config is updated. Every other weight is kept.

    Returns:
        `bool`: whether the layer was replaced.
    """
    projection = transformer.condition_embedder.text_embedder
    old = projection.linear_1
    if old.in_features == text_dim:
        return False
    projection.linear_1 = torch.nn.Linear(text_dim, old.out_features, device=old.weight.device, dtype=old.weight.dtype)
    transformer.register_to_config(text_dim=text_dim)
    return True
