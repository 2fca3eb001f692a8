"""Where the time goes: per-stage breakdown and operator profile of Mask2FormerDINOv3 (optimised and unoptimised).

For each model in `--models` (see `KINDS`: `unoptimised` = Mask2Former's stock 6-layer pixel decoder on upstream's
decoder units, `mask2former_dinov3.use_upstream_units`; `ours-stock-head` = the same head on the optimised units; `ours` =
the preset as shipped) it measures, with timing hooks (medians over `--repeats`):

* inference (`eval()`, `torch.inference_mode()`, batch `--batch`): backbone, adapter, pixel decoder (its deformable
  encoder separately), transformer decoder, the rest (class head, output assembly), and post-processing
  (`post_process_instance_segmentation` to the input size, outside the model);
* with `--train` (batch `--train-batch`): forward, loss (with its Hungarian matcher and uncertainty point sampling
  separately) and backward;

and, with `--operators N`, the N most expensive operators of one inference forward (`torch.profiler`, self CPU time).
The markdown it prints is what `benchmarks/README.md` shows. Run by hand, e.g.:

    nice -n -5 python benchmarks/profile_model.py --preset dinov3-vits16 --threads 2 --repeats 5 --train --operators 12
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers.utils import logging as hf_logging  # noqa: E402

from benchmarks.benchmark import NUM_LABELS, STOCK_HEAD, synthetic_targets  # noqa: E402
from mask2former_dinov3 import (  # noqa: E402
    Mask2FormerDINOv3Config,
    Mask2FormerDINOv3ForUniversalSegmentation,
    Mask2FormerDINOv3ImageProcessor,
)
from mask2former_dinov3.fast_mask2former import use_upstream_units  # noqa: E402


# Wall-clock by default; `--timer cpu` (process CPU time, for --threads 1) ignores time lost to other jobs.
clock = time.perf_counter


class StageTimer:
    """Accumulates time per named stage (see `clock`), from module hooks and wrapped methods."""

    def __init__(self):
        self.current: dict[str, float] = defaultdict(float)
        self.samples: dict[str, list[float]] = defaultdict(list)
        self._starts: dict[str, float] = {}

    def hook_module(self, name: str, module: torch.nn.Module) -> None:
        """Time every call of `module` under `name`."""

        def pre(*_):
            self._starts[name] = clock()

        def post(*_):
            self.current[name] += clock() - self._starts.pop(name)

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    def wrap_method(self, name: str, owner: object, attribute: str) -> None:
        """Time every call of `owner.attribute` (an instance attribute shadows the method; profiling only)."""
        method = getattr(owner, attribute)

        def timed(*args, **kwargs):
            start = clock()
            try:
                return method(*args, **kwargs)
            finally:
                self.current[name] += clock() - start

        setattr(owner, attribute, timed)

    def add(self, name: str, seconds: float) -> None:
        self.current[name] += seconds

    def commit(self) -> None:
        """Close one repeat: its per-stage totals become one sample each."""
        for name, seconds in self.current.items():
            self.samples[name].append(seconds * 1000)
        self.current = defaultdict(float)

    def medians(self) -> dict[str, float]:
        return {name: statistics.median(values) for name, values in self.samples.items()}


KINDS = {
    "unoptimised": "Mask2Former's 6-layer pixel decoder on upstream's decoder units (the straightforward build)",
    "ours-stock-head": "the same 6-layer head on the optimised units",
    "ours": "the preset as shipped (optimised units, the preset's head defaults)",
}


def build(kind: str, preset: str) -> torch.nn.Module:
    """One of `KINDS` for `preset`, random weights from seed 0."""
    torch.manual_seed(0)
    head = {} if kind == "ours" else dict(STOCK_HEAD)
    config = Mask2FormerDINOv3Config.from_preset(preset, num_labels=NUM_LABELS, **head)
    model = Mask2FormerDINOv3ForUniversalSegmentation(config)
    return use_upstream_units(model) if kind == "unoptimised" else model


def instrument(model: torch.nn.Module) -> StageTimer:
    """Hook the stages of a Mask2FormerDINOv3 model (either path)."""
    timer = StageTimer()
    pixel_level = model.model.pixel_level_module
    timer.hook_module("total forward", model)
    timer.hook_module("backbone", pixel_level.encoder)
    timer.hook_module("adapter", pixel_level.adapter)
    timer.hook_module("pixel decoder", pixel_level.decoder)
    timer.hook_module("of which: deformable encoder", pixel_level.decoder.encoder)
    timer.hook_module("transformer decoder", model.model.transformer_module)
    criterion = model.criterion
    timer.hook_module("loss (all layers)", criterion)
    timer.hook_module("of which: Hungarian matcher", criterion.matcher)
    timer.wrap_method("of which: uncertainty point sampling", criterion, "sample_points_using_uncertainty")
    return timer


def profile_inference(model, timer, pixel_values, processor, repeats: int) -> dict[str, float]:
    """Per-stage medians of `repeats` inference forwards (after one warm-up) plus post-processing."""
    model.eval()
    size = pixel_values.shape[-2:]
    for index in range(repeats + 1):
        with torch.inference_mode():
            outputs = model(pixel_values)
            start = clock()
            processor.post_process_instance_segmentation(outputs, target_sizes=[tuple(size)] * pixel_values.shape[0])
            timer.add("post-processing (instance, outside the model)", clock() - start)
        if index == 0:
            timer.current.clear()
        else:
            timer.commit()
    medians = timer.medians()
    timer.samples.clear()
    accounted = sum(medians.get(k, 0.0) for k in ("backbone", "adapter", "pixel decoder", "transformer decoder"))
    medians["rest (class head, outputs)"] = medians["total forward"] - accounted
    return medians


def profile_training(model, timer, pixel_values, mask_labels, class_labels, repeats: int) -> dict[str, float]:
    """Per-stage medians of `repeats` training steps (forward + loss + backward, after one warm-up)."""
    model.train()
    for index in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(index)
        start = clock()
        loss = model(pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss
        timer.add("forward + loss", clock() - start)
        start = clock()
        loss.backward()
        timer.add("backward", clock() - start)
        if index == 0:
            timer.current.clear()
        else:
            timer.commit()
    medians = timer.medians()
    timer.samples.clear()
    medians["training step"] = medians["forward + loss"] + medians["backward"]
    medians["forward without loss"] = medians["forward + loss"] - medians["loss (all layers)"]
    model.zero_grad(set_to_none=True)
    return medians


def operator_table(model, pixel_values, top: int) -> str:
    """The `top` operators of one inference forward by self CPU time, as markdown."""
    model.eval()
    with torch.inference_mode():
        model(pixel_values)  # warm-up
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model(pixel_values)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    lines = ["| operator | calls | self CPU ms | share |", "|---|---:|---:|---:|"]
    for event in events[:top]:
        share = 100 * event.self_cpu_time_total / total
        lines.append(f"| `{event.key}` | {event.count} | {event.self_cpu_time_total / 1000:.1f} | {share:.1f}% |")
    return "\n".join(lines)


def markdown_table(title: str, columns: dict[str, dict[str, float]], order: list[str]) -> str:
    """Stages as rows, models as columns (ms)."""
    names = list(columns)
    lines = [f"**{title}**", "", "| stage | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for stage in order:
        if any(stage in column for column in columns.values()):
            cells = [f"{columns[n][stage]:.0f}" if stage in columns[n] else "-" for n in names]
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


INFERENCE_ORDER = [
    "backbone",
    "adapter",
    "pixel decoder",
    "of which: deformable encoder",
    "transformer decoder",
    "rest (class head, outputs)",
    "total forward",
    "post-processing (instance, outside the model)",
]
TRAINING_ORDER = [
    "forward without loss",
    "loss (all layers)",
    "of which: Hungarian matcher",
    "of which: uncertainty point sampling",
    "backward",
    "training step",
]


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, profile, print markdown."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="dinov3-vits16")
    parser.add_argument("--models", default=",".join(KINDS), help=f"comma list of {', '.join(KINDS)}")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--operators", type=int, default=0, help="print the N most expensive operators (0: none)")
    parser.add_argument("--timer", choices=["wall", "cpu"], default="wall", help="wall clock or process CPU time")
    args = parser.parse_args(argv)

    global clock
    clock = time.process_time if args.timer == "cpu" else time.perf_counter

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(args.batch, 3, args.size, args.size, generator=generator)
    train_pixels = torch.randn(args.train_batch, 3, args.size, args.size, generator=generator)
    mask_labels, class_labels = synthetic_targets(args.train_batch, args.size)
    processor = Mask2FormerDINOv3ImageProcessor()

    inference, training, operators = {}, {}, {}
    for kind in [k.strip() for k in args.models.split(",")]:
        model = build(kind, args.preset)
        timer = instrument(model)
        inference[kind] = profile_inference(model, timer, pixel_values, processor, args.repeats)
        if args.train:
            training[kind] = profile_training(model, timer, train_pixels, mask_labels, class_labels, args.repeats)
        if args.operators:
            operators[kind] = operator_table(model, pixel_values, args.operators)
        del model

    print(
        f"\n{args.preset}, {args.size}x{args.size}, CPU threads {torch.get_num_threads()}, {args.timer} time, "
        f"median of {args.repeats} (ms)\n"
    )
    print(markdown_table(f"Inference, batch {args.batch}", inference, INFERENCE_ORDER))
    if training:
        print()
        print(markdown_table(f"Training step, batch {args.train_batch}", training, TRAINING_ORDER))
    for kind, table in operators.items():
        print(f"\n**Top operators, inference forward, {kind}**\n\n{table}")


if __name__ == "__main__":
    main()
