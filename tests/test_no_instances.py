"""No training on nothing (issue 24, item 7): a train split without a usable instance is one line on stderr with
exit code 2 naming the split, what was skipped and why; many skipped annotations give one summary warning; a
validation split without instances gives a warning."""

import json
import logging
import os

import numpy as np
import pytest
import tifffile

from mask2former_dinov3.arguments import cli
from mask2former_dinov3.data import CocoSegmentationSource, DataError, LabelImageSource, require_instances
from mask2former_dinov3.finetune import main
from mask2former_dinov3.synthetic import SyntheticConfig, write_coco_dataset


SMALL = ["--image_height", "64", "--image_width", "64", "--report_to", "none", "--dataloader_num_workers", "0",
         "--num_overlay_images", "0", "--max_steps", "1"]  # fmt: skip


def _coco(root, edit):
    """A synthetic Roboflow folder whose train JSON `edit` rewrites."""
    paths = write_coco_dataset(root, num_train=4, num_valid=2, config=SyntheticConfig(image_size=64, empty_fraction=0))
    coco = json.loads(paths["train"].read_text())
    edit(coco)
    paths["train"].write_text(json.dumps(coco))
    return paths


def _boxes_only(coco):
    for ann in coco["annotations"]:
        ann.pop("segmentation")
        ann["bbox"] = [1, 1, 5, 5]


def _cli_error(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        cli(main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_box_only_coco_export_is_one_line_naming_split_count_and_reason(tmp_path, capsys):
    paths = _coco(tmp_path / "data", _boxes_only)
    skipped = len(json.loads(paths["train"].read_text())["annotations"])
    error = _cli_error(capsys, ["--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"),
                                "--do_train", *SMALL])  # fmt: skip
    assert "train split" in error and str(paths["train"]) in error
    assert f"skipped {skipped} without a segmentation" in error
    assert "boxes alone cannot train masks: export with masks or polygons" in error
    assert not os.path.exists(tmp_path / "out" / "model.safetensors")


def test_train_split_without_annotations_is_one_line(tmp_path, capsys):
    paths = _coco(tmp_path / "data", lambda coco: coco.update(annotations=[]))
    error = _cli_error(capsys, ["--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"),
                                "--do_train", *SMALL])  # fmt: skip
    assert "train split" in error and str(paths["train"]) in error and "none of its 4 image(s)" in error


def test_all_background_label_images_are_one_line(tmp_path, capsys):
    for split in ("train", "valid"):
        for sub in ("images", "masks"):
            os.makedirs(tmp_path / "data" / split / sub)
        tifffile.imwrite(tmp_path / "data" / split / "images" / "a.tif", np.ones((64, 64), np.uint16))
        tifffile.imwrite(tmp_path / "data" / split / "masks" / "a.tif", np.zeros((64, 64), np.uint16))
    error = _cli_error(capsys, ["--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"),
                                "--do_train", *SMALL])  # fmt: skip
    assert "train split" in error and os.path.join(str(tmp_path / "data"), "train") in error
    assert "none of its 1 image(s) has an annotated instance" in error


def test_validation_split_without_instances_warns(tmp_path, caplog):
    for sub in ("images", "masks"):
        os.makedirs(tmp_path / sub)
    tifffile.imwrite(tmp_path / "images" / "a.tif", np.ones((64, 64), np.uint16))
    tifffile.imwrite(tmp_path / "masks" / "a.tif", np.zeros((64, 64), np.uint16))
    source = LabelImageSource([(str(tmp_path / "images" / "a.tif"), str(tmp_path / "masks" / "a.tif"))])
    with caplog.at_level(logging.WARNING, logger="mask2former_dinov3.data"):
        require_instances(source, "instance", "validation")
    assert "validation split" in caplog.text and "AP will be 0 or undefined" in caplog.text
    with pytest.raises(DataError, match="train split"):
        require_instances(source, "panoptic", "train")
    require_instances(source, "semantic", "train")  # the semantic task has no instances to need


def test_many_skipped_annotations_give_one_summary_warning(tmp_path, caplog):
    def most_boxes_only(coco):
        for ann in coco["annotations"][1:]:
            ann.pop("segmentation")

    paths = _coco(tmp_path / "many", most_boxes_only)
    total = len(json.loads(paths["train"].read_text())["annotations"])
    with caplog.at_level(logging.WARNING, logger="mask2former_dinov3.data"):
        source = CocoSegmentationSource(str(paths["train"]))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{paths['train']}: skipped {total - 1} of {total} annotations: {total - 1} without a "
                        f"segmentation (boxes alone cannot train masks: export with masks or polygons)."]  # fmt: skip
    require_instances(source, "instance", "train")  # one instance is left: training goes on

    # Fewer than half skipped: one line per annotation (and the total).
    def one_box_only(coco):
        coco["annotations"][0].pop("segmentation")

    caplog.clear()
    paths = _coco(tmp_path / "few", one_box_only)
    with caplog.at_level(logging.WARNING, logger="mask2former_dinov3.data"):
        CocoSegmentationSource(str(paths["train"]))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    first = json.loads(paths["train"].read_text())["annotations"][0]["id"]
    assert warnings == [f"{paths['train']}: annotation {first}: skipped, no segmentation (boxes alone cannot train "
                        f"masks).", f"{paths['train']}: skipped 1 annotation(s) without a usable segmentation (see "
                        f"above)."]  # fmt: skip
