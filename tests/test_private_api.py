"""The one private-API wrapper (`mask2former_dinov3.private_api`): still backed by torch, and equal to its fallback."""

import pytest
import torch

from mask2former_dinov3 import private_api


def _inputs(seed=0, rows=50, channels=8, bags=30, bag_size=6):
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(rows, channels, generator=generator)
    indices = torch.randint(0, rows, (bags * bag_size,), generator=generator)
    grad_output = torch.randn(bags, channels, generator=generator)
    bags_index = torch.arange(bags)
    return grad_output, table, indices, bags_index * bag_size, bags_index.repeat_interleave(bag_size)


def test_torch_still_has_the_private_op():
    """Fails, naming the op, when a torch release removes or renames it (the public fallback then runs, slower)."""
    assert private_api._private_per_sample_weights_backward() is not None, (
        "torch no longer has aten._embedding_bag_per_sample_weights_backward: mask2former_dinov3.private_api now "
        "uses its public fallback. Check the fast deformable attention's training speed "
        "(benchmarks/benchmark.py --train) and update private_api.py."
    )


def test_private_op_equals_the_autograd_gradient_and_the_fallback(monkeypatch):
    grad_output, table, indices, offsets, bag_of_sample = _inputs()
    weights = torch.rand(indices.shape[0], requires_grad=True)
    out = torch.nn.functional.embedding_bag(indices, table, offsets, per_sample_weights=weights, mode="sum")
    (expected,) = torch.autograd.grad(out, weights, grad_output)
    private = private_api.embedding_bag_per_sample_weights_backward(grad_output, table, indices, offsets, bag_of_sample)
    torch.testing.assert_close(private, expected)
    monkeypatch.setattr(private_api, "_private_per_sample_weights_backward", lambda: None)
    monkeypatch.setattr(private_api, "_FALLBACK_CHUNK", 7)  # several chunks
    fallback = private_api.embedding_bag_per_sample_weights_backward(grad_output, table, indices, offsets, bag_of_sample)
    torch.testing.assert_close(fallback, expected)


@pytest.mark.parametrize(
    "module", ["configuration_mask2former_dinov3", "modeling_mask2former_dinov3", "image_processing_mask2former_dinov3",
               "fast_mask2former", "presets", "loading", "convert", "training", "finetune", "data", "metrics"],
)  # fmt: skip
def test_no_private_attribute_of_torch_transformers_or_accelerate_outside_the_wrapper(module):
    """Private names of other libraries appear only in private_api.py (our own `_helpers` are fine)."""
    import importlib
    import inspect
    import re

    source = inspect.getsource(importlib.import_module(f"mask2former_dinov3.{module}"))
    pattern = re.compile(r"\b(?:torch|transformers|accelerate|accelerator|aten|trainer_utils)\.(?:\w+\.)*_[a-z]\w*")
    assert not pattern.findall(source), pattern.findall(source)
    for name in ("_models", "_wrap_model", "_prepare_inputs", "__wrapped__", "_gradient_checkpointing_func",
                 "LOAD REPORT", "_pad_images_to_max_in_batch", "_get_targets_permutation_indices"):  # fmt: skip
        assert name not in source, f"{module} uses {name}"
