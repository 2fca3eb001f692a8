"""Dense microscopy end to end: `run_instance_seg.py` on a StarDist-layout folder of 16-bit frames, 50 vs 2,000 cells.

Issue 24's second "Done when": the fine-tuning script, on a folder of 16-bit 1024x1024 frames with 2,000 cells each,
peaks at most 2.0x the memory of the same run with 50 cells per frame, and its `eval_results.json` holds
`eval_max_detections` >= 2,000. This script generates both folders (`DIR/train/images/NAME.tif` +
`DIR/train/masks/NAME.tif`, `valid/` likewise; uint16 images, uint16 label images, cells as touching-free ellipses
on a jittered grid), runs

    run_instance_seg.py --preset dinov3-vits16 --data_dir DIR --do_train --do_eval --max_steps 2
        --image_height 1024 --image_width 1024 --per_device_train_batch_size 1 --output_dir OUT

for each in its own process, and reports the process's peak resident memory (`ru_maxrss` of the child), its wall
time and what `eval_results.json` says.

    python benchmarks/dense_end_to_end.py --cells 50,2000 --threads 2 --output dense_end_to_end.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cell_frame(cells: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A `(size, size)` uint16 image and its uint16 label image with `cells` ellipses, one per jittered grid cell."""
    side = math.ceil(cells**0.5)
    pitch = size / side
    rows, cols = np.mgrid[0:size, 0:size]
    labels = np.zeros((size, size), np.uint16)
    for k in range(cells):
        row, col = divmod(k, side)
        radius_y, radius_x = rng.uniform(0.25, 0.42, 2) * pitch
        centre_y = (row + 0.5) * pitch + rng.uniform(-0.05, 0.05) * pitch
        centre_x = (col + 0.5) * pitch + rng.uniform(-0.05, 0.05) * pitch
        top, bottom = int(max(0, centre_y - radius_y - 1)), int(min(size, centre_y + radius_y + 2))
        left, right = int(max(0, centre_x - radius_x - 1)), int(min(size, centre_x + radius_x + 2))
        window = (slice(top, bottom), slice(left, right))
        inside = ((rows[window] - centre_y) / radius_y) ** 2 + ((cols[window] - centre_x) / radius_x) ** 2 <= 1
        labels[window][inside] = k + 1
    image = rng.normal(1000, 60, (size, size)) + (labels > 0) * rng.uniform(2500, 3500)
    return np.clip(image, 0, 65535).astype(np.uint16), labels


def write_folder(root: str, cells: int, size: int, frames: dict[str, int], seed: int = 0) -> None:
    """A StarDist-layout folder: `frames` maps split folder -> number of frames."""
    import tifffile

    rng = np.random.default_rng(seed)
    for split, count in frames.items():
        for kind in ("images", "masks"):
            os.makedirs(os.path.join(root, split, kind), exist_ok=True)
        for index in range(count):
            image, labels = cell_frame(cells, size, rng)
            tifffile.imwrite(os.path.join(root, split, "images", f"frame{index:02d}.tif"), image)
            tifffile.imwrite(os.path.join(root, split, "masks", f"frame{index:02d}.tif"), labels)


def run(cells: int, args, workdir: str) -> dict:
    """One fine-tuning run in its own process; its peak memory, time and evaluation results."""
    data_dir, output_dir = os.path.join(workdir, f"cells{cells}"), os.path.join(workdir, f"out{cells}")
    write_folder(data_dir, cells, args.size, {"train": args.train_frames, "valid": args.valid_frames})
    command = [sys.executable, os.path.join(REPO_ROOT, "run_instance_seg.py"), "--preset", "dinov3-vits16",
               "--data_dir", data_dir, "--do_train", "--do_eval", "--max_steps", "2", "--image_height", str(args.size),
               "--image_width", str(args.size), "--per_device_train_batch_size", "1", "--per_device_eval_batch_size",
               "1", "--output_dir", output_dir, "--report_to", "none", "--num_overlay_images", "1",
               "--dataloader_num_workers", "0"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    # A wrapper process per run: RUSAGE_CHILDREN then holds this run's peak only.
    wrapper = ("import resource, subprocess, sys, json; done = subprocess.run(sys.argv[1:]); "
               "print(json.dumps({'rc': done.returncode, "
               "'peak_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")  # fmt: skip
    start = time.time()
    done = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True, env=env)
    wall = time.time() - start
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    result = {"cells": cells, "queries": math.ceil(1.25 * cells), "peak_mb": round(measured["peak_mb"]),
              "wall_s": round(wall), "returncode": measured["rc"]}  # fmt: skip
    results_file = os.path.join(output_dir, "eval_results.json")
    if measured["rc"] != 0 or not os.path.isfile(results_file):
        result["stderr_tail"] = done.stderr.strip()[-600:]
        return result
    with open(results_file) as handle:
        evaluation = json.load(handle)
    result.update({k: evaluation.get(f"eval_{k}") for k in ("max_detections", "map", "num_images")})
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    """Run each cell count, print the table and the ratio to the first, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default="50,2000")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--train_frames", type=int, default=2)
    parser.add_argument("--valid_frames", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", help="keep the generated folders and runs here (default: a temporary folder)")
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        workdir = args.workdir or temporary
        results = []
        for cells in (int(c) for c in args.cells.split(",")):
            results.append(run(cells, args, workdir))
            print(json.dumps(results[-1]), flush=True)
    base = results[0]["peak_mb"]
    print(f"\n{args.size}x{args.size} 16-bit frames, dinov3-vits16, 2 training steps + evaluation, {args.threads} threads")
    print(f"{'cells':>6s} {'queries':>7s} {'peak MB':>8s} {'/ first':>7s} {'wall s':>7s} {'max det.':>8s} {'mAP':>6s}")
    for r in results:
        print(f"{r['cells']:6d} {r['queries']:7d} {r['peak_mb']:8d} {r['peak_mb'] / base:7.2f} {r['wall_s']:7d} "
              f"{str(r.get('max_detections')):>8s} {str(r.get('map')):>6s}")  # fmt: skip
    if args.output:
        with open(args.output, "w") as handle:
            json.dump({"settings": vars(args), "results": results}, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
