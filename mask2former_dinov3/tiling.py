"""Tiled ("slide") prediction for images larger than the model's training size.

The image is cut into overlapping windows of `tile_size` pixels (stride `tile_size - overlap`, the last window of each
row / column flush with the image edge, as mmsegmentation's "slide" mode and DINOv3's 896 crop / 596 stride
evaluation), the model runs on each window at native resolution, and the per-window results are put back into the
original image's coordinates:

* Semantic: the per-class scores of the windows (Mask2Former's `softmax(class) x sigmoid(mask)` maps, from the image
  processor's `post_process_semantic_segmentation(return_segmentation_scores=True)`) are averaged where windows
  overlap, then arg-maxed.
* Instance: each window's instances (from `post_process_instance_segmentation`) are merged across windows by
  `merge_tile_instances`. The rule: two instances of different windows are the same object when they have the same
  label and, restricted to the region both windows see (their intersection, where both masks describe the same
  pixels whether or not the object is cut elsewhere),

  - their IoU is at least `iou_threshold`, or
  - one of them touches an inner border of its window (a window edge that is not an image edge: it may be a cut
    piece) and at least `containment_threshold` of its pixels in the shared region lie inside the other.

  "Same object" is made transitive (union-find), so an object spread over several windows, or sitting on a window
  corner where four windows meet, becomes one group; a group's mask is the union of its members' masks and its
  score the highest member score. Instances of one window are never compared with each other (the model's own
  duplicate handling applies there). An object no wider than the overlap is whole in at least one window; a larger
  one is assembled from pieces that agree in the overlaps.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers.image_utils import SizeDict

from .inference import forward_images


__all__ = [
    "TILING_FILE",
    "Instance",
    "TileInstance",
    "Window",
    "average_tile_scores",
    "default_overlap",
    "load_tiling",
    "merge_tile_instances",
    "predict_tiled",
    "save_tiling",
    "tile_windows",
]


# Written beside a model trained on native-resolution crops (`run_instance_seg.py --crop_to_size`): the tiles it
# is meant to be run with, which `mask2former-dinov3-predict` uses when `--tile` is not given.
TILING_FILE = "tiling.json"


def default_overlap(tile_size: tuple[int, int]) -> int:
    """The overlap used with `tile_size` unless one is chosen: a quarter of the shorter side (128 for 512 px tiles)."""
    return min(int(tile_size[0]), int(tile_size[1])) // 4


def save_tiling(folder: str, tile_size: tuple[int, int], overlap: int) -> str:
    """Write `TILING_FILE` (`{"tile_size": [H, W], "overlap": P}`) into a model folder; returns its path."""
    path = os.path.join(folder, TILING_FILE)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"tile_size": [int(tile_size[0]), int(tile_size[1])], "overlap": int(overlap)}, handle, indent=2)
    return path


def load_tiling(folder: str) -> tuple[tuple[int, int], int] | None:
    """`((H, W), overlap)` from a model folder's `TILING_FILE`, or None when it has none (a resize-trained model)."""
    path = os.path.join(str(folder), TILING_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    return (int(data["tile_size"][0]), int(data["tile_size"][1])), int(data["overlap"])


@dataclass(frozen=True)
class Window:
    """A tile's position in the image, in pixels: rows `top:bottom`, columns `left:right`."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        """Rows of the window."""
        return self.bottom - self.top

    @property
    def width(self) -> int:
        """Columns of the window."""
        return self.right - self.left

    def intersection(self, other: "Window") -> "Window | None":
        """The region both windows cover, or None if they do not overlap."""
        top, left = max(self.top, other.top), max(self.left, other.left)
        bottom, right = min(self.bottom, other.bottom), min(self.right, other.right)
        if bottom <= top or right <= left:
            return None
        return Window(top, left, bottom, right)


@dataclass
class TileInstance:
    """One instance predicted in a window: a boolean mask of the window's size, its label id and score."""

    mask: np.ndarray
    label: int
    score: float


@dataclass
class Instance:
    """One instance in image coordinates: a boolean mask of the image's size, its label id and score."""

    mask: np.ndarray
    label: int
    score: float


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / stride) + 1
    return sorted({min(i * stride, length - tile) for i in range(count)})


def tile_windows(height: int, width: int, tile_size: tuple[int, int], overlap: int) -> list[Window]:
    """Overlapping windows covering a `height` x `width` image, row by row.

    Windows are `tile_size` (clipped to the image when it is smaller), `overlap` pixels apart at least; the last
    window of each row / column ends at the image edge.
    """
    tile_h, tile_w = int(tile_size[0]), int(tile_size[1])
    if tile_h <= 0 or tile_w <= 0:
        raise ValueError(f"tile size must be positive, got {tile_size}")
    if overlap < 0 or overlap >= min(tile_h, tile_w):
        raise ValueError(f"overlap must be in [0, min(tile size)), got {overlap} for tiles {tile_h}x{tile_w}")
    tile_h, tile_w = min(tile_h, height), min(tile_w, width)
    rows = _starts(height, tile_h, max(1, tile_h - overlap))
    cols = _starts(width, tile_w, max(1, tile_w - overlap))
    return [Window(top, left, top + tile_h, left + tile_w) for top in rows for left in cols]


def _touches_inner_border(mask: np.ndarray, window: Window, image_size: tuple[int, int], margin: int) -> bool:
    height, width = image_size
    rows, cols = mask.any(axis=1), mask.any(axis=0)
    return bool(
        (window.top > 0 and rows[:margin].any())
        or (window.bottom < height and rows[-margin:].any())
        or (window.left > 0 and cols[:margin].any())
        or (window.right < width and cols[-margin:].any())
    )


class _UnionFind:
    def __init__(self, size: int):
        self.parent = list(range(size))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def merge_tile_instances(
    tiles: Sequence[tuple[Window, Sequence[TileInstance]]],
    image_size: tuple[int, int],
    iou_threshold: float = 0.5,
    containment_threshold: float = 0.8,
    border_margin: int = 2,
) -> list[Instance]:
    """Merge per-window instances into image-coordinate instances, each object once (rule: module docstring).

    Args:
        tiles: `(window, instances)` per window; instance masks have the window's shape.
        image_size: `(height, width)` of the image.
        iou_threshold: IoU in the shared region above which two same-label instances are one object.
        containment_threshold: fraction of a border-touching instance's shared-region pixels inside another
            same-label instance above which they are one object.
        border_margin: pixels from an inner window edge within which an instance counts as touching it.

    Returns:
        Instances sorted by decreasing score.
    """
    flat: list[tuple[int, TileInstance]] = [(t, inst) for t, (_, insts) in enumerate(tiles) for inst in insts]
    for t, inst in flat:
        window = tiles[t][0]
        if inst.mask.shape != (window.height, window.width):
            raise ValueError(f"instance mask {inst.mask.shape} does not match its window {window}")
    offsets = np.cumsum([0] + [len(insts) for _, insts in tiles])
    cut = [
        _touches_inner_border(inst.mask.astype(bool), tiles[t][0], image_size, border_margin) for t, inst in flat
    ]
    groups = _UnionFind(len(flat))
    for a in range(len(tiles)):
        for b in range(a + 1, len(tiles)):
            _link_window_pair(tiles, a, b, offsets, cut, groups, iou_threshold, containment_threshold)

    members: dict[int, list[int]] = {}
    for i in range(len(flat)):
        members.setdefault(groups.find(i), []).append(i)
    merged = []
    for indices in members.values():
        mask = np.zeros(image_size, dtype=bool)
        for i in indices:
            t, inst = flat[i]
            w = tiles[t][0]
            mask[w.top : w.bottom, w.left : w.right] |= inst.mask.astype(bool)
        merged.append(Instance(mask=mask, label=flat[indices[0]][1].label, score=max(flat[i][1].score for i in indices)))
    merged.sort(key=lambda inst: -inst.score)
    return merged


def _link_window_pair(tiles, a, b, offsets, cut, groups, iou_threshold, containment_threshold) -> None:
    window_a, insts_a = tiles[a]
    window_b, insts_b = tiles[b]
    shared = window_a.intersection(window_b)
    if shared is None or not insts_a or not insts_b:
        return

    def crop(window: Window, insts) -> np.ndarray:
        rows = slice(shared.top - window.top, shared.bottom - window.top)
        cols = slice(shared.left - window.left, shared.right - window.left)
        return np.stack([np.asarray(i.mask, dtype=bool)[rows, cols].ravel() for i in insts]).astype(np.float32)

    masks_a, masks_b = crop(window_a, insts_a), crop(window_b, insts_b)
    # One matrix product gives every pair's intersection: cheap even when thousands of queries are kept.
    inter = masks_a @ masks_b.T
    area_a, area_b = masks_a.sum(1), masks_b.sum(1)
    union = area_a[:, None] + area_b[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    inside_b = inter / np.maximum(area_a[:, None], 1)  # share of a's shared-region pixels inside b
    inside_a = inter / np.maximum(area_b[None, :], 1)
    cut_a = np.array([cut[offsets[a] + i] for i in range(len(insts_a))])[:, None]
    cut_b = np.array([cut[offsets[b] + j] for j in range(len(insts_b))])[None, :]
    same_label = np.array([i.label for i in insts_a])[:, None] == np.array([j.label for j in insts_b])[None, :]
    contained = (cut_a & (inside_b >= containment_threshold)) | (cut_b & (inside_a >= containment_threshold))
    linked = same_label & (inter > 0) & ((iou >= iou_threshold) | contained)
    for i, j in zip(*np.nonzero(linked)):
        groups.union(offsets[a] + int(i), offsets[b] + int(j))


def average_tile_scores(
    tiles: Sequence[tuple[Window, np.ndarray | torch.Tensor]], image_size: tuple[int, int]
) -> torch.Tensor:
    """Per-class score maps `(C, h, w)` of the windows averaged into one `(C, H, W)` map of the image."""
    total, count = None, torch.zeros(image_size, dtype=torch.float32)
    for window, scores in tiles:
        scores = torch.as_tensor(scores, dtype=torch.float32)
        if total is None:
            total = torch.zeros((scores.shape[0], *image_size), dtype=torch.float32)
        total[:, window.top : window.bottom, window.left : window.right] += scores
        count[window.top : window.bottom, window.left : window.right] += 1
    if total is None:
        raise ValueError("no tiles to average")
    if (count == 0).any():
        raise ValueError("the windows do not cover the image")
    return total / count


def _semantic_scores(image_processor, outputs, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    try:
        results = image_processor.post_process_semantic_segmentation(
            outputs, target_sizes=sizes, return_segmentation_scores=True
        )
        return [r["segmentation_scores"] for r in results]
    except TypeError:
        # transformers releases without `return_segmentation_scores`: the same scores, computed as upstream does.
        masks = torch.nn.functional.interpolate(outputs.masks_queries_logits, size=(384, 384), mode="bilinear")
        scores = torch.einsum("bqc,bqhw->bchw", outputs.class_queries_logits.softmax(-1)[..., :-1], masks.sigmoid())
        return [
            torch.nn.functional.interpolate(s[None], size=size, mode="bilinear", align_corners=False)[0]
            for s, size in zip(scores, sizes)
        ]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@torch.no_grad()
def predict_tiled(
    model,
    image_processor,
    image,
    tile_size: tuple[int, int],
    overlap: int,
    task: str = "instance",
    threshold: float = 0.5,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    iou_threshold: float = 0.5,
    containment_threshold: float = 0.8,
):
    """Tiled prediction of one PIL image (see the module docstring).

    Each window is pre-processed by `image_processor` without resizing (native resolution), padded to the
    processor's `size_divisor`; the padding is cut off the logits again before post-processing.

    Returns:
        `task="instance"`: a list of `Instance` (label ids are the model's). `task="semantic"`: a `(H, W)` tensor of
        label ids.
    """
    if task not in ("instance", "semantic"):
        raise ValueError(f"tiled prediction supports task 'instance' or 'semantic', got {task!r}")
    image = image.convert("RGB")
    width, height = image.size
    windows = tile_windows(height, width, tile_size, overlap)
    multiple = int(getattr(image_processor, "size_divisor", None) or 32)
    per_window = []
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        crops = [image.crop((w.left, w.top, w.right, w.bottom)) for w in chunk]
        # No resize (native resolution); padded (not stretched) to the model's size multiple, the padding then
        # cut off by `forward_images` using the pixel mask.
        pad_size = SizeDict(height=_round_up(chunk[0].height, multiple), width=_round_up(chunk[0].width, multiple))
        outputs_per_window = forward_images(
            model, image_processor, crops, device, dtype, do_resize=False, pad_size=pad_size
        )
        for window, outputs in zip(chunk, outputs_per_window):
            size = [(window.height, window.width)]
            if task == "semantic":
                per_window.append((window, _semantic_scores(image_processor, outputs, size)[0]))
                continue
            result = image_processor.post_process_instance_segmentation(
                outputs, threshold=threshold, target_sizes=size, return_binary_maps=True
            )[0]
            masks = np.asarray(result["segmentation"]).astype(bool) if result["segments_info"] else []
            per_window.append(
                (window, [TileInstance(m, int(s["label_id"]), float(s["score"])) for m, s in zip(masks, result["segments_info"])])
            )
    if task == "semantic":
        return average_tile_scores(per_window, (height, width)).argmax(0)
    return merge_tile_instances(
        per_window, (height, width), iou_threshold=iou_threshold, containment_threshold=containment_threshold
    )

