"""Streams `--chunks` chunks through WanVAEStream and CausalWanTransformer3DModel; prints RSS before the loop and the peak RSS, in KiB."""

import argparse
import resource

import torch
from diffusers import AutoencoderKLWan

from diffusers_infvsr import CausalWanKVCache, CausalWanTransformer3DModel
from diffusers_infvsr.vae_stream import WanVAEStream


def current_rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() // 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, required=True)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()
    # Wide and deep enough that a cache which kept growing would show: 0.75 MiB of keys and values per latent frame.
    transformer = CausalWanTransformer3DModel(
        num_attention_heads=2, attention_head_dim=128, text_dim=16, freq_dim=32, ffn_dim=64, num_layers=6
    ).eval()
    stream, cache = WanVAEStream(vae), CausalWanKVCache(cache_frames=3)
    context, timestep = torch.randn(1, 4, 16), torch.tensor([400.0])
    baseline_kib = current_rss_kib()
    with torch.no_grad():
        for index in range(args.chunks):
            frames = torch.rand(1, 3, 9 if index == 0 else 12, args.size, args.size) * 2 - 1
            latents = stream.encode(frames)
            velocity, cache = transformer(latents, timestep, context, kv_cache=cache, return_dict=False)
            stream.decode(latents - 0.4 * velocity)
    print(baseline_kib, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


if __name__ == "__main__":
    main()
