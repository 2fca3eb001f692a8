"""Evaluation metrics for instance, semantic and panoptic segmentation, mergeable across processes.

Three accumulators share one pattern:

    evaluator = InstanceSegmentationEvaluator(class_names=["cat", "dog"])
    for batch in loader:
        ...
        evaluator.update(ground_truths, predictions, image_ids=batch_image_ids)
    metrics = evaluator.compute()        # or compute(records) with the merged records of every process

* `InstanceSegmentationEvaluator`: COCO mask AP computed by pycocotools (`COCOeval`, `iouType="segm"`).
* `SemanticSegmentationEvaluator`: mIoU, per-class IoU and pixel accuracy from a confusion matrix.
* `PanopticQualityEvaluator`: PQ / SQ / RQ (overall, things, stuff, per class) with the COCO panoptic rules.

Every evaluator keeps one record per image in `records` (image id -> record, picklable), so evaluation across
processes is a gather of records: `compute(records)` over the records of every process equals a single process's
result, whatever the split (records are taken in image-id order). `Mask2FormerTrainer` needs no gather of its own
(Trainer's gather already drops the images the distributed sampler repeated); its tiled evaluation gathers the
records with `accelerate.utils.gather_object`.
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


__all__ = [
    "InstanceSegmentationEvaluator",
    "PanopticQualityEvaluator",
    "SemanticSegmentationEvaluator",
    "instance_prediction_from_post_processed",
]

_NAN = float("nan")


# ---------------------------------------------------------------------------------------------------------------------
# Shared machinery: per-image records
# ---------------------------------------------------------------------------------------------------------------------


def _to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _sort_key(key: Hashable) -> tuple:
    # A canonical order that does not depend on how images were split into processes: pycocotools breaks score ties
    # by image order, and float sums depend on summation order.
    return (0, key, "") if isinstance(key, int) else (1, 0, str(key))


class _ImageRecords:
    """Per-image records keyed by image id (`records`); `compute` turns any such records into metrics."""

    def __init__(self):
        self.records: dict[Hashable, Any] = {}

    def _compute_from_records(self, records: list[Any]) -> dict:
        raise NotImplementedError

    def _record(self, gt: Any, pred: Any, index: int) -> Any:
        raise NotImplementedError

    @staticmethod
    def _per_image(items: Any, what: str) -> list:
        if isinstance(items, Mapping):
            return [items]
        if isinstance(items, (list, tuple)):
            return list(items)
        raise ValueError(
            f"{what} must be a dict (one image) or a list of dicts (one per image); got {type(items).__name__}."
        )

    def update(self, ground_truths: Any, predictions: Any, image_ids: Sequence[int | str] | None = None) -> None:
        """Add images: one ground truth and one prediction per image, in the subclass's format (a single image, a
        list, or, for semantic maps, a `(B, H, W)` batch), named by `image_ids` (default: the next free numbers)."""
        ground_truths = self._per_image(ground_truths, "ground_truths")
        predictions = self._per_image(predictions, "predictions")
        if len(ground_truths) != len(predictions):
            raise ValueError(f"Got {len(ground_truths)} ground truths but {len(predictions)} predictions.")
        if image_ids is None:
            image_ids = range(len(self.records), len(self.records) + len(ground_truths))
        image_ids = [i.item() if hasattr(i, "item") else i for i in image_ids]
        if len(image_ids) != len(ground_truths):
            raise ValueError(f"Got {len(image_ids)} image_ids for {len(ground_truths)} images; pass one id per image.")
        for image_id, gt, pred in zip(image_ids, ground_truths, predictions):
            if image_id in self.records:
                raise ValueError(f"Image id {image_id!r} was already added; each image must be added once.")
            self.records[image_id] = self._record(gt, pred, image_id)

    def compute(self, records: dict | None = None) -> dict:
        """The metrics over `records` (default: this evaluator's; pass the merged records of every process)."""
        records = self.records if records is None else records
        if not records:
            raise ValueError(f"{type(self).__name__}.compute() was called before any image was added with update().")
        keys = sorted(records, key=_sort_key)
        result = self._compute_from_records([records[k] for k in keys])
        result["num_images"] = len(keys)
        return result


def _class_names(class_names: Mapping[int, str] | Sequence[str] | None) -> dict[int, str] | None:
    if class_names is None:
        return None
    if isinstance(class_names, Mapping):
        return {int(k): str(v) for k, v in class_names.items()}
    return {i: str(name) for i, name in enumerate(class_names)}


# ---------------------------------------------------------------------------------------------------------------------
# Instance segmentation: COCO mask AP with pycocotools
# ---------------------------------------------------------------------------------------------------------------------


def _binary_masks(masks: Any, what: str) -> np.ndarray:
    array = _to_numpy(masks)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(
            f"{what} must be binary masks of shape (num_instances, height, width); got shape {array.shape}."
        )
    if array.dtype == bool:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return array > 0.5  # 0/1 float maps (e.g. return_binary_maps=True) or probabilities
    return array != 0


def _encode_masks(masks: Any, size: tuple[int, int] | None, what: str) -> tuple[list[dict], tuple[int, int] | None]:
    """Compressed RLEs (pycocotools) of masks given as an array, a list of 2-D arrays, RLEs or polygons."""
    if isinstance(masks, (list, tuple)):
        if len(masks) == 0:
            return [], size
        if all(
            isinstance(m, Mapping) or (isinstance(m, list) and (not m or isinstance(m[0], (list, tuple))))
            for m in masks
        ):
            return _encode_coco_segmentations(masks, size, what)
        masks = np.stack([_to_numpy(m) for m in masks]) if len(masks) else masks
    array = _binary_masks(masks, what)
    mask_size = (int(array.shape[1]), int(array.shape[2]))
    if size is not None and tuple(size) != mask_size:
        raise ValueError(f"{what} have size {mask_size} but the image size was given as {tuple(size)}.")
    if array.shape[0] == 0:
        return [], mask_size
    rles = mask_utils.encode(np.asfortranarray(array.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(s) for s in rle["size"]], "counts": rle["counts"]} for rle in rles], mask_size


def _encode_coco_segmentations(segmentations, size, what) -> tuple[list[dict], tuple[int, int]]:
    rles = []
    for segmentation in segmentations:
        if isinstance(segmentation, Mapping):
            rle_size = tuple(int(s) for s in segmentation["size"])
            if isinstance(segmentation["counts"], list):  # uncompressed RLE
                rle = mask_utils.frPyObjects(dict(segmentation), *rle_size)
            else:
                counts = segmentation["counts"]
                rle = {"size": list(rle_size), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        else:  # polygons: a list of flat [x0, y0, x1, y1, ...] lists
            if size is None:
                raise ValueError(f"{what} include polygons; pass the image `size` (height, width) to rasterise them.")
            rle = mask_utils.merge(mask_utils.frPyObjects([list(map(float, p)) for p in segmentation], *size))
            rle_size = tuple(int(s) for s in rle["size"])
        if size is None:
            size = rle_size
        elif tuple(size) != rle_size:
            raise ValueError(f"{what}: an RLE of size {rle_size} does not match the image size {tuple(size)}.")
        rles.append({"size": [int(s) for s in rle["size"]], "counts": rle["counts"]})
    return rles, tuple(size)


def _labels(values: Any, count: int, what: str, dtype=np.int64) -> np.ndarray:
    array = _to_numpy(values).reshape(-1) if values is not None else np.zeros(0)
    if array.shape[0] != count:
        raise ValueError(f"{what} has {array.shape[0]} entries for {count} masks; give one per mask.")
    return array.astype(dtype)


def instance_prediction_from_post_processed(result: Mapping, image_size: tuple[int, int] | None = None) -> dict:
    """Turn one result of `post_process_instance_segmentation` into the evaluator's prediction format.

    Args:
        result: `{"segmentation": ..., "segments_info": [{"id", "label_id", "score"}, ...]}` where `segmentation` is
            `(N, H, W)` binary maps in `segments_info` order (`return_binary_maps=True`, recommended: instances may
            overlap), or an `(H, W)` map of segment ids (the default output; -1 where no instance), or `None`.
        image_size: (height, width), only needed when `segmentation` is `None`.

    Returns:
        `{"masks": bool (N, H, W), "labels": int64 (N,), "scores": float64 (N,)}`.
    """
    if not isinstance(result, Mapping) or "segments_info" not in result:
        raise ValueError("Expected one post-processed result: a dict with 'segmentation' and 'segments_info'.")
    segments = list(result["segments_info"])
    segmentation = result.get("segmentation")
    labels = np.array([s["label_id"] for s in segments], dtype=np.int64)
    scores = np.array([s["score"] for s in segments], dtype=np.float64)
    if segmentation is None:
        if segments:
            raise ValueError("segments_info lists segments but segmentation is None.")
        if image_size is None:
            raise ValueError("segmentation is None: pass image_size=(height, width) for this image.")
        return {"masks": np.zeros((0, *image_size), dtype=bool), "labels": labels, "scores": scores}
    if isinstance(segmentation, (list, tuple)):
        raise ValueError(
            "This result holds transformers' own run-length encoding (return_coco_annotation=True), which is not COCO "
            "RLE. Post-process with return_binary_maps=True instead."
        )
    segmentation = _to_numpy(segmentation)
    if segmentation.ndim == 3:
        if segmentation.shape[0] != len(segments):
            raise ValueError(
                f"segmentation holds {segmentation.shape[0]} binary maps but segments_info {len(segments)} segments."
            )
        masks = _binary_masks(segmentation, "segmentation")
    elif segmentation.ndim == 2:
        masks = (
            np.stack([segmentation == s["id"] for s in segments])
            if segments
            else np.zeros((0, *segmentation.shape), dtype=bool)
        )
    else:
        raise ValueError(
            f"segmentation must be (N, H, W) binary maps or an (H, W) id map; got shape {segmentation.shape}."
        )
    if image_size is not None and tuple(masks.shape[1:]) != tuple(image_size):
        raise ValueError(
            f"Predicted masks are {tuple(masks.shape[1:])} but the image is {tuple(image_size)}: pass "
            f"target_sizes=[(height, width), ...] to post_process_instance_segmentation."
        )
    return {"masks": masks, "labels": labels, "scores": scores}


def _coco_annotation(annotation_id: int, image_id: int, label: int, rle: dict, iscrowd: int = 0, **extra) -> dict:
    """One COCO mask annotation (ground truth, or a detection when `score` is passed) for pycocotools."""
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": label,
        "segmentation": dict(rle),
        "area": float(mask_utils.area(rle)),
        "bbox": mask_utils.toBbox(rle).tolist(),
        "iscrowd": iscrowd,
        **extra,
    }


class InstanceSegmentationEvaluator(_ImageRecords):
    """COCO mask AP (pycocotools `COCOeval`, `iouType="segm"`), accumulated image by image.

    Ground truth, one dict per image:
        `masks`: binary masks `(N, H, W)` (numpy/torch, bool or 0/1; floats are thresholded at 0.5), a list of
        `(H, W)` masks, or a list of COCO segmentations (RLE dicts, compressed or not, or polygon lists);
        `labels`: `(N,)` class ids; `iscrowd`: optional `(N,)` 0/1 (crowd regions are ignored as in COCO);
        `size`: optional `(H, W)`, needed only for polygons or when there is no mask at all.
    Predictions, one dict per image: `masks` (as above), `labels` `(N,)`, `scores` `(N,)` —
    `instance_prediction_from_post_processed` builds it from `post_process_instance_segmentation`'s output.
    Ground truth and predictions of one image must have the same size (post-process with `target_sizes`).

    Args:
        class_names: names of the class ids (a list, index = id, or a dict id -> name). When given, they fix the
            category set and `map_per_class` is keyed by name; other labels raise. Otherwise the categories are the
            labels seen in ground truth or predictions, and `map_per_class` is keyed by id.
        max_detections: detections per image kept by COCOeval (its largest `maxDets`; COCO uses 100).
        area_ranges: `{"small": (low, high), "medium": ..., "large": ...}` in pixels, for `map_small/medium/large`
            (default: COCO's absolute ranges, < 32², 32²-96², > 96²). Data whose size classes are defined otherwise
            (e.g. relative to the image, as the synthetic shapes) pass their own so the report matches them.

    `compute()` returns `map` (AP@[.5:.95]), `map_50`, `map_75`, `map_small`, `map_medium`, `map_large` (in
    `area_ranges`), `mar_100` (AR at `max_detections`), `map_per_class`
    and `num_images`. A value COCO reports as -1 (no ground truth in that class / area range) is NaN; classes
    without any ground truth are NaN in `map_per_class` and, as in COCO, do not enter `map`.
    """

    def __init__(
        self,
        class_names: Mapping[int, str] | Sequence[str] | None = None,
        max_detections: int = 100,
        area_ranges: Mapping[str, Sequence[float]] | None = None,
    ):
        super().__init__()
        self.class_names = _class_names(class_names)
        if max_detections < 1:
            raise ValueError(f"max_detections must be at least 1, got {max_detections}.")
        self.max_detections = int(max_detections)
        self.area_ranges = _area_ranges(area_ranges)

    def _record(self, gt: Mapping, pred: Mapping, index: int) -> dict:
        for what, item, required, hint in (
            ("ground truth", gt, ("masks", "labels"), "+ optional 'iscrowd', 'size'"),
            ("prediction", pred, ("masks", "labels", "scores"), "use instance_prediction_from_post_processed on "
             "post-processed outputs"),
        ):  # fmt: skip
            if not isinstance(item, Mapping):
                raise ValueError(f"Each {what} must be a dict; got {type(item).__name__}.")
            missing = [k for k in required if k not in item]
            if missing:
                raise ValueError(f"{what} of image {index} lacks {missing}; expected keys {list(required)} ({hint}).")
        size = tuple(int(s) for s in gt["size"]) if gt.get("size") is not None else None
        gt_rles, gt_size = _encode_masks(gt["masks"], size, f"ground-truth masks of image {index}")
        try:
            pred_rles, pred_size = _encode_masks(pred["masks"], gt_size, f"predicted masks of image {index}")
        except ValueError as error:
            raise ValueError(
                f"{error} Predictions must be at the ground truth's resolution: pass target_sizes=[(height, width), "
                f"...] to post_process_instance_segmentation."
            ) from None
        gt_labels = _labels(gt["labels"], len(gt_rles), f"ground-truth labels of image {index}")
        iscrowd = _labels(gt.get("iscrowd", np.zeros(len(gt_rles))), len(gt_rles), f"iscrowd of image {index}")
        pred_labels = _labels(pred["labels"], len(pred_rles), f"predicted labels of image {index}")
        scores = _labels(pred["scores"], len(pred_rles), f"scores of image {index}", dtype=np.float64)
        if self.class_names is not None:
            unknown = sorted(set(gt_labels.tolist() + pred_labels.tolist()) - set(self.class_names))
            if unknown:
                raise ValueError(
                    f"Labels {unknown} of image {index} are not in class_names ({sorted(self.class_names)})."
                )
        return {
            "size": gt_size or pred_size or (0, 0),
            "gt": [(rle, int(lab), int(c)) for rle, lab, c in zip(gt_rles, gt_labels, iscrowd)],
            "pred": [(rle, int(lab), float(s)) for rle, lab, s in zip(pred_rles, pred_labels, scores)],
        }

    def _compute_from_records(self, records: list[dict]) -> dict:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        if self.class_names is not None:
            category_ids = sorted(self.class_names)
        else:
            category_ids = sorted({lab for r in records for _, lab, _ in r["gt"] + r["pred"]})
        images, gt_annotations, dt_annotations = [], [], []
        for image_id, record in enumerate(records, start=1):
            height, width = record["size"]
            images.append({"id": image_id, "height": height, "width": width})
            # Annotation ids start at 1: COCOeval stores matched ids in arrays where 0 means "unmatched".
            for rle, label, iscrowd in record["gt"]:
                gt_annotations.append(_coco_annotation(len(gt_annotations) + 1, image_id, label, rle, iscrowd=iscrowd))
            for rle, label, score in record["pred"]:
                dt_annotations.append(_coco_annotation(len(dt_annotations) + 1, image_id, label, rle, score=score))
        categories = [{"id": c, "name": str(c)} for c in category_ids]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco_gt, coco_dt = COCO(), COCO()
            coco_gt.dataset = {"images": images, "annotations": gt_annotations, "categories": categories}
            # Built directly rather than with loadRes, which fails on an empty detection list.
            coco_dt.dataset = {"images": images, "annotations": dt_annotations, "categories": categories}
            coco_gt.createIndex()
            coco_dt.createIndex()
            evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
            evaluator.params.maxDets = [1, 10, self.max_detections]
            if self.area_ranges is not None:  # same order as COCOeval's labels: all, small, medium, large
                evaluator.params.areaRng = [evaluator.params.areaRng[0], *map(list, self.area_ranges.values())]
            if category_ids:
                evaluator.evaluate()
                evaluator.accumulate()
                evaluator.summarize()
        # Neither ground truth nor predictions: nothing is defined.
        stats = [float(s) for s in evaluator.stats] if category_ids else [-1.0] * 12
        names = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")
        result = {name: _NAN if value < 0 else value for name, value in zip(names, stats[:6] + stats[8:9])}
        result["map_per_class"] = {}
        for k, category_id in enumerate(category_ids):
            # precision[T, R, K, A, M]: all IoU thresholds and recall points, area "all", largest maxDets.
            precision = evaluator.eval["precision"][:, :, k, 0, -1]
            valid = precision[precision > -1]
            key = self.class_names[category_id] if self.class_names is not None else category_id
            result["map_per_class"][key] = float(valid.mean()) if valid.size else _NAN
        return result


def _area_ranges(area_ranges: Mapping[str, Sequence[float]] | None) -> dict[str, tuple[float, float]] | None:
    if area_ranges is None:
        return None
    names = ("small", "medium", "large")
    if not isinstance(area_ranges, Mapping) or sorted(area_ranges) != sorted(names):
        raise ValueError(f"area_ranges must map exactly {list(names)} to (low, high) pixel areas, got {area_ranges!r}.")
    ranges = {}
    for name in names:
        value = area_ranges[name]
        if len(value) != 2 or not 0 <= float(value[0]) < float(value[1]):
            raise ValueError(f"area_ranges[{name!r}] must be (low, high) with 0 <= low < high, got {value!r}.")
        ranges[name] = (float(value[0]), float(value[1]))
    return ranges


# ---------------------------------------------------------------------------------------------------------------------
# Semantic segmentation: confusion matrix
# ---------------------------------------------------------------------------------------------------------------------


class SemanticSegmentationEvaluator(_ImageRecords):
    """Mean IoU, per-class IoU and pixel accuracy from an accumulated confusion matrix.

    `update(ground_truths, predictions, image_ids=None)` takes per image an `(H, W)` map of class ids (numpy or
    torch; a list of maps, or a `(B, H, W)` batch). Ground-truth pixels equal to `ignore_index` are left out.

    Args:
        num_classes: class ids are 0 .. num_classes - 1.
        ignore_index: ground-truth value of pixels that are not evaluated (default 255; `None` for none).
        class_names: optional names (list, index = id, or dict id -> name) keying `per_class_iou`.

    `compute()` returns `mean_iou` (mean over classes present in ground truth or prediction; a class absent from
    both has NaN IoU and is left out), `per_class_iou`, `pixel_accuracy`, `mean_accuracy` (mean per-class recall
    over classes present in ground truth) and `num_images`.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        class_names: Mapping[int, str] | Sequence[str] | None = None,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}.")
        self.num_classes = int(num_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            raise ValueError(
                f"ignore_index={ignore_index} is also a class id (num_classes={num_classes}); use a value outside "
                f"0..{num_classes - 1} (e.g. 255)."
            )
        self.class_names = _class_names(class_names)

    @staticmethod
    def _per_image(maps: Any, what: str) -> list[np.ndarray]:
        """Ground-truth / predicted class-id maps: `(H, W)` each, as a list or a `(B, H, W)` batch."""
        if isinstance(maps, (list, tuple)):
            arrays = [_to_numpy(m) for m in maps]
        else:
            array = _to_numpy(maps)
            arrays = [array] if array.ndim == 2 else list(array) if array.ndim == 3 else None
            if arrays is None:
                raise ValueError(
                    f"{what} must be an (H, W) map, a (B, H, W) batch or a list of maps; got {array.shape}."
                )
        for array in arrays:
            if array.ndim != 2 or not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
                raise ValueError(
                    f"{what}: each map must be an (H, W) integer array of class ids; got {array.dtype} {array.shape}."
                )
        return arrays

    def _record(self, gt: np.ndarray, pred: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        if gt.shape != pred.shape:
            raise ValueError(
                f"Image {index}: ground truth is {gt.shape} but prediction is {pred.shape}; post-process with "
                f"target_sizes=[(height, width)] so they match."
            )
        gt, pred = gt.astype(np.int64).ravel(), pred.astype(np.int64).ravel()
        valid = np.ones(gt.shape, dtype=bool) if self.ignore_index is None else gt != self.ignore_index
        gt, pred = gt[valid], pred[valid]
        for what, values in (("ground truth", gt), ("prediction", pred)):
            if values.size and (values.min() < 0 or values.max() >= self.num_classes):
                bad = np.unique(values[(values < 0) | (values >= self.num_classes)])[:10].tolist()
                raise ValueError(
                    f"Image {index}: {what} holds class ids {bad} outside 0..{self.num_classes - 1} (ignore_index="
                    f"{self.ignore_index}). Fix num_classes / ignore_index, or remap the labels."
                )
        # Sparse per-image counts: merging stays exact, and a duplicate image can be dropped after the fact.
        counts = np.bincount(gt * self.num_classes + pred, minlength=self.num_classes**2)
        flat = np.flatnonzero(counts)
        return flat.astype(np.int64), counts[flat].astype(np.int64)

    def confusion_matrix(self, records: dict | None = None) -> np.ndarray:
        """`(num_classes, num_classes)` pixel counts of `records` (default: this evaluator's), rows = ground truth,
        columns = prediction."""
        return self._confusion(list((self.records if records is None else records).values()))

    def _confusion(self, records) -> np.ndarray:
        size = self.num_classes**2
        matrix = np.zeros(size, dtype=np.int64)
        for flat, counts in records:
            np.add.at(matrix, flat, counts)
        return matrix.reshape(self.num_classes, self.num_classes)

    def _compute_from_records(self, records) -> dict:
        matrix = self._confusion(records)
        true_positive = np.diag(matrix).astype(np.float64)
        gt_total = matrix.sum(axis=1).astype(np.float64)
        pred_total = matrix.sum(axis=0).astype(np.float64)
        union = gt_total + pred_total - true_positive
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, true_positive / union, np.nan)
            accuracy = np.where(gt_total > 0, true_positive / gt_total, np.nan)
        total = matrix.sum()
        names = self.class_names or {}
        return {
            "mean_iou": float(np.nanmean(iou)) if np.any(union > 0) else _NAN,
            "per_class_iou": {names.get(c, c): float(iou[c]) for c in range(self.num_classes)},
            "pixel_accuracy": float(true_positive.sum() / total) if total else _NAN,
            "mean_accuracy": float(np.nanmean(accuracy)) if np.any(gt_total > 0) else _NAN,
        }


# ---------------------------------------------------------------------------------------------------------------------
# Panoptic segmentation: PQ / SQ / RQ
# ---------------------------------------------------------------------------------------------------------------------


def _panoptic_parts(item: Mapping, what: str) -> tuple[np.ndarray, list[Mapping]]:
    if not isinstance(item, Mapping):
        raise ValueError(f"Each {what} must be a dict with 'segmentation' (or 'panoptic_map') and 'segments_info'.")
    id_map = item.get("segmentation", item.get("panoptic_map"))
    if id_map is None or "segments_info" not in item:
        raise ValueError(
            f"{what} needs an (H, W) id map under 'segmentation' (or 'panoptic_map') and a 'segments_info' list."
        )
    id_map = _to_numpy(id_map)
    if id_map.ndim != 2:
        raise ValueError(f"{what}: the id map must be (H, W); got shape {id_map.shape}.")
    if np.issubdtype(id_map.dtype, np.floating) and not np.all(id_map == np.round(id_map)):
        raise ValueError(f"{what}: the id map holds non-integer values.")
    return id_map.astype(np.int64), list(item["segments_info"])


class PanopticQualityEvaluator(_ImageRecords):
    """Panoptic quality (PQ = SQ x RQ) with the COCO panoptic rules.

    Per image:
        ground truth: `{"segmentation" (or "panoptic_map"): (H, W) segment-id map, "segments_info": [{"id",
        "category_id", "iscrowd" (optional)}, ...]}`; pixels equal to `void_id` are void (unlabelled), any other
        id must be listed.
        prediction: what `post_process_panoptic_segmentation` returns: `{"segmentation": (H, W) id map,
        "segments_info": [{"id", "label_id" (or "category_id"), ...}, ...]}`; pixels whose id is not listed (0, or
        -1 for an empty result) belong to no segment, and such ids must be <= 0.

    Rules: a predicted and a ground-truth segment of the same category match when IoU > 0.5, where pixels of the
    prediction falling in void do not count in the union. Unmatched ground truth is a false negative, except crowd
    segments (`iscrowd=1`), which never match. An unmatched prediction is a false positive unless more than half of
    it lies on void or on crowd regions of its own category. Segments without pixels are ignored. Per category,
    PQ = sum(IoU of matches) / (TP + FP/2 + FN/2); categories with no TP, FP or FN are left out of the averages.

    Args:
        categories: `[{"id", "name", "isthing"}, ...]` (or a dict id -> {"name", "isthing"}); ids are the class ids
            used in both ground truth and predictions (for Mask2Former, its label ids).
        void_id: ground-truth segment id of void pixels (default 0).

    `compute()` returns `pq`, `sq`, `rq`, the same with `_things` / `_stuff` suffixes, `pq_per_class` (name ->
    PQ; NaN for categories left out), `per_class` (name -> {"pq", "sq", "rq", "tp", "fp", "fn"}), `num_categories`
    (`{"all", "things", "stuff"}` counted in the averages) and `num_images`.
    """

    def __init__(self, categories: Sequence[Mapping] | Mapping[int, Mapping], void_id: int = 0):
        super().__init__()
        if isinstance(categories, Mapping):
            categories = [{"id": k, **v} for k, v in categories.items()]
        parsed = {}
        for category in categories:
            if "id" not in category or "isthing" not in category:
                raise ValueError(f"Each category needs 'id' and 'isthing' (and ideally 'name'); got {category}.")
            parsed[int(category["id"])] = (str(category.get("name", category["id"])), bool(category["isthing"]))
        if not parsed:
            raise ValueError("categories is empty: list every thing and stuff category with its 'isthing' flag.")
        self.categories = parsed
        self.void_id = int(void_id)

    def _segments(self, segments: list[Mapping], what: str, label_keys: tuple[str, ...]) -> dict[int, tuple[int, int]]:
        parsed = {}
        for segment in segments:
            label_key = next((k for k in label_keys if k in segment), None)
            if "id" not in segment or label_key is None:
                raise ValueError(f"{what}: each segment needs 'id' and one of {label_keys}; got {segment}.")
            category = int(segment[label_key])
            if category not in self.categories:
                raise ValueError(
                    f"{what}: category {category} is not among the evaluator's categories {sorted(self.categories)}."
                )
            segment_id = int(segment["id"])
            if segment_id in parsed:
                raise ValueError(f"{what}: segment id {segment_id} is listed twice.")
            parsed[segment_id] = (category, int(segment.get("iscrowd", 0)))
        return parsed

    def _record(self, gt: Mapping, pred: Mapping, index: int) -> dict[int, list]:
        gt_map, gt_segments_list = _panoptic_parts(gt, f"ground truth of image {index}")
        pred_map, pred_segments_list = _panoptic_parts(pred, f"prediction of image {index}")
        if gt_map.shape != pred_map.shape:
            raise ValueError(
                f"Image {index}: ground truth is {gt_map.shape} but prediction is {pred_map.shape}; post-process with "
                f"target_sizes=[(height, width)] so they match."
            )
        gt_segments = self._segments(gt_segments_list, f"ground truth of image {index}", ("category_id",))
        pred_segments = self._segments(pred_segments_list, f"prediction of image {index}", ("category_id", "label_id"))
        if self.void_id in gt_segments:
            raise ValueError(f"ground truth of image {index}: segment id {self.void_id} is the void_id.")

        gt_ids, gt_index = np.unique(gt_map, return_inverse=True)
        unknown = [int(i) for i in gt_ids if i != self.void_id and int(i) not in gt_segments]
        if unknown:
            raise ValueError(
                f"ground truth of image {index}: ids {unknown[:10]} appear in the map but not in segments_info (void "
                f"pixels must be {self.void_id}, the void_id)."
            )
        pred_ids, pred_index = np.unique(pred_map, return_inverse=True)
        unlisted = [int(i) for i in pred_ids if int(i) not in pred_segments]
        if any(i > 0 for i in unlisted):
            raise ValueError(
                f"prediction of image {index}: ids {[i for i in unlisted if i > 0][:10]} appear in the map but not in "
                f"segments_info (only ids <= 0 may mark pixels without a segment)."
            )
        # Joint histogram of (gt id, pred id) pairs: intersections of every segment pair in one bincount.
        joint = np.bincount(
            gt_index.ravel() * len(pred_ids) + pred_index.ravel(), minlength=len(gt_ids) * len(pred_ids)
        )
        intersection = joint.reshape(len(gt_ids), len(pred_ids))
        gt_area, pred_area = intersection.sum(axis=1), intersection.sum(axis=0)
        gt_pos = {int(i): n for n, i in enumerate(gt_ids)}
        pred_pos = {int(i): n for n, i in enumerate(pred_ids)}
        # Pixels of each prediction on void: left out of the union, and ignored for false positives.
        void = intersection[gt_pos[self.void_id]] if self.void_id in gt_pos else np.zeros(len(pred_ids), np.int64)
        gt_rows = {gt_pos[s]: v for s, v in gt_segments.items() if s in gt_pos}  # row -> (category, iscrowd)
        pred_cols = {pred_pos[s]: v[0] for s, v in pred_segments.items() if s in pred_pos}  # column -> category

        stats: dict[int, list] = defaultdict(lambda: [0, 0, 0, 0.0])  # category -> [tp, fp, fn, iou_sum]
        matched_rows, matched_cols = set(), set()
        for row, col in zip(*np.nonzero(intersection)):  # only overlapping pairs can match
            if row not in gt_rows or col not in pred_cols or gt_rows[row][1] or pred_cols[col] != gt_rows[row][0]:
                continue
            overlap = int(intersection[row, col])
            iou = overlap / (int(gt_area[row]) + int(pred_area[col]) - overlap - int(void[col]))
            if iou > 0.5:  # IoU > 0.5 makes the match unique: no assignment step is needed
                stats[pred_cols[col]][0] += 1
                stats[pred_cols[col]][3] += iou
                matched_rows.add(row)
                matched_cols.add(col)
        crowd_rows: dict[int, list[int]] = defaultdict(list)
        for row, (category, crowd) in gt_rows.items():
            if crowd:
                crowd_rows[category].append(row)
            elif row not in matched_rows:
                stats[category][2] += 1
        for col, category in pred_cols.items():
            ignored = int(void[col]) + sum(int(intersection[row, col]) for row in crowd_rows[category])
            if col not in matched_cols and ignored / int(pred_area[col]) <= 0.5:
                stats[category][1] += 1
        return dict(stats)

    def _compute_from_records(self, records: list[dict[int, list]]) -> dict:
        totals = {c: [0, 0, 0, 0.0] for c in self.categories}
        for record in records:  # canonical image order: the IoU sums are bit-identical however images were sharded
            for category, values in record.items():
                totals[category] = [total + value for total, value in zip(totals[category], values)]
        per_class, included = {}, {"all": [], "things": [], "stuff": []}
        for category in sorted(self.categories):
            name, isthing = self.categories[category]
            tp, fp, fn, iou = totals[category]
            if tp + fp + fn == 0:
                per_class[name] = {"pq": _NAN, "sq": _NAN, "rq": _NAN, "tp": 0, "fp": 0, "fn": 0}
                continue
            rq = tp / (tp + 0.5 * fp + 0.5 * fn)
            sq = iou / tp if tp else 0.0
            per_class[name] = {"pq": sq * rq, "sq": sq, "rq": rq, "tp": tp, "fp": fp, "fn": fn}
            included["all"].append(name)
            included["things" if isthing else "stuff"].append(name)
        result = {}
        for group, suffix in (("all", ""), ("things", "_things"), ("stuff", "_stuff")):
            names = included[group]
            for metric in ("pq", "sq", "rq"):
                result[metric + suffix] = float(np.mean([per_class[n][metric] for n in names])) if names else _NAN
        result["pq_per_class"] = {name: v["pq"] for name, v in per_class.items()}
        result["per_class"] = per_class
        result["num_categories"] = {group: len(names) for group, names in included.items()}
        return result
