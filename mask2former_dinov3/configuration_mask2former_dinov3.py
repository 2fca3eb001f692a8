"""Mask2FormerDinov3 configuration: Mask2Former with a DINOv3 ViT or ConvNeXt backbone behind an adapter."""

from __future__ import annotations

import copy

from huggingface_hub.dataclasses import strict
from transformers import Mask2FormerConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec
from transformers.models.auto import AutoConfig

from .presets import CONVNEXT_TYPE, PRESETS, VIT_TYPE, default_tapped_layers, get_preset


SUPPORTED_BACKBONE_TYPES = (VIT_TYPE, CONVNEXT_TYPE)
# The only strides the pixel decoder may be told about: what both adapters produce.
ADAPTER_FEATURE_STRIDES = (4, 8, 16, 32)
ADAPTER_NORMS = ("layer_norm", "group_norm", "none")
MASK2FORMER_UNITS = ("fast", "upstream")
# Inputs must tile exactly into the coarsest (stride 32) map, or the pyramid levels stop lining up.
INPUT_SIZE_MULTIPLE = 32
def check_input_size(height: int, width: int, name: str = "pixel_values") -> None:
    """Raise a `ValueError` unless `height` and `width` are positive multiples of `INPUT_SIZE_MULTIPLE` (32).

    The one statement of the input-size rule: the model, the data pipeline and the CLIs all call it; `name` says
    which input the message is about (e.g. "--image_height/--image_width").
    """
    if height <= 0 or width <= 0 or height % INPUT_SIZE_MULTIPLE or width % INPUT_SIZE_MULTIPLE:
        raise ValueError(
            f"{name} must have a height and width that are positive multiples of {INPUT_SIZE_MULTIPLE} (the "
            f"coarsest feature map has stride {INPUT_SIZE_MULTIPLE}), got {height}x{width}. Resize or pad the "
            f"images (Mask2FormerDinov3ImageProcessor pads to size_divisor={INPUT_SIZE_MULTIPLE} by default)."
        )


@strict
class Mask2FormerDinov3Config(Mask2FormerConfig):
    r"""
    Configuration of a [`Mask2FormerDinov3Model`]: upstream Mask2Former's pixel decoder and transformer decoder on top
    of a DINOv3 backbone (transformers' `DINOv3ViTBackbone` or `DINOv3ConvNextBackbone`) and an adapter that turns the
    backbone's features into true stride 4/8/16/32 maps.

    All of [`Mask2FormerConfig`]'s arguments are accepted. Differences:

    backbone_config (`DINOv3ViTConfig`, `DINOv3ConvNextConfig` or `dict`, *optional*):
        The backbone. Defaults to the ViT-S/16 architecture of `facebook/dinov3-vits16-pretrain-lvd1689m`.
        Any other backbone type raises a `ValueError`.
    tapped_layers (`list[int]`, *optional*):
        0-based indices of the ViT blocks whose (layer-normed) outputs feed the adapter, shallowest first: either
        four blocks (one per pyramid level, 1/4 ... 1/32) or one block (all levels built from it, as in ViTDet).
        Defaults to four even intervals (12 blocks -> [2, 5, 8, 11], 24 -> [4, 11, 17, 23], 40 -> [9, 19, 29, 39]).
        Ignored for ConvNeXt, which always uses its four stages.
    adapter_channels (`list[int]`, *optional*):
        Channels of the four maps the adapter hands to the pixel decoder (strides 4, 8, 16, 32). Defaults to
        `feature_size` at every level for a ViT, and to the ConvNeXt stages' own widths (identity adapter) for a
        ConvNeXt.
    adapter_norm (`str`, *optional*, defaults to `"layer_norm"`):
        Normalisation after the adapter's convolutions: `"layer_norm"` (channel-wise, as ViTDet), `"group_norm"`
        (32 groups) or `"none"`.
    adapter_spatial_prior (`bool`, *optional*):
        ViT only: add a small convolutional stem on the pixels (ViT-Adapter's "spatial prior", as in Meta's DINOv3
        segmentation head) to the adapter's stride-4 and stride-8 maps, which patch-16 tokens alone describe only
        coarsely. Defaults to `True` for a ViT and `False` for a ConvNeXt (whose own stages are already at strides
        4 and 8); `True` with a ConvNeXt raises a `ValueError`.
    adapter_spatial_prior_channels (`int`, *optional*, defaults to 64):
        Width of the spatial-prior stem at stride 4 (half of it at stride 2, twice it at stride 8).
    freeze_backbone (`bool`, *optional*, defaults to `False`):
        Leave the DINOv3 backbone without gradients (it is then run under `torch.no_grad()`).
    backbone_checkpoint (`str`, *optional*):
        Name of the checkpoint the backbone weights came from (set by `from_dinov3_pretrained`; informational).
    mask2former_units (`str`, *optional*, defaults to `"fast"`):
        `"fast"` runs the pixel decoder, transformer decoder, matcher and loss on the faster subclasses of
        `mask2former_dinov3.fast_mask2former` (same weights, same results within float tolerance); `"upstream"` on
        upstream Mask2Former's own classes (for comparisons). The modules and their initialisation are the same.
    feature_strides (`list[int]`, *optional*, defaults to `[4, 8, 16, 32]`):
        Must be the true strides of the adapter's outputs, `[4, 8, 16, 32]`; anything else raises a `ValueError`.
    """

    model_type = "mask2former_dinov3"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type=VIT_TYPE,
            init_kwargs=dict(PRESETS["dinov3-vits16"].backbone_kwargs),
        ),
    }
    backbones_supported = list(SUPPORTED_BACKBONE_TYPES)

    tapped_layers: list[int] | None = None
    adapter_channels: list[int] | None = None
    adapter_norm: str = "layer_norm"
    adapter_spatial_prior: bool | None = None
    adapter_spatial_prior_channels: int = 64
    freeze_backbone: bool = False
    backbone_checkpoint: str | None = None
    mask2former_units: str = "fast"

    def __post_init__(self, **kwargs):
        backbone = kwargs.get("backbone")
        if self.backbone_config is None and isinstance(backbone, str) and _is_preset(backbone):
            # A preset name or DINOv3 hub id resolves offline instead of querying the Hub for its config.
            kwargs.pop("backbone")
            self.backbone_config = _preset_backbone_config(get_preset(backbone))
        elif isinstance(self.backbone_config, dict):
            self.backbone_config = {"model_type": VIT_TYPE, **self.backbone_config}
        elif self.backbone_config is not None:
            # Never mutate the caller's object: the tapped layers are written into our own copy.
            self.backbone_config = copy.deepcopy(self.backbone_config)
        # Mask2FormerConfig defines no __post_init__: name the class that does (transformers' modular converter
        # inlines the parent's method for `super().m()` and fails on one the parent lacks).
        PreTrainedConfig.__post_init__(self, **kwargs)
        self._check_and_align_backbone()

    def _check_and_align_backbone(self):
        backbone_type = self.backbone_config.model_type
        if backbone_type not in SUPPORTED_BACKBONE_TYPES:
            raise ValueError(
                f"Mask2FormerDinov3Config got a `backbone_config` of type {backbone_type!r}; supported types are "
                f"{', '.join(SUPPORTED_BACKBONE_TYPES)} (a DINOv3ViTConfig or DINOv3ConvNextConfig). For other "
                f"backbones use transformers' Mask2FormerConfig."
            )
        if tuple(self.feature_strides) != ADAPTER_FEATURE_STRIDES:
            raise ValueError(
                f"feature_strides={list(self.feature_strides)} contradicts the model: the DINOv3 "
                f"{'ViT' if backbone_type == VIT_TYPE else 'ConvNeXt'} backbone plus its adapter always gives the "
                f"pixel decoder maps at strides {list(ADAPTER_FEATURE_STRIDES)}. Remove the `feature_strides` "
                f"argument (or pass {list(ADAPTER_FEATURE_STRIDES)})."
            )
        if self.feature_size % 32 != 0:
            raise ValueError(
                f"feature_size={self.feature_size} must be a multiple of 32: the pixel decoder normalises it with "
                f"GroupNorm(32, feature_size)."
            )
        if self.mask2former_units not in MASK2FORMER_UNITS:
            raise ValueError(
                f"mask2former_units={self.mask2former_units!r}; expected one of {', '.join(MASK2FORMER_UNITS)}."
            )
        if self.adapter_norm not in ADAPTER_NORMS:
            raise ValueError(f"adapter_norm={self.adapter_norm!r}; expected one of {', '.join(ADAPTER_NORMS)}.")
        if self.adapter_channels is not None and len(self.adapter_channels) != 4:
            raise ValueError(
                f"adapter_channels={self.adapter_channels} must list 4 channel counts (strides 4, 8, 16, 32)."
            )
        if self.adapter_norm == "group_norm":
            bad = [c for c in self.adapter_output_channels if c % 32]
            # The ViT adapter also normalises its half-width transposed-convolution output.
            if backbone_type == VIT_TYPE and (self.backbone_config.hidden_size // 2) % 32:
                raise ValueError(
                    f"adapter_norm='group_norm' needs a ViT hidden_size divisible by 64 (the adapter normalises "
                    f"hidden_size // 2 channels in 32 groups), got {self.backbone_config.hidden_size}; use "
                    f"adapter_norm='layer_norm'."
                )
            if bad:
                raise ValueError(
                    f"adapter_norm='group_norm' needs adapter channels divisible by 32, got {bad}; set "
                    f"`adapter_channels` or use adapter_norm='layer_norm'."
                )
        self._check_spatial_prior(backbone_type)
        if backbone_type == VIT_TYPE:
            self._align_vit_taps()
        else:
            self._align_convnext_stages()

    def _check_spatial_prior(self, backbone_type: str):
        if self.adapter_spatial_prior is None:
            self.adapter_spatial_prior = backbone_type == VIT_TYPE
        if self.adapter_spatial_prior and backbone_type != VIT_TYPE:
            raise ValueError(
                "adapter_spatial_prior=True is for ViT backbones: a DINOv3 ConvNeXt's own stages are already at "
                "strides 4 and 8. Remove `adapter_spatial_prior` (or pass False)."
            )
        width = self.adapter_spatial_prior_channels
        if self.adapter_spatial_prior:
            step = 64 if self.adapter_norm == "group_norm" else 2
            if width < step or width % step:
                raise ValueError(
                    f"adapter_spatial_prior_channels={width} must be a positive multiple of {step}"
                    + (" (its half-width stem layer uses GroupNorm with 32 groups)" if step == 64 else "")
                    + "; the default is 64."
                )

    def _align_vit_taps(self):
        vit = self.backbone_config
        patch = vit.patch_size if isinstance(vit.patch_size, int) else vit.patch_size[0]
        if patch != 16:
            raise ValueError(
                f"The ViT adapter builds strides 4/8/16/32 from patch-16 tokens, but backbone_config.patch_size is "
                f"{vit.patch_size}. Use a DINOv3 ViT with patch_size=16 (all released DINOv3 ViTs are)."
            )
        num_layers = vit.num_hidden_layers
        if self.tapped_layers is None:
            user_indices = vit.out_indices
            if len(user_indices) == 4 and user_indices != [num_layers]:
                # The user named four stages on the backbone config itself: honour them.
                self.tapped_layers = [i - 1 for i in user_indices]
            else:
                self.tapped_layers = default_tapped_layers(num_layers)
        taps = list(self.tapped_layers)
        if len(taps) not in (1, 4):
            raise ValueError(
                f"tapped_layers={taps} must name 1 or 4 ViT blocks (0-based, shallowest first), e.g. "
                f"{default_tapped_layers(num_layers)} for a {num_layers}-block ViT."
            )
        if any(not 0 <= t < num_layers for t in taps) or sorted(set(taps)) != taps:
            raise ValueError(
                f"tapped_layers={taps} must be strictly increasing 0-based block indices in [0, {num_layers - 1}] "
                f"for this {num_layers}-block ViT; e.g. {default_tapped_layers(num_layers)}."
            )
        self.tapped_layers = taps
        # DINOv3ViTBackbone stage names are `stem, stage1..stageN`: 0-based block i is stage i+1.
        vit.set_output_features_output_indices(out_features=None, out_indices=[t + 1 for t in taps])

    def _align_convnext_stages(self):
        convnext = self.backbone_config
        if convnext.num_stages != 4:
            raise ValueError(
                f"A DINOv3 ConvNeXt backbone must have 4 stages (strides 4, 8, 16, 32); got hidden_sizes="
                f"{convnext.hidden_sizes}."
            )
        convnext.set_output_features_output_indices(out_features=["stage1", "stage2", "stage3", "stage4"], out_indices=None)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """`PreTrainedConfig.from_dict`, reading configs saved before the adapter had a spatial prior as they were.

        Such a config (serialised: it carries `transformers_version`) has no `adapter_spatial_prior` key, and its
        weights are a plain pyramid's; the ViT default would otherwise add an untrained spatial prior to them.
        """
        if "transformers_version" in config_dict and "adapter_spatial_prior" not in config_dict:
            config_dict = {**config_dict, "adapter_spatial_prior": False}
        return super().from_dict(config_dict, **kwargs)

    @property
    def adapter_output_channels(self) -> list[int]:
        """Channels of the four maps (strides 4, 8, 16, 32) that the adapter gives the pixel decoder."""
        if self.adapter_channels is not None:
            return list(self.adapter_channels)
        if self.backbone_config.model_type == CONVNEXT_TYPE:
            return list(self.backbone_config.hidden_sizes)
        return [self.feature_size] * 4

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "Mask2FormerDinov3Config":
        """Config for a released DINOv3 backbone, by preset name (`dinov3-vitb16`) or hub id.

        The backbone architecture and the head sizing of the small ViTs (a 3-layer pixel-decoder encoder) come from
        the preset table in `mask2former_dinov3.presets`; `overrides` set any other field (`num_labels`, `id2label`, `encoder_layers=6`, ...).
        Weights stay random: use `Mask2FormerDinov3ForUniversalSegmentation.from_dinov3_pretrained` for pretrained ones.
        """
        preset = get_preset(name)
        return cls(**{"backbone_config": _preset_backbone_config(preset), **preset.head_kwargs, **overrides})


# The name up to 0.3.0, kept importable.
Mask2FormerDINOv3Config = Mask2FormerDinov3Config


def _is_preset(name: str) -> bool:
    """True for a preset name or a released DINOv3 hub id."""
    try:
        get_preset(name)
    except ValueError:
        return False
    return True


def _preset_backbone_config(preset):
    """The DINOv3 backbone config of a preset row."""
    return AutoConfig.for_model(preset.backbone_type, **preset.backbone_kwargs)


__all__ = ["INPUT_SIZE_MULTIPLE", "Mask2FormerDINOv3Config", "Mask2FormerDinov3Config", "check_input_size"]
