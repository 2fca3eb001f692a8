"""Mask2Former's post-processing, resized once and in bounded memory.

Upstream's `post_process_{instance,semantic,panoptic}_segmentation` first resize every query's mask logits to
384x384, whatever the model's mask size, and only then to the target size (transformers issue #44901): masks at a
quarter of a 2048 px input lose detail to the 384 px intermediate. Upstream also builds every query's mask at that
size at once, and the instance path then every query's binary mask at the target size: `(queries, H, W)` floats,
10 GB for 2,500 queries at 1024 px.

The functions here give upstream's results with one resize, from the model's mask size straight to the target size
(or none without a target size), and never hold more than a chunk of queries' masks at the target size:

* instance: only queries whose class score reaches `threshold` can pass it (the mask score is below 1), so only
  those are resized, a chunk at a time, in upstream's order; binary maps come back as bool;
* semantic: the class-weighted sum of mask probabilities is accumulated a chunk of queries at a time;
* panoptic: upstream's own `compute_segments` on the queries that pass `threshold`, with the probabilities at the
  model's mask size, so that it resizes them once (its memory grows with the kept queries, not all queries).

Where the model's mask size is 384x384 and equals the target size, no resize is involved and the results are
upstream's (tested); `upstream/mask2former_fixes/0004-post-processing-resize-once.patch` is the same fix for upstream.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.mask2former.image_processing_pil_mask2former import (
    compute_segments,
    convert_segmentation_to_rle,
    remove_low_and_no_objects,
)


try:  # transformers >= 5.24; older releases return plain dicts from semantic post-processing
    from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
except ImportError:  # pragma: no cover - depends on the installed release
    SemanticSegmentationPostProcessorOutput = None


# Largest chunk of resized masks held at once, in elements (64 MB of float32).
CHUNK_ELEMENTS = 2**24


def _queries_per_chunk(size: tuple[int, int]) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, size[0] * size[1]))


def _resized(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`(n, h, w)` logits bilinearly resized to `size` (unchanged if already that size)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return nn.functional.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]


def _target_size(target_sizes, index: int, masks: torch.Tensor) -> tuple[int, int]:
    if target_sizes is None:
        return tuple(masks.shape[-2:])
    return tuple(int(v) for v in target_sizes[index])


def post_process_instance_segmentation(outputs, threshold: float = 0.5, mask_threshold: float = 0.5,
                                       overlap_mask_area_threshold: float = 0.8, target_sizes=None,
                                       return_coco_annotation: bool = False,
                                       return_binary_maps: bool = False) -> list[dict]:  # fmt: skip
    """Upstream's `post_process_instance_segmentation` (same arguments and result format), resized once and in
    query chunks; `return_binary_maps` gives `(instances, H, W)` bool maps. `mask_threshold` and
    `overlap_mask_area_threshold` are accepted and unused, as upstream's instance path does."""
    if return_coco_annotation and return_binary_maps:
        raise ValueError("return_coco_annotation and return_binary_maps can not be both set to True.")
    class_queries_logits, masks_queries_logits = outputs.class_queries_logits, outputs.masks_queries_logits
    num_queries, num_classes = class_queries_logits.shape[-2], class_queries_logits.shape[-1] - 1
    results = []
    for i in range(class_queries_logits.shape[0]):
        size = _target_size(target_sizes, i, masks_queries_logits)
        scores = class_queries_logits[i].softmax(-1)[:, :-1]
        # Upstream's ranking (same call, same order): every (query, class) pair, the best `num_queries` of them.
        class_scores, ranked = scores.flatten(0, 1).topk(num_queries, sorted=False)
        labels, queries = ranked % num_classes, torch.div(ranked, num_classes, rounding_mode="floor")
        # A segment's score is its class score times its mean foreground probability (< 1): only these can pass.
        candidates = (class_scores >= threshold).nonzero().flatten().tolist()
        segmentation = torch.zeros(size) - 1
        maps, segments = [], []
        step = _queries_per_chunk(size)
        for start in range(0, len(candidates), step):
            chunk = candidates[start : start + step]
            logits = _resized(masks_queries_logits[i, queries[chunk]], size)
            binary = logits > 0
            foreground = binary.flatten(1)
            mask_scores = (logits.sigmoid().flatten(1) * foreground).sum(1) / (foreground.sum(1) + 1e-6)
            for position, mask, mask_score in zip(chunk, binary, mask_scores):
                score = (class_scores[position] * mask_score).item()
                if score >= threshold and mask.any():
                    segmentation[mask] = len(segments)
                    segments.append({"id": len(segments), "label_id": labels[position].item(), "was_fused": False,
                                     "score": round(score, 6)})  # fmt: skip
                    if return_binary_maps:
                        maps.append(mask)
        if return_coco_annotation:
            segmentation = convert_segmentation_to_rle(segmentation)
        if return_binary_maps and maps:
            segmentation = torch.stack(maps)
        results.append({"segmentation": segmentation, "segments_info": segments})
    return results


def post_process_semantic_segmentation(outputs, target_sizes=None, return_segmentation_scores: bool = False):
    """Upstream's `post_process_semantic_segmentation` (class maps, or with `return_segmentation_scores` the
    `(classes, H, W)` scores as `{"segmentation", "segmentation_scores"}`), resized once, in query chunks."""
    class_queries_logits, masks_queries_logits = outputs.class_queries_logits, outputs.masks_queries_logits
    if target_sizes is not None and len(target_sizes) != class_queries_logits.shape[0]:
        raise ValueError("Make sure that you pass in as many target sizes as the batch dimension of the logits")
    results = []
    for i in range(class_queries_logits.shape[0]):
        size = _target_size(target_sizes, i, masks_queries_logits)
        probabilities = class_queries_logits[i].softmax(-1)[:, :-1]
        scores = masks_queries_logits.new_zeros(probabilities.shape[-1], *size)
        step = _queries_per_chunk(size)
        for start in range(0, probabilities.shape[0], step):
            masks = _resized(masks_queries_logits[i, start : start + step], size).sigmoid()
            scores += torch.einsum("qc,qhw->chw", probabilities[start : start + step], masks)
        segmentation = scores.argmax(0)
        result = {"segmentation": segmentation, "segmentation_scores": scores}
        if SemanticSegmentationPostProcessorOutput is not None:
            result = SemanticSegmentationPostProcessorOutput(data=result)
        results.append(result)
    return results if return_segmentation_scores else [r["segmentation"] for r in results]


def post_process_panoptic_segmentation(outputs, threshold: float = 0.5, mask_threshold: float = 0.5,
                                       overlap_mask_area_threshold: float = 0.8, label_ids_to_fuse=None,
                                       target_sizes=None) -> list[dict]:  # fmt: skip
    """Upstream's `post_process_panoptic_segmentation` resized once: the kept queries' probabilities at the model's
    mask size go to upstream's `compute_segments`, which resizes them to the target size."""
    label_ids_to_fuse = set() if label_ids_to_fuse is None else label_ids_to_fuse
    class_queries_logits, masks_queries_logits = outputs.class_queries_logits, outputs.masks_queries_logits
    num_labels = class_queries_logits.shape[-1] - 1
    pred_scores, pred_labels = class_queries_logits.softmax(-1).max(-1)
    results = []
    for i in range(class_queries_logits.shape[0]):
        size = _target_size(target_sizes, i, masks_queries_logits)
        logits, scores, labels = remove_low_and_no_objects(
            masks_queries_logits[i], pred_scores[i], pred_labels[i], threshold, num_labels
        )
        if logits.shape[0] == 0:
            results.append({"segmentation": torch.zeros(size) - 1, "segments_info": []})
            continue
        segmentation, segments = compute_segments(
            logits.sigmoid(), scores, labels, mask_threshold, overlap_mask_area_threshold, label_ids_to_fuse,
            target_size=None if tuple(logits.shape[-2:]) == size else size,
        )  # fmt: skip
        results.append({"segmentation": segmentation, "segments_info": segments})
    return results


__all__ = [
    "CHUNK_ELEMENTS",
    "post_process_instance_segmentation",
    "post_process_panoptic_segmentation",
    "post_process_semantic_segmentation",
]
