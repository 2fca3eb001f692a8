"""The command line of `run_instance_seg.py`: argument dataclasses, the offline default, and one-line errors.

`HfArgumentParser` over `ModelArguments`, the data groups (`DataArguments`, `AugmentationArguments`,
`EvaluationArguments`, `SyntheticDataArguments`, joined as `DataTrainingArguments`) and
`SegmentationTrainingArguments` (transformers' `TrainingArguments` plus `--overwrite_output_dir`,
`--backbone_lr_multiplier` and `--layer_decay`), as in transformers' own instance-segmentation example.

* `OFFLINE_DEFAULT`: the settings of a run that names neither data nor model (a small model on synthetic shapes);
  they become the parser's defaults, so any flag the user gives wins, and `--help` shows them beside the defaults.
* `SegmentationArgumentParser.error` raises `CommandLineError` instead of printing argparse's usage block; `cli`
  turns a user error (a bad flag, path, file or value) into one `error:` line on stderr and exit code 2, and
  `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import dataclass, field, fields
from typing import Literal

from transformers import HfArgumentParser, TrainingArguments

from .configuration_mask2former_dinov3 import INPUT_SIZE_MULTIPLE
from .data import DataError
from .loading import looks_like_path
from .presets import get_preset
from .training import MAIN_METRIC


# The offline default run (no data and no model argument): these become the parser's defaults.
OFFLINE_DEFAULT = {
    "do_train": True, "do_eval": True, "image_height": 128, "image_width": 128, "max_steps": 1200,
    "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16, "learning_rate": 6e-4, "weight_decay": 0.05,
    # Colours are random in the synthetic images already; milder scale jitter learns faster in a short run.
    "min_scale": 0.75, "max_scale": 1.5, "color_jitter": 0.0,
    "lr_scheduler_type": "cosine", "warmup_steps": 60, "max_grad_norm": 1.0, "logging_steps": 50,
    "eval_strategy": "no", "save_strategy": "no", "report_to": "none", "seed": 0,
}  # fmt: skip
DATA_FLAGS = ("dataset_name", "data_dir", "train_annotation_file", "validation_annotation_file", "test_annotation_file")
MODEL_FLAGS = ("model_name_or_path", "preset", "backbone_name_or_path")




def arg(default, help: str, **metadata):
    """A dataclass field for `HfArgumentParser`: its default and its `--help` text (plus any other argparse keyword)."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class ModelArguments:
    """Which model to fine-tune (at most one of model_name_or_path / preset / backbone_name_or_path)."""

    _argument_group_name = "Model (at most one of --model_name_or_path / --preset / --backbone_name_or_path)"

    model_name_or_path: str | None = arg(
        None, "A saved Mask2FormerDINOv3 model (folder / hub id), its head resized to the labels."
    )
    preset: str | None = arg(None, "A DINOv3 preset (e.g. dinov3-vits16): random-init model.")
    backbone_name_or_path: str | None = arg(None, "Pretrained DINOv3 backbone (hub id / folder / Meta .pth).")
    head_name_or_path: str | None = arg(None, "With --backbone_name_or_path: a Mask2Former whose head is reused.")
    config_overrides: str | None = arg(None, "Config fields of a new model, e.g. 'num_queries=50,hidden_dim=128'. "
        "Without num_queries: enough for the densest training image (1.25 x its instances, at least 100 for --preset "
        "/ --backbone_name_or_path).")
    freeze_backbone: bool = arg(False, "Train without updating the DINOv3 backbone.")
    cache_dir: str | None = arg(None, "Where downloaded models / datasets are cached.")
    token: str | None = arg(None, "Hugging Face Hub token (private models / datasets).")
    trust_remote_code: bool = arg(False, "Let --dataset_name run a dataset loading script from the Hub; it "
                                  "does not concern the model.")


@dataclass
class DataArguments:
    """Where the data comes from and at which size the model sees it."""

    _argument_group_name = "Data (--data_dir, --*_annotation_file or --dataset_name; none: the offline default)"

    task: Literal["instance", "semantic", "panoptic"] = arg("instance", "Its targets and metric (mAP, mIoU, PQ).")
    dataset_name: str | None = arg(None, "HF dataset (hub name or folder) in transformers' example format: image, "
        "annotation PNG (channel 0 semantic id, channel 1 instance id), semantic_class_to_id.")
    data_dir: str | None = arg(None, "train/, valid/ (test/): COCO in Roboflow's layout (_annotations.coco.json), or "
        "label images in StarDist's (images/NAME.tif, masks/NAME.tif) or Cellpose's layout (NAME.tif or NAME_img.tif, "
        "NAME_masks.tif).")
    label_image_class: str = arg("cell", "Label-image folders: the name of their one class (0 is background).")
    train_annotation_file: str | None = arg(None, "COCO JSON of the training split.")
    train_image_dir: str | None = arg(None, "Its images (default: the JSON's folder).")
    validation_annotation_file: str | None = arg(None, "COCO JSON of the validation split.")
    validation_image_dir: str | None = arg(None, "Images of the validation split.")
    test_annotation_file: str | None = arg(None, "COCO JSON of the test split (--do_predict).")
    test_image_dir: str | None = arg(None, "Images of the test split.")
    image_height: int = arg(512, "Training / inference height (multiple of 32).")
    image_width: int = arg(512, "Training / inference width (multiple of 32).")
    crop_to_size: list[int] | None = arg(None, "H [W] (multiples of 32): train on random H x W crops at native "
        "resolution instead of resizing, and evaluate by H x W tiles (tiling.json makes mask2former-dinov3-predict "
        "tile too). Replaces --image_height/--image_width; instance and semantic tasks.")
    do_reduce_labels: bool = arg(False, "HF format: semantic id 0 is background (ignored), the others shift by -1.")
    train_val_split: float = arg(0.15, "HF format without a validation split: fraction of train held out.")
    max_train_samples: int | None = arg(None, "Use only the first N training images.")
    max_eval_samples: int | None = arg(None, "Use only the first N evaluation images.")


@dataclass
class AugmentationArguments:
    """Random augmentation of the training images (after the image processor's resize)."""

    _argument_group_name = "Augmentation (training images only)"

    min_scale: float = arg(0.5, "Scale jitter: smallest random scale.")
    max_scale: float = arg(2.0, "Scale jitter: largest random scale.")
    color_jitter: float = arg(0.2, "Colour jitter strength (0 disables).")
    hflip: bool = arg(True, "Flip half of the training images horizontally at random.")


@dataclass
class EvaluationArguments:
    """Post-processing thresholds of the metrics and the prediction overlays."""

    _argument_group_name = "Evaluation and outputs"

    instance_threshold: float = arg(0.0, "Score threshold of instance post-processing for mAP (0 keeps all queries).")
    panoptic_threshold: float = arg(0.5, "Score threshold of panoptic post-processing.")
    num_overlay_images: int = arg(4, "Validation images drawn into predictions/.")
    overlay_threshold: float = arg(0.5, "Instance score threshold of the overlays.")
    intensity_normalization: Literal["percentile", "minmax", "fixed"] = arg("percentile", "Images that are not 8-bit: "
        "map each image's 1st / 99.8th percentiles (or min / max, or 0..65535) to 0..255. Saved in the image "
        "processor; 8-bit images are never changed.")


@dataclass
class SyntheticDataArguments:
    """The synthetic shapes of the offline default run (no data argument)."""

    _argument_group_name = "Offline default data (synthetic shapes; used when no data argument is given)"

    synthetic_train_samples: int = arg(1000, "Offline default: training images.")
    synthetic_eval_samples: int = arg(100, "Offline default: validation images.")
    synthetic_seed: int = arg(0, "Offline default: generator seed.")
    synthetic_image_size: int = arg(128, "Offline default: image side in pixels.")
    synthetic_size_probabilities: str = arg("0.1,0.5,0.4", "Offline default: P(small, medium, large shape).")


# The command line shows each part as its own group of --help; the script works with their union.
DATA_ARGUMENT_PARTS = (DataArguments, AugmentationArguments, EvaluationArguments, SyntheticDataArguments)


@dataclass
class DataTrainingArguments(SyntheticDataArguments, EvaluationArguments, AugmentationArguments, DataArguments):
    """Which data to train and evaluate on, how to augment it and how to evaluate (the union of the data groups)."""

    @classmethod
    def from_parts(cls, *parts) -> DataTrainingArguments:
        """The union of parsed `DATA_ARGUMENT_PARTS` instances."""
        return cls(**{f.name: getattr(part, f.name) for part in parts for f in fields(part)})


@dataclass
class SegmentationTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the learning-rate split of the backbone, output-folder protection and `--debug`."""

    _argument_group_name = (
        "Training (transformers' TrainingArguments; this script adds --overwrite_output_dir, "
        "--backbone_lr_multiplier and --layer_decay at the end, and bare --debug for full tracebacks)"
    )

    overwrite_output_dir: bool = arg(False, "Train into a non-empty --output_dir holding another run (no checkpoint).")
    backbone_lr_multiplier: float | None = arg(
        None, "Backbone LR = learning_rate x this (default 0.1 if pretrained, else 1)."
    )
    layer_decay: float | None = arg(None, "ViT layer-wise LR decay (e.g. 0.8): block i of L gets decay^(L-i).")
    remove_unused_columns: bool = arg(False, "Kept False: the collator needs every field.")
    # Trainer's own --debug takes values; bare, it only asks this script for full tracebacks (see `cli`).
    debug: str = arg("", "Bare --debug: errors show their full traceback instead of one 'error:' line. With values "
        "(underflow_overflow, tpu_metrics_debug): Trainer's debug features as well.", nargs="*")

    def __post_init__(self):
        if isinstance(self.debug, list):  # nargs="*" gives a list of words; Trainer takes one string
            self.debug = " ".join(self.debug)
        super().__post_init__()


class CommandLineError(ValueError):
    """A command line the script cannot run: an unknown flag, a bad value, a missing file or folder."""


def given(argv: list[str], name: str) -> bool:
    """Whether `argv` sets `--name` (HfArgumentParser also accepts `--na-me`, and `--name=value`)."""
    flags = {f"--{name}", f"--{name.replace('_', '-')}"}
    return any(a.split("=", 1)[0] in flags for a in argv)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows the offline default run's value of a flag beside its default, and says what each `--no_*` flag does."""

    def _get_help_string(self, action):
        if action.nargs == 0 and action.const is False and action.option_strings[0].startswith(("--no_", "--no-")):
            # HfArgumentParser gives --no_X the help of --X; say what this one does.
            return f"Turns --{action.dest} off (it is on by default). --{action.dest}: {action.help}"
        text = super()._get_help_string(action)
        offline = OFFLINE_DEFAULT.get(action.dest)
        if offline is not None and action.option_strings and str(offline) != str(getattr(action.default, "value", action.default)):
            text += f" (offline default: {offline})"
        return text


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
    """`(model_args, data_args, training_args)` from the command line (`sys.argv[1:]` by default) or from a JSON file
    (`run_instance_seg.py args.json`). Without a data or model flag the offline default's settings are the defaults;
    without `--do_train/--do_eval/--do_predict` the run trains and evaluates."""
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
    # --help shows the offline default beside each flag's own default (it is not the default of every run).
    if not any(given(argv, f) for f in DATA_FLAGS + MODEL_FLAGS + ("help",)) and "-h" not in argv:
        parser.set_defaults(**OFFLINE_DEFAULT)
    if not any(given(argv, f) for f in ("do_train", "do_eval", "do_predict")):
        parser.set_defaults(do_train=True, do_eval=True)
    model_args, *data_parts, training_args, unknown = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    if unknown:
        raise CommandLineError(f"unknown argument(s): {' '.join(unknown)} (see --help)")
    data_args = DataTrainingArguments.from_parts(*data_parts)
    if data_args.crop_to_size is not None and (given(argv, "image_height") or given(argv, "image_width")):
        raise CommandLineError("--crop_to_size sets the training size: pass it without --image_height/--image_width.")
    if not given(argv, "metric_for_best_model") and not given(argv, "greater_is_better"):
        # Best-model selection on the task's main metric rather than Trainer's default (the loss).
        training_args.metric_for_best_model = MAIN_METRIC[data_args.task]
        training_args.greater_is_better = True
    return model_args, data_args, training_args


def crop_size(data_args: DataTrainingArguments) -> tuple[int, int] | None:
    """`(H, W)` of `--crop_to_size` (one value: a square), None without it; a `CommandLineError` for a size that
    is not two positive multiples of 32 or a task tiles cannot evaluate (panoptic)."""
    values = data_args.crop_to_size
    if values is None:
        return None
    height, width = (values * 2)[:2]
    if len(values) not in (1, 2) or height <= 0 or width <= 0 or height % INPUT_SIZE_MULTIPLE or width % INPUT_SIZE_MULTIPLE:
        raise CommandLineError(f"--crop_to_size takes H or H W, positive multiples of {INPUT_SIZE_MULTIPLE} (the "
                               f"model's coarsest stride); got {'x'.join(map(str, values * (2 if len(values) == 1 else 1)))}.")  # fmt: skip
    if data_args.task == "panoptic":
        raise CommandLineError("--crop_to_size supports --task instance and semantic (tiled evaluation), not panoptic.")
    return int(height), int(width)


def check_arguments(model_args: ModelArguments, data_args: DataTrainingArguments) -> None:
    """Fail fast, before any data is read, on contradictory model flags, an unknown preset and paths that do not
    exist (`CommandLineError` naming the flag and the path)."""
    chosen = [f for f in MODEL_FLAGS if getattr(model_args, f)]
    if len(chosen) > 1:
        raise CommandLineError(f"pass only one of --{' / --'.join(MODEL_FLAGS)}; got --{' and --'.join(chosen)}.")
    if model_args.head_name_or_path and not model_args.backbone_name_or_path:
        raise CommandLineError("--head_name_or_path goes with --backbone_name_or_path.")
    if model_args.preset:
        try:
            get_preset(model_args.preset)
        except ValueError as error:
            raise CommandLineError(f"--preset: {error}") from None
    splits = ("train", "validation", "test")
    for flag in ("data_dir", *(f"{s}_image_dir" for s in splits), *(f"{s}_annotation_file" for s in splits)):
        path, is_dir = getattr(data_args, flag), not flag.endswith("_file")
        if path and not (os.path.isdir if is_dir else os.path.isfile)(path):
            kind = "is a file, not a folder" if is_dir else "is a folder, not a COCO JSON file"
            raise CommandLineError(f"--{flag} {path} {kind if os.path.exists(path) else 'does not exist'}.")
    for args, flag in ((data_args, "dataset_name"), *((model_args, f) for f in (*MODEL_FLAGS, "head_name_or_path"))):
        name = getattr(args, flag)
        if flag != "preset" and name and not os.path.exists(name) and looks_like_path(name):
            raise CommandLineError(f"--{flag} {name} does not exist (read as a local path; Hub repositories are named "
                                   "like org/name).")  # fmt: skip


@contextlib.contextmanager
def run_phase():
    """Marks errors raised inside (training, evaluation, writing outputs) as bugs unless they are `DataError`s (a
    sample that cannot be read): `cli` keeps their traceback. Errors before it come from the command line, the data
    or the model files."""
    try:
        yield
    except Exception as error:
        error.during_run = True
        raise


def cli(main, argv: list[str] | None = None):
    """Run `main(argv)` as a command: a user error (`CommandLineError`, `DataError`, or before `run_phase` a
    ValueError, TypeError or OSError: a bad flag, path, file, preset or config value) prints one `error: <message>`
    line on stderr and exits with code 2; `--debug` shows the traceback instead; other errors keep it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(argv)
    except (ValueError, TypeError, OSError) as error:
        if given(argv, "debug") or (getattr(error, "during_run", False) and not isinstance(error, DataError)):
            raise
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
        if not isinstance(error, (CommandLineError, DataError)):
            message = f"{message} [{type(error).__name__}; --debug shows the traceback]"
        sys.stdout.flush()  # the log goes to stdout: keep it before the error line
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
