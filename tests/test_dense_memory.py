"""Dense scenes in bounded memory: compact labels, chunked point losses, one attention mask for all heads.

The memory itself is measured by `benchmarks/dense_memory.py` (a benchmark, not a timed test); here the chunked
paths are checked to give upstream's values, also when they split the work into many chunks.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

from mask2former_dinov3 import Mask2FormerDINOv3ForUniversalSegmentation, fast_mask2former
from mask2former_dinov3.fast_mask2former import HeadSharedAttentionMask, MaskLogitsFromEmbeddings, use_fast_units
from tiny_configs import tiny_config


def dense_targets(counts=(9, 6), sizes=((64, 96), (48, 80)), seed=0):
    generator = torch.Generator().manual_seed(seed)
    masks = [torch.rand(n, h, w, generator=generator) > 0.7 for n, (h, w) in zip(counts, sizes)]
    classes = [torch.randint(0, 3, (n,), generator=generator) for n in counts]
    return masks, classes


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8])
def test_loss_is_the_same_for_bool_uint8_and_float_labels(dtype):
    torch.manual_seed(0)
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config(num_queries=12)).train()
    pixel_values = torch.randn(2, 3, 64, 96)
    masks, classes = dense_targets(sizes=((64, 96), (64, 96)))
    results = []
    for labels in ([m.float() for m in masks], [m.to(dtype) for m in masks]):
        model.zero_grad()
        torch.manual_seed(3)
        loss = model(pixel_values, mask_labels=labels, class_labels=classes).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (float_loss, float_grads), (compact_loss, compact_grads) = results
    torch.testing.assert_close(compact_loss, float_loss, rtol=1e-5, atol=0)
    for a, b in zip(compact_grads, float_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk_elements", [16 * 24 * 3, 2**24])  # three masks per chunk; everything at once
@pytest.mark.parametrize("dice_gradient", [1.0, 0.5])  # as `weight_dict` weighs the losses (kept), or not (replayed)
def test_chunked_point_losses_equal_upstream_on_full_masks(monkeypatch, chunk_elements, dice_gradient):
    """Many chunks per image, images of different sizes (upstream pads), bool labels (ours) against upstream's
    float labels, and more targets than fit one chunk: same losses and gradients under the same seed. The gradient
    comes from the forward pass's kept gradient when the losses' gradients are in `weight_dict`'s ratio (5:5), and
    from the backward pass's replay of the chunks otherwise."""
    monkeypatch.setattr(fast_mask2former, "_CHUNK_ELEMENTS", chunk_elements)
    passes = []
    chunks = fast_mask2former._MatchedPointSampler.chunks

    def counted_chunks(self, *args):
        passes.append(self)
        return chunks(self, *args)

    monkeypatch.setattr(fast_mask2former._MatchedPointSampler, "chunks", counted_chunks)
    config = tiny_config(train_num_points=100)
    weight_dict = {"loss_cross_entropy": 1.0, "loss_mask": 5.0, "loss_dice": 5.0}
    upstream = Mask2FormerLoss(config, weight_dict)
    ours = use_fast_units(copy.deepcopy(upstream))
    generator = torch.Generator().manual_seed(1)
    layers, batch, queries, channels = 2, 2, 11, 8
    embeddings = torch.randn(layers, batch, queries, channels, generator=generator)
    features = torch.randn(batch, channels, 16, 24, generator=generator)
    class_logits = torch.randn(layers, batch, queries, config.num_labels + 1, generator=generator)
    masks, classes = dense_targets()

    def run(loss, lazy):
        e, f, c = (t.clone().requires_grad_() for t in (embeddings, features, class_logits))
        if lazy:
            logits = [MaskLogitsFromEmbeddings(e[i], f) for i in range(layers)]
            labels = masks
        else:
            logits = list(torch.einsum("lbqc,bchw->lbqhw", e, f))
            labels = [m.float() for m in masks]
        torch.manual_seed(5)
        aux = [{"masks_queries_logits": logits[0], "class_queries_logits": c[0]}]
        losses = loss(logits[-1], c[-1], labels, classes, aux)
        sum(value * (dice_gradient if "dice" in key else 1.0) for key, value in losses.items()).backward()
        return losses, (e.grad, f.grad)

    ours_losses, ours_grads = run(ours, True)
    # One pass over the chunks per layer in the forward pass, and one more in the backward pass when replayed.
    assert len(passes) == layers * (1 if dice_gradient == 1.0 else 2)
    kept = ours_losses["loss_mask"].grad_fn.kept  # the autograd node of `_PointMaskLosses`
    assert kept is not None and kept.features.grad_fn is None and kept.embeddings.grad_fn is None  # no graph kept
    upstream_losses, upstream_grads = run(upstream, False)
    assert set(ours_losses) == set(upstream_losses)
    for key, value in upstream_losses.items():
        torch.testing.assert_close(ours_losses[key], value, rtol=1e-5, atol=1e-6, msg=key)
    for a, b in zip(ours_grads, upstream_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())
    # The generator ends where upstream leaves it (the next draw is the same).
    torch.manual_seed(5)
    run(ours, True)
    after_ours = torch.rand(3)
    torch.manual_seed(5)
    run(upstream, False)
    assert torch.equal(after_ours, torch.rand(3))


def test_head_shared_attention_mask_acts_as_upstreams_tensor_in_the_decoder(monkeypatch):
    """What upstream's decoder does with the mask (count masked keys, unmask fully masked rows), on the shared mask
    and on upstream's full tensor: the same mask; the count also when split into chunks of queries."""
    monkeypatch.setattr(fast_mask2former, "_CHUNK_ELEMENTS", 2 * 40 * 3)  # three queries per chunk
    generator = torch.Generator().manual_seed(0)
    masked = torch.rand(2, 7, 40, generator=generator) > 0.4
    masked[1, 3] = True  # a fully masked row, which the decoder unmasks
    shared = HeadSharedAttentionMask(masked, num_heads=4)
    full = shared.materialize()
    assert full.shape == shared.shape == (8, 7, 40) and full.dtype == shared.dtype == torch.bool

    def decoder_step(mask):  # upstream's Mask2FormerMaskedAttentionDecoder.forward, before each layer
        where = (mask.sum(-1) != mask.shape[-1]).to(mask.dtype)
        return mask * where.unsqueeze(-1)

    assert torch.equal(shared.sum(-1), full.sum(-1))
    stepped = decoder_step(shared)
    assert isinstance(stepped, HeadSharedAttentionMask)
    assert torch.equal(stepped.materialize(), decoder_step(full)) and not stepped.masked[1, 3].any()


def test_matcher_in_query_chunks_matches_like_upstream(monkeypatch):
    monkeypatch.setattr(fast_mask2former, "_CHUNK_ELEMENTS", 300 * 4 * 3)  # three queries per chunk
    config = tiny_config(train_num_points=300)
    ours = use_fast_units(Mask2FormerLoss(config, {"loss_cross_entropy": 1.0})).matcher
    upstream = Mask2FormerLoss(config, {"loss_cross_entropy": 1.0}).matcher
    generator = torch.Generator().manual_seed(2)
    embeddings = torch.randn(2, 11, 16, generator=generator)
    features = torch.randn(2, 16, 16, 24, generator=generator)
    classes = torch.randn(2, 11, config.num_labels + 1, generator=generator)
    masks, class_labels = dense_targets(sizes=((64, 96), (64, 96)))
    torch.manual_seed(3)
    a = ours(MaskLogitsFromEmbeddings(embeddings, features), classes, masks, class_labels)
    torch.manual_seed(3)
    b = upstream(torch.einsum("bqc,bchw->bqhw", embeddings, features), classes, [m.float() for m in masks],
                 class_labels)  # fmt: skip
    torch.manual_seed(3)  # full logits (output_auxiliary_logits=True) with bool labels
    c = ours(torch.einsum("bqc,bchw->bqhw", embeddings, features), classes, masks, class_labels)
    for (rows_a, cols_a), (rows_b, cols_b), (rows_c, cols_c) in zip(a, b, c):
        assert torch.equal(rows_a, rows_b) and torch.equal(cols_a, cols_b)
        assert torch.equal(rows_c, rows_b) and torch.equal(cols_c, cols_b)


def test_targets_read_in_their_boxes_equal_upstreams_sampling_of_padded_float_masks(monkeypatch):
    """Small cells (boxes far smaller than the image), an empty mask, a mask touching the border, points on and
    off pixel centres and outside the image, an image smaller than the padded batch size, several chunks."""
    from transformers.models.mask2former.modeling_mask2former import sample_point

    monkeypatch.setattr(fast_mask2former, "_CHUNK_ELEMENTS", 200)
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(6, 40, 50, dtype=torch.bool)
    cells = [(3, 4, 5, 7), (20, 30, 9, 4), (0, 0, 2, 50), (35, 45, 5, 5), (10, 10, 1, 1)]
    for k, (top, left, h, w) in enumerate(cells):
        masks[k, top : top + h, left : left + w] = True  # mask 5 stays empty
    padded = (48, 64)
    points = torch.rand(6, 300, 2, generator=generator) * 1.1 - 0.05
    points[:, :10] = (torch.tensor([[10.5, 5.5]]) / torch.tensor([padded[1], padded[0]]))  # on a pixel centre
    rows = torch.tensor([4, 0, 5, 2, 1, 3])
    ours = fast_mask2former._sample_in_boxes(masks, fast_mask2former._nonzero_boxes(masks), rows, points, padded)
    expected_masks = torch.nn.functional.pad(masks.float(), (0, padded[1] - 50, 0, padded[0] - 40))[rows]
    expected = sample_point(expected_masks[:, None], points, align_corners=False)[:, 0]
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    assert expected.sum() > 0
    shared = fast_mask2former._sample_at_shared_points(masks, points[0])
    torch.testing.assert_close(shared, sample_point(masks.float()[:, None], points[:1].expand(6, -1, -1),
                                                    align_corners=False)[:, 0], atol=1e-6, rtol=0)  # fmt: skip
    sparse = fast_mask2former._sparse_samples_at_shared_points(masks, fast_mask2former._nonzero_boxes(masks),
                                                               points[0], max_density=1.0)  # fmt: skip
    densified = torch.zeros(sparse.shape).index_put_((sparse.rows, sparse.columns), sparse.values)
    assert torch.equal(densified, shared) and (sparse.values != 0).all()
    assert fast_mask2former._sparse_samples_at_shared_points(masks, fast_mask2former._nonzero_boxes(masks),
                                                             points[0], max_density=0.01) is None  # fmt: skip


def test_matcher_on_small_cells_reads_sparse_targets_and_matches_like_upstream():
    """Many small cells (each point near a few boxes at most): the matcher's products read the nonzero target
    samples only, and the assignment is upstream's (every cell holds sampled points, so no two are tied)."""
    config = tiny_config(train_num_points=3000)
    ours = use_fast_units(Mask2FormerLoss(config, {"loss_cross_entropy": 1.0})).matcher
    upstream = Mask2FormerLoss(config, {"loss_cross_entropy": 1.0}).matcher
    generator = torch.Generator().manual_seed(4)
    masks = torch.zeros(40, 256, 256, dtype=torch.bool)
    for k in range(40):
        row, column = divmod(k, 7)
        masks[k, row * 36 + 3 : row * 36 + 17, column * 36 + 5 : column * 36 + 19] = True
    class_labels = [torch.randint(0, 3, (40,), generator=generator)]
    embeddings = torch.randn(1, 50, 16, generator=generator)
    features = torch.randn(1, 16, 32, 32, generator=generator)
    classes = torch.randn(1, 50, config.num_labels + 1, generator=generator)
    torch.manual_seed(3)
    points = torch.rand(1, config.train_num_points, 2)
    sparse = fast_mask2former._sparse_samples_at_shared_points(masks, fast_mask2former._nonzero_boxes(masks), points[0])
    assert sparse is not None and len(sparse.rows.unique()) == 40
    torch.manual_seed(3)
    a = ours(MaskLogitsFromEmbeddings(embeddings, features), classes, [masks], class_labels)
    torch.manual_seed(3)
    b = upstream(torch.einsum("bqc,bchw->bqhw", embeddings, features), classes, [masks.float()], class_labels)
    assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[0][1], b[0][1])


@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (30, 30), (60, 40), (40, 60), (9, 0)])
def test_assignment_is_scipys_optimum_also_on_near_additive_costs(shape, monkeypatch):
    """Scipy's matching where it is unique (random costs) and a matching of the same total cost where queries differ
    by offsets far larger than their differences across targets (random initialisation with thousands of queries),
    with unmatchable (non-finite) rows; solved as a square problem without most of the spare queries."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    solved = []
    monkeypatch.setattr(fast_mask2former, "linear_sum_assignment", lambda c: solved.append(c.shape) or
                        linear_sum_assignment(c))  # fmt: skip
    rng = np.random.default_rng(sum(shape))
    random_costs = rng.random(shape)
    rows, columns = fast_mask2former._optimal_assignment(random_costs)
    expected_rows, expected_columns = linear_sum_assignment(random_costs)
    assert np.array_equal(rows, expected_rows) and np.array_equal(columns, expected_columns)

    many, few = max(shape), min(shape)  # queries with offsets, also where they are the columns
    near_additive = rng.random((many, 1)) + 1e-3 * rng.random((many, few))
    near_additive[::4] = np.finfo(np.float32).max  # the matcher's stand-in for non-finite costs
    near_additive = near_additive if shape[0] >= shape[1] else near_additive.T
    rows, columns = fast_mask2former._optimal_assignment(near_additive)
    expected_rows, expected_columns = linear_sum_assignment(near_additive)
    assert len(rows) == len(expected_rows) == min(shape) and np.all(np.diff(rows) > 0)
    assert len(set(columns.tolist())) == len(columns)
    np.testing.assert_allclose(near_additive[rows, columns].sum(), near_additive[expected_rows, expected_columns].sum(),
                               rtol=1e-12)  # fmt: skip
    if few > 0:  # a square problem without most of the spare queries
        assert solved[-1][0] == solved[-1][1] <= few + (many - few) // 4
