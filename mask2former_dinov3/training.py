"""Fine-tuning pieces for Mask2FormerDINOv3 on top of transformers' `Trainer`.

* `build_param_groups`: optimizer parameter groups with a lower learning rate for the DINOv3 backbone
  (`backbone_lr_multiplier`, Mask2Former uses 0.1) and layer-wise learning-rate decay for ViT backbones
  (`layer_decay`), without weight decay on biases, norms, tokens and query / level embeddings.
* `post_process_predictions`: the one evaluation post-processing (the image processor's `post_process_*` at each
  image's original size, in the metrics' format), used by the metrics and the overlays.
* `SegmentationMetrics`: Trainer's `compute_metrics` for `batch_eval_metrics=True` (COCO mask AP, mIoU or PQ).
* `Mask2FormerTrainer`: a `Trainer` that builds those groups and evaluates with those metrics through Trainer's
  public hooks: `prediction_step` returns only the class and mask logits and, as labels, the dataset indices of the
  batch; Trainer gathers them from every process (dropping the images the distributed sampler repeated) and the
  metrics look the ground truth up in the evaluated dataset, each image once, so every process gets the numbers of
  a single-process evaluation. With `tile_size` (training on native-resolution crops) it evaluates by tiles
  instead (`tiled_prediction`, the same tiles as `mask2former-dinov3-predict --tile`), with the same metrics.
  Mask AP keeps up to `max_detections` detections per image: the model's query count, at least COCO's 100.
* `Mask2FormerTrainer.create_model_card`: Trainer's card with `model_card_sections` appended (backbone origin,
  labels, per-class metrics, queries, intended use, limitations, usage).
* `save_prediction_overlays` (drawn by `mask2former_dinov3.overlays`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from accelerate.utils import gather_object
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from transformers.trainer_optimizer import is_optimizer_factory
from transformers.trainer_utils import speed_metrics

from .data import IGNORE_INDEX, EpochCallback, LabelMap, SegmentationCollator, SegmentationDataset, image_for_model
from .metrics import (
    COCO_MAX_DETECTIONS,
    InstanceSegmentationEvaluator,
    PanopticQualityEvaluator,
    SemanticSegmentationEvaluator,
    instance_prediction_from_post_processed,
)
from .overlays import draw_segments, segments_to_draw, side_by_side
from .tiling import predict_tiled


logger = logging.getLogger(__name__)

BACKBONE_PREFIX = "model.pixel_level_module.encoder."
MAIN_METRIC = {"instance": "map", "semantic": "mean_iou", "panoptic": "pq"}
_NO_DECAY_NAME = re.compile(r"(cls_token|mask_token|register_tokens|level_embed|queries_\w+|lambda1|gamma)(\.|$)")


# --------------------------------------------------------------------------------------------------------------------
# Optimizer parameter groups
# --------------------------------------------------------------------------------------------------------------------


def vit_layer_id(name: str, num_layers: int) -> int | None:
    """Depth of a ViT backbone parameter for layer-wise LR decay: embeddings 0, block i -> i + 1, the rest of the
    backbone (its final norm) num_layers + 1; None for parameters outside the backbone.
    """
    if not name.startswith(BACKBONE_PREFIX):
        return None
    rest = name[len(BACKBONE_PREFIX) :]
    match = re.match(r"model\.layer\.(\d+)\.", rest)
    return 0 if rest.startswith("embeddings.") else int(match.group(1)) + 1 if match else num_layers + 1


def build_param_groups(model: nn.Module, learning_rate: float, weight_decay: float, backbone_lr_multiplier: float = 1.0,
                       layer_decay: float | None = None,
                       decay_parameter_names: Sequence[str] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Optimizer parameter groups (trainable parameters only).

    The learning rate of a parameter is `learning_rate * scale` where `scale` is 1 outside the backbone and
    `backbone_lr_multiplier * layer_decay ** (num_layers + 1 - layer_id)` inside it (`vit_layer_id`; ViTDet's
    rule), or just `backbone_lr_multiplier` without `layer_decay` or for a ConvNeXt backbone. Weight decay applies to
    the names in `decay_parameter_names` (Trainer's choice: no biases or norms; all if None) that are matrices and
    not tokens / query / level embeddings / layer scales. Each group carries `lr`, `weight_decay` and `lr_scale`.
    """
    backbone = model.config.backbone_config
    is_vit = backbone.model_type == "dinov3_vit"
    if layer_decay is not None and not is_vit:
        logger.warning("--layer_decay applies to ViT backbones only; the ConvNeXt backbone gets one learning rate.")
    num_layers = backbone.num_hidden_layers if is_vit else 0
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
        decays = (param.ndim > 1 and id(param) not in embedding_params and not _NO_DECAY_NAME.search(name)
                  and (decay_names is None or name in decay_names))  # fmt: skip
        key = (scale, weight_decay if decays else 0.0)
        group = groups.setdefault(
            key, {"params": [], "param_names": [], "lr": learning_rate * scale, "lr_scale": scale, "weight_decay": key[1]}
        )
        group["params"].append(param)
        group["param_names"].append(name)
    return sorted(groups.values(), key=lambda g: (-g["lr_scale"], -g["weight_decay"]))


# --------------------------------------------------------------------------------------------------------------------
# Evaluation: post-processing and metrics
# --------------------------------------------------------------------------------------------------------------------


def _clean_name(name: Any) -> str:
    return re.sub(r"[^0-9A-Za-z_-]+", "_", str(name))


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Scalar metrics for logging: nested per-class dicts become `<metric>_<class name>` keys."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict) and key != "per_class":  # per_class: pq_per_class carries the per-class figure
            prefix = {"map_per_class": "map", "per_class_iou": "iou", "pq_per_class": "pq"}.get(key, key)
            flat.update({f"{prefix}_{_clean_name(name)}": float(sub) for name, sub in value.items()})
        elif isinstance(value, (int, float, np.floating, np.integer)):
            flat[key] = float(value)
    return flat


def post_process_predictions(image_processor, class_queries_logits: torch.Tensor, masks_queries_logits: torch.Tensor,
                             task: str, target_sizes: Sequence[tuple[int, int]], instance_threshold: float = 0.0,
                             panoptic_threshold: float = 0.5,
                             label_ids_to_fuse: set[int] | None = None) -> list:  # fmt: skip
    """Predictions of a batch at each image's original size, in the format of the task's evaluator.

    The image processor's own post-processing, as at inference: instance: `post_process_instance_segmentation(
    threshold=instance_threshold, return_binary_maps=True)` turned into `{"masks", "labels", "scores"}`
    (`instance_prediction_from_post_processed`); semantic: `post_process_semantic_segmentation`, `(H, W)` numpy
    label maps; panoptic: `post_process_panoptic_segmentation(threshold=panoptic_threshold,
    label_ids_to_fuse=...)`, `{"segmentation", "segments_info"}`. The logits are post-processed in float32 whatever
    the autocast dtype was (they are interpolated to the original size).
    """
    if task not in MAIN_METRIC:
        raise ValueError(f"task must be one of {sorted(MAIN_METRIC)}, got {task!r}")
    logits = SimpleNamespace(class_queries_logits=class_queries_logits.float(),
                             masks_queries_logits=masks_queries_logits.float())  # fmt: skip
    sizes = [tuple(int(v) for v in size) for size in target_sizes]
    if task == "instance":
        results = image_processor.post_process_instance_segmentation(
            logits, threshold=instance_threshold, target_sizes=sizes, return_binary_maps=True
        )
        return [instance_prediction_from_post_processed(r, image_size=s) for r, s in zip(results, sizes)]
    if task == "semantic":
        return [m.cpu().numpy() for m in image_processor.post_process_semantic_segmentation(logits, target_sizes=sizes)]
    results = image_processor.post_process_panoptic_segmentation(
        logits, threshold=panoptic_threshold, label_ids_to_fuse=set(label_ids_to_fuse or ()), target_sizes=sizes
    )
    return [{"segmentation": r["segmentation"].cpu().numpy(), "segments_info": list(r["segments_info"])}
            for r in results]


@torch.no_grad()
def tiled_prediction(model: nn.Module, dataset: SegmentationDataset, index: int, tile_size: tuple[int, int],
                     overlap: int, threshold: float = 0.0, batch_size: int = 4) -> Any:  # fmt: skip
    """Prediction of image `index` of `dataset` at its native resolution by tiles (`tiling.predict_tiled`, as
    `mask2former-dinov3-predict --tile` runs it), in the format of the task's evaluator (instance or semantic).

    The image is the one the model sees (`image_for_model`: the processor's intensity normalisation for images that
    are not 8-bit); each window gets the processor's rescaling and normalisation without resizing.
    """
    sample = dataset.source[index]
    image = Image.fromarray(image_for_model(sample.image, dataset.image_processor, sample.file_name))
    parameter = next(model.parameters())
    result = predict_tiled(model, dataset.image_processor, image, tile_size, overlap, task=dataset.task,
                           threshold=threshold, batch_size=batch_size, device=parameter.device,
                           dtype=parameter.dtype)  # fmt: skip
    if dataset.task == "semantic":
        return result.cpu().numpy()
    masks = np.stack([i.mask for i in result]) if result else np.zeros((0, image.height, image.width), bool)
    return {"masks": masks, "labels": np.array([i.label for i in result], dtype=np.int64),
            "scores": np.array([i.score for i in result], dtype=np.float64)}  # fmt: skip


class SegmentationMetrics:
    """Trainer's `compute_metrics` for segmentation, with `batch_eval_metrics=True`.

    Each call gets one gathered batch: `predictions` = `(class_queries_logits, masks_queries_logits)` and
    `label_ids` = the dataset indices of its images (see `Mask2FormerTrainer.prediction_step`). Trainer's gather
    already drops the images the distributed sampler repeated, and every process receives every gathered batch, so
    each computes the numbers of a single-process evaluation by itself. The ground truth is looked up in the dataset
    being evaluated (`start(dataset)`, which `Mask2FormerTrainer.evaluate` calls), the predictions are post-processed
    with `post_process_predictions`. With `compute_result=True` (the last batch) the metrics are returned, flattened
    (`flatten_metrics`), with `num_images` and, for instances, `max_detections`.

    Args:
        task: "instance", "semantic" or "panoptic".
        label_map: the `LabelMap` of the data (class names, things / stuff).
        image_processor: the processor whose `post_process_*_segmentation` is used.
        instance_threshold: score threshold of instance post-processing (0: keep every query, as COCO AP expects
            ranked detections).
        panoptic_threshold: score threshold of panoptic post-processing.
    """

    def __init__(self, task: str, label_map: LabelMap, image_processor, instance_threshold: float = 0.0,
                 panoptic_threshold: float = 0.5):  # fmt: skip
        if task not in MAIN_METRIC:
            raise ValueError(f"task must be one of {sorted(MAIN_METRIC)}, got {task!r}")
        self.task, self.label_map, self.image_processor = task, label_map, image_processor
        self.instance_threshold, self.panoptic_threshold = instance_threshold, panoptic_threshold
        self.dataset = self.evaluator = None

    def start(self, dataset, max_detections: int = COCO_MAX_DETECTIONS) -> None:
        """Begin an evaluation of `dataset` (a `SegmentationDataset(for_evaluation=True)`) with a fresh evaluator;
        mask AP keeps up to `max_detections` detections per image."""
        if not hasattr(dataset, "ground_truth"):
            raise ValueError(
                f"Segmentation metrics need the evaluated dataset's ground truth: pass a SegmentationDataset built "
                f"with for_evaluation=True, got {type(dataset).__name__}."
            )
        self.dataset, names = dataset, self.label_map.id2label
        if self.task == "instance":
            # A source whose size classes are not COCO's (the synthetic shapes) reports its own.
            area_ranges = getattr(getattr(dataset, "source", None), "area_ranges", None)
            self.evaluator = InstanceSegmentationEvaluator(names, max_detections, area_ranges)
        elif self.task == "semantic":
            self.evaluator = SemanticSegmentationEvaluator(self.label_map.num_labels, IGNORE_INDEX, names)
        else:
            self.evaluator = PanopticQualityEvaluator([{"id": i, "name": name, "isthing": i in self.label_map.thing_ids}
                                                       for i, name in names.items()])  # fmt: skip

    def __call__(self, eval_prediction, compute_result: bool = False) -> dict[str, float] | None:
        """Trainer's batch-wise `compute_metrics(eval_prediction, compute_result)`: adds one gathered batch (its
        logits, and the dataset indices of its images as `label_ids`)."""
        if self.evaluator is None:
            raise RuntimeError(
                "SegmentationMetrics.start(dataset) was not called: evaluate through Mask2FormerTrainer.evaluate(), "
                "which starts the metrics on the dataset it evaluates."
            )
        predictions = eval_prediction.predictions
        if not isinstance(predictions, (tuple, list)) or len(predictions) != 2:
            raise ValueError(
                "Segmentation metrics expect (class_queries_logits, masks_queries_logits) batches: use "
                "Mask2FormerTrainer with batch_eval_metrics=True and eval_do_concat_batches=False."
            )
        indices = [int(i) for i in torch.as_tensor(eval_prediction.label_ids).reshape(-1).tolist()]
        truths = [self.dataset.ground_truth(i) for i in indices]
        predictions = post_process_predictions(
            self.image_processor, predictions[0], predictions[1], self.task, [size for size, _ in truths],
            instance_threshold=self.instance_threshold, panoptic_threshold=self.panoptic_threshold,
            label_ids_to_fuse=set(self.label_map.stuff_ids),
        )  # fmt: skip
        self.evaluator.update([truth for _, truth in truths], predictions, image_ids=indices)
        return self.result() if compute_result else None

    def result(self, records: dict | None = None) -> dict[str, float]:
        """The flattened metrics of `records` (default: the images added since `start`), with `num_images` and, for
        instances, `max_detections` (the per-image cap of mask AP)."""
        metrics = flatten_metrics(self.evaluator.compute(records))
        if self.task == "instance":
            metrics["max_detections"] = float(self.evaluator.max_detections)
        return metrics


# --------------------------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------------------------

LOGIT_KEYS = ("class_queries_logits", "masks_queries_logits")


class ConvertedCheckpointWeights(TrainerCallback):
    """Reloads a checkpoint's weights through `from_pretrained` where Trainer loads them without key conversion.

    `save_pretrained` writes checkpoints in their original key layout: it reverts the key conversions that
    `from_pretrained` applies (DINOv3's `layer.*` names, the 0.3.0 adapter names). Trainer loads a checkpoint back,
    when resuming and for `load_best_model_at_end`, with `load_state_dict(strict=False)` and no conversion
    (transformers #43701, #48805): the backbone and adapter would silently keep their current values. This callback
    loads the same checkpoint through `from_pretrained` right after Trainer's load (at the start of the resumed
    run; at the end of training for the best model). DeepSpeed and FSDP keep their own checkpoint formats.
    """

    def __init__(self, trainer: Trainer):
        self.trainer, self.resumed_from = trainer, None

    def reload(self, model, checkpoint: str) -> None:
        """Load `checkpoint`'s weights into `model` in place (the optimizer keeps its parameters)."""
        if self.trainer.is_deepspeed_enabled or self.trainer.is_fsdp_enabled:
            return
        loaded = type(model).from_pretrained(checkpoint, config=model.config)
        model.load_state_dict(loaded.state_dict())
        logger.info("Loaded the weights of %s with their key conversions.", checkpoint)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """Reload the checkpoint a resumed run started from."""
        if self.resumed_from is not None:
            self.reload(model, self.resumed_from)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        """Reload the best checkpoint that `load_best_model_at_end` has just loaded."""
        if args.load_best_model_at_end and state.best_model_checkpoint is not None:
            self.reload(model, state.best_model_checkpoint)


class Mask2FormerTrainer(Trainer):
    """`Trainer` for Mask2FormerDINOv3: backbone / layer-wise learning rates, and segmentation metrics at evaluation.

    Extra arguments:
        task: "instance", "semantic" or "panoptic" (chooses the post-processing and metric).
        label_map: the `LabelMap` of the data (class names, things / stuff).
        image_processor: used for post-processing (`post_process_*_segmentation`).
        instance_threshold: score threshold of `post_process_instance_segmentation` for mAP (default 0: keep every
            query, as COCO AP expects ranked detections).
        panoptic_threshold: `threshold` of `post_process_panoptic_segmentation`.
        tile_size, tile_overlap: evaluate by tiles instead (a model trained on native-resolution crops): each image
            is predicted at its own resolution with `tiled_prediction` (windows of `tile_size`, `tile_overlap`
            pixels apart at least), each process taking its share of the images; the metrics are the same code.

    Evaluation datasets must be `SegmentationDataset(for_evaluation=True)`: their batches carry `dataset_index`,
    which `prediction_step` returns as labels. Unless `compute_metrics` is given, the metrics are a
    `SegmentationMetrics`, which needs `batch_eval_metrics=True` and `eval_do_concat_batches=False` (set here).
    """

    def __init__(self, *args, task: str = "instance", label_map: LabelMap | None = None, image_processor=None,
                 instance_threshold: float = 0.0, panoptic_threshold: float = 0.5,
                 tile_size: tuple[int, int] | None = None, tile_overlap: int = 0, **kwargs):  # fmt: skip
        if tile_size is not None and task == "panoptic":
            raise ValueError("tiled evaluation supports the instance and semantic tasks, not panoptic")
        self.tile_size = None if tile_size is None else (int(tile_size[0]), int(tile_size[1]))
        self.tile_overlap = int(tile_overlap)
        self.segmentation_metrics = None
        if kwargs.get("compute_metrics") is None and label_map is not None and image_processor is not None:
            self.segmentation_metrics = SegmentationMetrics(task, label_map, image_processor, instance_threshold,
                                                            panoptic_threshold)  # fmt: skip
            kwargs["compute_metrics"] = self.segmentation_metrics
        super().__init__(*args, **kwargs)
        # Evaluation batches carry `dataset_index`, no argument of the model's forward: Trainer must not drop it.
        self.args.remove_unused_columns = False
        if self.segmentation_metrics is not None:
            # Metrics per gathered batch: concatenating every batch's mask logits would hold the whole evaluation
            # set's logits in memory (transformers' own segmentation example sets the same).
            self.args.batch_eval_metrics = True
            self.args.eval_do_concat_batches = False
        self.card_details: ModelCardDetails | None = None  # set before create_model_card
        # Mask2Former normalises its loss itself (by the number of masks): Trainer must not rescale it.
        self.model_accepts_loss_kwargs = False
        self.checkpoint_weights = ConvertedCheckpointWeights(self)
        self.add_callback(self.checkpoint_weights)
        if hasattr(self.train_dataset, "set_epoch"):  # per-epoch draws, whoever builds the trainer
            self.add_callback(EpochCallback(self.train_dataset, self.args))

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """Trainer's `train`; a checkpoint it resumes from gets its weights through `ConvertedCheckpointWeights`."""
        last = resume_from_checkpoint is True and get_last_checkpoint(self.args.output_dir)
        self.checkpoint_weights.resumed_from = (last if resume_from_checkpoint is True else resume_from_checkpoint) or None
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    @property
    def max_detections(self) -> int:
        """Detections per image that mask AP keeps: the model's query count, so that no query the model was sized
        for is thrown away, and COCO's 100 for models with at most 100 queries (COCO numbers stay comparable)."""
        return max(COCO_MAX_DETECTIONS, int(self.accelerator.unwrap_model(self.model).config.num_queries))

    def create_optimizer(self, model=None):
        """Trainer's optimizer (`--optim`, AdamW by default) over `build_param_groups`'s groups, with the args'
        `backbone_lr_multiplier` and `layer_decay` (`SegmentationTrainingArguments`; plain `TrainingArguments`: 1, none)."""
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs or self.get_optimizer_cls_and_kwargs(
            self.args, opt_model
        )
        if {"params", "model", "optimizer_dict"} & set(optimizer_kwargs) or is_optimizer_factory(optimizer_cls):
            logger.warning("--optim %s builds its own parameter groups: backbone LR multiplier / layer decay not applied.", self.args.optim)
            return super().create_optimizer(model)
        multiplier = getattr(self.args, "backbone_lr_multiplier", None)
        groups = build_param_groups(opt_model, self.args.learning_rate, self.args.weight_decay,
                                    1.0 if multiplier is None else multiplier, getattr(self.args, "layer_decay", None),
                                    self.get_decay_parameter_names(opt_model))  # fmt: skip
        self.optimizer = optimizer_cls([{k: v for k, v in g.items() if k != "param_names"} for g in groups],
                                       **optimizer_kwargs)  # fmt: skip
        return self.optimizer

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Trainer's `evaluate`, with the segmentation metrics started on the dataset it evaluates."""
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        # A dict of datasets comes back here once per dataset (Trainer.evaluate recurses).
        if self.segmentation_metrics is not None and not isinstance(dataset, dict):
            self.segmentation_metrics.start(dataset, self.max_detections)
            if self.tile_size is not None:
                return self._evaluate_tiled(dataset, metric_key_prefix)
        metrics = super().evaluate(eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        # Trainer times the model's preparation when evaluating without training; keep eval_results.json's keys the
        # same for every kind of run.
        metrics.pop(f"{metric_key_prefix}_model_preparation_time", None)
        return metrics

    def _evaluate_tiled(self, dataset, metric_key_prefix: str) -> dict[str, float]:
        # Whole images at native resolution have no common size for Trainer's batched loop (nor a loss): each
        # process predicts its share by tiles, then the per-image records of every process are gathered.
        metrics_of = self.segmentation_metrics
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        start = time.time()
        threshold = metrics_of.instance_threshold if metrics_of.task == "instance" else 0.0
        for index in range(self.args.process_index, len(dataset), self.args.world_size):
            prediction = tiled_prediction(model, dataset, index, self.tile_size, self.tile_overlap, threshold=threshold,
                                          batch_size=self.args.per_device_eval_batch_size)  # fmt: skip
            metrics_of.evaluator.update([dataset.ground_truth(index)[1]], [prediction], image_ids=[index])
        model.train(was_training)
        records = {k: v for part in gather_object([metrics_of.evaluator.records]) for k, v in part.items()}
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics_of.result(records).items()}
        metrics.update(speed_metrics(metric_key_prefix, start, num_samples=len(dataset)))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test"):
        """Trainer's `predict`, with the segmentation metrics started on `test_dataset`."""
        if self.segmentation_metrics is not None:
            self.segmentation_metrics.start(test_dataset, self.max_detections)
        return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """Trainer's loss; with `return_outputs`, the outputs are cut down to the class and mask logits, so that
        evaluation neither keeps nor gathers the hidden states and auxiliary predictions."""
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        return (result[0], {key: result[1][key] for key in LOGIT_KEYS}) if return_outputs else result

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys=None):
        """Trainer's prediction step returning `(loss, (class_queries_logits, masks_queries_logits), dataset
        indices)`: the indices are what Trainer gathers as labels; the metrics look the ground truth up by them."""
        inputs = dict(inputs)
        indices = inputs.pop("dataset_index", None)
        if indices is None and not prediction_loss_only and self.segmentation_metrics is not None:
            raise ValueError(
                "Evaluation batches carry no 'dataset_index': build the evaluation dataset with "
                "SegmentationDataset(..., for_evaluation=True) so that the metrics can find each image's ground truth."
            )
        loss, logits, _ = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        return (loss, None, None) if prediction_loss_only else (loss, logits, indices)

    def create_model_card(self, **kwargs) -> None:
        """Trainer's model card (its hyperparameters, results and versions), with `model_card_sections` appended
        when `card_details` is set; `push_to_hub` writes the same card."""
        details = self.card_details
        if details is not None:
            kwargs.setdefault("tags", ["image-segmentation", f"{details.task}-segmentation", "mask2former", "dinov3"])
            # Only a hub id is a model Trainer may link to; None lets it say "trained from scratch".
            base = details.base_model
            kwargs.setdefault("finetuned_from", base if base and not os.path.exists(base) and "/" in base else None)
        super().create_model_card(**kwargs)
        if details is None or not self.is_world_process_zero():
            return
        path = os.path.join(self.args.output_dir, "README.md")
        with open(path, encoding="utf-8") as handle:
            card = handle.read()
        folder = os.path.basename(os.path.normpath(self.args.output_dir))
        if details.base_model and kwargs["finetuned_from"] is None:  # a local folder or file: named, not linked
            card = card.replace("This model was trained from scratch on", f"This model is a fine-tuned version of "
                                f"`{details.base_model}` on")  # fmt: skip
        card = card.replace("on an unknown dataset.", f"on {details.dataset_description}.")
        for heading, text in (("Model description", "See *Mask2Former + DINOv3* below."),
                              ("Intended uses & limitations", "See *Intended use* and *Limitations* below."),
                              ("Training and evaluation data", details.dataset_description + ".")):  # fmt: skip
            card = card.replace(f"## {heading}\n\nMore information needed", f"## {heading}\n\n{text}")
        config = self.accelerator.unwrap_model(self.model).config
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(card.rstrip("\n") + "\n" + model_card_sections(config, details, folder))


# --------------------------------------------------------------------------------------------------------------------
# Overlays (drawn by `mask2former_dinov3.overlays`, shared with the prediction CLI)
# --------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def save_prediction_overlays(model: nn.Module, dataset: SegmentationDataset, label_map: LabelMap, output_dir: str,
                             num_images: int = 4, instance_threshold: float = 0.5, panoptic_threshold: float = 0.5,
                             tile_size: tuple[int, int] | None = None, tile_overlap: int = 0) -> list[str]:  # fmt: skip
    """Save `num_images` PNGs of the first images of `dataset`: ground truth (left) beside the prediction (right).

    The prediction goes through evaluation's own path: the dataset's preprocessing (the image processor) and
    `post_process_predictions` (instance scores below `instance_threshold` are not drawn), or, with `tile_size`,
    `tiled_prediction`. Both panels show the image the model sees (images that are not 8-bit after the processor's
    intensity normalisation), enlarged to at least `overlays.OVERLAY_MIN_SIDE` pixels, one label per object; an
    empty panel says so. Returns the written paths.
    """
    os.makedirs(output_dir, exist_ok=True)
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    task, paths = dataset.task, []
    threshold = instance_threshold if task == "instance" else panoptic_threshold
    for index in range(min(num_images, len(dataset))):
        size, truth = dataset.ground_truth(index)
        if tile_size is not None:
            prediction = tiled_prediction(model, dataset, index, tile_size, tile_overlap, threshold=instance_threshold)
        else:
            batch = SegmentationCollator()([dataset[index]])
            outputs = model(pixel_values=batch["pixel_values"].to(device), pixel_mask=batch["pixel_mask"].to(device))
            prediction = post_process_predictions(
                dataset.image_processor, outputs.class_queries_logits, outputs.masks_queries_logits, task, [size],
                instance_threshold=instance_threshold, panoptic_threshold=panoptic_threshold,
                label_ids_to_fuse=set(label_map.stuff_ids),
            )[0]  # fmt: skip
        sample = dataset.source[index]
        # What the model sees: an image that is not 8-bit after the processor's intensity normalisation.
        image = image_for_model(sample.image, dataset.image_processor, sample.file_name)
        left = draw_segments(image, *segments_to_draw(truth, task, IGNORE_INDEX)[:2], label_map.id2label,
                             empty_text="no annotated objects")  # fmt: skip
        masks, labels, scores = segments_to_draw(prediction, task, IGNORE_INDEX)
        right = draw_segments(image, masks, labels, label_map.id2label, scores,
                              empty_text=f"no prediction above threshold {threshold:g}")  # fmt: skip
        stem = _clean_name(os.path.splitext(os.path.basename(str(sample.file_name)))[0])[-60:]
        paths.append(os.path.join(output_dir, f"{index:03d}_{stem or sample.image_id}.png"))
        side_by_side(left, right, ("ground truth", "prediction")).save(paths[-1])
    model.train(was_training)
    return paths


# --------------------------------------------------------------------------------------------------------------------
# Model card: Trainer's, with this model's own sections
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelCardDetails:
    """What `Mask2FormerTrainer.create_model_card` adds to Trainer's card. No field may hold a local path: the card
    is shared (names are hub ids, or a folder's / file's last component)."""

    task: str
    dataset_description: str
    settings: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] | None = None
    base_model: str | None = None  # the Mask2FormerDINOv3 model fine-tuned from (hub id or folder name)
    thing_ids: Sequence[int] | None = None
    tiling: tuple[tuple[int, int], int] | None = None


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


_METRIC_SOURCE = {
    "instance": ("map", "mask AP", "COCO mask AP (COCOeval, `iouType=\"segm\"`) on `post_process_instance_segmentation`"
                 " outputs at the images' original size, with up to {cap} detections per image"),
    "semantic": ("iou", "IoU", "mean IoU over classes present in ground truth or prediction (unlabelled pixels "
                 "ignored)"),
    "panoptic": ("pq", "PQ", "panoptic quality with the COCO panoptic matching rules (IoU > 0.5)"),
}  # fmt: skip


def model_card_sections(config, details: ModelCardDetails, folder: str) -> str:
    """Markdown appended to Trainer's card: backbone origin, labels, metrics (main and per class, and for instances
    the detections per image that mask AP kept), the settings Trainer does not list, intended use, limitations and
    usage snippets for the folder named `folder`."""
    task, description, base = details.task, details.dataset_description, details.base_model
    backbone, checkpoint = config.backbone_config, getattr(config, "backbone_checkpoint", None)
    synthetic = "synthetic" in description
    if backbone.model_type == "dinov3_vit":
        backbone_desc = (f"ViT ({backbone.num_hidden_layers} blocks, width {backbone.hidden_size}, tapped blocks "
                         f"{config.tapped_layers}; adapter {'with' if config.adapter_spatial_prior else 'without'} "
                         "spatial prior)")  # fmt: skip
    else:
        backbone_desc = f"ConvNeXt (widths {backbone.hidden_sizes}, depths {backbone.depths})"
    if checkpoint:
        origin = f" initialised from the pretrained DINOv3 checkpoint `{checkpoint}`, fine-tuned"
        weights = f"`{checkpoint}` (pretrained DINOv3)"
    elif base:
        origin = f", fine-tuned from the Mask2FormerDINOv3 model `{base}`"
        weights = (f"from `{base}`, whose configuration records no pretrained DINOv3 checkpoint (its backbone most "
                   "likely started from random initialisation)")  # fmt: skip
    else:
        origin = ", trained from scratch (random initialisation, no pretrained weights)"
        weights = "random initialisation (no pretrained DINOv3 checkpoint)"
    things = set(details.thing_ids or ())
    lines = [f"\n## Mask2Former + DINOv3 ({task} segmentation)\n", f"Mask2Former with a DINOv3 {backbone_desc} backbone"
             f"{origin} with `run_instance_seg.py` (mask2former-dinov3) on {description}.\n",
             f"Backbone weights: {weights}.\n", "### Labels\n", "| id | label | kind |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {i} | {name} | {'thing' if not things or i in things else 'stuff'} |"
              for i, name in sorted(config.id2label.items())]  # fmt: skip
    lines.append("\n### Evaluation\n")
    metrics = {k.removeprefix("eval_"): v for k, v in (details.metrics or {}).items()}
    if metrics:  # Trainer's card lists every metric above; this adds the per-class table and how it was computed
        (prefix, name, source), main = _METRIC_SOURCE[task], MAIN_METRIC[task]
        cap = int(metrics.get("max_detections", 100))
        lines += [f"{main}: {_format(metrics.get(main, math.nan))} on {int(metrics.get('num_images', 0))} images"
                  + (f" (AP with up to {cap} detections per image)." if task == "instance" else "."),
                  f"\nPer class ({name}):\n", f"| class | {name} |", "|---|---|"]  # fmt: skip
        per_class = {label: metrics.get(f"{prefix}_{_clean_name(label)}") for label in config.id2label.values()}
        lines += [f"| {label} | {_format(value)} |" for label, value in per_class.items() if value is not None]
        lines.append(f"\nMetrics: {source.format(cap=cap)}.")
    else:
        lines.append("Not evaluated.")
    lines += ["\n### Training settings\n", "(Trainer's own hyperparameters are listed above.)\n",
              "| setting | value |", "|---|---|"]  # fmt: skip
    lines += [f"| {k} | {f'{v:g}' if isinstance(v, float) else v} |" for k, v in details.settings.items()]
    if synthetic and not checkpoint:
        use = ("A demonstration and test model: trained from scratch on the package's synthetic shapes, it shows that "
               "the training pipeline works end to end. It is not meant for real images.")  # fmt: skip
    else:
        use = (f"{task.capitalize()} segmentation of images like the training data ({description}), for the "
               f"{len(config.id2label)} classes listed under Labels; check it on your own images before relying on it.")
    lines += ["\n### Intended use\n", use, "\n### Limitations\n"]
    if synthetic:
        lines.append("- Trained on synthetic shapes only: on real images its output is meaningless.")
    if not checkpoint and not base:
        lines.append("- The backbone started from random weights (no DINOv3 pretraining), so its features are far "
                     "weaker than a pretrained DINOv3's; for real data, fine-tune from a pretrained backbone "
                     "(`--backbone_name_or_path`).")  # fmt: skip
    lines += [
        "- It knows only the classes under Labels: other objects are missed or given one of these labels.",
        "- Images must be prepared by the image processor saved with the model (its resize, rescaling and "
        "normalisation mean / std, as in training); other preprocessing gives wrong results.",
        f"- It finds at most {config.num_queries} segments per image (`num_queries`); denser scenes lose instances.",
        "- The metrics above come from the validation split named above only; on other data they are unknown."
        if metrics else "- It was not evaluated.",
        "\n### Usage\n",
    ]  # fmt: skip
    if details.tiling is not None:
        (tile_h, tile_w), overlap = details.tiling
        lines.append(
            f"Trained on random {tile_h} x {tile_w} crops at the images' native resolution, and evaluated by tiles: "
            f"run it the same way, on {tile_h} x {tile_w} windows of the image at its own resolution (overlap "
            f"{overlap} px), not on whole images resized to {tile_h} x {tile_w}. `mask2former-dinov3-predict "
            f"{folder} IMAGES... --output_dir OUT` does so by default (it reads `tiling.json`); in Python, "
            f"`mask2former_dinov3.tiling.predict_tiled(model, processor, image, ({tile_h}, {tile_w}), {overlap})`. "
            "The snippets below run whole images resized to the processor's size instead.\n"
        )  # fmt: skip
    lines += [
        f"Run from the folder that contains `{folder}` (or use its hub id). With `trust_remote_code=True` the code saved",
        "beside the weights is used, so the `mask2former-dinov3` package need not be installed:\n",
        "```python", "from transformers import pipeline\n",
        f'segmenter = pipeline("image-segmentation", model="{folder}", trust_remote_code=True)',
        f'segments = segmenter("image.jpg", subtask="{task}")  # dicts with "label", "score" and a PIL "mask"', "```\n",
        "Or with the model and its image processor"
        + (" (the same resizing and normalisation as in training):\n" if details.tiling is None else ":\n"),
        "```python", "import torch", "from PIL import Image",
        "from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation\n",
        f'model = AutoModelForUniversalSegmentation.from_pretrained("{folder}", trust_remote_code=True)',
        f'processor = AutoImageProcessor.from_pretrained("{folder}", trust_remote_code=True)',
        'image = Image.open("image.jpg").convert("RGB")', "with torch.no_grad():",
        '    outputs = model(**processor(images=image, return_tensors="pt"))',
        f"result = processor.post_process_{task}_segmentation(outputs, target_sizes=[image.size[::-1]])[0]", "```\n",
    ]  # fmt: skip
    return "\n".join(lines)


__all__ = [
    "MAIN_METRIC", "ModelCardDetails", "ConvertedCheckpointWeights", "Mask2FormerTrainer", "SegmentationMetrics",
    "build_param_groups", "flatten_metrics", "model_card_sections", "post_process_predictions",
    "save_prediction_overlays", "tiled_prediction", "vit_layer_id"
]  # fmt: skip
