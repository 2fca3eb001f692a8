"""Fine-tuning of Mask2FormerDINOv3: the body of the repository's `run_instance_seg.py`.

`main(argv)` reads top to bottom like transformers' `examples/pytorch/instance-segmentation/
run_instance_segmentation.py`: arguments (`mask2former_dinov3.arguments`), logging, output folder, data, model,
`Trainer`, train, evaluate, outputs (label map, tiling, overlays), model card, push. The helpers above it load the
data (COCO / Roboflow folders, StarDist / Cellpose label-image folders, a Hugging Face dataset in transformers'
example format, or the offline default's synthetic shapes) and build the model (`--model_name_or_path`,
`--backbone_name_or_path`, `--preset` or the offline default's small model, with enough queries for the densest
training image).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from .arguments import DataTrainingArguments, ModelArguments, check_arguments, cli, crop_size, parse_args, run_phase
from .configuration_mask2former_dinov3 import Mask2FormerDINOv3Config, check_input_size
from .data import (
    IGNORE_INDEX, CocoSegmentationSource, DataError, HFSegmentationSource, InstanceCount,
    LabelImageSource, LabelMap, SegmentationCollator, SegmentationDataset, build_augmentation, count_instances,
    find_label_image_split, find_roboflow_split, label_map_from_semantic_class_to_id, load_hf_dataset,
    require_instances, semantic_class_to_id_of, thing_semantic_ids
)
from .image_processing_mask2former_dinov3 import Mask2FormerDINOv3ImageProcessor
from .loading import checkpoint_name
from .modeling_mask2former_dinov3 import Mask2FormerDINOv3ForUniversalSegmentation
from .presets import get_preset
from .synthetic import SyntheticSegmentationSource
from .tiling import default_overlap, save_tiling
from .training import Mask2FormerTrainer, ModelCardDetails, save_prediction_overlays


logger = logging.getLogger(__name__)


def resolve_checkpoint(training_args) -> str | bool | None:
    """The checkpoint to resume from, following Trainer's `overwrite_output_dir` convention.

    An explicit `--resume_from_checkpoint` wins ("true"/"last": the last one in output_dir). Otherwise, when training
    into an existing non-empty output_dir: resume from its last checkpoint if it has one; if it has none, it holds a
    different run and a `ValueError` is raised unless `--overwrite_output_dir`.
    """
    resume, output_dir = training_args.resume_from_checkpoint, training_args.output_dir
    if resume:
        return True if str(resume).lower() in ("true", "last") else resume
    if not (training_args.do_train and output_dir and os.path.isdir(output_dir)) or training_args.overwrite_output_dir:
        return None
    last = get_last_checkpoint(output_dir)
    if last is None and os.listdir(output_dir):
        raise ValueError(
            f"Output directory ({output_dir}) already exists, is not empty and holds no checkpoint to resume: it "
            f"contains a different run. Pass --overwrite_output_dir to overwrite it, or choose another --output_dir."
        )
    if last is not None:
        logger.info("Checkpoint detected, resuming training at %s. Pass --overwrite_output_dir to start afresh.", last)
    return last


@dataclass
class DataBundle:
    """The splits of one dataset and its label map."""

    label_map: LabelMap
    train: Any = None
    validation: Any = None
    test: Any = None
    description: str = ""


SPLITS = ("train", "validation", "test")


def load_data(data_args: DataTrainingArguments, model_args: ModelArguments, training_args) -> DataBundle:
    """Sources and label map from the data arguments (HF dataset, COCO / label-image folders, or the offline
    default)."""
    coco_given = data_args.data_dir or data_args.train_annotation_file or data_args.validation_annotation_file
    if data_args.dataset_name and coco_given:
        raise ValueError("Pass either --dataset_name or COCO files (--data_dir / --*_annotation_file), not both.")
    if data_args.dataset_name:
        bundle = _load_hf(data_args, model_args, training_args)
    elif coco_given or data_args.test_annotation_file:
        bundle = _load_folders(data_args, training_args)
    else:
        probabilities = tuple(float(p) for p in data_args.synthetic_size_probabilities.split(","))
        train, validation = (
            SyntheticSegmentationSource(split, count, data_args.synthetic_seed, data_args.synthetic_image_size,
                                        data_args.task != "instance", size_probabilities=probabilities)
            for split, count in (("train", data_args.synthetic_train_samples), ("valid", data_args.synthetic_eval_samples))
        )  # fmt: skip
        (_, small), (_, medium) = validation.area_ranges["small"], validation.area_ranges["medium"]
        bundle = DataBundle(
            label_map=train.label_map, train=train, validation=validation,
            description=f"the package's synthetic shapes ({len(train)} training / {len(validation)} validation "
            f"images of {data_args.synthetic_image_size} px, seed {data_args.synthetic_seed}, small / medium / large "
            f"shape probabilities {data_args.synthetic_size_probabilities}; map_small / map_medium / map_large use "
            f"these size classes: areas under {small:.0f} px, {small:.0f} to {medium:.0f} px, over {medium:.0f} px)",
        )  # fmt: skip
    for split, count in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples),
                         ("test", data_args.max_eval_samples)):  # fmt: skip
        source = getattr(bundle, split)
        if source is not None and count is not None and count < len(source):
            setattr(bundle, split, torch.utils.data.Subset(source, range(count)))
    if training_args.do_train and bundle.train is None:
        raise ValueError("--do_train needs training data (train/ in --data_dir, --train_annotation_file or a train split).")
    if training_args.do_eval and bundle.validation is None:
        raise ValueError("--do_eval needs validation data (valid/ in --data_dir, --validation_annotation_file or a split).")
    for split, needed in (("train", training_args.do_train), ("validation", training_args.do_eval)):
        if needed:  # no instance: an error for training, a warning for evaluation
            require_instances(getattr(bundle, split), data_args.task, split)
    return bundle


def _load_folders(data_args: DataTrainingArguments, training_args) -> DataBundle:
    # COCO JSON splits (--*_annotation_file, or Roboflow's layout in --data_dir); else label images in --data_dir.
    root, splits = data_args.data_dir, {}
    for split in SPLITS:
        annotation_file, image_dir = (getattr(data_args, f"{split}_{key}") for key in ("annotation_file", "image_dir"))
        if annotation_file is None and root:
            annotation_file, found_dir = find_roboflow_split(root, split) or (None, None)
            image_dir = image_dir or found_dir
        if annotation_file is not None:
            splits[split] = (annotation_file, image_dir)
    label_images = bool(root) and not splits
    if label_images:
        splits = {split: pairs for split in SPLITS if (pairs := find_label_image_split(root, split)) is not None}
        if not splits:
            raise DataError(
                f"{root}: no split found; expected Roboflow's COCO layout (train/_annotations.coco.json, "
                f"valid/_annotations.coco.json, optional test/) or label images in train/, valid/ (optional test/): "
                f"StarDist's images/NAME.tif with masks/NAME.tif, or Cellpose's NAME.tif (NAME_img.tif) with "
                f"NAME_masks.tif."
            )
    if "validation" not in splits and "test" in splits and training_args.do_eval:
        logger.warning("No validation split: evaluating on the test split (%s).", root or splits["test"][0])
        splits["validation"] = splits.pop("test")
    # The card is shared: data is named relative to --data_dir (or by a file's own name), never by a local path.
    where = f"`{os.path.basename(os.path.normpath(root))}`, " if root else ""
    if label_images:
        sources = {split: LabelImageSource(pairs, data_args.label_image_class) for split, pairs in splits.items()}
        counts = ", ".join(f"{split}: {len(pairs)} images" for split, pairs in splits.items())
        description = f"label images ({where}{counts}; class `{data_args.label_image_class}`)"
        return DataBundle(label_map=next(iter(sources.values())).label_map, description=description, **sources)
    sources, label_map = {}, None
    for split in (s for s in SPLITS if s in splits):  # the training JSON's categories define the label map
        sources[split] = CocoSegmentationSource(*splits[split], label_map=label_map)
        label_map = sources[split].label_map
    names = {split: os.path.relpath(path, root) if root else os.path.basename(path) for split, (path, _) in splits.items()}
    description = where + ", ".join(f"{split}: `{name}`" for split, name in names.items())
    return DataBundle(label_map=label_map, description=f"COCO-format data ({description})", **sources)


def _load_hf(data_args: DataTrainingArguments, model_args: ModelArguments, training_args) -> DataBundle:
    name = data_args.dataset_name
    dataset = load_hf_dataset(name, token=model_args.token, trust_remote_code=model_args.trust_remote_code)
    if "train" not in dataset:
        raise DataError(f"{name}: no 'train' split (splits: {list(dataset)}).")
    splits = {"train": dataset["train"], "test": dataset.get("test"),
              "validation": next((dataset[s] for s in ("validation", "valid", "val") if s in dataset), None)}  # fmt: skip
    if splits["validation"] is None and training_args.do_eval:
        held_out = splits["train"].train_test_split(test_size=data_args.train_val_split, seed=training_args.seed)
        splits["train"], splits["validation"] = held_out["train"], held_out["test"]
        logger.info("No validation split: held out %.0f%% of train.", 100 * data_args.train_val_split)
    things = thing_semantic_ids(splits["train"]) if data_args.task == "panoptic" else None
    mapping = semantic_class_to_id_of(splits["train"], name)
    label_map = label_map_from_semantic_class_to_id(mapping, data_args.do_reduce_labels, things)
    sources = {split: HFSegmentationSource(rows, label_map, data_args.do_reduce_labels, name=f"{name} [{split}]")
               for split, rows in splits.items() if rows is not None}  # fmt: skip
    return DataBundle(label_map=label_map, description=f"the dataset `{checkpoint_name(name)}`", **sources)


# The offline default's small model: a 4-stage DINOv3 ConvNeXt (widths 32-256) and a slim head.
OFFLINE_BACKBONE = {"hidden_sizes": [32, 64, 128, 256], "depths": [1, 1, 2, 1]}
OFFLINE_HEAD = {"feature_size": 64, "mask_feature_size": 64, "hidden_dim": 64, "encoder_feedforward_dim": 256,
                "dim_feedforward": 256, "encoder_layers": 2, "decoder_layers": 4, "num_attention_heads": 4,
                "num_queries": 20, "train_num_points": 1024}  # fmt: skip
MIN_NUM_QUERIES = 100  # Mask2Former's default: the floor for --preset / --backbone_name_or_path models
QUERIES_PER_INSTANCE = 1.25  # headroom over the densest training image


def choose_num_queries(model_args: ModelArguments, count: InstanceCount | None) -> tuple[int | None, str]:
    """`(num_queries, note)` for a new model: enough queries for the densest training image.

    A new model (`--preset`, `--backbone_name_or_path` without a head, or the offline default) gets at least
    ceil(1.25 x the largest instance count) queries, never fewer than its own default (100 for presets and pretrained
    backbones, 20 for the offline default's small model). `num_queries` is None, i.e. the model's own value is kept,
    when the user set it (`--config_overrides num_queries=N`), for an existing checkpoint or transferred head (their
    queries are fixed), or when the default suffices. `note` says what was decided, for the log and the model card.
    """
    if model_args.model_name_or_path:
        return None, f"fixed by the checkpoint {checkpoint_name(model_args.model_name_or_path)}"
    if model_args.head_name_or_path:
        return None, f"fixed by the transferred head {checkpoint_name(model_args.head_name_or_path)}"
    given = parse_config_overrides(model_args.config_overrides).get("num_queries")
    if given is not None:
        return None, f"{given} (set by --config_overrides)"
    default = MIN_NUM_QUERIES if (model_args.preset or model_args.backbone_name_or_path) else OFFLINE_HEAD["num_queries"]
    if count is None:
        return None, f"{default} (default)"
    bound = "at most " if not count.exact else ""
    needed = math.ceil(QUERIES_PER_INSTANCE * count.largest)
    if needed <= default:
        return None, f"{default} (default; the densest training image has {bound}{count.largest} instances)"
    return needed, (
        f"{needed} (raised from the default {default}: the densest training image, {os.path.basename(count.image)}, has {bound}"
        f"{count.largest} instances; {QUERIES_PER_INSTANCE} x that, rounded up)"
    )


def parse_config_overrides(text: str | None) -> dict[str, Any]:
    """`'a=1,b=0.5,c=true,d=[1,2]'` -> `{'a': 1, 'b': 0.5, 'c': True, 'd': [1, 2]}` (values parsed as JSON; a
    value may hold a list or object, not nested ones)."""
    result = {}
    for part in filter(str.strip, re.split(r",(?![^\[{]*[\]}])", text or "")):  # commas outside brackets
        key, found, value = (x.strip() for x in part.partition("="))
        if not found:
            raise ValueError(f"--config_overrides: expected key=value, got {part!r}.")
        try:
            result[key] = json.loads(value)
        except json.JSONDecodeError:
            result[key] = {"True": True, "False": False, "None": None}.get(value, value)
    return result


def build_model(
    model_args: ModelArguments, data_args: DataTrainingArguments, label_map: LabelMap, num_queries: int | None = None
):
    """`(model, image_processor, pretrained)`: the model with a head for `label_map`, the processor configured with
    the training size, and whether weights were loaded (which sets the default backbone LR multiplier). The model
    flags were checked by `arguments.check_arguments`.

    `num_queries` (see `choose_num_queries`) sets the queries of a new model; an existing checkpoint keeps its own.
    """
    labels = {"id2label": label_map.id2label, "label2id": label_map.label2id}
    overrides = parse_config_overrides(model_args.config_overrides)
    if num_queries is not None and not model_args.model_name_or_path:
        overrides["num_queries"] = num_queries
    hub_kwargs = {k: v for k, v in (("token", model_args.token), ("cache_dir", model_args.cache_dir)) if v}
    cls = Mask2FormerDINOv3ForUniversalSegmentation
    if model_args.model_name_or_path:
        if overrides:
            raise ValueError("--config_overrides applies to new models (--preset / default), not --model_name_or_path.")
        model = cls.from_pretrained(model_args.model_name_or_path, ignore_mismatched_sizes=True,
                                    num_labels=label_map.num_labels, **labels, **hub_kwargs)  # fmt: skip
    elif model_args.backbone_name_or_path:
        model = cls.from_dinov3_pretrained(model_args.backbone_name_or_path, head=model_args.head_name_or_path,
                                           hub_kwargs=hub_kwargs, num_labels=label_map.num_labels, **labels,
                                           **overrides)  # fmt: skip
    elif model_args.preset:
        model = cls(Mask2FormerDINOv3Config.from_preset(model_args.preset, **labels, **overrides))
    else:
        from transformers import DINOv3ConvNextConfig

        config = Mask2FormerDINOv3Config(backbone_config=DINOv3ConvNextConfig(**OFFLINE_BACKBONE),
                                         **{**OFFLINE_HEAD, **labels, **overrides})  # fmt: skip
        model = cls(config)
    if model_args.freeze_backbone:
        model.freeze_backbone()
    image_processor = Mask2FormerDINOv3ImageProcessor(
        size={"height": data_args.image_height, "width": data_args.image_width},
        do_reduce_labels=data_args.do_reduce_labels,
        ignore_index=IGNORE_INDEX,
        intensity_normalization=data_args.intensity_normalization,
        **_normalisation(model_args, hub_kwargs),
    )
    return model, image_processor, bool(model_args.model_name_or_path or model_args.backbone_name_or_path)


def _normalisation(model_args: ModelArguments, hub_kwargs: dict[str, Any]) -> dict[str, Any]:
    # A checkpoint keeps the normalisation it was trained with (whatever processor class it saved); a preset (or a
    # backbone named like one) brings its own; otherwise the processor's DINOv3 defaults.
    try:
        if model_args.model_name_or_path:
            from transformers import AutoImageProcessor

            source = AutoImageProcessor.from_pretrained(model_args.model_name_or_path, **hub_kwargs)
        else:
            source = get_preset(model_args.backbone_name_or_path or model_args.preset or "")
    except Exception:  # no processor saved with the checkpoint, or no preset of that name
        return {}
    return {"image_mean": list(source.image_mean), "image_std": list(source.image_std)}


def _check_queries(count: InstanceCount | None, model, model_args: ModelArguments) -> None:
    """Warn when the densest training image holds more instances than the model has queries."""
    num_queries = model.config.num_queries
    if count is None or count.largest <= num_queries:
        return
    fix = f"pass --config_overrides num_queries={math.ceil(QUERIES_PER_INSTANCE * count.largest)}"
    fix = (f"the queries of an existing checkpoint (or transferred head) are fixed: train a new model (--preset or "
           f"--backbone_name_or_path without --head_name_or_path), which gets enough from the data, or {fix} to it"
           if model_args.model_name_or_path or model_args.head_name_or_path
           else f"{fix} (or leave num_queries out: it is then chosen from the data)")  # fmt: skip
    logger.warning("The densest training image (%s) has %d instances but the model has num_queries=%d: it can find at "
                   "most %d objects per image and the other instances are never matched in training. %s.",
                   count.image, count.largest, num_queries, num_queries, fix[0].upper() + fix[1:])  # fmt: skip


def _setup_logging(training_args) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    level = training_args.get_process_log_level()
    logging.getLogger("mask2former_dinov3").setLevel(level)  # this module's logger and the package's
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def card_settings(trainer, data_args, model_args, bundle, queries_note: str) -> dict[str, Any]:
    """The settings the model card lists beside Trainer's own hyperparameters (no local path among them)."""
    args, size = trainer.args, f"{data_args.image_height}x{data_args.image_width}"
    if model_args.model_name_or_path or model_args.backbone_name_or_path:
        kind = "fine-tuned from" if model_args.model_name_or_path else "pretrained backbone"
        model = f"{kind} `{checkpoint_name(model_args.model_name_or_path or model_args.backbone_name_or_path)}`"
    else:
        model = f"preset `{model_args.preset}`" if model_args.preset else "offline-default small ConvNeXt model"
        model += " (random init)"
    augmentation = [f"random {size} crops at native resolution (no resize)" if data_args.crop_to_size is not None
                    else f"image processor's resize to {size}",
                    f"scale jitter {data_args.min_scale}-{data_args.max_scale} (pad / random crop)",
                    *(["horizontal flip"] if data_args.hflip else []),
                    f"colour jitter {data_args.color_jitter}" if data_args.color_jitter > 0 else "no colour jitter"]  # fmt: skip
    return {
        "task": data_args.task, "model": model, "image size (h x w)": size.replace("x", " x "),
        "training images": len(bundle.train) if bundle.train is not None else 0,
        "validation images": len(bundle.validation) if bundle.validation is not None else 0,
        "processes": args.world_size, "backbone LR multiplier": args.backbone_lr_multiplier,
        "layer-wise LR decay": args.layer_decay if args.layer_decay is not None else "none",
        "gradient clipping (max norm)": args.max_grad_norm, "gradient checkpointing": bool(args.gradient_checkpointing),
        "frozen backbone": model_args.freeze_backbone, "augmentation": ", ".join(augmentation),
        "queries (num_queries)": queries_note,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the command line, then train and / or evaluate; returns the evaluation metrics (empty without
    `--do_eval`). Errors propagate as exceptions (`cli` turns user errors into one line)."""
    model_args, data_args, training_args = parse_args(argv)
    check_arguments(model_args, data_args)
    _setup_logging(training_args)
    tile_size = crop_size(data_args)
    if tile_size is not None:  # the crop is the training size: the saved processor's, the augmentation's, the tiles'
        data_args.image_height, data_args.image_width = tile_size
    check_input_size(data_args.image_height, data_args.image_width, name="--image_height/--image_width")
    checkpoint = resolve_checkpoint(training_args)
    _ = training_args.device  # sets up the distributed state: every process inspects the output folder before any
    training_args.distributed_state.wait_for_everyone()  # process writes to it
    set_seed(training_args.seed)

    # Data: sources and label map; the densest training image (from the annotations only) sizes the queries.
    bundle = load_data(data_args, model_args, training_args)
    label_map = bundle.label_map
    logger.info("Labels (%d): %s", label_map.num_labels, label_map.id2label)
    count = count_instances(bundle.train, data_args.task) if training_args.do_train else None

    # Model and image processor. Training, evaluation and the saved model all prepare pixels with this one processor.
    num_queries, queries_note = choose_num_queries(model_args, count)
    model, image_processor, pretrained = build_model(model_args, data_args, label_map, num_queries=num_queries)
    if queries_note.startswith("fixed by"):
        queries_note = f"{model.config.num_queries} ({queries_note})"
    (logger.warning if num_queries is not None else logger.info)("num_queries: %s.", queries_note)
    _check_queries(count, model, model_args)
    native = tile_size is not None
    dataset = functools.partial(SegmentationDataset, task=data_args.task, image_processor=image_processor,
                                native_crops=native)  # fmt: skip
    train_dataset = eval_dataset = None
    if bundle.train is not None:
        seed = training_args.seed + training_args.process_index
        augmentation = build_augmentation(
            image_processor, min_scale=data_args.min_scale, max_scale=data_args.max_scale,
            color_jitter=data_args.color_jitter, hflip=data_args.hflip, seed=seed,
        )  # fmt: skip
        train_dataset = dataset(bundle.train, augmentation=augmentation, seed=seed)
    if bundle.validation is not None:
        eval_dataset = dataset(bundle.validation, for_evaluation=True)

    if training_args.backbone_lr_multiplier is None:  # Mask2Former's 0.1 for pretrained weights
        training_args.backbone_lr_multiplier = 0.1 if pretrained else 1.0
    trainer = Mask2FormerTrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        data_collator=SegmentationCollator(), processing_class=image_processor, task=data_args.task,
        label_map=label_map, image_processor=image_processor, instance_threshold=data_args.instance_threshold,
        panoptic_threshold=data_args.panoptic_threshold, tile_size=tile_size,
        tile_overlap=default_overlap(tile_size) if native else 0,
    )  # fmt: skip

    with run_phase():
        if training_args.do_train:
            train_result = trainer.train(resume_from_checkpoint=checkpoint)
            trainer.save_model()
            metrics = {**train_result.metrics, "train_samples": len(train_dataset)}
            trainer.log_metrics("train", metrics)
            trainer.save_metrics("train", metrics)
            trainer.save_state()

        metrics = {}
        if training_args.do_eval:
            metrics = trainer.evaluate()
            trainer.log_metrics("eval", metrics)
            trainer.save_metrics("eval", metrics)
        if training_args.do_predict and bundle.test is not None:
            test_metrics = trainer.evaluate(dataset(bundle.test, for_evaluation=True), metric_key_prefix="test")
            trainer.log_metrics("test", test_metrics)
            trainer.save_metrics("test", test_metrics)

        # Outputs beside the model: label map (predictions map label ids back to the data's ids), tiling, overlays.
        tiling = (trainer.tile_size, trainer.tile_overlap) if native else None
        output_dir = training_args.output_dir
        if trainer.is_world_process_zero():
            os.makedirs(output_dir, exist_ok=True)
            if tiling is not None:
                save_tiling(output_dir, *tiling)
            with open(os.path.join(output_dir, "label_map.json"), "w", encoding="utf-8") as handle:
                json.dump({"id2label": label_map.id2label, "thing_ids": sorted(label_map.thing_ids),
                           "stuff_ids": label_map.stuff_ids,
                           "category_ids": {label: data_id for data_id, label in label_map.dataset_ids.items()}},
                          handle, indent=2, sort_keys=True)  # fmt: skip
            if eval_dataset is not None and data_args.num_overlay_images > 0:
                overlay_dir = os.path.join(output_dir, "predictions")
                shutil.rmtree(overlay_dir, ignore_errors=True)  # never mix overlays of two runs
                paths = save_prediction_overlays(
                    trainer.accelerator.unwrap_model(trainer.model), eval_dataset, label_map, overlay_dir,
                    num_images=data_args.num_overlay_images, instance_threshold=data_args.overlay_threshold,
                    panoptic_threshold=data_args.panoptic_threshold, tile_size=trainer.tile_size,
                    tile_overlap=trainer.tile_overlap,
                )  # fmt: skip
                logger.info("Wrote %d prediction overlays to %s", len(paths), overlay_dir)

        # Model card (Trainer's, with this model's sections) and push.
        if training_args.do_train:
            base = model_args.model_name_or_path or model_args.backbone_name_or_path
            trainer.card_details = ModelCardDetails(
                task=data_args.task, dataset_description=bundle.description, metrics=metrics,
                settings=card_settings(trainer, data_args, model_args, bundle, queries_note),
                base_model=checkpoint_name(base) if base else None, thing_ids=sorted(label_map.thing_ids),
                tiling=tiling,
            )  # fmt: skip
            trainer.create_model_card()
            if training_args.push_to_hub:
                trainer.push_to_hub()
        training_args.distributed_state.wait_for_everyone()
    return metrics


if __name__ == "__main__":
    cli(main)
