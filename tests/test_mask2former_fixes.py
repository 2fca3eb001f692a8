"""The upstream Mask2Former fixes in upstream/mask2former_fixes/: each patch, applied to a copy of the installed
transformers' `modeling_mask2former.py`, fixes a bug that the unpatched file shows.

The patches are made against transformers 5.25.0's source; on a release where one no longer applies, its test skips
and says so.
"""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import transformers
from transformers import DINOv3ConvNextConfig, Mask2FormerConfig
from transformers.models.mask2former import modeling_mask2former


FIXES = Path(__file__).resolve().parents[1] / "upstream" / "mask2former_fixes"
RELATIVE = Path("src/transformers/models/mask2former/modeling_mask2former.py")


def patched_modeling_file(patch_name: str, directory: Path) -> Path:
    """A copy of the installed `modeling_mask2former.py` with `patch_name` applied (skip if it does not apply)."""
    target = directory / RELATIVE
    target.parent.mkdir(parents=True)
    shutil.copyfile(modeling_mask2former.__file__, target)
    result = subprocess.run(["git", "apply", str(FIXES / patch_name)], cwd=directory, capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"{patch_name} does not apply to transformers {transformers.__version__}: {result.stderr.strip()}")
    return target


def import_patched(path: Path, name: str):
    """Import a patched copy as a module of `transformers.models.mask2former`, so its relative imports resolve."""
    spec = importlib.util.spec_from_file_location(f"transformers.models.mask2former.{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # `inspect` (used by @auto_docstring) finds classes' source through it
    spec.loader.exec_module(module)
    return module


def _tiny_config() -> Mask2FormerConfig:
    backbone = DINOv3ConvNextConfig(
        hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], out_features=["stage1", "stage2", "stage3", "stage4"]
    )
    return Mask2FormerConfig(
        backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=32,
        dim_feedforward=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2, num_queries=4, num_labels=3,
        train_num_points=16,
    )  # fmt: skip


def test_return_dict_false_with_labels(tmp_path):
    """Upstream: `(loss) + output` raises a TypeError; fixed: the tuple is `output.to_tuple()`, loss first."""
    fixed = import_patched(patched_modeling_file("0001-return-dict-false-with-labels.patch", tmp_path), "_fix_0001")
    torch.manual_seed(0)
    upstream_model = modeling_mask2former.Mask2FormerForUniversalSegmentation(_tiny_config()).eval()
    fixed_model = fixed.Mask2FormerForUniversalSegmentation(_tiny_config()).eval()
    fixed_model.load_state_dict(upstream_model.state_dict())
    inputs = {
        "pixel_values": torch.randn(1, 3, 64, 64),
        "mask_labels": [(torch.rand(2, 64, 64) > 0.5).float()],
        "class_labels": [torch.tensor([0, 2])],
    }
    with torch.no_grad(), pytest.raises(TypeError, match="unsupported operand"):
        upstream_model(**inputs, return_dict=False)
    with torch.no_grad():
        torch.manual_seed(1)
        as_dict = fixed_model(**inputs)
        torch.manual_seed(1)
        as_tuple = fixed_model(**inputs, return_dict=False)
    assert len(as_tuple) == len(as_dict.to_tuple())
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.class_queries_logits)


_TWO_PROCESS_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    import torch
    from accelerate import PartialState
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

    state = PartialState(cpu=True)  # gloo across the two CPU processes
    spec = importlib.util.spec_from_file_location("transformers.models.mask2former._fix_0002", sys.argv[1])
    fixed = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = fixed
    spec.loader.exec_module(fixed)
    # 3 masks in process 0, 1 in process 1: 2 per process on average.
    class_labels = [torch.zeros(3 if state.process_index == 0 else 1)]
    device = torch.device("cpu")
    print(json.dumps({
        "upstream": Mask2FormerLoss.get_num_masks(None, class_labels, device).item(),
        "fixed": fixed.Mask2FormerLoss.get_num_masks(None, class_labels, device).item(),
    }))
    # Leave together: a process that exits while gloo still talks to the other one aborts it.
    state.wait_for_everyone()
    state.destroy_process_group()
    """
)


def test_get_num_masks_averages_over_processes_once(tmp_path):
    """Two processes with 3 and 1 masks: the loss should normalise by 2 masks per process. Upstream averages over the
    processes (accelerate's `reduce`) and then divides by the number of processes again (1); fixed: 2."""
    path = patched_modeling_file("0002-get-num-masks-average-once.patch", tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    processes = []
    for rank in range(2):
        env = {
            **os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
        }  # fmt: skip
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", _TWO_PROCESS_SCRIPT, str(path)], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
        )
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-2000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    assert [r["upstream"] for r in results] == [1.0, 1.0]
    assert [r["fixed"] for r in results] == [2.0, 2.0]


def _training_step_gradients(model, inputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    torch.manual_seed(2)  # the loss samples its points at random
    loss = model(**inputs).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing(tmp_path):
    """Upstream refuses `gradient_checkpointing_enable()`; fixed: the decoder layers are checkpointed (also when the
    caller asks for reentrant checkpointing), and a training step gives the loss and gradients of one without it."""
    fixed = import_patched(patched_modeling_file("0003-gradient-checkpointing.patch", tmp_path), "_fix_0003")
    torch.manual_seed(0)
    upstream_model = modeling_mask2former.Mask2FormerForUniversalSegmentation(_tiny_config()).train()
    with pytest.raises(ValueError, match="does not support"):
        upstream_model.gradient_checkpointing_enable()
    fixed_model = fixed.Mask2FormerForUniversalSegmentation(_tiny_config()).train()
    fixed_model.load_state_dict(upstream_model.state_dict())
    inputs = {
        "pixel_values": torch.randn(2, 3, 64, 64),
        "mask_labels": [(torch.rand(2, 64, 64) > 0.5).float(), (torch.rand(1, 64, 64) > 0.5).float()],
        "class_labels": [torch.tensor([0, 2]), torch.tensor([1])],
    }
    reference_loss, reference_grads = _training_step_gradients(fixed_model, inputs)
    fixed_model.gradient_checkpointing_enable({"use_reentrant": True})
    decoder_layers = fixed_model.model.transformer_module.decoder.layers
    assert all(layer.gradient_checkpointing for layer in decoder_layers)
    loss, grads = _training_step_gradients(fixed_model, inputs)
    torch.testing.assert_close(loss, reference_loss)
    assert grads.keys() == reference_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], rtol=1e-4, atol=1e-6, msg=name)
