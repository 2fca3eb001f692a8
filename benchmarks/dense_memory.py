"""Dense microscopy scenes: peak memory and CPU time of one training step as the instance count grows.

One training step (forward with labels, loss, backward) of the `dinov3-vits16` preset at 1024x1024, batch 1, with
queries = ceil(1.25 x instances) (the fine-tuning script's own rule), for 50, 200, 500, 1,000 and 2,000 instances.
Each case runs in its own process, so its peak is its own. Reported per case: the peak resident memory of the step
above the resident memory after building the model and its inputs (the kernel's peak counter is reset just before
the step), and the CPU time of the step.

    ours      the package's units, boolean mask labels (what `data.py` hands the model)
    upstream  upstream's units (`mask2former_units="upstream"`), float32 mask labels: upstream's loss samples the
              targets with `grid_sample`, which takes no bool

Upstream's cases whose predicted peak (from issue 24's measurements: about 14 MB per instance plus its float32
labels, 4 MB per instance) exceeds `--memory_limit_gb` are not started and are reported as skipped. Random weights,
random disjoint rectangles as instances.

    python benchmarks/dense_memory.py --threads 1 --output dense_memory.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import torch


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

INSTANCES = (50, 200, 500, 1000, 2000)
UNITS = ("ours", "upstream")


def predicted_upstream_gb(instances: int, size: int) -> float:
    """Upstream's step plus its float32 labels, extrapolated from issue 24's table (1024 px: 5.5 GB at 50
    instances, 14.7 GB at 500), scaled by the pixel count for other sizes."""
    scale = (size / 1024) ** 2
    return (5.5 + (instances - 50) * 0.0204 + instances * 0.0042) * scale


def disjoint_rectangles(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """`(count, size, size)` bool masks: each instance a random rectangle inside its own cell of a square grid."""
    side = math.ceil(count**0.5)
    cell = size // side
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    for k in range(count):
        row, col = divmod(k, side)
        height, width = torch.randint(max(1, cell // 3), max(2, cell), (2,), generator=generator).tolist()
        masks[k, row * cell : row * cell + height, col * cell : col * cell + width] = True
    return masks


def resident_mb() -> float:
    """Current resident memory of this process (VmRSS)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_mb() -> float:
    """Peak resident memory of this process (VmHWM, or ru_maxrss)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux `clear_refs` 5); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def run_case(units: str, instances: int, args) -> dict:
    """One training step of one case, in this process."""
    from mask2former_dinov3 import Mask2FormerDINOv3Config, Mask2FormerDINOv3ForUniversalSegmentation

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    queries = math.ceil(1.25 * instances)
    config = Mask2FormerDINOv3Config.from_preset(
        "dinov3-vits16", num_labels=1, num_queries=queries, mask2former_units="fast" if units == "ours" else "upstream"
    )
    model = Mask2FormerDINOv3ForUniversalSegmentation(config).train()
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, 3, args.size, args.size, generator=generator)
    masks = disjoint_rectangles(instances, args.size, generator)
    mask_labels = [masks if units == "ours" else masks.float()]
    class_labels = [torch.zeros(instances, dtype=torch.int64)]
    del masks
    before = resident_mb()
    exact_peak = reset_peak()
    if not exact_peak:
        before = max(before, peak_mb())
    start = time.process_time()
    model(pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss.backward()
    cpu_seconds = time.process_time() - start
    return {
        "units": units,
        "instances": instances,
        "queries": queries,
        "labels": str(mask_labels[0].dtype).replace("torch.", ""),
        "peak_above_inputs_mb": round(peak_mb() - before),
        "step_cpu_s": round(cpu_seconds, 1),
        "peak_counter_reset": exact_peak,
    }


def main(argv: list[str] | None = None) -> dict:
    """Run every case in its own process, print the table and optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--instances", default=",".join(map(str, INSTANCES)))
    parser.add_argument("--units", default=",".join(UNITS))
    parser.add_argument("--memory_limit_gb", type=float, default=8.0, help="skip upstream cases predicted above this")
    parser.add_argument("--output")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: "UNITS:INSTANCES", print its JSON
    args = parser.parse_args(argv)
    if args.case:
        units, instances = args.case.split(":")
        print(json.dumps(run_case(units, int(instances), args)))
        return {}
    results = []
    for instances in (int(n) for n in args.instances.split(",")):
        for units in args.units.split(","):
            if units == "upstream" and predicted_upstream_gb(instances, args.size) > args.memory_limit_gb:
                predicted = predicted_upstream_gb(instances, args.size)
                results.append({"units": units, "instances": instances, "skipped": f"predicted {predicted:.1f} GB"})
                print(f"{units} {instances}: skipped (predicted {predicted:.1f} GB > {args.memory_limit_gb} GB)")
                continue
            command = [sys.executable, __file__, "--case", f"{units}:{instances}", "--threads", str(args.threads),
                       "--size", str(args.size)]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                results.append({"units": units, "instances": instances, "failed": done.stderr.strip()[-300:]})
                print(f"{units} {instances}: failed ({done.returncode})", flush=True)
                continue
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            r = results[-1]
            print(f"{units} {instances}: {r['peak_above_inputs_mb']} MB, {r['step_cpu_s']} s", flush=True)
    print(f"\n{args.size}x{args.size}, batch 1, dinov3-vits16, queries = ceil(1.25 x instances), "
          f"{args.threads} thread(s)")  # fmt: skip
    print(f"{'units':9s} {'inst.':>6s} {'queries':>7s} {'labels':>8s} {'peak MB':>8s} {'CPU s':>7s}")
    for r in results:
        if "peak_above_inputs_mb" in r:
            print(f"{r['units']:9s} {r['instances']:6d} {r['queries']:7d} {r['labels']:>8s} "
                  f"{r['peak_above_inputs_mb']:8d} {r['step_cpu_s']:7.1f}")  # fmt: skip
        else:
            print(f"{r['units']:9s} {r['instances']:6d}  {r.get('skipped') or 'failed'}")
    ours = {r["instances"]: r for r in results if r["units"] == "ours" and "peak_above_inputs_mb" in r}
    if 50 in ours and len(ours) > 1:
        base = ours[50]
        for n, r in sorted(ours.items()):
            print(f"ours {n} / 50: memory {r['peak_above_inputs_mb'] / base['peak_above_inputs_mb']:.2f}x, "
                  f"CPU {r['step_cpu_s'] / base['step_cpu_s']:.2f}x")
    if args.output:
        with open(args.output, "w") as handle:
            json.dump({"settings": {k: v for k, v in vars(args).items() if k != "case"}, "results": results}, handle,
                      indent=2)  # fmt: skip
    return {"results": results}


if __name__ == "__main__":
    main()
