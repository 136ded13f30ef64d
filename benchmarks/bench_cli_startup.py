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
How fast `infvsr` answers `--help` and an argument error (both must not import torch or diffusers), as the median wall
time of fresh processes; prints the numbers and saves them with the machine, the command and the commit.

    python benchmarks/bench_cli_startup.py --repeats 7
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


COMMANDS = {
    "help": ["--help"],
    "argument error": ["in.mp4", "-o", "out.mp4", "--model", "m", "--crf", "-5"],
}


def median_seconds(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "cli_startup.json"))
    args = parser.parse_args()

    infvsr = shutil.which("infvsr", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    results = {name: median_seconds([infvsr, *arguments], args.repeats) for name, arguments in COMMANDS.items()}
    results["python -c pass"] = median_seconds([sys.executable, "-c", "pass"], args.repeats)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
        "command": " ".join(sys.argv),
        "commit": commit,
        "median_seconds": results,
    }
    for name, seconds in results.items():
        print(f"{name:>16}: {seconds * 1000:7.1f} ms")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
