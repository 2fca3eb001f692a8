"""Faster Mask2Former units: subclasses of upstream's that compute the same results with less work.

Each class below subclasses one upstream `transformers.models.mask2former` unit, overrides the smallest method it can
and adds no parameter or buffer, so state-dict keys and random initialisation stay upstream's. Each is a candidate
for its own upstream Mask2Former PR; `tests/test_speed_equivalence.py` checks every one against upstream's unit with
the same weights, and `UPSTREAMING.md` lists them with their measured gains.

`use_fast_units(module)` gives every upstream unit inside `module` its faster class, in place, after the module was
built: the model is constructed exactly as upstream constructs it (same modules, same random draws, same weights
for the same seed), and only then runs faster code. In an upstream PR each change would be merged into upstream's
class itself and this swap would not exist. `use_upstream_units` swaps back (equality tests, benchmarks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerForUniversalSegmentation,
    Mask2FormerHungarianMatcher,
    Mask2FormerLoss,
    Mask2FormerMaskedAttentionDecoderLayer,
    Mask2FormerMaskPredictor,
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    Mask2FormerSinePositionEmbedding,
    dice_loss,
    sample_point,
    sigmoid_cross_entropy_loss,
)

from .private_api import embedding_bag_per_sample_weights_backward


# Cached constants per module: a handful of (shape, dtype, device) variants at most.
_MAX_CACHED_CONSTANTS = 16


def _cached_constant(owner: nn.Module, key: tuple, build) -> torch.Tensor:
    """`build()`, memoised on `owner` under `key` (shapes, dtype, device): position embeddings and reference points.

    Upstream rebuilds these at every call (its position-embedding cache holds a single shape, and each of the three
    levels evicts the previous one). The cache is a plain dict, not a buffer, so it never reaches the state dict;
    it is bypassed while torch.compile traces, where the constants are folded into the graph instead. Constants are
    built outside inference mode, so a model first run under `torch.inference_mode()` can still be trained.
    """
    if torch.compiler.is_compiling():
        return build()
    cache = owner.__dict__.setdefault("_constant_cache", {})
    if key not in cache:
        if len(cache) >= _MAX_CACHED_CONSTANTS:
            cache.clear()
        with torch.inference_mode(False), torch.no_grad():
            cache[key] = build()
    return cache[key]


class _WeightedRowSum(torch.autograd.Function):
    """`embedding_bag(indices, table, per_sample_weights=weights, mode="sum")` with a leaner backward.

    Each output row is a weighted sum of table rows. Through autograd, `embedding_bag` runs a slower forward (it
    builds bookkeeping for its backward) and a generic sort-and-reduce backward for the table. Here the forward is
    the plain one; the table gradient is the same kind of weighted sum in the other direction (the samples sorted by
    table row once, then one `embedding_bag` over the output gradient), and the weight gradient is PyTorch's own
    per-sample-weights kernel. Same gradients, about twice as fast on CPU.
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(table, indices, weights)
        return nn.functional.embedding_bag(indices, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        table, indices, weights = ctx.saved_tensors
        num_bags, bag_size = indices.shape
        flat = indices.reshape(-1)
        grad_output = grad_output.contiguous()
        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:
            sorted_rows, order = torch.sort(flat)
            # Where each table row's samples start (searchsorted rather than bincount: its output size is static).
            row_starts = torch.searchsorted(
                sorted_rows, torch.arange(table.shape[0], dtype=flat.dtype, device=flat.device)
            )
            grad_table = nn.functional.embedding_bag(
                torch.div(order, bag_size, rounding_mode="floor"),
                grad_output,
                offsets=row_starts,
                per_sample_weights=weights.reshape(-1)[order],
                mode="sum",
            )
        if ctx.needs_input_grad[2]:
            bags = torch.arange(num_bags, dtype=flat.dtype, device=flat.device)
            grad_weights = embedding_bag_per_sample_weights_backward(
                grad_output, table, flat, bags * bag_size, bags.repeat_interleave(bag_size)
            ).view(num_bags, bag_size)
        return grad_table, None, grad_weights


def multi_scale_deformable_attention_gather(
    value: torch.Tensor,
    spatial_shapes_list: Sequence[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention as one weighted gather: same result as upstream's
    `multi_scale_deformable_attention` (bilinear sampling, `align_corners=False`, zero padding).

    Upstream samples each level with `grid_sample`, stacks the samples of all levels and points
    (`queries x heads x levels x points x head_dim` values, several times the size of the value tensor) and only then
    weights and sums them. Bilinear sampling is itself a weighted sum of four value rows, so here each point's four
    corner weights are multiplied by its attention weight and one weighted gather-sum (`embedding_bag`) reads the
    value rows: the samples are never materialised. Every level gets a zero border in the gathered table (one
    row/column before, two after), so that all corners are valid rows and corners outside the map read zeros
    (grid_sample's zero padding) without masking; points further outside are clamped onto that border, where all
    their corners are zeros, as they are for grid_sample. Index and weight arithmetic runs on `(bags, levels x
    points)` tensors, whose long rows keep PyTorch's elementwise kernels efficient.

    Args:
        value: `(batch, sequence, heads, head_dim)`, the levels' tokens concatenated (each level row-major).
        spatial_shapes_list: `(height, width)` of each level, in the order of `value`.
        sampling_locations: `(batch, queries, heads, levels, points, 2)`, normalised `(x, y)` in `[0, 1]`.
        attention_weights: `(batch, queries, heads, levels, points)`.

    Returns:
        `(batch, queries, heads * head_dim)`, in `value`'s dtype.
    """
    batch_size, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    device = value.device
    # Coordinates and sums in float32 at least, as upstream's grid_sample computes them under autocast: a bf16
    # location is off by up to a quarter pixel, and bf16 sums of 48 terms lose digits.
    compute_dtype = torch.promote_types(sampling_locations.dtype, torch.float32)

    # The table: every level with its zero border, (batch * padded tokens * heads, head_dim).
    padded_sizes = [(height + 3) * (width + 3) for height, width in spatial_shapes_list]
    padded_length = sum(padded_sizes)
    table = value.new_zeros(batch_size, padded_length, num_heads * head_dim, dtype=compute_dtype)
    levels = value.split([height * width for height, width in spatial_shapes_list], dim=1)
    level_starts = []
    start = 0
    for level, (height, width), size in zip(levels, spatial_shapes_list, padded_sizes):
        padded = table[:, start : start + size].view(batch_size, height + 3, width + 3, -1)
        padded[:, 1 : height + 1, 1 : width + 1] = level.reshape(batch_size, height, width, -1)
        level_starts.append(start)
        start += size
    table = table.view(batch_size * padded_length * num_heads, head_dim)
    index_dtype = torch.int32 if table.shape[0] < 2**31 else torch.int64

    def per_column(values, dtype):
        """Per-level constants repeated for each point: a `(levels * points,)` row."""
        return torch.tensor(values, dtype=dtype, device=device).repeat_interleave(num_points)

    num_bags, bag_columns = batch_size * num_queries * num_heads, num_levels * num_points
    locations = sampling_locations.reshape(num_bags, bag_columns, 2).to(compute_dtype)

    def lower_corner_and_fraction(coordinate, size):
        # grid_sample's own float operations (align_corners=False), not the shorter `location * size - 0.5`: at
        # initialisation every point sits exactly on a pixel centre, where the bilinear gradient jumps, and a
        # one-ulp difference would pick the other side.
        pixel = (2 * coordinate - 1 + 1) * (size / 2) - 0.5
        pixel = pixel.clamp_min(-1.0).minimum(size)
        lower = pixel.floor()
        return lower.to(index_dtype), pixel - lower

    # unbind, not two selects: the backward of a select materialises a zero tensor of the full size.
    location_x, location_y = locations.unbind(-1)
    widths = per_column([width for _, width in spatial_shapes_list], compute_dtype)
    heights = per_column([height for height, _ in spatial_shapes_list], compute_dtype)
    x, fraction_x = lower_corner_and_fraction(location_x, widths)
    y, fraction_y = lower_corner_and_fraction(location_y, heights)

    # Table row of a point's lower corner: ((b * padded_length + level start + (y + 1) * (width + 3) + x + 1)
    # * heads + head); the other corners are `heads` rows (one column) and `stride_y` rows (one line) further.
    stride_y = per_column([(width + 3) * num_heads for _, width in spatial_shapes_list], index_dtype)
    level_offsets = per_column(
        [(start + width + 4) * num_heads for start, (_, width) in zip(level_starts, spatial_shapes_list)], index_dtype
    )
    bag_offsets = (
        torch.arange(batch_size, dtype=index_dtype, device=device).view(-1, 1, 1) * (padded_length * num_heads)
        + torch.arange(num_heads, dtype=index_dtype, device=device).view(1, 1, -1)
    ).expand(batch_size, num_queries, num_heads).reshape(num_bags, 1)
    rows = y * stride_y + x * num_heads + (bag_offsets + level_offsets)
    rows_below = rows + stride_y
    corners = torch.stack((rows, rows + num_heads, rows_below, rows_below + num_heads), dim=1)

    weights = attention_weights.reshape(num_bags, bag_columns).to(compute_dtype)
    weight_below = weights * fraction_y
    weight_above = weights - weight_below
    weight_above_right = weight_above * fraction_x
    weight_below_right = weight_below * fraction_x
    corner_weights = torch.stack(
        (weight_above - weight_above_right, weight_above_right, weight_below - weight_below_right, weight_below_right),
        dim=1,
    )
    output = _WeightedRowSum.apply(table, corners.view(num_bags, -1), corner_weights.view(num_bags, -1))
    return output.view(batch_size, num_queries, num_heads * head_dim).to(value.dtype)



class FastMask2FormerSinePositionEmbedding(Mask2FormerSinePositionEmbedding):
    """Upstream's sine position embedding, built once per map size instead of at every call.

    Upstream memoises only its last call, and the three feature levels evict each other. Without a padding mask the
    embedding depends on the map size alone, so it is cached per size and broadcast over the batch.
    """

    def forward(self, shape: torch.Size, device, dtype: torch.dtype, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            return super().forward(shape, device, dtype, mask)
        single = torch.Size((1, *shape[1:]))
        table = _cached_constant(
            self, (single, dtype, device), lambda: Mask2FormerSinePositionEmbedding.forward(self, single, device, dtype)
        )
        return table.expand(shape[0], -1, -1, -1)


class FastMask2FormerMultiscaleDeformableAttention(Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
    """Upstream's multi-scale deformable attention (same parameters, same results) on a gather-based core.

    See `multi_scale_deformable_attention_gather`. Reference boxes (4-d reference points, which the pixel decoder
    never uses) take upstream's code.
    """

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                position_embeddings=None, reference_points=None, spatial_shapes_list=None, level_start_index=None,
                output_attentions=False):  # fmt: skip
        if reference_points.shape[-1] != 2:
            return super().forward(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                                   position_embeddings, reference_points, spatial_shapes_list, level_start_index,
                                   output_attentions)  # fmt: skip
        queries = self.with_pos_embed(hidden_states, position_embeddings)
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(encoder_hidden_states)
        if attention_mask is not None:  # padding tokens (True) carry no value
            value = value.masked_fill(attention_mask[..., None], 0.0)
        weights = self.attention_weights(queries).unflatten(-1, (heads, levels * points)).softmax(-1)
        # Offsets are in pixels of each level, normalised by its (width, height); in float32 at least under autocast.
        dtype = torch.promote_types(queries.dtype, torch.float32)
        sizes = torch.tensor([[w, h] for h, w in spatial_shapes_list], dtype=dtype, device=value.device)
        offsets = self.sampling_offsets(queries).unflatten(-1, (heads, levels, points, 2)).to(dtype)
        locations = reference_points[:, :, None, :, None, :] + offsets / sizes[:, None]
        weights = weights.unflatten(-1, (levels, points))
        output = multi_scale_deformable_attention_gather(
            value.unflatten(-1, (heads, -1)), spatial_shapes_list, locations, weights
        )
        return self.output_proj(output), weights


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """`(length, batch, channels)` -> `(batch, heads, length, head_dim)` (a view)."""
    length, batch_size, channels = x.shape
    return x.view(length, batch_size, num_heads, channels // num_heads).permute(1, 2, 0, 3)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """`(batch, heads, length, head_dim)` -> `(length, batch, channels)`."""
    batch_size, num_heads, length, head_dim = x.shape
    return x.permute(2, 0, 1, 3).reshape(length, batch_size, num_heads * head_dim)


class HeadSharedAttentionMask:
    """A `(batch * heads, queries, keys)` boolean attention mask (True = masked) whose heads are all the same, kept
    as its `(batch, queries, keys)` mask.

    `FastMask2FormerMaskPredictor` hands these on instead of upstream's tensor, whose heads are copies. Upstream's
    decoder reads it only through `sum(-1)`, `shape`, `dtype` and `* where.unsqueeze(-1)` (unmasking fully masked
    rows) and passes it to the decoder layer, which gives it to the fused attention as one `(batch, 1, queries,
    keys)` mask broadcast over the heads. With 2,500 queries over the 1/8 level (128x128 keys at 1024 px) upstream's
    tensor is 330 MB, the int64 copy that `sum(-1)` makes of it 2.6 GB, and the float mask that the fused attention
    keeps for its backward pass 1.3 GB; here 40 MB, 40 MB (counted a chunk of queries at a time) and 160 MB.
    """

    dtype = torch.bool

    def __init__(self, masked: torch.Tensor, num_heads: int):
        self.masked = masked
        self.num_heads = num_heads

    @property
    def shape(self) -> torch.Size:
        """The shape of the full mask, `(batch * heads, queries, keys)`."""
        batch, queries, keys = self.masked.shape
        return torch.Size((batch * self.num_heads, queries, keys))

    @property
    def device(self) -> torch.device:
        return self.masked.device

    def materialize(self) -> torch.Tensor:
        """The full `(batch * heads, queries, keys)` mask, as upstream's mask predictor returns it."""
        return self.masked[:, None].expand(-1, self.num_heads, -1, -1).flatten(0, 1)

    def sum(self, dim: int) -> torch.Tensor:
        """Masked keys per `(batch * heads, query)` row for `dim=-1` (a chunk of queries at a time, so that the int64
        copy the sum makes stays small); other dimensions sum the full mask."""
        if dim not in (-1, 2):
            return self.materialize().sum(dim)
        step = _rows_per_chunk(self.masked.shape[-1] * 2)
        counts = torch.cat([chunk.sum(-1) for chunk in self.masked.split(step, dim=1)], dim=1)
        return counts.repeat_interleave(self.num_heads, dim=0)

    def __mul__(self, other: torch.Tensor) -> "HeadSharedAttentionMask | torch.Tensor":
        """`mask * keep`: with `keep` of shape `(batch * heads, queries, 1)`, as upstream's decoder computes it from
        `sum(-1)` (the same for every head), the mask of the first head is kept; anything else is multiplied out."""
        if other.dim() != 3 or other.shape != (*self.shape[:2], 1):
            return self.materialize() * other
        keep = other.view(-1, self.num_heads, *other.shape[1:])[:, 0].to(torch.bool)
        return HeadSharedAttentionMask(self.masked & keep, self.num_heads)

    __rmul__ = __mul__

    def clone(self) -> "HeadSharedAttentionMask":
        return HeadSharedAttentionMask(self.masked.clone(), self.num_heads)


class FastMask2FormerMaskedAttentionDecoderLayer(Mask2FormerMaskedAttentionDecoderLayer):
    """Upstream's masked-attention decoder layer (same parameters, same results) on fused attention kernels.

    Upstream computes both attentions explicitly: `nn.MultiheadAttention` also averages its weights over heads, and
    the self-attention always materialises its weights. Without `output_attentions` nothing reads them, so both
    attentions run through `scaled_dot_product_attention` with the layer's own projections. With
    `output_attentions=True` upstream's code runs. (With dropout > 0 the random dropout masks are drawn differently
    from upstream's, as any two dropout implementations do; the default dropout is 0.)
    """

    def _cross_attention(self, queries, keys, values, masked):
        """`self.cross_attn(queries, keys, values, attn_mask=masked)` without weights; `(length, batch, channels)`
        inputs, `masked` as `nn.MultiheadAttention` takes it: `(batch * heads, queries, keys)`, True = masked."""
        attention = self.cross_attn
        weight_q, weight_k, weight_v = attention.in_proj_weight.chunk(3)
        bias_q, bias_k, bias_v = (
            attention.in_proj_bias.chunk(3) if attention.in_proj_bias is not None else (None, None, None)
        )
        heads = attention.num_heads
        query = _split_heads(nn.functional.linear(queries, weight_q, bias_q), heads)
        key = _split_heads(nn.functional.linear(keys, weight_k, bias_k), heads)
        value = _split_heads(nn.functional.linear(values, weight_v, bias_v), heads)
        if isinstance(masked, HeadSharedAttentionMask):  # one mask broadcast over the heads
            allowed = ~masked.masked[:, None]
        else:
            allowed = None if masked is None else ~masked.view(query.shape[0], heads, *masked.shape[-2:])
        output = nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=allowed, dropout_p=attention.dropout if self.training else 0.0
        )
        return attention.out_proj(_merge_heads(output))

    def _self_attention(self, hidden_states, query_position_embeddings):
        """`self.self_attn` (position embeddings on queries and keys, not values) without weights."""
        attention = self.self_attn
        queries_keys = self.with_pos_embed(hidden_states, query_position_embeddings)
        heads = attention.num_heads
        output = nn.functional.scaled_dot_product_attention(
            _split_heads(attention.q_proj(queries_keys), heads),
            _split_heads(attention.k_proj(queries_keys), heads),
            _split_heads(attention.v_proj(hidden_states), heads),
            dropout_p=attention.dropout if self.training else 0.0,
        )
        return attention.out_proj(_merge_heads(output))

    def forward(self, hidden_states, level_index=None, attention_mask=None, position_embeddings=None,
                query_position_embeddings=None, encoder_hidden_states=None, encoder_attention_mask=None,
                output_attentions=False):  # fmt: skip
        if output_attentions:
            if isinstance(encoder_attention_mask, HeadSharedAttentionMask):
                encoder_attention_mask = encoder_attention_mask.materialize()
            return super().forward(hidden_states, level_index, attention_mask, position_embeddings,
                                   query_position_embeddings, encoder_hidden_states, encoder_attention_mask, True)  # fmt: skip
        values = encoder_hidden_states[level_index]
        keys = self.with_pos_embed(values, position_embeddings[level_index])

        def dropout(x, p=self.dropout):
            return nn.functional.dropout(x, p=p, training=self.training)

        def feed_forward(x):
            return self.fc2(dropout(self.activation_fn(self.fc1(x)), self.activation_dropout))

        def cross_attention(x):
            return self._cross_attention(self.with_pos_embed(x, query_position_embeddings), keys, values,
                                         encoder_attention_mask)  # fmt: skip

        # Cross-attention, self-attention, feed-forward: normalised before each block (pre_norm) or after it.
        blocks = (
            (cross_attention, self.cross_attn_layer_norm),
            (lambda x: self._self_attention(x, query_position_embeddings), self.self_attn_layer_norm),
            (feed_forward, self.final_layer_norm),
        )
        for block, norm in blocks:
            if self.pre_norm:
                hidden_states = hidden_states + dropout(block(norm(hidden_states)))
            else:
                hidden_states = norm(hidden_states + dropout(block(hidden_states)))
        return (hidden_states,)


class MaskLogitsFromEmbeddings:
    """Mask logits `einsum("bqc,bchw->bqhw", mask_embeddings, pixel_embeddings)`, built only where they are read.

    `FastMask2FormerMaskPredictor` returns these instead of full `(batch, queries, height, width)` tensors while
    `FastMask2FormerForUniversalSegmentation` says that no caller reads every query's full-resolution mask (training
    and inference without auxiliary outputs). Upstream's decoder, model and loss pass them on unchanged: the loss
    indexes only the matched queries (`logits[batch_indices, query_indices]`), and `FastMask2FormerHungarianMatcher`
    samples the mask features at its points instead of whole masks. Selecting queries and sampling points both
    commute with the query-feature product, so the values are upstream's.
    """

    def __init__(self, mask_embeddings: torch.Tensor, pixel_embeddings: torch.Tensor):
        self.mask_embeddings = mask_embeddings
        self.pixel_embeddings = pixel_embeddings

    @property
    def shape(self) -> torch.Size:
        """The shape of the full logits, `(batch, queries, height, width)`."""
        return torch.Size((*self.mask_embeddings.shape[:2], *self.pixel_embeddings.shape[-2:]))

    def materialize(self) -> torch.Tensor:
        """The full logits."""
        return torch.einsum("bqc,bchw->bqhw", self.mask_embeddings, self.pixel_embeddings)

    def __getitem__(self, index) -> torch.Tensor:
        if not (isinstance(index, tuple) and len(index) == 2 and all(torch.is_tensor(i) for i in index)):
            return self.materialize()[index]
        # `(batch indices, query indices)` as the loss selects matched queries: one product per image.
        batch, query = index
        order = torch.argsort(batch, stable=True)
        batch, query = batch[order], query[order]
        per_image = [
            torch.einsum("qc,chw->qhw", self.mask_embeddings[b, query[batch == b]], self.pixel_embeddings[b])
            for b in range(self.mask_embeddings.shape[0])
        ]
        return torch.cat(per_image)[torch.argsort(order)]


class FastMask2FormerMaskPredictor(Mask2FormerMaskPredictor):
    """Upstream's mask predictor computing the attention mask at attention resolution, and full masks on demand.

    Upstream predicts every query's mask at the mask-feature resolution (1/4) and resizes it to the next layer's
    attention resolution (1/32, 1/16 or 1/8). Bilinear resizing and the query-feature product are both linear, so
    here the mask features are resized and then multiplied: the same logits at a fraction of the cost, computed in
    float32 even under autocast (a bf16 logit near 0 would flip that pixel of the mask). The full-resolution logits
    are returned as upstream's tensor, or as `MaskLogitsFromEmbeddings` while `lazy_masks` is set.
    """

    lazy_masks = False

    def forward(self, outputs: torch.Tensor, pixel_embeddings: torch.Tensor, attention_mask_target_size=None):
        mask_embeddings = self.mask_embedder(outputs.transpose(0, 1))
        with torch.no_grad(), torch.autocast(pixel_embeddings.device.type, enabled=False):
            resized = nn.functional.interpolate(
                pixel_embeddings.float(), size=attention_mask_target_size, mode="bilinear", align_corners=False
            )
            logits = torch.einsum("bqc,bchw->bqhw", mask_embeddings.float(), resized)
            # Upstream's test (sigmoid < 0.5 is not `logit < 0` for tiny negative logits in float).
            masked = logits.sigmoid().flatten(2) < 0.5
        masks = MaskLogitsFromEmbeddings(mask_embeddings, pixel_embeddings)
        return (masks if self.lazy_masks else masks.materialize()), HeadSharedAttentionMask(masked, self.num_heads)


class _SparseTargets:
    """A `(targets, points)` matrix of target samples held as its nonzero entries: `rows` (target), `columns`
    (point) and `values`, for the matcher's products when the targets are small against the image (cells)."""

    def __init__(self, rows: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]):
        self.rows, self.columns, self.values, self.shape = rows, columns, values, shape

    def to(self, like: torch.Tensor) -> "_SparseTargets":
        """The same matrix with values in `like`'s dtype and device."""
        return _SparseTargets(self.rows, self.columns, self.values.to(like), self.shape)

    def sum(self, dim: int) -> torch.Tensor:
        """Per-target sums (`dim=1`)."""
        if dim != 1:
            raise ValueError("only per-target sums (dim=1) are used")
        return self.values.new_zeros(self.shape[0]).index_add_(0, self.rows, self.values)


def _times_targets(x: torch.Tensor, targets: torch.Tensor | _SparseTargets) -> torch.Tensor:
    """`x @ targets.T` for `(queries, points)` `x`; from the nonzero target samples only when sparse (each point
    lies in a few cells at most, so this reads a few values per point instead of one per target)."""
    if isinstance(targets, torch.Tensor):
        return x @ targets.T
    # (points, queries) rows gathered at the nonzeros, weighted and summed per target.
    gathered = x.T[targets.columns] * targets.values[:, None]
    return x.new_zeros(targets.shape[0], x.shape[0]).index_add_(0, targets.rows, gathered).T


def _pair_wise_mask_costs(logits: torch.Tensor, targets) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream's `pair_wise_sigmoid_cross_entropy_loss` and `pair_wise_dice_loss` of `(queries, points)` logits
    against `(targets, points)` binary targets (a tensor or `_SparseTargets`), with two products instead of three.

    BCE(x, 1) - BCE(x, 0) = -x, so the cross-entropy against a target t is sum(BCE(x, 0)) - x . t: one product
    instead of one for the positive and one for the negative points. With hundreds of targets per image these
    products are most of the matcher's time, unless the targets are sparse (`_SparseTargets`).
    """
    points = logits.shape[1]
    cross_entropy = (nn.functional.softplus(logits).sum(1, keepdim=True) - _times_targets(logits, targets)) / points
    probabilities = logits.sigmoid()
    overlap = 2 * _times_targets(probabilities, targets)
    dice = 1 - (overlap + 1) / (probabilities.sum(1, keepdim=True) + targets.sum(1)[None] + 1)
    return cross_entropy, dice


class FastMask2FormerHungarianMatcher(Mask2FormerHungarianMatcher):
    """Upstream's Hungarian matcher, which can also match `MaskLogitsFromEmbeddings` without building them, reads
    targets of any dtype at its points only and computes the costs a chunk of queries at a time.

    The matcher compares masks at `num_points` random points shared by all queries of an image. Sampling (bilinear)
    and the query-feature product are both linear, so the mask features are sampled once at those points and
    multiplied by the query embeddings: the same costs without any query's full mask. Points are drawn as upstream
    does (one `torch.rand` per image), so a fixed seed gives the same matching. With many small targets (cells) each
    point lies near a few of them at most, and the products read only the nonzero target samples
    (`_sparse_samples_at_shared_points`): at 2,000 cells and 2,500 queries they were most of the matcher's time
    after the assignment itself, which is solved as an equivalent square problem (`_optimal_assignment`).
    """

    @torch.no_grad()
    def forward(self, masks_queries_logits, class_queries_logits, mask_labels, class_labels):
        lazy = isinstance(masks_queries_logits, MaskLogitsFromEmbeddings)
        if lazy:
            embeddings, features = masks_queries_logits.mask_embeddings, masks_queries_logits.pixel_embeddings
        indices = []
        for image, (classes, targets) in enumerate(zip(class_labels, mask_labels)):
            points = torch.rand(1, self.num_points, 2, device=class_queries_logits.device)
            # Targets of any dtype are read at the points only (bool labels are never converted as a whole); as
            # their nonzero samples when few points fall near each target's box (cells), else as a dense matrix.
            boxes = mask_labels.boxes(image) if isinstance(mask_labels, _TargetMasks) else _nonzero_boxes(targets)
            target_points = _sparse_samples_at_shared_points(targets, boxes, points[0])
            if target_points is None:
                target_points = _sample_at_shared_points(targets, points[0])
            target_points = target_points.to(class_queries_logits)
            if lazy:
                feature_points = sample_point(features[image : image + 1], points, align_corners=False)[0]
            class_costs = class_queries_logits[image].softmax(-1)[:, classes]
            # A chunk of queries at a time: with thousands of queries their point logits alone are 100s of MB.
            costs = []
            for queries in torch.split(torch.arange(len(class_costs)), _rows_per_chunk(self.num_points * 4)):
                if lazy:
                    predicted_points = embeddings[image, queries] @ feature_points
                else:
                    predicted = masks_queries_logits[image, queries][:, None]
                    predicted_points = sample_point(predicted, points.expand(len(queries), -1, -1),
                                                    align_corners=False)[:, 0]  # fmt: skip
                cross_entropy, dice = _pair_wise_mask_costs(predicted_points, target_points.to(predicted_points))
                costs.append(self.cost_mask * cross_entropy + self.cost_dice * dice
                             - self.cost_class * class_costs[queries])  # fmt: skip
            costs = torch.cat(costs)
            # Non-finite costs are matched last, as upstream; float(): scipy takes no bfloat16.
            largest = torch.finfo(torch.float32).max
            costs = torch.nan_to_num(costs.float(), nan=largest, posinf=largest, neginf=largest)
            rows, cols = _optimal_assignment(costs.cpu().double().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices


def _optimal_assignment(costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`linear_sum_assignment(costs)` for a `(queries, targets)` matrix, solved as an equivalent square problem
    without the queries that no optimal matching uses.

    At random initialisation with thousands of queries, each query's costs barely vary across the targets while the
    queries differ by far more, and scipy's shortest augmenting paths then run through nearly every assigned query
    for each target (10-14 s at 2,500 x 2,000 in a training step). With one free "unmatched" column per spare query
    the problem is square, so subtracting each row's and column's minimum changes no matching and removes those
    offsets; solving the queries in order of their lowest cost keeps the paths short (about 1.3 s on the same
    matrices; at most 0.6 s slower on random 2,500 x 2,000 costs, which scipy solves in 0.15 s). The optimum has
    the same total cost; where several matchings tie, another of them may be returned.
    """
    transposed = costs.shape[0] < costs.shape[1]
    if transposed:
        costs = costs.T
    targets = costs.shape[1]
    if targets == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    lowest, highest = costs.min(1), costs.max(1)
    # A query whose lowest cost is above the highest costs of `targets` other queries is in no optimal matching:
    # one of those queries is always free, and cheaper for whichever target it would take.
    rows = np.flatnonzero(lowest <= np.partition(highest, targets - 1)[targets - 1])
    rows = rows[np.argsort(lowest[rows], kind="stable")]
    kept = costs[rows]
    square = np.full((len(rows), len(rows)), kept.max())  # any constant: every spare column is used
    square[:, :targets] = kept
    square -= square.min(1, keepdims=True)
    square -= square.min(0, keepdims=True)
    matched_rows, matched_columns = linear_sum_assignment(square)
    real = matched_columns < targets
    matched_rows, matched_columns = rows[matched_rows[real]], matched_columns[real]
    if transposed:
        matched_rows, matched_columns = matched_columns, matched_rows
    order = np.argsort(matched_rows)
    return matched_rows[order], matched_columns[order]


# Largest temporary tensor of the chunked point losses, in elements (32 MB of float32).
_CHUNK_ELEMENTS = 2**23


def _rows_per_chunk(*row_sizes: int) -> int:
    """How many rows of `row_sizes` elements each fit in one chunk of `_CHUNK_ELEMENTS`."""
    return max(1, _CHUNK_ELEMENTS // max(1, *row_sizes))


def _most_uncertain(logits: torch.Tensor, candidates: torch.Tensor, uncertainty_function, count: int) -> torch.Tensor:
    """The `count` most uncertain of `candidates` (`(masks, points, 2)`) for `(masks, 1, height, width)` logits,
    in no particular order (the point losses are sums over points)."""
    grid, _ = _most_uncertain_in_grid(logits, 2.0 * candidates - 1.0, uncertainty_function, count)
    return grid.add_(1.0).mul_(0.5)


def _most_uncertain_in_grid(logits: torch.Tensor, grid: torch.Tensor, uncertainty_function,
                            count: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """`_most_uncertain` of candidates given as grid_sample's `[-1, 1]` coordinates (`2 * points - 1`, exactly as
    `sample_point` computes them), returned as such with the logits sampled there (`(masks, count)`): the values
    that sampling the chosen points again would give."""
    sampled = nn.functional.grid_sample(logits, grid[:, :, None], align_corners=False)[:, 0, :, 0]
    chosen = uncertainty_function(sampled[:, None])[:, 0].topk(count, dim=1, sorted=False).indices
    return grid.gather(1, chosen[..., None].expand(-1, -1, 2)), sampled.gather(1, chosen)


class _TargetMasks(list):
    """A batch's target masks (a list, as upstream's loss passes it on) with each mask's bounding box, computed once
    per loss call and read by every decoder layer's matcher and point losses."""

    def boxes(self, image: int) -> torch.Tensor:
        """`(masks, 4)` `[top, bottom, left, right)` boxes of image `image`'s masks' nonzero pixels."""
        cache = self.__dict__.setdefault("_boxes", {})
        if image not in cache:
            cache[image] = _nonzero_boxes(self[image])
        return cache[image]


def _nonzero_boxes(masks: torch.Tensor) -> torch.Tensor:
    """`(N, 4)` int64 `[top, bottom, left, right)` of the nonzero pixels of each `(N, H, W)` mask (all zero for an
    empty mask), a chunk of masks at a time."""
    height, width = masks.shape[-2:]
    boxes = []
    for chunk in masks.split(_rows_per_chunk(height * width)):
        # Reduced as uint8: bool reductions are not vectorised on CPU (8-40x slower at 1024 px).
        nonzero = (chunk if chunk.dtype == torch.bool else chunk != 0).view(torch.uint8)
        rows, columns = nonzero.amax(2), nonzero.amax(1)
        top, left = rows.int().argmax(1), columns.int().argmax(1)
        bottom, right = height - rows.flip(1).int().argmax(1), width - columns.flip(1).int().argmax(1)
        box = torch.stack((top, bottom, left, right), 1)
        boxes.append(box * rows.any(1, keepdim=True))
    return torch.cat(boxes) if boxes else torch.zeros(0, 4, dtype=torch.int64, device=masks.device)


def _sample_in_boxes(masks: torch.Tensor, boxes: torch.Tensor, rows: torch.Tensor, coordinates: torch.Tensor,
                     padded_size: tuple[int, int]) -> torch.Tensor:  # fmt: skip
    """`sample_point(padded[rows][:, None].float(), coordinates, align_corners=False)[:, 0]`, where `padded` is
    `masks` (`(N, h, w)`, any dtype) zero-padded at the bottom and right to `padded_size`, reading only each mask's
    bounding box.

    Outside its box a mask is zero, as grid_sample's zero padding reads it, so each mask's box is cut out (a cell is
    a few hundred pixels of a million at 1024 px), the points are moved into the box and sampled there: no mask is
    converted to float or padded as a whole.
    """
    boxes = boxes[rows.to(boxes.device)].tolist()
    sampled, first = [], 0
    while first < len(boxes):
        # As many masks as fit one chunk at the size of the largest box among them.
        last, height, width = first, 1, 1
        while last < len(boxes):
            top, bottom, left, right = boxes[last]
            grown = max(height, bottom - top), max(width, right - left)
            if last > first and (last - first + 1) * grown[0] * grown[1] > _CHUNK_ELEMENTS:
                break
            height, width, last = *grown, last + 1
        crops = coordinates.new_zeros(last - first, 1, height, width)
        for crop, row, (top, bottom, left, right) in zip(crops, rows[first:last].tolist(), boxes[first:last]):
            crop[0, : bottom - top, : right - left] = masks[row, top:bottom, left:right]
        origin = coordinates.new_tensor([[box[2], box[0]] for box in boxes[first:last]])[:, None]
        sizes = coordinates.new_tensor([padded_size[1], padded_size[0]])
        # Pixel coordinates as grid_sample computes them (align_corners=False), then in each box, normalised to it.
        pixels = (2 * coordinates[first:last] - 1 + 1) * (sizes / 2) - 0.5 - origin
        grid = (pixels + 0.5) * (2 / coordinates.new_tensor([width, height])) - 1
        sampled.append(nn.functional.grid_sample(crops, grid[:, :, None], align_corners=False)[:, 0, :, 0])
        first = last
    return torch.cat(sampled) if sampled else coordinates.new_zeros(0, coordinates.shape[1])


def _sample_matched_targets(mask_labels, matched_targets, coordinates: torch.Tensor,
                            padded_size: tuple[int, int] | None = None, images=None) -> torch.Tensor:  # fmt: skip
    """`(matches, points)` bilinear samples of each image's matched target masks at `coordinates`, as upstream's
    `sample_point` of its zero-padded float targets gives them (up to float rounding).

    Targets of any dtype (bool, uint8, float) are read in their bounding boxes only (`_sample_in_boxes`), so a
    thousand full-resolution bool masks are never converted or padded. `images`: the indices in `mask_labels` of
    the images that `matched_targets` lists (default: all, in order).
    """
    if padded_size is None:  # upstream pads every image's targets to the largest of the batch
        padded_size = tuple(max(m.shape[d] for m in mask_labels) for d in (-2, -1))
    images = range(len(mask_labels)) if images is None else images
    labels, start = [], 0
    for image, matched in zip(images, matched_targets):
        targets = mask_labels[image]
        boxes = mask_labels.boxes(image) if isinstance(mask_labels, _TargetMasks) else _nonzero_boxes(targets)
        points = coordinates[start : start + len(matched)]
        labels.append(_sample_in_boxes(targets, boxes, matched, points, padded_size))
        start += len(matched)
    return torch.cat(labels) if labels else coordinates.new_zeros(0, coordinates.shape[1])


def _sample_at_shared_points(targets: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """`sample_point(targets[:, None].float(), points.expand(N, -1, -1), align_corners=False)[:, 0]` for `(N, H,
    W)` targets of any dtype and `(points, 2)` coordinates shared by all: the four neighbouring pixels of each point
    are found once and read from every target (no target is converted to float as a whole)."""
    height, width = targets.shape[-2:]
    pixels = (2 * points - 1 + 1) * (points.new_tensor([width, height]) / 2) - 0.5
    lower = pixels.floor()
    fraction = pixels - lower
    lower = lower.long()
    corners = []
    for dy in (0, 1):
        for dx in (0, 1):
            column, line = lower[:, 0] + dx, lower[:, 1] + dy
            inside = (column >= 0) & (column < width) & (line >= 0) & (line < height)
            weight = (fraction[:, 0] if dx else 1 - fraction[:, 0]) * (fraction[:, 1] if dy else 1 - fraction[:, 1])
            index = line.clamp(0, height - 1) * width + column.clamp(0, width - 1)
            corners.append((index, weight * inside))
    flat = targets.reshape(len(targets), height * width)
    sampled = []
    for chunk in flat.split(_rows_per_chunk(len(points) * 4)):
        total = points.new_zeros(len(chunk), len(points))
        for index, weight in corners:
            total += chunk[:, index].to(total.dtype) * weight
        sampled.append(total)
    return torch.cat(sampled) if sampled else points.new_zeros(0, len(points))


def _sparse_samples_at_shared_points(targets: torch.Tensor, boxes: torch.Tensor, points: torch.Tensor,
                                     max_density: float = 1 / 16) -> _SparseTargets | None:  # fmt: skip
    """`_sample_at_shared_points(targets, points)` as its nonzero entries, found from the targets' `[top, bottom,
    left, right)` boxes; None when more than `max_density` of all (target, point) pairs lie near a box (large
    masks, where the dense matrix is cheaper).

    A point reads the 2x2 pixels from its lower corner, so it can be nonzero for a target only if that block meets
    the target's box. The points are sorted by column once; each box's column range is then a slice of them (two
    binary searches), and only those points' lines are checked and their four pixels read.
    """
    height, width = targets.shape[-2:]
    num_targets, num_points = len(targets), len(points)
    pixels = (2 * points - 1 + 1) * (points.new_tensor([width, height]) / 2) - 0.5
    lower = pixels.floor()
    fraction = pixels - lower
    column, line = lower.long().unbind(1)
    column_sorted, order = torch.sort(column)
    top, bottom, left, right = boxes.to(column.device).T.contiguous()
    starts = torch.searchsorted(column_sorted, left - 1)
    counts = (torch.searchsorted(column_sorted, right) - starts).clamp_min(0)
    total = int(counts.sum())
    if total > max_density * num_targets * num_points:
        return None
    rows = torch.repeat_interleave(torch.arange(num_targets, device=column.device), counts, output_size=total)
    first = torch.cumsum(counts, 0) - counts
    positions = torch.arange(total, device=column.device) + torch.repeat_interleave(starts - first, counts,
                                                                                   output_size=total)  # fmt: skip
    columns = order[positions]
    near = (line[columns] >= top[rows] - 1) & (line[columns] < bottom[rows])
    rows, columns = rows[near], columns[near]
    values = points.new_zeros(len(rows))
    for dy in (0, 1):  # the order of `_sample_at_shared_points`, so that each sample is summed alike
        for dx in (0, 1):
            x, y = column[columns] + dx, line[columns] + dy
            inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
            weight = (fraction[columns, 0] if dx else 1 - fraction[columns, 0]) * (
                fraction[columns, 1] if dy else 1 - fraction[columns, 1]
            )
            read = targets[rows, y.clamp(0, height - 1), x.clamp(0, width - 1)].to(values.dtype)
            values += read * (weight * inside)
    nonzero = values != 0
    return _SparseTargets(rows[nonzero], columns[nonzero], values[nonzero], (num_targets, num_points))


def _rng_state(device: torch.device):
    """The state of the default generator that `torch.rand(..., device=device)` draws from."""
    if device.type == "cpu":
        return torch.get_rng_state()
    module = torch.get_device_module(device)
    try:
        return module.get_rng_state(device)
    except TypeError:  # backends with one device and no `device` argument (mps)
        return module.get_rng_state()


def _set_rng_state(device: torch.device, state) -> None:
    """Set the state of the default generator of `device` (see `_rng_state`)."""
    if device.type == "cpu":
        torch.set_rng_state(state)
        return
    module = torch.get_device_module(device)
    try:
        module.set_rng_state(state, device)
    except TypeError:
        module.set_rng_state(state)


class _MatchedPointSampler:
    """Upstream's importance-sampled points of the matched queries' masks `embeddings @ features`, a chunk of masks
    at a time, with upstream's random draws in upstream's order, as often as needed.

    Upstream draws every mask's candidate points first (one `torch.rand`), then every mask's random points. The
    generator is run past the candidates once (drawn chunk by chunk, as `chunks` draws them) to find the state at
    which the random points start; `chunks` then replays the draws from the saved states, so the backward pass gets
    the forward pass's points without storing them. Each pass draws its chunks' candidates, and computes their masks,
    into one buffer each: a fresh tensor per chunk would be a fresh allocation of the chunk's size (faulted in anew
    when the allocator returns it). The most uncertain points' logits are kept from their ranking, where upstream
    samples them again (the same values: the same masks at the same coordinates).
    """

    def __init__(self, embeddings: torch.Tensor, features: torch.Tensor, loss, matched_targets):
        self.device = embeddings.device
        self.counts = [len(matched) for matched in matched_targets]
        self.offsets = [sum(self.counts[:image]) for image in range(len(self.counts))]
        self.num_points = loss.num_points
        self.uncertain = int(loss.importance_sample_ratio * loss.num_points)
        self.candidates = int(loss.num_points * loss.oversample_ratio)
        self.uncertainty = loss.calculate_uncertainty
        step = _rows_per_chunk(features.shape[-2] * features.shape[-1], self.candidates * 2)
        self.spans = [(image, first, min(first + step, count)) for image, count in enumerate(self.counts)
                      for first in range(0, count, step)]  # fmt: skip
        self.start_state = _rng_state(self.device)
        buffer = self._candidates_buffer()
        for _, first, last in self.spans:
            self._draw_candidates(buffer, last - first)
        self.random_state = _rng_state(self.device)
        torch.rand(sum(self.counts), self.num_points - self.uncertain, 2, device=self.device)
        self.end_state = _rng_state(self.device)

    def _candidates_buffer(self) -> torch.Tensor:
        """Room for the largest chunk's candidate points."""
        rows = max((last - first for _, first, last in self.spans), default=0)
        return torch.empty(rows, self.candidates, 2, device=self.device)

    def _draw_candidates(self, buffer: torch.Tensor, masks: int) -> torch.Tensor:
        """`masks` masks' candidates, upstream's `torch.rand(masks, candidates, 2)`, drawn into `buffer` as grid
        coordinates: `uniform_(-1, 1)` gives the floats `2 * u - 1` that `sample_point` computes from the same draws
        (doubling is exact), without a pass over them."""
        return buffer[:masks].uniform_(-1.0, 1.0)

    def chunks(self, embeddings: torch.Tensor, features: torch.Tensor, final_state):
        """Per chunk: `(image, rows of embeddings, rows of that image's matches, coordinates, logits)`, with
        `(masks, points)` coordinates and float32 logits; the generator is left at `final_state`."""
        _set_rng_state(self.device, self.random_state)
        random_points = torch.rand(sum(self.counts), self.num_points - self.uncertain, 2, device=self.device)
        _set_rng_state(self.device, self.start_state)
        buffer = self._candidates_buffer()
        masks_buffer = None
        if not torch.is_autocast_enabled(self.device.type) and embeddings.dtype == features.dtype == torch.float32:
            masks_buffer = features.new_empty(buffer.shape[0], features.shape[-2] * features.shape[-1])
        try:
            for image, first, last in self.spans:
                rows = slice(self.offsets[image] + first, self.offsets[image] + last)
                with torch.no_grad():
                    if masks_buffer is None:
                        # Sampled in float32, as grid_sample runs under autocast.
                        masks = (embeddings[rows] @ features[image].flatten(1)).to(random_points.dtype)
                    else:  # the same product, into the buffer (a fresh product is faulted in anew each chunk)
                        masks = torch.mm(embeddings[rows], features[image].flatten(1), out=masks_buffer[: last - first])
                    masks = masks.view(last - first, 1, *features.shape[-2:])
                    grid = self._draw_candidates(buffer, last - first)
                    uncertain, uncertain_logits = _most_uncertain_in_grid(masks, grid, self.uncertainty, self.uncertain)
                    # Upstream samples all points again; the uncertain ones' logits are those just sampled.
                    random_logits = sample_point(masks, random_points[rows], align_corners=False)[:, 0]
                    logits = torch.cat([uncertain_logits, random_logits], 1)
                    points = torch.cat([uncertain.add_(1.0).mul_(0.5), random_points[rows]], 1)
                del masks, grid
                yield image, rows, slice(first, last), points, logits
        finally:
            _set_rng_state(self.device, final_state)


class _MaskGradients:
    """Gradients of `embeddings` and `features` summed from chunks of gradients at the point logits of the masks
    `embeddings[rows] @ features[image]`: the bilinear sampling's gradient scattered onto a zero mask, then two
    matrix products."""

    def __init__(self, embeddings: torch.Tensor, features: torch.Tensor, needs_input_grad):
        self.inputs = embeddings, features
        self.embeddings = torch.zeros_like(embeddings) if needs_input_grad[0] else None
        # Contiguous, so that each image's gradient is a `(channels, pixels)` view to accumulate into.
        self.features = features.new_zeros(features.shape) if needs_input_grad[1] else None
        self.zero_masks = None

    def _zero_masks(self, masks: int, like: torch.Tensor) -> torch.Tensor:
        """`(masks, 1, height, width)` zeros to sample for the sampling's gradient, from one tensor for all chunks:
        that gradient does not depend on the sampled values, and a fresh tensor per chunk is faulted in anew."""
        if self.zero_masks is None or len(self.zero_masks) < masks or self.zero_masks.dtype != like.dtype:
            self.zero_masks = like.new_zeros(masks, 1, *self.inputs[1].shape[-2:])
        return self.zero_masks[:masks].detach().requires_grad_()

    def add(self, image: int, rows: slice, points: torch.Tensor, grad_logits: torch.Tensor) -> None:
        """Add the gradient `grad_logits` (`(masks, points)`) of the chunk's logits at `points`."""
        embeddings, features = self.inputs
        # In the inputs' dtypes also when the forward pass (which may keep the gradient) runs under autocast.
        with torch.autocast(points.device.type, enabled=False):
            with torch.enable_grad():
                zero_masks = self._zero_masks(len(points), points)
                sampled = sample_point(zero_masks, points, align_corners=False)
                (grad_masks,) = torch.autograd.grad(sampled, zero_masks, grad_logits[:, None])
            # Outside grad mode: the products of the inputs must not build a graph that keeps every chunk.
            grad_masks = grad_masks.flatten(1).to(features.dtype)
            if self.embeddings is not None:
                self.embeddings[rows] = grad_masks @ features[image].flatten(1).T
            if self.features is not None:  # in place: no `(channels, pixels)` product per chunk to add
                self.features[image].view(features.shape[1], -1).addmm_(embeddings[rows].T, grad_masks)


def _point_losses(logits, labels, num_masks, grad_mask=None, grad_dice=None):
    """`(loss_mask, loss_dice)` of a chunk's point logits, and with `grad_mask`, `grad_dice` also the gradient of
    `grad_mask * loss_mask + grad_dice * loss_dice` with respect to `logits`."""
    if grad_mask is None:
        return sigmoid_cross_entropy_loss(logits, labels, num_masks), dice_loss(logits, labels, num_masks), None
    with torch.enable_grad():
        logits = logits.detach().requires_grad_()
        loss_mask = sigmoid_cross_entropy_loss(logits, labels, num_masks)
        loss_dice = dice_loss(logits, labels, num_masks)
        (grad_logits,) = torch.autograd.grad(grad_mask * loss_mask + grad_dice * loss_dice, logits)
    return loss_mask.detach(), loss_dice.detach(), grad_logits


def _weights_scale(grad_mask: torch.Tensor, grad_dice: torch.Tensor, weights: tuple[float, float]) -> float | None:
    """`s` with `(grad_mask, grad_dice) = s * weights` (up to rounding), or None when they are not in that ratio."""
    weight_mask, weight_dice = weights
    grad_mask, grad_dice = float(grad_mask), float(grad_dice)
    if not math.isclose(grad_mask * weight_dice, grad_dice * weight_mask, rel_tol=1e-6, abs_tol=0.0):
        return None
    return grad_mask / weight_mask if weight_mask else grad_dice / weight_dice


class _PointMaskLosses(torch.autograd.Function):
    """Upstream's point losses (`loss_mask`, `loss_dice`) of the matched queries' masks `embeddings @ features`,
    computed a chunk of masks at a time, forward and backward, keeping nothing per mask or point in between.

    Upstream selects the matched queries' full masks (`(matches, height, width)` logits, kept for the backward pass
    of every decoder layer), samples their most uncertain points and takes the losses at those points. Here each
    chunk's masks are built, sampled and dropped (`_MatchedPointSampler`). The backward pass replays the chunks (the
    same points from the same random draws), takes each chunk's losses' gradient at its points (each mask's losses
    depend on its own points only) and turns it back into gradients of the embeddings and features
    (`_MaskGradients`). The memory of the losses therefore does not grow with the number of instances or decoder
    layers; the price is one more mask product per chunk.

    With many matched masks the replay (a new draw of every candidate point, their sampling and ranking, one more
    mask product) costs more than keeping its result, whose size is the features' whatever the number of masks.
    Then, when the candidate points outnumber the features' values, the forward pass also computes the gradient of
    `weight_mask * loss_mask + weight_dice * loss_dice` (the loss's `weight_dict`) and keeps it; the backward pass
    scales it when the incoming gradients are in that ratio (as when the model weights its losses) and replays
    otherwise.
    """

    @staticmethod
    def forward(ctx, embeddings: torch.Tensor, features: torch.Tensor, plan):
        loss, mask_labels, matched_targets, num_masks = plan
        sampler = _MatchedPointSampler(embeddings, features, loss, matched_targets)
        padded_size = tuple(max(m.shape[d] for m in mask_labels) for d in (-2, -1))
        weights = tuple(float(loss.weight_dict.get(key, 0.0)) for key in ("loss_mask", "loss_dice"))
        kept = None
        if any(weights) and any(ctx.needs_input_grad[:2]) and sum(sampler.counts) * sampler.candidates * 2 > (
            features.numel()
        ):
            kept = _MaskGradients(embeddings, features, ctx.needs_input_grad)
        loss_mask = loss_dice = embeddings.new_zeros((), dtype=torch.float32)
        for image, rows, matches, points, logits in sampler.chunks(embeddings, features, sampler.end_state):
            labels = _sample_matched_targets(mask_labels, [matched_targets[image][matches]], points, padded_size,
                                             images=[image])  # fmt: skip
            chunk_mask, chunk_dice, grad_logits = _point_losses(logits, labels, num_masks,
                                                                *(weights if kept is not None else ()))  # fmt: skip
            loss_mask, loss_dice = loss_mask + chunk_mask, loss_dice + chunk_dice
            if kept is not None:
                kept.add(image, rows, points, grad_logits)
        if kept is not None:  # kept until the backward pass: not its scratch mask (10 outputs x 32 MB)
            kept.zero_masks = None
        ctx.save_for_backward(embeddings, features)
        ctx.plan, ctx.sampler, ctx.padded_size, ctx.weights, ctx.kept = plan, sampler, padded_size, weights, kept
        return loss_mask, loss_dice

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_mask: torch.Tensor, grad_dice: torch.Tensor):
        embeddings, features = ctx.saved_tensors
        scale = None if ctx.kept is None else _weights_scale(grad_mask, grad_dice, ctx.weights)
        if scale is not None:
            kept = (ctx.kept.embeddings, ctx.kept.features)
            return *(None if grad is None else grad * scale for grad in kept), None
        _, mask_labels, matched_targets, num_masks = ctx.plan
        gradients = _MaskGradients(embeddings, features, ctx.needs_input_grad)
        now = _rng_state(ctx.sampler.device)
        for image, rows, matches, points, logits in ctx.sampler.chunks(embeddings, features, now):
            labels = _sample_matched_targets(mask_labels, [matched_targets[image][matches]], points,
                                             ctx.padded_size, images=[image])  # fmt: skip
            gradients.add(image, rows, points, _point_losses(logits, labels, num_masks, grad_mask, grad_dice)[2])
        return gradients.embeddings, gradients.features, None


class FastMask2FormerLoss(Mask2FormerLoss):
    """Upstream's Mask2Former loss with the number of target masks averaged correctly across processes, in memory
    that does not grow with the instances.

    Upstream's `get_num_masks` all-reduces with accelerate's `reduce`, whose default reduction is already the mean, and
    then divides by the world size again: with N processes the masks are counted N times too few and the mask and
    dice losses come out N times too large. Here every process normalises by the global mean number of masks (as
    DETR / Mask2Former do), so that DDP's gradient averaging gives the gradient of the loss over the global batch.
    (A correctness fix rather than a speed-up; its own upstream PR.)

    Dense scenes (thousands of targets per image): from `MaskLogitsFromEmbeddings` the point losses are computed a
    chunk of matched masks at a time and replayed in the backward pass (`_PointMaskLosses`), so no matched query's
    full mask is kept for any decoder layer; targets of any dtype (bool, uint8, float) are read in their bounding
    boxes at the sampled points, never converted or padded as a whole; uncertain points are selected without sorting
    them (the losses are sums over points, so their order is moot). Same random draws, same values as upstream.
    """

    def sample_points_using_uncertainty(self, logits, uncertainty_function, num_points, oversample_ratio,
                                        importance_sample_ratio) -> torch.Tensor:  # fmt: skip
        """Upstream's importance sampling (same random draws, same points) with the points in no particular order."""
        masks, candidates = logits.shape[0], int(num_points * oversample_ratio)
        coordinates = torch.rand(masks, candidates, 2, device=logits.device)
        uncertain = int(importance_sample_ratio * num_points)
        coordinates = _most_uncertain(logits, coordinates, uncertainty_function, uncertain)
        if num_points > coordinates.shape[1]:
            extra = torch.rand(masks, num_points - coordinates.shape[1], 2, device=logits.device)
            coordinates = torch.cat([coordinates, extra], 1)
        return coordinates

    def loss_masks(self, masks_queries_logits, mask_labels, indices, num_masks) -> dict[str, torch.Tensor]:
        """Upstream's sigmoid cross-entropy and dice point losses of the matched masks.

        From `MaskLogitsFromEmbeddings` (training without auxiliary outputs) no matched mask is ever built whole for
        the backward pass: see `_PointMaskLosses`. From full logits, each image's targets are sampled in place, a
        few at a time (bool and uint8 labels are never converted to float as a whole)."""
        images = torch.cat([torch.full_like(source, b) for b, (source, _) in enumerate(indices)])
        sources = torch.cat([source for source, _ in indices])
        targets = [matched for _, matched in indices]
        if isinstance(masks_queries_logits, MaskLogitsFromEmbeddings):
            embeddings = masks_queries_logits.mask_embeddings[images, sources]
            loss_mask, loss_dice = _PointMaskLosses.apply(
                embeddings, masks_queries_logits.pixel_embeddings, (self, mask_labels, targets, num_masks)
            )
            return {"loss_mask": loss_mask, "loss_dice": loss_dice}
        predictions = masks_queries_logits[images, sources][:, None]
        with torch.no_grad():
            coordinates = self.sample_points_using_uncertainty(
                predictions, self.calculate_uncertainty, self.num_points, self.oversample_ratio,
                self.importance_sample_ratio,
            )  # fmt: skip
            labels = _sample_matched_targets(mask_labels, targets, coordinates)
        logits = sample_point(predictions, coordinates, align_corners=False).squeeze(1)
        return {
            "loss_mask": sigmoid_cross_entropy_loss(logits, labels, num_masks),
            "loss_dice": dice_loss(logits, labels, num_masks),
        }

    def forward(self, masks_queries_logits, class_queries_logits, mask_labels, class_labels,
                auxiliary_predictions=None) -> dict[str, torch.Tensor]:  # fmt: skip
        """Upstream's loss, with each target mask's bounding box found once for all decoder layers (upstream's
        forward calls itself for each auxiliary output, passing on the same targets)."""
        if not isinstance(mask_labels, _TargetMasks):
            mask_labels = _TargetMasks(mask_labels)
        return super().forward(masks_queries_logits, class_queries_logits, mask_labels, class_labels,
                               auxiliary_predictions)  # fmt: skip

    def get_num_masks(self, class_labels: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
        num_masks = torch.as_tensor(sum(len(classes) for classes in class_labels), dtype=torch.float, device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(num_masks)
            num_masks = num_masks / torch.distributed.get_world_size()
        return torch.clamp(num_masks, min=1)


class FastMask2FormerForUniversalSegmentation(Mask2FormerForUniversalSegmentation):
    """Upstream's model that builds full-resolution masks only where they are used, with `return_dict=False` fixed.

    Without `output_auxiliary_logits` nothing reads the intermediate decoder layers' full-resolution masks (the
    auxiliary losses only need the matched queries' masks at sampled points), so the decoder's mask predictor hands
    on `MaskLogitsFromEmbeddings` for the duration of the call and only the output's final masks are built.
    """

    def forward(self, pixel_values, mask_labels=None, class_labels=None, pixel_mask=None, output_hidden_states=None,
                output_auxiliary_logits=None, output_attentions=None, return_dict=None, **kwargs):  # fmt: skip
        """Upstream `Mask2FormerForUniversalSegmentation.forward`: same arguments, same outputs and loss. With
        `return_dict=False` it returns `output.to_tuple()`, i.e. `(loss, class_queries_logits, ...)` when labels are
        given (upstream builds that tuple as `(loss) + output`, which raises a TypeError: `(loss)` is a tensor)."""
        if output_auxiliary_logits is None:
            output_auxiliary_logits = self.config.output_auxiliary_logits
        return_dict = self.config.return_dict if return_dict is None else return_dict
        predictor = self.model.transformer_module.decoder.mask_predictor
        lazy = isinstance(predictor, FastMask2FormerMaskPredictor) and not output_auxiliary_logits
        predictor.lazy_masks = lazy
        try:
            output = super().forward(pixel_values, mask_labels, class_labels, pixel_mask, output_hidden_states,
                                     output_auxiliary_logits, output_attentions, return_dict=True)  # fmt: skip
        finally:
            if lazy:
                predictor.lazy_masks = False
        if isinstance(output.masks_queries_logits, MaskLogitsFromEmbeddings):
            output.masks_queries_logits = output.masks_queries_logits.materialize()
        return output if return_dict else output.to_tuple()


# Upstream unit -> its faster subclass. The top-level model is included so that `use_fast_units` also speeds up a
# stock upstream Mask2Former; Mask2FormerDINOv3's model subclasses the fast one directly.
FAST_UNITS: dict[type, type] = {
    Mask2FormerSinePositionEmbedding: FastMask2FormerSinePositionEmbedding,
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention: FastMask2FormerMultiscaleDeformableAttention,
    Mask2FormerMaskedAttentionDecoderLayer: FastMask2FormerMaskedAttentionDecoderLayer,
    Mask2FormerMaskPredictor: FastMask2FormerMaskPredictor,
    Mask2FormerHungarianMatcher: FastMask2FormerHungarianMatcher,
    Mask2FormerLoss: FastMask2FormerLoss,
    Mask2FormerForUniversalSegmentation: FastMask2FormerForUniversalSegmentation,
}
UPSTREAM_UNITS: dict[type, type] = {fast: upstream for upstream, fast in FAST_UNITS.items()}


def _swap_classes(module: nn.Module, table: dict[type, type]) -> nn.Module:
    # Every fast class only overrides methods of its upstream class (no state of its own), so changing an instance's
    # class keeps its parameters, buffers, hooks and train/eval mode exactly as they are.
    for submodule in module.modules():
        replacement = table.get(type(submodule))
        if replacement is not None:
            submodule.__class__ = replacement
    return module


def use_fast_units(module: nn.Module) -> nn.Module:
    """Give every upstream Mask2Former unit inside `module` (itself included) its faster class, in place.

    Weights, random state and outputs are unchanged (up to float rounding); returns `module`.
    """
    return _swap_classes(module, FAST_UNITS)


def use_upstream_units(module: nn.Module) -> nn.Module:
    """Undo `use_fast_units`: every fast unit inside `module` becomes upstream's class again, in place."""
    return _swap_classes(module, UPSTREAM_UNITS)


__all__ = [
    "FAST_UNITS",
    "FastMask2FormerForUniversalSegmentation",
    "FastMask2FormerHungarianMatcher",
    "FastMask2FormerLoss",
    "FastMask2FormerMaskPredictor",
    "FastMask2FormerMaskedAttentionDecoderLayer",
    "FastMask2FormerMultiscaleDeformableAttention",
    "FastMask2FormerSinePositionEmbedding",
    "HeadSharedAttentionMask",
    "MaskLogitsFromEmbeddings",
    "multi_scale_deformable_attention_gather",
    "use_fast_units",
    "use_upstream_units",
]
