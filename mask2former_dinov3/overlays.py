"""Drawing segments on images for people to read: the overlays of training (`predictions/`) and of
`mask2former-dinov3-predict` (`overlays/`), one implementation for both.

`segments_to_draw` takes the segments of a ground truth or prediction in the metrics' format;
`draw_segments` fills each segment in its class colour, writes one label per object (`distinct_segments`: of
heavily overlapping masks only the best-scoring), enlarges small images so that labels can be read
(`OVERLAY_MIN_SIDE`), and says so on a panel with nothing to draw. It needs only numpy and PIL (no Trainer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont


__all__ = ["OVERLAY_MIN_SIDE", "distinct_segments", "draw_segments", "label_font", "segments_to_draw", "side_by_side"]


def _palette(n: int) -> np.ndarray:
    # Evenly spread hues, fixed order: the same class gets the same colour in every image.
    colours = []
    for i in range(max(n, 1)):
        hue = (i * 0.618033988749895) % 1.0
        h6 = hue * 6
        x = 1 - abs(h6 % 2 - 1)
        rgb = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(h6) % 6]
        colours.append([int(200 * c + 40) for c in rgb])
    return np.array(colours, np.uint8)


OVERLAY_MIN_SIDE = 512


def distinct_segments(
    masks: Sequence[np.ndarray], scores: Sequence[float] | None, iou_threshold: float = 0.5
) -> list[int]:
    """Indices of the segments worth one label each, best score first.

    Early in training several queries find the same object with different class hypotheses, and with a low threshold
    upstream's instance post-processing returns one query once per class (it ranks (query, class) pairs): one object
    then carries 4-5 stacked labels. Of segments whose masks overlap with IoU >= `iou_threshold`, only the
    highest-scoring is kept. Without scores (ground truth) every non-empty segment is kept.
    """
    masks = [np.asarray(m, dtype=bool) for m in masks]
    order = [i for i, mask in enumerate(masks) if mask.any()]
    if scores is None or not order:
        return order
    # IoU of every pair at most 256 px on a side: one matrix product, fast even for 100 full-size masks.
    stride = max(1, max(masks[0].shape) // 256)
    flat = np.stack([mask[::stride, ::stride].ravel() for mask in masks]).astype(np.float32)
    intersection = flat @ flat.T
    area = np.diag(intersection)
    iou = intersection / np.maximum(area[:, None] + area[None, :] - intersection, 1.0)
    order.sort(key=lambda i: -float(scores[i]))
    kept: list[int] = []
    for i in order:
        if all(iou[i, k] < iou_threshold for k in kept):
            kept.append(i)
    return kept


def label_font(size: int):
    """PIL's default font at `size` pixels (its small bitmap font on Pillow < 10.1)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only its small bitmap font
        return ImageFont.load_default()


def draw_segments(
    image: np.ndarray, masks: Sequence[np.ndarray], labels: Sequence[int], names: dict[int, str],
    scores: Sequence[float] | None = None, alpha: float = 0.5, min_side: int = OVERLAY_MIN_SIDE,
    empty_text: str | None = None,
) -> Image.Image:
    """`image` with each segment filled in its class colour (with a darker outline) and one label (class name and
    score) on a box of that colour.

    Where masks overlap heavily only the best-scoring segment is drawn (`distinct_segments`). The overlay is enlarged
    so that its short side is at least `min_side` (image bilinear, masks nearest), which keeps labels readable on
    small images. Without any segment to draw and with `empty_text`, the image is dimmed to grey and the text says
    so, so that an empty prediction cannot be mistaken for a segmentation.
    """
    height, width = image.shape[:2]
    scale = max(1.0, min_side / max(1, min(height, width)))
    size = (round(width * scale), round(height * scale))
    base = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    canvas = np.asarray(base.resize(size, Image.BILINEAR) if scale > 1 else base, dtype=np.float32).copy()
    palette = _palette(len(names))
    keep = distinct_segments(masks, scores)
    font = label_font(max(12, round(min(size) / 32)))
    if not keep and empty_text:
        grey = canvas.mean(axis=-1, keepdims=True) * 0.35 + 40
        result = Image.fromarray(np.repeat(grey, 3, axis=-1).clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(result)
        box = draw.textbbox((0, 0), empty_text, font=font)
        xy = ((size[0] - box[2]) // 2, (size[1] - box[3]) // 2)
        box = draw.textbbox(xy, empty_text, font=font)
        draw.rectangle((box[0] - 4, box[1] - 4, box[2] + 4, box[3] + 4), fill=(255, 255, 255))
        draw.text(xy, empty_text, fill=(0, 0, 0), font=font)
        return result
    resized = []
    outline = np.zeros(canvas.shape[:2], bool)
    for k in keep:
        mask = Image.fromarray(np.asarray(masks[k]).astype(np.uint8) * 255)
        mask = np.asarray(mask.resize(size, Image.NEAREST) if scale > 1 else mask) > 0
        resized.append(mask)
        canvas[mask] = (1 - alpha) * canvas[mask] + alpha * palette[int(labels[k]) % len(palette)]
        outline |= mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
    canvas[outline] = 0.4 * canvas[outline]
    result = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(result)
    placed: list[tuple[int, int, int, int]] = []
    for k, mask in zip(keep, resized):
        ys, xs = np.nonzero(mask)
        text = names.get(int(labels[k]), str(labels[k])) + (f" {float(scores[k]):.2f}" if scores is not None else "")
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = min(int(xs.min()), size[0] - (right - left) - 2)
        y = int(ys.min())
        # Neighbouring objects' labels would overprint each other: move down below a label already there.
        for other in placed:
            if x < other[2] and other[0] < x + right and y < other[3] and other[1] < y + bottom:
                y = other[3] + 1
        y = min(y, size[1] - bottom - 2)
        box = draw.textbbox((x, y), text, font=font)
        box = (box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2)
        draw.rectangle(box, fill=tuple(int(c) for c in palette[int(labels[k]) % len(palette)]))
        draw.text((x, y), text, fill=(0, 0, 0), font=font)
        placed.append(box)
    return result


def side_by_side(left: Image.Image, right: Image.Image, titles: Sequence[str], gap: int = 4) -> Image.Image:
    """Two equally sized panels next to each other on white, each under its title (e.g. ground truth, prediction)."""
    width, height = left.size
    font = label_font(max(12, round(min(width, height) / 32)))
    header_height = font.getbbox("Ag")[3] + 6
    panel = Image.new("RGB", (2 * width + gap, height + header_height), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    for x, image, title in ((0, left, titles[0]), (width + gap, right, titles[1])):
        panel.paste(image, (x, header_height))
        draw.text((x + 2, 2), title, fill=(0, 0, 0), font=font)
    return panel


def segments_to_draw(item: Any, task: str, ignore_index: int | None = None) -> tuple[list, list, list | None]:
    """`(masks, labels, scores)` to draw of a ground truth or prediction in the format of the task's evaluator
    (`mask2former_dinov3.metrics`): crowd regions and, in semantic maps, `ignore_index` pixels left out; scores None
    where there are none."""
    if task == "instance":
        keep = [i for i in range(len(item["labels"])) if not ("iscrowd" in item and item["iscrowd"][i])]
        scores = [float(item["scores"][i]) for i in keep] if "scores" in item else None
        return [np.asarray(item["masks"][i]) for i in keep], [int(item["labels"][i]) for i in keep], scores
    if task == "semantic":
        classes = [int(c) for c in np.unique(item) if c != ignore_index]
        return [item == c for c in classes], classes, None
    segments = [s for s in item["segments_info"] if not s.get("iscrowd", 0)]
    labels = [int(s.get("category_id", s.get("label_id"))) for s in segments]
    scores = [float(s["score"]) for s in segments] if segments and all("score" in s for s in segments) else None
    return [item["segmentation"] == s["id"] for s in segments], labels, scores
