"""The one place where the package touches a private API of torch, transformers or accelerate.

Everything else uses public APIs only. What is left here could not be replaced without a measured loss, so each use
is wrapped in one function with a public fallback, and `tests/test_private_api.py` fails with a clear message when
an upstream release changes it.

* `torch.ops.aten._embedding_bag_per_sample_weights_backward`: the gradient of `embedding_bag`'s per-sample weights,
  used by the fast deformable attention's backward (`fast_mask2former._WeightedRowSum`). PyTorch has no public
  function for it; the public fallback gathers the rows and takes dot products in chunks (same values, slower).
"""

from __future__ import annotations

import torch


# Rows gathered at once by the public fallback: bounds its temporary memory to about 16 MB of float32 per 64 channels.
_FALLBACK_CHUNK = 65536


def _private_per_sample_weights_backward():
    """The private aten op, or None if this torch build no longer has it."""
    return getattr(torch.ops.aten, "_embedding_bag_per_sample_weights_backward", None)


def embedding_bag_per_sample_weights_backward(
    grad_output: torch.Tensor, table: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, bag_of_sample: torch.Tensor
) -> torch.Tensor:
    """Gradient of `embedding_bag(indices, table, offsets, per_sample_weights=w, mode="sum")` with respect to `w`.

    Sample `i` (row `indices[i]` of `table`, in bag `bag_of_sample[i]`) gets `<grad_output[bag], table[row]>`.

    Args:
        grad_output: `(bags, channels)`, the gradient of the bag sums.
        table: `(rows, channels)`.
        indices: `(samples,)` table rows.
        offsets: `(bags,)` first sample of each bag.
        bag_of_sample: `(samples,)` bag of each sample.
    """
    op = _private_per_sample_weights_backward()
    if op is not None:
        # mode 0 = "sum"; padding_idx -1 = none.
        return op(grad_output, table, indices, offsets, bag_of_sample, 0, -1)
    grad = torch.empty(indices.shape[0], dtype=grad_output.dtype, device=grad_output.device)
    for start in range(0, indices.shape[0], _FALLBACK_CHUNK):
        rows = slice(start, start + _FALLBACK_CHUNK)
        grad[rows] = (table[indices[rows]] * grad_output[bag_of_sample[rows]]).sum(-1)
    return grad


__all__ = ["embedding_bag_per_sample_weights_backward"]
