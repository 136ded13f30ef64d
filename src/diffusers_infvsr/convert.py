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
"""Command: convert the official InfVSR release into a diffusers folder.

    python -m diffusers_infvsr.convert --dit InfVSR.ckpt --vae Wan2.1_VAE.pth \
        --ram ram_swin_large_14m.pth --dape DAPE.pth --output_dir InfVSR-diffusers [--dtype bf16] [--push_to_hub ID]
"""

import argparse
import json
import sys

import torch
from huggingface_hub import create_repo, upload_folder

from .conversion import INFVSR_TRANSFORMER_CONFIG, convert_infvsr


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m diffusers_infvsr.convert", description=__doc__.splitlines()[0])
    parser.add_argument("--dit", required=True, help="InfVSR.ckpt: the causal Wan2.1 DiT in the original layout.")
    parser.add_argument("--vae", required=True, help="Wan2.1_VAE.pth.")
    parser.add_argument("--ram", required=True, help="ram_swin_large_14m.pth: RAM's Swin-L and image_proj.")
    parser.add_argument("--dape", required=True, help="DAPE.pth: LoRA for RAM's Swin attention.")
    parser.add_argument("--output_dir", required=True, help="New or empty folder for the diffusers pipeline.")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="Weight dtype to save.")
    parser.add_argument(
        "--config",
        default=None,
        help="JSON file with {'transformer': {...}, 'vae': {...}, 'image_encoder': {...}} config overrides, for "
        "checkpoints of other sizes than the released ones.",
    )
    parser.add_argument("--model_card", default=None, help="Model card to save as README.md (default: model_card.md).")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", default=None, help="Also upload the folder to this repo.")
    parser.add_argument("--private", action="store_true", help="Create the Hub repository as private.")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        configs = {}
        if args.config is not None:
            with open(args.config) as f:
                configs = json.load(f)
            unknown = set(configs) - {"transformer", "vae", "image_encoder"}
            if unknown:
                raise ValueError(f"{args.config}: unknown sections {sorted(unknown)}.")
        convert_infvsr(
            args.dit,
            args.vae,
            args.ram,
            args.dape,
            args.output_dir,
            DTYPES[args.dtype],
            model_card=args.model_card,
            transformer_config={**INFVSR_TRANSFORMER_CONFIG, **configs.get("transformer", {})},
            vae_config=configs.get("vae"),
            image_encoder_config=configs.get("image_encoder"),
            repo_id=args.push_to_hub,
        )
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Saved the InfVSR pipeline to {args.output_dir}")
    if args.push_to_hub:
        create_repo(args.push_to_hub, private=args.private, exist_ok=True)
        upload_folder(repo_id=args.push_to_hub, folder_path=args.output_dir, commit_message="Add InfVSR (diffusers)")
        print(f"Uploaded to https://huggingface.co/{args.push_to_hub}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
