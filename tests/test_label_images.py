"""Label-image folders (StarDist and Cellpose layouts) through `--data_dir`: discovery, reading, and every bad input
rejected with a message naming the file."""

import json
import logging
import os

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from mask2former_dinov3 import Mask2FormerDINOv3ForUniversalSegmentation
from mask2former_dinov3.arguments import cli
from mask2former_dinov3.data import (
    DataError,
    LabelImageSource,
    count_instances,
    evaluation_ground_truth,
    find_label_image_pairs,
    read_label_image,
)
from mask2former_dinov3.finetune import main
from tiny_configs import tiny_config


SIZE = 64  # the tiny ViT's smallest input


def _labels(dtype=np.uint16, offset=0):
    """Three instances: two touching squares (values 1 and 2 share an edge) and one apart (value 7 + offset)."""
    labels = np.zeros((SIZE, SIZE), dtype)
    labels[4:12, 4:10] = 1
    labels[4:12, 10:16] = 2
    labels[20:28, 20:28] = 7 + offset
    return labels


def _image(dtype=np.uint16):
    rng = np.random.default_rng(0)
    return rng.integers(0, 4000 if dtype == np.uint16 else 255, (SIZE, SIZE)).astype(dtype)


def _stardist(root, names=("a", "b"), splits=("train", "valid")):
    for split in splits:
        os.makedirs(root / split / "images")
        os.makedirs(root / split / "masks")
        for name in names:
            tifffile.imwrite(root / split / "images" / f"{name}.tif", _image())
            tifffile.imwrite(root / split / "masks" / f"{name}.tif", _labels())
    return root


def test_stardist_layout_16_bit_image_and_touching_instances_stay_apart(tmp_path):
    _stardist(tmp_path)
    pairs = find_label_image_pairs(str(tmp_path / "train"))
    assert [(os.path.basename(i), os.path.relpath(m, tmp_path)) for i, m in pairs] == [
        ("a.tif", os.path.join("train", "masks", "a.tif")), ("b.tif", os.path.join("train", "masks", "b.tif"))
    ]  # fmt: skip
    source = LabelImageSource(pairs, "nucleus")
    assert source.label_map.id2label == {0: "nucleus"} and source.label_map.thing_ids == {0}
    sample = source[0]
    # The 16-bit intensities reach the image processor as read (its intensity normalisation maps them).
    assert sample.image.dtype == np.uint16 and np.array_equal(sample.image, _image())
    labels = _labels()
    assert sample.is_id_map and sample.binary_masks().shape == (3, SIZE, SIZE)
    # Values 1 and 2 touch: two masks, each exactly its own value's pixels.
    for mask, value in zip(sample.binary_masks(), (1, 2, 7)):
        assert np.array_equal(mask.astype(bool), labels == value)
    assert sample.labels.tolist() == [0, 0, 0] and sample.is_instance.all() and not sample.iscrowd.any()
    assert len(evaluation_ground_truth(sample, "instance")["masks"]) == 3
    count = count_instances(source)
    assert (count.largest, count.counted, count.exact) == (3, 2, True)


@pytest.mark.parametrize("image_suffix", ["", "_img"])
def test_cellpose_layout_with_png_images_and_uint32_labels(tmp_path, image_suffix):
    Image.fromarray(_image(np.uint8)).save(tmp_path / f"frame{image_suffix}.png")
    tifffile.imwrite(tmp_path / "frame_masks.tif", _labels(np.uint32, offset=70_000))
    pairs = find_label_image_pairs(str(tmp_path))
    assert [tuple(map(os.path.basename, pair)) for pair in pairs] == [(f"frame{image_suffix}.png", "frame_masks.tif")]
    sample = LabelImageSource(pairs)[0]
    assert sample.image.shape == (SIZE, SIZE, 3) and sample.image.dtype == np.uint8  # 8-bit grayscale -> RGB
    assert np.array_equal(sample.binary_masks()[2], _labels(np.uint32, 70_000) == 70_007)
    assert len(sample.labels) == 3


def test_png_label_image_and_a_frame_without_instances_is_kept(tmp_path, caplog):
    Image.fromarray(_image(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(tmp_path / "a_masks.png")
    with caplog.at_level(logging.INFO, logger="mask2former_dinov3.data"):
        sample = LabelImageSource(find_label_image_pairs(str(tmp_path)))[0]
    assert sample.binary_masks().shape == (0, SIZE, SIZE)
    assert "a_masks.png: no instance; kept as a negative example" in caplog.text


def _expect(error_match, call):
    with pytest.raises(DataError, match=error_match):
        call()


def test_each_bad_input_is_an_error_naming_the_file(tmp_path):
    stardist = _stardist(tmp_path / "s", splits=("train",))
    os.remove(stardist / "train" / "masks" / "b.tif")
    _expect(r"images.b\.tif: image without a label image", lambda: find_label_image_pairs(str(stardist / "train")))

    cellpose = tmp_path / "c"
    cellpose.mkdir()
    tifffile.imwrite(cellpose / "x_masks.tif", _labels())
    _expect(r"x_masks\.tif: label image without an image", lambda: find_label_image_pairs(str(cellpose)))

    empty = tmp_path / "e"
    empty.mkdir()
    _expect(r"e: empty split", lambda: find_label_image_pairs(str(empty)))

    def source(image, labels, name):
        folder = tmp_path / name
        folder.mkdir()
        tifffile.imwrite(folder / "f.tif", image)
        tifffile.imwrite(folder / "f_masks.tif", labels)
        return lambda: LabelImageSource(find_label_image_pairs(str(folder)))[0]

    _expect(r"size.f_masks\.tif: label image of 16x64 pixels but its image .*f\.tif is 64x64",
            source(_image(), _labels()[:, :16], "size"))  # fmt: skip
    _expect(r"float.f_masks\.tif: a float32 label image", source(_image(), _labels(np.float32), "float"))
    _expect(r"rgb.f_masks\.tif: a uint8 label image of shape \(64, 64, 3\)",
            source(_image(), np.stack([_labels(np.uint8)] * 3, -1), "rgb"))  # fmt: skip
    (tmp_path / "bad_masks.tif").write_bytes(b"not a tiff")
    _expect(r"bad_masks\.tif: cannot read the label image", lambda: read_label_image(str(tmp_path / "bad_masks.tif")))


def test_cli_names_the_file_in_one_line(tmp_path, capsys):
    _stardist(tmp_path / "data", splits=("train",))
    os.remove(tmp_path / "data" / "train" / "images" / "a.tif")
    with pytest.raises(SystemExit) as exit_info:
        cli(main, ["--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"), "--do_train"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "a.tif: label image without an image" in err[0]


def test_a_folder_of_neither_kind_names_both_layouts(tmp_path, capsys):
    (tmp_path / "data" / "other").mkdir(parents=True)
    with pytest.raises(SystemExit):
        cli(main, ["--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"), "--do_train"])
    err = capsys.readouterr().err
    assert "no split found" in err and "_annotations.coco.json" in err and "NAME_masks.tif" in err


def test_stardist_folder_trains_and_evaluates(tmp_path):
    data = _stardist(tmp_path / "data", names=("a", "b", "c"), splits=("train", "valid", "test"))
    model_dir = str(tmp_path / "model")
    torch.manual_seed(0)
    Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit", num_labels=1)).save_pretrained(model_dir)
    out = tmp_path / "out"
    main(["--model_name_or_path", model_dir, "--data_dir", str(data), "--output_dir", str(out), "--do_train",
          "--do_eval", "--max_steps", "2", "--label_image_class", "nucleus", "--image_height", "64", "--image_width",
          "64", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2", "--report_to", "none",
          "--num_overlay_images", "0", "--dataloader_num_workers", "0", "--seed", "0"])  # fmt: skip
    results = json.loads((out / "eval_results.json").read_text())
    assert results["eval_num_images"] == 3 and 0.0 <= results["eval_map"] <= 1.0 and np.isfinite(results["eval_loss"])
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "nucleus"}
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    card = (out / "README.md").read_text()
    assert "label images (`data`, train: 3 images, validation: 3 images, test: 3 images" in card
