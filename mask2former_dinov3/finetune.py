"""Command-line fine-tuning of Mask2FormerDINOv3 (the body of the repository's `run_instance_seg.py`).

`HfArgumentParser` over `ModelArguments`, `DataTrainingArguments` and `SegmentationTrainingArguments`
(transformers' `TrainingArguments` plus `--overwrite_output_dir`, `--backbone_lr_multiplier` and `--layer_decay`),
as in transformers' own instance-segmentation example. `main(argv)` parses and runs; `run(...)` runs parsed arguments.

With no dataset argument and no model argument the run trains and evaluates a small model on the package's
deterministic synthetic shapes (offline default, see `OFFLINE_DEFAULT_ARGS`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
import transformers
from transformers import HfArgumentParser, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from .configuration_mask2former_dinov3 import INPUT_SIZE_MULTIPLE, Mask2FormerDINOv3Config, check_input_size
from .data import (
    IGNORE_INDEX,
    CocoSegmentationSource,
    DataError,
    HFSegmentationSource,
    InstanceCount,
    LabelMap,
    SegmentationCollator,
    SegmentationDataset,
    SyntheticSegmentationSource,
    build_augmentation,
    count_instances,
    find_roboflow_split,
    label_map_from_semantic_class_to_id,
    load_hf_dataset,
    semantic_class_to_id_of,
    thing_semantic_ids,
)
from .image_processing_mask2former_dinov3 import Mask2FormerDINOv3ImageProcessor
from .modeling_mask2former_dinov3 import Mask2FormerDINOv3ForUniversalSegmentation
from .tiling import default_overlap, save_tiling
from .training import (
    MAIN_METRIC,
    Mask2FormerTrainer,
    save_json,
    save_prediction_overlays,
    write_model_card,
)


logger = logging.getLogger(__name__)

# Prepended to the command line when it names neither data nor model: later (user) flags override these.
OFFLINE_DEFAULT_ARGS = [
    "--do_train", "--do_eval",
    "--image_height", "128", "--image_width", "128",
    "--max_steps", "1200",
    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
    "--learning_rate", "6e-4", "--weight_decay", "0.05",
    # Colours are random in the synthetic images already; milder scale jitter learns faster in a short run.
    "--min_scale", "0.75", "--max_scale", "1.5", "--color_jitter", "0",
    "--lr_scheduler_type", "cosine", "--warmup_steps", "60",
    "--max_grad_norm", "1.0",
    "--logging_steps", "50",
    "--eval_strategy", "no", "--save_strategy", "no",
    "--report_to", "none",
    "--seed", "0",
]  # fmt: skip
DATA_FLAGS = ("dataset_name", "data_dir", "train_annotation_file", "validation_annotation_file", "test_annotation_file")
MODEL_FLAGS = ("model_name_or_path", "preset", "backbone_name_or_path")


@dataclass
class ModelArguments:
    """Which model to fine-tune (at most one of model_name_or_path / preset / backbone_name_or_path)."""

    _argument_group_name = "Model (at most one of --model_name_or_path / --preset / --backbone_name_or_path)"

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A saved Mask2FormerDINOv3 model (folder or hub id); its head is resized to the dataset's labels."
        },
    )
    preset: str | None = field(
        default=None,
        metadata={"help": "A DINOv3 preset name (e.g. dinov3-vits16, dinov3-convnext-tiny): random-init model."},
    )
    backbone_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Pretrained DINOv3 backbone (hub id / folder / Meta .pth) for from_dinov3_pretrained."},
    )
    head_name_or_path: str | None = field(
        default=None,
        metadata={"help": "With --backbone_name_or_path: a Mask2Former checkpoint whose head is transferred."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Config fields for a new model, e.g. 'num_queries=50,hidden_dim=128,decoder_layers=6'. Without "
            "num_queries, a new model gets enough queries for the densest training image (at least 1.25 x its "
            "instances; never below 100 for --preset / --backbone_name_or_path)."
        },
    )
    freeze_backbone: bool = field(default=False, metadata={"help": "Train without updating the DINOv3 backbone."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models / datasets are cached."})
    token: str | None = field(default=None, metadata={"help": "Hugging Face Hub token (private models / datasets)."})
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Let --dataset_name run a dataset loading script from the Hub (code in the dataset repository). "
            "It does not concern the model: the model's code always comes from this package."
        },
    )


@dataclass
class DataArguments:
    """Where the data comes from and at which size the model sees it."""

    _argument_group_name = "Data (--data_dir, --*_annotation_file or --dataset_name; none: the offline default)"

    task: Literal["instance", "semantic", "panoptic"] = field(
        default="instance", metadata={"help": "Task: its targets, post-processing and metric (mAP, mIoU, PQ)."}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "HF dataset name or local folder in transformers' example format (image, annotation PNG with "
            "semantic id in channel 0 and instance id in channel 1, semantic_class_to_id)."
        },
    )
    data_dir: str | None = field(
        default=None,
        metadata={"help": "COCO folders in Roboflow's layout: train/, valid/ (and test/) with _annotations.coco.json."},
    )
    train_annotation_file: str | None = field(default=None, metadata={"help": "COCO JSON of the training split."})
    train_image_dir: str | None = field(default=None, metadata={"help": "Images of the training split (default: the JSON's folder)."})
    validation_annotation_file: str | None = field(default=None, metadata={"help": "COCO JSON of the validation split."})
    validation_image_dir: str | None = field(default=None, metadata={"help": "Images of the validation split."})
    test_annotation_file: str | None = field(default=None, metadata={"help": "COCO JSON of the test split (--do_predict)."})
    test_image_dir: str | None = field(default=None, metadata={"help": "Images of the test split."})
    image_height: int = field(default=512, metadata={"help": "Training / inference height (multiple of 32)."})
    image_width: int = field(default=512, metadata={"help": "Training / inference width (multiple of 32)."})
    crop_to_size: list[int] | None = field(
        default=None,
        metadata={
            "help": "H [W] (multiples of 32; one value: square): train on random H x W crops of the images at their "
            "native resolution instead of resizing them to --image_height x --image_width, and evaluate by H x W "
            "tiles at native resolution (tiling.json in the output folder makes mask2former-dinov3-predict tile too). "
            "Replaces --image_height/--image_width; instance and semantic tasks."
        },
    )
    do_reduce_labels: bool = field(
        default=False, metadata={"help": "HF format: semantic id 0 is background (ignored), the others shift by -1."}
    )
    train_val_split: float = field(
        default=0.15, metadata={"help": "HF format without a validation split: fraction of train held out."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation images."})


@dataclass
class AugmentationArguments:
    """Random augmentation of the training images (after the image processor's resize)."""

    _argument_group_name = "Augmentation (training images only)"

    min_scale: float = field(default=0.5, metadata={"help": "Scale jitter: smallest random scale."})
    max_scale: float = field(default=2.0, metadata={"help": "Scale jitter: largest random scale."})
    color_jitter: float = field(default=0.2, metadata={"help": "Colour jitter strength (0 disables)."})
    hflip: bool = field(
        default=True,
        metadata={"help": "Flip training images horizontally at random (half of them); --no_hflip never flips."},
    )


@dataclass
class EvaluationArguments:
    """Post-processing thresholds of the metrics and the prediction overlays."""

    _argument_group_name = "Evaluation and outputs"

    instance_threshold: float = field(
        default=0.0, metadata={"help": "Score threshold of instance post-processing for mAP (0 keeps all queries)."}
    )
    panoptic_threshold: float = field(default=0.5, metadata={"help": "Score threshold of panoptic post-processing."})
    num_overlay_images: int = field(default=4, metadata={"help": "Validation images drawn into predictions/."})
    overlay_threshold: float = field(default=0.5, metadata={"help": "Instance score threshold of the overlays."})
    intensity_normalization: Literal["percentile", "minmax", "fixed"] = field(
        default="percentile",
        metadata={
            "help": "Images that are not 8-bit (16-bit, float): map each image's 1st / 99.8th percentiles (or its "
            "min / max, or 0..65535 fixed) to 0..255. Saved in the image processor; 8-bit images are never changed."
        },
    )


@dataclass
class SyntheticDataArguments:
    """The synthetic shapes of the offline default run (no data argument)."""

    _argument_group_name = "Offline default data (synthetic shapes; used when no data argument is given)"

    synthetic_train_samples: int = field(default=1000, metadata={"help": "Offline default: training images."})
    synthetic_eval_samples: int = field(default=100, metadata={"help": "Offline default: validation images."})
    synthetic_seed: int = field(default=0, metadata={"help": "Offline default: generator seed."})
    synthetic_image_size: int = field(default=128, metadata={"help": "Offline default: image side in pixels."})
    synthetic_size_probabilities: str = field(
        default="0.1,0.5,0.4",
        metadata={"help": "Offline default: probabilities of small, medium and large shapes (COCO's size buckets)."},
    )


# The command line shows each part as its own group of --help; the script works with their union.
DATA_ARGUMENT_PARTS = (DataArguments, AugmentationArguments, EvaluationArguments, SyntheticDataArguments)


@dataclass
class DataTrainingArguments(SyntheticDataArguments, EvaluationArguments, AugmentationArguments, DataArguments):
    """Which data to train and evaluate on, how to augment it and how to evaluate (the union of the data groups)."""

    @classmethod
    def from_parts(cls, *parts) -> "DataTrainingArguments":
        """The union of parsed `DATA_ARGUMENT_PARTS` instances."""
        values = {}
        for part in parts:
            values.update({f.name: getattr(part, f.name) for f in fields(part)})
        return cls(**values)


@dataclass
class SegmentationTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the learning-rate split of the backbone, output-folder protection and `--debug`."""

    _argument_group_name = (
        "Training (transformers' TrainingArguments; this script adds --overwrite_output_dir, "
        "--backbone_lr_multiplier and --layer_decay at the end, and bare --debug for full tracebacks)"
    )

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into a non-empty --output_dir that holds a different run (no checkpoint to resume)."},
    )
    backbone_lr_multiplier: float | None = field(
        default=None,
        metadata={
            "help": "Backbone LR = learning_rate x this. Default: 0.1 (Mask2Former) with pretrained weights "
            "(--model_name_or_path, --backbone_name_or_path), 1.0 for a random-init backbone."
        },
    )
    layer_decay: float | None = field(
        default=None, metadata={"help": "Layer-wise LR decay for ViT backbones (e.g. 0.8): block i of L gets decay^(L-i)."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator needs every field of the dataset items."}
    )
    batch_eval_metrics: bool = field(
        default=True,
        metadata={"help": "Kept True: the segmentation metrics are accumulated batch by batch (as transformers' example)."},
    )
    eval_do_concat_batches: bool = field(
        default=False, metadata={"help": "Kept False: evaluation batches are never concatenated (see batch_eval_metrics)."}
    )
    # Trainer's own --debug takes values; bare, it only asks this script for full tracebacks (see `cli`).
    debug: str = field(
        default="",
        metadata={
            "nargs": "*",
            "help": "Bare --debug: errors show their full traceback instead of one 'error:' line. With values "
            "(underflow_overflow, tpu_metrics_debug): Trainer's debug features as well.",
        },
    )

    def __post_init__(self):
        if isinstance(self.debug, list):  # nargs="*" gives a list of words; Trainer takes one string
            self.debug = " ".join(self.debug)
        super().__post_init__()


def _given(argv: list[str], name: str) -> bool:
    # HfArgumentParser accepts both --some_flag and --some-flag.
    flags = {f"--{name}", f"--{name.replace('_', '-')}"}
    return any(a.split("=", 1)[0] in flags for a in argv)


def default_argv(argv: list[str]) -> list[str]:
    """The command line with the defaults prepended: the offline-default settings when `argv` names neither data nor
    model, and `--do_train --do_eval` when it names none of `--do_train/--do_eval/--do_predict`.
    """
    prefix = []
    if not any(_given(argv, f) for f in DATA_FLAGS + MODEL_FLAGS):
        prefix += OFFLINE_DEFAULT_ARGS
    if not any(_given(argv, f) for f in ("do_train", "do_eval", "do_predict")):
        prefix += ["--do_train", "--do_eval"]
    return prefix + list(argv)


class CommandLineError(ValueError):
    """A command line the script cannot run: an unknown flag, a bad value, a missing file or folder."""


def _offline_default_values() -> dict[str, str]:
    # --flag value pairs of OFFLINE_DEFAULT_ARGS; a flag followed by another flag is a switch ("on").
    values, args = {}, OFFLINE_DEFAULT_ARGS
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
            values[arg[2:]] = args[i + 1] if has_value else "on"
    return values


def _same_value(default: Any, text: str) -> bool:
    value = getattr(default, "value", default)  # enums (eval_strategy, ...)
    if isinstance(value, bool) or value is None:
        return False
    try:
        return float(value) == float(text)
    except (TypeError, ValueError):
        return str(value) == text


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows the offline default run's value of a flag beside its default, and says what each `--no_*` flag does."""

    offline = _offline_default_values()

    def _get_help_string(self, action):
        help_text = action.help or ""
        negative = any(o.startswith(("--no_", "--no-")) for o in action.option_strings)
        if negative and action.nargs == 0 and action.const is False:  # a store_false switch
            name = action.dest
            # HfArgumentParser gives --no_X the help of --X; say what this one does.
            return f"Turns --{name} off (it is on by default). --{name}: {help_text}"
        help_text = super()._get_help_string(action)
        offline = self.offline.get(action.dest)
        if offline is not None and action.option_strings and not _same_value(action.default, offline):
            help_text += f" (offline default: {offline})"
        return help_text


class SegmentationArgumentParser(HfArgumentParser):
    """`HfArgumentParser` over the script's argument groups, in `--help` order: model, data, augmentation,
    evaluation, offline-default data, then Trainer's. Parse errors raise `CommandLineError` instead of exiting."""

    def __init__(self):
        super().__init__(
            (ModelArguments, *DATA_ARGUMENT_PARTS, SegmentationTrainingArguments),
            prog="run_instance_seg.py",
            usage="run_instance_seg.py [--model_name_or_path M | --preset P | --backbone_name_or_path B] "
            "[--data_dir D | --dataset_name N | --train_annotation_file J ...] --output_dir OUT [options]",
            description="Fine-tune Mask2Former with a DINOv3 backbone (instance, semantic or panoptic segmentation). "
            "With neither a data nor a model argument: the offline default run (a small model on synthetic shapes; "
            "its settings are shown as 'offline default' below).",
            formatter_class=_HelpFormatter,
        )

    def error(self, message: str):
        """Raise `CommandLineError` (argparse would print the usage of every flag and exit)."""
        raise CommandLineError(f"{message} (see --help)")


def parse_args(argv: list[str] | None = None):
    """`(model_args, data_args, training_args)` from the command line (`sys.argv[1:]` by default)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = SegmentationArgumentParser()
    if len(argv) == 1 and argv[0].endswith(".json"):
        if not os.path.isfile(argv[0]):
            raise CommandLineError(f"argument file {argv[0]} does not exist.")
        try:
            model_args, *data_parts, training_args = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
        except json.JSONDecodeError as error:
            raise CommandLineError(f"{argv[0]}: not valid JSON ({error.msg} at line {error.lineno}).") from error
        return model_args, DataTrainingArguments.from_parts(*data_parts), training_args
    model_args, *data_parts, training_args, unknown = parser.parse_args_into_dataclasses(
        args=default_argv(argv), return_remaining_strings=True
    )
    if unknown:
        raise CommandLineError(f"unknown argument(s): {' '.join(unknown)} (see --help)")
    data_args = DataTrainingArguments.from_parts(*data_parts)
    if data_args.crop_to_size is not None and (_given(argv, "image_height") or _given(argv, "image_width")):
        raise CommandLineError("--crop_to_size sets the training size: pass it without --image_height/--image_width.")
    if not _given(argv, "metric_for_best_model") and not _given(argv, "greater_is_better"):
        # Best-model selection on the task's main metric rather than Trainer's default (the loss).
        training_args.metric_for_best_model = MAIN_METRIC[data_args.task]
        training_args.greater_is_better = True
    return model_args, data_args, training_args


# --------------------------------------------------------------------------------------------------------------------
# Output folder
# --------------------------------------------------------------------------------------------------------------------


def resolve_checkpoint(training_args) -> str | bool | None:
    """The checkpoint to resume from, following Trainer's `overwrite_output_dir` convention.

    An explicit `--resume_from_checkpoint` wins ("true"/"last": the last one in output_dir). Otherwise, when training
    into an existing non-empty output_dir: resume from its last checkpoint if it has one; if it has none, it holds a
    different run and a `ValueError` is raised unless `--overwrite_output_dir`.
    """
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        return True
    if resume:
        return resume
    output_dir = training_args.output_dir
    if not training_args.do_train or not output_dir or not os.path.isdir(output_dir):
        return None
    if getattr(training_args, "overwrite_output_dir", False):
        return None
    last = get_last_checkpoint(output_dir)
    if last is not None:
        logger.info("Checkpoint detected, resuming training at %s. Pass --overwrite_output_dir to start afresh.", last)
        return last
    if os.listdir(output_dir):
        raise ValueError(
            f"Output directory ({output_dir}) already exists, is not empty and holds no checkpoint to resume: it "
            f"contains a different run. Pass --overwrite_output_dir to overwrite it, or choose another --output_dir."
        )
    return None


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class DataBundle:
    """The splits of one dataset and its label map."""

    label_map: LabelMap
    train: Any = None
    validation: Any = None
    test: Any = None
    description: str = ""


def _first(source, count: int | None):
    if source is None or count is None or count >= len(source):
        return source
    return torch.utils.data.Subset(source, range(count))


def _looks_local(name: str) -> bool:
    # Hub ids are "name" or "org/name"; a leading ./ / ~, more slashes, a backslash or a file suffix mean a path.
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") > 1
        or "\\" in name
        or name.endswith((".pth", ".pt", ".safetensors", ".json", ".bin"))
    )


def check_arguments(model_args: ModelArguments, data_args: DataTrainingArguments) -> None:
    """Fail fast, before any data is read, on contradictory model flags, an unknown preset and paths that do not
    exist (`CommandLineError` naming the flag and the path)."""
    chosen = [f for f in MODEL_FLAGS if getattr(model_args, f)]
    if len(chosen) > 1:
        raise CommandLineError(f"pass only one of --{' / --'.join(MODEL_FLAGS)}; got --{' and --'.join(chosen)}.")
    if model_args.preset:
        from .presets import get_preset

        try:
            get_preset(model_args.preset)
        except ValueError as error:
            raise CommandLineError(f"--preset: {error}") from None
    for flag in ("data_dir", "train_image_dir", "validation_image_dir", "test_image_dir"):
        path = getattr(data_args, flag)
        if path and not os.path.isdir(path):
            what = "is a file, not a folder" if os.path.exists(path) else "does not exist"
            raise CommandLineError(f"--{flag} {path} {what}.")
    for flag in ("train_annotation_file", "validation_annotation_file", "test_annotation_file"):
        path = getattr(data_args, flag)
        if path and not os.path.isfile(path):
            what = "is a folder, not a COCO JSON file" if os.path.isdir(path) else "does not exist"
            raise CommandLineError(f"--{flag} {path} {what}.")
    for args, flag in ((data_args, "dataset_name"), *((model_args, f) for f in (*MODEL_FLAGS, "head_name_or_path"))):
        name = getattr(args, flag)
        if flag == "preset" or not name or os.path.exists(name) or not _looks_local(name):
            continue
        raise CommandLineError(
            f"--{flag} {name} does not exist (read as a local path; Hub repositories are named like org/name)."
        )


def load_data(data_args: DataTrainingArguments, model_args: ModelArguments, training_args) -> DataBundle:
    """Sources and label map from the data arguments (HF dataset, COCO / Roboflow folders, or the offline default)."""
    coco_given = data_args.data_dir or data_args.train_annotation_file or data_args.validation_annotation_file
    if data_args.dataset_name and coco_given:
        raise ValueError("Pass either --dataset_name or COCO files (--data_dir / --*_annotation_file), not both.")
    if data_args.dataset_name:
        bundle = _load_hf(data_args, model_args, training_args)
    elif coco_given or data_args.test_annotation_file:
        bundle = _load_coco(data_args, training_args)
    else:
        with_stuff = data_args.task != "instance"
        probabilities = tuple(float(p) for p in data_args.synthetic_size_probabilities.split(","))
        train, validation = (
            SyntheticSegmentationSource(
                split, count, data_args.synthetic_seed, data_args.synthetic_image_size, with_stuff,
                size_probabilities=probabilities,
            )
            for split, count in (("train", data_args.synthetic_train_samples), ("valid", data_args.synthetic_eval_samples))
        )  # fmt: skip
        bundle = DataBundle(
            label_map=train.label_map,
            train=train,
            validation=validation,
            description=f"the package's synthetic shapes ({len(train)} training / {len(validation)} validation "
            f"images of {data_args.synthetic_image_size} px, seed {data_args.synthetic_seed}, small / medium / large "
            f"shape probabilities {data_args.synthetic_size_probabilities}; map_small / map_medium / map_large use "
            f"these size classes: {_describe_area_ranges(validation.area_ranges)})",
        )
    bundle.train = _first(bundle.train, data_args.max_train_samples)
    bundle.validation = _first(bundle.validation, data_args.max_eval_samples)
    bundle.test = _first(bundle.test, data_args.max_eval_samples)
    if training_args.do_train and bundle.train is None:
        raise ValueError("--do_train needs training data (train/ in --data_dir, --train_annotation_file or a train split).")
    if training_args.do_eval and bundle.validation is None:
        raise ValueError("--do_eval needs validation data (valid/ in --data_dir, --validation_annotation_file or a split).")
    return bundle


def _describe_area_ranges(ranges: dict) -> str:
    (_, small), (_, medium) = ranges["small"], ranges["medium"]
    return f"areas under {small:.0f} px, {small:.0f} to {medium:.0f} px, over {medium:.0f} px"


def _load_coco(data_args: DataTrainingArguments, training_args) -> DataBundle:
    splits = {}
    for split, ann_attr, dir_attr in (
        ("train", "train_annotation_file", "train_image_dir"),
        ("validation", "validation_annotation_file", "validation_image_dir"),
        ("test", "test_annotation_file", "test_image_dir"),
    ):
        annotation_file, image_dir = getattr(data_args, ann_attr), getattr(data_args, dir_attr)
        if annotation_file is None and data_args.data_dir:
            found = find_roboflow_split(data_args.data_dir, split)
            if found:
                annotation_file, default_dir = found
                image_dir = image_dir or default_dir
        if annotation_file is not None:
            splits[split] = (annotation_file, image_dir)
    if data_args.data_dir and not splits:
        raise DataError(
            f"{data_args.data_dir}: no COCO split found; expected Roboflow's layout train/_annotations.coco.json, "
            f"valid/_annotations.coco.json (optional test/)."
        )
    if "validation" not in splits and "test" in splits and training_args.do_eval:
        logger.warning("No validation split: evaluating on the test split %s.", splits["test"][0])
        splits["validation"] = splits.pop("test")
    label_map = None
    sources = {}
    # The training JSON defines the label map; the other splits must use the same category ids.
    for split in ("train", "validation", "test"):
        if split in splits:
            sources[split] = CocoSegmentationSource(*splits[split], label_map=label_map)
            label_map = sources[split].label_map
    description = ", ".join(f"{split}: `{path}`" for split, (path, _) in splits.items())
    return DataBundle(label_map=label_map, description=f"COCO-format data ({description})", **sources)


def _load_hf(data_args: DataTrainingArguments, model_args: ModelArguments, training_args) -> DataBundle:
    dataset = load_hf_dataset(data_args.dataset_name, token=model_args.token, trust_remote_code=model_args.trust_remote_code)
    if "train" not in dataset:
        raise DataError(f"{data_args.dataset_name}: no 'train' split (splits: {list(dataset)}).")
    train = dataset["train"]
    validation = next((dataset[s] for s in ("validation", "valid", "val") if s in dataset), None)
    test = dataset["test"] if "test" in dataset else None
    if validation is None and training_args.do_eval:
        split = train.train_test_split(test_size=data_args.train_val_split, seed=training_args.seed)
        train, validation = split["train"], split["test"]
        logger.info("No validation split: held out %.0f%% of train.", 100 * data_args.train_val_split)
    mapping = semantic_class_to_id_of(train, data_args.dataset_name)
    things = thing_semantic_ids(train) if data_args.task == "panoptic" else None
    label_map = label_map_from_semantic_class_to_id(mapping, data_args.do_reduce_labels, things)
    name = data_args.dataset_name

    def source(split, split_name):
        if split is None:
            return None
        return HFSegmentationSource(split, label_map, data_args.do_reduce_labels, name=f"{name} [{split_name}]")

    return DataBundle(
        label_map=label_map,
        train=source(train, "train"),
        validation=source(validation, "validation"),
        test=source(test, "test"),
        description=f"the dataset `{name}`",
    )


# --------------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------------


def offline_default_config(label_map: LabelMap, **overrides) -> Mask2FormerDINOv3Config:
    """The small model of the offline default: a 4-stage DINOv3 ConvNeXt (widths 32-256) and a slim head."""
    from transformers import DINOv3ConvNextConfig

    kwargs = dict(
        backbone_config=DINOv3ConvNextConfig(hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1]),
        feature_size=64,
        mask_feature_size=64,
        hidden_dim=64,
        encoder_feedforward_dim=256,
        dim_feedforward=256,
        encoder_layers=2,
        decoder_layers=4,
        num_attention_heads=4,
        num_queries=OFFLINE_NUM_QUERIES,
        train_num_points=1024,
        id2label=label_map.id2label,
        label2id=label_map.label2id,
    )
    kwargs.update(overrides)
    return Mask2FormerDINOv3Config(**kwargs)


OFFLINE_NUM_QUERIES = 20  # the offline default's small model
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
        return None, f"fixed by the checkpoint {model_args.model_name_or_path}"
    if model_args.head_name_or_path:
        return None, f"fixed by the transferred head {model_args.head_name_or_path}"
    given = parse_config_overrides(model_args.config_overrides).get("num_queries")
    if given is not None:
        return None, f"{given} (set by --config_overrides)"
    default = MIN_NUM_QUERIES if (model_args.preset or model_args.backbone_name_or_path) else OFFLINE_NUM_QUERIES
    if count is None:
        return None, f"{default} (default)"
    bound = "at most " if not count.exact else ""
    needed = math.ceil(QUERIES_PER_INSTANCE * count.largest)
    if needed <= default:
        return None, f"{default} (default; the densest training image has {bound}{count.largest} instances)"
    return needed, (
        f"{needed} (raised from the default {default}: the densest training image, {count.image}, has {bound}"
        f"{count.largest} instances; {QUERIES_PER_INSTANCE} x that, rounded up)"
    )


def parse_config_overrides(text: str | None) -> dict[str, Any]:
    """`'a=1,b=0.5,c=true,d=[1,2]'` -> `{'a': 1, 'b': 0.5, 'c': True, 'd': [1, 2]}` (values parsed as JSON)."""
    if not text:
        return {}
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):  # split on commas outside brackets
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    words = {"True": True, "False": False, "None": None}
    result = {}
    for part in filter(str.strip, parts):
        if "=" not in part:
            raise ValueError(f"--config_overrides: expected key=value, got {part!r}.")
        key, value = (x.strip() for x in part.split("=", 1))
        try:
            result[key] = json.loads(value)
        except json.JSONDecodeError:
            result[key] = words.get(value, value)
    return result


def build_model(
    model_args: ModelArguments, data_args: DataTrainingArguments, label_map: LabelMap, num_queries: int | None = None
):
    """`(model, image_processor, pretrained)`: the model with a head for `label_map`, the processor configured with
    the training size, and whether weights were loaded (which sets the default backbone LR multiplier).

    `num_queries` (see `choose_num_queries`) sets the queries of a new model; an existing checkpoint keeps its own.
    """
    chosen = [f for f in MODEL_FLAGS if getattr(model_args, f)]
    if len(chosen) > 1:
        raise ValueError(f"Pass only one of --{' / --'.join(MODEL_FLAGS)}; got {', '.join(chosen)}.")
    if model_args.head_name_or_path and not model_args.backbone_name_or_path:
        raise ValueError("--head_name_or_path goes with --backbone_name_or_path.")
    labels = {"id2label": label_map.id2label, "label2id": label_map.label2id}
    overrides = parse_config_overrides(model_args.config_overrides)
    if num_queries is not None and not model_args.model_name_or_path:
        overrides["num_queries"] = num_queries
    processor_kwargs: dict[str, Any] = {}
    cls = Mask2FormerDINOv3ForUniversalSegmentation
    if model_args.model_name_or_path:
        if overrides:
            raise ValueError("--config_overrides applies to new models (--preset / default), not --model_name_or_path.")
        model = cls.from_pretrained(
            model_args.model_name_or_path,
            ignore_mismatched_sizes=True,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
            num_labels=label_map.num_labels,
            **labels,
        )
        processor_kwargs = _processor_normalisation(model_args.model_name_or_path, model_args)
        pretrained = True
    elif model_args.backbone_name_or_path:
        if not hasattr(cls, "from_dinov3_pretrained"):
            raise NotImplementedError(
                "--backbone_name_or_path needs Mask2FormerDINOv3ForUniversalSegmentation.from_dinov3_pretrained, which "
                "this version of mask2former_dinov3 does not have yet. Use --preset (random-init backbone) or "
                "--model_name_or_path."
            )
        hub_kwargs = {k: v for k, v in (("token", model_args.token), ("cache_dir", model_args.cache_dir)) if v}
        model = cls.from_dinov3_pretrained(
            model_args.backbone_name_or_path,
            head=model_args.head_name_or_path,
            hub_kwargs=hub_kwargs,
            num_labels=label_map.num_labels,
            **labels,
            **overrides,
        )
        processor_kwargs = _preset_normalisation(model_args.backbone_name_or_path)
        pretrained = True
    elif model_args.preset:
        config = Mask2FormerDINOv3Config.from_preset(model_args.preset, **labels, **overrides)
        model = cls(config)
        processor_kwargs = _preset_normalisation(model_args.preset)
        pretrained = False
    else:
        model = cls(offline_default_config(label_map, **overrides))
        pretrained = False
    if model_args.freeze_backbone:
        model.freeze_backbone()
    image_processor = Mask2FormerDINOv3ImageProcessor(
        size={"height": data_args.image_height, "width": data_args.image_width},
        do_reduce_labels=data_args.do_reduce_labels,
        ignore_index=IGNORE_INDEX,
        intensity_normalization=data_args.intensity_normalization,
        **processor_kwargs,
    )
    return model, image_processor, pretrained


def _preset_normalisation(name: str) -> dict[str, Any]:
    from .presets import get_preset

    try:
        preset = get_preset(name)
    except ValueError:
        return {}
    return {"image_mean": list(preset.image_mean), "image_std": list(preset.image_std)}


def _processor_normalisation(path: str, model_args: ModelArguments) -> dict[str, Any]:
    # Keep the normalisation the checkpoint was trained with, whatever processor class it saved.
    try:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(path, cache_dir=model_args.cache_dir, token=model_args.token)
    except Exception:  # no processor saved with the checkpoint: DINOv3's defaults
        return {}
    return {"image_mean": list(processor.image_mean), "image_std": list(processor.image_std)}


# --------------------------------------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------------------------------------


def _setup_logging(training_args) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    level = training_args.get_process_log_level()
    logger.setLevel(level)
    logging.getLogger("mask2former_dinov3").setLevel(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def training_settings(trainer, data_args, model_args, bundle, pretrained_note: str) -> dict[str, Any]:
    """The settings shown in the model card."""
    args = trainer.args
    world = args.world_size
    settings = {
        "task": data_args.task,
        "model": pretrained_note,
        "image size (h x w)": f"{data_args.image_height} x {data_args.image_width}",
        "training images": len(bundle.train) if bundle.train is not None else 0,
        "validation images": len(bundle.validation) if bundle.validation is not None else 0,
        "steps": trainer.state.global_step,
        "epochs": round(float(trainer.state.epoch or 0), 2),
        "batch size (global)": args.per_device_train_batch_size * world * args.gradient_accumulation_steps,
        "processes": world,
        "optimizer": str(args.optim.value if hasattr(args.optim, "value") else args.optim),
        "learning rate": args.learning_rate,
        "backbone LR multiplier": trainer.backbone_lr_multiplier,
        "layer-wise LR decay": trainer.layer_decay if trainer.layer_decay is not None else "none",
        "weight decay": args.weight_decay,
        "scheduler": str(args.lr_scheduler_type.value if hasattr(args.lr_scheduler_type, "value") else args.lr_scheduler_type),
        "warmup steps": args.warmup_steps,
        "gradient clipping (max norm)": args.max_grad_norm,
        "mixed precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "no",
        "gradient checkpointing": bool(getattr(args, "gradient_checkpointing", False)),
        "frozen backbone": model_args.freeze_backbone,
        "augmentation": (
            (
                f"random {data_args.image_height}x{data_args.image_width} crops at native resolution (no resize), "
                if data_args.crop_to_size is not None
                else f"image processor's resize to {data_args.image_height}x{data_args.image_width}, "
            )
            + "scale jitter "
            f"{data_args.min_scale}-"
            f"{data_args.max_scale} (pad / random crop), "
            + ("horizontal flip, " if data_args.hflip else "")
            + (f"colour jitter {data_args.color_jitter}" if data_args.color_jitter > 0 else "no colour jitter")
        ),
        "seed": args.seed,
        "transformers / torch": f"{transformers.__version__} / {torch.__version__}",
    }
    if trainer.state.log_history:
        runtime = [h["train_runtime"] for h in trainer.state.log_history if "train_runtime" in h]
        if runtime:
            settings["training time (s)"] = round(runtime[-1], 1)
    return settings


def _barrier(training_args) -> None:
    _ = training_args.device  # sets up the distributed state
    if training_args.distributed_state is not None:
        training_args.distributed_state.wait_for_everyone()


@dataclass
class PreparedRun:
    """Everything `prepare` built from the arguments; `execute` trains / evaluates it."""

    model_args: ModelArguments
    data_args: DataTrainingArguments
    training_args: Any
    bundle: DataBundle
    trainer: Any
    image_processor: Any
    checkpoint: str | bool | None
    train_dataset: Any = None
    eval_dataset: Any = None
    queries_note: str = ""


def _check_queries(count: InstanceCount | None, model, model_args: ModelArguments) -> None:
    """Warn when the densest training image holds more instances than the model has queries."""
    num_queries = model.config.num_queries
    if count is None or count.largest <= num_queries:
        return
    needed = math.ceil(QUERIES_PER_INSTANCE * count.largest)
    if model_args.model_name_or_path or model_args.head_name_or_path:
        fix = (
            "The queries of an existing checkpoint (or transferred head) are fixed: to find more objects per image, "
            f"train a new model (--preset or --backbone_name_or_path without --head_name_or_path), which gets enough "
            f"queries from the data, or pass --config_overrides num_queries={needed} to it"
        )
    else:
        fix = f"Pass --config_overrides num_queries={needed} (or leave num_queries out: it is then chosen from the data)"
    logger.warning(
        "The densest training image (%s) has %d instances but the model has num_queries=%d: it can find at most %d "
        "objects per image and the other instances are never matched in training. %s.",
        count.image, count.largest, num_queries, num_queries, fix,
    )  # fmt: skip


def crop_size(data_args: DataTrainingArguments) -> tuple[int, int] | None:
    """`(H, W)` of `--crop_to_size` (one value: a square), None without it; a `CommandLineError` for a size that
    is not two positive multiples of 32 or a task tiles cannot evaluate (panoptic)."""
    values = data_args.crop_to_size
    if values is None:
        return None
    if len(values) not in (1, 2):
        raise CommandLineError(f"--crop_to_size takes H or H W, got {len(values)} values: {' '.join(map(str, values))}.")
    height, width = (values[0], values[0]) if len(values) == 1 else values
    try:
        check_input_size(height, width, name="--crop_to_size")
    except ValueError as error:
        raise CommandLineError(
            f"--crop_to_size must be positive multiples of {INPUT_SIZE_MULTIPLE} (the model's coarsest stride), got "
            f"{height}x{width}."
        ) from error
    if data_args.task == "panoptic":
        raise CommandLineError("--crop_to_size supports --task instance and semantic (tiled evaluation), not panoptic.")
    return int(height), int(width)


def prepare(model_args: ModelArguments, data_args: DataTrainingArguments, training_args) -> PreparedRun:
    """Check the arguments, load the data, build the model, image processor and Trainer (nothing is trained yet).

    Errors raised here come from the command line, the data or the model files (see `cli`).
    """
    check_arguments(model_args, data_args)
    _setup_logging(training_args)
    tile_size = crop_size(data_args)
    if tile_size is not None:
        # The crop is the training size: the saved processor's size, the augmentation's and the tiles'.
        data_args.image_height, data_args.image_width = tile_size
    check_input_size(data_args.image_height, data_args.image_width, name="--image_height/--image_width")
    # Every process inspects the output folder before any process writes to it.
    checkpoint = resolve_checkpoint(training_args)
    _barrier(training_args)
    set_seed(training_args.seed)

    bundle = load_data(data_args, model_args, training_args)
    label_map = bundle.label_map
    logger.info("Labels (%d): %s", label_map.num_labels, label_map.id2label)
    # Counted from the annotations only (no image is decoded), so that big datasets stay cheap.
    count = count_instances(bundle.train, data_args.task) if training_args.do_train else None
    num_queries, queries_note = choose_num_queries(model_args, count)
    model, image_processor, pretrained = build_model(model_args, data_args, label_map, num_queries=num_queries)
    if queries_note.startswith("fixed by"):
        queries_note = f"{model.config.num_queries} ({queries_note})"
    (logger.warning if num_queries is not None else logger.info)("num_queries: %s.", queries_note)
    _check_queries(count, model, model_args)
    backbone_lr_multiplier = training_args.backbone_lr_multiplier
    if backbone_lr_multiplier is None:
        backbone_lr_multiplier = 0.1 if pretrained else 1.0

    # Training, evaluation and the saved model all prepare pixels with this one image processor (the object saved to
    # output_dir): eval_results.json then describes the model as users run it.
    train_dataset = eval_dataset = None
    if bundle.train is not None:
        seed = training_args.seed + training_args.process_index
        augmentation = build_augmentation(
            image_processor, min_scale=data_args.min_scale, max_scale=data_args.max_scale,
            color_jitter=data_args.color_jitter, hflip=data_args.hflip, seed=seed,
        )  # fmt: skip
        train_dataset = SegmentationDataset(
            bundle.train, data_args.task, image_processor, augmentation, seed=seed, native_crops=tile_size is not None
        )
    if bundle.validation is not None:
        eval_dataset = SegmentationDataset(
            bundle.validation, data_args.task, image_processor, for_evaluation=True, native_crops=tile_size is not None
        )

    trainer = Mask2FormerTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=SegmentationCollator(),
        processing_class=image_processor,
        task=data_args.task,
        label_map=label_map,
        image_processor=image_processor,
        backbone_lr_multiplier=backbone_lr_multiplier,
        layer_decay=training_args.layer_decay,
        instance_threshold=data_args.instance_threshold,
        panoptic_threshold=data_args.panoptic_threshold,
        tile_size=tile_size,
        tile_overlap=default_overlap(tile_size) if tile_size is not None else 0,
    )
    return PreparedRun(
        model_args=model_args, data_args=data_args, training_args=training_args, bundle=bundle, trainer=trainer,
        image_processor=image_processor, checkpoint=checkpoint, train_dataset=train_dataset,
        eval_dataset=eval_dataset, queries_note=queries_note,
    )  # fmt: skip


def execute(prepared: PreparedRun) -> dict[str, float]:
    """Train and/or evaluate a prepared run and write the outputs; returns the evaluation metrics."""
    model_args, data_args, training_args = prepared.model_args, prepared.data_args, prepared.training_args
    bundle, trainer, image_processor = prepared.bundle, prepared.trainer, prepared.image_processor
    label_map = bundle.label_map
    train_dataset, eval_dataset, checkpoint = prepared.train_dataset, prepared.eval_dataset, prepared.checkpoint

    output_dir = training_args.output_dir
    if training_args.do_train:
        start = time.time()
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()
        train_metrics = dict(train_result.metrics)
        train_metrics["train_samples"] = len(train_dataset)
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
        trainer.save_state()
        logger.info("Training took %.1f s", time.time() - start)

    metrics: dict[str, float] = {}
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        if trainer.is_world_process_zero():
            os.makedirs(output_dir, exist_ok=True)
            save_json(os.path.join(output_dir, "eval_results.json"), metrics)
            save_json(os.path.join(output_dir, "all_results.json"), metrics, merge=True)
    if training_args.do_predict and bundle.test is not None:
        test_dataset = SegmentationDataset(
            bundle.test, data_args.task, image_processor, for_evaluation=True, native_crops=trainer.tile_size is not None
        )
        test_metrics = trainer.evaluate(test_dataset, metric_key_prefix="test")
        trainer.log_metrics("test", test_metrics)
        if trainer.is_world_process_zero():
            save_json(os.path.join(output_dir, "test_results.json"), test_metrics)
            save_json(os.path.join(output_dir, "all_results.json"), test_metrics, merge=True)

    tiling = (trainer.tile_size, trainer.tile_overlap) if trainer.tile_size is not None else None
    if trainer.is_world_process_zero():
        os.makedirs(output_dir, exist_ok=True)
        if tiling is not None:
            save_tiling(output_dir, *tiling)
        save_json(
            os.path.join(output_dir, "label_map.json"),
            {"id2label": label_map.id2label, "thing_ids": sorted(label_map.thing_ids), "stuff_ids": label_map.stuff_ids,
             # label id -> the data's own category id (COCO category_id, or the HF semantic id), for predictions
             "category_ids": {label: dataset_id for dataset_id, label in label_map.dataset_ids.items()}},
        )
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
        if training_args.do_train:
            if model_args.model_name_or_path:
                note = f"fine-tuned from `{model_args.model_name_or_path}`"
            elif model_args.backbone_name_or_path:
                note = f"pretrained backbone `{model_args.backbone_name_or_path}`"
            elif model_args.preset:
                note = f"preset `{model_args.preset}` (random init)"
            else:
                note = "offline-default small ConvNeXt model (random init)"
            settings = training_settings(trainer, data_args, model_args, bundle, note)
            settings["queries (num_queries)"] = prepared.queries_note
            settings["thing_ids"] = sorted(label_map.thing_ids)
            write_model_card(
                output_dir,
                trainer.accelerator.unwrap_model(trainer.model).config,
                data_args.task,
                metrics,
                settings,
                bundle.description,
                base_model=model_args.model_name_or_path or model_args.backbone_name_or_path,
                tiling=tiling,
            )
    _barrier(training_args)
    return metrics


def run(model_args: ModelArguments, data_args: DataTrainingArguments, training_args) -> dict[str, float]:
    """Train and/or evaluate as the arguments say; returns the evaluation metrics (empty without --do_eval)."""
    return execute(prepare(model_args, data_args, training_args))


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the command line and run; errors propagate as exceptions (`cli` turns user errors into one line)."""
    return run(*parse_args(argv))


# Errors of the command line, the data or the model files while the run is set up (parsing, checks, data loading,
# building the model): a DataError / CommandLineError / JSONDecodeError (all ValueErrors), a config's ValueError or
# TypeError, an OSError for a missing or unreadable file or model. During training only a DataError (a sample that
# cannot be read) is the user's; anything else there is a bug and keeps its traceback.
SETUP_USER_ERRORS = (ValueError, TypeError, OSError)
RUN_USER_ERRORS = (DataError,)


def _fail(error: BaseException, debug: bool) -> None:
    if debug:
        raise error
    message = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    if not isinstance(error, (CommandLineError, DataError)):
        message = f"{message} [{type(error).__name__}; --debug shows the traceback]"
    sys.stdout.flush()  # the log goes to stdout: keep it before the error line
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def cli(argv: list[str] | None = None) -> dict[str, float]:
    """The command-line entry point (`run_instance_seg.py`): like `main`, but a user error (a bad flag, path, file,
    preset or config value; see `SETUP_USER_ERRORS`) prints one `error: <message>` line on stderr and exits with
    code 2. `--debug` shows the full traceback instead; unexpected errors always keep it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _given(argv, "debug")
    try:
        prepared = prepare(*parse_args(argv))
    except SETUP_USER_ERRORS as error:
        _fail(error, debug)
    try:
        return execute(prepared)
    except RUN_USER_ERRORS as error:
        _fail(error, debug)


__all__ = [
    "AugmentationArguments",
    "CommandLineError",
    "DataArguments",
    "DataTrainingArguments",
    "EvaluationArguments",
    "ModelArguments",
    "OFFLINE_DEFAULT_ARGS",
    "PreparedRun",
    "SegmentationArgumentParser",
    "SegmentationTrainingArguments",
    "SyntheticDataArguments",
    "build_model",
    "check_arguments",
    "choose_num_queries",
    "cli",
    "crop_size",
    "default_argv",
    "execute",
    "load_data",
    "main",
    "offline_default_config",
    "parse_args",
    "parse_config_overrides",
    "prepare",
    "resolve_checkpoint",
    "run",
]


if __name__ == "__main__":
    cli()
