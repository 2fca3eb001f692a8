"""The prediction CLI on a tiny saved model: COCO results pycocotools accepts, skipped files, user errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from mask2former_dinov3 import Mask2FormerDINOv3ForUniversalSegmentation, Mask2FormerDINOv3ImageProcessor
from mask2former_dinov3.predict import main

from coco_check import assert_predictions_score_as_reported
from tiny_configs import tiny_config


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CATEGORY_IDS = {7: 0, 9: 1, 11: 2}  # dataset id -> label id, as a training run's label map keeps them
SIZES = [(50, 70), (64, 64), (90, 40)]


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "mask2former_dinov3.predict", *map(str, args)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    config = tiny_config("vit", id2label={0: "a", 1: "b", 2: "c"})
    Mask2FormerDINOv3ForUniversalSegmentation(config).save_pretrained(root / "model")
    Mask2FormerDINOv3ImageProcessor(size={"height": 64, "width": 64}).save_pretrained(root / "model")
    label_map = {"id2label": config.id2label, "thing_ids": [0, 1], "stuff_ids": [2], "dataset_ids": CATEGORY_IDS}
    (root / "model" / "label_map.json").write_text(json.dumps(label_map))
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    (images / "broken.png").write_text("not an image")
    coco = {
        "images": [
            {"id": 100 + i, "file_name": f"img{i}.png", "height": h, "width": w} for i, (h, w) in enumerate(SIZES)
        ],
        "annotations": [],
        "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, "abc")],
    }
    (root / "coco.json").write_text(json.dumps(coco))
    return root


@pytest.mark.slow  # the CLI in a new interpreter
def test_cli_writes_coco_results_pycocotools_accepts(setup, tmp_path):
    out = tmp_path / "out"
    result = _cli(setup / "model", setup / "images", "--output_dir", out, "--threshold", 0, "--batch_size", 2,
                  "--annotations", setup / "coco.json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "broken.png" in result.stderr and "Traceback" not in result.stderr

    predictions = json.loads((out / "predictions.json").read_text())
    coco = COCO(str(setup / "coco.json"))
    detections = coco.loadRes(str(out / "predictions.json"))
    assert len(detections.getAnnIds()) == len(predictions)
    num_queries = tiny_config("vit").num_queries
    for i, (h, w) in enumerate(SIZES):
        mine = [p for p in predictions if p["image_id"] == 100 + i]
        assert len(mine) == num_queries  # threshold 0 keeps every query
        assert all(p["segmentation"]["size"] == [h, w] for p in mine)
    assert {p["category_id"] for p in predictions} <= set(CATEGORY_IDS)
    assert sorted((out / "overlays").iterdir()) == [out / "overlays" / f"img{i}.png" for i in range(3)]
    # Drawn as training's overlays: a small image is enlarged so that its short side is 512 px.
    assert Image.open(out / "overlays" / "img2.png").size == (512, round(90 * 512 / 40))


def test_ids_without_annotations_are_sorted_input_order(setup, tmp_path):
    code = main([str(setup / "model"), str(setup / "images" / "img2.png"), str(setup / "images" / "img*.png"),
                 "--output_dir", str(tmp_path), "--threshold", "0.2", "--no_overlays"])  # fmt: skip
    assert code == 0
    images = json.loads((tmp_path / "images.json").read_text())
    assert [(i["id"], i["file_name"]) for i in images] == [(1, "img0.png"), (2, "img1.png"), (3, "img2.png")]
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    assert all(p["score"] >= 0.2 for p in predictions)


def test_semantic_and_panoptic_maps(setup, tmp_path):
    assert main([str(setup / "model"), str(setup / "images" / "img0.png"), "--output_dir", str(tmp_path / "s"),
                 "--task", "semantic"]) == 0  # fmt: skip
    semantic = np.asarray(Image.open(tmp_path / "s" / "semantic" / "img0.png"))
    assert semantic.shape == SIZES[0] and semantic.max() < 3
    assert main([str(setup / "model"), str(setup / "images" / "img0.png"), "--output_dir", str(tmp_path / "p"),
                 "--task", "panoptic", "--threshold", "0"]) == 0  # fmt: skip
    rgb = np.asarray(Image.open(tmp_path / "p" / "panoptic" / "img0.png")).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    segments = json.loads((tmp_path / "p" / "panoptic.json").read_text())["annotations"][0]["segments_info"]
    assert set(np.unique(ids)) - {0} == {s["id"] for s in segments}
    assert {s["category_id"] for s in segments} <= set(CATEGORY_IDS)


def test_tiled_cli(setup, tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (130, 150, 3), dtype=np.uint8)).save(big)
    assert main([str(setup / "model"), str(big), "--output_dir", str(tmp_path / "o"), "--tile", "64", "64",
                 "--overlap", "16", "--threshold", "0"]) == 0  # fmt: skip
    predictions = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert predictions and all(p["segmentation"]["size"] == [130, 150] for p in predictions)


def test_overlays_are_drawn_as_training_draws_them(setup, tmp_path):
    """The CLI's overlays come from training's `draw_segments`: a 128 px image gives a 512 px overlay, and an empty
    prediction is a greyed panel that says so, not the plain image."""
    from mask2former_dinov3.overlays import draw_segments

    image = np.random.default_rng(5).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "small.png")
    names = {0: "a", 1: "b", 2: "c"}
    # Threshold 1: no query scores that high, so the prediction drawn is empty.
    assert main([str(setup / "model"), str(tmp_path / "small.png"), "--output_dir", str(tmp_path / "empty"),
                 "--threshold", "1"]) == 0  # fmt: skip
    empty = np.asarray(Image.open(tmp_path / "empty" / "overlays" / "small.png").convert("RGB"))
    assert empty.shape == (512, 512, 3)
    expected = np.asarray(draw_segments(image, [], [], names, [], empty_text="no prediction above threshold 1"))
    np.testing.assert_array_equal(empty, expected)
    plain = np.asarray(draw_segments(image, [], [], names))  # the image enlarged, nothing written on it
    text_box = (empty == 255).all(axis=-1)
    assert text_box.sum() > 500 and (empty[text_box] != plain[text_box]).any()
    assert (empty[..., 0] == empty[..., 1]).all() and (plain[..., 0] != plain[..., 1]).any()  # greyed out

    # With predictions: the same size, coloured segments, and the same pixels as training's drawing of them.
    assert main([str(setup / "model"), str(tmp_path / "small.png"), "--output_dir", str(tmp_path / "full"),
                 "--threshold", "0.01"]) == 0  # fmt: skip
    drawn = np.asarray(Image.open(tmp_path / "full" / "overlays" / "small.png").convert("RGB"))
    assert drawn.shape == (512, 512, 3) and not np.array_equal(drawn, plain)
    predictions = json.loads((tmp_path / "full" / "predictions.json").read_text())
    assert predictions
    from pycocotools import mask as mask_utils

    label_of = {category: label for label, category in ((0, 7), (1, 9), (2, 11))}
    masks = [mask_utils.decode(p["segmentation"]).astype(bool) for p in predictions]
    labels = [label_of[p["category_id"]] for p in predictions]
    scores = [p["score"] for p in predictions]
    reference = np.asarray(draw_segments(image, masks, labels, names, scores))
    # Scores are rounded to 6 decimals in predictions.json: the captions (2 decimals) and the drawing agree.
    np.testing.assert_array_equal(drawn, reference)


@pytest.mark.slow  # the CLI in new interpreters
def test_user_errors_are_one_line_and_exit_2(setup, tmp_path):
    missing = _cli(tmp_path / "no-such-model", setup / "images", "--output_dir", tmp_path / "o")
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1 and "no-such-model" in missing.stderr
    bad_flag = _cli(setup / "model", setup / "images", "--output_dir", tmp_path / "o", "--dtype", "fp8")
    assert bad_flag.returncode == 2 and len(bad_flag.stderr.strip().splitlines()) == 1


def test_overlap_without_tiles_is_a_user_error(setup, tmp_path, capsys):
    code = main([str(setup / "model"), str(setup / "images" / "img0.png"), "--output_dir", str(tmp_path),
                 "--overlap", "8"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overlap goes with --tile" in err[0]


def test_empty_folder_is_reported_and_the_rest_processed(setup, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main([str(setup / "model"), str(empty), str(setup / "images" / "img1.png"),
                 "--output_dir", str(tmp_path / "o"), "--no_overlays"])  # fmt: skip
    assert code == 0
    assert "no images in this folder" in capsys.readouterr().err
    assert len(json.loads((tmp_path / "o" / "images.json").read_text())) == 1


@pytest.mark.slow  # 60 training steps, then the predict CLI in a new interpreter
def test_predictions_json_gives_the_training_scripts_mask_ap(tmp_path):
    """A model trained by run_instance_seg.py: the predict CLI's predictions.json, scored by pycocotools against the
    validation split's own COCO JSON, gives the script's reported mask AP (threshold 0, as the script evaluates)."""
    import shutil

    from mask2former_dinov3.finetune import main as train
    from mask2former_dinov3.synthetic import SyntheticConfig, write_coco_dataset

    data = tmp_path / "data"
    # Category ids 1-4 in the JSON, labels 0-3 in the model: the mapping through label_map.json is exercised.
    write_coco_dataset(data, num_train=8, num_valid=1, config=SyntheticConfig(image_size=96, size_probabilities=(0, 0.3, 0.7)))
    shutil.rmtree(data / "valid")
    shutil.copytree(data / "train", data / "valid")  # a model that trains in seconds then finds objects: AP > 0
    out = tmp_path / "out"
    train(["--data_dir", str(data), "--output_dir", str(out), "--do_train", "--do_eval", "--max_steps", "60",
           "--image_height", "64", "--image_width", "64", "--per_device_train_batch_size", "8",
           "--per_device_eval_batch_size", "4", "--learning_rate", "1e-3", "--warmup_steps", "0",
           "--weight_decay", "0", "--min_scale", "1", "--max_scale", "1", "--color_jitter", "0", "--report_to", "none",
           "--dataloader_num_workers", "0", "--seed", "0", "--save_strategy", "no", "--num_overlay_images", "0"])  # fmt: skip
    reported = json.loads((out / "eval_results.json").read_text())
    annotations = data / "valid" / "_annotations.coco.json"
    done = _cli(out, data / "valid", "--output_dir", tmp_path / "pred", "--annotations", annotations,
                "--threshold", "0", "--batch_size", "4", "--no_overlays")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert_predictions_score_as_reported(annotations, str(tmp_path / "pred" / "predictions.json"), reported)


def test_label_images_and_more_than_100_detections(tmp_path):
    """`--label_images` writes one uint16 label image per input, and `predictions.json` keeps every detection
    above the threshold: a model with 150 queries at threshold 0 gives more than COCO's 100 per image."""
    import tifffile

    torch.manual_seed(1)
    config = tiny_config("vit", num_queries=150)
    Mask2FormerDINOv3ForUniversalSegmentation(config).save_pretrained(tmp_path / "model")
    Mask2FormerDINOv3ImageProcessor(size={"height": 64, "width": 64}).save_pretrained(tmp_path / "model")
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert main([str(tmp_path / "model"), str(tmp_path / "a.png"), "--output_dir", str(tmp_path / "out"),
                 "--threshold", "0", "--no_overlays", "--label_images"]) == 0  # fmt: skip
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(predictions) > 100
    labels = tifffile.imread(tmp_path / "out" / "label_images" / "a_masks.tif")
    assert labels.dtype == np.uint16 and labels.shape == (60, 80)
    # Label k is the k-th highest score; each visible label's pixels lie inside that prediction's mask.
    ranked = sorted(predictions, key=lambda p: -p["score"])
    from pycocotools import mask as mask_utils

    visible = [int(v) for v in np.unique(labels) if v]
    assert visible and max(visible) <= len(ranked)
    for value in visible[:20]:
        assert mask_utils.decode(ranked[value - 1]["segmentation"])[labels == value].all()


def test_label_image_higher_score_wins_and_dtype():
    from mask2former_dinov3.predict import label_image, label_image_dtype

    low, high = np.zeros((4, 6), bool), np.zeros((4, 6), bool)
    low[:, :4], high[:, 2:] = True, True
    labels = label_image((4, 6), [(low, 0.3), (high, 0.9)])
    assert labels.dtype == np.uint16
    assert (labels[:, 2:] == 1).all() and (labels[:, :2] == 2).all()  # the overlap goes to the higher score
    assert label_image_dtype(65535) is np.uint16 and label_image_dtype(65536) is np.uint32


def test_label_images_need_the_instance_task(setup, tmp_path, capsys):
    code = main([str(setup / "model"), str(setup / "images" / "img0.png"), "--output_dir", str(tmp_path),
                 "--task", "semantic", "--label_images"])  # fmt: skip
    assert code == 2 and "--label_images" in capsys.readouterr().err
