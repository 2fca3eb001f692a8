# Copyright 2026 the HuggingFace Team. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""PyTorch Mask2Former model with a DINOv3 backbone."""

import torch
from huggingface_hub.dataclasses import strict
from torch import nn

from ... import initialization as init
from ...configuration_utils import PreTrainedConfig, SubConfigSpec
from ...utils import auto_docstring
from ..auto import AutoBackbone, AutoConfig
from ..mask2former.configuration_mask2former import Mask2FormerConfig
from ..mask2former.modeling_mask2former import (
    Mask2FormerForUniversalSegmentation,
    Mask2FormerModel,
    Mask2FormerPixelDecoder,
    Mask2FormerPixelLevelModule,
    Mask2FormerPixelLevelModuleOutput,
    Mask2FormerPreTrainedModel,
)


@auto_docstring(checkpoint="facebook/dinov3-vits16-pretrain-lvd1689m")
@strict
class Mask2FormerDinov3Config(Mask2FormerConfig):
    r"""
    feature_size (`int`, *optional*, defaults to 256):
        The features (channels) of the resulting feature maps.
    mask_feature_size (`int`, *optional*, defaults to 256):
        The masks' features size, this value will also be used to specify the Feature Pyramid Network features'
        size.
    encoder_feedforward_dim (`int`, *optional*, defaults to 1024):
        Dimension of feedforward network for deformable detr encoder used as part of pixel decoder.
    dim_feedforward (`int`, *optional*, defaults to 2048):
        Feature dimension in feedforward network for transformer decoder.
    pre_norm (`bool`, *optional*, defaults to `False`):
        Whether to use pre-LayerNorm or not for transformer decoder.
    enforce_input_projection (`bool`, *optional*, defaults to `False`):
        Whether to add an input projection 1x1 convolution even if the input channels and hidden dim are identical
        in the Transformer decoder.
    common_stride (`int`, *optional*, defaults to 4):
        Parameter used for determining number of FPN levels used as part of pixel decoder.
    num_queries (`int`, *optional*, defaults to 100):
        Number of queries for the decoder.
    train_num_points (`int`, *optional*, defaults to 12544):
        Number of points used for sampling during loss calculation.
    oversample_ratio (`float`, *optional*, defaults to 3.0):
        Oversampling parameter used for calculating no. of sampled points
    importance_sample_ratio (`float`, *optional*, defaults to 0.75):
        Ratio of points that are sampled via importance sampling.
    feature_strides (`list[int]`, *optional*, defaults to `[4, 8, 16, 32]`):
        Strides of the adapter's feature maps; must be `[4, 8, 16, 32]`.
    output_auxiliary_logits (`bool`, *optional*):
        Should the model output its `auxiliary_logits` or not.
    tapped_layers (`list[int]`, *optional*):
        0-based indices of the ViT blocks whose outputs feed the adapter, shallowest first: four blocks (one per
        pyramid level, strides 4 to 32) or one block (every level built from it, as in ViTDet). Defaults to four even
        intervals of the ViT's depth. Ignored for a ConvNeXt backbone, which always hands on its four stages.
    adapter_channels (`list[int]`, *optional*):
        Channels of the four maps (strides 4, 8, 16, 32) the adapter hands to the pixel decoder. Defaults to
        `feature_size` at every level for a ViT, and to the ConvNeXt stages' own widths for a ConvNeXt.
    adapter_norm (`str`, *optional*, defaults to `"layer_norm"`):
        Normalization after the adapter's convolutions: `"layer_norm"`, `"group_norm"` (32 groups) or `"none"`.
    adapter_spatial_prior (`bool`, *optional*):
        Whether a ViT adapter adds a convolutional stem on the pixels to its stride 4 and stride 8 maps. Defaults to
        `True` for a ViT backbone and `False` for a ConvNeXt backbone.
    adapter_spatial_prior_channels (`int`, *optional*, defaults to 64):
        Width of the spatial-prior stem at stride 4 (half of it at stride 2, twice it at stride 8).

    Example:

    ```python
    >>> from transformers import Mask2FormerDinov3Config, Mask2FormerDinov3ForUniversalSegmentation

    >>> configuration = Mask2FormerDinov3Config()
    >>> model = Mask2FormerDinov3ForUniversalSegmentation(configuration)
    >>> configuration = model.config
    ```
    """

    model_type = "mask2former_dinov3"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="dinov3_vit",
            init_kwargs={
                "hidden_size": 384,
                "num_hidden_layers": 12,
                "num_attention_heads": 6,
                "intermediate_size": 1536,
                "num_register_tokens": 4,
                "layer_norm_eps": 1e-5,
                "key_bias": False,
            },
        ),
    }
    backbones_supported = ["dinov3_vit", "dinov3_convnext"]

    tapped_layers: list[int] | None = None
    adapter_channels: list[int] | None = None
    adapter_norm: str = "layer_norm"
    adapter_spatial_prior: bool | None = None
    adapter_spatial_prior_channels: int = 64

    ignore_value = AttributeError()

    def __post_init__(self, **kwargs):
        PreTrainedConfig.__post_init__(self, **kwargs)
        backbone_config = self.backbone_config
        if backbone_config.model_type not in self.backbones_supported:
            raise ValueError(
                f"`backbone_config` is a {backbone_config.model_type!r} config; Mask2FormerDinov3 supports "
                f"{self.backbones_supported}. Use `Mask2FormerConfig` for other backbones."
            )
        if list(self.feature_strides) != [4, 8, 16, 32]:
            raise ValueError(f"`feature_strides` must be [4, 8, 16, 32] (the adapter's), got {self.feature_strides}.")
        if self.adapter_norm not in ("layer_norm", "group_norm", "none"):
            raise ValueError(
                f"`adapter_norm` must be 'layer_norm', 'group_norm' or 'none', got {self.adapter_norm!r}."
            )
        is_vit = backbone_config.model_type == "dinov3_vit"
        if self.adapter_spatial_prior is None:
            self.adapter_spatial_prior = is_vit
        if self.adapter_spatial_prior and not is_vit:
            raise ValueError("`adapter_spatial_prior=True` needs a DINOv3 ViT backbone; a ConvNeXt has stride 4 maps.")
        if is_vit:
            num_layers = backbone_config.num_hidden_layers
            if self.tapped_layers is None:
                # DINOv3's own segmentation code taps four even intervals: these are its choices for the released depths.
                released = {12: [2, 5, 8, 11], 24: [4, 11, 17, 23], 32: [7, 15, 23, 31], 40: [9, 19, 29, 39]}
                if num_layers in released:
                    self.tapped_layers = released[num_layers]
                elif num_layers < 4:
                    self.tapped_layers = [num_layers - 1]
                else:
                    self.tapped_layers = [round(num_layers * (level + 1) / 4) - 1 for level in range(4)]
            if len(self.tapped_layers) not in (1, 4):
                raise ValueError(f"`tapped_layers` must name 1 or 4 ViT blocks, got {self.tapped_layers}.")
            # The backbone's stage i + 1 is the output of 0-based block i.
            backbone_config.set_output_features_output_indices(
                out_features=None, out_indices=[layer + 1 for layer in self.tapped_layers]
            )
        else:
            backbone_config.set_output_features_output_indices(
                out_features=["stage1", "stage2", "stage3", "stage4"], out_indices=None
            )


class Mask2FormerDinov3LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a `(batch_size, channels, height, width)` map."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states.permute(0, 2, 3, 1)
        hidden_states = super().forward(hidden_states)
        return hidden_states.permute(0, 3, 1, 2)


def build_adapter_norm(norm: str, channels: int) -> nn.Module:
    """The adapter's normalization layer for `channels` channels."""
    if norm == "layer_norm":
        return Mask2FormerDinov3LayerNorm2d(channels, eps=1e-6)
    if norm == "group_norm":
        return nn.GroupNorm(32, channels)
    return nn.Identity()


class Mask2FormerDinov3ConvNorm(nn.Module):
    """Convolution, normalization and optionally GELU; the convolution has a bias only without a normalization."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        norm: str = "layer_norm",
        activation: bool = False,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=norm == "none"
        )
        self.norm = build_adapter_norm(norm, out_channels)
        self.activation = nn.GELU() if activation else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(hidden_states)))


class Mask2FormerDinov3Upsample4x(nn.Module):
    """Two 2x transposed convolutions with a normalization and GELU between them."""

    def __init__(self, in_channels: int, norm: str = "layer_norm"):
        super().__init__()
        half, quarter = max(in_channels // 2, 1), max(in_channels // 4, 1)
        self.conv1 = nn.ConvTranspose2d(in_channels, half, kernel_size=2, stride=2)
        self.norm = build_adapter_norm(norm, half)
        self.activation = nn.GELU()
        self.conv2 = nn.ConvTranspose2d(half, quarter, kernel_size=2, stride=2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.activation(self.norm(self.conv1(hidden_states))))


class Mask2FormerDinov3SpatialPrior(nn.Module):
    """
    Convolutional stem on the pixels (ViT-Adapter's spatial prior) that adds fine detail to the stride 4 and stride 8
    maps built from patch-16 tokens.
    """

    def __init__(self, out_channels: list[int], width: int = 64, norm: str = "layer_norm", in_channels: int = 3):
        super().__init__()
        self.stem = nn.ModuleList(
            [
                Mask2FormerDinov3ConvNorm(in_channels, width // 2, 3, stride=2, norm=norm, activation=True),
                Mask2FormerDinov3ConvNorm(width // 2, width, 3, stride=2, norm=norm, activation=True),
                Mask2FormerDinov3ConvNorm(width, width, 3, stride=1, norm=norm, activation=True),
            ]
        )
        self.downsample = Mask2FormerDinov3ConvNorm(width, 2 * width, 3, stride=2, norm=norm, activation=True)
        self.projections = nn.ModuleList(
            [
                Mask2FormerDinov3ConvNorm(width, out_channels[0], norm=norm),
                Mask2FormerDinov3ConvNorm(2 * width, out_channels[1], norm=norm),
            ]
        )

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stride4 = pixel_values
        for layer in self.stem:
            stride4 = layer(stride4)
        stride8 = self.downsample(stride4)
        return self.projections[0](stride4), self.projections[1](stride8)


class Mask2FormerDinov3ViTAdapter(nn.Module):
    """
    Simple feature pyramid (ViTDet) that turns stride 16 ViT tokens into maps at strides 4, 8, 16 and 32, optionally
    with a spatial prior on the pixels added to the stride 4 and stride 8 maps.
    """

    def __init__(self, config: Mask2FormerDinov3Config):
        super().__init__()
        embed_dim = config.backbone_config.hidden_size
        half, quarter = max(embed_dim // 2, 1), max(embed_dim // 4, 1)
        self.out_channels = config.adapter_channels or [config.feature_size] * 4
        self.num_inputs = len(config.tapped_layers)
        self.resample = nn.ModuleList(
            [
                Mask2FormerDinov3Upsample4x(embed_dim, norm=config.adapter_norm),
                nn.ConvTranspose2d(embed_dim, half, kernel_size=2, stride=2),
                nn.Identity(),
                nn.MaxPool2d(kernel_size=2, stride=2),
            ]
        )
        self.projections = nn.ModuleList(
            [
                Mask2FormerDinov3ConvNorm(in_channels, out_channels, norm=config.adapter_norm)
                for in_channels, out_channels in zip((quarter, half, embed_dim, embed_dim), self.out_channels)
            ]
        )
        self.spatial_prior = None
        # CODEPATH: a ViT adapter has a spatial prior unless the config turns it off.
        if config.adapter_spatial_prior:
            self.spatial_prior = Mask2FormerDinov3SpatialPrior(
                self.out_channels[:2], width=config.adapter_spatial_prior_channels, norm=config.adapter_norm
            )

    def forward(self, features: list[torch.Tensor], pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = list(features) * 4 if self.num_inputs == 1 else list(features)
        levels = [project(resample(x)) for x, resample, project in zip(inputs, self.resample, self.projections)]
        if self.spatial_prior is not None:
            prior4, prior8 = self.spatial_prior(pixel_values)
            levels[0] = levels[0] + prior4
            levels[1] = levels[1] + prior8
        return tuple(levels)


class Mask2FormerDinov3ConvNextAdapter(nn.Module):
    """Hands on the four ConvNeXt stages (strides 4, 8, 16, 32), projected to `adapter_channels` if they differ."""

    def __init__(self, config: Mask2FormerDinov3Config, in_channels: list[int]):
        super().__init__()
        self.out_channels = config.adapter_channels or list(in_channels)
        if list(in_channels) == self.out_channels:
            self.projections = nn.ModuleList([nn.Identity() for _ in in_channels])
        else:
            self.projections = nn.ModuleList(
                [
                    Mask2FormerDinov3ConvNorm(channels_in, channels_out, norm=config.adapter_norm)
                    for channels_in, channels_out in zip(in_channels, self.out_channels)
                ]
            )

    def forward(self, features: list[torch.Tensor], pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(project(x) for x, project in zip(features, self.projections))


class Mask2FormerDinov3PixelDecoder(Mask2FormerPixelDecoder):
    pass


class Mask2FormerDinov3PixelLevelModuleOutput(Mask2FormerPixelLevelModuleOutput):
    pass


class Mask2FormerDinov3PixelLevelModule(Mask2FormerPixelLevelModule):
    def __init__(self, config: Mask2FormerDinov3Config):
        nn.Module.__init__(self)
        self.encoder = AutoBackbone.from_config(config.backbone_config)
        # CODEPATH: the backbone family decides the adapter; both give maps at strides 4, 8, 16 and 32.
        if config.backbone_config.model_type == "dinov3_vit":
            self.adapter = Mask2FormerDinov3ViTAdapter(config)
        else:
            self.adapter = Mask2FormerDinov3ConvNextAdapter(config, self.encoder.channels)
        self.decoder = Mask2FormerDinov3PixelDecoder(config, feature_channels=self.adapter.out_channels)
        # DINOv3's mask token only serves masked-image pretraining: segmentation never gives it a gradient.
        mask_token = getattr(getattr(self.encoder, "embeddings", None), "mask_token", None)
        if mask_token is not None:
            mask_token.requires_grad_(False)

    def forward(self, pixel_values: torch.Tensor, **kwargs):
        # Mask2FormerModel passes `output_hidden_states`: the backbone maps are returned only when asked for.
        output_hidden_states = kwargs.get("output_hidden_states", False)
        height, width = pixel_values.shape[-2:]
        if height % 32 or width % 32:
            raise ValueError(
                f"`pixel_values` must have a height and width that are multiples of 32 (the coarsest map has stride "
                f"32), got {height}x{width}. Pad the images (`size_divisor=32` in the image processor)."
            )
        backbone_features = self.encoder(pixel_values).feature_maps
        pyramid = self.adapter(backbone_features, pixel_values)
        decoder_output = self.decoder(pyramid, output_hidden_states=output_hidden_states)
        return Mask2FormerDinov3PixelLevelModuleOutput(
            encoder_last_hidden_state=backbone_features[-1],
            encoder_hidden_states=tuple(backbone_features) if output_hidden_states else None,
            decoder_last_hidden_state=decoder_output.mask_features,
            decoder_hidden_states=decoder_output.multi_scale_features,
        )


class Mask2FormerDinov3PreTrainedModel(Mask2FormerPreTrainedModel):
    config: Mask2FormerDinov3Config
    # The attention implementation is dispatched to the DINOv3 backbone; Mask2Former's own attention is eager.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _no_split_modules = ["Mask2FormerDinov3MaskedAttentionDecoderLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        if isinstance(module, (Mask2FormerDinov3ViTAdapter, Mask2FormerDinov3ConvNextAdapter)):
            # detectron2's c2_xavier_fill, as ViTDet's simple feature pyramid; normalizations start as identity.
            for submodule in module.modules():
                if isinstance(submodule, (nn.Conv2d, nn.ConvTranspose2d)):
                    init.kaiming_uniform_(submodule.weight, a=1)
                    if submodule.bias is not None:
                        init.zeros_(submodule.bias)
                elif isinstance(submodule, (nn.LayerNorm, nn.GroupNorm)):
                    init.ones_(submodule.weight)
                    init.zeros_(submodule.bias)

    def get_input_embeddings(self) -> nn.Module:
        encoder = self.base_model.pixel_level_module.encoder
        embeddings = encoder.get_input_embeddings()
        if embeddings is None:
            # DINOv3ConvNextBackbone has no input-embedding accessor; its stem is stage 0's first convolution.
            embeddings = encoder.model.stages[0].downsample_layers[0]
        return embeddings


class Mask2FormerDinov3Model(Mask2FormerModel):
    pass


class Mask2FormerDinov3ForUniversalSegmentation(Mask2FormerForUniversalSegmentation):
    pass


__all__ = [
    "Mask2FormerDinov3Config",
    "Mask2FormerDinov3PreTrainedModel",
    "Mask2FormerDinov3Model",
    "Mask2FormerDinov3ForUniversalSegmentation",
]
