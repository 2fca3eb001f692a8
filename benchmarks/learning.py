"""Does the DINOv3 adapter help Mask2Former learn? Train four models from random init and compare mask AP.

Models (same Mask2Former head hyper-parameters, same data, steps, batch, optimiser and seeds):

    ours-vit            Mask2FormerDINOv3 + small DINOv3 ViT (simple-pyramid adapter with its spatial prior, the
                        default: strides 4/8/16/32)
    ours-convnext       Mask2FormerDINOv3 + small DINOv3 ConvNeXt (identity adapter)
    upstream-convnext   transformers' Mask2Former with the same ConvNeXt as `backbone_config` (runs, with a warning)
    upstream-vit        transformers' Mask2Former with the same ViT as `backbone_config`: every map is stride 16,
                        so masks come out at 1/16 of the input (the "naive" path)

Ablation (not in the default run; `--models ours-vit-plain`):

    ours-vit-plain      ours-vit with `adapter_spatial_prior=False`: the plain ViTDet simple pyramid

Data: the deterministic synthetic shapes set of `mask2former_dinov3.synthetic` (4 thing classes, overlapping
instances, small/medium/large sizes, empty images). Metric: pycocotools mask AP on the validation split, through
`mask2former_dinov3.metrics.InstanceSegmentationEvaluator`, on `post_process_instance_segmentation(threshold=0,
return_binary_maps=True)`. Plain PyTorch loop: AdamW, linear warm-up then polynomial decay, gradient clipping,
each model's own Mask2Former loss.

    python benchmarks/learning.py --output learning.json            # full run (4 models x 5 seeds)
    python benchmarks/learning.py --quick --output /tmp/quick.json  # smoke test, well under a minute
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # runnable from a checkout without installing
    sys.path.insert(0, REPO_ROOT)

import transformers  # noqa: E402
from transformers import (  # noqa: E402
    DINOv3ConvNextConfig,
    DINOv3ViTConfig,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    Mask2FormerImageProcessor,
)

from mask2former_dinov3 import Mask2FormerDINOv3Config, Mask2FormerDINOv3ForUniversalSegmentation  # noqa: E402
from mask2former_dinov3.metrics import (  # noqa: E402
    InstanceSegmentationEvaluator,
    instance_prediction_from_post_processed,
)
from mask2former_dinov3.synthetic import THING_CLASSES, SyntheticConfig, generate_samples  # noqa: E402


MODELS = ("ours-vit", "ours-convnext", "upstream-convnext", "upstream-vit")
ABLATIONS = ("ours-vit-plain",)
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
# 6-block ViT: four even intervals, as default_tapped_layers gives (0-based blocks 1, 2, 3, 5).
VIT_TAPS = (1, 2, 3, 5)


@dataclass
class Settings:
    """Everything that defines a run (written to the JSON)."""

    steps: int = 1500
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    image_size: int = 128
    batch_size: int = 4
    train_images: int = 2000
    val_images: int = 300
    data_seed: int = 0
    # Fewer and larger shapes than SyntheticConfig's defaults, so that a CPU-sized budget learns something.
    max_instances: int = 4
    size_probabilities: tuple[float, float, float] = (0.15, 0.45, 0.40)
    # From random init: 3e-4 (1e-4, Mask2Former's fine-tuning rate for a pretrained backbone, left every model at
    # AP <= 0.04 after 1500 steps; 3e-4 roughly doubled AP for both ours-vit and upstream-convnext on seed 0).
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_steps: int = 20
    grad_clip: float = 1.0
    eval_batch_size: int = 10
    threads: int = 1
    workers: int = 2
    # Head (identical for all four models)
    hidden_dim: int = 128
    feature_size: int = 128
    feedforward_dim: int = 512
    encoder_layers: int = 3  # the small ViT presets' pixel-decoder depth
    decoder_layers: int = 4  # Mask2Former builds decoder_layers - 1 masked-attention layers
    num_attention_heads: int = 4
    num_queries: int = 20
    train_num_points: int | None = None  # default: a quarter of the image's pixels
    # Backbones
    vit_hidden_size: int = 192
    vit_layers: int = 6
    vit_heads: int = 3
    vit_registers: int = 4
    convnext_widths: tuple[int, ...] = (48, 96, 192, 384)
    convnext_depths: tuple[int, ...] = (1, 1, 3, 1)
    convnext_layer_scale: float = 1e-6  # DINOv3ConvNextConfig's default layer_scale_init_value
    # Ablations of ours-vit
    vit_taps: tuple[int, ...] = VIT_TAPS  # 0-based ViT blocks ours-vit taps (4, or 1 as in ViTDet)
    adapter_lr_scale: float = 1.0  # learning-rate multiplier for the adapter's parameters
    # Folder of `initial_weights.py` files: start each run from those weights and that RNG state (paired runs)
    initial_weights: str | None = None


def vit_config(settings: Settings, **kwargs) -> DINOv3ViTConfig:
    """The small DINOv3 ViT used by ours-vit and upstream-vit."""
    return DINOv3ViTConfig(
        hidden_size=settings.vit_hidden_size,
        num_hidden_layers=settings.vit_layers,
        num_attention_heads=settings.vit_heads,
        intermediate_size=4 * settings.vit_hidden_size,
        num_register_tokens=settings.vit_registers,
        patch_size=16,
        image_size=settings.image_size,
        **kwargs,
    )


def convnext_config(settings: Settings, **kwargs) -> DINOv3ConvNextConfig:
    """The small DINOv3 ConvNeXt used by ours-convnext and upstream-convnext."""
    return DINOv3ConvNextConfig(
        hidden_sizes=list(settings.convnext_widths),
        depths=list(settings.convnext_depths),
        layer_scale_init_value=settings.convnext_layer_scale,
        **kwargs,
    )


def head_kwargs(settings: Settings) -> dict:
    """Mask2Former head hyper-parameters shared by all four models."""
    points = settings.train_num_points or settings.image_size**2 // 4
    return dict(
        feature_size=settings.feature_size,
        mask_feature_size=settings.feature_size,
        hidden_dim=settings.hidden_dim,
        encoder_feedforward_dim=settings.feedforward_dim,
        dim_feedforward=settings.feedforward_dim,
        encoder_layers=settings.encoder_layers,
        decoder_layers=settings.decoder_layers,
        num_attention_heads=settings.num_attention_heads,
        num_queries=settings.num_queries,
        train_num_points=points,
        num_labels=len(THING_CLASSES),
        id2label=dict(enumerate(THING_CLASSES)),
        label2id={name: i for i, name in enumerate(THING_CLASSES)},
    )


def build_model(name: str, settings: Settings) -> torch.nn.Module:
    """A freshly initialised model (the caller seeds torch first)."""
    head = head_kwargs(settings)
    stages = ["stage1", "stage2", "stage3", "stage4"]
    if name in ("ours-vit", "ours-vit-plain"):
        config = Mask2FormerDINOv3Config(
            backbone_config=vit_config(settings),
            tapped_layers=list(settings.vit_taps),
            adapter_spatial_prior=name == "ours-vit",
            **head,
        )
        return Mask2FormerDINOv3ForUniversalSegmentation(config)
    if name == "ours-convnext":
        config = Mask2FormerDINOv3Config(backbone_config=convnext_config(settings), **head)
        return Mask2FormerDINOv3ForUniversalSegmentation(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "not a supported model": the point of the comparison
        if name == "upstream-convnext":
            config = Mask2FormerConfig(backbone_config=convnext_config(settings, out_features=stages), **head)
        elif name == "upstream-vit":
            # DINOv3ViTBackbone stage i+1 is 0-based block i: the same four blocks ours-vit taps (upstream's pixel
            # decoder needs four maps, so a single-tap ablation of ours leaves this at the default four).
            taps = settings.vit_taps if len(settings.vit_taps) == 4 else VIT_TAPS
            config = Mask2FormerConfig(backbone_config=vit_config(settings, out_indices=[t + 1 for t in taps]), **head)
        else:
            raise ValueError(f"Unknown model {name!r}; choose from {', '.join(MODELS + ABLATIONS)}.")
        return Mask2FormerForUniversalSegmentation(config)


def to_tensors(samples):
    """ImageNet-normalised pixels (N, 3, H, W), and per image float masks (n, H, W) and int64 labels (n,)."""
    pixels = torch.stack([torch.from_numpy(np.array(s.image)).permute(2, 0, 1).float() / 255.0 for s in samples])
    pixels = (pixels - IMAGENET_MEAN) / IMAGENET_STD
    masks = [torch.from_numpy(s.masks.astype(np.float32)) for s in samples]
    labels = [torch.from_numpy(s.labels.astype(np.int64)) for s in samples]
    return pixels, masks, labels


def learning_rate(step: int, settings: Settings) -> float:
    """Linear warm-up, then Mask2Former's polynomial (power 0.9) decay."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(settings.steps - settings.warmup_steps, 1)
    return settings.lr * (1.0 - progress) ** 0.9


def head_init_stats(model: torch.nn.Module) -> dict:
    """Statistics of parameters whose upstream initialisation is distinctive (see dinov3_facts.md)."""
    named = dict(model.named_parameters())

    def std(suffix):
        matches = [p for n, p in named.items() if n.endswith(suffix)]
        return round(float(matches[0].detach().std()), 4) if matches else None

    return {
        "is_custom_code": bool(type(model).is_custom_code()),
        "decoder_fc1_std": std("transformer_module.decoder.layers.0.fc1.weight"),
        "sampling_offsets_bias_std": std("decoder.encoder.layers.0.self_attn.sampling_offsets.bias"),
        "attention_weights_std": std("decoder.encoder.layers.0.self_attn.attention_weights.weight"),
    }


def train(model, train_data, settings: Settings, seed: int) -> dict:
    """Run `settings.steps` AdamW steps; the seed also fixes the order of the training images."""
    pixels, masks, labels = train_data
    adapter = [p for n, p in model.named_parameters() if ".adapter." in n]
    adapter_ids = {id(p) for p in adapter}
    groups = [{"params": [p for p in model.parameters() if id(p) not in adapter_ids], "lr_scale": 1.0}]
    if adapter:
        groups.append({"params": adapter, "lr_scale": settings.adapter_lr_scale})
    optimizer = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=settings.weight_decay)
    order_rng = np.random.default_rng(seed)
    order: list[int] = []
    losses = []
    model.train()
    start = time.perf_counter()
    for step in range(settings.steps):
        if len(order) < settings.batch_size:
            order += order_rng.permutation(len(pixels)).tolist()
        batch, order = order[: settings.batch_size], order[settings.batch_size :]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings) * group["lr_scale"]
        outputs = model(
            pixel_values=pixels[batch], mask_labels=[masks[i] for i in batch], class_labels=[labels[i] for i in batch]
        )
        loss = outputs.loss
        if not torch.isfinite(loss):
            raise RuntimeError(f"Loss became {loss.item()} at step {step}.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        losses.append(loss.item())
    elapsed = time.perf_counter() - start
    tail = losses[-max(len(losses) // 10, 1) :]
    return {"train_seconds": elapsed, "first_loss": losses[0], "final_loss": float(np.mean(tail))}


@torch.no_grad()
def evaluate(model, val_samples, val_data, settings: Settings) -> dict:
    """pycocotools mask AP on the validation images, plus the mask resolution relative to the input."""
    pixels, _, _ = val_data
    processor = Mask2FormerImageProcessor()
    evaluator = InstanceSegmentationEvaluator(class_names=THING_CLASSES)
    model.eval()
    mask_side = None
    start = time.perf_counter()
    for first in range(0, len(val_samples), settings.eval_batch_size):
        chunk = val_samples[first : first + settings.eval_batch_size]
        outputs = model(pixel_values=pixels[first : first + len(chunk)])
        mask_side = outputs.masks_queries_logits.shape[-1]
        sizes = [s.semantic_map.shape for s in chunk]
        results = processor.post_process_instance_segmentation(
            outputs, threshold=0.0, return_binary_maps=True, target_sizes=sizes
        )
        evaluator.update(
            [{"masks": s.masks, "labels": s.labels} for s in chunk],
            [instance_prediction_from_post_processed(r, image_size=size) for r, size in zip(results, sizes)],
            image_ids=[s.index for s in chunk],
        )
    metrics = evaluator.compute()
    metrics["eval_seconds"] = time.perf_counter() - start
    metrics["mask_resolution"] = f"1/{settings.image_size // mask_side}"
    return metrics


_DATA_CACHE: dict = {}


def data_config(settings: Settings) -> SyntheticConfig:
    """The synthetic-data knobs the benchmark sets (the rest are SyntheticConfig's defaults)."""
    return SyntheticConfig(
        image_size=settings.image_size,
        max_instances=settings.max_instances,
        size_probabilities=tuple(settings.size_probabilities),
    )


def load_data(settings: Settings):
    """Train / validation samples and tensors, generated once per process (deterministic, so every worker agrees)."""
    config = data_config(settings)
    key = (config, settings.train_images, settings.val_images, settings.data_seed)
    if key not in _DATA_CACHE:
        train_samples = generate_samples(settings.train_images, seed=settings.data_seed, split="train", config=config)
        val_samples = generate_samples(settings.val_images, seed=settings.data_seed, split="valid", config=config)
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = (train_samples, val_samples, to_tensors(train_samples), to_tensors(val_samples))
    return _DATA_CACHE[key]


def initial_weights_path(folder: str, name: str, seed: int) -> str:
    """Where `benchmarks/initial_weights.py` saves one model's starting point for one seed."""
    return os.path.join(folder, f"{name}-seed{seed}.safetensors")


def load_initial_weights(model: torch.nn.Module, folder: str, name: str, seed: int) -> None:
    """Start from another checkout's initial weights and the RNG state it had after building them.

    Training then draws the same random numbers (point sampling) as that checkout did, so the two runs differ only
    in the code they train with.
    """
    from safetensors.torch import load_file

    path = initial_weights_path(folder, name, seed)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: write it with benchmarks/initial_weights.py --seeds {seed}")
    tensors = load_file(path)
    rng_state = tensors.pop(RNG_STATE_KEY)
    model.load_state_dict(tensors, strict=True)
    torch.set_rng_state(rng_state)


RNG_STATE_KEY = "__torch_rng_state_after_build__"


def run_one(name: str, seed: int, settings: Settings) -> dict:
    """Train one model with one seed and evaluate it (runs in a worker process when --workers > 1)."""
    torch.set_num_threads(settings.threads)
    transformers.logging.set_verbosity_error()
    _, val_samples, train_data, val_data = load_data(settings)
    torch.manual_seed(seed)
    model = build_model(name, settings)
    if settings.initial_weights:
        load_initial_weights(model, settings.initial_weights, name, seed)
    init = head_init_stats(model)
    trained = train(model, train_data, settings, seed)
    metrics = evaluate(model, val_samples, val_data, settings)
    return {
        "model": name,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        **init,
        **trained,
        **metrics,
    }


def run(settings: Settings, models: list[str], workers: int = 1, log=print) -> dict:
    """Train and evaluate every model with every seed; returns the JSON-able results per model.

    With `workers > 1` the (model, seed) runs are spread over that many processes, each using `settings.threads`
    threads: on a small shared CPU, two single-threaded runs side by side are much faster than one two-threaded
    run (OpenMP threads spin waiting for each other when a core is taken away).
    """
    train_samples, val_samples, _, _ = load_data(settings)
    log(
        f"data: {len(train_samples)} train / {len(val_samples)} valid images at {settings.image_size} px, "
        f"{sum(len(s.labels) for s in val_samples)} validation instances; {len(models) * len(settings.seeds)} runs "
        f"on {workers} worker(s) x {settings.threads} thread(s)"
    )
    # Seed-major order: concurrent workers train different models, so a slow model does not stall one worker.
    jobs = [(name, seed) for seed in settings.seeds for name in models]
    done: dict[tuple[str, int], dict] = {}

    def report(result):
        done[(result["model"], result["seed"])] = result
        log(
            f"{result['model']:18s} seed {result['seed']}: AP {result['map']:.4f} AP50 {result['map_50']:.4f} "
            f"loss {result['first_loss']:.2f} -> {result['final_loss']:.2f} ({result['train_seconds']:.0f} s train, "
            f"masks {result['mask_resolution']})  [{len(done)}/{len(jobs)}]"
        )

    if workers <= 1:
        for name, seed in jobs:
            report(run_one(name, seed, settings))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        context = multiprocessing.get_context("spawn")  # no fork of a process that already runs torch threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(run_one, name, seed, settings) for name, seed in jobs]
            for future in as_completed(futures):
                report(future.result())
    return {name: summarise([done[(name, seed)] for seed in settings.seeds]) for name in models}


def summarise(runs: list[dict]) -> dict:
    """Mean and (sample) standard deviation over seeds, plus the per-seed runs."""

    def mean_std(key):
        values = [r[key] for r in runs]
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    ap_mean, ap_std = mean_std("map")
    ap50_mean, ap50_std = mean_std("map_50")
    return {
        "ap_mean": ap_mean,
        "ap_std": ap_std,
        "ap50_mean": ap50_mean,
        "ap50_std": ap50_std,
        "per_seed_ap": [r["map"] for r in runs],
        "mask_resolution": runs[0]["mask_resolution"],
        "train_seconds_mean": statistics.fmean(r["train_seconds"] for r in runs),
        "parameters": runs[0]["parameters"],
        "runs": runs,
    }


def markdown_table(results: dict) -> str:
    """The table of benchmarks/README.md."""
    lines = [
        "| model | mask AP (mean ± std) | AP50 (mean) | per-seed AP | mask resolution | params | train time / seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        seeds = ", ".join(f"{ap:.3f}" for ap in r["per_seed_ap"])
        lines.append(
            f"| {name} | {r['ap_mean']:.3f} ± {r['ap_std']:.3f} | {r['ap50_mean']:.3f} | {seeds} | "
            f"{r['mask_resolution']} | {r['parameters'] / 1e6:.2f} M | {r['train_seconds_mean']:.0f} s |"
        )
    return "\n".join(lines)


def verdict(results: dict) -> dict:
    """The issue's acceptance criteria, on mean AP (only for the models that were run)."""
    ap = {name: r["ap_mean"] for name, r in results.items()}
    checks = {}
    if {"ours-convnext", "upstream-convnext"} <= ap.keys():
        checks["ours-convnext >= upstream-convnext"] = ap["ours-convnext"] >= ap["upstream-convnext"]
    if {"ours-vit", "upstream-vit"} <= ap.keys():
        checks["ours-vit > upstream-vit (naive)"] = ap["ours-vit"] > ap["upstream-vit"]
    if {"ours-vit", "upstream-convnext"} <= ap.keys():
        checks["ours-vit >= upstream-convnext"] = ap["ours-vit"] >= ap["upstream-convnext"]
    return checks


def parse_args(argv=None) -> tuple[Settings, list[str], argparse.Namespace]:
    """Command line -> Settings."""
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    parser.add_argument("--image_size", type=int, default=defaults.image_size, help="multiple of 32")
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size)
    parser.add_argument("--train_images", type=int, default=defaults.train_images)
    parser.add_argument("--val_images", type=int, default=defaults.val_images)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument(
        "--convnext_layer_scale",
        type=float,
        default=defaults.convnext_layer_scale,
        help="ConvNeXt layer_scale_init_value (1e-6 is DINOv3's; larger trains faster from scratch)",
    )
    parser.add_argument(
        "--vit_taps",
        type=int,
        nargs="+",
        default=list(defaults.vit_taps),
        help="0-based ViT blocks ours-vit taps: 4 of them, or 1 (ablation)",
    )
    parser.add_argument(
        "--adapter_lr_scale",
        type=float,
        default=defaults.adapter_lr_scale,
        help="learning-rate multiplier for the adapter (ablation)",
    )
    parser.add_argument("--max_instances", type=int, default=defaults.max_instances, help="shapes per image, at most")
    parser.add_argument(
        "--size_probabilities",
        type=float,
        nargs=3,
        default=list(defaults.size_probabilities),
        help="probabilities of small / medium / large shapes",
    )
    parser.add_argument("--threads", type=int, default=defaults.threads, help="torch CPU threads per run")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="runs trained side by side")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS + ABLATIONS)
    parser.add_argument("--quick", action="store_true", help="smoke test: 64 px, 3 steps, 1 seed, tiny data, 1 worker")
    parser.add_argument(
        "--initial_weights",
        help="folder written by benchmarks/initial_weights.py (e.g. from an older checkout): each run starts from "
        "those weights and RNG state, so two versions' runs are paired seed for seed",
    )
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.image_size % 32:
        parser.error(
            f"--image_size must be a multiple of 32 (Mask2FormerDINOv3's input constraint), got {args.image_size}"
        )
    settings = Settings(
        steps=args.steps,
        seeds=tuple(args.seeds),
        image_size=args.image_size,
        batch_size=args.batch_size,
        train_images=args.train_images,
        val_images=args.val_images,
        lr=args.lr,
        threads=args.threads,
        workers=args.workers,
        max_instances=args.max_instances,
        size_probabilities=tuple(args.size_probabilities),
        convnext_layer_scale=args.convnext_layer_scale,
        vit_taps=tuple(args.vit_taps),
        adapter_lr_scale=args.adapter_lr_scale,
        initial_weights=args.initial_weights,
    )
    if args.quick:
        settings = Settings(
            steps=3,
            seeds=(0,),
            image_size=64,
            batch_size=2,
            train_images=8,
            val_images=4,
            warmup_steps=1,
            eval_batch_size=4,
            threads=args.threads,
            workers=1,
        )
    return settings, list(args.models), args


def main(argv=None) -> dict:
    """Entry point: run, print the markdown table, write the JSON."""
    settings, models, args = parse_args(argv)
    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    start = time.perf_counter()
    results = run(settings, models, workers=settings.workers, log=lambda line: print(line, flush=True))
    table = markdown_table(results)
    checks = verdict(results)
    print(f"\n{table}\n")
    for check, passed in checks.items():
        print(f"- {check}: {'yes' if passed else 'NO'}")
    sys.stdout.flush()
    output = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]) if argv is None else argv,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(settings).items()},
        "head": {k: v for k, v in head_kwargs(settings).items() if k not in ("id2label", "label2id")},
        "environment": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "threads_per_run": settings.threads,
            "workers": settings.workers,
            "cpu_count": os.cpu_count(),
        },
        "total_seconds": time.perf_counter() - start,
        "results": results,
        "checks": checks,
        "table": table,
    }
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(output, f, indent=2, allow_nan=True)
    return output


if __name__ == "__main__":
    main()
