"""Mask2Former with a DINOv3 backbone.

Only the pixel-level module's encoder differs from upstream Mask2Former: a DINOv3 backbone (transformers' own
`DINOv3ViTBackbone` / `DINOv3ConvNextBackbone`, so its weights keep their upstream names) followed by an `adapter`
that turns its features into true stride 4/8/16/32 maps. Upstream's pixel decoder, transformer decoder, Hungarian
matcher and loss run as subclasses that compute the same results with less work (section "Optimised Mask2Former
units"; same parameters and state-dict keys, equality-tested against upstream's classes); the output classes are
upstream's.
"""


import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import initialization as init
from transformers.models.auto import AutoBackbone
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerForUniversalSegmentation,
    Mask2FormerLoss,
    Mask2FormerMaskedAttentionDecoderLayer,
    Mask2FormerModel,
    Mask2FormerPixelDecoder,
    Mask2FormerPixelLevelModule,
    Mask2FormerPixelLevelModuleOutput,
    Mask2FormerPreTrainedModel,
    Mask2FormerTransformerModule,
)

from scipy.optimize import linear_sum_assignment
from transformers import Mask2FormerConfig
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerForUniversalSegmentationOutput,
    Mask2FormerHungarianMatcher,
    Mask2FormerMaskedAttentionDecoder,
    Mask2FormerMaskedAttentionDecoderOutput,
    Mask2FormerModelOutput,
    Mask2FormerPixelDecoderEncoderLayer,
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    Mask2FormerPixelDecoderEncoderOnly,
    Mask2FormerPixelDecoderOutput,
    Mask2FormerSinePositionEmbedding,
    dice_loss,
    pair_wise_dice_loss,
    pair_wise_sigmoid_cross_entropy_loss,
    sample_point,
    sigmoid_cross_entropy_loss,
)

from .configuration_mask2former_dinov3 import (
    ADAPTER_FEATURE_STRIDES,
    VIT_TYPE,
    Mask2FormerDINOv3Config,
    check_input_size,
)


class Mask2FormerDINOv3LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a `(batch, channels, height, width)` map (ViTDet's "LN" norm)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states.permute(0, 2, 3, 1)
        hidden_states = super().forward(hidden_states)
        return hidden_states.permute(0, 3, 1, 2)


def _build_norm(kind: str, channels: int) -> nn.Module:
    if kind == "layer_norm":
        return Mask2FormerDINOv3LayerNorm2d(channels, eps=1e-6)
    if kind == "group_norm":
        return nn.GroupNorm(32, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"Unknown adapter norm {kind!r}; expected 'layer_norm', 'group_norm' or 'none'.")


def _projection(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=norm == "none"),
        _build_norm(norm, out_channels),
    )


class Mask2FormerDINOv3SpatialPrior(nn.Module):
    """Convolutional stem on the pixels that gives the ViT adapter fine detail at strides 4 and 8.

    Patch-16 tokens describe each 16x16 patch with one vector, so maps upsampled from them are coarse; this stem (the
    "spatial prior" of ViT-Adapter, which Meta's DINOv3 segmentation head uses) sees the pixels directly. Three 3x3
    convolutions (strides 2, 2, 1) reach stride 4, a fourth (stride 2) reaches stride 8; each is followed by the
    norm and GELU, and a 1x1 convolution + norm projects both maps to the adapter's channels, to which they are added.

    Args:
        out_channels: channels of the stride-4 and stride-8 maps it returns.
        width: stem width at stride 4 (half of it at stride 2, twice it at stride 8).
        norm: "layer_norm", "group_norm" or "none".
        in_channels: image channels.
    """

    def __init__(self, *, out_channels: Sequence[int], width: int = 64, norm: str = "layer_norm", in_channels: int = 3):
        super().__init__()
        if len(out_channels) != 2:
            raise ValueError(f"out_channels must give 2 channel counts (strides 4 and 8), got {out_channels}.")

        def conv_block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            # A bias only where no norm follows to cancel it.
            conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=norm == "none")
            return [conv, _build_norm(norm, c_out), nn.GELU()]

        self.stem = nn.Sequential(
            *conv_block(in_channels, width // 2, 2), *conv_block(width // 2, width, 2), *conv_block(width, width, 1)
        )
        self.downsample = nn.Sequential(*conv_block(width, 2 * width, 2))
        self.projections = nn.ModuleList(
            [_projection(width, out_channels[0], norm), _projection(2 * width, out_channels[1], norm)]
        )

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stride4 = self.stem(pixel_values)
        stride8 = self.downsample(stride4)
        return self.projections[0](stride4), self.projections[1](stride8)


class Mask2FormerDINOv3ViTAdapter(nn.Module):
    """ViTDet-style simple feature pyramid: stride-16 ViT tokens -> maps at strides 4, 8, 16 and 32.

    Level k takes tapped layer k (or the single tapped layer for all levels) and resamples it: two 2x transposed
    convolutions (x4), one (x2), identity (x1) or 2x2 max-pooling (x0.5); a 1x1 convolution + norm then projects
    each level to `out_channels[k]`. With `spatial_prior_channels`, a `Mask2FormerDINOv3SpatialPrior` stem on the
    pixels is added to the stride-4 and stride-8 levels.

    Args:
        embed_dim: width of the ViT tokens.
        out_channels: channels of the four output maps, finest first.
        num_inputs: 4 (one tapped layer per level) or 1 (every level from the same layer).
        norm: "layer_norm", "group_norm" or "none".
        spatial_prior_channels: width of the spatial-prior stem; `None` builds none (a plain simple pyramid).
    """

    feature_strides = ADAPTER_FEATURE_STRIDES

    def __init__(
        self,
        *,
        embed_dim: int,
        out_channels: Sequence[int],
        num_inputs: int = 4,
        norm: str = "layer_norm",
        spatial_prior_channels: int | None = None,
    ):
        super().__init__()
        if num_inputs not in (1, 4):
            raise ValueError(f"num_inputs must be 1 or 4 tapped layers, got {num_inputs}.")
        if len(out_channels) != 4:
            raise ValueError(f"out_channels must give 4 channel counts (strides 4, 8, 16, 32), got {out_channels}.")
        half, quarter = max(embed_dim // 2, 1), max(embed_dim // 4, 1)
        self.num_inputs = num_inputs
        self.out_channels = list(out_channels)
        self.resample = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose2d(embed_dim, half, kernel_size=2, stride=2),
                    _build_norm(norm, half),
                    nn.GELU(),
                    nn.ConvTranspose2d(half, quarter, kernel_size=2, stride=2),
                ),
                nn.ConvTranspose2d(embed_dim, half, kernel_size=2, stride=2),
                nn.Identity(),
                nn.MaxPool2d(kernel_size=2, stride=2),
            ]
        )
        resampled_channels = (quarter, half, embed_dim, embed_dim)
        self.projections = nn.ModuleList(
            [_projection(c_in, c_out, norm) for c_in, c_out in zip(resampled_channels, self.out_channels)]
        )
        self.spatial_prior = (
            None
            if spatial_prior_channels is None
            else Mask2FormerDINOv3SpatialPrior(
                out_channels=self.out_channels[:2], width=spatial_prior_channels, norm=norm
            )
        )

    def forward(
        self, features: Sequence[torch.Tensor], pixel_values: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        if len(features) != self.num_inputs:
            raise ValueError(f"Expected {self.num_inputs} ViT feature maps, got {len(features)}.")
        inputs = list(features) * 4 if self.num_inputs == 1 else list(features)
        levels = [project(resample(x)) for x, resample, project in zip(inputs, self.resample, self.projections)]
        if self.spatial_prior is not None:
            if pixel_values is None:
                raise ValueError("This ViT adapter has a spatial prior: pass `pixel_values` along with the features.")
            prior4, prior8 = self.spatial_prior(pixel_values)
            levels[0] = levels[0] + prior4
            levels[1] = levels[1] + prior8
        return tuple(levels)


class Mask2FormerDINOv3ConvNextAdapter(nn.Module):
    """Passes the four ConvNeXt stages (already at strides 4, 8, 16, 32) on, optionally projected.

    Args:
        in_channels: widths of the four ConvNeXt stages.
        out_channels: channels to project each stage to (1x1 convolution + norm); `None` keeps the stages as they are.
        norm: "layer_norm", "group_norm" or "none" (used only with projections).
    """

    feature_strides = ADAPTER_FEATURE_STRIDES

    def __init__(
        self, *, in_channels: Sequence[int], out_channels: Sequence[int] | None = None, norm: str = "layer_norm"
    ):
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"A DINOv3 ConvNeXt has 4 stages; got in_channels={in_channels}.")
        if out_channels is None or list(out_channels) == list(in_channels):
            self.out_channels = list(in_channels)
            self.projections = nn.ModuleList([nn.Identity() for _ in in_channels])
        else:
            self.out_channels = list(out_channels)
            self.projections = nn.ModuleList(
                [_projection(c_in, c_out, norm) for c_in, c_out in zip(in_channels, out_channels)]
            )

    def forward(
        self, features: Sequence[torch.Tensor], pixel_values: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        # `pixel_values` is accepted (and unused) so that both adapters are called the same way.
        return tuple(project(x) for x, project in zip(features, self.projections))


def build_adapter(config: Mask2FormerDINOv3Config, backbone_channels: Sequence[int]) -> nn.Module:
    """The adapter that matches `config.backbone_config` (ViT or ConvNeXt)."""
    if config.backbone_config.model_type == VIT_TYPE:
        return Mask2FormerDINOv3ViTAdapter(
            embed_dim=config.backbone_config.hidden_size,
            out_channels=config.adapter_output_channels,
            num_inputs=len(config.tapped_layers),
            norm=config.adapter_norm,
            spatial_prior_channels=config.adapter_spatial_prior_channels if config.adapter_spatial_prior else None,
        )
    return Mask2FormerDINOv3ConvNextAdapter(
        in_channels=backbone_channels, out_channels=config.adapter_channels, norm=config.adapter_norm
    )


# ---------------------------------------------------------------------------------------------------------------------
# Optimised Mask2Former units
#
# Subclasses of upstream's pixel decoder, transformer module and loss that give the same results (within float
# tolerance; `tests/test_speed_equivalence.py` checks each against upstream with identical weights) with less work.
# They add no parameters and keep upstream's state-dict keys, so upstream Mask2Former checkpoints load into them.
# `mask2former_dinov3.reference.build_unoptimised_reference` swaps upstream's units back in (tests, benchmarks).
# ---------------------------------------------------------------------------------------------------------------------

# The deformable encoder and the masked-attention decoder always use the three coarsest maps (upstream hard-codes 3).
_NUM_ATTENTION_LEVELS = 3
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


def _sine_position_embedding(embedder: Mask2FormerSinePositionEmbedding, height: int, width: int, device, dtype):
    """Upstream's sine position embedding of an unpadded `height x width` map: a `(height * width, channels)` table."""
    shape = torch.Size((1, 1, height, width))
    pos = embedder.build_sine_position_embedding.__wrapped__(
        shape, device, dtype, embedder.num_position_features, embedder.normalize, embedder.scale, embedder.temperature
    )
    return pos.flatten(2)[0].transpose(0, 1)


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
            grad_weights = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad_output, table, flat, bags * bag_size, bags.repeat_interleave(bag_size), 0, -1
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


class Mask2FormerDINOv3MultiscaleDeformableAttention(Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
    """Upstream's multi-scale deformable attention (same parameters, same results) on a gather-based core.

    See `multi_scale_deformable_attention_gather`. Reference boxes (4-d reference points, never used by the pixel
    decoder) fall back to upstream's code.
    """

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        position_embeddings: torch.Tensor | None = None,
        reference_points=None,
        spatial_shapes_list=None,
        level_start_index=None,
        output_attentions: bool = False,
    ):
        if reference_points.shape[-1] != 2:
            return super().forward(
                hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask, position_embeddings,
                reference_points, spatial_shapes_list, level_start_index, output_attentions,
            )  # fmt: skip
        if position_embeddings is not None:
            hidden_states = hidden_states + position_embeddings
        batch_size, num_queries, _ = hidden_states.shape
        sequence_length = encoder_hidden_states.shape[1]
        value = self.value_proj(encoder_hidden_states)
        if attention_mask is not None:
            # Padding tokens (True) carry no value, as upstream; the pixel decoder never pads, and passes None.
            value = value.masked_fill(attention_mask[..., None], 0.0)
        value = value.view(batch_size, sequence_length, self.n_heads, self.d_model // self.n_heads)
        sampling_offsets = self.sampling_offsets(hidden_states).view(
            batch_size, num_queries, self.n_heads, self.n_levels, self.n_points, 2
        )
        attention_weights = self.attention_weights(hidden_states).view(
            batch_size, num_queries, self.n_heads, self.n_levels * self.n_points
        )
        attention_weights = attention_weights.softmax(-1).view(
            batch_size, num_queries, self.n_heads, self.n_levels, self.n_points
        )
        # Offsets are in pixels of each level: normalise them by the level's (width, height).
        coordinate_dtype = torch.promote_types(sampling_offsets.dtype, torch.float32)
        normalizer = torch.tensor(
            [[width, height] for height, width in spatial_shapes_list], dtype=coordinate_dtype, device=value.device
        )
        sampling_locations = (
            reference_points[:, :, None, :, None, :] + sampling_offsets.to(coordinate_dtype) / normalizer[:, None]
        )
        output = multi_scale_deformable_attention_gather(
            value, spatial_shapes_list, sampling_locations, attention_weights
        )
        return self.output_proj(output), attention_weights


class Mask2FormerDINOv3PixelDecoderEncoderLayer(Mask2FormerPixelDecoderEncoderLayer):
    """Upstream's deformable encoder layer on `Mask2FormerDINOv3MultiscaleDeformableAttention`.

    The forward is upstream's except for the training-time overflow clamp: upstream clamps only after checking that
    some value is not finite, a data-dependent branch (a device sync, and a graph break under torch.compile). Clamping
    unconditionally gives the same values and gradients, as clamping to the float range is the identity on finite
    values.
    """

    def __init__(self, config: Mask2FormerConfig):
        super().__init__(config)
        self.self_attn = Mask2FormerDINOv3MultiscaleDeformableAttention(
            embed_dim=self.embed_dim,
            num_heads=config.num_attention_heads,
            n_levels=self.self_attn.n_levels,
            n_points=self.self_attn.n_points,
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_embeddings: torch.Tensor | None = None,
        reference_points=None,
        spatial_shapes_list=None,
        level_start_index=None,
        output_attentions: bool = False,
    ):
        residual = hidden_states
        hidden_states, attn_weights = self.self_attn(
            hidden_states=hidden_states,
            attention_mask=attention_mask,
            encoder_hidden_states=hidden_states,
            encoder_attention_mask=attention_mask,
            position_embeddings=position_embeddings,
            reference_points=reference_points,
            spatial_shapes_list=spatial_shapes_list,
            level_start_index=level_start_index,
            output_attentions=output_attentions,
        )
        hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
        hidden_states = self.self_attn_layer_norm(residual + hidden_states)

        residual = hidden_states
        hidden_states = self.activation_fn(self.fc1(hidden_states))
        hidden_states = nn.functional.dropout(hidden_states, p=self.activation_dropout, training=self.training)
        hidden_states = nn.functional.dropout(self.fc2(hidden_states), p=self.dropout, training=self.training)
        hidden_states = self.final_layer_norm(residual + hidden_states)

        if self.training:
            clamp_value = torch.finfo(hidden_states.dtype).max - 1000
            hidden_states = hidden_states.clamp(min=-clamp_value, max=clamp_value)
        outputs = (hidden_states,)
        if output_attentions:
            outputs += (attn_weights.transpose(1, 0),)
        return outputs


class Mask2FormerDINOv3PixelDecoderEncoderOnly(Mask2FormerPixelDecoderEncoderOnly):
    """Upstream's deformable encoder on `Mask2FormerDINOv3PixelDecoderEncoderLayer`s, with cached reference points.

    `valid_ratios=None` means no padding (what the pixel decoder always has): the reference points then depend on the
    level shapes only and are built once per shape instead of at every call.
    """

    def __init__(self, config: Mask2FormerConfig):
        super().__init__(config)
        self.layers = nn.ModuleList(
            [Mask2FormerDINOv3PixelDecoderEncoderLayer(config) for _ in range(config.encoder_layers)]
        )

    def forward(
        self,
        inputs_embeds=None,
        attention_mask=None,
        position_embeddings=None,
        spatial_shapes_list=None,
        level_start_index=None,
        valid_ratios=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        device, dtype = inputs_embeds.device, inputs_embeds.dtype
        if valid_ratios is None:
            shapes = tuple((int(h), int(w)) for h, w in spatial_shapes_list)
            reference_points = _cached_constant(
                self,
                ("reference_points", shapes, dtype, device),
                lambda: self.get_reference_points(
                    shapes, torch.ones(1, len(shapes), 2, dtype=dtype, device=device), device=device
                ),
            )
        else:
            reference_points = self.get_reference_points(spatial_shapes_list, valid_ratios, device=device)

        hidden_states = inputs_embeds
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for encoder_layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (hidden_states.transpose(1, 0),)
            layer_outputs = encoder_layer(
                hidden_states,
                attention_mask,
                position_embeddings=position_embeddings,
                reference_points=reference_points,
                spatial_shapes_list=spatial_shapes_list,
                level_start_index=level_start_index,
                output_attentions=output_attentions,
            )
            hidden_states = layer_outputs[0]
            if output_attentions:
                all_attentions += (layer_outputs[1],)
        if output_hidden_states:
            all_hidden_states += (hidden_states.transpose(1, 0),)
        return BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions
        )


class Mask2FormerDINOv3PixelDecoder(Mask2FormerPixelDecoder):
    """Upstream's pixel decoder (same weights, same outputs) without per-call constant building and padding masks.

    Upstream builds all-False padding masks, valid ratios, position embeddings and reference points at every call;
    none of them depend on anything but the feature shapes here (images are never padded inside the model), so they
    are cached per shape and the masks are dropped.
    """

    def __init__(self, config: Mask2FormerConfig, feature_channels):
        super().__init__(config, feature_channels)
        self.encoder = Mask2FormerDINOv3PixelDecoderEncoderOnly(config)

    def _position_embeddings(self, spatial_shapes_list, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Sine position embeddings of all levels, `(1, tokens, channels)`, and each token's level index."""

        def build():
            tables = [
                _sine_position_embedding(self.position_embedding, h, w, device, dtype) for h, w in spatial_shapes_list
            ]
            levels = [torch.full((h * w,), i, device=device) for i, (h, w) in enumerate(spatial_shapes_list)]
            return torch.cat(tables)[None], torch.cat(levels)

        return _cached_constant(self, ("position", tuple(spatial_shapes_list), dtype, device), build)

    def forward(
        self,
        features,
        encoder_outputs=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states

        # The deformable encoder attends over the coarsest levels, coarsest first.
        levels = features[::-1][: self.num_feature_levels]
        projected = [projection(x) for projection, x in zip(self.input_projections, levels)]
        spatial_shapes_list = [(int(x.shape[2]), int(x.shape[3])) for x in projected]
        inputs_embeds = torch.cat([x.flatten(2).transpose(1, 2) for x in projected], 1)

        if encoder_outputs is None:
            # Position embeddings follow the dtype of the level features, as upstream's.
            position, level_of_token = self._position_embeddings(
                spatial_shapes_list, levels[0].device, levels[0].dtype
            )
            level_start_index = torch.tensor(
                [0] + [h * w for h, w in spatial_shapes_list[:-1]], device=inputs_embeds.device
            ).cumsum(0)
            encoder_outputs = self.encoder(
                inputs_embeds=inputs_embeds,
                attention_mask=None,
                position_embeddings=position + self.level_embed[level_of_token],
                spatial_shapes_list=spatial_shapes_list,
                level_start_index=level_start_index,
                valid_ratios=None,
                output_attentions=output_attentions,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )

        last_hidden_state = encoder_outputs.last_hidden_state
        batch_size = last_hidden_state.shape[0]
        split = last_hidden_state.split([h * w for h, w in spatial_shapes_list], dim=1)
        outputs = [x.transpose(1, 2).view(batch_size, -1, h, w) for x, (h, w) in zip(split, spatial_shapes_list)]

        # FPN levels below the encoder's, coarse to fine.
        fpn = zip(self.lateral_convolutions, self.output_convolutions, features[: self.num_fpn_levels][::-1])
        for lateral_convolution, output_convolution, feature in fpn:
            lateral = lateral_convolution(feature)
            coarser = nn.functional.interpolate(
                outputs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
            )
            outputs.append(output_convolution(lateral + coarser))

        return Mask2FormerPixelDecoderOutput(
            mask_features=self.mask_projection(outputs[-1]),
            multi_scale_features=tuple(outputs[: self.num_feature_levels]),
            attentions=encoder_outputs.attentions,
        )


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """`(length, batch, channels)` -> `(batch, heads, length, head_dim)` (a view)."""
    length, batch_size, channels = x.shape
    return x.view(length, batch_size, num_heads, channels // num_heads).permute(1, 2, 0, 3)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """`(batch, heads, length, head_dim)` -> `(length, batch, channels)`."""
    batch_size, num_heads, length, head_dim = x.shape
    return x.permute(2, 0, 1, 3).reshape(length, batch_size, num_heads * head_dim)


class Mask2FormerDINOv3MaskedAttentionDecoderLayer(Mask2FormerMaskedAttentionDecoderLayer):
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
        allowed = None
        if masked is not None:
            allowed = ~masked.view(query.shape[0], heads, *masked.shape[-2:])
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

    def _feed_forward(self, hidden_states):
        hidden_states = self.activation_fn(self.fc1(hidden_states))
        hidden_states = nn.functional.dropout(hidden_states, p=self.activation_dropout, training=self.training)
        return self.fc2(hidden_states)

    def forward(
        self,
        hidden_states: torch.Tensor,
        level_index: int | None = None,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: torch.Tensor | None = None,
        query_position_embeddings: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = False,
    ):
        if output_attentions:
            return super().forward(
                hidden_states, level_index, attention_mask, position_embeddings, query_position_embeddings,
                encoder_hidden_states, encoder_attention_mask, output_attentions,
            )  # fmt: skip
        values = encoder_hidden_states[level_index]
        keys = self.with_pos_embed(values, position_embeddings[level_index])

        def dropout(x):
            return nn.functional.dropout(x, p=self.dropout, training=self.training)

        if self.pre_norm:
            queries = self.with_pos_embed(self.cross_attn_layer_norm(hidden_states), query_position_embeddings)
            attended = self._cross_attention(queries, keys, values, encoder_attention_mask)
            hidden_states = hidden_states + dropout(attended)
            normed = self.self_attn_layer_norm(hidden_states)
            hidden_states = hidden_states + dropout(self._self_attention(normed, query_position_embeddings))
            hidden_states = hidden_states + dropout(self._feed_forward(self.final_layer_norm(hidden_states)))
        else:
            queries = self.with_pos_embed(hidden_states, query_position_embeddings)
            attended = self._cross_attention(queries, keys, values, encoder_attention_mask)
            hidden_states = self.cross_attn_layer_norm(hidden_states + dropout(attended))
            attended = self._self_attention(hidden_states, query_position_embeddings)
            hidden_states = self.self_attn_layer_norm(hidden_states + dropout(attended))
            hidden_states = self.final_layer_norm(hidden_states + dropout(self._feed_forward(hidden_states)))
        return (hidden_states,)


@dataclass
class Mask2FormerDINOv3MaskedAttentionDecoderOutput(Mask2FormerMaskedAttentionDecoderOutput):
    r"""
    Upstream's decoder output plus the mask embeddings.

    mask_embeddings (`tuple(torch.Tensor)` of shape `(batch_size, num_queries, mask_feature_size)`):
        Per prediction (the initial queries, then each decoder layer) the query embeddings whose product with the
        mask features (`einsum("bqc,bchw->bqhw", ...)`) is that prediction's mask logits.
    """

    mask_embeddings: tuple[torch.Tensor] | None = None


class Mask2FormerDINOv3MaskedAttentionDecoder(Mask2FormerMaskedAttentionDecoder):
    """Upstream's masked-attention decoder (same weights, same results) predicting masks only where they are used,
    on `Mask2FormerDINOv3MaskedAttentionDecoderLayer`s.

    Upstream predicts every intermediate mask at full mask-feature resolution (1/4) and then resizes it to the
    attention-mask resolution of the next layer (1/32, 1/16 or 1/8). Bilinear resizing and the query-feature
    product are both linear, so the attention-mask logits are computed here from the mask features resized once per
    level: the same values, at a fraction of the cost. Full-resolution masks are computed for the last prediction
    only, or for every prediction with `output_intermediate_masks=True` (upstream's outputs). The mask embeddings
    of every prediction are returned as well (the loss samples masks from them).
    """

    def __init__(self, config: Mask2FormerConfig):
        super().__init__(config)
        self.layers = nn.ModuleList(
            [Mask2FormerDINOv3MaskedAttentionDecoderLayer(config) for _ in range(self.decoder_layers)]
        )

    def _attention_mask(self, mask_embeddings, resized_pixel_embeddings) -> torch.Tensor:
        """Upstream's attention mask (True = masked) for `nn.MultiheadAttention`: `(batch * heads, queries, h * w)`."""
        with torch.no_grad():
            logits = torch.einsum("bqc,bchw->bqhw", mask_embeddings, resized_pixel_embeddings)
            # Same test as upstream's (sigmoid < 0.5 is not `logit < 0` for tiny negative logits in float).
            masked = logits.sigmoid().flatten(2) < 0.5
            # A query masked everywhere attends everywhere instead.
            masked = masked & ~masked.all(-1, keepdim=True)
            num_heads = self.mask_predictor.num_heads
            return masked[:, None].expand(-1, num_heads, -1, -1).flatten(0, 1)

    def forward(
        self,
        inputs_embeds: torch.Tensor | None = None,
        multi_stage_positional_embeddings: torch.Tensor | None = None,
        pixel_embeddings: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        query_position_embeddings: torch.Tensor | None = None,
        feature_size_list: list | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_intermediate_masks: bool = True,
    ):
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        # Mask features resized once per attention level (upstream resizes every query's mask instead).
        resized = {}

        def attention_mask_for(mask_embeddings, level):
            if level not in resized:
                with torch.no_grad():
                    resized[level] = nn.functional.interpolate(
                        pixel_embeddings, size=tuple(feature_size_list[level]), mode="bilinear", align_corners=False
                    )
            return self._attention_mask(mask_embeddings, resized[level])

        mask_embedder = self.mask_predictor.mask_embedder
        hidden_states = inputs_embeds
        all_hidden_states = () if output_hidden_states else None
        attentions = () if output_attentions else None
        intermediate = (self.layernorm(inputs_embeds),)
        mask_embeddings = (mask_embedder(intermediate[-1].transpose(0, 1)),)
        attention_mask = attention_mask_for(mask_embeddings[-1], 0)

        for idx, decoder_layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            # Upstream's layer drop (it reuses `config.dropout` as the probability), drawn the same way.
            if self.training and self.layerdrop > 0.0 and torch.rand([]) < self.layerdrop:
                continue
            layer_outputs = decoder_layer(
                hidden_states,
                idx % self.num_feature_levels,
                None,
                multi_stage_positional_embeddings,
                query_position_embeddings,
                encoder_hidden_states,
                encoder_attention_mask=attention_mask,
                output_attentions=output_attentions,
            )
            hidden_states = layer_outputs[0]
            intermediate += (self.layernorm(hidden_states),)
            mask_embeddings += (mask_embedder(intermediate[-1].transpose(0, 1)),)
            if idx < len(self.layers) - 1:  # the last prediction's attention mask would feed no layer
                attention_mask = attention_mask_for(mask_embeddings[-1], (idx + 1) % self.num_feature_levels)
            if output_attentions:
                attentions += (layer_outputs[1],)

        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        predicted = mask_embeddings if output_intermediate_masks else mask_embeddings[-1:]
        masks_queries_logits = tuple(torch.einsum("bqc,bchw->bqhw", e, pixel_embeddings) for e in predicted)

        output = Mask2FormerDINOv3MaskedAttentionDecoderOutput(
            last_hidden_state=hidden_states.transpose(1, 0),
            hidden_states=all_hidden_states,
            attentions=attentions,
            intermediate_hidden_states=intermediate,
            masks_queries_logits=masks_queries_logits,
            mask_embeddings=mask_embeddings,
        )
        return output if return_dict else output.to_tuple()


class Mask2FormerDINOv3TransformerModule(Mask2FormerTransformerModule):
    """Upstream's transformer module on `Mask2FormerDINOv3MaskedAttentionDecoder`, with cached position embeddings."""

    def __init__(self, in_features: int, config: Mask2FormerConfig):
        super().__init__(in_features=in_features, config=config)
        self.decoder = Mask2FormerDINOv3MaskedAttentionDecoder(config=config)

    def forward(
        self,
        multi_scale_features: list[torch.Tensor],
        mask_features: torch.Tensor,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        output_intermediate_masks: bool = True,
    ) -> Mask2FormerDINOv3MaskedAttentionDecoderOutput:
        size_list, features, position_embeddings = [], [], []
        for i in range(self.num_feature_levels):
            x = multi_scale_features[i]
            height, width = int(x.shape[-2]), int(x.shape[-1])
            size_list.append(x.shape[-2:])
            # (h * w, 1, channels): broadcast over the batch where upstream repeats it.
            position_embeddings.append(
                _cached_constant(
                    self,
                    ("position", height, width, x.dtype, x.device),
                    lambda: _sine_position_embedding(self.position_embedder, height, width, x.device, x.dtype)[
                        :, None
                    ],
                )
            )
            projected = self.input_projections[i](x).flatten(2) + self.level_embed.weight[i][None, :, None]
            features.append(projected.permute(2, 0, 1))  # (h * w, batch, channels)

        batch_size = features[0].shape[1]
        query_embeddings = self.queries_embedder.weight.unsqueeze(1).repeat(1, batch_size, 1)
        query_features = self.queries_features.weight.unsqueeze(1).repeat(1, batch_size, 1)
        return self.decoder(
            inputs_embeds=query_features,
            multi_stage_positional_embeddings=position_embeddings,
            pixel_embeddings=mask_features,
            encoder_hidden_states=features,
            query_position_embeddings=query_embeddings,
            feature_size_list=size_list,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
            output_intermediate_masks=output_intermediate_masks,
        )


class Mask2FormerDINOv3HungarianMatcher(Mask2FormerHungarianMatcher):
    """Upstream's Hungarian matcher that can also take mask embeddings and mask features instead of mask logits.

    The matcher compares masks at `num_points` random points shared by all queries of an image. Sampling (bilinear)
    and the query-feature product are both linear, so the mask features are sampled once at those points and
    multiplied by the query embeddings: the same costs without building every query's full-resolution mask. Random
    points are drawn exactly as upstream (one `torch.rand` per image), so a fixed seed gives the same matching.
    """

    @torch.no_grad()
    def forward(
        self,
        masks_queries_logits: torch.Tensor | None,
        class_queries_logits: torch.Tensor,
        mask_labels: torch.Tensor,
        class_labels: torch.Tensor,
        mask_embeddings: torch.Tensor | None = None,
        pixel_embeddings: torch.Tensor | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if mask_embeddings is None:
            return super().forward(masks_queries_logits, class_queries_logits, mask_labels, class_labels)
        indices = []
        for i in range(class_queries_logits.shape[0]):
            cost_class = -class_queries_logits[i].softmax(-1)[:, class_labels[i]]
            target_mask = mask_labels[i].to(pixel_embeddings)[:, None]
            point_coordinates = torch.rand(1, self.num_points, 2, device=pixel_embeddings.device)
            target_points = sample_point(
                target_mask, point_coordinates.repeat(target_mask.shape[0], 1, 1), align_corners=False
            ).squeeze(1)
            feature_points = sample_point(pixel_embeddings[i : i + 1], point_coordinates, align_corners=False)[0]
            pred_points = mask_embeddings[i] @ feature_points  # (queries, points)
            cost_matrix = (
                self.cost_mask * pair_wise_sigmoid_cross_entropy_loss(pred_points, target_points)
                + self.cost_class * cost_class
                + self.cost_dice * pair_wise_dice_loss(pred_points, target_points)
            )
            # Non-finite costs are matched last, as upstream.
            max_value = torch.finfo(cost_matrix.dtype).max
            cost_matrix = torch.nan_to_num(cost_matrix, nan=max_value, posinf=max_value, neginf=max_value)
            # float(): scipy takes no bfloat16 (costs come out in bf16 under autocast).
            row, col = linear_sum_assignment(cost_matrix.float().cpu())
            indices.append((torch.as_tensor(row, dtype=torch.int64), torch.as_tensor(col, dtype=torch.int64)))
        return indices


@dataclass
class Mask2FormerDINOv3ModelOutput(Mask2FormerModelOutput):
    r"""
    Upstream's model output plus the mask embeddings of the lean path.

    mask_embeddings (`tuple(torch.Tensor)` of shape `(batch_size, num_queries, mask_feature_size)`, *optional*):
        Returned with `output_intermediate_masks=False`: per prediction, the query embeddings whose product with
        `pixel_decoder_last_hidden_state` (`einsum("bqc,bchw->bqhw", ...)`) is that prediction's mask logits.
    """

    mask_embeddings: tuple[torch.Tensor] | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Pixel-level module and models
# ---------------------------------------------------------------------------------------------------------------------


class Mask2FormerDINOv3PixelLevelModule(Mask2FormerPixelLevelModule):
    """Upstream's pixel-level module with a DINOv3 backbone (`encoder`) and an `adapter` in front of the decoder."""

    def __init__(self, config: Mask2FormerDINOv3Config):
        # Skip the parent's __init__: it would build a decoder for the backbone's raw (stride-16) channels.
        nn.Module.__init__(self)
        self.encoder = AutoBackbone.from_config(config.backbone_config)
        self.adapter = build_adapter(config, self.encoder.channels)
        self.decoder = Mask2FormerDINOv3PixelDecoder(config, feature_channels=self.adapter.out_channels)
        self.freeze_backbone = config.freeze_backbone
        self.freeze_untrainable_parameters()

    def freeze_untrainable_parameters(self) -> None:
        """Turn off gradients for the backbone if `freeze_backbone`, and always for DINOv3's mask token.

        DINOv3's mask token only replaces patches under `bool_masked_pos` (masked-image pretraining), which
        segmentation never passes: it can never get a gradient, and a trainable parameter without one breaks DDP
        (without `find_unused_parameters=True`) and transformers' gradient-checkpointing checks. Called at init and
        again after `from_pretrained`, whose loader recreates every loaded parameter with `requires_grad=True`.
        """
        if self.freeze_backbone:
            self.encoder.requires_grad_(False)
        mask_token = getattr(getattr(self.encoder, "embeddings", None), "mask_token", None)
        if mask_token is not None:
            mask_token.requires_grad_(False)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False) -> Mask2FormerPixelLevelModuleOutput:
        check_input_size(*pixel_values.shape[-2:])
        # A frozen backbone keeps no activations for backward.
        with torch.no_grad() if self.freeze_backbone else contextlib.nullcontext():
            backbone_features = self.encoder(pixel_values).feature_maps
        pyramid = self.adapter(backbone_features, pixel_values)
        decoder_output = self.decoder(pyramid, output_hidden_states=output_hidden_states)
        return Mask2FormerPixelLevelModuleOutput(
            encoder_last_hidden_state=backbone_features[-1],
            encoder_hidden_states=tuple(backbone_features) if output_hidden_states else None,
            decoder_last_hidden_state=decoder_output.mask_features,
            decoder_hidden_states=decoder_output.multi_scale_features,
        )


class Mask2FormerDINOv3PreTrainedModel(Mask2FormerPreTrainedModel):
    """Weight initialisation and capabilities shared by the Mask2FormerDINOv3 models."""

    config: Mask2FormerDINOv3Config
    # Upstream Mask2Former sets neither: its decoder layers and DINOv3's layers are GradientCheckpointingLayers, and
    # the attention implementation is dispatched to the DINOv3 backbone (Mask2Former's own attention is eager).
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _no_split_modules = [
        "DINOv3ViTLayer",
        "DINOv3ConvNextLayer",
        "Mask2FormerMaskedAttentionDecoderLayer",
        "Mask2FormerDINOv3MaskedAttentionDecoderLayer",
    ]

    @classmethod
    def is_custom_code(cls) -> bool:
        """Always `False`, so that the model gets upstream Mask2Former's initialisation.

        transformers treats classes defined outside its package (ours, imported or loaded with `trust_remote_code`)
        as custom code and then skips `_init_weights` for every module without parameters of its own, which drops
        Mask2Former's xavier / radial-grid / zeroed-attention inits (decoder layers and deformable attention set them
        on their children). Our `_init_weights` only uses `transformers.initialization`, which honours loaded weights,
        so the custom-code safeguard is not needed. Saving the code with the weights is governed by
        `is_remote_code()`, which is unaffected.
        """
        return False

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As upstream's `from_pretrained`, then re-freezes what the model keeps frozen (see
        `Mask2FormerDINOv3PixelLevelModule.freeze_untrainable_parameters`): transformers' loader recreates every loaded
        parameter with `requires_grad=True`, which would silently undo `freeze_backbone`."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        for module in model.modules():
            if isinstance(module, Mask2FormerDINOv3PixelLevelModule):
                module.freeze_untrainable_parameters()
        return loaded

    def freeze_backbone(self) -> None:
        """Stop training the DINOv3 backbone (no gradients; it then runs under `torch.no_grad()`); config included."""
        self._set_backbone_frozen(True)

    def unfreeze_backbone(self) -> None:
        """Train the DINOv3 backbone again; its mask token stays frozen (segmentation never gives it a gradient)."""
        self._set_backbone_frozen(False)

    def _set_backbone_frozen(self, frozen: bool) -> None:
        pixel_level_module = self.base_model.pixel_level_module
        self.config.freeze_backbone = pixel_level_module.freeze_backbone = frozen
        pixel_level_module.encoder.requires_grad_(not frozen)
        pixel_level_module.freeze_untrainable_parameters()

    def get_input_embeddings(self) -> nn.Module:
        """The backbone's input layer: the ViT's patch embedding, or the ConvNeXt's patchify stem convolution.

        This is what `enable_input_require_grads()` hooks, so that PEFT-style training with frozen backbone weights
        and reentrant gradient checkpointing still gets gradients into the checkpointed layers.
        """
        encoder = self.base_model.pixel_level_module.encoder
        embeddings = encoder.get_input_embeddings()
        if embeddings is None:
            # transformers' DINOv3ConvNextBackbone has no input-embedding accessor; its stem is stage 0's 4x4 conv.
            embeddings = encoder.model.stages[0].downsample_layers[0]
        return embeddings

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func=checkpoint, every_n_layers: int = 1
    ):
        """As upstream's, except that Mask2Former's decoder layers always use non-reentrant checkpointing.

        Upstream's decoder hands every decoder layer the same multi-scale features inside a list. Reentrant
        checkpointing only detaches tensor arguments, so each layer's recomputation would backpropagate into the pixel
        decoder's graph again ("Trying to backward through the graph a second time"). Non-reentrant checkpointing
        handles such inputs; DINOv3's layers keep what the caller asked for.
        """
        super()._set_gradient_checkpointing(enable, gradient_checkpointing_func, every_n_layers)
        keywords = getattr(gradient_checkpointing_func, "keywords", None) or {}
        if enable and keywords.get("use_reentrant"):
            non_reentrant = functools.partial(
                gradient_checkpointing_func.func,
                *gradient_checkpointing_func.args,
                **{**keywords, "use_reentrant": False},
            )
            for module in self.modules():
                if isinstance(module, Mask2FormerMaskedAttentionDecoderLayer):
                    module._gradient_checkpointing_func = non_reentrant

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        if isinstance(module, (Mask2FormerDINOv3ViTAdapter, Mask2FormerDINOv3ConvNextAdapter)):
            # Adapter convolutions use detectron2's c2_xavier_fill (kaiming-uniform, a=1; zero bias), as ViTDet's
            # simple feature pyramid does; norms start as identity.
            for submodule in module.modules():
                if isinstance(submodule, (nn.Conv2d, nn.ConvTranspose2d)):
                    init.kaiming_uniform_(submodule.weight, a=1)
                    if submodule.bias is not None:
                        init.zeros_(submodule.bias)
                elif isinstance(submodule, (nn.LayerNorm, nn.GroupNorm)):
                    init.ones_(submodule.weight)
                    init.zeros_(submodule.bias)
        else:
            super()._init_weights(module)


class Mask2FormerDINOv3Model(Mask2FormerModel, Mask2FormerDINOv3PreTrainedModel):
    """Mask2Former model (no task head) with a DINOv3 backbone; outputs as `Mask2FormerModel`."""

    config: Mask2FormerDINOv3Config

    def __init__(self, config: Mask2FormerDINOv3Config):
        # Same as upstream except for the pixel-level module.
        Mask2FormerDINOv3PreTrainedModel.__init__(self, config)
        self.pixel_level_module = Mask2FormerDINOv3PixelLevelModule(config)
        self.transformer_module = Mask2FormerDINOv3TransformerModule(in_features=config.feature_size, config=config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        output_intermediate_masks: bool = True,
        **kwargs,
    ) -> Mask2FormerDINOv3ModelOutput:
        """Upstream `Mask2FormerModel.forward` (same arguments and outputs).

        With `output_intermediate_masks=False` (what `Mask2FormerDINOv3ForUniversalSegmentation` uses),
        `masks_queries_logits` holds the last prediction's masks only (a 1-tuple), `mask_embeddings` every
        prediction's mask embeddings and `transformer_decoder_intermediate_states` is always returned. `pixel_mask`
        is accepted and ignored, as upstream does: images are never padded inside the model.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        pixel_level_output = self.pixel_level_module(
            pixel_values=pixel_values, output_hidden_states=output_hidden_states
        )
        decoder_output = self.transformer_module(
            multi_scale_features=pixel_level_output.decoder_hidden_states,
            mask_features=pixel_level_output.decoder_last_hidden_state,
            output_hidden_states=True,
            output_attentions=output_attentions,
            output_intermediate_masks=output_intermediate_masks,
        )
        lean = not output_intermediate_masks
        output = Mask2FormerDINOv3ModelOutput(
            encoder_last_hidden_state=pixel_level_output.encoder_last_hidden_state,
            pixel_decoder_last_hidden_state=pixel_level_output.decoder_last_hidden_state,
            transformer_decoder_last_hidden_state=decoder_output.last_hidden_state,
            encoder_hidden_states=pixel_level_output.encoder_hidden_states if output_hidden_states else None,
            pixel_decoder_hidden_states=pixel_level_output.decoder_hidden_states if output_hidden_states else None,
            transformer_decoder_hidden_states=decoder_output.hidden_states if output_hidden_states else None,
            transformer_decoder_intermediate_states=(
                decoder_output.intermediate_hidden_states if output_hidden_states or lean else None
            ),
            attentions=decoder_output.attentions,
            masks_queries_logits=decoder_output.masks_queries_logits,
            mask_embeddings=decoder_output.mask_embeddings if lean else None,
        )
        return output if return_dict else output.to_tuple()


class Mask2FormerDINOv3Loss(Mask2FormerLoss):
    """Upstream's Mask2Former loss with the number of target masks averaged correctly across processes.

    Upstream's `get_num_masks` all-reduces with accelerate's `reduce`, whose default reduction is already the mean, and
    then divides by the world size again: with N processes the masks are counted N times too few and the mask and
    dice losses come out N times too large. Here every process normalises by the global mean number of masks (as
    DETR / Mask2Former do), so that DDP's gradient averaging gives the gradient of the loss over the global batch.
    """

    def __init__(self, config: Mask2FormerConfig, weight_dict: dict[str, float]):
        super().__init__(config=config, weight_dict=weight_dict)
        # Upstream's costs and number of points; it can also match from mask embeddings.
        self.matcher = Mask2FormerDINOv3HungarianMatcher(
            cost_class=config.class_weight,
            cost_dice=config.dice_weight,
            cost_mask=config.mask_weight,
            num_points=self.num_points,
        )

    def forward(
        self,
        masks_queries_logits: torch.Tensor | None,
        class_queries_logits: torch.Tensor,
        mask_labels: list[torch.Tensor],
        class_labels: list[torch.Tensor],
        auxiliary_predictions: list[dict[str, torch.Tensor]] | None = None,
        mask_embeddings: torch.Tensor | None = None,
        pixel_embeddings: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Upstream's losses. Given `mask_embeddings` `(batch, queries, channels)` and `pixel_embeddings` (the mask
        features, `(batch, channels, height, width)`), no full-resolution mask is built for any query that is not
        matched: `masks_queries_logits` is then optional (the matcher uses it if given), and auxiliary predictions
        carry `mask_embeddings` instead of mask logits. Random points are drawn in upstream's order, so under a fixed
        seed both forms give the same losses (within float tolerance)."""
        if mask_embeddings is None:
            return super().forward(
                masks_queries_logits, class_queries_logits, mask_labels, class_labels, auxiliary_predictions
            )
        # The targets padded to a common size once, for every prediction (upstream pads them again for each).
        padded_targets, _ = self._pad_images_to_max_in_batch(mask_labels)
        losses = self._prediction_losses(
            masks_queries_logits, class_queries_logits, mask_embeddings, pixel_embeddings, mask_labels, class_labels,
            padded_targets,
        )  # fmt: skip
        for idx, auxiliary in enumerate(auxiliary_predictions or ()):
            auxiliary_losses = self._prediction_losses(
                None, auxiliary["class_queries_logits"], auxiliary["mask_embeddings"], pixel_embeddings, mask_labels,
                class_labels, padded_targets,
            )  # fmt: skip
            losses.update({f"{key}_{idx}": value for key, value in auxiliary_losses.items()})
        return losses

    def _prediction_losses(
        self, masks_queries_logits, class_queries_logits, mask_embeddings, pixel_embeddings, mask_labels, class_labels,
        padded_targets,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """One prediction's losses, in upstream's order of random draws (matcher, then point sampling).

        The matcher samples the full-resolution masks where they exist anyway (the last prediction's, an output of
        the model), and the mask features otherwise.
        """
        if masks_queries_logits is not None:
            indices = self.matcher(masks_queries_logits, class_queries_logits, mask_labels, class_labels)
        else:
            indices = self.matcher(
                None, class_queries_logits, mask_labels, class_labels,
                mask_embeddings=mask_embeddings, pixel_embeddings=pixel_embeddings,
            )  # fmt: skip
        num_masks = self.get_num_masks(class_labels, device=class_labels[0].device)
        return {
            **self.loss_masks_from_embeddings(
                mask_embeddings, pixel_embeddings, padded_targets, indices, num_masks
            ),
            **self.loss_labels(class_queries_logits, class_labels, indices),
        }

    def loss_masks_from_embeddings(
        self,
        mask_embeddings: torch.Tensor,
        pixel_embeddings: torch.Tensor,
        padded_targets: torch.Tensor,
        indices: list[tuple[torch.Tensor, torch.Tensor]],
        num_masks: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """`loss_masks` with only the matched queries' masks built; `padded_targets` are the target masks padded to
        a common size, `(batch, max targets, height, width)`.

        Selecting queries commutes with the query-feature product, so the matched masks equal upstream's
        `masks_queries_logits[src_idx]`; they are then point-sampled exactly as upstream does. (Sampling the features
        at every mask's own points first would hold `channels x points` values per matched mask: far more memory
        than the matched masks themselves at the default 12544 points.)
        """
        pred_masks = torch.cat(
            [
                torch.einsum("qc,chw->qhw", mask_embeddings[b, src], pixel_embeddings[b])
                for b, (src, _) in enumerate(indices)
            ]
        )[:, None]
        target_masks = padded_targets[self._get_targets_permutation_indices(indices)][:, None]
        with torch.no_grad():
            point_coordinates = self.sample_points_using_uncertainty(
                pred_masks,
                self.calculate_uncertainty,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )
            point_labels = sample_point(target_masks, point_coordinates, align_corners=False).squeeze(1)
        point_logits = sample_point(pred_masks, point_coordinates, align_corners=False).squeeze(1)
        return {
            "loss_mask": sigmoid_cross_entropy_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    def get_num_masks(self, class_labels: torch.Tensor, device: torch.device) -> torch.Tensor:
        num_masks = torch.as_tensor(sum(len(classes) for classes in class_labels), dtype=torch.float, device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(num_masks)
            num_masks = num_masks / torch.distributed.get_world_size()
        return torch.clamp(num_masks, min=1)


class Mask2FormerDINOv3ForUniversalSegmentation(Mask2FormerForUniversalSegmentation, Mask2FormerDINOv3PreTrainedModel):
    """Mask2Former with a DINOv3 backbone and heads for instance, semantic and panoptic segmentation."""

    config: Mask2FormerDINOv3Config

    def __init__(self, config: Mask2FormerDINOv3Config):
        # Same as upstream except for the base model class.
        Mask2FormerDINOv3PreTrainedModel.__init__(self, config)
        self.model = Mask2FormerDINOv3Model(config)
        self.weight_dict: dict[str, float] = {
            "loss_cross_entropy": config.class_weight,
            "loss_mask": config.mask_weight,
            "loss_dice": config.dice_weight,
        }
        self.class_predictor = nn.Linear(config.hidden_dim, config.num_labels + 1)
        self.criterion = Mask2FormerDINOv3Loss(config=config, weight_dict=self.weight_dict)
        self.post_init()

    def get_loss_dict(
        self,
        masks_queries_logits: torch.Tensor | None,
        class_queries_logits: torch.Tensor,
        mask_labels: list[torch.Tensor],
        class_labels: list[torch.Tensor],
        auxiliary_predictions: list[dict[str, torch.Tensor]] | None,
        **criterion_kwargs,
    ) -> dict[str, torch.Tensor]:
        """Upstream's weighted losses; `criterion_kwargs` (`mask_embeddings`, `pixel_embeddings`) go to the loss."""
        loss_dict = self.criterion(
            masks_queries_logits=masks_queries_logits,
            class_queries_logits=class_queries_logits,
            mask_labels=mask_labels,
            class_labels=class_labels,
            auxiliary_predictions=auxiliary_predictions,
            **criterion_kwargs,
        )
        # Each loss is scaled by every weight whose name it contains ("loss_mask_3" by "loss_mask"), as upstream.
        for name in loss_dict:
            for key, weight in self.weight_dict.items():
                if key in name:
                    loss_dict[name] = loss_dict[name] * weight
        return loss_dict

    def forward(
        self,
        pixel_values: torch.Tensor,
        mask_labels: list[torch.Tensor] | None = None,
        class_labels: list[torch.Tensor] | None = None,
        pixel_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_auxiliary_logits: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> Mask2FormerForUniversalSegmentationOutput:
        """Upstream `Mask2FormerForUniversalSegmentation.forward`: same arguments, same outputs and loss.

        Runs the lean decoder path: full-resolution masks are built for the last decoder layer only (and for the
        others only when `output_auxiliary_logits` asks for them), class logits of intermediate layers only when a
        loss or auxiliary logits need them, and the loss works from mask embeddings (see `Mask2FormerDINOv3Loss`).
        Like upstream, the auxiliary losses are computed whenever labels are given. With `return_dict=False` it
        returns `output.to_tuple()`, i.e. `(loss, class_queries_logits, ...)` when labels are given (upstream builds
        that tuple as `(loss) + output`, which raises a TypeError: `(loss)` is a tensor).
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_auxiliary_logits is None:
            output_auxiliary_logits = self.config.output_auxiliary_logits
        compute_loss = mask_labels is not None and class_labels is not None

        outputs = self.model(
            pixel_values=pixel_values,
            pixel_mask=pixel_mask,
            output_hidden_states=output_hidden_states or self.config.use_auxiliary_loss,
            output_attentions=output_attentions,
            return_dict=True,
            output_intermediate_masks=False,
        )
        mask_embeddings = outputs.mask_embeddings
        pixel_embeddings = outputs.pixel_decoder_last_hidden_state
        states = outputs.transformer_decoder_intermediate_states
        if not (compute_loss or output_auxiliary_logits):
            states = states[-1:]  # intermediate layers only feed auxiliary losses and logits
        class_queries_logits = tuple(self.class_predictor(state.transpose(0, 1)) for state in states)

        loss = None
        if compute_loss:
            auxiliary_predictions = [
                {"mask_embeddings": embeddings, "class_queries_logits": classes}
                for embeddings, classes in zip(mask_embeddings[:-1], class_queries_logits[:-1])
            ]
            loss_dict = self.get_loss_dict(
                outputs.masks_queries_logits[-1],
                class_queries_logits[-1],
                mask_labels,
                class_labels,
                auxiliary_predictions,
                mask_embeddings=mask_embeddings[-1],
                pixel_embeddings=pixel_embeddings,
            )
            loss = self.get_loss(loss_dict)

        auxiliary_logits = None
        if output_auxiliary_logits:
            auxiliary_logits = [
                {
                    "masks_queries_logits": torch.einsum("bqc,bchw->bqhw", embeddings, pixel_embeddings),
                    "class_queries_logits": classes,
                }
                for embeddings, classes in zip(mask_embeddings[:-1], class_queries_logits[:-1])
            ]

        output = Mask2FormerForUniversalSegmentationOutput(
            loss=loss,
            class_queries_logits=class_queries_logits[-1],
            masks_queries_logits=outputs.masks_queries_logits[-1],
            auxiliary_logits=auxiliary_logits,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            pixel_decoder_last_hidden_state=pixel_embeddings,
            transformer_decoder_last_hidden_state=outputs.transformer_decoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states if output_hidden_states else None,
            pixel_decoder_hidden_states=outputs.pixel_decoder_hidden_states if output_hidden_states else None,
            transformer_decoder_hidden_states=(
                outputs.transformer_decoder_hidden_states if output_hidden_states else None
            ),
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()

    @classmethod
    def from_dinov3_pretrained(cls, backbone, head=None, **kwargs):
        """A model whose DINOv3 backbone (and optionally Mask2Former head) comes from pretrained checkpoints.

        Args:
            backbone: a hub id (`facebook/dinov3-vits16-pretrain-lvd1689m`), a preset name (`dinov3-vits16`), a
                folder in transformers' DINOv3ViT / DINOv3ConvNext format (`config.json` + safetensors), or Meta's
                original ViT `.pth` file. The backbone architecture is the checkpoint's (its `config.json`, or for a
                `.pth` inferred from its tensor shapes and checked against its file name), never guessed.
            head: optional hub id or folder of a Mask2Former checkpoint (upstream's, e.g.
                `facebook/mask2former-swin-small-coco-instance`, or a Mask2FormerDINOv3 one). Its pixel decoder and
                transformer decoder tensors are copied where shapes match, its class head only when the label set
                matches. Decoder sizes (and the labels, unless `num_labels` / `id2label` are given) follow the head.
            preset (`str`, keyword): an architecture to insist on (`"dinov3-vits16"` or a hub id); a checkpoint
                with another architecture raises `DINOv3CheckpointError` (a `ValueError`). A `backbone_config`
                keyword is checked the same way and then used as the backbone config (with its usage settings).
            backbone_overrides (`dict`, keyword): non-architecture DINOv3 config fields to set, e.g.
                `{"drop_path_rate": 0.1}`.
            hub_kwargs (`dict`, keyword): passed to the Hub downloads (`token`, `revision`, `cache_dir`, ...).
            output_loading_info (`bool`, keyword): also return a dict with `loaded`, `initialized` (model keys),
                `ignored` (checkpoint keys not used, with the reason; head ones prefixed `head:`), `skipped`
                (head tensors not transferred, with the reason and shapes), `backbone_checkpoint`,
                `backbone_preset`, `head_checkpoint`.
            **kwargs: any other `Mask2FormerDINOv3Config` field (`num_labels`, `id2label`, `tapped_layers`,
                `adapter_channels`, ...).

        `config.backbone_checkpoint` records the backbone's name (hub id, folder name or file name; never a local
        path). A concise report of what was loaded, ignored and newly initialised is logged as a warning. Raises
        `DINOv3CheckpointError` naming the file when a checkpoint is not DINOv3 / Mask2Former, is unreadable or
        truncated, or does not match the requested architecture. Implemented in `mask2former_dinov3.pretrained`.
        """
        from .pretrained import load_dinov3_pretrained

        return load_dinov3_pretrained(cls, backbone, head=head, **kwargs)


__all__ = [
    "Mask2FormerDINOv3HungarianMatcher",
    "Mask2FormerDINOv3MaskedAttentionDecoder",
    "Mask2FormerDINOv3MaskedAttentionDecoderLayer",
    "Mask2FormerDINOv3ModelOutput",
    "Mask2FormerDINOv3MultiscaleDeformableAttention",
    "Mask2FormerDINOv3PixelDecoder",
    "Mask2FormerDINOv3PixelDecoderEncoderLayer",
    "Mask2FormerDINOv3PixelDecoderEncoderOnly",
    "Mask2FormerDINOv3TransformerModule",
    "multi_scale_deformable_attention_gather",
    "Mask2FormerDINOv3ConvNextAdapter",
    "Mask2FormerDINOv3ForUniversalSegmentation",
    "Mask2FormerDINOv3Loss",
    "Mask2FormerDINOv3Model",
    "Mask2FormerDINOv3PixelLevelModule",
    "Mask2FormerDINOv3PreTrainedModel",
    "Mask2FormerDINOv3SpatialPrior",
    "Mask2FormerDINOv3ViTAdapter",
]
