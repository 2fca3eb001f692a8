"""Datasets, augmentation and collation for fine-tuning Mask2FormerDINOv3.

Four kinds of source give the same `Sample` (an image, its segments as masks or an id map, contiguous label ids):

* `CocoSegmentationSource`: a COCO instance JSON and its image folder (Roboflow's layout is `train/_annotations.coco.json`
  with the images beside it). Polygons and RLE (compressed and uncompressed) are decoded with pycocotools.
* `HFSegmentationSource`: a Hugging Face dataset in the format of transformers' instance-segmentation example
  (`image`, `annotation` PNG with the semantic id in channel 0 and the instance id in channel 1,
  `semantic_class_to_id`).
* `LabelImageSource`: integer label images in StarDist's (`images/NAME.tif`, `masks/NAME.tif`) or Cellpose's
  (`NAME.tif` or `NAME_img.tif`, `NAME_masks.tif`) layout, one class; each non-zero value is one instance.
* `synthetic.SyntheticSegmentationSource`: the deterministic synthetic set (the offline default).

`SegmentationDataset` turns a source's samples into Mask2Former's inputs for one task (`instance`, `semantic` or
`panoptic`) with the model's image processor, the object saved beside the model: its resize (masks follow with
nearest neighbour), rescaling and normalisation, so that training, evaluation and inference see pixels prepared by the
same code. albumentations adds only the random training augmentation in between (scale jitter with pad / crop back,
flip, colour jitter). `SegmentationCollator` pads a batch. Evaluation items carry their dataset index; the metrics
look the ground truth up with `SegmentationDataset.ground_truth(index)` (at the image's original resolution).
Ground truth per task lives here only: `training_targets` (what the loss sees) and `evaluation_ground_truth` (what
the metrics see), both as bool masks.

Labels stay compact: segments that cannot overlap (label images; COCO and HF annotations without overlaps) travel
as one integer id map (`Sample.masks` of shape `(H, W)`) through resize, crop and augmentation, and become `(N, H, W)`
bool masks only at the end, with the same pixels as mask-by-mask processing. A training item's random draws come
from `(seed, epoch, index)` alone (`SegmentationDataset`, `EpochCallback`), so a resumed run draws what the
uninterrupted run drew, with or without DataLoader workers.

Bad input is either handled or rejected with a `DataError` naming the file and the problem:

* 8-bit images are converted to RGB: grayscale is replicated, RGBA / palette transparency is composited onto white
  (as transformers' `convert_to_rgb`); images that are not 8-bit (16-bit, 32-bit, float; a multi-page TIFF's first
  page) are kept as read and mapped to 8 bits by the image processor (`intensity_normalization`, per image
  percentiles by default), so that training, evaluation, inference and the overlays see the same pixels;
* images of any size are resized to the image processor's size first, so an image smaller than it is upsampled
  (with `native_crops`, nothing is resized: training cuts random windows of that size at native resolution);
* an annotation whose polygons all have fewer than 3 points, or without a segmentation (a box-only export), is
  skipped with a warning naming the file and the annotation id (one bad outline should not stop a long run); when
  more than half of a file's annotations are skipped, one summary warning (counts and reasons) replaces those lines;
  a polygon part with fewer than 3 points is dropped;
* a train split without a usable instance (instance / panoptic task) is a `DataError` naming the split, what was
  skipped and why (`require_instances`); a validation split without one gets a warning;
* a missing image file, a corrupt or truncated JSON, a category id that is not in the label map, an RLE whose size
  is not the image's, an image whose size is not the one its JSON states: `DataError`;
* an image without annotations is kept: it trains the "no object" class (the loss stays finite).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import tifffile
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset, Subset
from transformers import TrainerCallback

from .configuration_mask2former_dinov3 import INPUT_SIZE_MULTIPLE, check_input_size
from .intensity import is_8_bit
from .tiling import Window


logger = logging.getLogger(__name__)

TASKS = ("instance", "semantic", "panoptic")
# Pixels that belong to no annotated class in semantic ground truth (ignored by mIoU).
IGNORE_INDEX = 255
ROBOFLOW_SPLITS = {"train": ("train",), "validation": ("valid", "validation", "val"), "test": ("test",)}
ROBOFLOW_JSON = "_annotations.coco.json"


class DataError(ValueError):
    """A dataset file cannot be used; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------------------------------
# Label maps
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class LabelMap:
    """The model's label space: contiguous ids `0..N-1`, their names, which are things, and the dataset's own ids.

    Attributes:
        id2label: contiguous label id -> class name.
        thing_ids: label ids of countable objects ("things"); the others are "stuff" (panoptic only).
        dataset_ids: the dataset's own category / semantic id -> contiguous label id.
    """

    id2label: dict[int, str]
    thing_ids: frozenset[int] = frozenset()
    dataset_ids: dict[int, int] = field(default_factory=dict)

    def __post_init__(self):
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        if sorted(self.id2label) != list(range(len(self.id2label))):
            raise ValueError(f"LabelMap ids must be 0..N-1, got {sorted(self.id2label)}")
        self.thing_ids = frozenset(int(i) for i in self.thing_ids)
        if not self.dataset_ids:
            self.dataset_ids = {i: i for i in self.id2label}

    @property
    def num_labels(self) -> int:
        """Number of classes (the model's `num_labels`)."""
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        """Class name -> contiguous label id."""
        return {name: i for i, name in self.id2label.items()}

    @property
    def stuff_ids(self) -> list[int]:
        """Label ids that are not things (panoptic stuff classes)."""
        return [i for i in self.id2label if i not in self.thing_ids]

    def to_label(self, dataset_id: int, where: str) -> int:
        """Contiguous label id of a dataset id; `DataError` naming `where` if the id is unknown."""
        if int(dataset_id) in self.dataset_ids:
            return self.dataset_ids[int(dataset_id)]
        known = sorted(self.dataset_ids)
        shown = ", ".join(map(str, known[:30])) + (", ..." if len(known) > 30 else "")
        raise DataError(f"{where}: category id {dataset_id} is not in the label map (known ids: {shown}).")


def label_map_from_coco(coco: dict, source: str = "") -> LabelMap:
    """Label map from a COCO JSON's `categories` (sorted by id; `isthing: 0` marks stuff classes).

    Roboflow exports list the dataset itself as a parent category (id 0, supercategory "none", named as the other
    classes' supercategory) that no annotation uses; such a category is left out (and logged).
    """
    categories = sorted(coco["categories"], key=lambda c: int(c["id"]))
    used = {int(a["category_id"]) for a in coco["annotations"] if "category_id" in a}

    def is_parent(category):
        if int(category["id"]) in used or len(categories) < 2:
            return False
        children = [c for c in categories if c is not category and c.get("supercategory") == category["name"]]
        return bool(children) or str(category.get("supercategory", "")).lower() == "none"

    parents = [c for c in categories if is_parent(c)]
    for category in parents:
        logger.info("%s: left out category %s (%r): a parent category without annotations (Roboflow export).",
                    source, category["id"], category["name"])  # fmt: skip
    kept = [c for c in categories if c not in parents]
    if not kept:
        raise DataError(f"{source}: no categories.")
    counts = Counter(str(c["name"]) for c in kept)  # a name used by several ids gets the id appended
    names = [f"{c['name']}_{c['id']}" if counts[str(c["name"])] > 1 else str(c["name"]) for c in kept]
    for category, name in zip(kept, names):
        if name != str(category["name"]):
            logger.warning("Category name %r is used by several ids; naming id %s %r.", category["name"],
                           category["id"], name)  # fmt: skip
    things = frozenset(i for i, c in enumerate(kept) if int(c.get("isthing", 1)) != 0)
    return LabelMap(dict(enumerate(names)), things, {int(c["id"]): i for i, c in enumerate(kept)})


def check_label_maps_agree(label_map: LabelMap, coco: dict, source: str) -> None:
    """Raise `DataError` if a category id of `coco` is named differently in `label_map` (e.g. train vs valid JSON)."""
    for category in coco["categories"]:
        label = label_map.dataset_ids.get(int(category["id"]))
        name = str(category["name"])
        if label is not None and label_map.id2label[label] not in (name, f"{name}_{category['id']}"):
            raise DataError(f"{source}: category id {category['id']} is named {category['name']!r} here but "
                            f"{label_map.id2label[label]!r} in the training annotations; the splits must share one "
                            f"category list.")  # fmt: skip


def label_map_from_semantic_class_to_id(semantic_class_to_id: dict[str, int], do_reduce_labels: bool = False,
                                        thing_dataset_ids: Sequence[int] | None = None) -> LabelMap:  # fmt: skip
    """Label map of a dataset in transformers' example format (`semantic_class_to_id`, name -> semantic id).

    With `do_reduce_labels`, semantic id 0 is background (ignored) and the other ids shift down by one, as in
    transformers' example. Ids are made contiguous in sorted order. `thing_dataset_ids` lists the semantic ids that
    have instances (default: all).
    """
    items = sorted(((int(v), str(k)) for k, v in semantic_class_to_id.items()))
    if do_reduce_labels:
        items = [(v, k) for v, k in items if v != 0]
    dataset_ids = {v: i for i, (v, _) in enumerate(items)}
    things = dataset_ids.keys() if thing_dataset_ids is None else [t for t in thing_dataset_ids if t in dataset_ids]
    return LabelMap({i: k for i, (_, k) in enumerate(items)}, frozenset(dataset_ids[t] for t in things), dataset_ids)


# --------------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------------


def to_rgb_array(image: Image.Image, source: str = "") -> np.ndarray:
    """The pixels of a PIL image as the dataset keeps them: 8-bit images as `(H, W, 3)` uint8 RGB, others as read.

    8-bit images: transparency is composited onto white, as transformers' `convert_to_rgb` does at inference;
    grayscale and palette images are expanded. Images that are not 8-bit (PIL modes `I;16*`, `I`, `F`) come back
    as their raw `(H, W)` array (uint16, int32 or float32): the image processor maps them to 8 bits
    (`Mask2FormerDINOv3ImageProcessor.normalize_intensity`, its `intensity_normalization`), at training as at
    inference.
    """
    if not is_8_bit(image):
        return np.array(image)
    from transformers.image_transforms import convert_to_rgb

    return np.ascontiguousarray(convert_to_rgb(image, return_numpy=True))


def load_image(path: str, source: str = "") -> np.ndarray:
    """Read an image file as `to_rgb_array` returns it (a multi-page TIFF: its first page); `DataError` naming
    `source` and the path if it cannot be read."""
    where = f"{source}: " if source else ""
    if not os.path.isfile(path):
        raise DataError(f"{where}image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            if getattr(image, "n_frames", 1) > 1:
                logger.warning("%s%s has %d pages; using the first.", where, path, image.n_frames)
            return to_rgb_array(image, source=f"{where}{path}")
    except Exception as error:  # PIL raises many types for unreadable files
        raise DataError(f"{where}cannot read image {path}: {error}") from error


def image_for_model(image: np.ndarray, image_processor, source: str = "") -> np.ndarray:
    """`(H, W, 3)` uint8 RGB of a `Sample.image`: 8-bit images as they are, others mapped to 8 bits by the image
    processor's own `normalize_intensity` (the step its `preprocess` applies to such images at inference).

    Overlays show this image, so they show what the model sees.
    """
    if image.dtype == np.uint8:
        return image
    normalize = getattr(image_processor, "normalize_intensity", None)
    if normalize is None:
        raise DataError(f"{source or 'image'}: a {image.dtype} image (not 8-bit), which {type(image_processor).__name__} "
                        f"cannot normalise; use Mask2FormerDINOv3ImageProcessor (its intensity_normalization setting) "
                        f"or convert the images to 8 bit.")  # fmt: skip
    array = np.asarray(normalize(image))
    if array.ndim != 3 or array.shape[-1] != 3:
        raise DataError(f"{source or 'image'}: a {image.shape} {image.dtype} image; expected (H, W) or (H, W, 3).")
    return array


# --------------------------------------------------------------------------------------------------------------------
# Samples and sources
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One image and its segments in the model's label space, at the image's own resolution.

    Attributes:
        image: `(H, W, 3)` uint8 RGB, or an image that is not 8-bit as read (`(H, W)` uint16 / int32 / float32),
            which the image processor maps to 8 bits (`image_for_model`).
        masks: `(N, H, W)` uint8 binary masks (or a list of `(H, W)` masks), which may overlap; or, for segments that
            cannot overlap (label images, COCO / HF annotations without overlaps), an `(H, W)` integer id map in
            which value `i + 1` marks segment `i` and 0 no segment. An id map is resized, cropped and augmented as
            one image, however many segments it holds; `binary_masks` expands it.
        labels: `(N,)` contiguous label ids.
        iscrowd: `(N,)` bool, COCO crowd regions (not trained on as instances; ignored by the metrics).
        is_instance: `(N,)` bool, whether the segment is one object (thing) rather than a stuff region.
        image_id: unique id of the image in its split (used to deduplicate evaluation across processes).
        file_name: where the image came from, for messages and overlays.
    """

    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    is_instance: np.ndarray
    image_id: int
    file_name: str = ""

    def __post_init__(self):
        masks = np.asarray(self.masks)  # an (H, W) id map, an (N, H, W) array or a list of (H, W) masks (maybe none)
        self.masks = masks.astype(np.int32 if masks.ndim == 2 else np.uint8, copy=False)
        if self.masks.ndim == 1:
            self.masks = self.masks.reshape(0, *self.image.shape[:2])
        n = np.size(self.labels) if self.is_id_map else len(self.masks)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(n)
        self.iscrowd = np.asarray(self.iscrowd, dtype=bool).reshape(n)
        self.is_instance = np.asarray(self.is_instance, dtype=bool).reshape(n)

    @property
    def is_id_map(self) -> bool:
        """Whether `masks` is an `(H, W)` id map (segments that cannot overlap) rather than `(N, H, W)` masks."""
        return self.masks.ndim == 2

    def areas(self) -> np.ndarray:
        """`(N,)` pixel count of each segment."""
        if self.is_id_map:
            return np.bincount(self.masks.ravel(), minlength=len(self.labels) + 1)[1 : len(self.labels) + 1]
        return self.masks.sum(axis=(1, 2), dtype=np.int64)

    def binary_masks(self, keep: np.ndarray | None = None) -> np.ndarray:
        """`(N, H, W)` bool masks of the segments, or of those `keep` selects (a bool array or indices)."""
        keep = np.arange(len(self.labels)) if keep is None else np.asarray(keep)
        keep = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
        return expand_id_map(self.masks, keep + 1) if self.is_id_map else self.masks[keep].astype(bool)

    def select(self, keep: np.ndarray, masks: np.ndarray) -> Sample:
        """This sample with the segments `keep` selects and their `masks` (an id map or `(len(keep), H, W)`)."""
        return replace(self, masks=masks, labels=self.labels[keep], iscrowd=self.iscrowd[keep],
                       is_instance=self.is_instance[keep])  # fmt: skip


def expand_id_map(id_map: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """`(len(ids), H, W)` bool masks `id_map == id` for each id, written in one pass over the pixels."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    row = np.full(max(ids.max(initial=0), id_map.max(initial=0)) + 1, -1, np.int64)  # id -> its mask's row
    row[ids] = np.arange(len(ids))
    rows = row[id_map.ravel()]
    pixels = np.flatnonzero(rows >= 0)
    masks = np.zeros((len(ids), id_map.size), bool)
    masks[rows[pixels], pixels] = True
    return masks.reshape(len(ids), *id_map.shape)


def id_map_of(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """`(H, W)` id map of non-overlapping `(H, W)` masks (mask `i` becomes value `i + 1`), painted one at a time."""
    id_map = np.zeros(shape, np.int32)
    for index, mask in enumerate(masks):
        id_map[np.asarray(mask, bool)] = index + 1
    return id_map


def _read_coco_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise DataError(f"{path}: annotation file not found.")
    try:
        with open(path, encoding="utf-8") as handle:
            coco = json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); the file is "
                        f"corrupt or truncated. Re-export or re-download it (and check the disk was not full when it "
                        f"was written).") from error  # fmt: skip
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not a UTF-8 text file ({error}); is it really a COCO JSON?") from error
    if not isinstance(coco, dict):
        raise DataError(f"{path}: expected a COCO JSON object with images/annotations/categories, got {type(coco).__name__}.")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DataError(f"{path}: missing or invalid {key!r} list; is this a COCO instance-segmentation JSON?")
    return coco


class CocoSegmentationSource:
    """Samples of a COCO instance JSON (`images`, `annotations`, `categories`) and its image folder.

    Everything that can be checked without decoding images is checked when the source is built: image files exist,
    category ids are in the label map, annotation segmentations are usable. Masks are decoded per sample.

    Args:
        annotation_file: path of the COCO JSON.
        image_dir: folder of the images (`file_name` is relative to it); defaults to the JSON's folder (Roboflow).
        label_map: the model's labels; built from this JSON's categories if not given.
    """

    def __init__(self, annotation_file: str, image_dir: str | None = None, label_map: LabelMap | None = None):
        self.annotation_file = annotation_file
        self.image_dir = image_dir if image_dir is not None else os.path.dirname(os.path.abspath(annotation_file))
        coco = _read_coco_json(annotation_file)
        if label_map is None:
            label_map = label_map_from_coco(coco, annotation_file)
        else:
            check_label_maps_agree(label_map, coco, annotation_file)
        self.label_map = label_map
        self.images = []
        for image in coco["images"]:
            try:
                info = {key: int(image[key]) for key in ("id", "height", "width")} | {"file_name": str(image["file_name"])}
            except (KeyError, TypeError, ValueError) as error:
                raise DataError(f"{annotation_file}: image entry {image!r} lacks id/file_name/height/width ({error}).") from None
            self.images.append(info | {"path": os.path.join(self.image_dir, info["file_name"])})
        sizes = {img["id"]: (img["height"], img["width"]) for img in self.images}
        twice = [image_id for image_id, n in Counter(img["id"] for img in self.images).items() if n > 1]
        if twice:
            raise DataError(f"{annotation_file}: image id {twice[0]} appears twice.")
        missing = [img["path"] for img in self.images if not os.path.isfile(img["path"])]
        if missing:
            shown = "\n  ".join(missing[:5]) + (f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DataError(f"{annotation_file}: {len(missing)} image file(s) listed in the JSON are missing:\n  {shown}\n"
                            f"(image folder: {self.image_dir})")  # fmt: skip
        self.annotations: dict[int, list[dict]] = {img["id"]: [] for img in self.images}
        # Why annotations were skipped (reason -> count): `require_instances` names it when nothing is left.
        self.skipped: Counter[str] = Counter()
        notes: list[str] = []
        for ann in coco["annotations"]:
            ann_id = ann.get("id", "?")
            where = f"{annotation_file}: annotation {ann_id}"
            image_id = ann.get("image_id")
            if image_id not in sizes:
                raise DataError(f"{where} refers to image id {image_id}, which is not in 'images'.")
            if "category_id" not in ann:
                raise DataError(f"{where} has no category_id.")
            label = label_map.to_label(ann["category_id"], where)
            segmentation = self._check_segmentation(ann.get("segmentation"), sizes[image_id], where, notes)
            if segmentation is not None:
                self.annotations[image_id].append({"id": ann_id, "label": label, "segmentation": segmentation,
                                                   "iscrowd": bool(ann.get("iscrowd", 0))})  # fmt: skip
        skipped, total = sum(self.skipped.values()), len(coco["annotations"])
        if skipped * 2 > total:  # one line, not thousands (e.g. a box-only detection export)
            reasons = "; ".join(f"{count} {reason}" for reason, count in self.skipped.items())
            notes = [f"{annotation_file}: skipped {skipped} of {total} annotations: {reasons}."]
        elif skipped:
            notes.append(f"{annotation_file}: skipped {skipped} annotation(s) without a usable segmentation (see above).")
        for note in notes:
            logger.warning(note)

    def _check_segmentation(self, segmentation: Any, size: tuple[int, int], where: str, notes: list[str]):
        """The segmentation in a form pycocotools decodes, or None (counted in `skipped`, with a note) if it has no
        usable outline."""
        if isinstance(segmentation, dict):
            if "counts" not in segmentation or "size" not in segmentation:
                raise DataError(f"{where}: RLE segmentation needs 'counts' and 'size', got keys {sorted(segmentation)}.")
            if [int(s) for s in segmentation["size"]] != list(size):
                raise DataError(f"{where}: RLE size {segmentation['size']} differs from the image's height/width {list(size)}.")
            return segmentation
        parts = segmentation if isinstance(segmentation, list) else []
        polygons = [[float(v) for v in p] for p in parts if isinstance(p, list) and len(p) >= 6 and not len(p) % 2]
        for part in parts:  # the parts with fewer than 3 (x, y) points
            if not (isinstance(part, list) and len(part) >= 6 and not len(part) % 2):
                points = len(part) // 2 if isinstance(part, list) else 0
                notes.append(f"{where}: dropped a polygon with {points} point(s) (a polygon needs at least 3).")
        if polygons:
            return polygons
        if isinstance(segmentation, list):
            reason, note = "without a polygon of at least 3 points", "skipped, no polygon with at least 3 points"
        else:
            reason = "without a segmentation (boxes alone cannot train masks: export with masks or polygons)"
            note = "skipped, no segmentation (boxes alone cannot train masks)"
        self.skipped[reason] += 1
        notes.append(f"{where}: {note}.")
        return None

    def __len__(self) -> int:
        return len(self.images)

    def segment_classes(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Labels of image `index`'s segments that are not crowd regions, which are things, and the image's path
        (from the JSON: nothing is decoded)."""
        labels = np.array([a["label"] for a in self.annotations[self.images[index]["id"]] if not a["iscrowd"]], np.int64)
        return labels, np.isin(labels, list(self.label_map.thing_ids)), self.images[index]["path"]

    @staticmethod
    def to_rle(segmentation, height: int, width: int) -> dict:
        """Compressed RLE of a COCO polygon list or RLE (compressed or uncompressed), via pycocotools."""
        if isinstance(segmentation, list):
            return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        if isinstance(segmentation["counts"], list):
            return mask_utils.frPyObjects(segmentation, height, width)
        return segmentation  # compressed RLE, its counts as str or bytes

    def __getitem__(self, index: int) -> Sample:
        info = self.images[index]
        image = load_image(info["path"], self.annotation_file)
        height, width = image.shape[:2]
        if (height, width) != (info["height"], info["width"]):
            raise DataError(f"{self.annotation_file}: image {info['file_name']} is {width}x{height} pixels but the JSON "
                            f"says {info['width']}x{info['height']}; the annotations would not line up (EXIF rotation "
                            f"or a resized copy?).")  # fmt: skip
        anns = self.annotations[info["id"]]
        rles = [self.to_rle(a["segmentation"], height, width) for a in anns]
        areas = mask_utils.area(rles) if rles else np.zeros(0)
        anns, rles = [a for a, s in zip(anns, areas) if s], [r for r, s in zip(rles, areas) if s]
        # Masks that do not overlap (their union's area is the sum of theirs) become one id map, not N masks.
        overlap = not rles or mask_utils.area(mask_utils.merge(rles)) != areas.sum()
        masks = [mask_utils.decode(r) for r in rles] if overlap else id_map_of(map(mask_utils.decode, rles), (height, width))
        labels = [a["label"] for a in anns]
        return Sample(image, masks, labels, [a["iscrowd"] for a in anns], [label in self.label_map.thing_ids for label
                      in labels], image_id=info["id"], file_name=info["path"])  # fmt: skip


LABEL_IMAGE_EXTENSIONS = (".tif", ".tiff", ".png")


def _label_image_files(folder: str) -> dict[str, str]:
    # File stem -> path, for the image and label-image files of a folder.
    names = [n for n in sorted(os.listdir(folder)) if os.path.splitext(n)[1].lower() in LABEL_IMAGE_EXTENSIONS]
    return {os.path.splitext(n)[0]: os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))}


def find_label_image_pairs(split_dir: str) -> list[tuple[str, str]] | None:
    """`(image, label image)` paths of a split folder, sorted by name; None if there is no such folder.

    StarDist's layout: `images/NAME.tif` with `masks/NAME.tif`. Cellpose's: `NAME.tif` (or `NAME_img.tif`) beside
    `NAME_masks.tif`. TIFF or PNG. An image without a label image, a label image without an image, or a folder with
    neither is a `DataError` naming the file or folder.
    """
    if not os.path.isdir(split_dir):
        return None
    images_dir, masks_dir = os.path.join(split_dir, "images"), os.path.join(split_dir, "masks")
    if os.path.isdir(images_dir) and os.path.isdir(masks_dir):
        images, masks = _label_image_files(images_dir), _label_image_files(masks_dir)
        layout = "StarDist layout: images/NAME with masks/NAME"
    else:
        images, masks = {}, {}
        for stem, path in _label_image_files(split_dir).items():
            if stem.endswith("_masks"):
                masks[stem[: -len("_masks")]] = path
            else:
                images[stem.removesuffix("_img")] = path
        layout = f"Cellpose layout: NAME.tif or NAME_img.tif beside NAME_masks.tif; a COCO folder needs {ROBOFLOW_JSON}"
    for found, missing, what in ((images, masks, "image without a label image"),
                                 (masks, images, "label image without an image")):  # fmt: skip
        lonely = sorted(found.keys() - missing.keys())
        if lonely:
            raise DataError(f"{found[lonely[0]]}: {what} ({layout}); {len(lonely)} such file(s) in {split_dir}.")
    if not images:
        raise DataError(f"{split_dir}: empty split, no image / label image pairs (StarDist layout: images/NAME.tif "
                        f"with masks/NAME.tif; Cellpose layout: NAME.tif or NAME_img.tif beside NAME_masks.tif; TIFF "
                        f"or PNG).")  # fmt: skip
    return [(images[stem], masks[stem]) for stem in sorted(images)]


def read_label_image(path: str) -> np.ndarray:
    """A 2-D integer label image (0 = background, each other value one instance): TIFF via tifffile, PNG via PIL;
    `DataError` naming the file if it cannot be read or is not a 2-D integer image."""
    try:
        if path.lower().endswith((".tif", ".tiff")):
            array = tifffile.imread(path)
        else:
            with Image.open(path) as image:
                array = np.array(image)
    except Exception as error:  # tifffile and PIL raise many types for unreadable files
        raise DataError(f"{path}: cannot read the label image: {error}") from error
    array = np.squeeze(array)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{path}: a {array.dtype} label image of shape {array.shape}; expected a 2-D (H, W) integer image, "
                        f"0 for background and one value per instance (e.g. a uint16 TIFF), not RGB or float.")  # fmt: skip
    return array


class LabelImageSource:
    """Samples of integer label images (StarDist / Cellpose folders, `find_label_image_pairs`): one class, named
    `class_name`; 0 is background and every other value one instance, so touching instances stay apart. Images are
    read by `load_image`, as COCO folders' images; a frame without instances is kept as a negative example."""

    def __init__(self, pairs: Sequence[tuple[str, str]], class_name: str = "cell"):
        self.pairs = list(pairs)
        self.name = os.path.commonpath(self.pairs[0]) if self.pairs else ""  # the split folder, for messages
        self.label_map = LabelMap({0: class_name}, thing_ids=frozenset({0}))

    def __len__(self) -> int:
        return len(self.pairs)

    def segment_classes(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """One thing of class 0 per non-zero value of label image `index` (its image is not read), and its path."""
        n = int(np.count_nonzero(np.unique(read_label_image(self.pairs[index][1]))))
        return np.zeros(n, np.int64), np.ones(n, bool), self.pairs[index][1]

    def __getitem__(self, index: int) -> Sample:
        image_path, mask_path = self.pairs[index]
        image = load_image(image_path)
        label_image = read_label_image(mask_path)
        if label_image.shape != image.shape[:2]:
            raise DataError(f"{mask_path}: label image of {label_image.shape[1]}x{label_image.shape[0]} pixels but "
                            f"its image {image_path} is {image.shape[1]}x{image.shape[0]}; they must be the same "
                            f"size.")  # fmt: skip
        # Values renumbered 1..N in order (0 stays background): the label image is already an id map.
        ids, inverse = np.unique(label_image, return_inverse=True)
        id_map = inverse.reshape(label_image.shape).astype(np.int32) + int(ids[0] != 0)
        n = len(ids) - int(ids[0] == 0)
        if not n:
            logger.info("%s: no instance; kept as a negative example.", mask_path)
        return Sample(image=image, masks=id_map, labels=np.zeros(n), iscrowd=np.zeros(n, bool),
                      is_instance=np.ones(n, bool), image_id=index, file_name=image_path)  # fmt: skip


def segments_from_annotation_png(annotation: np.ndarray, label_map: LabelMap, do_reduce_labels: bool,
                                 where: str) -> tuple[np.ndarray, list[int], list[bool]]:  # fmt: skip
    """Segments of a transformers-example annotation (channel 0 semantic id, channel 1 instance id).

    Every non-zero instance id is one instance (its class is the most common semantic id under it); pixels with
    instance id 0 form one stuff region per semantic id. With `do_reduce_labels`, semantic id 0 is ignored.
    Returns `(id_map, labels, is_instance)`: the segments cannot overlap, so they come as one id map (see `Sample`).
    """
    semantic = annotation if annotation.ndim == 2 else annotation[..., 0]
    instance = np.zeros_like(semantic) if annotation.ndim == 2 else annotation[..., 1]
    regions, labels, is_instance = [], [], []
    for instance_id in np.unique(instance):
        region = instance == instance_id
        values, counts = np.unique(semantic[region], return_counts=True)
        # Instance id 0: one stuff region per semantic id; another id: one instance of its most common class.
        for semantic_id in values if instance_id == 0 else [values[np.argmax(counts)]]:
            if not (do_reduce_labels and semantic_id == 0):
                regions.append(region & (semantic == semantic_id) if instance_id == 0 else region)
                labels.append(label_map.to_label(int(semantic_id), where))
                is_instance.append(bool(instance_id))
    return id_map_of(regions, semantic.shape), labels, is_instance


class HFSegmentationSource:
    """Samples of a Hugging Face dataset split in the format of transformers' instance-segmentation example.

    Columns: `image` (any PIL mode), `annotation` (PNG: channel 0 semantic id, channel 1 instance id; a one-channel
    PNG is read as semantic ids only). See `segments_from_annotation_png` for how segments are formed.
    """

    def __init__(self, dataset, label_map: LabelMap, do_reduce_labels: bool = False, name: str = "dataset"):
        for column in ("image", "annotation"):
            if column not in dataset.column_names:
                raise DataError(f"{name}: no {column!r} column (columns: {dataset.column_names}).")
        self.dataset = dataset
        self.annotations = dataset.select_columns(["annotation"])  # to count instances without decoding the images
        self.label_map = label_map
        self.do_reduce_labels = do_reduce_labels
        self.name = name

    def __len__(self) -> int:
        return len(self.dataset)

    def segment_classes(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """Labels of row `index`'s segments and which are instances, from its annotation PNG (the image is not
        decoded), and the row's name."""
        where = f"{self.name} row {index}"
        annotation = np.asarray(self.annotations[index]["annotation"])
        _, labels, things = segments_from_annotation_png(annotation, self.label_map, self.do_reduce_labels, where)
        return np.asarray(labels, np.int64), np.asarray(things, bool), where

    def __getitem__(self, index: int) -> Sample:
        row = self.dataset[index]
        where = f"{self.name} row {index}"
        image = to_rgb_array(row["image"], where)
        annotation = np.asarray(row["annotation"])
        if annotation.shape[:2] != image.shape[:2]:
            raise DataError(f"{where}: annotation is {annotation.shape[:2]} but the image is {image.shape[:2]}.")
        masks, labels, is_instance = segments_from_annotation_png(annotation, self.label_map, self.do_reduce_labels, where)
        return Sample(image, masks, labels, [False] * len(labels), is_instance, image_id=index, file_name=where)


def thing_semantic_ids(dataset) -> list[int]:
    """Semantic ids that appear with a non-zero instance id anywhere in `dataset` (decodes every annotation)."""
    arrays = (np.asarray(annotation) for annotation in dataset["annotation"])
    return sorted({int(t) for array in arrays if array.ndim == 3 for t in np.unique(array[..., 0][array[..., 1] != 0])})


def load_hf_dataset(name_or_path: str, token: str | None = None, trust_remote_code: bool = False):
    """A `DatasetDict` from a hub name, a `save_to_disk` folder or a local data folder."""
    import datasets

    if any(os.path.isfile(os.path.join(name_or_path, name)) for name in ("dataset_dict.json", "state.json")):
        loaded = datasets.load_from_disk(name_or_path)
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
    return datasets.load_dataset(name_or_path, token=token, **({"trust_remote_code": True} if trust_remote_code else {}))


def semantic_class_to_id_of(dataset, name: str) -> dict[str, int]:
    """The `semantic_class_to_id` mapping of a dataset in transformers' example format (a column, dict or JSON)."""
    if "semantic_class_to_id" not in dataset.column_names:
        raise DataError(f"{name}: no 'semantic_class_to_id' column; the dataset must follow transformers' "
                        f"instance-segmentation example format (image, annotation, semantic_class_to_id).")  # fmt: skip
    mapping = dataset[0]["semantic_class_to_id"]
    if isinstance(mapping, str):
        mapping = json.loads(mapping)
    return {str(k): int(v) for k, v in mapping.items() if v is not None}


# --------------------------------------------------------------------------------------------------------------------
# Ground truth per task
# --------------------------------------------------------------------------------------------------------------------


def painted_segments(sample: Sample) -> np.ndarray:
    """`(H, W)` int32 map of `1 + index` of the segment on top at each pixel (0: none), larger segments painted
    first, so that small objects stay visible on top of large ones; an id map as it is (its segments cannot
    overlap)."""
    if sample.is_id_map:
        return sample.masks
    painted = np.zeros(sample.image.shape[:2], np.int32)
    for index in np.argsort(-sample.areas(), kind="stable"):  # larger segments first
        painted[sample.masks[index].astype(bool)] = index + 1
    return painted


def panoptic_segments(sample: Sample) -> tuple[np.ndarray, list[dict]]:
    """Non-overlapping segments of a sample: `(segment_map, segments_info)`.

    Overlaps are resolved by painting larger segments first. Instances keep one segment each; stuff regions of the
    same class merge into one segment. `segment_map` is int32 with 0 for unlabelled pixels; `segments_info` items are
    `{"id", "label_id", "iscrowd", "isthing"}`.
    """
    infos: list[dict] = []
    ids: dict[tuple[str, int], int] = {}  # an instance or crowd region: its own segment; stuff: one per class
    segment_of = np.zeros(len(sample.labels) + 1, np.int32)  # 1 + segment index -> segment id
    for index in np.argsort(-sample.areas(), kind="stable"):  # the order `painted_segments` paints in
        label, thing, crowd = int(sample.labels[index]), bool(sample.is_instance[index]), bool(sample.iscrowd[index])
        key = ("segment", index) if thing or crowd else ("stuff", label)
        if key not in ids:
            ids[key] = len(infos) + 1
            infos.append({"id": ids[key], "label_id": label, "iscrowd": crowd, "isthing": thing})
        segment_of[index + 1] = ids[key]
    segment_map = segment_of[painted_segments(sample)]
    present = set(np.unique(segment_map).tolist())
    return segment_map, [info for info in infos if info["id"] in present]


def semantic_map(sample: Sample) -> np.ndarray:
    """`(H, W)` int64 map of label ids, `IGNORE_INDEX` where no segment lies (larger segments painted first)."""
    return np.append(IGNORE_INDEX, sample.labels).astype(np.int64)[painted_segments(sample)]


def training_targets(sample: Sample, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Mask2Former's `(mask_labels, class_labels)` for one (augmented) sample: `(N, H, W)` bool masks (what the
    loss reads at its sampled points) and `(N,)` int64 label ids.

    instance: one mask per non-crowd instance (overlaps kept). semantic: one mask per class present. panoptic: one
    mask per non-crowd instance plus one per stuff class, without overlaps.
    """
    if task == "instance":
        keep = sample.is_instance & ~sample.iscrowd & (sample.areas() > 0)
        return sample.binary_masks(keep), sample.labels[keep]
    if task == "semantic":
        semantic = semantic_map(sample)
        classes = np.setdiff1d(np.unique(semantic), [IGNORE_INDEX])
        return expand_id_map(semantic, classes), classes.astype(np.int64)
    if task == "panoptic":
        segment_map, infos = panoptic_segments(sample)
        infos = [info for info in infos if not info["iscrowd"]]
        labels = np.array([info["label_id"] for info in infos], np.int64)
        return expand_id_map(segment_map, [info["id"] for info in infos]), labels
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def evaluation_ground_truth(sample: Sample, task: str) -> Any:
    """The ground truth of a (not augmented) sample at its own resolution, in the format of the task's evaluator
    (`mask2former_dinov3.metrics`).

    instance: `{"masks", "labels", "iscrowd", "size"}` of the instances and crowd regions (crowd regions are ignored
    by COCO AP, as COCO does). semantic: the `(H, W)` label map (`semantic_map`, unlabelled pixels
    `IGNORE_INDEX`). panoptic: `{"segmentation", "segments_info"}` with `{"id", "category_id", "iscrowd"}` items
    (`panoptic_segments`).
    """
    if task == "instance":
        keep = np.flatnonzero(sample.is_instance | sample.iscrowd)
        return {"masks": sample.binary_masks(keep), "labels": sample.labels[keep], "iscrowd": sample.iscrowd[keep],
                "size": tuple(sample.image.shape[:2])}  # fmt: skip
    if task == "semantic":
        return semantic_map(sample)
    if task == "panoptic":
        segment_map, infos = panoptic_segments(sample)
        segments = [{"id": s["id"], "category_id": s["label_id"], "iscrowd": int(s["iscrowd"])} for s in infos]
        return {"segmentation": segment_map, "segments_info": segments}
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


# --------------------------------------------------------------------------------------------------------------------
# Preprocessing (the image processor's), augmentation, dataset, collator
# --------------------------------------------------------------------------------------------------------------------


def processor_size(image_processor) -> tuple[int, int]:
    """The fixed `(height, width)` an image processor resizes to; a `ValueError` if its size is not fixed.

    Training crops back to this size after scale jitter, and evaluation gathers same-sized predictions across
    processes, so the data pipeline needs `size={"height": H, "width": W}` (multiples of 32).
    """
    size = image_processor.size
    height, width = getattr(size, "height", None), getattr(size, "width", None)
    if not height or not width:
        raise ValueError(f"The image processor resizes to {size}, not to a fixed size: build it with "
                         f"size={{'height': H, 'width': W}} (e.g. Mask2FormerDINOv3ImageProcessor(size={{'height': "
                         f"512, 'width': 512}})).")  # fmt: skip
    check_input_size(height, width, name="the image processor's size")
    return int(height), int(width)


def resize_sample(sample: Sample, image_processor) -> Sample:
    """`sample` resized to the image processor's size with the processor's own `resize`: the image with its filter
    (PIL bilinear, antialiased, as at inference), the masks with nearest neighbour so that they stay binary and
    follow the same geometry. An image that is not 8-bit is first mapped to 8 bits by the processor, as
    `preprocess` does at inference (`image_for_model`).
    """
    from transformers.image_utils import PILImageResampling

    processor_size(image_processor)
    kwargs = {"size": image_processor.size, "size_divisor": image_processor.size_divisor}
    rgb = image_for_model(sample.image, image_processor, sample.file_name)
    image = image_processor.resize(np.ascontiguousarray(rgb.transpose(2, 0, 1)), resample=image_processor.resample, **kwargs)
    image = np.ascontiguousarray(image.transpose(1, 2, 0))
    if not sample.is_id_map:
        masks = [image_processor.resize(m[None], resample=PILImageResampling.NEAREST, **kwargs)[0] for m in sample.masks]
        return replace(sample, image=image, masks=masks)
    # An id map in one resize: its three low bytes as an 8-bit image (the processor's resize takes 8-bit images;
    # nearest neighbour moves whole pixels, so the bytes stay together).
    if len(sample.labels) >= 1 << 24:
        raise DataError(f"{sample.file_name}: {len(sample.labels)} segments in one image; at most 16,777,215.")
    planes = np.stack([(sample.masks >> shift).astype(np.uint8) for shift in (0, 8, 16)])
    planes = image_processor.resize(planes, resample=PILImageResampling.NEAREST, **kwargs).astype(np.int32)
    return replace(sample, image=image, masks=planes[0] | planes[1] << 8 | planes[2] << 16)


def random_crop_window(image_size: tuple[int, int], crop_size: tuple[int, int], rng: np.random.Generator) -> Window:
    """A uniformly placed `crop_size` window inside an image of `image_size` `(height, width)`; in a dimension where
    the image is smaller than the crop, the window is the whole image (the collator then pads it, as the image
    processor pads)."""
    crop_h, crop_w = min(crop_size[0], image_size[0]), min(crop_size[1], image_size[1])
    top, left = (int(rng.integers(0, side - crop + 1)) for side, crop in zip(image_size, (crop_h, crop_w)))
    return Window(top, left, top + crop_h, left + crop_w)


def crop_sample(sample: Sample, window: Window) -> Sample:
    """`sample` cut to `window` at its own resolution (no resizing): segments keep their visible part, and segments
    with no pixel left in the window are dropped (a crop may hold none)."""
    rows, cols = slice(window.top, window.bottom), slice(window.left, window.right)
    sample = replace(sample, image=np.ascontiguousarray(sample.image[rows, cols]),
                     masks=np.ascontiguousarray(sample.masks[..., rows, cols]))  # fmt: skip
    keep = np.flatnonzero(sample.areas())
    renumber = np.zeros(len(sample.labels) + 1, np.int32)  # an id map's kept segments become 1..len(keep)
    renumber[keep + 1] = np.arange(1, len(keep) + 1)
    return sample.select(keep, renumber[sample.masks] if sample.is_id_map else sample.masks[keep])


def pixel_values_of(image: np.ndarray, image_processor) -> torch.Tensor:
    """`(3, H, W)` model input of an already resized `(H, W, 3)` uint8 image: the image processor's own rescaling
    and normalisation (its `__call__` without resizing)."""
    inputs = image_processor(images=image, do_resize=False, input_data_format="channels_last", return_tensors="pt")
    return inputs["pixel_values"][0]


def build_augmentation(
    image_processor, min_scale: float = 0.5, max_scale: float = 2.0, color_jitter: float = 0.2, hflip: bool = True,
    seed: int | None = None,
):  # fmt: skip
    """The random training augmentation (albumentations), applied after the image processor's resize (or, with
    `SegmentationDataset(native_crops=True)`, to the native-resolution crop): large-scale
    jitter (random scale in [min_scale, max_scale], then pad / random crop back to the processor's size),
    horizontal flip and colour jitter. Masks follow the image with nearest-neighbour interpolation.
    """
    import albumentations as A
    import cv2

    height, width = processor_size(image_processor)
    if not 0 < min_scale <= max_scale:
        raise ValueError(f"--min_scale/--max_scale: need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}.")
    steps = []
    if (min_scale, max_scale) != (1.0, 1.0):
        steps += [A.RandomScale(scale_limit=(min_scale - 1.0, max_scale - 1.0), interpolation=cv2.INTER_LINEAR,
                                mask_interpolation=cv2.INTER_NEAREST_EXACT, p=1.0),
                  A.PadIfNeeded(min_height=height, min_width=width, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0,
                                position="random"), A.RandomCrop(height, width)]  # fmt: skip
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if color_jitter > 0:
        jitter = {"brightness": color_jitter, "contrast": color_jitter, "saturation": color_jitter}
        steps.append(A.ColorJitter(**jitter, hue=min(color_jitter / 4, 0.5), p=0.8))
    return A.Compose(steps, seed=seed)


def apply_transform(transform, sample: Sample) -> Sample:
    """`sample` with `transform` (albumentations) applied to its image and masks (an id map as one `mask`)."""
    if sample.is_id_map:
        out = transform(image=sample.image, mask=sample.masks)
        return replace(sample, image=out["image"], masks=out["mask"])
    # albumentations cannot stack an empty mask list: carry one dummy mask through and drop it.
    masks = sample.masks if len(sample.masks) else np.zeros((1,) + sample.image.shape[:2], np.uint8)
    out = transform(image=sample.image, masks=masks)
    return replace(sample, image=out["image"], masks=np.asarray(out["masks"], np.uint8)[: len(sample.masks)])


@dataclass(eq=False)
class SegmentationDataset(Dataset):
    """A source's samples as Mask2Former inputs for one task, preprocessed by the model's image processor.

    Every item goes through the same steps as an image at inference: the image processor's intensity normalisation
    (images that are not 8-bit only), its `resize` (its filter; masks nearest), then, for training only, the random
    `augmentation`, then the processor's rescaling and normalisation. Without augmentation, `pixel_values` equal
    `image_processor(images=image)["pixel_values"][0]`.

    With `native_crops`, nothing is resized (as tiled inference, `mask2former_dinov3.tiling`, sees its windows):
    a training item is a random window of the processor's size cut from the image at its own resolution
    (`random_crop_window`, `crop_sample`; smaller images whole, padded by the collator), then augmented and
    normalised as above; an evaluation item is the whole image at its own resolution.

    Items: `pixel_values` (`(3, H, W)`), `mask_labels` (`(N, H, W)` bool), `class_labels` (`(N,)` long) and, with
    `for_evaluation`, `dataset_index` (the item's index), by which the metrics look up `ground_truth(index)`.

    Random draws (crop window, augmentation) come from a generator of `(seed, epoch, index)` alone, so an item is
    the same whichever worker builds it and however the run was interrupted and resumed; `set_epoch` (called by
    `EpochCallback` in a `Trainer` run) gives each epoch new draws.

    Args:
        source: a `CocoSegmentationSource`, `HFSegmentationSource`, `LabelImageSource`,
            `synthetic.SyntheticSegmentationSource` or any sequence of `Sample`.
        task: "instance", "semantic" or "panoptic".
        image_processor: the processor saved with the model (e.g. `Mask2FormerDINOv3ImageProcessor`), with a fixed
            `size={"height": H, "width": W}`.
        augmentation: random augmentation for training (see `build_augmentation`), or None.
        for_evaluation: add `dataset_index` to the items.
        native_crops: train on random native-resolution windows of the processor's size instead of resized images.
        seed: the random draws' seed (give each process of a distributed run its own value).
    """

    source: Any
    task: str
    image_processor: Any
    augmentation: Any = None
    for_evaluation: bool = False
    seed: int = 0
    native_crops: bool = False
    epoch: int = 0

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        processor_size(self.image_processor)

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentations of `epoch` (accelerate's `DataLoaderShard.set_epoch` and `EpochCallback` call it)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        sample = self.source[index]
        if self.native_crops:
            # Intensity normalisation over the whole image, then the window: tiled inference does the same.
            sample = replace(sample, image=image_for_model(sample.image, self.image_processor, sample.file_name))
            if not self.for_evaluation:
                window = random_crop_window(sample.image.shape[:2], processor_size(self.image_processor), rng)
                sample = crop_sample(sample, window)
        else:
            sample = resize_sample(sample, self.image_processor)
        if self.augmentation is not None:
            self.augmentation.set_random_seed(int(rng.integers(2**32)))
            sample = apply_transform(self.augmentation, sample)
        mask_labels, class_labels = training_targets(sample, self.task)
        item = {"pixel_values": pixel_values_of(sample.image, self.image_processor),
                "mask_labels": torch.from_numpy(mask_labels), "class_labels": torch.from_numpy(class_labels)}  # fmt: skip
        if self.for_evaluation:
            item["dataset_index"] = index
        return item

    def ground_truth(self, index: int) -> tuple[tuple[int, int], Any]:
        """`((height, width), ground truth)` of item `index` at the image's original size, the ground truth in the
        task's evaluator format (`evaluation_ground_truth`)."""
        sample = self.source[index]
        return tuple(sample.image.shape[:2]), evaluation_ground_truth(sample, self.task)


@dataclass
class SegmentationCollator:
    """Batches `SegmentationDataset` items: pads images (and masks) with zeros to the largest size, rounded up to a
    multiple of `pad_to_multiple_of` (as the image processor pads), with `pixel_mask` marking real pixels;
    `mask_labels`/`class_labels` stay lists (one entry per image, as Mask2Former expects); `dataset_index` becomes a
    long tensor when the items carry it.
    """

    pad_to_multiple_of: int = INPUT_SIZE_MULTIPLE

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        multiple = self.pad_to_multiple_of
        height = math.ceil(max(item["pixel_values"].shape[1] for item in items) / multiple) * multiple
        width = math.ceil(max(item["pixel_values"].shape[2] for item in items) / multiple) * multiple

        def pad(tensor: torch.Tensor) -> torch.Tensor:  # zeros below and to the right; no copy of what needs none
            right, bottom = width - tensor.shape[-1], height - tensor.shape[-2]
            return torch.nn.functional.pad(tensor, (0, right, 0, bottom)) if right or bottom else tensor

        ones = [torch.ones(item["pixel_values"].shape[1:], dtype=torch.long) for item in items]
        batch = {"pixel_values": torch.stack([pad(item["pixel_values"]) for item in items]),
                 "pixel_mask": torch.stack([pad(one) for one in ones]),
                 "mask_labels": [pad(item["mask_labels"]) for item in items],
                 "class_labels": [item["class_labels"] for item in items]}  # fmt: skip
        if "dataset_index" in items[0]:
            batch["dataset_index"] = torch.tensor([int(item["dataset_index"]) for item in items], dtype=torch.long)
        return batch


class EpochCallback(TrainerCallback):
    """Tells the training dataset each epoch before the epoch's DataLoader iterator (and its worker copies of the
    dataset) is made: accelerate's `set_epoch` reaches the dataset only when the sampler has no `set_epoch` of its own.

    Persistent workers keep the dataset of the first epoch, so they would repeat its augmentations: refused.
    """

    def __init__(self, dataset: SegmentationDataset, args):
        if args.dataloader_persistent_workers and args.dataloader_num_workers > 0:
            raise ValueError("--dataloader_persistent_workers: persistent workers keep the first epoch's dataset and would "
                             "repeat its augmentations every epoch (and break exact resume); leave it off.")  # fmt: skip
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        """Set the dataset's epoch (completed epochs: `state.epoch` counts fractions, also after a resume)."""
        self.dataset.set_epoch(math.floor(state.epoch + 1e-6))


# --------------------------------------------------------------------------------------------------------------------
# Instances per image (how many queries the data needs)
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class InstanceCount:
    """The largest number of segments one training image asks the model to find.

    Attributes:
        largest: the largest count found (thing instances that are not crowd regions, plus one per stuff class
            present for the panoptic task).
        image: where that image came from (file name or row), for messages.
        counted: how many images were counted.
        exact: False when `largest` is an upper bound (synthetic data) or only some images were counted.
    """

    largest: int
    image: str
    counted: int
    exact: bool = True


def count_instances(source, task: str = "instance", max_rows: int = 2000) -> InstanceCount | None:
    """The densest image of a source, counted without decoding images or masks where possible.

    Each source's `segment_classes(index)` gives the classes of an image's segments: COCO from the JSON annotations
    (every image), label images and the Hugging Face format from their label images / annotation PNGs (the first
    `max_rows`). A source with a `count_instances(task)` method (synthetic data) answers itself. A
    `torch.utils.data.Subset` (`--max_train_samples`) counts its images only. None for the semantic task (one
    segment per class present, so the count is bounded by the number of classes) or an unknown source.
    """
    if task == "semantic" or source is None:
        return None
    rows = list(range(len(source)))
    if isinstance(source, Subset):
        source, rows = source.dataset, list(source.indices)
    if hasattr(source, "count_instances"):
        return source.count_instances(task)
    if not hasattr(source, "segment_classes"):
        return None
    read = rows if isinstance(source, CocoSegmentationSource) else rows[:max_rows]
    counts = []
    for row in read:  # thing instances, plus one per stuff class present for the panoptic task
        labels, things, where = source.segment_classes(row)
        counts.append((int(things.sum()) + (len(set(labels[~things].tolist())) if task == "panoptic" else 0), where))
    largest, where = max(counts, key=lambda pair: pair[0], default=(0, ""))  # the first of the densest
    return InstanceCount(largest, where, len(read), exact=len(read) == len(rows))


def require_instances(source, task: str, split: str) -> None:
    """Check that a split holds at least one instance (instance / panoptic task; things that are not crowd regions),
    reading its images' `segment_classes` until the first instance.

    No instance in the train split is a `DataError` naming the split, what was skipped and why (a run would
    otherwise train on nothing and end with exit code 0); in another split it is a warning (its AP means nothing).
    """
    inner, rows = (source.dataset, source.indices) if isinstance(source, Subset) else (source, range(len(source)))
    if task == "semantic" or not hasattr(inner, "segment_classes"):
        return
    if any(inner.segment_classes(row)[1].any() for row in rows):
        return
    reasons = "; ".join(f"{n} {reason}" for reason, n in getattr(inner, "skipped", Counter()).items())
    where = getattr(inner, "annotation_file", None) or getattr(inner, "name", "")
    why = f"skipped {reasons}" if reasons else f"none of its {len(rows)} image(s) has an annotated instance"
    message = f"The {split} split ({where}) has no usable instance for the {task} task: {why}."
    if split == "train":
        raise DataError(f"{message} Nothing to train on: annotate instances with masks or polygons.")
    logger.warning("%s Its AP will be 0 or undefined.", message)


# --------------------------------------------------------------------------------------------------------------------
# Roboflow / COCO folder discovery
# --------------------------------------------------------------------------------------------------------------------


def find_roboflow_split(data_dir: str, split: str) -> tuple[str, str] | None:
    """`(annotation_file, image_dir)` of a split in Roboflow's COCO layout (`train/`, `valid/`, `test/`), or None."""
    for folder in ROBOFLOW_SPLITS[split]:
        candidate = os.path.join(data_dir, folder, ROBOFLOW_JSON)
        if os.path.isfile(candidate):
            return candidate, os.path.dirname(candidate)
    return None


def find_label_image_split(data_dir: str, split: str) -> list[tuple[str, str]] | None:
    """`(image, label image)` pairs of a split folder (`train/`, `valid/`, `test/`) of label images
    (`find_label_image_pairs`), or None if there is no such folder."""
    for folder in ROBOFLOW_SPLITS[split]:
        pairs = find_label_image_pairs(os.path.join(data_dir, folder))
        if pairs is not None:
            return pairs
    return None


__all__ = [
    "CocoSegmentationSource", "DataError", "EpochCallback", "HFSegmentationSource", "IGNORE_INDEX", "InstanceCount",
    "LabelImageSource", "LabelMap", "Sample", "SegmentationCollator", "SegmentationDataset", "TASKS", "apply_transform",
    "build_augmentation", "count_instances", "crop_sample", "evaluation_ground_truth", "expand_id_map",
    "find_label_image_pairs", "find_label_image_split", "find_roboflow_split", "id_map_of", "image_for_model",
    "label_map_from_coco", "label_map_from_semantic_class_to_id", "load_hf_dataset", "load_image", "painted_segments",
    "panoptic_segments", "pixel_values_of", "processor_size", "random_crop_window", "read_label_image",
    "require_instances", "resize_sample", "semantic_map", "to_rgb_array", "training_targets",
]  # fmt: skip
