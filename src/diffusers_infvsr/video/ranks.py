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
"""Sharing the work of one command among the processes of a `torchrun` or `accelerate launch` run.

The launcher sets `WORLD_SIZE`, `RANK` and `LOCAL_RANK`; `accelerate.PartialState` joins its process group (gloo on
CPU, nccl on GPU) and picks this process's device. Work is divided without talking (every process computes the same
plan); the only collective is the exchange of results at the end, on a gloo group with no practical time limit, so a
process that finishes early waits for the slowest one.

```py
>>> assign_largest_first([5, 1, 4, 3], 2)  # sizes of four jobs, two processes
[[0, 1], [2, 3]]
```
"""

import os
from datetime import timedelta


RESULTS_TIMEOUT = timedelta(days=365)


def launched_processes() -> int:
    """How many processes the launcher started (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def assign_largest_first(sizes: list[int], num_ranks: int) -> list[list[int]]:
    """Job indices per rank: the largest job first goes to the rank with the least work so far (ties: the lower rank).
    Each rank's indices are in their original order."""
    loads, shares = [0] * num_ranks, [[] for _ in range(num_ranks)]
    for index in sorted(range(len(sizes)), key=lambda index: (-sizes[index], index)):
        rank = min(range(num_ranks), key=lambda rank: (loads[rank], rank))
        shares[rank].append(index)
        loads[rank] += sizes[index]
    return [sorted(share) for share in shares]


class Ranks:
    """This process's place among the launched ones: `rank`, `num_ranks` and `device` (None without a launcher, which
    leaves the device to the command). `cpu=True` joins over gloo and runs on the CPU even where GPUs are present.
    `share_work=False` makes this process work alone, as without a launcher (under context parallelism the processes
    run one stream together instead of sharing jobs). Use as a context manager: on a normal exit every process waits
    for the others (so the launcher, which stops the rest when one exits with an error, cannot cut off the first
    process's summary), then leaves the process group."""

    def __init__(self, cpu: bool = False, share_work: bool = True):
        self.num_ranks = launched_processes() if share_work else 1
        self.rank, self.device, self._state, self._results = 0, None, None, None
        if self.num_ranks > 1:
            import torch.distributed
            from accelerate import PartialState

            self._state = PartialState(cpu=cpu)
            self.rank, self.device = self._state.process_index, self._state.device
            self._results = torch.distributed.new_group(backend="gloo", timeout=RESULTS_TIMEOUT)

    def share(self, sizes: list[int]) -> list[int]:
        """The indices of the jobs this rank runs."""
        return assign_largest_first(sizes, self.num_ranks)[self.rank]

    def gather(self, result) -> list:
        """Every rank's `result` (any picklable object), in rank order, on every rank."""
        if self._results is None:
            return [result]
        import torch.distributed

        results = [None] * self.num_ranks
        torch.distributed.all_gather_object(results, result, group=self._results)
        return results

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc_info):
        if self._state is None:
            return
        if exc_type is None:
            import torch.distributed

            torch.distributed.barrier(group=self._results)
        self._state.destroy_process_group()
