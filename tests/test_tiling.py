"""Tiled prediction: windows, cross-window instance merging (hand-made tiles), score averaging, a tiny-model run."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.image_utils import SizeDict

from mask2former_dinov3 import Mask2FormerDINOv3ForUniversalSegmentation, Mask2FormerDINOv3ImageProcessor
from mask2former_dinov3.predict import forward_images
from mask2former_dinov3.tiling import (
    TileInstance,
    Window,
    average_tile_scores,
    merge_tile_instances,
    predict_tiled,
    tile_windows,
)

from tiny_configs import tiny_config


def test_windows_cover_the_image_with_the_requested_overlap():
    windows = tile_windows(200, 330, (100, 120), overlap=40)
    covered = np.zeros((200, 330), dtype=int)
    for w in windows:
        assert (w.height, w.width) == (100, 120)
        covered[w.top : w.bottom, w.left : w.right] += 1
    assert covered.min() >= 1
    assert max(w.bottom for w in windows) == 200 and max(w.right for w in windows) == 330
    lefts = sorted({w.left for w in windows})
    assert all(a_right - b_left >= 40 for a_right, b_left in zip([x + 120 for x in lefts], lefts[1:]))
    # An image smaller than the tile is one window of the image's size.
    assert tile_windows(50, 60, (100, 100), overlap=20) == [Window(0, 0, 50, 60)]
    with pytest.raises(ValueError):
        tile_windows(100, 100, (64, 64), overlap=64)


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _rect(shape, top, left, bottom, right):
    mask = np.zeros(shape, dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def _ground_truth(shape):
    """(mask, label) objects placed on window borders and corners of a 200x200 image, 100px tiles, overlap 40.

    Windows start at 0, 60 and 100 on both axes, so inner borders are at 60, 100 (starts) and 100, 160 (ends).
    """
    return [
        (_disc(shape, 80, 100, 14), 0),  # on a vertical border of the first row
        (_disc(shape, 100, 100, 12), 1),  # on a corner where four windows meet
        (_disc(shape, 100, 123, 8), 1),  # same class, touching the corner disc: must stay apart
        (_rect(shape, 150, 20, 175, 190), 2),  # wider than the overlap: whole in no window
        (_disc(shape, 30, 158, 10), 0),  # on a window's right edge at 160
        (_rect(shape, 5, 5, 40, 40), 2),  # inside one window's private part
        (_rect(shape, 58, 130, 66, 138), 0),  # small, in the overlap of two rows
        (_disc(shape, 100, 100, 6), 0),  # another class on top of the corner disc's area
    ]


def _per_tile(objects, windows, rng, noise):
    tiles = []
    for w in windows:
        insts = []
        for mask, label in objects:
            crop = mask[w.top : w.bottom, w.left : w.right].copy()
            if not crop.any():
                continue
            if noise:
                # Each window's model is a little wrong on its own: flip a few pixels on the object's boundary.
                edge = crop ^ np.pad(crop, 1)[2:, 1:-1] | crop ^ np.pad(crop, 1)[1:-1, 2:]
                flips = edge & (rng.random(crop.shape) < 0.1)
                crop ^= flips
            insts.append(TileInstance(crop, label, float(rng.uniform(0.5, 1.0))))
        # Per-window order should not matter.
        rng.shuffle(insts)
        tiles.append((w, insts))
    return tiles


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("noise", [False, True])
def test_objects_on_borders_and_corners_come_out_once_and_whole(noise):
    shape = (200, 200)
    windows = tile_windows(*shape, (100, 100), overlap=40)
    assert len(windows) == 9
    objects = _ground_truth(shape)
    rng = np.random.default_rng(0)
    merged = merge_tile_instances(_per_tile(objects, windows, rng, noise), shape)

    assert len(merged) == len(objects)
    for mask, label in objects:
        matches = [m for m in merged if m.label == label and _iou(m.mask, mask) > 0.5]
        assert len(matches) == 1
        # With noise, the union of noisy pieces carries each piece's boundary flips: the bound is looser there.
        assert _iou(matches[0].mask, mask) >= (0.99 if not noise else 0.9)
    scores = [m.score for m in merged]
    assert scores == sorted(scores, reverse=True)


def test_exact_tiles_give_exact_masks():
    shape = (200, 200)
    windows = tile_windows(*shape, (100, 100), overlap=40)
    objects = _ground_truth(shape)
    merged = merge_tile_instances(_per_tile(objects, windows, np.random.default_rng(1), False), shape)
    for mask, label in objects:
        assert any(m.label == label and np.array_equal(m.mask, mask) for m in merged)


def test_cut_piece_that_disagrees_in_the_overlap_is_absorbed_by_containment():
    # The left window sees only the part of the object away from its right edge (it is unsure near the cut):
    # low IoU in the shared strip, but that piece touches an inner border and lies inside the right window's mask.
    shape = (100, 160)
    windows = tile_windows(*shape, (100, 100), overlap=40)  # columns 0-100 and 60-160
    obj = _rect(shape, 30, 50, 70, 120)
    left = obj[:, 0:100].copy()
    left[:, 85:] = False
    left[:, 95:100] = obj[:, 95:100]  # still touches the cut
    tiles = [(windows[0], [TileInstance(left, 0, 0.9)]), (windows[1], [TileInstance(obj[:, 60:160], 0, 0.8)])]
    merged = merge_tile_instances(tiles, shape)
    assert len(merged) == 1 and merged[0].score == 0.9
    assert _iou(merged[0].mask, obj) >= 0.99


def test_different_objects_in_different_windows_are_not_merged():
    shape = (100, 160)
    windows = tile_windows(*shape, (100, 100), overlap=40)
    a, b = _rect(shape, 10, 62, 30, 80), _rect(shape, 50, 62, 70, 80)  # both in the shared strip
    tiles = [
        (windows[0], [TileInstance(a[:, 0:100], 0, 0.9)]),
        (windows[1], [TileInstance(b[:, 60:160], 0, 0.9)]),
    ]
    assert len(merge_tile_instances(tiles, shape)) == 2


def test_scores_are_averaged_in_overlaps():
    windows = tile_windows(10, 16, (10, 10), overlap=4)  # columns 0-10 and 6-16
    tiles = [(w, torch.full((2, 10, 10), float(i))) for i, w in enumerate(windows)]
    averaged = average_tile_scores(tiles, (10, 16))
    assert averaged.shape == (2, 10, 16)
    assert torch.all(averaged[:, :, :6] == 0) and torch.all(averaged[:, :, 10:] == 1)
    assert torch.allclose(averaged[:, :, 6:10], torch.tensor(0.5))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit")).eval()
    return model, Mask2FormerDINOv3ImageProcessor()


def test_tiled_run_of_a_tiny_model(tiny_model):
    model, processor = tiny_model
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8))
    instances = predict_tiled(model, processor, image, (64, 64), overlap=16, threshold=0.0, batch_size=4)
    assert instances and all(i.mask.shape == (150, 200) and i.mask.dtype == bool for i in instances)
    assert all(0 <= i.label < model.config.num_labels for i in instances)
    semantic = predict_tiled(model, processor, image, (64, 64), overlap=16, task="semantic")
    assert semantic.shape == (150, 200) and int(semantic.max()) < model.config.num_labels


def test_one_window_equals_untiled_native_resolution_prediction(tiny_model):
    model, processor = tiny_model
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (70, 90, 3), dtype=np.uint8))
    tiled = predict_tiled(model, processor, image, (96, 96), overlap=16, task="semantic")
    outputs = forward_images(
        model, processor, [image], "cpu", torch.float32, do_resize=False, pad_size=SizeDict(height=96, width=96)
    )[0]
    direct = processor.post_process_semantic_segmentation(outputs, target_sizes=[(70, 90)])[0]
    assert torch.equal(tiled, direct)
