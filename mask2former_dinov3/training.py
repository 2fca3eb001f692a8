"""Fine-tuning pieces for Mask2FormerDINOv3 on top of transformers' `Trainer`.

* `build_param_groups`: optimizer parameter groups with a lower learning rate for the DINOv3 backbone
  (`backbone_lr_multiplier`, Mask2Former uses 0.1) and layer-wise learning-rate decay for ViT backbones
  (`layer_decay`), without weight decay on biases, norms, tokens and query / level embeddings.
* `Mask2FormerTrainer`: a `Trainer` that builds those groups and evaluates with the package's metrics (COCO mask AP,
  mIoU or PQ). Each process runs its shard of the validation set; the per-image metric states are all-gathered and
  merged by image id (so an image that distributed padding gave to two processes counts once) and every process gets
  the same numbers.
* `set_backbone_frozen`, `write_model_card`, `save_prediction_overlays`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import EvalLoopOutput

from .data import IGNORE_INDEX, EvalTarget, LabelMap, Sample, panoptic_segments, semantic_map
from .metrics import (
    InstanceSegmentationEvaluator,
    PanopticQualityEvaluator,
    SemanticSegmentationEvaluator,
    instance_prediction_from_post_processed,
)


logger = logging.getLogger(__name__)

BACKBONE_PREFIX = "model.pixel_level_module.encoder."
MAIN_METRIC = {"instance": "map", "semantic": "mean_iou", "panoptic": "pq"}
_NO_DECAY_NAME = re.compile(r"(cls_token|mask_token|register_tokens|level_embed|queries_\w+|lambda1|gamma)(\.|$)")


# --------------------------------------------------------------------------------------------------------------------
# Backbone freezing and optimizer parameter groups
# --------------------------------------------------------------------------------------------------------------------


def set_backbone_frozen(model: nn.Module, frozen: bool = True) -> None:
    """Freeze (or unfreeze) the DINOv3 backbone of a `Mask2FormerDINOv3ForUniversalSegmentation`, config included."""
    pixel_level_module = model.model.pixel_level_module
    pixel_level_module.encoder.requires_grad_(not frozen)
    pixel_level_module.freeze_backbone = frozen
    model.config.freeze_backbone = frozen


def vit_layer_id(name: str, num_layers: int) -> int | None:
    """Depth of a ViT backbone parameter for layer-wise LR decay: embeddings 0, block i -> i + 1, the rest of the
    backbone (its final norm) num_layers + 1; None for parameters outside the backbone.
    """
    if not name.startswith(BACKBONE_PREFIX):
        return None
    rest = name[len(BACKBONE_PREFIX) :]
    if rest.startswith("embeddings."):
        return 0
    match = re.match(r"model\.layer\.(\d+)\.", rest)
    if match:
        return int(match.group(1)) + 1
    return num_layers + 1


def build_param_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    backbone_lr_multiplier: float = 1.0,
    layer_decay: float | None = None,
    decay_parameter_names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups (trainable parameters only).

    The learning rate of a parameter is `learning_rate * scale` where `scale` is 1 outside the backbone and
    `backbone_lr_multiplier * layer_decay ** (num_layers + 1 - layer_id)` inside it (`vit_layer_id`; ViTDet's
    rule), or just `backbone_lr_multiplier` without `layer_decay` or for a ConvNeXt backbone. Weight decay applies to
    the names in `decay_parameter_names` (Trainer's choice: no biases or norms; all if None) that are matrices and
    not tokens / query / level embeddings / layer scales. Each group carries `lr`, `weight_decay` and `lr_scale`.
    """
    config = model.config
    is_vit = config.backbone_config.model_type == "dinov3_vit"
    if layer_decay is not None and not is_vit:
        logger.warning("--layer_decay applies to ViT backbones only; the ConvNeXt backbone gets one learning rate.")
    num_layers = config.backbone_config.num_hidden_layers if is_vit else 0
    decay_names = None if decay_parameter_names is None else set(decay_parameter_names)
    embedding_params = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = 1.0
        if name.startswith(BACKBONE_PREFIX):
            scale = backbone_lr_multiplier
            if layer_decay is not None and is_vit:
                scale *= layer_decay ** (num_layers + 1 - vit_layer_id(name, num_layers))
        decays = (
            param.ndim > 1
            and id(param) not in embedding_params
            and not _NO_DECAY_NAME.search(name)
            and (decay_names is None or name in decay_names)
        )
        key = (scale, weight_decay if decays else 0.0)
        group = groups.setdefault(
            key, {"params": [], "param_names": [], "lr": learning_rate * scale, "lr_scale": scale, "weight_decay": key[1]}
        )
        group["params"].append(param)
        group["param_names"].append(name)
    return sorted(groups.values(), key=lambda g: (-g["lr_scale"], -g["weight_decay"]))


# --------------------------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------------------------


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Scalar metrics for logging: nested per-class dicts become `<metric>_<class name>` keys."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if key == "per_class":  # panoptic tp/fp/fn details: pq_per_class already carries the per-class figure
            continue
        if isinstance(value, dict):
            prefix = {"map_per_class": "map", "per_class_iou": "iou", "pq_per_class": "pq"}.get(key, key)
            for name, sub in value.items():
                if not isinstance(sub, dict):
                    flat[f"{prefix}_{re.sub(r'[^0-9A-Za-z_-]+', '_', str(name))}"] = float(sub)
        elif isinstance(value, (int, float, np.floating, np.integer)):
            flat[key] = float(value)
    return flat


class Mask2FormerTrainer(Trainer):
    """`Trainer` for Mask2FormerDINOv3: backbone / layer-wise learning rates, and segmentation metrics at evaluation.

    Extra arguments:
        task: "instance", "semantic" or "panoptic" (chooses the post-processing and metric).
        label_map: the `LabelMap` of the data (class names, things / stuff).
        image_processor: used for post-processing (`post_process_*_segmentation`).
        backbone_lr_multiplier, layer_decay: see `build_param_groups`.
        instance_threshold: score threshold of `post_process_instance_segmentation` for mAP (default 0: keep every
            query, as COCO AP expects ranked detections).
        panoptic_threshold: `threshold` of `post_process_panoptic_segmentation`.

    The evaluation dataset must yield `targets` (`EvalTarget`s, see `SegmentationDataset(with_targets=True)`).
    """

    def __init__(
        self,
        *args,
        task: str = "instance",
        label_map: LabelMap | None = None,
        image_processor=None,
        backbone_lr_multiplier: float = 1.0,
        layer_decay: float | None = None,
        instance_threshold: float = 0.0,
        panoptic_threshold: float = 0.5,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        # The evaluation batches carry `targets` (ground truth for the metrics), which is no argument of the model's
        # forward: Trainer must not drop it (transformers' own segmentation example forces the same).
        self.args.remove_unused_columns = False
        if task not in MAIN_METRIC:
            raise ValueError(f"task must be one of {sorted(MAIN_METRIC)}, got {task!r}")
        self.task = task
        self.label_map = label_map
        self.image_processor = image_processor
        self.backbone_lr_multiplier = backbone_lr_multiplier
        self.layer_decay = layer_decay
        self.instance_threshold = instance_threshold
        self.panoptic_threshold = panoptic_threshold
        # Mask2Former normalises its loss itself (by the number of masks): Trainer must not rescale it.
        self.model_accepts_loss_kwargs = False

    # -- optimizer ----------------------------------------------------------------------------------------------------

    def create_optimizer(self, model=None):
        """Trainer's optimizer (`--optim`, AdamW by default) over `build_param_groups`'s groups."""
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        special = {"params", "model", "optimizer_dict"} & set(optimizer_kwargs)
        from transformers.trainer_optimizer import is_optimizer_factory

        if special or is_optimizer_factory(optimizer_cls):
            logger.warning("--optim %s builds its own parameter groups: backbone LR multiplier / layer decay not applied.", self.args.optim)
            return super().create_optimizer(model)
        groups = build_param_groups(
            opt_model,
            learning_rate=self.args.learning_rate,
            weight_decay=self.args.weight_decay,
            backbone_lr_multiplier=self.backbone_lr_multiplier,
            layer_decay=self.layer_decay,
            decay_parameter_names=self.get_decay_parameter_names(opt_model),
        )
        for group in groups:
            group.pop("param_names")
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    # -- evaluation ---------------------------------------------------------------------------------------------------

    def _model_for_evaluation(self) -> nn.Module:
        # As Trainer's evaluation loop: a model not yet prepared (evaluation without training) is prepared here, so
        # that DeepSpeed / FSDP shards are set up.
        if self.is_deepspeed_enabled and self.deepspeed is None:
            from transformers.integrations.deepspeed import deepspeed_init

            deepspeed_init(self, num_training_steps=0, inference=True)
        model = self._wrap_model(self.model, training=False)
        if len(self.accelerator._models) == 0 and model is self.model:
            if self.is_deepspeed_enabled or (self.is_fsdp_enabled and not self.args.torch_compile):
                model = self.accelerator.prepare(model)
            else:
                model = self.accelerator.prepare_model(model, evaluation_mode=True)
            if self.is_fsdp_enabled:
                self.model = model
            if model is not self.model:
                self.model_wrapped = model
            if self.is_deepspeed_enabled:
                self.deepspeed = self.model_wrapped
        return model

    def make_evaluator(self):
        """A fresh metric accumulator for the task."""
        label_map = self.label_map
        if self.task == "instance":
            return InstanceSegmentationEvaluator(class_names=label_map.id2label)
        if self.task == "semantic":
            return SemanticSegmentationEvaluator(
                num_classes=label_map.num_labels, ignore_index=IGNORE_INDEX, class_names=label_map.id2label
            )
        categories = [
            {"id": i, "name": name, "isthing": int(i in label_map.thing_ids)} for i, name in label_map.id2label.items()
        ]
        return PanopticQualityEvaluator(categories)

    def post_process(self, outputs, targets: Sequence[EvalTarget]) -> list:
        """Predictions in the evaluator's format, at each image's original size."""
        # Post-processing interpolates the logits: do it in float32 whatever the autocast dtype was.
        logits = SimpleNamespace(
            class_queries_logits=outputs.class_queries_logits.float(),
            masks_queries_logits=outputs.masks_queries_logits.float(),
        )
        sizes = [tuple(t.size) for t in targets]
        processor = self.image_processor
        if self.task == "instance":
            results = processor.post_process_instance_segmentation(
                logits, threshold=self.instance_threshold, target_sizes=sizes, return_binary_maps=True
            )
            return [instance_prediction_from_post_processed(r, image_size=s) for r, s in zip(results, sizes)]
        if self.task == "semantic":
            return [m.cpu() for m in processor.post_process_semantic_segmentation(logits, target_sizes=sizes)]
        return processor.post_process_panoptic_segmentation(
            logits,
            threshold=self.panoptic_threshold,
            label_ids_to_fuse=set(self.label_map.stuff_ids),
            target_sizes=sizes,
        )

    def ground_truth(self, target: EvalTarget):
        """One `EvalTarget` in the evaluator's format."""
        if self.task == "instance":
            return {"masks": target.masks, "labels": target.labels, "iscrowd": target.iscrowd, "size": target.size}
        if self.task == "semantic":
            return target.semantic
        infos = [{"id": s["id"], "category_id": s["label_id"], "iscrowd": int(s["iscrowd"])} for s in target.segments_info]
        return {"segmentation": target.segment_map, "segments_info": infos}

    def evaluation_loop(
        self,
        dataloader,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        """Runs this process's shard, then merges every process's per-image metric states (each image once)."""
        model = self._model_for_evaluation()
        model.eval()
        evaluator = self.make_evaluator()
        seen: set = set()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.args.device)
        num_batches = 0
        logger.info("***** Running %s (%s) *****", description, self.task)
        self.callback_handler.eval_dataloader = dataloader
        for batch in dataloader:
            targets = batch.pop("targets")
            batch = self._prepare_inputs(batch)
            with torch.no_grad(), self.compute_loss_context_manager():
                outputs = model(**batch)
            if outputs.loss is not None:
                loss_sum += outputs.loss.detach().double()
                num_batches += 1
            self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)
            keep = []
            for i, target in enumerate(targets):
                # Distributed padding can repeat an image within one shard too.
                if target.image_id not in seen:
                    seen.add(target.image_id)
                    keep.append(i)
            if not keep:
                continue
            predictions = self.post_process(outputs, targets)
            evaluator.update(
                [self.ground_truth(targets[i]) for i in keep],
                [predictions[i] for i in keep],
                image_ids=[targets[i].image_id for i in keep],
            )
        # A collective on every process: gathers every shard's per-image records, merges by image id.
        metrics = evaluator.compute()
        totals = torch.stack([loss_sum, torch.tensor(float(num_batches), dtype=torch.float64, device=loss_sum.device)])
        totals = self.accelerator.reduce(totals, reduction="sum")
        num_images = int(metrics.pop("num_images"))
        flat = flatten_metrics(metrics)
        if totals[1] > 0:
            flat["loss"] = float(totals[0] / totals[1])
        flat["num_images"] = float(num_images)
        flat = {f"{metric_key_prefix}_{k}": v for k, v in flat.items()}
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=flat, num_samples=num_images)


# --------------------------------------------------------------------------------------------------------------------
# Overlays
# --------------------------------------------------------------------------------------------------------------------


def _palette(n: int) -> np.ndarray:
    # Evenly spread hues, fixed order: the same class gets the same colour in every image.
    colours = []
    for i in range(max(n, 1)):
        hue = (i * 0.618033988749895) % 1.0
        h6 = hue * 6
        x = 1 - abs(h6 % 2 - 1)
        rgb = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(h6) % 6]
        colours.append([int(200 * c + 40) for c in rgb])
    return np.array(colours, np.uint8)


def draw_segments(
    image: np.ndarray, masks: Sequence[np.ndarray], labels: Sequence[int], names: dict[int, str],
    scores: Sequence[float] | None = None, alpha: float = 0.5,
) -> Image.Image:
    """`image` with each mask filled in its class colour (with a darker outline) and labelled with its class name."""
    palette = _palette(len(names))
    canvas = image.astype(np.float32).copy()
    outline = np.zeros(image.shape[:2], bool)
    for mask, label in zip(masks, labels):
        mask = np.asarray(mask).astype(bool)
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * palette[int(label) % len(palette)]
        edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
        outline |= edge
    canvas[outline] = 0.4 * canvas[outline]
    result = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    for k, (mask, label) in enumerate(zip(masks, labels)):
        ys, xs = np.nonzero(np.asarray(mask))
        if len(xs):
            text = names.get(int(label), str(label)) + (f" {scores[k]:.2f}" if scores is not None else "")
            draw.text((int(xs.min()), int(ys.min())), text, fill=(255, 255, 255))
    return result


def _segments_of(sample: Sample, task: str) -> tuple[list[np.ndarray], list[int]]:
    if task == "instance":
        keep = np.flatnonzero(sample.is_instance & ~sample.iscrowd)
        return [sample.masks[i] for i in keep], [int(sample.labels[i]) for i in keep]
    if task == "semantic":
        semantic = semantic_map(sample)
        classes = [int(c) for c in np.unique(semantic) if c != IGNORE_INDEX]
        return [semantic == c for c in classes], classes
    segment_map, infos = panoptic_segments(sample)
    return [segment_map == s["id"] for s in infos], [s["label_id"] for s in infos]


@torch.no_grad()
def save_prediction_overlays(
    model: nn.Module,
    image_processor,
    source,
    task: str,
    label_map: LabelMap,
    output_dir: str,
    num_images: int = 4,
    threshold: float = 0.5,
) -> list[str]:
    """Save `num_images` PNGs of the first images of `source`: ground truth (left) beside the prediction (right).

    Predictions come from the image processor + model as at inference (`post_process_*_segmentation`, instance score
    `threshold`). Returns the written paths.
    """
    os.makedirs(output_dir, exist_ok=True)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    names = label_map.id2label
    paths = []
    for index in range(min(num_images, len(source))):
        sample = source[index]
        inputs = image_processor(images=sample.image, return_tensors="pt").to(device)
        outputs = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs.get("pixel_mask"))
        logits = SimpleNamespace(
            class_queries_logits=outputs.class_queries_logits.float(),
            masks_queries_logits=outputs.masks_queries_logits.float(),
        )
        size = [sample.image.shape[:2]]
        scores = None
        if task == "instance":
            result = image_processor.post_process_instance_segmentation(
                logits, threshold=threshold, target_sizes=size, return_binary_maps=True
            )[0]
            prediction = instance_prediction_from_post_processed(result, image_size=size[0])
            pred_masks, pred_labels, scores = list(prediction["masks"]), list(prediction["labels"]), list(prediction["scores"])
        elif task == "semantic":
            semantic = image_processor.post_process_semantic_segmentation(logits, target_sizes=size)[0].cpu().numpy()
            pred_labels = [int(c) for c in np.unique(semantic)]
            pred_masks = [semantic == c for c in pred_labels]
        else:
            result = image_processor.post_process_panoptic_segmentation(
                logits, label_ids_to_fuse=set(label_map.stuff_ids), target_sizes=size
            )[0]
            segmentation = np.asarray(result["segmentation"].cpu() if hasattr(result["segmentation"], "cpu") else result["segmentation"])
            pred_masks = [segmentation == s["id"] for s in result["segments_info"]]
            pred_labels = [s["label_id"] for s in result["segments_info"]]
            scores = [s.get("score", 1.0) for s in result["segments_info"]]
        gt_masks, gt_labels = _segments_of(sample, task)
        left = draw_segments(sample.image, gt_masks, gt_labels, names)
        right = draw_segments(sample.image, pred_masks, pred_labels, names, scores)
        width, height = left.size
        panel = Image.new("RGB", (2 * width + 4, height + 14), (255, 255, 255))
        panel.paste(left, (0, 14))
        panel.paste(right, (width + 4, 14))
        header = ImageDraw.Draw(panel)
        header.text((2, 1), "ground truth", fill=(0, 0, 0))
        header.text((width + 6, 1), "prediction", fill=(0, 0, 0))
        stem = re.sub(r"[^0-9A-Za-z_-]+", "_", os.path.splitext(os.path.basename(str(sample.file_name)))[0])[-60:]
        path = os.path.join(output_dir, f"{index:03d}_{stem or sample.image_id}.png")
        panel.save(path)
        paths.append(path)
    model.train(was_training)
    return paths


# --------------------------------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------------------------------


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def write_model_card(
    output_dir: str,
    config,
    task: str,
    metrics: dict[str, float] | None,
    settings: dict[str, Any],
    dataset_description: str,
    base_model: str | None = None,
) -> str:
    """Write `README.md` in `output_dir`: what the model is, its labels, the metrics table and the training settings.

    `metrics` are the evaluation metrics (keys with or without the `eval_` prefix); `settings` is a flat dict of
    training settings shown as a table. Returns the path.
    """
    backbone = config.backbone_config
    backbone_desc = (
        f"DINOv3 ViT ({backbone.num_hidden_layers} blocks, width {backbone.hidden_size}, tapped blocks "
        f"{config.tapped_layers}; adapter {'with' if config.adapter_spatial_prior else 'without'} spatial prior)"
        if backbone.model_type == "dinov3_vit"
        else f"DINOv3 ConvNeXt (widths {backbone.hidden_sizes}, depths {backbone.depths})"
    )
    tags = ["image-segmentation", f"{task}-segmentation", "mask2former", "dinov3", "mask2former_dinov3"]
    front = ["---", "library_name: transformers", "pipeline_tag: image-segmentation", "tags:"]
    front += [f"- {t}" for t in tags]
    if base_model and not os.path.exists(base_model):  # only hub ids mean something to a reader of the card
        front.append(f"base_model: {base_model}")
    front.append("---")
    lines = front + [
        "",
        f"# Mask2Former + DINOv3 ({task} segmentation)",
        "",
        f"Mask2Former with a {backbone_desc} backbone, fine-tuned with `run_instance_seg.py` (mask2former-dinov3) on "
        f"{dataset_description}.",
        "",
    ]
    checkpoint = getattr(config, "backbone_checkpoint", None)
    lines.append(
        f"Backbone weights: `{checkpoint}`." if checkpoint else "Backbone weights: random initialisation (no pretrained DINOv3 checkpoint)."
    )
    lines += ["", "## Labels", "", "| id | label | kind |", "|---|---|---|"]
    things = set()
    if settings.get("thing_ids") is not None:
        things = set(settings.pop("thing_ids"))
    for i, name in sorted(config.id2label.items()):
        lines.append(f"| {i} | {name} | {'thing' if not things or i in things else 'stuff'} |")
    lines += ["", "## Evaluation", ""]
    if metrics:
        main_keys = {
            "instance": ["map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100"],
            "semantic": ["mean_iou", "pixel_accuracy", "mean_accuracy"],
            "panoptic": ["pq", "sq", "rq", "pq_things", "sq_things", "rq_things", "pq_stuff", "sq_stuff", "rq_stuff"],
        }[task]
        clean = {k[len("eval_") :] if k.startswith("eval_") else k: v for k, v in metrics.items()}
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_format(clean[k])} |" for k in main_keys if k in clean]
        if "loss" in clean:
            lines.append(f"| loss | {_format(clean['loss'])} |")
        if "num_images" in clean:
            lines.append(f"| images | {int(clean['num_images'])} |")
        per_class_prefix = {"instance": "map_", "semantic": "iou_", "panoptic": "pq_"}[task]
        per_class = [(name, clean.get(f"{per_class_prefix}{re.sub(r'[^0-9A-Za-z_-]+', '_', name)}")) for name in config.id2label.values()]
        if any(v is not None for _, v in per_class):
            metric_name = {"instance": "mask AP", "semantic": "IoU", "panoptic": "PQ"}[task]
            lines += ["", f"Per class ({metric_name}):", "", f"| class | {metric_name} |", "|---|---|"]
            lines += [f"| {name} | {_format(v)} |" for name, v in per_class if v is not None]
        metric_source = {
            "instance": "COCO mask AP computed by pycocotools (`COCOeval`, `iouType=\"segm\"`) on "
            "`post_process_instance_segmentation` outputs at the images' original size",
            "semantic": "mean IoU over classes present in ground truth or prediction (unlabelled pixels ignored)",
            "panoptic": "panoptic quality with the COCO panoptic matching rules (IoU > 0.5)",
        }[task]
        lines += ["", f"Metrics: {metric_source}."]
    else:
        lines.append("Not evaluated.")
    lines += ["", "## Training settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {f'{v:g}' if isinstance(v, float) else v} |" for k, v in settings.items()]
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "import torch",
        "from PIL import Image",
        "from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation",
        "import mask2former_dinov3  # registers the model with the Auto classes",
        "",
        'model = AutoModelForUniversalSegmentation.from_pretrained("path/to/this/folder")',
        'processor = AutoImageProcessor.from_pretrained("path/to/this/folder")',
        'image = Image.open("image.jpg").convert("RGB")',
        "with torch.no_grad():",
        '    outputs = model(**processor(images=image, return_tensors="pt"))',
        f"result = processor.post_process_{task}_segmentation(outputs, target_sizes=[image.size[::-1]])[0]",
        "```",
        "",
        "Without the package installed, pass `trust_remote_code=True` (the modeling code is saved beside the weights).",
        "",
    ]
    path = os.path.join(output_dir, "README.md")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines))
    return path


def save_json(path: str, data: dict, merge: bool = False) -> None:
    """Write `data` as indented JSON (NaN written as null, so the file is strict JSON); with `merge`, update the
    file's existing entries instead of replacing them."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in data.items()}
    if merge and os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            clean = {**json.load(handle), **clean}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(clean, handle, indent=2, sort_keys=True)


__all__ = [
    "MAIN_METRIC",
    "Mask2FormerTrainer",
    "build_param_groups",
    "draw_segments",
    "flatten_metrics",
    "save_json",
    "save_prediction_overlays",
    "set_backbone_frozen",
    "vit_layer_id",
    "write_model_card",
]
