"""Runs examples/train_infvsr.py under a launcher (torchrun / accelerate launch) and saves this rank's trained weights
to `<output_dir>/rank<RANK>.safetensors`, so a test can compare the processes."""

import os
import sys

from conftest import load_script
from safetensors.torch import save_file


def main():
    script = load_script("examples/train_infvsr.py")
    args = script.parse_args(sys.argv[1:])
    models = script.main(args)
    tensors = {
        f"{name}.{key}": value.contiguous()
        for name in ("generator", "fake_score")
        if models[name] is not None
        for key, value in models[name].state_dict().items()
    }
    save_file(tensors, os.path.join(args.output_dir, f"rank{os.environ.get('RANK', '0')}.safetensors"))


if __name__ == "__main__":
    main()
