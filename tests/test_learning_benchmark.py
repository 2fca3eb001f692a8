"""Smoke test of benchmarks/learning.py: `--quick` runs end to end and reports all four models."""

import json
import math
import os
import subprocess
import sys

import pytest


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # the learning benchmark (a benchmark, not a unit test)
def test_quick_learning_benchmark_reports_four_models(tmp_path):
    output = tmp_path / "quick.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "benchmarks", "learning.py"), "--quick", "--output", str(output)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(output.read_text())
    results = report["results"]
    assert list(results) == ["ours-vit", "ours-convnext", "upstream-convnext", "upstream-vit"]
    for name, result in results.items():
        assert len(result["per_seed_ap"]) == len(report["settings"]["seeds"]) == 1
        ap = result["ap_mean"]
        assert 0.0 <= ap <= 1.0 and not math.isnan(ap), (name, ap)
        run = result["runs"][0]
        assert run["num_images"] == report["settings"]["val_images"]
        assert math.isfinite(run["final_loss"]) and run["train_seconds"] > 0
    # The adapter gives true stride-4 masks; upstream with a ViT is stuck at the ViT's stride 16.
    assert [results[n]["mask_resolution"] for n in results] == ["1/4", "1/4", "1/4", "1/16"]
    # Ours gets upstream's initialisation (the transformers 5.x custom-code pitfall), measured on the fresh models.
    ours, upstream = results["ours-convnext"]["runs"][0], results["upstream-convnext"]["runs"][0]
    assert ours["is_custom_code"] is False
    for key in ("sampling_offsets_bias_std", "attention_weights_std"):  # deterministic: the radial grid, zeros
        assert ours[key] == upstream[key], key
    # Xavier draws differ between the two models (other random draws come first), so their std agrees to sampling
    # noise (~2e-4); the custom-code pitfall would give the generic normal(0.02) init instead.
    assert ours["decoder_fc1_std"] == pytest.approx(upstream["decoder_fc1_std"], abs=1e-3)
    assert abs(ours["decoder_fc1_std"] - 0.02) > 0.01
    assert ours["sampling_offsets_bias_std"] > 1.0 and ours["attention_weights_std"] == 0.0
    assert "| ours-vit |" in report["table"] and set(report["checks"]) == {
        "ours-convnext >= upstream-convnext",
        "ours-vit > upstream-vit (naive)",
        "ours-vit >= upstream-convnext",
    }


def test_plain_pyramid_ablation_is_ours_vit_without_the_spatial_prior():
    sys.path.insert(0, REPO_ROOT)
    from benchmarks import learning

    settings = learning.Settings(image_size=64)
    ours, plain = (learning.build_model(name, settings) for name in ("ours-vit", "ours-vit-plain"))
    assert ours.model.pixel_level_module.adapter.spatial_prior is not None
    assert plain.model.pixel_level_module.adapter.spatial_prior is None
    assert set(plain.state_dict()) == {k for k in ours.state_dict() if ".spatial_prior." not in k}
    assert "ours-vit-plain" not in learning.MODELS  # an ablation, not part of the default comparison


@pytest.mark.slow  # the learning benchmark (a benchmark, not a unit test)
def test_initial_weights_pair_runs_start_where_the_other_checkout_started(tmp_path):
    """initial_weights.py (run against a checkout, here this one) + learning.py's loader: same weights, same RNG."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "benchmarks", "initial_weights.py"), "--checkout", REPO_ROOT]
        + ["--models", "ours-convnext", "--seeds", "3", "--output", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    sys.path.insert(0, REPO_ROOT)
    import torch

    from benchmarks import learning

    settings = learning.Settings()
    torch.manual_seed(3)
    reference = learning.build_model("ours-convnext", settings)
    next_draw = torch.rand(5)

    torch.manual_seed(0)  # another starting point, overwritten by the loader
    model = learning.build_model("ours-convnext", settings)
    weight = "class_predictor.weight"
    assert not torch.equal(model.state_dict()[weight], reference.state_dict()[weight])
    learning.load_initial_weights(model, str(tmp_path), "ours-convnext", 3)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert torch.equal(torch.rand(5), next_draw)  # training draws what the other checkout's training drew

    with pytest.raises(FileNotFoundError, match="ours-convnext-seed4.safetensors.*initial_weights.py --seeds 4"):
        learning.load_initial_weights(model, str(tmp_path), "ours-convnext", 4)
