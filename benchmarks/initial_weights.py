"""Save the weights `learning.py` models start from, and the RNG state right after building them, from any checkout.

Pairs learning runs across versions: the same starting point and the same later random draws, so that what differs is
only the code that trains. For example, against 0.2.0:

    git worktree add --detach /tmp/v020 2e4e4d6    # the 0.2.0 commit
    python benchmarks/initial_weights.py --checkout /tmp/v020 --models ours-vit --seeds 0 1 2 3 4 --output /tmp/init
    python benchmarks/learning.py --models ours-vit --seeds 0 1 2 3 4 --initial_weights /tmp/init

The checkout's own `benchmarks/learning.py` builds the models (its `Settings` defaults, its `build_model`), and its own
package is imported, so this script runs unchanged against older versions.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import torch
from safetensors.torch import save_file


HERE = os.path.dirname(os.path.abspath(__file__))


def load_learning_module(checkout: str):
    """`benchmarks/learning.py` of `checkout`, importing that checkout's `mask2former_dinov3`."""
    sys.path.insert(0, os.path.abspath(checkout))
    path = os.path.join(checkout, "benchmarks", "learning.py")
    spec = importlib.util.spec_from_file_location("learning_of_checkout", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> None:
    """Write `<output>/<model>-seed<seed>.safetensors` for each model and seed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkout", default=os.path.dirname(HERE), help="repository root whose code builds the models"
    )
    parser.add_argument("--models", nargs="+", default=["ours-vit"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    learning = load_learning_module(args.checkout)
    os.makedirs(args.output, exist_ok=True)
    settings = learning.Settings()
    for name in args.models:
        for seed in args.seeds:
            torch.manual_seed(seed)
            model = learning.build_model(name, settings)
            tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
            tensors[RNG_STATE_KEY] = torch.get_rng_state()
            path = os.path.join(args.output, f"{name}-seed{seed}.safetensors")
            save_file(tensors, path)
            print(f"{path}: {len(tensors) - 1} tensors")


# learning.py's names for the key and the files. Not imported from it: that would import this checkout's package
# before the other checkout's.
RNG_STATE_KEY = "__torch_rng_state_after_build__"

if __name__ == "__main__":
    main()
