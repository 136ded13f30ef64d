"""One process of `infvsr --context-parallel` on CPU (gloo), counting its Ulysses all-to-all exchanges and the
checkpoints it saves.

    python -m torch.distributed.run --nproc_per_node 2 cli_context_parallel_worker.py REPORT_FOLDER INFVSR_ARGUMENTS...

Writes `rank-R.json` (exit status and counts) into REPORT_FOLDER.
"""

import json
import os
import sys
from pathlib import Path

import torch
from diffusers.models import attention_dispatch

from diffusers_infvsr.cli import main
from diffusers_infvsr.video.jobs import JobFolder


# diffusers 0.42.1 picks each rank's device as `rank % torch.accelerator.device_count()`, which divides by zero on a
# machine without an accelerator (`ModelMixin._resolve_parallel_config`); `infvsr` refuses that case with an error
# line. One "device", the CPU, is the truth here.
torch.accelerator.device_count = lambda: 1
torch.set_num_threads(1)

counts = {"all_to_all": 0, "checkpoints": 0}


def counted(name, function):
    def call(*args, **kwargs):
        counts[name] += 1
        return function(*args, **kwargs)

    return call


attention_dispatch._all_to_all_single = counted("all_to_all", attention_dispatch._all_to_all_single)
JobFolder.save_checkpoint = counted("checkpoints", JobFolder.save_checkpoint)

if __name__ == "__main__":
    code = main(sys.argv[2:])
    report = {"exit": code, **counts}
    Path(sys.argv[1], f"rank-{os.environ['RANK']}.json").write_text(json.dumps(report))
    sys.exit(code)
