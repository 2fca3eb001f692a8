"""Overlays a first run can be read from (issue 13): an empty prediction says so, one label per object, small
images enlarged. Hand-made predictions; no trained model needed."""

from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from mask2former_dinov3 import Mask2FormerDINOv3ImageProcessor
from mask2former_dinov3.data import LabelMap, Sample, SegmentationDataset
from mask2former_dinov3.overlays import OVERLAY_MIN_SIDE, _palette, distinct_segments, draw_segments
from mask2former_dinov3.training import save_prediction_overlays


NAMES = {0: "cat", 1: "dog", 2: "sky"}
GREY = 128


def _box(y0, y1, x0, x1, size=128):
    mask = np.zeros((size, size), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _exact_colour(image, label):
    """Pixels exactly of `label`'s palette colour: only label boxes have it (mask fills are blended)."""
    return (np.asarray(image) == _palette(len(NAMES))[label]).all(axis=-1)


def _bbox(where):
    ys, xs = np.nonzero(where)
    return ys.min(), ys.max(), xs.min(), xs.max()


def test_one_object_found_by_several_queries_gets_one_label():
    image = np.full((128, 128, 3), GREY, np.uint8)
    a, b = _box(30, 80, 40, 100), _box(90, 120, 10, 40)
    a_shifted = _box(31, 80, 40, 99)  # another query's nearly identical mask
    # As a first run gives: object a found by three queries with different classes, object b by one.
    masks, labels, scores = [a, a_shifted, a, b], [0, 1, 2, 1], [0.9, 0.6, 0.7, 0.8]
    assert distinct_segments(masks, scores) == [0, 3]
    out = np.asarray(draw_segments(image, masks, labels, NAMES, scores))
    # Only the best class is drawn on a: its fill is grey blended with cat's colour, not a mix of three classes.
    expected = 0.5 * GREY + 0.5 * _palette(3)[0].astype(np.float32)
    assert np.abs(out[60 * 4, 70 * 4].astype(np.float32) - expected).max() <= 1
    assert not _exact_colour(out, 2).any()  # no "sky" label anywhere
    cat_top, _, cat_left, _ = _bbox(_exact_colour(out, 0))
    assert (cat_top, cat_left) >= (30 * 4 - 3, 40 * 4 - 3) and cat_top < 40 * 4
    dog_top, _, dog_left, _ = _bbox(_exact_colour(out, 1))
    assert dog_top >= 90 * 4 - 3 and dog_left >= 10 * 4 - 3  # the only dog label is b's, not on a


def test_labels_of_neighbouring_objects_do_not_overprint():
    image = np.full((128, 128, 3), GREY, np.uint8)
    big, small = _box(30, 80, 40, 100), _box(30, 50, 40, 60)  # same top-left corner, IoU 0.13: two objects
    out = draw_segments(image, [big, small], [0, 1], NAMES, [0.9, 0.8])
    cat, dog = _bbox(_exact_colour(out, 0)), _bbox(_exact_colour(out, 1))
    assert cat[1] < dog[0] or dog[1] < cat[0] or cat[3] < dog[2] or dog[3] < cat[2]


def test_small_image_is_enlarged_with_readable_labels():
    image = np.full((128, 96, 3), GREY, np.uint8)
    mask = np.zeros((128, 96), bool)
    mask[64:100, 20:60] = True
    out = draw_segments(image, [mask], [0], NAMES, [0.9])
    scale = OVERLAY_MIN_SIDE / 96
    assert out.size == (OVERLAY_MIN_SIDE, round(128 * scale)) and min(out.size) >= 512
    top, bottom, left, right = _bbox(_exact_colour(out, 0))
    assert bottom - top + 1 >= 14, "label box too small to read"
    assert right - left + 1 >= 50
    # Masks are enlarged with nearest neighbour: the fill's edge lands where the mask's edge scales to.
    pixels = np.asarray(out).astype(int)
    assert (pixels[round(99.5 * scale), round(40 * scale)] != GREY).any()
    assert (pixels[round(100.5 * scale) + 1, round(40 * scale)] == GREY).all()
    # Large images are left at their size.
    assert draw_segments(np.zeros((600, 700, 3), np.uint8), [], [], NAMES).size == (700, 600)


def test_empty_prediction_says_so_and_does_not_look_like_a_segmentation():
    rng = np.random.default_rng(0)
    colourful = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    out = np.asarray(draw_segments(colourful, [], [], NAMES, [], empty_text="no prediction above threshold 0.5"))
    assert out.shape[:2] == (512, 512)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()  # grey, dimmed
    text_box = (out == 255).all(axis=-1)
    top, bottom, left, right = _bbox(text_box)
    assert left < 256 < right and top < 256 + 20 and bottom > 256 - 20  # centred
    assert right - left > 200  # a whole sentence, not a stray pixel
    assert (out[top:bottom, left:right] < 80).any()  # dark text on the box
    # Without empty_text (ground truth with no objects) the image is shown as it is, enlarged.
    plain = np.asarray(draw_segments(colourful, [], [], NAMES))
    assert (plain[..., 0] != plain[..., 1]).any()


class _NothingModel(torch.nn.Module):
    """Predicts "no object" for every query: what an untrained or badly trained model often gives."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, pixel_values, pixel_mask=None):
        batch, _, height, width = pixel_values.shape
        classes = torch.zeros(batch, 5, len(NAMES) + 1)
        classes[..., -1] = 10.0
        masks = torch.ones(batch, 5, height // 4, width // 4)
        return SimpleNamespace(class_queries_logits=classes, masks_queries_logits=masks)


def test_saved_overlay_panels_say_when_the_prediction_is_empty(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    sample = Sample(image=image, masks=_box(10, 40, 10, 40, size=64)[None].astype(np.uint8), labels=[0],
                    iscrowd=[False], is_instance=[True], image_id=1, file_name="a.png")  # fmt: skip
    processor = Mask2FormerDINOv3ImageProcessor(size={"height": 64, "width": 64})
    dataset = SegmentationDataset([sample], "instance", processor, for_evaluation=True)
    paths = save_prediction_overlays(_NothingModel(), dataset, LabelMap(NAMES), str(tmp_path), num_images=1)
    panel = np.asarray(Image.open(paths[0]).convert("RGB"))
    assert panel.shape[1] >= 2 * 512
    width = (panel.shape[1] - 4) // 2
    truth, prediction = panel[-512:, :width], panel[-512:, width + 4 :]
    assert (truth[..., 0] != truth[..., 1]).any()  # ground truth: the colour image with its object
    assert (prediction[..., 0] == prediction[..., 2]).all()  # prediction: dimmed grey with the message
    assert (prediction == 255).all(axis=-1).sum() > 500
