"""Shared check of the tests that compare the predict CLI's output with the training script's evaluation."""

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def assert_predictions_score_as_reported(annotations, predictions, reported: dict) -> None:
    """pycocotools' mask AP, AP50 and AR@100 of `predictions` (COCO results: a path or a list) against
    `annotations` equal the script's `eval_results.json` (`reported`) to 1e-6, and the AP is not a trivial zero."""
    ground_truth = COCO(str(annotations))
    evaluation = COCOeval(ground_truth, ground_truth.loadRes(predictions), "segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] > 0.05, evaluation.stats  # a trained model: not a comparison of two zeros
    assert evaluation.stats[0] == pytest.approx(reported["eval_map"], abs=1e-6)
    assert evaluation.stats[1] == pytest.approx(reported["eval_map_50"], abs=1e-6)
    assert evaluation.stats[8] == pytest.approx(reported["eval_mar_100"], abs=1e-6)
