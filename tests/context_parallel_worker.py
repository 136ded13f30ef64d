"""Streams a tiny causal transformer under diffusers' context parallelism on 2 gloo (CPU) processes.

    python context_parallel_worker.py OUTPUT.pt PORT

Saves, for several cache lengths, the single-process output of 4 chunks and the Ulysses- and ring-parallel outputs,
as computed on rank 0.
"""

import contextlib
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from diffusers.models import attention_dispatch


sys.path.insert(0, os.path.dirname(__file__))

CACHE_FRAMES = (2, 3, 5)  # shorter than, equal to and longer than a chunk of 3 latent frames


def math_attention_with_lse(
    ctx,
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    enable_gqa=False,
    return_lse=False,
    _save_ctx=True,
    _parallel_config=None,
):
    """
    Softmax attention of `(batch, tokens, heads, head_dim)` tensors, written out, returning the log-sum-exp of the
    scores `(batch, query tokens, heads)` as diffusers' ring attention expects from a forward op.
    """
    assert attn_mask is None and dropout_p == 0.0 and not is_causal and not enable_gqa
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.einsum("bqhd,bkhd->bhqk", query, key) * scale
    lse = scores.logsumexp(dim=-1, keepdim=True)
    out = torch.einsum("bhqk,bkhd->bqhd", (scores - lse).exp(), value)
    lse = lse.squeeze(-1).transpose(1, 2)
    return (out, lse) if return_lse else out


@contextlib.contextmanager
def native_backend_returning_lse():
    """
    Ring attention merges the partial attentions over each rank's keys by their log-sum-exp. diffusers' native
    backend, the only context-parallel backend that runs on CPU, raises "Native attention does not support
    return_lse=True", and no CPU kernel returns it (flash and memory-efficient SDPA are GPU-only), so for the ring
    run only, the native backend's forward op is this test's exact math attention.
    """
    native_forward_op = attention_dispatch._native_attention_forward_op
    attention_dispatch._native_attention_forward_op = math_attention_with_lse
    try:
        yield
    finally:
        attention_dispatch._native_attention_forward_op = native_forward_op


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
    torch.manual_seed(0)
    state_dict = CausalWanTransformer3DModel(**TINY_TRANSFORMER_CONFIG).state_dict()
    results = {}
    with torch.no_grad():
        for name, config, backend in (
            ("single", None, contextlib.nullcontext()),
            ("ulysses", ContextParallelConfig(ulysses_degree=2), contextlib.nullcontext()),
            ("ring", ContextParallelConfig(ring_degree=2), native_backend_returning_lse()),
        ):
            model = CausalWanTransformer3DModel(**TINY_TRANSFORMER_CONFIG).eval()
            model.load_state_dict(state_dict)
            if config is not None:
                model.enable_parallelism(config=config)
            with backend:
                results[name] = {frames: streamed(model, latents, context, frames) for frames in CACHE_FRAMES}
    if rank == 0:
        torch.save(results, output)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(2, sys.argv[1], sys.argv[2]), nprocs=2)
