"""Streams a tiny causal transformer under diffusers' context parallelism on 2 gloo (CPU) processes.

    python context_parallel_worker.py OUTPUT.pt PORT

Saves, for several cache lengths, the single-process and the Ulysses-parallel outputs of 4 chunks, as computed on
rank 0. (Ring attention needs the attention's log-sum-exp, which diffusers' native backend, the only one that runs on
CPU, does not return: "Native attention does not support return_lse=True".)
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


sys.path.insert(0, os.path.dirname(__file__))


def streamed(model, latents, context, cache_frames):
    from diffusers_infvsr import CausalWanKVCache

    cache, outputs = CausalWanKVCache(cache_frames), []
    for start in range(0, latents.shape[2], 3):
        output = model(latents[:, :, start : start + 3], torch.tensor([400.0]), context, kv_cache=cache)
        outputs.append(output.sample)
        cache = output.kv_cache
    return torch.cat(outputs, dim=2), cache.num_frames


def run(rank: int, world_size: int, output: str, port: str) -> None:
    from conftest import TINY_TRANSFORMER_CONFIG
    from diffusers import ContextParallelConfig

    from diffusers_infvsr import CausalWanTransformer3DModel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    # diffusers 0.42.1 picks the parallel device as `rank % torch.accelerator.device_count()`, which divides by zero
    # on a machine without an accelerator (`ModelMixin._resolve_parallel_config`). One "device", the CPU, is the truth.
    torch.accelerator.device_count = lambda: 1
    torch.set_num_threads(1)

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 12, 4, 6, generator=generator)  # 4 chunks of 3 latent frames, 6 tokens per frame
    context = torch.randn(1, 5, TINY_TRANSFORMER_CONFIG["text_dim"], generator=generator)
    results = {}
    for name, config in (("ulysses", {"ulysses_degree": 2}),):
        torch.manual_seed(0)
        model = CausalWanTransformer3DModel(**TINY_TRANSFORMER_CONFIG).eval()
        with torch.no_grad():
            single = {frames: streamed(model, latents, context, frames) for frames in (2, 3, 5)}
            model.enable_parallelism(config=ContextParallelConfig(**config))
            parallel = {frames: streamed(model, latents, context, frames) for frames in (2, 3, 5)}
        results[name] = {"single": single, "parallel": parallel}
    if rank == 0:
        torch.save(results, output)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(2, sys.argv[1], sys.argv[2]), nprocs=2)
