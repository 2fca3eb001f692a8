"""Evaluation metrics for instance, semantic and panoptic segmentation, mergeable across processes.

Three accumulators share one pattern:

    evaluator = InstanceSegmentationEvaluator(class_names=["cat", "dog"])
    for batch in loader:
        ...
        evaluator.update(ground_truths, predictions, image_ids=batch_image_ids)  # lists, one item per image
    metrics = evaluator.compute()        # or compute(records) with the merged records of every process

* `InstanceSegmentationEvaluator`: COCO mask AP: masks encoded by pycocotools, `COCOeval` run by faster-coco-eval
  (pycocotools' `COCOeval` with its matching in C++: the same numbers, and seconds instead of minutes for images with
  thousands of instances).
* `SemanticSegmentationEvaluator`: mIoU, per-class IoU and pixel accuracy from a confusion matrix.
* `PanopticQualityEvaluator`: PQ / SQ / RQ (overall, things, stuff, per class) with the COCO panoptic rules.

Every evaluator keeps one record per image in `records` (integer image id -> record, picklable), so evaluation
across processes is a gather of records: `compute(records)` over the records of every process equals a single
process's result, whatever the split (records are taken in image-id order). `Mask2FormerTrainer` needs no gather of
its own (Trainer's gather already drops the images the distributed sampler repeated); its tiled evaluation gathers
the records with `accelerate.utils.gather_object`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster
from pycocotools import mask as mask_utils


__all__ = [
    "InstanceSegmentationEvaluator", "PanopticQualityEvaluator", "SemanticSegmentationEvaluator",
    "instance_prediction_from_post_processed"
]  # fmt: skip

_NAN = float("nan")
COCO_MAX_DETECTIONS = 100  # COCO's maxDets: the cap of models with at most 100 queries, so their AP stays comparable
ENCODE_CHUNK_PIXELS = 2**25  # mask pixels encoded at once (32 MB of uint8)


def _to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # torch.Tensor, without importing torch
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _class_names(class_names: Mapping[int, str] | Sequence[str] | None) -> dict[int, str] | None:
    if class_names is None:
        return None
    items = class_names.items() if isinstance(class_names, Mapping) else enumerate(class_names)
    return {int(k): str(v) for k, v in items}


class _ImageRecords:
    """Per-image records keyed by integer image id (`records`); `compute` turns any such records into metrics."""

    def __init__(self):
        self.records: dict[int, Any] = {}

    def update(self, ground_truths: Sequence, predictions: Sequence, image_ids: Sequence[int] | None = None) -> None:
        """Add images: a list of ground truths and a list of predictions, one per image, in the subclass's format,
        named by `image_ids` (default: the next free numbers)."""
        if not isinstance(ground_truths, (list, tuple)) or not isinstance(predictions, (list, tuple)):
            raise ValueError("ground_truths and predictions must be lists, one item per image (wrap one image in [ ]).")
        if image_ids is None:
            image_ids = range(len(self.records), len(self.records) + len(ground_truths))
        image_ids = [int(i) for i in image_ids]
        if not len(ground_truths) == len(predictions) == len(image_ids):
            raise ValueError(f"Got {len(ground_truths)} ground truths, {len(predictions)} predictions and "
                             f"{len(image_ids)} image ids; pass one of each per image.")  # fmt: skip
        for image_id, gt, pred in zip(image_ids, ground_truths, predictions):
            if image_id in self.records:
                raise ValueError(f"Image id {image_id} was already added; each image must be added once.")
            self.records[image_id] = self._record(gt, pred, image_id)

    def compute(self, records: dict | None = None) -> dict:
        """The metrics over `records` (default: this evaluator's; pass the merged records of every process)."""
        records = self.records if records is None else records
        if not records:
            raise ValueError(f"{type(self).__name__}.compute() was called before any image was added with update().")
        # Image-id order, however the images were split over processes: COCOeval breaks score ties by image order,
        # and float sums depend on summation order.
        result = self._compute_from_records([records[k] for k in sorted(records)])
        result["num_images"] = len(records)
        return result


# ---------------------------------------------------------------------------------------------------------------------
# Instance segmentation: COCO mask AP
# ---------------------------------------------------------------------------------------------------------------------


def _masks(masks: Any, what: str) -> np.ndarray:
    array = _to_numpy(masks)
    if array.ndim != 3:
        raise ValueError(f"{what} must be binary masks of shape (num_instances, height, width); got shape "
                         f"{array.shape}.")  # fmt: skip
    return array


def _encode(masks: np.ndarray) -> list[dict]:
    # pycocotools encodes (H, W, N) Fortran-ordered uint8, a copy: made a chunk of masks at a time, it stays small
    # however many instances there are (2,000 masks at 1024 px would be 2 GB at once).
    step = max(1, ENCODE_CHUNK_PIXELS // max(1, masks[0].size if len(masks) else 1))
    return [rle for start in range(0, len(masks), step) for rle in mask_utils.encode(
        np.asfortranarray(masks[start : start + step].transpose(1, 2, 0) != 0, dtype=np.uint8))]  # fmt: skip


def _labels(values: Any, count: int, what: str, dtype=np.int64) -> np.ndarray:
    array = _to_numpy(values).reshape(-1)
    if array.shape[0] != count:
        raise ValueError(f"{what} has {array.shape[0]} entries for {count} masks; give one per mask.")
    return array.astype(dtype)


def instance_prediction_from_post_processed(result: Mapping, image_size: tuple[int, int] | None = None) -> dict:
    """One result of `post_process_instance_segmentation(..., return_binary_maps=True)` in the evaluator's format.

    `result["segmentation"]` holds `(N, H, W)` binary maps in `segments_info` order (instances may overlap); an
    image without segments may hold anything (upstream returns an `(H, W)` map of -1), its size is `image_size` or
    that map's. Returns `{"masks": bool (N, H, W), "labels": int64 (N,), "scores": float64 (N,)}`.
    """
    segments = list(result["segments_info"])
    segmentation = _to_numpy(result["segmentation"])
    if not segments:
        masks = np.zeros((0, *(image_size or segmentation.shape[-2:])), dtype=bool)
    elif segmentation.ndim == 3 and len(segmentation) == len(segments):
        masks = segmentation.astype(bool, copy=False)
    else:
        raise ValueError(f"Expected one (H, W) binary map per segment ({len(segments)}); got segmentation of shape "
                         f"{segmentation.shape}. Post-process with return_binary_maps=True.")  # fmt: skip
    labels = np.array([s["label_id"] for s in segments], dtype=np.int64)
    return {"masks": masks, "labels": labels, "scores": np.array([s["score"] for s in segments], dtype=np.float64)}


def _coco_annotation(image_id: int, label: int, rle: dict, iscrowd: int = 0, **extra) -> dict:
    """One COCO mask annotation (ground truth, or a detection when `score` is passed); ids are set later."""
    return {"image_id": image_id, "category_id": label, "segmentation": rle, "area": float(mask_utils.area(rle)),
            "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": iscrowd, **extra}  # fmt: skip


def _mean_of_defined(values: np.ndarray) -> float:
    # COCOeval marks undefined entries (no ground truth in that class / area range) with -1.
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else _NAN


class InstanceSegmentationEvaluator(_ImageRecords):
    """COCO mask AP (COCOeval, `iouType="segm"`), accumulated image by image.

    Ground truth, one dict per image: `masks` `(N, H, W)` (numpy or torch, bool or 0/1), `labels` `(N,)` class ids,
    optional `iscrowd` `(N,)` 0/1 (crowd regions are ignored as in COCO). Predictions, one dict per image: `masks`
    (as above, at the ground truth's size: post-process with `target_sizes`), `labels` `(N,)`, `scores` `(N,)`;
    `instance_prediction_from_post_processed` builds it from `post_process_instance_segmentation`'s output.

    Args:
        class_names: names of the class ids (a list, index = id, or a dict id -> name). When given, they fix the
            category set and `map_per_class` is keyed by name; other labels raise. Otherwise the categories are the
            labels seen in ground truth or predictions, and `map_per_class` is keyed by id.
        max_detections: detections per image (and class) that COCOeval keeps, the best-scoring: COCO's 100 by
            default. Every AP, and the AR, is computed at this cap, so a model that finds more objects per image
            than the cap must have a larger one (`Mask2FormerTrainer` uses its query count when above 100).
        area_ranges: `{"small": (low, high), "medium": ..., "large": ...}` in pixels, for `map_small/medium/large`
            (default: COCO's absolute ranges, < 32², 32²-96², > 96²). Data whose size classes are defined otherwise
            (e.g. relative to the image, as the synthetic shapes) pass their own so the report matches them.

    `compute()` returns `map` (AP@[.5:.95]), `map_50`, `map_75`, `map_small`, `map_medium`, `map_large` (in
    `area_ranges`), `mar_{max_detections}` (AR with up to `max_detections` detections: `mar_100` at COCO's cap),
    `map_per_class` and `num_images`. A value COCO reports as -1 (no ground truth in that class / area range) is NaN;
    classes without any ground truth are NaN in `map_per_class` and, as in COCO, do not enter `map`.
    """

    def __init__(self, class_names: Mapping[int, str] | Sequence[str] | None = None,
                 max_detections: int = COCO_MAX_DETECTIONS,
                 area_ranges: Mapping[str, Sequence[float]] | None = None):  # fmt: skip
        super().__init__()
        if max_detections < 1:
            raise ValueError(f"max_detections must be at least 1, got {max_detections}.")
        if area_ranges is not None and (
            sorted(area_ranges) != ["large", "medium", "small"]
            or not all(len(r) == 2 and 0 <= float(r[0]) < float(r[1]) for r in area_ranges.values())
        ):
            raise ValueError(f"area_ranges must map 'small', 'medium' and 'large' to (low, high) pixel areas with "
                             f"0 <= low < high; got {area_ranges!r}.")  # fmt: skip
        self.class_names = _class_names(class_names)
        self.max_detections = int(max_detections)
        self.area_ranges = area_ranges

    def _record(self, gt: Mapping, pred: Mapping, index: int) -> dict:
        for what, item, keys in (("ground truth", gt, ("masks", "labels")),
                                 ("prediction", pred, ("masks", "labels", "scores"))):  # fmt: skip
            if not isinstance(item, Mapping) or any(k not in item for k in keys):
                raise ValueError(f"The {what} of image {index} must be a dict with keys {list(keys)} (predictions: "
                                 "use instance_prediction_from_post_processed on post-processed outputs).")  # fmt: skip
        gt_masks = _masks(gt["masks"], f"ground-truth masks of image {index}")
        pred_masks = _masks(pred["masks"], f"predicted masks of image {index}")
        if pred_masks.shape[1:] != gt_masks.shape[1:]:
            raise ValueError(f"Image {index}: predicted masks are {pred_masks.shape[1:]} but the ground truth is "
                             f"{gt_masks.shape[1:]}; pass target_sizes=[(height, width), ...] to "
                             "post_process_instance_segmentation.")  # fmt: skip
        gt_labels = _labels(gt["labels"], len(gt_masks), f"ground-truth labels of image {index}")
        iscrowd = _labels(gt.get("iscrowd", np.zeros(len(gt_masks))), len(gt_masks), f"iscrowd of image {index}")
        pred_labels = _labels(pred["labels"], len(pred_masks), f"predicted labels of image {index}")
        scores = _labels(pred["scores"], len(pred_masks), f"scores of image {index}", dtype=np.float64)
        unknown = sorted(set(gt_labels.tolist() + pred_labels.tolist()) - set(self.class_names or ()))
        if self.class_names is not None and unknown:
            raise ValueError(f"Labels {unknown} of image {index} are not in class_names ({sorted(self.class_names)}).")
        return {
            "size": gt_masks.shape[1:],
            "gt": list(zip(_encode(gt_masks), gt_labels.tolist(), iscrowd.tolist())),
            "pred": list(zip(_encode(pred_masks), pred_labels.tolist(), scores.tolist())),
        }

    def _compute_from_records(self, records: list[dict]) -> dict:
        category_ids = sorted(self.class_names or {lab for r in records for _, lab, _ in r["gt"] + r["pred"]})
        images, truths, detections = [], [], []
        for image_id, record in enumerate(records, start=1):
            images.append({"id": image_id, "height": int(record["size"][0]), "width": int(record["size"][1])})
            truths += [_coco_annotation(image_id, label, rle, iscrowd=crowd) for rle, label, crowd in record["gt"]]
            detections += [_coco_annotation(image_id, label, rle, score=score) for rle, label, score in record["pred"]]
        # Ids from 1: COCOeval stores matched ids where 0 means "unmatched".
        for listed in (truths, detections):
            for annotation_id, annotation in enumerate(listed, start=1):
                annotation["id"] = annotation_id
        names = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", f"mar_{self.max_detections}")
        if not category_ids:  # neither ground truth nor predictions: nothing is defined
            return {**dict.fromkeys(names, _NAN), "map_per_class": {}}
        coco_gt, coco_dt = COCO(), COCO()
        categories = [{"id": c, "name": str(c)} for c in category_ids]
        # Built directly rather than with loadRes, which fails on an empty detection list.
        for coco, listed in ((coco_gt, truths), (coco_dt, detections)):
            coco.dataset = {"images": images, "annotations": listed, "categories": categories}
            coco.createIndex()
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="segm", print_function=lambda *args, **kwargs: None)
        # One cap, read straight from the accumulated arrays: COCOeval's summarize() reads AP at maxDets=100 only.
        evaluator.params.maxDets = [self.max_detections]
        if self.area_ranges is not None:  # same order as COCOeval's: all, small, medium, large
            evaluator.params.areaRng = [evaluator.params.areaRng[0]] + [
                [float(v) for v in self.area_ranges[name]] for name in ("small", "medium", "large")
            ]
        evaluator.evaluate()
        evaluator.accumulate()
        # precision[T, R, K, A] (IoU thresholds .50:.05:.95, recall points, classes, areas all/small/medium/large)
        precision, recall = evaluator.eval["precision"][..., -1], evaluator.eval["recall"][..., -1]
        values = [precision[..., 0], precision[0, ..., 0], precision[5, ..., 0], precision[..., 1], precision[..., 2],
                  precision[..., 3], recall[..., 0]]  # fmt: skip
        result = {name: _mean_of_defined(value) for name, value in zip(names, values)}
        result["map_per_class"] = {
            self.class_names[c] if self.class_names is not None else c: _mean_of_defined(precision[:, :, k, 0])
            for k, c in enumerate(category_ids)
        }
        return result


# ---------------------------------------------------------------------------------------------------------------------
# Semantic segmentation: confusion matrix
# ---------------------------------------------------------------------------------------------------------------------


class SemanticSegmentationEvaluator(_ImageRecords):
    """Mean IoU, per-class IoU and pixel accuracy from an accumulated confusion matrix.

    `update(ground_truths, predictions, image_ids=None)` takes per image an `(H, W)` integer map of class ids (numpy
    or torch). Ground-truth pixels equal to `ignore_index` are left out.

    Args:
        num_classes: class ids are 0 .. num_classes - 1.
        ignore_index: ground-truth value of pixels that are not evaluated (default 255; `None` for none).
        class_names: optional names (list, index = id, or dict id -> name) keying `per_class_iou`.

    `compute()` returns `mean_iou` (mean over classes present in ground truth or prediction; a class absent from
    both has NaN IoU and is left out), `per_class_iou`, `pixel_accuracy`, `mean_accuracy` (mean per-class recall
    over classes present in ground truth) and `num_images`.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255,
                 class_names: Mapping[int, str] | Sequence[str] | None = None):  # fmt: skip
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}.")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index={ignore_index} is also a class id (num_classes={num_classes}); use a "
                             f"value outside 0..{num_classes - 1} (e.g. 255).")  # fmt: skip
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.class_names = _class_names(class_names)

    def _record(self, gt: Any, pred: Any, index: int) -> tuple[np.ndarray, np.ndarray]:
        gt, pred = _to_numpy(gt), _to_numpy(pred)
        for what, array in (("ground truth", gt), ("prediction", pred)):
            if array.ndim != 2 or not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
                raise ValueError(f"Image {index}: the {what} must be an (H, W) integer map of class ids; got "
                                 f"{array.dtype} {array.shape}.")  # fmt: skip
        if gt.shape != pred.shape:
            raise ValueError(f"Image {index}: ground truth is {gt.shape} but prediction is {pred.shape}; post-process "
                             f"with target_sizes=[(height, width)] so they match.")  # fmt: skip
        gt, pred = gt.astype(np.int64).ravel(), pred.astype(np.int64).ravel()
        valid = gt != self.ignore_index if self.ignore_index is not None else slice(None)
        gt, pred = gt[valid], pred[valid]
        for what, values in (("ground truth", gt), ("prediction", pred)):
            bad = np.unique(values[(values < 0) | (values >= self.num_classes)])[:10].tolist()
            if bad:
                raise ValueError(f"Image {index}: {what} holds class ids {bad} outside 0..{self.num_classes - 1} "
                                 f"(ignore_index={self.ignore_index}). Fix num_classes / ignore_index, or remap the "
                                 "labels.")  # fmt: skip
        # Sparse per-image counts: merging stays exact, and a duplicate image can be dropped after the fact.
        counts = np.bincount(gt * self.num_classes + pred, minlength=self.num_classes**2)
        flat = np.flatnonzero(counts)
        return flat, counts[flat]

    def confusion_matrix(self, records: dict | None = None) -> np.ndarray:
        """`(num_classes, num_classes)` pixel counts of `records` (default: this evaluator's), rows = ground truth,
        columns = prediction."""
        matrix = np.zeros(self.num_classes**2, dtype=np.int64)
        for flat, counts in (self.records if records is None else records).values():
            np.add.at(matrix, flat, counts)
        return matrix.reshape(self.num_classes, self.num_classes)

    def _compute_from_records(self, records) -> dict:
        matrix = self.confusion_matrix(dict(enumerate(records)))
        true_positive = np.diag(matrix).astype(np.float64)
        gt_total, pred_total = matrix.sum(axis=1).astype(np.float64), matrix.sum(axis=0).astype(np.float64)
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


class PanopticQualityEvaluator(_ImageRecords):
    """Panoptic quality (PQ = SQ x RQ) with the COCO panoptic rules.

    Per image:
        ground truth: `{"segmentation": (H, W) segment-id map, "segments_info": [{"id", "category_id", "iscrowd"
        (optional)}, ...]}`; pixels equal to `void_id` are void (unlabelled), any other
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
        categories: `[{"id", "name", "isthing"}, ...]`; ids are the class ids used in both ground truth and
            predictions (for Mask2Former, its label ids).
        void_id: ground-truth segment id of void pixels (default 0).

    `compute()` returns `pq`, `sq`, `rq`, the same with `_things` / `_stuff` suffixes, `pq_per_class` (name ->
    PQ; NaN for categories left out), `per_class` (name -> {"pq", "sq", "rq", "tp", "fp", "fn"}), `num_categories`
    (`{"all", "things", "stuff"}` counted in the averages) and `num_images`.
    """

    def __init__(self, categories: Sequence[Mapping], void_id: int = 0):
        super().__init__()
        if not categories or not all("id" in c and "isthing" in c for c in categories):
            raise ValueError(f"categories must list every thing and stuff category as {{'id', 'name', 'isthing'}}; "
                             f"got {categories!r}.")  # fmt: skip
        self.categories = {int(c["id"]): (str(c.get("name", c["id"])), bool(c["isthing"])) for c in categories}
        self.void_id = int(void_id)

    def _segments(self, segments: list[Mapping], what: str, label_keys: tuple[str, ...]) -> dict[int, tuple[int, int]]:
        parsed = {}
        for segment in segments:
            label_key = next((k for k in label_keys if k in segment), None)
            if "id" not in segment or label_key is None:
                raise ValueError(f"{what}: each segment needs 'id' and one of {label_keys}; got {segment}.")
            category = int(segment[label_key])
            if category not in self.categories:
                raise ValueError(f"{what}: category {category} is not among the evaluator's categories "
                                 f"{sorted(self.categories)}.")  # fmt: skip
            segment_id = int(segment["id"])
            if segment_id in parsed:
                raise ValueError(f"{what}: segment id {segment_id} is listed twice.")
            parsed[segment_id] = (category, int(segment.get("iscrowd", 0)))
        return parsed

    def _record(self, gt: Mapping, pred: Mapping, index: int) -> dict[int, list]:
        maps = []
        for what, item in (("ground truth", gt), ("prediction", pred)):
            maps.append(_to_numpy(item.get("segmentation")) if isinstance(item, Mapping) else np.zeros(0))
            if maps[-1].ndim != 2 or "segments_info" not in item:
                raise ValueError(f"The {what} of image {index} must be a dict with an (H, W) id map under "
                                 "'segmentation' and a 'segments_info' list.")  # fmt: skip
        gt_map, pred_map = (m.astype(np.int64) for m in maps)
        if gt_map.shape != pred_map.shape:
            raise ValueError(f"Image {index}: ground truth is {gt_map.shape} but prediction is {pred_map.shape}; "
                             f"post-process with target_sizes=[(height, width)] so they match.")  # fmt: skip
        gt_segments = self._segments(gt["segments_info"], f"ground truth of image {index}", ("category_id",))
        pred_segments = self._segments(pred["segments_info"], f"prediction of image {index}",
                                       ("category_id", "label_id"))  # fmt: skip
        if self.void_id in gt_segments:
            raise ValueError(f"ground truth of image {index}: segment id {self.void_id} is the void_id.")

        gt_ids, gt_index = np.unique(gt_map, return_inverse=True)
        unknown = [int(i) for i in gt_ids if i != self.void_id and int(i) not in gt_segments]
        if unknown:
            raise ValueError(f"ground truth of image {index}: ids {unknown[:10]} appear in the map but not in "
                             f"segments_info (void pixels must be {self.void_id}, the void_id).")  # fmt: skip
        pred_ids, pred_index = np.unique(pred_map, return_inverse=True)
        unlisted = [int(i) for i in pred_ids if int(i) > 0 and int(i) not in pred_segments]
        if unlisted:
            raise ValueError(f"prediction of image {index}: ids {unlisted[:10]} appear in the map but not in "
                             "segments_info (only ids <= 0 may mark pixels without a segment).")  # fmt: skip
        # Joint histogram of (gt id, pred id) pairs: intersections of every segment pair in one bincount.
        pairs = gt_index.ravel() * len(pred_ids) + pred_index.ravel()
        intersection = np.bincount(pairs, minlength=len(gt_ids) * len(pred_ids)).reshape(len(gt_ids), len(pred_ids))
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
