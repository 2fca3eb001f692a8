"""Speed benchmark: Mask2FormerDINOv3 against upstream Mask2Former (Swin-T, naive DINOv3 ViT-S) and EoMT-DINOv3.

Measures, in ONE process and interleaved round-robin (so that every model sees the same machine noise):

* forward latency (inference: `eval()`, `torch.inference_mode()`), batch `--batch`;
* with `--train`, one training step: forward with labels + loss + backward, batch `--train-batch`;

for the models named in `--models` (default: all of `MODELS`), with random weights. It prints parameters, median
times, ratios against EoMT-DINOv3 ViT-S and against upstream Mask2Former + Swin-T, the mask resolution, and the head
cost (full model minus the DINOv3 backbone alone) of the ViT presets; `--output` writes the same as JSON.

Run it by hand, never as a test (times are meaningless under a loaded machine). Example (the README's table):

    nice -n -5 python benchmarks/benchmark.py --threads 2 --repeats 7 --train --output benchmarks/results_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import (  # noqa: E402
    AutoBackbone,
    DINOv3ViTConfig,
    EomtDinov3Config,
    EomtDinov3ForUniversalSegmentation,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    SwinConfig,
)
from transformers.utils import logging as hf_logging  # noqa: E402

from mask2former_dinov3 import Mask2FormerDINOv3Config, Mask2FormerDINOv3ForUniversalSegmentation  # noqa: E402
from mask2former_dinov3.fast_mask2former import FAST_UNITS, use_upstream_units  # noqa: E402


NUM_LABELS = 80  # COCO-sized class head for every model (its cost is negligible either way)
# The ViT-S/16 architecture shared by our preset, the naive upstream build and EoMT (see dinov3_facts.md).
VITS16 = dict(
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    intermediate_size=1536,
    num_register_tokens=4,
    patch_size=16,
    rope_theta=100.0,
    layer_norm_eps=1e-5,
    key_bias=False,
)


@dataclass
class Entry:
    """One benchmarked model: how to build it and how to call it."""

    name: str
    description: str
    build: Callable[[int], torch.nn.Module]  # image size -> model
    kind: str  # "segmentation" (takes mask_labels / class_labels) or "backbone"
    model: torch.nn.Module | None = None
    forward_ms: list[float] = field(default_factory=list)
    train_ms: list[float] = field(default_factory=list)
    params: int = 0
    mask_resolution: str | None = None


# Mask2Former's own pixel-decoder depth; the small ViT presets default to 3 (see benchmarks/README.md).
STOCK_HEAD = {"encoder_layers": 6}


def _ours(preset: str, **head) -> Callable[[int], torch.nn.Module]:
    def build(size: int) -> torch.nn.Module:
        return Mask2FormerDINOv3ForUniversalSegmentation(
            Mask2FormerDINOv3Config.from_preset(preset, num_labels=NUM_LABELS, **head)
        )

    return build


def _ours_reference(preset: str, **head) -> Callable[[int], torch.nn.Module]:
    """The straightforward build: upstream's decoder units (`use_upstream_units`: upstream's own classes, same weights)."""

    def build(size: int) -> torch.nn.Module:
        return use_upstream_units(_ours(preset, **head)(size))

    return build


def _backbone(preset: str) -> Callable[[int], torch.nn.Module]:
    def build(size: int) -> torch.nn.Module:
        # Same architecture and tapped layers as the preset's backbone (norm applied to the tapped layers).
        return AutoBackbone.from_config(Mask2FormerDINOv3Config.from_preset(preset).backbone_config)

    return build


def _swin_tiny(size: int) -> torch.nn.Module:
    swin = SwinConfig(
        embed_dim=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return Mask2FormerForUniversalSegmentation(Mask2FormerConfig(backbone_config=swin, num_labels=NUM_LABELS))


def _naive_vits16(size: int) -> torch.nn.Module:
    vit = DINOv3ViTConfig(**VITS16, out_indices=[3, 6, 9, 12])
    return Mask2FormerForUniversalSegmentation(Mask2FormerConfig(backbone_config=vit, num_labels=NUM_LABELS))


def _eomt_vits16(masked_inference: bool) -> Callable[[int], torch.nn.Module]:
    def build(size: int) -> torch.nn.Module:
        config = EomtDinov3Config(
            hidden_size=384,
            num_hidden_layers=12,
            num_attention_heads=6,
            intermediate_size=1536,
            num_register_tokens=4,
            image_size=size,
            num_labels=NUM_LABELS,
        )
        model = EomtDinov3ForUniversalSegmentation(config)
        if not masked_inference:
            # A trained EoMT has annealed its mask probabilities to 0: inference then skips the masked attention and
            # the intermediate mask predictions of its last blocks (training still does them).
            model.attn_mask_probs.zero_()
        return model

    return build


MODELS: dict[str, tuple[str, Callable[[int], torch.nn.Module], str]] = {
    "ours-vits16": ("Mask2FormerDINOv3, preset dinov3-vits16 (its defaults)", _ours("dinov3-vits16"), "segmentation"),
    "ours-vits16-plain-pyramid": (
        "Mask2FormerDINOv3 dinov3-vits16 without the adapter's spatial prior (adapter_spatial_prior=False)",
        _ours("dinov3-vits16", adapter_spatial_prior=False),
        "segmentation",
    ),
    "ours-vits16-stock-head": (
        "Mask2FormerDINOv3 dinov3-vits16 with Mask2Former's 6-layer pixel decoder",
        _ours("dinov3-vits16", **STOCK_HEAD),
        "segmentation",
    ),
    "ours-vits16-unoptimised": (
        "dinov3-vits16, 6-layer pixel decoder, upstream's decoder units (the straightforward build)",
        _ours_reference("dinov3-vits16", **STOCK_HEAD),
        "segmentation",
    ),
    "ours-convnext-tiny": (
        "Mask2FormerDINOv3, preset dinov3-convnext-tiny",
        _ours("dinov3-convnext-tiny"),
        "segmentation",
    ),
    "swin-tiny": ("upstream Mask2Former + Swin-T", _swin_tiny, "segmentation"),
    "naive-vits16": ("upstream Mask2Former + DINOv3 ViT-S/16 (out_indices 3,6,9,12)", _naive_vits16, "segmentation"),
    "eomt-vits16": ("upstream EoMT-DINOv3 ViT-S/16 (default config)", _eomt_vits16(True), "segmentation"),
    "eomt-vits16-annealed": (
        "upstream EoMT-DINOv3 ViT-S/16, attn_mask_probs=0 (trained-model inference)",
        _eomt_vits16(False),
        "segmentation",
    ),
    "backbone-vits16": ("DINOv3 ViT-S/16 backbone alone (4 taps)", _backbone("dinov3-vits16"), "backbone"),
    "ours-vitb16": ("Mask2FormerDINOv3, preset dinov3-vitb16 (its defaults)", _ours("dinov3-vitb16"), "segmentation"),
    "ours-vitb16-plain-pyramid": (
        "Mask2FormerDINOv3 dinov3-vitb16 without the adapter's spatial prior (adapter_spatial_prior=False)",
        _ours("dinov3-vitb16", adapter_spatial_prior=False),
        "segmentation",
    ),
    "ours-vitb16-stock-head": (
        "Mask2FormerDINOv3 dinov3-vitb16 with Mask2Former's 6-layer pixel decoder",
        _ours("dinov3-vitb16", **STOCK_HEAD),
        "segmentation",
    ),
    "ours-vitb16-unoptimised": (
        "dinov3-vitb16, 6-layer pixel decoder, upstream's decoder units (the straightforward build)",
        _ours_reference("dinov3-vitb16", **STOCK_HEAD),
        "segmentation",
    ),
    "backbone-vitb16": ("DINOv3 ViT-B/16 backbone alone (4 taps)", _backbone("dinov3-vitb16"), "backbone"),
}
DEFAULT_MODELS = list(MODELS)


def _ours_without(preset: str, upstream_class: type) -> Callable[[int], torch.nn.Module]:
    """The preset with one fast unit put back to upstream's class: what that unit alone gains (leave-one-out)."""

    def build(size: int) -> torch.nn.Module:
        model = _ours(preset)(size)
        for module in model.modules():
            if type(module) is FAST_UNITS[upstream_class]:
                module.__class__ = upstream_class
        return model

    return build


# Leave-one-out rows for the per-unit gains in UPSTREAMING.md (not in the default run): `ours-vits16-without-<unit>`.
for _upstream in FAST_UNITS:
    if _upstream.__name__ != "Mask2FormerForUniversalSegmentation":  # our model subclasses it; nothing to revert
        _short = _upstream.__name__.removeprefix("Mask2Former")
        MODELS[f"ours-vits16-without-{_short}"] = (
            f"dinov3-vits16 preset with upstream's {_upstream.__name__} instead of its fast subclass",
            _ours_without("dinov3-vits16", _upstream),
            "segmentation",
        )
MODELS["ours-vits16-upstream-units"] = (
    "dinov3-vits16 preset (3-layer pixel decoder) on upstream's units only (mask2former_units='upstream')",
    _ours("dinov3-vits16", mask2former_units="upstream"),
    "segmentation",
)
# (full model, its backbone alone) pairs whose difference is the head cost.
HEAD_COST_PAIRS = [
    (f"ours-{vit}{variant}", f"backbone-{vit}")
    for vit in ("vits16", "vitb16")
    for variant in ("", "-plain-pyramid", "-stock-head", "-unoptimised")
]


def synthetic_targets(batch: int, size: int, num_instances: int = 8, seed: int = 0):
    """Random rectangular instance masks and class ids, the same for every model (only their sizes matter here)."""
    generator = torch.Generator().manual_seed(seed)
    mask_labels, class_labels = [], []
    for _ in range(batch):
        masks = torch.zeros(num_instances, size, size)
        for k in range(num_instances):
            y0, x0 = torch.randint(0, size // 2, (2,), generator=generator).tolist()
            h, w = torch.randint(size // 8, size // 2, (2,), generator=generator).tolist()
            masks[k, y0 : y0 + h, x0 : x0 + w] = 1.0
        mask_labels.append(masks)
        class_labels.append(torch.randint(0, NUM_LABELS, (num_instances,), generator=generator))
    return mask_labels, class_labels


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _autocast(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# Wall-clock time by default; `--timer cpu` uses the process's CPU time instead, which time spent waiting for cores
# taken by other jobs does not inflate (meaningful with --threads 1 on CPU: with more threads, OpenMP's spinning
# threads count too).
TIMERS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def time_forward(entry: Entry, pixel_values: torch.Tensor, device: torch.device, dtype: str) -> float:
    """One inference forward, in milliseconds; records the mask resolution on the first call."""
    model = entry.model.eval()
    _sync(device)
    start = clock()
    with torch.inference_mode(), _autocast(device, dtype):
        out = model(pixel_values)
    _sync(device)
    elapsed = (clock() - start) * 1000
    if entry.kind == "segmentation" and entry.mask_resolution is None:
        entry.mask_resolution = f"1/{pixel_values.shape[-1] // out.masks_queries_logits.shape[-1]}"
    return elapsed


def time_train_step(entry: Entry, pixel_values, mask_labels, class_labels, device, dtype) -> float:
    """Forward with labels + loss + backward, in milliseconds (gradients are dropped before each step)."""
    model = entry.model.train()
    model.zero_grad(set_to_none=True)
    _sync(device)
    start = clock()
    with _autocast(device, dtype):
        out = model(pixel_values, mask_labels=mask_labels, class_labels=class_labels)
    out.loss.backward()
    _sync(device)
    elapsed = (clock() - start) * 1000
    model.zero_grad(set_to_none=True)
    return elapsed


STATISTICS = {"median": statistics.median, "min": min}


def summarise(entries: dict[str, Entry], stat: str = "median") -> dict:
    """`stat` (median or min) times, ratios against EoMT / Swin-T and head costs, as a JSON-ready dict.

    The median is the usual summary; the minimum is the better estimate of a model's own cost on a machine shared
    with other jobs (their interference only ever adds time), so both are reported.
    """
    reduce = STATISTICS[stat]
    fwd = {name: reduce(e.forward_ms) if e.forward_ms else None for name, e in entries.items()}
    trn = {name: reduce(e.train_ms) if e.train_ms else None for name, e in entries.items()}
    rows = {}
    for name, entry in entries.items():
        row = {
            "description": entry.description,
            "params_m": round(entry.params / 1e6, 2),
            "forward_ms": fwd[name],
            "forward_samples_ms": [round(t, 1) for t in entry.forward_ms],
            "train_ms": trn[name],
            "train_samples_ms": [round(t, 1) for t in entry.train_ms],
            "mask_resolution": entry.mask_resolution,
        }
        for ref in ("eomt-vits16", "swin-tiny"):
            if fwd.get(ref) and fwd[name]:
                row[f"forward_vs_{ref}"] = round(fwd[name] / fwd[ref], 3)
            if trn.get(ref) and trn[name]:
                row[f"train_vs_{ref}"] = round(trn[name] / trn[ref], 3)
        rows[name] = row
    head_costs = {}
    for full, backbone in HEAD_COST_PAIRS:
        if fwd.get(full) and fwd.get(backbone):
            head = fwd[full] - fwd[backbone]
            head_costs[full] = {
                "forward_ms": fwd[full],
                "backbone_ms": fwd[backbone],
                "head_ms": head,
                "head_vs_backbone": round(head / fwd[backbone], 3),
            }
    return {"models": rows, "head_costs": head_costs}


def print_table(summary: dict, args, stat: str) -> None:
    """Human-readable table of `summarise`'s result."""
    print(
        f"\n{args.size}x{args.size}, forward batch {args.batch}, train batch {args.train_batch}, device "
        f"{args.device}, dtype {args.dtype}, threads {torch.get_num_threads()}, {args.timer} time, repeats "
        f"{args.repeats} ({stat})"
    )
    header = (
        f"{'model':26s} {'params':>8s} {'forward':>9s} {'/EoMT':>6s} {'/Swin':>6s} "
        f"{'train':>9s} {'/EoMT':>6s} {'/Swin':>6s} {'masks':>6s}"
    )
    print(header)
    print("-" * len(header))

    def fmt(value, spec):
        return format(value, spec) if value is not None else "-"

    for name, row in summary["models"].items():
        print(
            f"{name:26s} {row['params_m']:7.1f}M {fmt(row['forward_ms'], '8.0f')}ms "
            f"{fmt(row.get('forward_vs_eomt-vits16'), '6.2f'):>6s} {fmt(row.get('forward_vs_swin-tiny'), '6.2f'):>6s} "
            f"{fmt(row['train_ms'], '8.0f'):>8s}{'ms' if row['train_ms'] else '  '} "
            f"{fmt(row.get('train_vs_eomt-vits16'), '6.2f'):>6s} {fmt(row.get('train_vs_swin-tiny'), '6.2f'):>6s} "
            f"{row['mask_resolution'] or '-':>6s}"
        )
    for full, cost in summary["head_costs"].items():
        print(
            f"head cost {full}: {cost['forward_ms']:.0f} - {cost['backbone_ms']:.0f} = {cost['head_ms']:.0f} ms "
            f"= {cost['head_vs_backbone']:.2f}x the backbone"
        )


def main(argv: list[str] | None = None) -> dict:
    """Parse arguments, run the benchmark and return (and optionally write) the summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="square input size (multiple of 32)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the forward (inference) timing")
    parser.add_argument("--train-batch", type=int, default=2, help="batch size of the training-step timing")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per model (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per model first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma list from {', '.join(MODELS)}")
    parser.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu' or 'cuda'")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = torch.autocast(bfloat16)")
    parser.add_argument("--train", action="store_true", help="also time a training step (forward + loss + backward)")
    parser.add_argument("--no-forward", action="store_true", help="skip the forward timing (with --train)")
    parser.add_argument("--compile", action="store_true", help="wrap each model in torch.compile")
    parser.add_argument("--timer", choices=list(TIMERS), default="wall", help="wall clock or process CPU time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)

    global clock
    clock = TIMERS[args.timer]
    hf_logging.set_verbosity_error()  # upstream warns that DINOv3 is "not a supported" Mask2Former backbone
    torch.set_num_threads(args.threads)
    args.device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    device = torch.device(args.device)
    if args.timer == "cpu" and device.type != "cpu":
        parser.error("--timer cpu measures CPU time: use it with --device cpu")

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    entries: dict[str, Entry] = {}
    for name in names:
        description, build, kind = MODELS[name]
        torch.manual_seed(args.seed)
        model = build(args.size).to(device)
        entry = Entry(name, description, build, kind, model=model)
        entry.params = sum(p.numel() for p in model.parameters())
        if args.compile:
            entry.model = torch.compile(model)
        entries[name] = entry
        print(f"built {name}: {entry.params / 1e6:.1f}M params", flush=True)

    generator = torch.Generator().manual_seed(args.seed)
    pixel_values = torch.randn(args.batch, 3, args.size, args.size, generator=generator).to(device)
    train_pixels = torch.randn(args.train_batch, 3, args.size, args.size, generator=generator).to(device)
    mask_labels, class_labels = synthetic_targets(args.train_batch, args.size, seed=args.seed)
    mask_labels = [m.to(device) for m in mask_labels]
    class_labels = [c.to(device) for c in class_labels]

    order = list(entries)
    for round_index in range(args.warmup + args.repeats):
        timed = round_index >= args.warmup
        # Rotate the order every round so that no model always runs right after the same neighbour.
        rotation = order[round_index % len(order) :] + order[: round_index % len(order)]
        for name in rotation:
            entry = entries[name]
            if not args.no_forward:
                t = time_forward(entry, pixel_values, device, args.dtype)
                if timed:
                    entry.forward_ms.append(t)
            if args.train and entry.kind == "segmentation":
                torch.manual_seed(args.seed + round_index)  # same point sampling for every model in a round
                t = time_train_step(entry, train_pixels, mask_labels, class_labels, device, args.dtype)
                if timed:
                    entry.train_ms.append(t)
            gc.collect()
        label = " (warm-up)" if not timed else ""
        print(f"round {round_index + 1}/{args.warmup + args.repeats}{label} done", flush=True)

    summary = summarise(entries, "median")
    summary["min"] = summarise(entries, "min")
    summary["settings"] = {
        "size": args.size,
        "batch": args.batch,
        "train_batch": args.train_batch,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "dtype": args.dtype,
        "timer": args.timer,
        "compile": args.compile,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
    }
    print_table(summary, args, "median")
    print_table(summary["min"], args, "min")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.output}")
    return summary


if __name__ == "__main__":
    main()
