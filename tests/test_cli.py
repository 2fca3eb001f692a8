"""run_instance_seg.py as a user meets it: one-line errors with exit code 2 (a traceback only with --debug), grouped
--help, and num_queries sized from the densest training image."""

import json
import logging
import math
import os
import subprocess
import sys
from collections import Counter

import pytest

from mask2former_dinov3.data import InstanceCount, count_instances, CocoSegmentationSource
from mask2former_dinov3.arguments import ModelArguments
from mask2former_dinov3.finetune import choose_num_queries, main
from mask2former_dinov3.synthetic import SyntheticConfig, write_coco_dataset


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "run_instance_seg.py")
SMALL = ["--image_height", "64", "--image_width", "64", "--per_device_train_batch_size", "2",
         "--per_device_eval_batch_size", "2", "--report_to", "none", "--dataloader_num_workers", "0",
         "--num_overlay_images", "0", "--save_strategy", "no"]  # fmt: skip


def _run(*args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def dense_coco(tmp_path_factory):
    """Roboflow layout whose densest training image holds 20 shapes (more than the small default model's 20 queries
    / 1.25)."""
    root = tmp_path_factory.mktemp("dense")
    config = SyntheticConfig(image_size=64, max_instances=40, empty_fraction=0, size_probabilities=(1, 0, 0))
    paths = write_coco_dataset(root, num_train=4, num_valid=2, config=config)
    with open(paths["train"]) as handle:
        coco = json.load(handle)
    largest = max(Counter(a["image_id"] for a in coco["annotations"] if not a.get("iscrowd")).values())
    assert largest > 16  # so that the default 20 queries are not enough (1.25 x largest > 20)
    return str(root), paths, largest


# ---------------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # the script in a new interpreter
def test_missing_data_dir_is_named_in_one_line(tmp_path):
    missing = str(tmp_path / "no-such-folder")
    result = _run("--data_dir", missing, "--output_dir", str(tmp_path / "out"))
    _assert_one_line_error(result, f"--data_dir {missing} does not exist")
    # --debug: the same error with its traceback.
    result = _run("--data_dir", missing, "--output_dir", str(tmp_path / "out"), "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr and "does not exist" in result.stderr


@pytest.mark.slow  # the script in new interpreters (5 runs)
def test_truncated_coco_json_and_unknown_preset_and_bad_value(tmp_path):
    paths = write_coco_dataset(tmp_path / "coco", num_train=2, num_valid=1, config=SyntheticConfig(image_size=32))
    text = paths["train"].read_text()
    paths["train"].write_text(text[: len(text) // 2])
    out = str(tmp_path / "out")
    _assert_one_line_error(_run("--data_dir", str(tmp_path / "coco"), "--output_dir", out, *SMALL),
                           str(paths["train"]), "not valid JSON")  # fmt: skip
    _assert_one_line_error(_run("--preset", "dinov3-nonesuch", "--output_dir", out), "dinov3-nonesuch", "dinov3-vits16")
    _assert_one_line_error(_run("--max_steps", "many", "--output_dir", out), "--max_steps", "many")
    _assert_one_line_error(_run("--no_such_flag", "--output_dir", out), "--no_such_flag")
    missing_model = str(tmp_path / "models" / "mine")
    _assert_one_line_error(_run("--model_name_or_path", missing_model, "--output_dir", out),
                           f"--model_name_or_path {missing_model} does not exist")  # fmt: skip
    assert not os.path.exists(out)  # nothing was written


@pytest.mark.slow  # the script in a new interpreter
def test_help_groups_flags_in_order_and_explains_them():
    result = _run("--help")
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    titles = ["Model (", "Data (", "Augmentation (", "Evaluation and outputs:", "Offline default data (", "Training ("]
    positions = [text.index("\n" + title) for title in titles]
    assert positions == sorted(positions)
    # Trainer's flags come after this script's own groups.
    assert text.index("--learning_rate") > positions[-1] and text.index("--min_scale") < positions[-1]
    flat = " ".join(text.split())
    assert "(default: -1) (offline default: 1200)" in flat  # --max_steps
    assert "(default: 512) (offline default: 128)" in flat  # --image_height
    assert "--no_hflip, --no-hflip Turns --hflip off" in flat
    assert "dataset loading script" in flat and "does not concern the model" in flat  # --trust_remote_code


# ---------------------------------------------------------------------------------------------------------------------
# Dense scenes: num_queries
# ---------------------------------------------------------------------------------------------------------------------


def test_count_instances_reads_the_coco_annotations(dense_coco):
    _, paths, largest = dense_coco
    count = count_instances(CocoSegmentationSource(str(paths["train"])), "instance")
    assert count.largest == largest and count.exact and count.counted == 4
    assert count_instances(CocoSegmentationSource(str(paths["train"])), "semantic") is None


def test_choose_num_queries_for_presets_and_user_settings():
    dense = InstanceCount(largest=150, image="crowd.jpg", counted=10)
    sparse = InstanceCount(largest=7, image="a.jpg", counted=10)
    raised, note = choose_num_queries(ModelArguments(preset="dinov3-vits16"), dense)
    assert raised == 188 and "150 instances" in note and "crowd.jpg" in note  # ceil(1.25 x 150)
    assert choose_num_queries(ModelArguments(preset="dinov3-vits16"), sparse)[0] is None  # 100 suffice: kept
    assert choose_num_queries(ModelArguments(backbone_name_or_path="facebook/x"), InstanceCount(90, "b", 1))[0] == 113
    assert choose_num_queries(ModelArguments(), InstanceCount(17, "c", 1))[0] == 22  # offline default: from 20
    # The user's num_queries and an existing checkpoint's are kept.
    kept = choose_num_queries(ModelArguments(preset="dinov3-vits16", config_overrides="num_queries=50"), dense)
    assert kept == (None, "50 (set by --config_overrides)")
    assert choose_num_queries(ModelArguments(model_name_or_path="my/model"), dense)[0] is None


@pytest.mark.slow  # a training run on dense images (test_choose_num_queries covers the rule fast)
def test_dense_training_raises_num_queries_and_says_so(tmp_path, dense_coco, caplog):
    root, _, largest = dense_coco
    out = str(tmp_path / "out")
    with caplog.at_level(logging.INFO, logger="mask2former_dinov3"):
        main(["--data_dir", root, "--output_dir", out, "--do_train", "--max_steps", "1", *SMALL])
    expected = math.ceil(1.25 * largest)
    with open(os.path.join(out, "config.json")) as handle:
        assert json.load(handle)["num_queries"] == expected
    lines = [r.getMessage() for r in caplog.records if "num_queries" in r.getMessage()]
    assert any(f"num_queries: {expected} (raised from the default 20" in m and f"has {largest} instances" in m
               for m in lines), lines  # fmt: skip
    with open(os.path.join(out, "README.md")) as handle:
        assert f"| queries (num_queries) | {expected} (raised" in handle.read()


def test_too_few_user_queries_warn_with_both_numbers_and_the_flag(tmp_path, dense_coco, caplog):
    root, _, largest = dense_coco
    with caplog.at_level(logging.WARNING, logger="mask2former_dinov3"):
        main(["--data_dir", root, "--output_dir", str(tmp_path / "out"), "--do_train", "--max_steps", "1",
              "--config_overrides", "num_queries=3", *SMALL])  # fmt: skip
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "densest" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"has {largest} instances but the model has num_queries=3" in warnings[0]
    assert f"--config_overrides num_queries={math.ceil(1.25 * largest)}" in warnings[0]
