"""Data pipeline: COCO / Roboflow loading, HF example format, synthetic source, targets per task, augmentation,
collation, and every bad input of the fine-tuning issue (each handled or rejected with a message naming the file)."""

import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from mask2former_dinov3.data import (
    IGNORE_INDEX,
    CocoSegmentationSource,
    DataError,
    LabelMap,
    Sample,
    SegmentationCollator,
    SegmentationDataset,
    apply_transform,
    build_augmentation,
    evaluation_ground_truth,
    find_roboflow_split,
    label_map_from_semantic_class_to_id,
    load_image,
    panoptic_segments,
    resize_sample,
    segments_from_annotation_png,
    semantic_map,
    to_rgb_array,
    training_targets,
)
from mask2former_dinov3.image_processing_mask2former_dinov3 import Mask2FormerDINOv3ImageProcessor
from mask2former_dinov3.synthetic import SyntheticSegmentationSource


def _processor(height, width, **kwargs):
    return Mask2FormerDINOv3ImageProcessor(size={"height": height, "width": width}, **kwargs)


def _rgb(height, width, value=(90, 120, 150)):
    return np.broadcast_to(np.array(value, np.uint8), (height, width, 3)).copy()


def _write_image(path, array_or_image):
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    image.save(path)


def _write_json(path, data):
    with open(path, "w") as handle:
        json.dump(data, handle)


def _mask_from_uncompressed_rle(counts, height, width):
    # COCO RLE runs alternate 0/1 starting with 0, over pixels in column-major order.
    flat = np.zeros(height * width, np.uint8)
    position, value = 0, 0
    for run in counts:
        flat[position : position + run] = value
        position += run
        value ^= 1
    return flat.reshape(width, height).T


@pytest.fixture
def coco_dir(tmp_path):
    """A hand-written Roboflow-layout split: polygon, uncompressed RLE, compressed RLE, crowd, empty image."""
    split = tmp_path / "train"
    split.mkdir()
    _write_image(split / "a.png", _rgb(24, 32))
    _write_image(split / "b.jpg", _rgb(16, 20))
    _write_image(split / "empty.png", _rgb(10, 12))
    compressed = np.zeros((16, 20), np.uint8)
    compressed[2:9, 5:15] = 1
    rle = mask_utils.encode(np.asfortranarray(compressed))
    coco = {
        "categories": [
            {"id": 0, "name": "objects", "supercategory": "none"},  # Roboflow's parent category
            {"id": 1, "name": "cat", "supercategory": "objects"},
            {"id": 3, "name": "dog", "supercategory": "objects"},
            {"id": 7, "name": "bird", "supercategory": "objects"},
        ],
        "images": [
            {"id": 10, "file_name": "a.png", "height": 24, "width": 32},
            {"id": 11, "file_name": "b.jpg", "height": 16, "width": 20},
            {"id": 12, "file_name": "empty.png", "height": 10, "width": 12},
        ],
        "annotations": [
            # Rectangle x 4..20, y 2..14 as a polygon.
            {"id": 1, "image_id": 10, "category_id": 1, "segmentation": [[4, 2, 20, 2, 20, 14, 4, 14]], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 3, "iscrowd": 0,
             "segmentation": {"size": [24, 32], "counts": [30, 6, 18, 6, 708]}},
            {"id": 3, "image_id": 11, "category_id": 7, "iscrowd": 0,
             "segmentation": {"size": [16, 20], "counts": rle["counts"].decode("ascii")}},
            {"id": 4, "image_id": 11, "category_id": 1, "iscrowd": 1,
             "segmentation": {"size": [16, 20], "counts": [0, 40, 280]}},
        ],
    }  # fmt: skip
    _write_json(split / "_annotations.coco.json", coco)
    return tmp_path, compressed


def test_coco_loader_decodes_polygon_rle_crowd_and_empty_image(coco_dir):
    root, compressed = coco_dir
    annotation_file, image_dir = find_roboflow_split(str(root), "train")
    source = CocoSegmentationSource(annotation_file, image_dir)

    # The unused Roboflow parent category is dropped; the others become contiguous ids in category-id order.
    assert source.label_map.id2label == {0: "cat", 1: "dog", 2: "bird"}
    assert source.label_map.dataset_ids == {1: 0, 3: 1, 7: 2}
    assert len(source) == 3

    first = source[0]
    assert first.image.shape == (24, 32, 3) and first.image_id == 10
    assert first.labels.tolist() == [0, 1]
    assert first.is_id_map  # the annotations do not overlap: one id map, expanded on demand
    polygon = first.binary_masks()[0]
    # Interior of the rectangle is filled, everything a pixel outside it is empty, area within one perimeter.
    assert polygon[3:14, 5:20].all()
    outside = np.ones_like(polygon)
    outside[1:16, 3:22] = False
    assert not polygon[outside].any()
    assert abs(int(polygon.sum()) - 16 * 12) <= 2 * (16 + 12)
    # Uncompressed RLE: decoded exactly as worked out by hand from the runs.
    expected = _mask_from_uncompressed_rle([30, 6, 18, 6, 708], 24, 32)
    np.testing.assert_array_equal(first.binary_masks()[1], expected)
    assert expected[6:12, 1].all() and expected[6:12, 2].all() and expected.sum() == 12

    second = source[1]
    np.testing.assert_array_equal(second.binary_masks()[0], compressed)  # compressed RLE with string counts
    assert second.labels.tolist() == [2, 0]
    assert second.iscrowd.tolist() == [False, True]
    assert second.binary_masks()[1][:, :2].all() and second.binary_masks()[1].sum() == 40

    empty = source[2]
    assert empty.binary_masks().shape == (0, 10, 12) and empty.labels.shape == (0,)


def test_crowd_regions_are_not_trained_but_reach_the_metrics(coco_dir):
    root, _ = coco_dir
    source = CocoSegmentationSource(*find_roboflow_split(str(root), "train"))
    sample = source[1]
    _, classes = training_targets(sample, "instance")
    assert classes.tolist() == [2]  # the crowd "cat" region is not a training instance
    target = evaluation_ground_truth(sample, "instance")
    assert target["labels"].tolist() == [2, 0] and target["iscrowd"].tolist() == [False, True]
    assert target["size"] == (16, 20) and target["masks"].shape == (2, 16, 20)
    # Panoptic: the crowd segment is kept (flagged) for PQ's crowd rule, but not trained on.
    _, infos = panoptic_segments(sample)
    assert sorted((i["label_id"], i["iscrowd"]) for i in infos) == [(0, True), (2, False)]
    _, panoptic_classes = training_targets(sample, "panoptic")
    assert panoptic_classes.tolist() == [2]


def test_empty_image_trains_with_finite_loss(coco_dir):
    from tiny_configs import tiny_config

    from mask2former_dinov3 import Mask2FormerDINOv3ForUniversalSegmentation

    root, _ = coco_dir
    source = CocoSegmentationSource(*find_roboflow_split(str(root), "train"))
    processor = _processor(64, 64)
    dataset = SegmentationDataset(source, "instance", processor, build_augmentation(processor, seed=0))
    item = dataset[2]
    assert item["mask_labels"].shape == (0, 64, 64) and item["class_labels"].shape == (0,)
    batch = SegmentationCollator()([item, dataset[2]])  # a batch without a single instance
    torch.manual_seed(0)
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit", num_labels=3))
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss > 0  # the "no object" class is still trained
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_missing_image_file_names_json_and_path(coco_dir):
    root, _ = coco_dir
    os.remove(root / "train" / "b.jpg")
    annotation_file = str(root / "train" / "_annotations.coco.json")
    with pytest.raises(DataError) as error:
        CocoSegmentationSource(annotation_file)
    message = str(error.value)
    assert annotation_file in message and str(root / "train" / "b.jpg") in message and "missing" in message


@pytest.mark.parametrize("content", ['{"images": [{"id": 1, "file_na', "", "\x00\x01 not json"])
def test_corrupt_or_truncated_json_is_rejected(tmp_path, content):
    path = tmp_path / "_annotations.coco.json"
    path.write_text(content)
    with pytest.raises(DataError) as error:
        CocoSegmentationSource(str(path))
    assert str(path) in str(error.value) and "corrupt or truncated" in str(error.value)


def test_json_without_coco_lists_is_rejected(tmp_path):
    path = tmp_path / "a.json"
    _write_json(path, {"images": []})
    with pytest.raises(DataError, match="annotations"):
        CocoSegmentationSource(str(path))


def test_unknown_category_names_file_annotation_and_id(coco_dir):
    root, _ = coco_dir
    path = root / "train" / "_annotations.coco.json"
    train = CocoSegmentationSource(str(path))
    # A validation JSON whose annotation uses a category the training label map does not have.
    coco = json.loads(path.read_text())
    coco["annotations"][2]["category_id"] = 42
    valid = root / "valid.json"
    _write_json(valid, coco)
    with pytest.raises(DataError) as error:
        CocoSegmentationSource(str(valid), str(root / "train"), label_map=train.label_map)
    message = str(error.value)
    assert str(valid) in message and "annotation 3" in message and "category id 42" in message


def test_split_with_conflicting_category_names_is_rejected(coco_dir):
    root, _ = coco_dir
    path = root / "train" / "_annotations.coco.json"
    train = CocoSegmentationSource(str(path))
    coco = json.loads(path.read_text())
    coco["categories"][1]["name"] = "lion"
    other = root / "other.json"
    _write_json(other, coco)
    with pytest.raises(DataError, match="'lion'"):
        CocoSegmentationSource(str(other), str(root / "train"), label_map=train.label_map)


def test_polygon_with_fewer_than_three_points_is_skipped_with_a_warning(coco_dir, caplog):
    root, _ = coco_dir
    path = root / "train" / "_annotations.coco.json"
    coco = json.loads(path.read_text())
    coco["annotations"].append(
        {"id": 99, "image_id": 12, "category_id": 3, "segmentation": [[1, 1, 5, 5]], "iscrowd": 0}
    )
    # A two-part annotation keeps its valid part.
    coco["annotations"].append(
        {"id": 100, "image_id": 12, "category_id": 3, "segmentation": [[1, 1], [0, 0, 8, 0, 8, 6, 0, 6]], "iscrowd": 0}
    )
    _write_json(path, coco)
    with caplog.at_level(logging.WARNING, logger="mask2former_dinov3.data"):
        source = CocoSegmentationSource(str(path))
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert f"{path}: annotation 99" in messages and "at least 3" in messages
    assert f"{path}: annotation 100" in messages
    sample = source[2]
    assert sample.labels.tolist() == [1]  # only annotation 100 survives, from its valid polygon
    assert sample.binary_masks()[0][1:5, 1:7].all()


def test_rle_of_the_wrong_size_is_rejected(coco_dir):
    root, _ = coco_dir
    path = root / "train" / "_annotations.coco.json"
    coco = json.loads(path.read_text())
    coco["annotations"][1]["segmentation"]["size"] = [10, 10]
    _write_json(path, coco)
    with pytest.raises(DataError, match="annotation 2: RLE size"):
        CocoSegmentationSource(str(path))


def test_image_whose_size_differs_from_its_json_entry_is_rejected(coco_dir):
    root, _ = coco_dir
    _write_image(root / "train" / "a.png", _rgb(32, 24))  # rotated copy
    source = CocoSegmentationSource(str(root / "train" / "_annotations.coco.json"))
    with pytest.raises(DataError, match="a.png is 24x32 pixels but the JSON says 32x24"):
        source[0]


def test_8_bit_images_become_rgb_and_deeper_ones_stay_as_read(tmp_path):
    gray = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    _write_image(tmp_path / "gray.png", Image.fromarray(gray, mode="L"))
    rgb = load_image(str(tmp_path / "gray.png"))
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], gray)
    np.testing.assert_array_equal(rgb[..., 2], gray)

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 0, 0, 255)  # opaque red stays red
    rgba[0, 1] = (200, 0, 0, 0)  # fully transparent: the white background
    rgba[1, 0] = (0, 0, 100, 128)  # half transparent blue over white
    _write_image(tmp_path / "rgba.png", Image.fromarray(rgba, mode="RGBA"))
    out = load_image(str(tmp_path / "rgba.png"))
    assert out[0, 0].tolist() == [200, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert abs(int(out[1, 0, 0]) - 127) <= 2 and abs(int(out[1, 0, 2]) - 177) <= 2

    sixteen = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode.startswith("I")  # really a 16-bit image
    out = load_image(str(tmp_path / "deep.png"))
    # Kept as read, not clipped or scaled: the image processor normalises it (tests/test_intensity.py).
    assert out.dtype == np.uint16 and out.tolist() == sixteen.tolist()

    palette = Image.fromarray(gray, mode="L").convert("P")
    assert to_rgb_array(palette).shape == (4, 6, 3)
    floating = to_rgb_array(Image.fromarray(np.array([[0.5, 2.0]], np.float32)), "f.tif")
    assert floating.dtype == np.float32 and floating.tolist() == [[0.5, 2.0]]


def test_unreadable_image_is_rejected_with_its_path(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="broken.png"):
        load_image(str(path), "x.json")


def test_image_smaller_than_the_crop_is_resized_up(tmp_path):
    image = _rgb(12, 20, (0, 0, 0))
    image[:, :10] = (255, 0, 0)
    mask = np.zeros((1, 12, 20), np.uint8)
    mask[0, :, :10] = 1
    sample = Sample(image, mask, [0], [False], [True], image_id=0)
    processor = _processor(64, 96)
    for train in (False, True):
        out = resize_sample(sample, processor)
        if train:
            augmentation = build_augmentation(processor, min_scale=1.0, max_scale=1.0, color_jitter=0.0, hflip=False)
            out = apply_transform(augmentation, out)
        assert out.image.shape == (64, 96, 3) and out.masks.shape == (1, 64, 96)
        assert out.masks[0][:, :46].all() and not out.masks[0][:, 50:].any()
        assert set(np.unique(out.masks).tolist()) == {0, 1}  # nearest neighbour: still binary
        # The red half of the image is where the mask is.
        assert (out.image[:, :46, 0] > 200).all() and (out.image[:, 50:, 0] < 50).all()


def test_augmentation_keeps_masks_aligned_with_pixels():
    rng = np.random.default_rng(0)
    image = np.zeros((80, 80, 3), np.uint8)
    masks = np.zeros((3, 80, 80), np.uint8)
    for k, (y, x, s) in enumerate([(5, 5, 20), (40, 30, 30), (10, 50, 12)]):
        masks[k, y : y + s, x : x + s] = 1
        image[masks[k].astype(bool)] = 255
    sample = Sample(image, masks, [0, 1, 2], [False] * 3, [True] * 3, image_id=0)
    processor = _processor(64, 64)
    transform = build_augmentation(processor, min_scale=0.5, max_scale=2.0, color_jitter=0.0, seed=int(rng.integers(1000)))
    for _ in range(10):
        out = apply_transform(transform, resize_sample(sample, processor))
        union = out.masks.any(0)
        bright = out.image[..., 0] > 127
        # Pixels and masks move together: they differ only on interpolated borders (a flip or shift applied to
        # one and not the other would drop the IoU far below this).
        if union.sum() > 50:
            assert (union & bright).sum() / (union | bright).sum() > 0.75
            centre_offset = np.abs(np.argwhere(union).mean(0) - np.argwhere(bright).mean(0))
            assert centre_offset.max() < 1.0


def test_training_targets_per_task():
    image = _rgb(8, 8)
    masks = np.zeros((4, 8, 8), np.uint8)
    masks[0, :, :] = 1  # stuff "sky" everywhere
    masks[1, 0:4, 0:4] = 1  # thing class 1
    masks[2, 2:6, 2:6] = 1  # thing class 1 overlapping the first: smaller area? same; painted after
    masks[3, 6:8, 6:8] = 1  # thing class 2, small
    masks[2, 2:3, 2:6] = 0
    sample = Sample(image, masks, [0, 1, 1, 2], [False] * 4, [False, True, True, True], image_id=0)

    masks_i, classes_i = training_targets(sample, "instance")
    assert classes_i.tolist() == [1, 1, 2]  # the stuff region is not an instance; overlap kept
    assert masks_i.shape == (3, 8, 8) and masks_i[0].sum() == 16 and masks_i[1].sum() == 12

    masks_s, classes_s = training_targets(sample, "semantic")
    assert classes_s.tolist() == [0, 1, 2]  # one mask per class, non-overlapping, covering the image
    assert masks_s.sum(0).max() == 1 and masks_s.sum() == 64
    semantic = semantic_map(sample)
    assert semantic[7, 7] == 2 and semantic[0, 0] == 1 and semantic[0, 7] == 0

    masks_p, classes_p = training_targets(sample, "panoptic")
    assert sorted(classes_p.tolist()) == [0, 1, 1, 2]
    assert masks_p.sum(0).max() == 1
    # Larger segments are painted first: the small class-2 square stays whole on top of the sky.
    assert masks_p[list(classes_p).index(2)].sum() == 4


def test_semantic_map_marks_unlabelled_pixels_ignored():
    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, :2] = 1
    sample = Sample(_rgb(4, 4), masks, [3], [False], [True], image_id=0)
    semantic = semantic_map(sample)
    assert (semantic[:2] == 3).all() and (semantic[2:] == IGNORE_INDEX).all()


def test_collator_pads_to_multiple_of_32_and_keeps_lists():
    items = [
        {"pixel_values": torch.ones(3, 40, 50), "mask_labels": torch.ones(2, 40, 50), "class_labels": torch.tensor([0, 1])},
        {"pixel_values": torch.ones(3, 64, 30), "mask_labels": torch.zeros(0, 64, 30), "class_labels": torch.zeros(0, dtype=torch.long)},
    ]
    batch = SegmentationCollator()(items)
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert batch["pixel_mask"][0, :40, :50].all() and batch["pixel_mask"][0].sum() == 40 * 50
    assert batch["pixel_mask"][1].sum() == 64 * 30
    assert batch["pixel_values"][0, :, 40:].abs().sum() == 0
    assert [m.shape for m in batch["mask_labels"]] == [(2, 64, 64), (0, 64, 64)]
    assert batch["mask_labels"][0][:, :40, :50].all() and batch["mask_labels"][0].sum() == 2 * 40 * 50
    assert "targets" not in batch


def test_evaluation_pixels_equal_the_image_processor_for_any_image_size():
    """The pixels evaluation feeds the model are the image processor's, for images larger and smaller than the
    (non-square) training size: one preprocessing path (the processor's antialiased resize, rescale, normalise)."""
    rng = np.random.default_rng(0)
    sizes = [(37, 53), (150, 210), (100, 40), (64, 96), (300, 97)]
    samples = []
    for index, (height, width) in enumerate(sizes):
        # Noise: any other resize filter (e.g. without antialiasing) differs by far more than the tolerance.
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        masks = (rng.random((2, height, width)) > 0.5).astype(np.uint8)
        samples.append(Sample(image, masks, [0, 1], [False, False], [True, True], image_id=100 + index))
    processor = _processor(64, 96, image_mean=[0.2, 0.3, 0.4], image_std=[0.1, 0.2, 0.3])
    dataset = SegmentationDataset(samples, "instance", processor, for_evaluation=True)
    batch = SegmentationCollator()([dataset[i] for i in range(len(samples))])
    expected = processor(images=[Image.fromarray(s.image) for s in samples], return_tensors="pt")
    assert batch["pixel_values"].shape == (len(sizes), 3, 64, 96)
    torch.testing.assert_close(batch["pixel_values"], expected["pixel_values"], atol=1e-6, rtol=0)
    torch.testing.assert_close(batch["pixel_mask"], expected["pixel_mask"].long())
    assert batch["dataset_index"].tolist() == list(range(len(sizes)))
    # Masks are resized with nearest neighbour, as the processor resizes segmentation maps.
    for i, sample in enumerate(samples):
        binary = processor(images=Image.fromarray(sample.image), segmentation_maps=sample.masks[0], return_tensors="pt")
        # The processor turns the map into one mask per value (0 and 1): the one of value 1 is our mask.
        np.testing.assert_array_equal(batch["mask_labels"][i][0].numpy(), binary["mask_labels"][0][1].numpy())
    # The ground truth stays at the original size.
    size, truth = dataset.ground_truth(1)
    assert size == (150, 210) and truth["masks"].shape == (2, 150, 210) and truth["size"] == (150, 210)


def test_dataset_needs_a_fixed_size_processor_and_valid_scales():
    samples = [Sample(_rgb(8, 8), np.zeros((0, 8, 8), np.uint8), [], [], [], image_id=0)]
    with pytest.raises(ValueError, match="not to a fixed size"):
        SegmentationDataset(samples, "instance", Mask2FormerDINOv3ImageProcessor())  # shortest_edge / longest_edge
    with pytest.raises(ValueError, match="multiples of 32"):
        SegmentationDataset(samples, "instance", _processor(64, 70))
    with pytest.raises(ValueError, match="min_scale <= max_scale"):
        build_augmentation(_processor(64, 64), min_scale=2.0, max_scale=1.0)
    with pytest.raises(ValueError, match="task must be one of"):
        SegmentationDataset(samples, "detection", _processor(64, 64))


def test_training_items_share_the_processor_normalisation():
    # With augmentation that changes nothing, a training item equals the processor's output too.
    source = SyntheticSegmentationSource("valid", 2, seed=0, image_size=80)
    processor = _processor(64, 64)
    identity = build_augmentation(processor, min_scale=1.0, max_scale=1.0, color_jitter=0.0, hflip=False)
    item = SegmentationDataset(source, "instance", processor, identity)[0]
    expected = processor(images=Image.fromarray(source[0].image), return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(item["pixel_values"], expected, atol=1e-6, rtol=0)
    assert "dataset_index" not in item  # training batches go to the model's forward as they are


def test_synthetic_source_label_maps_and_stuff():
    things = SyntheticSegmentationSource("train", 3, image_size=64)
    assert things.label_map.id2label == {0: "circle", 1: "square", 2: "triangle", 3: "ring"}
    full = SyntheticSegmentationSource("train", 3, image_size=64, with_stuff=True)
    assert full.label_map.stuff_ids == [4, 5]
    sample = full[0]
    assert set(sample.labels[~sample.is_instance].tolist()) <= {4, 5}
    # Thing instances and stuff regions together label every pixel.
    assert (semantic_map(sample) != IGNORE_INDEX).all()
    np.testing.assert_array_equal(things[0].binary_masks(), full[0].binary_masks()[: len(things[0].labels)])


def test_hf_example_format_segments_and_reduced_labels():
    semantic = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 3, 3]], np.uint8)
    instance = np.array([[0, 0, 5, 5], [0, 0, 5, 5], [0, 0, 0, 0], [0, 0, 9, 9]], np.uint8)
    annotation = np.stack([semantic, instance, np.zeros_like(semantic)], axis=-1)
    label_map = label_map_from_semantic_class_to_id({"background": 0, "car": 1, "road": 2, "person": 3}, do_reduce_labels=True)
    assert label_map.id2label == {0: "car", 1: "road", 2: "person"}
    id_map, labels, is_instance = segments_from_annotation_png(annotation, label_map, True, "row 0")
    masks = Sample(annotation, id_map, labels, [False] * len(labels), is_instance, image_id=0).binary_masks()
    by_label = {label: (mask, inst) for mask, label, inst in zip(masks, labels, is_instance)}
    assert sorted(labels) == [0, 1, 2]  # background (semantic 0) is ignored
    assert by_label[0][1] and by_label[0][0].sum() == 4  # instance 5 -> car
    assert by_label[2][1] and by_label[2][0].sum() == 2  # instance 9 -> person
    assert not by_label[1][1] and by_label[1][0].sum() == 6  # road has no instance id: a stuff region
    with pytest.raises(DataError, match="row 0: category id 7"):
        segments_from_annotation_png(np.full((2, 2, 3), 7, np.uint8), label_map, True, "row 0")


def test_label_map_validation():
    with pytest.raises(ValueError, match="0..N-1"):
        LabelMap({1: "a"})
