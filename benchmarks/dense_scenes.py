"""Dense scenes: the cost of one training step when each image holds hundreds of instances.

One training step (forward with labels + loss + backward) of the `dinov3-vits16` preset with 300 queries on 2 images
of 512x512, for three cases, each in its own process (so that its peak memory is its own):

    dense            200 instances per image, the package's fast units
    sparse           5 instances per image, the same model
    dense-upstream   200 instances per image, upstream's own units (`mask2former_units="upstream"`)

It reports the median CPU time of `--repeats` steps (after one warm-up), the share of the loss, of the Hungarian
matcher and of the uncertainty point sampling inside it, and the peak resident memory of the step above the
process's memory before the first step (`ru_maxrss`). Random weights and random non-overlapping masks.

    python benchmarks/dense_scenes.py --threads 1 --repeats 3 --output dense.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

CASES = {
    "dense": {"instances": 200, "units": "fast"},
    "sparse": {"instances": 5, "units": "fast"},
    "dense-upstream": {"instances": 200, "units": "upstream"},
}


def random_instances(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """`count` disjoint rectangular instances on a grid of cells (each instance inside its own cell)."""
    side = int(count**0.5 + 0.999)
    cell = size // side
    masks = torch.zeros(count, size, size)
    for k in range(count):
        row, col = divmod(k, side)
        h, w = torch.randint(cell // 3, cell, (2,), generator=generator).tolist()
        masks[k, row * cell : row * cell + h, col * cell : col * cell + w] = 1.0
    return masks


def run_case(name: str, args) -> dict:
    """Time `args.repeats` steps of one case in this process (see the module docstring)."""
    from profile_model import StageTimer

    import profile_model
    from mask2former_dinov3 import Mask2FormerDINOv3Config, Mask2FormerDINOv3ForUniversalSegmentation

    torch.set_num_threads(args.threads)
    profile_model.clock = time.process_time if args.timer == "cpu" else time.perf_counter
    case = CASES[name]
    torch.manual_seed(0)
    config = Mask2FormerDINOv3Config.from_preset(
        "dinov3-vits16", num_labels=10, num_queries=args.queries, mask2former_units=case["units"]
    )
    model = Mask2FormerDINOv3ForUniversalSegmentation(config).train()
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(2, 3, args.size, args.size, generator=generator)
    mask_labels = [random_instances(case["instances"], args.size, generator) for _ in range(2)]
    class_labels = [torch.randint(0, 10, (case["instances"],), generator=generator) for _ in range(2)]
    timer = StageTimer()
    timer.hook_module("loss", model.criterion)
    timer.hook_module("matcher", model.criterion.matcher)
    timer.wrap_method("point sampling", model.criterion, "sample_points_using_uncertainty")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    steps = []
    for repeat in range(args.repeats + 1):
        model.zero_grad(set_to_none=True)
        start = profile_model.clock()
        model(pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss.backward()
        elapsed = (profile_model.clock() - start) * 1000
        if repeat:  # the first step is a warm-up
            steps.append(elapsed)
            timer.commit()
        else:
            timer.current.clear()
    stages = timer.medians()
    return {
        "case": name,
        **case,
        "step_ms": statistics.median(steps),
        "step_samples_ms": [round(s) for s in steps],
        "loss_ms": stages.get("loss", 0.0),
        "matcher_ms": stages.get("matcher", 0.0),
        "point_sampling_ms": stages.get("point sampling", 0.0),
        "peak_memory_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
    }


def main(argv: list[str] | None = None) -> dict:
    """Run every case in its own process and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timer", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--output")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print its JSON
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return {}
    results = {}
    for name in args.cases.split(","):
        command = [sys.executable, __file__, "--case", name, "--threads", str(args.threads), "--timer", args.timer,
                   "--repeats", str(args.repeats), "--size", str(args.size), "--queries", str(args.queries)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name}: {results[name]['step_ms']:.0f} ms", flush=True)
    print(f"\n{args.size}x{args.size}, batch 2, {args.queries} queries, dinov3-vits16 preset, {args.threads} thread(s), "
          f"{args.timer} time, median of {args.repeats}")  # fmt: skip
    print(f"{'case':16s} {'inst.':>5s} {'step':>9s} {'loss':>9s} {'matcher':>9s} {'sampling':>9s} {'peak MB':>8s}")
    for name, r in results.items():
        print(f"{name:16s} {r['instances']:5d} {r['step_ms']:8.0f}m {r['loss_ms']:8.0f}m {r['matcher_ms']:8.0f}m "
              f"{r['point_sampling_ms']:8.0f}m {r['peak_memory_mb']:8.0f}")  # fmt: skip
    if "dense" in results and "sparse" in results:
        print(f"dense / sparse step: {results['dense']['step_ms'] / results['sparse']['step_ms']:.2f}x (target <= 1.5x)")
    if "dense" in results and "dense-upstream" in results:
        d, u = results["dense"], results["dense-upstream"]
        print(f"dense, fast / upstream units: time {d['step_ms'] / u['step_ms']:.2f}x, "
              f"peak memory {d['peak_memory_mb'] / max(u['peak_memory_mb'], 1):.2f}x (target < 1 for both)")
    if args.output:
        with open(args.output, "w") as handle:
            json.dump({"settings": vars(args), "results": results}, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
