"""Known-answer and sharding tests for mask2former_dinov3.metrics (pycocotools mask AP, mIoU, PQ)."""

import math
import pickle

import numpy as np
import pytest
import torch

from mask2former_dinov3.metrics import (
    InstanceSegmentationEvaluator,
    PanopticQualityEvaluator,
    SemanticSegmentationEvaluator,
    instance_prediction_from_post_processed,
)
from mask2former_dinov3.synthetic import SyntheticConfig, generate_samples, panoptic_categories


def box(shape, rows, cols):
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def assert_same(a, b):
    """Equality of (nested) metric dicts, NaN == NaN, floats bit for bit."""
    assert type(a) is type(b) or (isinstance(a, float) and isinstance(b, float))
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b, (a, b)


# ------------------------------------------------------------------------------------------------- instance


def test_instance_perfect_prediction_gives_ap_one():
    samples = generate_samples(6, seed=3, config=SyntheticConfig(image_size=64))
    evaluator = InstanceSegmentationEvaluator(class_names=["circle", "square", "triangle", "ring"])
    for sample in samples:
        gt = {"masks": sample.masks, "labels": sample.labels}
        pred = {"masks": sample.masks, "labels": sample.labels, "scores": np.linspace(0.9, 0.5, len(sample.labels))}
        evaluator.update([gt], [pred])
    # An image without instances and without predictions changes nothing.
    empty = np.zeros((0, 64, 64), bool)
    evaluator.update([{"masks": empty, "labels": []}], [{"masks": empty, "labels": [], "scores": []}])
    result = evaluator.compute()
    # COCOeval computes precision as tp / (tp + fp + eps), hence 1 - 2e-16 rather than exactly 1.
    for key in ("map", "map_50", "map_75", "mar_100"):
        assert result[key] == pytest.approx(1.0, abs=1e-12)
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in result["map_per_class"].values() if not math.isnan(v))
    assert result["num_images"] == 7


def test_instance_hand_worked_ap():
    shape = (40, 40)
    gt_a = box(shape, (0, 10), (0, 10))  # 100 px
    gt_b = box(shape, (20, 30), (20, 30))  # 100 px
    pred_1 = gt_a.copy()
    pred_1[0:4, 0:4] = False  # 84 px inside A: IoU(A) = 84 / 100 = 0.84
    pred_2 = box(shape, (35, 40), (0, 10))  # touches no ground truth
    pred_3 = box(shape, (20, 26), (20, 30))  # 60 px inside B ...
    pred_3[26, 20:22] = True  # ... + 2 = 62 px: IoU(B) = 0.62
    evaluator = InstanceSegmentationEvaluator()
    evaluator.update(
        [{"masks": np.stack([gt_a, gt_b]), "labels": [0, 0]}],
        [{"masks": np.stack([pred_1, pred_2, pred_3]), "labels": [0, 0, 0], "scores": [0.9, 0.8, 0.7]}],
    )
    result = evaluator.compute()
    # Detections by score: p1 (IoU .84 with A), p2 (FP), p3 (IoU .62 with B); 2 ground-truth instances.
    # IoU thresholds .50, .55, .60 (3 of 10): TP, FP, TP -> recall .5, .5, 1; precision 1, .5, 2/3; the
    #   precision envelope is 1 up to recall .5 and 2/3 after. Of COCO's 101 recall points 0, .01, ..., 1:
    #   51 (0 .. .50) get 1 and 50 get 2/3 -> AP_t = (51 + 50 * 2/3) / 101 = 253 / 303.
    # Thresholds .65 ... .80 (4): TP, FP, FP -> recall stops at .5 -> AP_t = 51 / 101.
    # Thresholds .85, .90, .95 (3): no TP -> AP_t = 0.
    # mAP = (3 * 253/303 + 4 * 51/101) / 10 = (253 + 204) / 1010 = 457 / 1010.
    assert result["map"] == pytest.approx(457 / 1010, abs=1e-12)
    assert result["map_50"] == pytest.approx(253 / 303, abs=1e-12)
    assert result["map_75"] == pytest.approx(51 / 101, abs=1e-12)
    assert result["map_small"] == pytest.approx(457 / 1010, abs=1e-12)  # every area is < 32^2
    assert math.isnan(result["map_medium"]) and math.isnan(result["map_large"])  # no ground truth there
    assert result["map_per_class"] == {0: pytest.approx(457 / 1010, abs=1e-12)}
    # Recall at the cap: both objects found at IoU .50-.60 (3 thresholds), only A at .65-.80 (4), none above.
    assert result["mar_100"] == pytest.approx((3 * 1 + 4 * 0.5) / 10, abs=1e-12)


def test_instance_per_class_and_absent_classes():
    shape = (32, 32)
    a, b = box(shape, (0, 10), (0, 10)), box(shape, (15, 30), (15, 30))
    evaluator = InstanceSegmentationEvaluator(class_names={0: "cat", 1: "dog", 2: "cow"})
    # cat: perfect. dog: a wrong-class prediction on its instance only -> AP 0. cow: no ground truth, one FP.
    evaluator.update(
        [{"masks": np.stack([a, b]), "labels": [0, 1]}],
        [{"masks": np.stack([a, b, b]), "labels": [0, 0, 2], "scores": [0.9, 0.8, 0.7]}],
    )
    result = evaluator.compute()
    per_class = result["map_per_class"]
    assert per_class["cat"] == pytest.approx(1.0, abs=1e-12)
    assert per_class["dog"] == 0.0
    assert math.isnan(per_class["cow"])  # absent from ground truth: undefined, not 0, not -1
    # COCO averages over classes with ground truth only: (1 + 0) / 2.
    assert result["map"] == pytest.approx(0.5, abs=1e-12)


def test_instance_crowd_ground_truth_is_ignored():
    shape = (32, 32)
    crowd, person = box(shape, (0, 16), (0, 32)), box(shape, (20, 30), (0, 10))
    evaluator = InstanceSegmentationEvaluator()
    # A detection inside the crowd region matches the crowd (ignored), so it is not a false positive.
    evaluator.update(
        [{"masks": np.stack([crowd, person]), "labels": [0, 0], "iscrowd": [1, 0]}],
        [{"masks": np.stack([box(shape, (0, 8), (0, 8)), person]), "labels": [0, 0], "scores": [0.9, 0.8]}],
    )
    assert evaluator.compute()["map"] == pytest.approx(1.0, abs=1e-12)


def test_converter_handles_binary_maps_and_empty_results():
    shape = (8, 8)
    a, b = box(shape, (0, 4), (0, 4)), box(shape, (2, 8), (2, 8))
    info = [
        {"id": 0, "label_id": 3, "score": 0.7, "was_fused": False},
        {"id": 1, "label_id": 1, "score": 0.2, "was_fused": False},
    ]
    binary = instance_prediction_from_post_processed(
        {"segmentation": torch.from_numpy(np.stack([a, b])).float(), "segments_info": info}
    )
    assert binary["masks"].dtype == bool and (binary["masks"][0] == a).all() and (binary["masks"][1] == b).all()
    assert binary["labels"].tolist() == [3, 1] and binary["scores"].tolist() == [0.7, 0.2]
    # Upstream's result for an image without segments: an (H, W) map of -1.
    empty = instance_prediction_from_post_processed({"segmentation": torch.full(shape, -1.0), "segments_info": []})
    assert empty["masks"].shape == (0, 8, 8) and empty["labels"].shape == (0,)


def test_converter_on_real_post_processing_output():
    from transformers import Mask2FormerImageProcessor
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerForUniversalSegmentationOutput

    torch.manual_seed(0)
    outputs = Mask2FormerForUniversalSegmentationOutput(
        class_queries_logits=torch.randn(1, 5, 4), masks_queries_logits=torch.randn(1, 5, 8, 8)
    )
    processor = Mask2FormerImageProcessor()
    result = processor.post_process_instance_segmentation(
        outputs, threshold=0.0, return_binary_maps=True, target_sizes=[(16, 16)]
    )[0]
    prediction = instance_prediction_from_post_processed(result, image_size=(16, 16))
    assert prediction["masks"].shape == (len(result["segments_info"]), 16, 16)
    evaluator = InstanceSegmentationEvaluator()
    evaluator.update([{"masks": prediction["masks"], "labels": prediction["labels"]}], [prediction])
    assert evaluator.compute()["map"] == pytest.approx(1.0, abs=1e-12)


def test_instance_bad_input_errors_name_the_fix():
    evaluator = InstanceSegmentationEvaluator()
    gt = [{"masks": np.zeros((1, 8, 8), bool), "labels": [0]}]
    with pytest.raises(ValueError, match="target_sizes"):
        evaluator.update(gt, [{"masks": np.zeros((1, 4, 4), bool), "labels": [0], "scores": [1.0]}])
    with pytest.raises(ValueError, match="scores"):
        evaluator.update(gt, [{"masks": np.zeros((1, 8, 8), bool), "labels": [0]}])
    with pytest.raises(ValueError, match="one per mask"):
        evaluator.update(gt, [{"masks": np.zeros((1, 8, 8), bool), "labels": [0, 1], "scores": [1.0]}])
    with pytest.raises(ValueError, match="shape \\(num_instances, height, width\\)"):
        evaluator.update(gt, [{"masks": np.zeros((8, 8), bool), "labels": [0], "scores": [1.0]}])
    with pytest.raises(ValueError, match="lists, one item per image"):
        evaluator.update(gt[0], {"masks": np.zeros((1, 8, 8), bool), "labels": [0], "scores": [1.0]})
    with pytest.raises(ValueError, match="before any image"):
        evaluator.compute()
    # transformers' own run-length encoding (return_coco_annotation=True) is not binary maps.
    with pytest.raises(ValueError, match="return_binary_maps"):
        instance_prediction_from_post_processed(
            {"segmentation": [[1, 2]], "segments_info": [{"id": 0, "label_id": 0, "score": 1}]}
        )


def test_many_large_masks_are_encoded_a_chunk_at_a_time():
    # Dense frames: 2,000 instances at 1024 px are 2 GB of boolean masks; encoding must not copy them all at once.
    import tracemalloc

    masks = np.zeros((128, 1024, 1024), bool)  # 128 MB
    for k in range(len(masks)):
        masks[k, (k // 16) * 100 : (k // 16) * 100 + 40, (k % 16) * 60 : (k % 16) * 60 + 40] = True
    evaluator = InstanceSegmentationEvaluator(max_detections=128)
    labels = np.zeros(len(masks))
    tracemalloc.start()
    try:
        evaluator.update([{"masks": masks, "labels": labels}], [{"masks": masks, "labels": labels, "scores": labels + 1}])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < masks.nbytes * 0.6, peak
    assert evaluator.compute()["map"] == pytest.approx(1.0, abs=1e-9)


# ------------------------------------------------------------------------------------------------- semantic


def test_semantic_perfect_prediction_gives_miou_one():
    evaluator = SemanticSegmentationEvaluator(num_classes=6)
    for sample in generate_samples(4, seed=1, config=SyntheticConfig(image_size=48)):
        evaluator.update([sample.semantic_map], [sample.semantic_map.copy()])
    result = evaluator.compute()
    assert result["mean_iou"] == 1.0 and result["pixel_accuracy"] == 1.0


def test_semantic_hand_worked_confusion_matrix():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    evaluator = SemanticSegmentationEvaluator(num_classes=4, class_names=["a", "b", "c", "d"])
    evaluator.update([torch.from_numpy(gt)], [torch.from_numpy(pred)])
    # The ignored pixel (255) drops out; the other 5 (gt, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,2).
    #   confusion rows = gt: [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    # IoU a = 1 / (2 + 1 - 1) = 1/2; b = 2 / (2 + 3 - 2) = 2/3; c = 1 / 1 = 1; d absent from both -> NaN, excluded.
    # mIoU = (1/2 + 2/3 + 1) / 3 = 13/18; pixel accuracy = 4/5; mean accuracy = (1/2 + 1 + 1) / 3 = 5/6.
    assert evaluator.confusion_matrix().tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    result = evaluator.compute()
    assert result["mean_iou"] == pytest.approx(13 / 18)
    assert result["per_class_iou"]["a"] == pytest.approx(0.5) and result["per_class_iou"]["b"] == pytest.approx(2 / 3)
    assert math.isnan(result["per_class_iou"]["d"])
    assert result["pixel_accuracy"] == pytest.approx(0.8)
    assert result["mean_accuracy"] == pytest.approx(5 / 6)


def test_semantic_bad_labels_raise():
    evaluator = SemanticSegmentationEvaluator(num_classes=3)
    with pytest.raises(ValueError, match="outside 0..2"):
        evaluator.update([np.array([[0, 7]])], [np.array([[0, 1]])])
    with pytest.raises(ValueError, match="target_sizes"):
        evaluator.update([np.zeros((2, 2), int)], [np.zeros((3, 3), int)])
    with pytest.raises(ValueError, match="integer map"):
        evaluator.update([np.zeros((2, 2), np.float32)], [np.zeros((2, 2), int)])
    with pytest.raises(ValueError, match="also a class id"):
        SemanticSegmentationEvaluator(num_classes=3, ignore_index=1)


# ------------------------------------------------------------------------------------------------- panoptic

CATEGORIES = [{"id": 0, "name": "thing", "isthing": 1}, {"id": 1, "name": "stuff", "isthing": 0}]


def test_panoptic_perfect_prediction_gives_pq_one():
    evaluator = PanopticQualityEvaluator(panoptic_categories())
    for sample in generate_samples(4, seed=2, config=SyntheticConfig(image_size=48)):
        gt = {"segmentation": sample.panoptic_map, "segments_info": sample.segments_info}
        # Post-processing style: different segment ids, `label_id` instead of `category_id`.
        pred_map = sample.panoptic_map * 10
        pred_info = [{"id": s["id"] * 10, "label_id": s["category_id"], "score": 0.9} for s in sample.segments_info]
        evaluator.update([gt], [{"segmentation": torch.from_numpy(pred_map), "segments_info": pred_info}])
    result = evaluator.compute()
    assert result["pq"] == 1.0 and result["sq"] == 1.0 and result["rq"] == 1.0
    assert result["pq_things"] == 1.0 and result["pq_stuff"] == 1.0


def test_panoptic_hand_worked_pq():
    gt = np.full((10, 10), 3)  # S: stuff
    gt[0:5, 0:5] = 1  # A: thing, 25 px
    gt[6:9, 6:9] = 2  # B: thing, 9 px
    gt[0:5, 7:10] = 0  # void, 15 px; S keeps 100 - 25 - 9 - 15 = 51 px
    pred = np.full((10, 10), 4)  # P4: stuff, the rest (60 px)
    pred[0:5, 0:4] = 1  # P1: thing, 20 px inside A
    pred[0:5, 7:10] = 2  # P2: thing, exactly the void region
    pred[9, 0:5] = 3  # P3: thing, 5 px of S
    gt_info = [{"id": 1, "category_id": 0}, {"id": 2, "category_id": 0}, {"id": 3, "category_id": 1}]
    pred_info = [
        {"id": 1, "label_id": 0},
        {"id": 2, "label_id": 0},
        {"id": 3, "label_id": 0},
        {"id": 4, "label_id": 1},
    ]
    evaluator = PanopticQualityEvaluator(CATEGORIES)
    evaluator.update(
        [{"segmentation": gt, "segments_info": gt_info}], [{"segmentation": pred, "segments_info": pred_info}]
    )
    result = evaluator.compute()
    # thing: P1-A IoU 20/25 = 0.8 -> TP. P2 lies 100% on void -> ignored, not FP. P3 -> FP. B (under P4, a stuff
    #   segment) -> FN. PQ = 0.8 / (1 + 1/2 + 1/2) = 0.4, SQ = 0.8, RQ = 0.5.
    # stuff: P4 (60 px) vs S (51 px): intersection = S minus P3 = 46, P4 has no void pixel, IoU = 46 / (60 + 51 - 46)
    #   = 46/65 -> TP. PQ = SQ = 46/65, RQ = 1.
    # PQ = (0.4 + 46/65) / 2.
    assert result["per_class"]["thing"] == {
        "pq": pytest.approx(0.4),
        "sq": pytest.approx(0.8),
        "rq": 0.5,
        "tp": 1,
        "fp": 1,
        "fn": 1,
    }
    assert result["pq_stuff"] == pytest.approx(46 / 65) and result["rq_stuff"] == 1.0
    assert result["pq"] == pytest.approx((0.4 + 46 / 65) / 2)
    assert result["sq"] == pytest.approx((0.8 + 46 / 65) / 2)


def test_panoptic_void_leaves_union_and_crowd_absorbs_false_positives():
    gt = np.zeros((10, 10), dtype=np.int64)  # void everywhere else
    gt[0:4, 0:5] = 1  # A: thing, 20 px
    gt[6:10, 0:10] = 2  # crowd of things, 40 px
    pred = np.zeros((10, 10), dtype=np.int64)
    pred[0:4, 1:5] = 1  # 16 px of A ...
    pred[0:4, 5:7] = 1  # ... + 8 px of void
    pred[7:9, 2:8] = 2  # a thing entirely inside the crowd region
    evaluator = PanopticQualityEvaluator(CATEGORIES)
    evaluator.update(
        [{"segmentation": gt, "segments_info": [{"id": 1, "category_id": 0}, {"id": 2, "category_id": 0, "iscrowd": 1}]}],
        [{"segmentation": pred, "segments_info": [{"id": 1, "label_id": 0}, {"id": 2, "label_id": 0}]}],
    )
    thing = evaluator.compute()["per_class"]["thing"]
    # Union without the void pixels: 24 + 20 - 16 - 8 = 20 -> IoU 16/20 = 0.8 (16/28 < 0.5 would be no match).
    # The crowd is neither FN nor matched, and the prediction inside it is not an FP.
    assert (thing["tp"], thing["fp"], thing["fn"]) == (1, 0, 0)
    assert thing["sq"] == pytest.approx(0.8)


def test_panoptic_bad_input_raises():
    evaluator = PanopticQualityEvaluator(CATEGORIES)
    gt = {"segmentation": np.array([[1, 5]]), "segments_info": [{"id": 1, "category_id": 0}]}
    with pytest.raises(ValueError, match="not in segments_info"):
        evaluator.update([gt], [{"segmentation": np.array([[1, 1]]), "segments_info": [{"id": 1, "label_id": 0}]}])
    gt = {"segmentation": np.array([[1, 1]]), "segments_info": [{"id": 1, "category_id": 9}]}
    with pytest.raises(ValueError, match="category 9"):
        evaluator.update([gt], [{"segmentation": np.array([[1, 1]]), "segments_info": [{"id": 1, "label_id": 0}]}])


# ------------------------------------------------------------------------------------------------- sharding


def noisy_dataset(num_images=7):
    """Synthetic ground truth and imperfect, deterministic predictions for all three tasks."""
    samples = generate_samples(num_images, seed=11, split="valid", config=SyntheticConfig(image_size=48))
    data = []
    for sample in samples:
        rng = np.random.default_rng(sample.index)
        shifted = np.roll(sample.masks, shift=int(rng.integers(0, 3)), axis=2)
        fp = box(sample.masks.shape[1:], (0, 6), (0, 6))[None]
        pred_masks = np.concatenate([shifted, fp])
        pred_labels = np.concatenate([sample.labels, [int(rng.integers(0, 4))]])
        # Scores rounded to 2 digits: ties across images, where COCOeval's order depends on image order.
        scores = np.round(rng.random(len(pred_labels)), 2)
        semantic_pred = np.roll(sample.semantic_map, 1, axis=0)
        panoptic_pred = np.roll(sample.panoptic_map, 2, axis=1)
        data.append(
            {
                "instance": (
                    {"masks": sample.masks, "labels": sample.labels},
                    {"masks": pred_masks, "labels": pred_labels, "scores": scores},
                ),
                "semantic": (sample.semantic_map, semantic_pred),
                "panoptic": (
                    {"segmentation": sample.panoptic_map, "segments_info": sample.segments_info},
                    {
                        "segmentation": panoptic_pred,
                        "segments_info": [{"id": s["id"], "label_id": s["category_id"]} for s in sample.segments_info],
                    },
                ),
            }
        )
    return data


def make_evaluators():
    return {
        "instance": InstanceSegmentationEvaluator(class_names=["circle", "square", "triangle", "ring"]),
        "semantic": SemanticSegmentationEvaluator(num_classes=6),
        "panoptic": PanopticQualityEvaluator(panoptic_categories()),
    }


def feed(evaluators, data, indices, with_ids=True):
    for i in indices:
        for task, (gt, pred) in data[i].items():
            evaluators[task].update([gt], [pred], image_ids=[i] if with_ids else None)


def single_process_results(data):
    evaluators = make_evaluators()
    feed(evaluators, data, range(len(data)))
    return {task: e.compute() for task, e in evaluators.items()}


def test_gathered_records_of_shards_equal_a_single_process():
    data = noisy_dataset()
    expected = single_process_results(data)
    assert expected["instance"]["map"] > 0 and expected["panoptic"]["pq"] > 0  # a non-trivial comparison
    # Images split over 3 processes in an order unlike the single process's (as tiled evaluation splits them).
    order = [3, 6, 0, 5, 1, 2, 4]
    shards = [order[r::3] for r in range(3)]
    for task in expected:
        gathered = []
        for shard in shards:
            evaluators = make_evaluators()
            feed(evaluators, data, shard)
            # Records travel pickled, as accelerate's gather_object sends them.
            gathered.append(pickle.loads(pickle.dumps(evaluators[task].records)))
        merged = {key: record for records in gathered for key, record in records.items()}
        result = make_evaluators()[task].compute(merged)
        assert result["num_images"] == len(data)
        assert_same(result, expected[task])


def test_automatic_ids_number_images_in_order():
    data = noisy_dataset(4)
    automatic, named = make_evaluators(), make_evaluators()
    feed(automatic, data, range(4), with_ids=False)
    feed(named, data, range(4))
    for task in automatic:
        assert list(automatic[task].records) == [0, 1, 2, 3]
        assert_same(automatic[task].compute(), named[task].compute())


def test_duplicate_image_id_within_one_evaluator_raises():
    data = noisy_dataset(1)
    evaluators = make_evaluators()
    feed(evaluators, data, [0])
    with pytest.raises(ValueError, match="already added"):
        feed(evaluators, data, [0])


def test_instance_area_ranges_decide_which_bucket_an_object_counts_in():
    # One 400 px object, found exactly. COCO's absolute ranges call it small; ranges where 400 px is "large" (the
    # synthetic generator's at 128 px) must report it there, and the overall AP must not change.
    shape = (64, 64)
    gt = box(shape, (0, 20), (0, 20))
    ground_truth = {"masks": gt[None], "labels": [0]}
    prediction = {"masks": gt[None], "labels": [0], "scores": [0.9]}
    results = {}
    for name, ranges in (("coco", None), ("custom", {"small": (0, 50), "medium": (50, 300), "large": (300, 1e10)})):
        evaluator = InstanceSegmentationEvaluator(area_ranges=ranges)
        evaluator.update([ground_truth], [prediction])
        results[name] = evaluator.compute()
    assert results["coco"]["map_small"] == pytest.approx(1.0) and math.isnan(results["coco"]["map_large"])
    assert results["custom"]["map_large"] == pytest.approx(1.0)
    assert math.isnan(results["custom"]["map_small"]) and math.isnan(results["custom"]["map_medium"])
    assert results["custom"]["map"] == results["coco"]["map"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "ranges", [{"small": (0, 10), "medium": (10, 20)}, {"small": (0, 10), "medium": (20, 10), "large": (20, 30)}]
)
def test_instance_bad_area_ranges_raise(ranges):
    with pytest.raises(ValueError, match="area_ranges"):
        InstanceSegmentationEvaluator(area_ranges=ranges)
