#!/usr/bin/env python
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
Train InfVSR (arXiv 2510.00948, Sections 3.3 and 4.1) with 🤗 accelerate.

Stage I (`--stage 1`): the one-step generator learns from patch-wise pixel supervision alone (MSE + DISTS + temporal
difference on a decoded latent window), with full attention over long clips.
Stage II (`--stage 2`): causal adaptation: block-causal attention with a KV cache of the previous chunk, pixel
supervision plus distribution matching (DMD) across three adjacent chunks against a frozen Wan2.1 T2V teacher.

See examples/README.md for data preparation and the paper's settings.
"""

import argparse
import copy
import json
import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import free_memory
from diffusers.utils import export_to_video
from diffusers.utils.torch_utils import is_compiled_module
from huggingface_hub import create_repo, upload_folder
from safetensors.torch import load_file
from tqdm.auto import tqdm

from diffusers_infvsr import (
    CausalWanTransformer3DModel,
    DAPEImageEncoder,
    InfVSRPipeline,
    InfVSRScheduler,
    WanVAEStream,
)
from diffusers_infvsr.conversion import default_model_card_path
from diffusers_infvsr.metrics import DISTS, psnr, ssim
from diffusers_infvsr.training import (
    DegradationConfig,
    VideoClipDataset,
    decode_latents,
    degrade,
    distribution_matching_loss,
    fake_score_loss,
    load_frames,
    load_transformer,
    pixel_losses,
    random_latent_window,
    replace_text_projection,
    sample_noise_levels,
)


logger = get_logger(__name__)

# Paper settings (Section 4.1) that differ between the stages.
STAGE_DEFAULTS = {
    1: {"learning_rate": 5e-6, "resolution": (720, 1280), "decode_window": (320, 480)},
    2: {"learning_rate": 1e-6, "resolution": (480, 720), "decode_window": (160, 160)},
}


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Train InfVSR: Stage I pixel supervision, Stage II causal + DMD.")
    parser.add_argument("--stage", type=int, choices=[1, 2], required=True, help="Training stage (1 or 2).")
    parser.add_argument(
        "--pretrained_model_name_or_path",
        type=str,
        required=True,
        help="InfVSR pipeline folder or Hub id (transformer, vae, image_encoder, scheduler). Its VAE, DAPE image "
        "encoder and scheduler are used frozen; its transformer initializes the generator unless "
        "--generator_init_transformer is given.",
    )
    parser.add_argument("--revision", type=str, default=None, help="Revision of --pretrained_model_name_or_path.")
    parser.add_argument(
        "--generator_init_transformer",
        type=str,
        default=None,
        help="Initialize the generator from this Wan2.1 T2V diffusers transformer (a transformer folder, or a "
        "pipeline folder / Hub id with a `transformer` subfolder) instead. The input layer of its text projection "
        "is re-initialized for the DAPE visual prompt's dimension.",
    )
    parser.add_argument(
        "--real_score_model_name_or_path",
        type=str,
        default=None,
        help="Stage II: the frozen Wan2.1 T2V diffusers transformer used as the real score (and to initialize the "
        "fake score), e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers.",
    )
    parser.add_argument(
        "--prompt_embeds_path",
        type=str,
        default=None,
        help="Stage II: precomputed umT5 embedding of the conditional prompt of the score models (.safetensors with "
        "a `prompt_embeds` tensor, or a .pt tensor), shape (1, sequence_length, text_dim). See examples/README.md.",
    )
    parser.add_argument(
        "--negative_prompt_embeds_path",
        type=str,
        default=None,
        help="Stage II: precomputed umT5 embedding of the negative prompt, for the real score's classifier-free "
        "guidance (same format). Needed unless --real_guidance_scale is 1.",
    )
    parser.add_argument(
        "--real_guidance_scale",
        type=float,
        default=4.0,
        help="Stage II: classifier-free guidance scale of the real score, `uncond + s (cond - uncond)` (1 disables "
        "it). The default 4 is Self-Forcing's setting for DMD on Wan2.1 (its `guidance_scale: 3.0` in the form "
        "`cond + g (cond - uncond)`). The fake score is never guided.",
    )
    # Data.
    parser.add_argument(
        "--train_data_dir",
        type=str,
        required=True,
        help="Folder of high-quality clips: video files and/or folders of frames (searched recursively).",
    )
    parser.add_argument("--num_frames", type=int, default=33, help="Frames per training window (1 + 4k).")
    parser.add_argument(
        "--resolution",
        type=int,
        nargs=2,
        default=None,
        metavar=("HEIGHT", "WIDTH"),
        help="High-quality crop size, multiples of 16. Default: 720 1280 (Stage I), 480 720 (Stage II).",
    )
    parser.add_argument("--random_flip", action="store_true", help="Randomly flip the clips horizontally.")
    parser.add_argument("--upscale_factor", type=int, default=4, help="Super-resolution scale.")
    parser.add_argument(
        "--degradation_config",
        type=str,
        default=None,
        help="JSON file overriding entries of `diffusers_infvsr.training.DegradationConfig` (the scale comes from "
        "--upscale_factor).",
    )
    parser.add_argument("--dataloader_num_workers", type=int, default=0, help="Data loading (and degrading) workers.")
    # Model and losses.
    parser.add_argument(
        "--decode_window",
        type=int,
        nargs=2,
        default=None,
        metavar=("HEIGHT", "WIDTH"),
        help="Pixel window decoded for the pixel loss, multiples of 8. Default: 320 480 (Stage I), 160 160 (II).",
    )
    parser.add_argument("--mse_weight", type=float, default=1.0, help="Weight of the MSE loss.")
    parser.add_argument("--dists_weight", type=float, default=1.0, help="Weight of the DISTS loss (0 disables it).")
    parser.add_argument("--temporal_weight", type=float, default=1.0, help="Weight of the temporal-difference loss.")
    parser.add_argument(
        "--dists_vgg16_weights",
        type=str,
        default=None,
        help="torchvision VGG16 state dict for DISTS (default: vgg16-397923af.pth in the torch hub cache).",
    )
    parser.add_argument(
        "--dists_weights",
        type=str,
        default=None,
        help="DISTS alpha/beta file (default: the copy of an installed DISTS_pytorch, piq or pyiqa).",
    )
    parser.add_argument(
        "--dists_allow_untrained",
        action="store_true",
        help="FOR TESTS ONLY: use random DISTS weights when the weight files are missing.",
    )
    parser.add_argument("--chunk_latent_frames", type=int, default=3, help="Stage II: latent frames per chunk (M).")
    parser.add_argument("--cache_frames", type=int, default=3, help="Stage II: cached past latent frames (N).")
    parser.add_argument("--dmd_weight", type=float, default=1.0, help="Stage II: weight of the DMD loss.")
    parser.add_argument("--dmd_min_timestep", type=int, default=20, help="Stage II: lowest DMD/fake-score timestep.")
    parser.add_argument("--dmd_max_timestep", type=int, default=980, help="Stage II: highest DMD/fake-score timestep.")
    parser.add_argument(
        "--fake_score_updates",
        type=int,
        default=5,
        help="Stage II: fake-score optimizer steps per generator step, each on fresh generator samples of its own "
        "batch (DMD2, CausVid and Self-Forcing use 5).",
    )
    parser.add_argument(
        "--fake_score_learning_rate",
        type=float,
        default=None,
        help="Stage II: learning rate of the fake score (default: --learning_rate).",
    )
    # Optimization.
    parser.add_argument("--output_dir", type=str, default="infvsr-trained", help="Output and checkpoint folder.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of data sampling, degradations and noise.")
    parser.add_argument("--train_batch_size", type=int, default=1, help="Clips per device per micro-batch.")
    parser.add_argument("--num_train_epochs", type=int, default=100)
    parser.add_argument(
        "--max_train_steps", type=int, default=None, help="Total optimizer steps; overrides --num_train_epochs."
    )
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="Recompute activations in backward: transformer blocks, and the VAE decoder one latent frame at a time.",
    )
    parser.add_argument(
        "--learning_rate", type=float, default=None, help="Generator learning rate. Default: 5e-6 (I), 1e-6 (II)."
    )
    parser.add_argument(
        "--scale_lr",
        action="store_true",
        help="Scale the learning rates by the number of GPUs, accumulation steps and batch size.",
    )
    parser.add_argument(
        "--lr_scheduler",
        type=str,
        default="constant",
        help='One of ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"].',
    )
    parser.add_argument("--lr_warmup_steps", type=int, default=0, help="Warmup steps of the learning rate scheduler.")
    parser.add_argument("--use_8bit_adam", action="store_true", help="Use bitsandbytes' 8-bit AdamW.")
    parser.add_argument("--adam_beta1", type=float, default=0.9)
    parser.add_argument("--adam_beta2", type=float, default=0.999)
    parser.add_argument("--adam_weight_decay", type=float, default=1e-2)
    parser.add_argument("--adam_epsilon", type=float, default=1e-08)
    parser.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm (0 disables).")
    parser.add_argument(
        "--allow_tf32", action="store_true", help="Allow TF32 on Ampere GPUs (faster float32 matmuls)."
    )
    parser.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=["no", "fp16", "bf16"],
        help="Mixed precision; defaults to the accelerate config. bf16 is recommended (frozen models run in it).",
    )
    # Checkpoints, logging, validation, Hub.
    parser.add_argument("--checkpointing_steps", type=int, default=500, help="Save the training state every X steps.")
    parser.add_argument("--checkpoints_total_limit", type=int, default=None, help="Max number of checkpoints kept.")
    parser.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help='Resume from a checkpoint folder of --output_dir, or "latest".',
    )
    parser.add_argument("--logging_dir", type=str, default="logs", help="TensorBoard log folder under output_dir.")
    parser.add_argument(
        "--report_to",
        type=str,
        default="tensorboard",
        help='Tracker: "tensorboard", "wandb", "comet_ml", "all", or "none".',
    )
    parser.add_argument("--tracker_project_name", type=str, default="train_infvsr")
    parser.add_argument(
        "--validation_video",
        type=str,
        default=None,
        help="High-quality validation clip (video file or frame folder), upscaled and scored (PSNR/SSIM) during "
        "training and at the end.",
    )
    parser.add_argument(
        "--validation_lq_video",
        type=str,
        default=None,
        help="Its low-quality version; by default synthesized with the training degradations at --seed.",
    )
    parser.add_argument("--num_validation_frames", type=int, default=33, help="Frames of the validation clip used.")
    parser.add_argument("--validation_steps", type=int, default=500, help="Validate every X steps.")
    parser.add_argument("--push_to_hub", action="store_true", help="Push the final pipeline to the Hub.")
    parser.add_argument("--hub_token", type=str, default=None, help="Token for the Hub (prefer `hf auth login`).")
    parser.add_argument("--hub_model_id", type=str, default=None, help="Hub repository (default: output_dir name).")
    parser.add_argument("--local_rank", type=int, default=-1, help="For distributed training: local_rank")

    args = parser.parse_args(input_args)
    env_local_rank = int(os.environ.get("LOCAL_RANK", -1))
    if env_local_rank != -1 and env_local_rank != args.local_rank:
        args.local_rank = env_local_rank

    for name, value in STAGE_DEFAULTS[args.stage].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.stage == 2 and (args.real_score_model_name_or_path is None or args.prompt_embeds_path is None):
        raise ValueError("Stage II needs --real_score_model_name_or_path and --prompt_embeds_path.")
    if args.stage == 2 and args.real_guidance_scale != 1 and args.negative_prompt_embeds_path is None:
        raise ValueError(
            f"--real_guidance_scale {args.real_guidance_scale} needs --negative_prompt_embeds_path (or pass "
            "--real_guidance_scale 1 to score without guidance)."
        )
    if args.num_frames < 1 or (args.num_frames - 1) % 4:
        raise ValueError(f"--num_frames must be 1 + 4k (the Wan VAE is causal, 4x in time), got {args.num_frames}.")
    if any(size % 16 for size in args.resolution):
        raise ValueError(f"--resolution must be multiples of 16, got {args.resolution}.")
    if any(size % 8 for size in args.decode_window):
        raise ValueError(f"--decode_window must be multiples of 8, got {args.decode_window}.")
    if args.fake_score_updates < 1:
        raise ValueError(f"--fake_score_updates must be >= 1, got {args.fake_score_updates}.")
    if args.report_to == "none":
        args.report_to = None
    return args


def load_prompt_embeds(path: str) -> torch.Tensor:
    """A `(1, sequence_length, text_dim)` prompt embedding from a .safetensors (`prompt_embeds`) or .pt file."""
    if path.endswith(".safetensors"):
        tensors = load_file(path)
        embeds = tensors["prompt_embeds"] if "prompt_embeds" in tensors else next(iter(tensors.values()))
    else:
        embeds = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(embeds, dict):
            embeds = embeds["prompt_embeds"]
    if embeds.ndim == 2:
        embeds = embeds[None]
    if embeds.ndim != 3 or embeds.shape[0] != 1:
        raise ValueError(
            f"{path}: expected one prompt embedding (1, sequence_length, dim), got {tuple(embeds.shape)}."
        )
    return embeds


def chunk_layout(num_latent_frames: int, chunk_latent_frames: int) -> list[int]:
    """Latent frames of each chunk: full chunks, then the remainder."""
    chunks = [chunk_latent_frames] * (num_latent_frames // chunk_latent_frames)
    return chunks + ([num_latent_frames % chunk_latent_frames] if num_latent_frames % chunk_latent_frames else [])


def micro_batch_rng(seed: int, step: int, micro_batch: int, process_index: int) -> torch.Generator:
    """The random source of one micro-batch: a function of its position only, so a resumed run draws the same."""
    state = np.random.SeedSequence([seed, step, micro_batch, process_index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def prepare_inputs(batch, vae, image_encoder, upscale_factor: int):
    r"""
    The generator's inputs, as `InfVSRPipeline` builds them: the DAPE visual prompt of the first low-quality frame,
    and the normalized latents of the bicubically upscaled low-quality clip. Also returns the high-quality clip
    `(B, 3, T, H, W)` in [0, 1].
    """
    with torch.no_grad():
        lq_frames = batch["lq_frames"].float() / 255  # (B, T, 3, h, w)
        batch_size, num_frames = lq_frames.shape[:2]
        visual_prompt = image_encoder.encode_reference(lq_frames[:, 0])
        upscaled = F.interpolate(
            lq_frames.flatten(0, 1) * 2 - 1,
            scale_factor=upscale_factor,
            mode="bicubic",
            align_corners=False,
            antialias=True,
        )
        video = upscaled.unflatten(0, (batch_size, num_frames)).transpose(1, 2)
        latents = WanVAEStream(vae).encode(video).float()
    hq = (batch["hq_frames"].float() / 255).transpose(1, 2)
    return latents, visual_prompt, hq


def generate(generator, batch, vae, image_encoder, noise_scheduler, args):
    r"""
    The one-step generator's clean latents for a batch (float32; block-causal chunks in Stage II), with the
    high-quality clip `(B, 3, T, H, W)` in [0, 1].
    """
    latents, visual_prompt, hq = prepare_inputs(batch, vae, image_encoder, args.upscale_factor)
    timestep = torch.full((latents.shape[0],), noise_scheduler.timestep, device=latents.device)
    chunk_frames = chunk_layout(latents.shape[2], args.chunk_latent_frames) if args.stage == 2 else None
    velocity = generator(
        latents, timestep, visual_prompt, chunk_frames=chunk_frames, cache_frames=args.cache_frames, return_dict=False
    )[0]
    return noise_scheduler.one_step(velocity.float(), latents), hq


def batches_per_step(args) -> int:
    """Micro-batches per generator step: the generator's, then those of every fake-score update (Stage II)."""
    return args.gradient_accumulation_steps * (1 + (args.fake_score_updates if args.stage == 2 else 0))


def group_batches(dataloader, size: int):
    """Consecutive lists of `size` batches; an incomplete group at the end of an epoch is dropped."""
    group = []
    for batch in dataloader:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []


# Settings a checkpoint must be resumed with: they fix the data order and the optimization.
RESUME_SETTINGS = (
    "stage",
    "seed",
    "train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler",
    "fake_score_updates",
    "fake_score_learning_rate",
    "real_guidance_scale",
)


def resume_settings(args, num_processes: int) -> dict:
    return {"num_processes": num_processes, **{name: getattr(args, name) for name in RESUME_SETTINGS}}


def check_resume_settings(checkpoint: str, args, num_processes: int) -> None:
    """Refuse to resume a checkpoint with settings other than those it was trained with."""
    path = os.path.join(checkpoint, "train_settings.json")
    if not os.path.isfile(path):
        logger.warning(f"{checkpoint} has no train_settings.json: resuming without checking the settings.")
        return
    with open(path) as f:
        saved = json.load(f)
    current = resume_settings(args, num_processes)
    changed = {name: (saved.get(name), value) for name, value in current.items() if saved.get(name) != value}
    if changed:
        details = ", ".join(f"{name} {old} -> {new}" for name, (old, new) in changed.items())
        raise ValueError(f"{checkpoint} was trained with other settings ({details}); resume with the same ones.")


def load_validation_clip(args, degradation: DegradationConfig):
    """High- and low-quality validation frames, `(T, 3, H, W)` uint8, cropped to a multiple of the scale."""
    hq = load_frames(args.validation_video, 0, args.num_validation_frames)
    scale = args.upscale_factor
    hq = hq[..., : hq.shape[-2] // scale * scale, : hq.shape[-1] // scale * scale]
    if args.validation_lq_video is not None:
        lq = load_frames(args.validation_lq_video, 0, args.num_validation_frames)
        if tuple(lq.shape[-2:]) != (hq.shape[-2] // scale, hq.shape[-1] // scale):
            raise ValueError(
                f"--validation_lq_video frames are {tuple(lq.shape[-2:])}, expected {scale}x smaller than "
                f"--validation_video's {tuple(hq.shape[-2:])}."
            )
    else:
        lq = degrade(hq, degradation, seed=args.seed)
    return hq, lq


def log_validation(pipeline, validation_clip, args, accelerator, step: int) -> dict[str, float]:
    """Upscale the validation clip, save it as a video, and log its PSNR and SSIM against the high-quality clip."""
    hq, lq = validation_clip
    logger.info(f"Running validation on {args.validation_video} ({lq.shape[0]} frames)...")
    pipeline.set_progress_bar_config(disable=True)
    with accelerator.autocast():
        frames = pipeline(video=lq, upscale_factor=args.upscale_factor, output_type="pt").frames[0].float().cpu()
    target = hq.float() / 255
    metrics = {
        "validation/psnr": psnr(frames, target).mean().item(),
        "validation/ssim": ssim(frames, target).mean().item(),
    }
    video_path = os.path.join(args.output_dir, "validation", f"step-{step}.mp4")
    os.makedirs(os.path.dirname(video_path), exist_ok=True)
    export_to_video(list(frames.permute(0, 2, 3, 1).numpy()), video_path, fps=24)
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            import wandb

            tracker.log({"validation/video": wandb.Video(video_path, format="mp4")}, step=step)
    accelerator.log(metrics, step=step)
    logger.info(
        f"Validation at step {step}: PSNR {metrics['validation/psnr']:.2f} dB, SSIM {metrics['validation/ssim']:.4f}"
    )
    free_memory()
    return metrics


def save_model_card(args, repo_folder: str, mixed_precision: str, validation_metrics: dict[str, float] | None):
    """The package's model card (model_card.md) followed by how this checkpoint was trained."""
    template = default_model_card_path()
    if template is None:
        logger.warning("model_card.md not found; the model card holds the training details only.")
    stage = "I (pixel supervision)" if args.stage == 1 else "II (causal adaptation with DMD)"
    losses = f"{args.mse_weight} MSE + {args.dists_weight} DISTS + {args.temporal_weight} temporal difference"
    if args.stage == 2:
        losses += (
            f" + {args.dmd_weight} DMD (real score `{args.real_score_model_name_or_path}` with guidance scale "
            f"{args.real_guidance_scale}, {args.fake_score_updates} fake-score update(s) per step at learning rate "
            f"{args.fake_score_learning_rate}); cache ({args.chunk_latent_frames}, {args.cache_frames})"
        )
    lines = [
        "## This checkpoint",
        "",
        f"Trained with `examples/train_infvsr.py`, Stage {stage}, from "
        f"`{args.generator_init_transformer or args.pretrained_model_name_or_path}` (VAE, DAPE encoder and scheduler: "
        f"`{args.pretrained_model_name_or_path}`).",
        "",
        f"- {args.max_train_steps} steps, {args.train_batch_size} clip(s) x {args.gradient_accumulation_steps} "
        f"accumulation step(s) per device, learning rate {args.learning_rate} ({args.lr_scheduler}), "
        f"mixed precision {mixed_precision}",
        f"- {args.num_frames}-frame clips, {args.resolution[0]} x {args.resolution[1]} crops, x{args.upscale_factor} "
        f"second-order degradations; decoded window {args.decode_window[0]} x {args.decode_window[1]}",
        f"- losses: {losses}",
    ]
    if validation_metrics:
        lines.append(
            f"- validation on `{os.path.basename(os.path.normpath(args.validation_video))}`: PSNR "
            f"{validation_metrics['validation/psnr']:.2f} dB, SSIM {validation_metrics['validation/ssim']:.4f}"
        )
    card = template.read_text().rstrip("\n") + "\n\n" if template is not None else ""
    with open(os.path.join(repo_folder, "README.md"), "w") as f:
        f.write(card + "\n".join(lines) + "\n")


def main(args):
    logging_dir = Path(args.output_dir, args.logging_dir)
    # Gradient accumulation is done by hand (the generator's and the fake score's micro-batches interleave). Without
    # an accelerator device, several launched processes train on the CPU (gloo), as `torchrun` or
    # `accelerate launch --multi_gpu --num_processes N` start them.
    accelerator = Accelerator(
        cpu=not torch.accelerator.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=logging_dir),
    )
    if torch.backends.mps.is_available():
        accelerator.native_amp = False

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S", level=logging.INFO
    )
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.is_local_main_process:
        transformers.utils.logging.set_verbosity_warning()
        diffusers.utils.logging.set_verbosity_info()
    else:
        transformers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.set_verbosity_error()

    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        if args.push_to_hub:
            repo_id = create_repo(
                repo_id=args.hub_model_id or Path(args.output_dir).name, exist_ok=True, token=args.hub_token
            ).repo_id

    # Fail early on missing optional pieces, before loading any model.
    if args.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ImportError(
                "Please install bitsandbytes to use 8-bit Adam. You can do so by running `pip install bitsandbytes`"
            )
        optimizer_cls = bnb.optim.AdamW8bit
    else:
        optimizer_cls = torch.optim.AdamW
    dists = None
    if args.dists_weight != 0:
        try:
            dists = DISTS.from_pretrained(
                args.dists_vgg16_weights, args.dists_weights, allow_untrained=args.dists_allow_untrained
            )
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f"{error}\nThe DISTS loss needs the VGG16 and DISTS weights: pass --dists_vgg16_weights and "
                "--dists_weights, or --dists_weight 0 to train without DISTS (--dists_allow_untrained is for tests)."
            ) from error
        if args.dists_allow_untrained:
            logger.warning("--dists_allow_untrained: any missing DISTS weights are random; use this for tests only.")

    # Frozen components from the InfVSR pipeline folder.
    source = {"revision": args.revision}
    vae = AutoencoderKLWan.from_pretrained(args.pretrained_model_name_or_path, subfolder="vae", **source)
    image_encoder = DAPEImageEncoder.from_pretrained(
        args.pretrained_model_name_or_path, subfolder="image_encoder", **source
    )
    noise_scheduler = InfVSRScheduler.from_pretrained(
        args.pretrained_model_name_or_path, subfolder="scheduler", **source
    )
    if args.generator_init_transformer is not None:
        generator = load_transformer(CausalWanTransformer3DModel, args.generator_init_transformer)
        text_dim = generator.config.text_dim
        if replace_text_projection(generator, image_encoder.config.projection_dim):
            logger.info(
                f"Generator initialized from {args.generator_init_transformer}: its text projection input layer "
                f"(condition_embedder.text_embedder.linear_1, {text_dim} inputs) is re-initialized for the "
                f"{image_encoder.config.projection_dim}-dim DAPE visual prompt; all other weights are kept."
            )
    else:
        generator = CausalWanTransformer3DModel.from_pretrained(
            args.pretrained_model_name_or_path, subfolder="transformer", **source
        )
    real_score = fake_score = prompt_embeds = negative_prompt_embeds = None
    if args.stage == 2:
        real_score = load_transformer(WanTransformer3DModel, args.real_score_model_name_or_path)
        fake_score = copy.deepcopy(real_score)
        prompt_embeds = load_prompt_embeds(args.prompt_embeds_path)
        if args.real_guidance_scale != 1:
            negative_prompt_embeds = load_prompt_embeds(args.negative_prompt_embeds_path)
        for embeds in (prompt_embeds, negative_prompt_embeds):
            if embeds is not None and embeds.shape[-1] != real_score.config.text_dim:
                raise ValueError(
                    f"A prompt embedding has dimension {embeds.shape[-1]}, the real score expects "
                    f"{real_score.config.text_dim}."
                )

    for frozen in (vae, image_encoder, real_score):
        if frozen is not None:
            frozen.requires_grad_(False).eval()
    generator.train()
    if fake_score is not None:
        fake_score.train()
    if args.gradient_checkpointing:
        generator.enable_gradient_checkpointing()
        if fake_score is not None:
            fake_score.enable_gradient_checkpointing()

    def unwrap_model(model):
        model = accelerator.unwrap_model(model)
        return model._orig_mod if is_compiled_module(model) else model

    # Checkpoints hold the trainable transformers in diffusers format.
    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:
                name = "transformer" if unwrap_model(model) is unwrap_model(generator) else "fake_score"
                unwrap_model(model).save_pretrained(os.path.join(output_dir, name))
                weights.pop()

    def load_model_hook(models, input_dir):
        while models:
            model = unwrap_model(models.pop())
            if model is unwrap_model(generator):
                loaded = CausalWanTransformer3DModel.from_pretrained(input_dir, subfolder="transformer")
            else:
                loaded = WanTransformer3DModel.from_pretrained(input_dir, subfolder="fake_score")
            model.load_state_dict(loaded.state_dict())
            del loaded

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.scale_lr:
        factor = args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
        args.learning_rate *= factor
        if args.fake_score_learning_rate is not None:
            args.fake_score_learning_rate *= factor
    adam_kwargs = {
        "betas": (args.adam_beta1, args.adam_beta2),
        "weight_decay": args.adam_weight_decay,
        "eps": args.adam_epsilon,
    }
    optimizer = optimizer_cls(generator.parameters(), lr=args.learning_rate, **adam_kwargs)
    if args.fake_score_learning_rate is None:
        args.fake_score_learning_rate = args.learning_rate
    fake_optimizer = None
    if fake_score is not None:
        fake_optimizer = optimizer_cls(fake_score.parameters(), lr=args.fake_score_learning_rate, **adam_kwargs)

    degradation = DegradationConfig(scale=args.upscale_factor)
    if args.degradation_config is not None:
        with open(args.degradation_config) as f:
            degradation = DegradationConfig.from_dict({**json.load(f), "scale": args.upscale_factor})
    train_dataset = VideoClipDataset(
        args.train_data_dir,
        num_frames=args.num_frames,
        resolution=tuple(args.resolution),
        degradation=degradation,
        random_flip=args.random_flip,
        seed=args.seed,
    )
    if train_dataset.num_skipped:
        logger.warning(f"Skipped {train_dataset.num_skipped} clips shorter than {args.num_frames} frames.")
    # The dataset shuffles itself per epoch (reproducibly, also across resumption): keep the loader sequential.
    train_dataloader = torch.utils.data.DataLoader(
        train_dataset,
        batch_size=args.train_batch_size,
        shuffle=False,
        num_workers=args.dataloader_num_workers,
    )

    overrode_max_train_steps = False
    num_update_steps_per_epoch = len(train_dataloader) // batches_per_step(args)
    if num_update_steps_per_epoch == 0:
        raise ValueError(
            f"One optimizer step takes {batches_per_step(args)} batches of {args.train_batch_size} clip(s) "
            "(--gradient_accumulation_steps x (1 + --fake_score_updates in Stage II)), but an epoch has "
            f"{len(train_dataloader)}: add clips or lower these settings."
        )
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * num_update_steps_per_epoch
        overrode_max_train_steps = True
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_train_steps * accelerator.num_processes,
    )

    generator, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        generator, optimizer, train_dataloader, lr_scheduler
    )
    if fake_score is not None:
        fake_lr_scheduler = get_scheduler(
            args.lr_scheduler,
            optimizer=fake_optimizer,
            num_warmup_steps=args.lr_warmup_steps * args.fake_score_updates * accelerator.num_processes,
            num_training_steps=args.max_train_steps * args.fake_score_updates * accelerator.num_processes,
        )
        fake_score, fake_optimizer, fake_lr_scheduler = accelerator.prepare(
            fake_score, fake_optimizer, fake_lr_scheduler
        )

    # Frozen models run in the mixed-precision dtype; trained weights stay in float32.
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    vae.to(accelerator.device, dtype=weight_dtype)
    image_encoder.to(accelerator.device, dtype=weight_dtype)
    if real_score is not None:
        real_score.to(accelerator.device, dtype=weight_dtype)
        prompt_embeds = prompt_embeds.to(accelerator.device)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(accelerator.device)
    if dists is not None:
        dists.to(accelerator.device)

    num_update_steps_per_epoch = len(train_dataloader) // batches_per_step(args)
    if overrode_max_train_steps:
        args.max_train_steps = args.num_train_epochs * num_update_steps_per_epoch
    args.num_train_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)

    if accelerator.is_main_process:
        tracker_config = {
            key: str(value) if isinstance(value, (list, tuple)) else value for key, value in vars(args).items()
        }
        accelerator.init_trackers(args.tracker_project_name, tracker_config)
    validation_clip = load_validation_clip(args, degradation) if args.validation_video is not None else None

    total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Running training *****")
    logger.info(f"  Stage = {args.stage}")
    logger.info(f"  Num clips = {len(train_dataset)}")
    logger.info(f"  Num Epochs = {args.num_train_epochs}")
    logger.info(f"  Instantaneous batch size per device = {args.train_batch_size}")
    logger.info(f"  Total train batch size (w. parallel, distributed & accumulation) = {total_batch_size}")
    logger.info(f"  Gradient Accumulation steps = {args.gradient_accumulation_steps}")
    if fake_score is not None:
        logger.info(f"  Fake-score updates per generator step = {args.fake_score_updates}")
    logger.info(f"  Total optimization steps = {args.max_train_steps}")
    global_step = 0
    first_epoch = 0

    if args.resume_from_checkpoint:
        if args.resume_from_checkpoint != "latest":
            path = os.path.basename(args.resume_from_checkpoint)
        else:
            dirs = [d for d in os.listdir(args.output_dir) if d.startswith("checkpoint")]
            dirs = sorted(dirs, key=lambda x: int(x.split("-")[1]))
            path = dirs[-1] if len(dirs) > 0 else None
        if path is None:
            accelerator.print(
                f"Checkpoint '{args.resume_from_checkpoint}' does not exist. Starting a new training run."
            )
            args.resume_from_checkpoint = None
        else:
            accelerator.print(f"Resuming from checkpoint {path}")
            check_resume_settings(os.path.join(args.output_dir, path), args, accelerator.num_processes)
            accelerator.load_state(os.path.join(args.output_dir, path))
            global_step = int(path.split("-")[1])
            first_epoch = global_step // num_update_steps_per_epoch
    initial_global_step = global_step
    resume_batches = (global_step % num_update_steps_per_epoch) * batches_per_step(args)

    progress_bar = tqdm(
        range(0, args.max_train_steps),
        initial=initial_global_step,
        desc="Steps",
        disable=not accelerator.is_local_main_process,
    )
    latent_window = tuple(size // vae.config.scale_factor_spatial for size in args.decode_window)
    accumulation = args.gradient_accumulation_steps

    def generator_losses(batch, rng) -> dict[str, torch.Tensor]:
        """Pixel supervision of one decoded latent window, plus DMD in Stage II; `"loss"` is their weighted sum."""
        generated, hq = generate(generator, batch, vae, image_encoder, noise_scheduler, args)
        window = random_latent_window(generated.shape[-2:], latent_window, generator=rng)
        decoded = decode_latents(vae, window.crop(generated), args.gradient_checkpointing)
        losses = pixel_losses(
            (decoded.float() + 1) / 2,
            window.crop(hq, vae.config.scale_factor_spatial),
            dists,
            args.mse_weight,
            args.dists_weight,
            args.temporal_weight,
        )
        loss = losses["pixel"]
        if args.stage == 2:
            # DMD over the adjacent chunks of the clip, scored by the full-attention T2V models.
            batch_size = generated.shape[0]
            timesteps, sigmas = sample_noise_levels(
                noise_scheduler, batch_size, args.dmd_min_timestep, args.dmd_max_timestep, rng, generated.device
            )
            noise = torch.randn(generated.shape, generator=rng).to(generated.device)
            negative = None if negative_prompt_embeds is None else negative_prompt_embeds.expand(batch_size, -1, -1)
            losses["dmd"] = distribution_matching_loss(
                generated,
                real_score,
                fake_score,
                noise,
                timesteps,
                sigmas,
                prompt_embeds.expand(batch_size, -1, -1),
                negative,
                args.real_guidance_scale,
            )
            loss = loss + args.dmd_weight * losses["dmd"]
        return {**losses, "loss": loss}

    def fake_score_losses(batch, rng) -> dict[str, torch.Tensor]:
        """The fake score's flow-matching loss on fresh samples of the current generator."""
        with torch.no_grad():
            sample, _ = generate(generator, batch, vae, image_encoder, noise_scheduler, args)
        timesteps, sigmas = sample_noise_levels(
            noise_scheduler, sample.shape[0], args.dmd_min_timestep, args.dmd_max_timestep, rng, sample.device
        )
        noise = torch.randn(sample.shape, generator=rng).to(sample.device)
        embeds = prompt_embeds.expand(sample.shape[0], -1, -1)
        return {"loss": fake_score_loss(fake_score, sample, noise, timesteps, sigmas, embeds)}

    def optimizer_step(model, optimizer, scheduler, batches, first_micro_batch, compute_losses) -> dict:
        """One optimizer step of `model` over micro-batches (gradients synchronized with the last); mean losses."""
        totals = {}
        for index, batch in enumerate(batches):
            rng = micro_batch_rng(args.seed, global_step, first_micro_batch + index, accelerator.process_index)
            with accelerator.no_sync(model) if index < len(batches) - 1 else nullcontext():
                with accelerator.autocast():
                    losses = compute_losses(batch, rng)
                accelerator.backward(losses["loss"] / len(batches))
            for name, value in losses.items():
                totals[name] = totals.get(name, 0) + value.detach().float() / len(batches)
        if args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return totals

    step_start = time.perf_counter()  # throughput includes data loading, as the previous step ends
    for epoch in range(first_epoch, args.num_train_epochs):
        train_dataloader.set_epoch(epoch)
        epoch_dataloader = train_dataloader
        if epoch == first_epoch and resume_batches:
            epoch_dataloader = accelerator.skip_first_batches(train_dataloader, resume_batches)
            epoch_dataloader.set_epoch(epoch)
        for step_batches in group_batches(epoch_dataloader, batches_per_step(args)):
            # The generator first, then `--fake_score_updates` fake-score steps on batches of their own (DMD2).
            losses = optimizer_step(
                generator, optimizer, lr_scheduler, step_batches[:accumulation], 0, generator_losses
            )
            losses.pop("loss")
            if fake_score is not None:
                for update in range(1, args.fake_score_updates + 1):
                    first = update * accumulation
                    fake_losses = optimizer_step(
                        fake_score,
                        fake_optimizer,
                        fake_lr_scheduler,
                        step_batches[first : first + accumulation],
                        first,
                        fake_score_losses,
                    )
                losses["fake_score"] = fake_losses["loss"]  # the last update's
            names = sorted(losses)
            step_losses = accelerator.reduce(torch.stack([losses[name] for name in names]), reduction="mean")
            logs = {f"loss/{name}": value.item() for name, value in zip(names, step_losses)}

            global_step += 1
            progress_bar.update(1)
            num_frames = len(step_batches) * args.train_batch_size * args.num_frames * accelerator.num_processes
            logs["frames_per_second"] = num_frames / (time.perf_counter() - step_start)
            logs["lr"] = lr_scheduler.get_last_lr()[0]
            accelerator.log(logs, step=global_step)
            progress_bar.set_postfix(loss=logs["loss/pixel"], fps=f"{logs['frames_per_second']:.2f}")

            if global_step % args.checkpointing_steps == 0:
                save_path = os.path.join(args.output_dir, f"checkpoint-{global_step}")
                accelerator.save_state(save_path)
                if accelerator.is_main_process:
                    with open(os.path.join(save_path, "train_settings.json"), "w") as f:
                        json.dump(resume_settings(args, accelerator.num_processes), f, indent=2)
                # Prune only once every process has written the new checkpoint: listing the folder earlier could see
                # another process's half-made new checkpoint and delete one checkpoint too many.
                accelerator.wait_for_everyone()
                if accelerator.is_main_process and args.checkpoints_total_limit is not None:
                    checkpoints = [d for d in os.listdir(args.output_dir) if d.startswith("checkpoint")]
                    checkpoints = sorted(checkpoints, key=lambda x: int(x.split("-")[1]))
                    removing = checkpoints[: max(0, len(checkpoints) - args.checkpoints_total_limit)]
                    if removing:
                        logger.info(f"Removing {len(removing)} checkpoints: {', '.join(removing)}")
                    for name in removing:
                        shutil.rmtree(os.path.join(args.output_dir, name))
                logger.info(f"Saved state to {save_path}")

            if (
                validation_clip is not None
                and accelerator.is_main_process
                and global_step % args.validation_steps == 0
            ):
                pipeline = InfVSRPipeline(
                    transformer=unwrap_model(generator),
                    vae=vae,
                    image_encoder=image_encoder,
                    scheduler=noise_scheduler,
                )
                log_validation(pipeline, validation_clip, args, accelerator, global_step)
                del pipeline

            step_start = time.perf_counter()
            if global_step >= args.max_train_steps:
                break
        if global_step >= args.max_train_steps:
            break

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # The final pipeline keeps the source folder's VAE and image encoder in their stored precision.
        pipeline = InfVSRPipeline(
            transformer=unwrap_model(generator),
            vae=AutoencoderKLWan.from_pretrained(args.pretrained_model_name_or_path, subfolder="vae", **source),
            image_encoder=DAPEImageEncoder.from_pretrained(
                args.pretrained_model_name_or_path, subfolder="image_encoder", **source
            ),
            scheduler=noise_scheduler,
        )
        pipeline.save_pretrained(args.output_dir)
        validation_metrics = None
        if validation_clip is not None:
            pipeline.to(accelerator.device)
            validation_metrics = log_validation(pipeline, validation_clip, args, accelerator, global_step)
        save_model_card(args, args.output_dir, accelerator.mixed_precision, validation_metrics)
        if args.push_to_hub:
            upload_folder(
                repo_id=repo_id,
                folder_path=args.output_dir,
                commit_message="End of training",
                ignore_patterns=["step_*", "epoch_*", "checkpoint-*", "logs/*", "validation/*"],
                token=args.hub_token,
            )
    accelerator.end_training()
    return {
        "generator": unwrap_model(generator),
        "fake_score": unwrap_model(fake_score) if fake_score is not None else None,
        "real_score": real_score,
    }


if __name__ == "__main__":
    main(parse_args())
