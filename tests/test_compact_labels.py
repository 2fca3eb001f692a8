"""Labels stay compact (issue 24, item 1): segments that cannot overlap travel as one id map through resize, crop
and augmentation and become bool masks only at the end, with the same pixels as the per-mask path; evaluation
ground truth is bool."""

import numpy as np
import pytest
import torch

from mask2former_dinov3.data import (
    Sample,
    SegmentationDataset,
    build_augmentation,
    crop_sample,
    evaluation_ground_truth,
    expand_id_map,
    id_map_of,
    resize_sample,
    training_targets,
)
from mask2former_dinov3.image_processing_mask2former_dinov3 import Mask2FormerDINOv3ImageProcessor
from mask2former_dinov3.tiling import Window


def _processor(height, width):
    return Mask2FormerDINOv3ImageProcessor(size={"height": height, "width": width})


def _blobs(height, width, count, seed=0):
    """`count` non-overlapping random rectangles (some touching, some cut by the border), thing and stuff mixed."""
    rng = np.random.default_rng(seed)
    id_map = np.zeros((height, width), np.int32)
    for value in range(1, count + 1):
        top, left = rng.integers(-3, height - 2), rng.integers(-3, width - 2)
        id_map[max(top, 0) : top + rng.integers(2, 9), max(left, 0) : left + rng.integers(2, 9)] = value
    present = np.unique(id_map[id_map > 0])
    id_map = np.searchsorted(np.concatenate([[0], present]), id_map).astype(np.int32)  # values 1..N, all present
    n = len(present)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    labels, things = rng.integers(0, 3, n), rng.random(n) < 0.8
    return image, id_map, labels, things


def _pair(height=70, width=90, count=400, seed=0):
    """The same segments as an id map and as an `(N, H, W)` stack (today's per-mask path)."""
    image, id_map, labels, things = _blobs(height, width, count, seed)
    n = len(labels)
    crowd = np.zeros(n, bool)
    stack = expand_id_map(id_map, np.arange(1, n + 1)).astype(np.uint8)
    dense = Sample(image, id_map, labels, crowd, things, image_id=0)
    masks = Sample(image, stack, labels, crowd, things, image_id=0)
    assert dense.is_id_map and not masks.is_id_map and (n > 255 or count < 255)  # more segments than a byte holds
    return dense, masks


def test_id_map_and_masks_agree_after_resize_and_crop():
    dense, masks = _pair()
    for processor in (_processor(64, 96), _processor(160, 224)):  # down and up
        a, b = resize_sample(dense, processor), resize_sample(masks, processor)
        assert a.is_id_map and a.masks.shape == (processor.size.height, processor.size.width)
        np.testing.assert_array_equal(a.binary_masks(), b.binary_masks())
        np.testing.assert_array_equal(a.image, b.image)
    a, b = crop_sample(dense, Window(10, 20, 50, 75)), crop_sample(masks, Window(10, 20, 50, 75))
    assert 0 < len(a.labels) < len(dense.labels)  # segments outside the window are dropped
    np.testing.assert_array_equal(a.binary_masks(), b.binary_masks())
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.is_instance, b.is_instance)


def test_resize_keeps_ids_beyond_two_bytes():
    rng = np.random.default_rng(1)
    values = rng.choice(1 << 20, 40, replace=False) + 1  # three bytes
    id_map = values[rng.integers(0, 40, (33, 47))].astype(np.int32)
    processor = _processor(64, 96)
    labels = np.zeros((1 << 20) + 1)  # the sample's segment count bounds its ids
    out = resize_sample(Sample(np.zeros((33, 47, 3), np.uint8), id_map, labels, [False] * len(labels),
                               [True] * len(labels), image_id=0), processor)  # fmt: skip
    for value in values[:5]:
        single = Sample(np.zeros((33, 47, 3), np.uint8), (id_map == value)[None], [0], [False], [True], image_id=0)
        np.testing.assert_array_equal(out.masks == value, resize_sample(single, processor).masks[0].astype(bool))


@pytest.mark.parametrize("task", ["instance", "semantic", "panoptic"])
def test_dataset_items_equal_for_id_map_and_masks_under_the_same_draws(task):
    dense, masks = _pair()
    processor = _processor(64, 96)
    augmentation = build_augmentation(processor, min_scale=0.5, max_scale=2.0, color_jitter=0.2, seed=0)
    datasets = [SegmentationDataset([s], task, processor, augmentation, seed=3) for s in (dense, masks)]
    draws = set()
    for epoch in range(6):
        for dataset in datasets:
            dataset.set_epoch(epoch)
        a, b = datasets[0][0], datasets[1][0]
        assert a["mask_labels"].dtype == torch.bool  # never float32 (N, H, W)
        torch.testing.assert_close(a["pixel_values"], b["pixel_values"], rtol=0, atol=0)
        assert torch.equal(a["mask_labels"], b["mask_labels"]) and torch.equal(a["class_labels"], b["class_labels"])
        draws.add(int(a["mask_labels"].sum()))
    assert len(draws) > 1  # the draws differ between epochs


def test_overlapping_masks_keep_the_per_mask_path_with_the_same_pixels():
    # Two masks overlap: they stay an (N, H, W) stack; each comes out as it would alone (as an id map).
    image, id_map, labels, things = _blobs(70, 90, 30, seed=2)
    stack = expand_id_map(id_map, np.arange(1, len(labels) + 1)).astype(np.uint8)
    stack[0, :20, :20] = 1  # now overlaps others
    sample = Sample(image, stack, labels, [False] * len(labels), [True] * len(labels), image_id=0)
    assert not sample.is_id_map
    processor = _processor(64, 64)
    augmentation = build_augmentation(processor, min_scale=0.5, max_scale=2.0, color_jitter=0.0, seed=0)
    item = SegmentationDataset([sample], "instance", processor, augmentation, seed=5)[0]
    kept = 0
    for k in range(len(labels)):
        alone = Sample(image, stack[k], [labels[k]], [False], [True], image_id=0)  # an id map of one segment
        single = SegmentationDataset([alone], "instance", processor, augmentation, seed=5)[0]["mask_labels"]
        if len(single):
            assert torch.equal(item["mask_labels"][kept], single[0])
            kept += 1
    assert kept == len(item["mask_labels"]) > 0


def test_targets_and_ground_truth_are_bool():
    dense, masks = _pair(count=50)
    for sample in (dense, masks):
        for task in ("instance", "semantic", "panoptic"):
            assert training_targets(sample, task)[0].dtype == bool
        assert evaluation_ground_truth(sample, "instance")["masks"].dtype == bool
    np.testing.assert_array_equal(evaluation_ground_truth(dense, "instance")["masks"],
                                  evaluation_ground_truth(masks, "instance")["masks"])  # fmt: skip


def test_id_map_of_and_expand_id_map_round_trip():
    _, id_map, labels, _ = _blobs(20, 30, 25)
    masks = expand_id_map(id_map, np.arange(1, len(labels) + 1))
    np.testing.assert_array_equal(id_map_of(masks, id_map.shape), id_map)
    np.testing.assert_array_equal(expand_id_map(id_map, [0]), (id_map == 0)[None])


def test_collator_keeps_bool_masks_and_copies_none_that_need_no_padding():
    from mask2former_dinov3.data import SegmentationCollator

    masks = torch.ones(3, 64, 96, dtype=torch.bool)
    items = [{"pixel_values": torch.zeros(3, 64, 96), "mask_labels": masks, "class_labels": torch.zeros(3, dtype=torch.long)},
             {"pixel_values": torch.zeros(3, 50, 96), "mask_labels": masks[:, :50], "class_labels": torch.zeros(3, dtype=torch.long)}]  # fmt: skip
    batch = SegmentationCollator()(items)
    assert batch["mask_labels"][0] is masks  # already 64 x 96: 2 GB of masks at 2,000 cells are not copied
    assert batch["mask_labels"][1].dtype == torch.bool and batch["mask_labels"][1].shape == (3, 64, 96)
    assert batch["mask_labels"][1][:, :50].all() and not batch["mask_labels"][1][:, 50:].any()
