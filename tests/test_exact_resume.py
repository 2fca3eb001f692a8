"""Exact resume (issue 24, item 6): a run resumed from its checkpoint into a fresh output folder logs the same
losses as the uninterrupted run, with and without dataloader workers, augmentation on, across an epoch boundary."""

import json
import os
import subprocess
import sys

import pytest
import torch
from tiny_configs import tiny_config

from mask2former_dinov3 import Mask2FormerDINOv3ForUniversalSegmentation
from mask2former_dinov3.synthetic import SyntheticConfig, write_coco_dataset


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


def _run(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([TESTS, REPO, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, os.path.join(REPO, "run_instance_seg.py"), *args], capture_output=True,
                            text=True, env=env, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def _losses(output_dir):
    with open(os.path.join(output_dir, "trainer_state.json")) as handle:
        history = json.load(handle)["log_history"]
    return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}


@pytest.mark.slow  # three training runs in new interpreters
def test_resumed_run_logs_the_losses_of_the_uninterrupted_run(tmp_path):
    data = tmp_path / "data"
    # 4 training images, batch 2: 2 steps an epoch. Resumed after step 3, in the middle of epoch 2: step 4 ends that
    # epoch (its first batch skipped), steps 5-6 are epoch 3.
    write_coco_dataset(data, num_train=4, num_valid=1, config=SyntheticConfig(image_size=64, empty_fraction=0))
    model = str(tmp_path / "model")
    torch.manual_seed(0)
    Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit", num_labels=4, num_queries=20)).save_pretrained(model)
    common = ["--model_name_or_path", model, "--data_dir", str(data), "--do_train", "--image_height", "64",
              "--image_width", "64", "--per_device_train_batch_size", "2", "--max_steps", "6", "--save_steps", "3",
              "--logging_steps", "1", "--report_to", "none", "--seed", "0",
              "--num_overlay_images", "0", "--min_scale", "0.5", "--max_scale", "2.0", "--color_jitter", "0.3"]  # fmt: skip
    checkpoint = str(tmp_path / "full" / "checkpoint-3")
    _run(*common, "--dataloader_num_workers", "2", "--output_dir", str(tmp_path / "full"))
    _run(*common, "--dataloader_num_workers", "2", "--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", checkpoint)
    # And without workers: an item depends on (seed, epoch, index) alone, not on which process builds it.
    _run(*common, "--dataloader_num_workers", "0", "--output_dir", str(tmp_path / "resumed_in_process"),
         "--resume_from_checkpoint", checkpoint)  # fmt: skip
    full = _losses(tmp_path / "full")
    assert len({full[step] for step in full}) == 6  # the losses differ from step to step: the test can tell
    for resumed in (_losses(tmp_path / "resumed"), _losses(tmp_path / "resumed_in_process")):
        assert sorted(full) == sorted(resumed) == [1, 2, 3, 4, 5, 6]  # steps 1-3 come with the checkpoint's state
        for step in (4, 5, 6):
            assert resumed[step] == pytest.approx(full[step], rel=1e-4), (step, full, resumed)


def test_epoch_callback_sets_the_epoch_and_refuses_persistent_workers(tmp_path):
    from transformers import TrainerState, TrainingArguments

    from mask2former_dinov3.data import EpochCallback, SegmentationDataset
    from mask2former_dinov3.image_processing_mask2former_dinov3 import Mask2FormerDINOv3ImageProcessor
    from mask2former_dinov3.synthetic import SyntheticSegmentationSource

    processor = Mask2FormerDINOv3ImageProcessor(size={"height": 64, "width": 64})
    dataset = SegmentationDataset(SyntheticSegmentationSource("train", 2, image_size=64), "instance", processor)
    args = TrainingArguments(str(tmp_path), dataloader_num_workers=2, report_to="none", use_cpu=True)
    callback = EpochCallback(dataset, args)
    for epoch, expected in ((0.0, 0), (1.0, 1), (2.5, 2), (2.9999999, 3)):  # a resumed state holds a fraction
        callback.on_epoch_begin(args, TrainerState(epoch=epoch), None)
        assert dataset.epoch == expected
    persistent = TrainingArguments(str(tmp_path), dataloader_num_workers=2, dataloader_persistent_workers=True,
                                   report_to="none", use_cpu=True)  # fmt: skip
    with pytest.raises(ValueError, match="persistent workers keep the first epoch's dataset"):
        EpochCallback(dataset, persistent)
    # Mask2FormerTrainer adds it itself: a trainer built without the script still draws new augmentations per epoch.
    from tiny_configs import tiny_config

    from mask2former_dinov3 import Mask2FormerDINOv3ForUniversalSegmentation
    from mask2former_dinov3.training import Mask2FormerTrainer

    trainer = Mask2FormerTrainer(model=Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit")), args=args,
                                 train_dataset=dataset)  # fmt: skip
    added = [c for c in trainer.callback_handler.callbacks if isinstance(c, EpochCallback)]
    assert len(added) == 1 and added[0].dataset is dataset
