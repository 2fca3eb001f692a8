"""Mask2Former with a DINOv3 backbone.

Only the pixel-level module's encoder differs from upstream Mask2Former: a DINOv3 backbone (transformers' own
`DINOv3ViTBackbone` / `DINOv3ConvNextBackbone`, so its weights keep their upstream names) followed by an `adapter`
that turns its features into true stride 4/8/16/32 maps. Everything after it is upstream Mask2Former, built exactly
as upstream builds it and then run on the faster units of `fast_mask2former` (`config.mask2former_units`).
"""

import contextlib
import re
from collections.abc import Sequence

import torch
from torch import nn
from transformers import initialization as init
from transformers.models.auto import AutoBackbone
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerLoss,
    Mask2FormerModel,
    Mask2FormerPixelDecoder,
    Mask2FormerPixelLevelModule,
    Mask2FormerPixelLevelModuleOutput,
    Mask2FormerPreTrainedModel,
    Mask2FormerTransformerModule,
)

from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming

from .configuration_mask2former_dinov3 import ADAPTER_FEATURE_STRIDES, Mask2FormerDinov3Config, check_input_size
from .fast_mask2former import FastMask2FormerForUniversalSegmentation, use_fast_units
from .presets import VIT_TYPE


class Mask2FormerDinov3LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a `(batch, channels, height, width)` map (ViTDet's "LN" norm)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states.permute(0, 2, 3, 1)
        hidden_states = super().forward(hidden_states)
        return hidden_states.permute(0, 3, 1, 2)


def build_adapter_norm(kind: str, channels: int) -> nn.Module:
    """The adapter's normalisation layer: "layer_norm" (channel-wise), "group_norm" (32 groups) or "none"."""
    if kind == "layer_norm":
        return Mask2FormerDinov3LayerNorm2d(channels, eps=1e-6)
    if kind == "group_norm":
        return nn.GroupNorm(32, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"Unknown adapter norm {kind!r}; expected 'layer_norm', 'group_norm' or 'none'.")


class Mask2FormerDinov3ConvNorm(nn.Module):
    """Convolution, then the adapter's norm, then GELU if `activation`; the convolution has a bias only where no
    norm follows to cancel it."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, norm: str = "layer_norm",
        activation: bool = False,
    ):  # fmt: skip
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=norm == "none"
        )
        self.norm = build_adapter_norm(norm, out_channels)
        self.activation = nn.GELU() if activation else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(hidden_states)))


class Mask2FormerDinov3Upsample4x(nn.Module):
    """x4 upsampling of ViT tokens: two 2x transposed convolutions with the adapter's norm and GELU between them."""

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
        self.stem = nn.ModuleList(
            [
                Mask2FormerDinov3ConvNorm(c_in, c_out, 3, stride=stride, norm=norm, activation=True)
                for c_in, c_out, stride in ((in_channels, width // 2, 2), (width // 2, width, 2), (width, width, 1))
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
    """ViTDet-style simple feature pyramid: stride-16 ViT tokens -> maps at strides 4, 8, 16 and 32.

    Level k takes tapped layer k (or the single tapped layer for all levels) and resamples it: two 2x transposed
    convolutions (x4), one (x2), identity (x1) or 2x2 max-pooling (x0.5); a 1x1 convolution + norm then projects
    each level to `out_channels[k]`. With `spatial_prior_channels`, a `Mask2FormerDinov3SpatialPrior` stem on the
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
                Mask2FormerDinov3Upsample4x(embed_dim, norm=norm),
                nn.ConvTranspose2d(embed_dim, half, kernel_size=2, stride=2),
                nn.Identity(),
                nn.MaxPool2d(kernel_size=2, stride=2),
            ]
        )
        resampled_channels = (quarter, half, embed_dim, embed_dim)
        self.projections = nn.ModuleList(
            [Mask2FormerDinov3ConvNorm(c_in, c_out, norm=norm) for c_in, c_out in zip(resampled_channels, out_channels)]
        )
        self.spatial_prior = (
            None
            if spatial_prior_channels is None
            else Mask2FormerDinov3SpatialPrior(
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


class Mask2FormerDinov3ConvNextAdapter(nn.Module):
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
                [Mask2FormerDinov3ConvNorm(c_in, c_out, norm=norm) for c_in, c_out in zip(in_channels, out_channels)]
            )

    def forward(
        self, features: Sequence[torch.Tensor], pixel_values: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        # `pixel_values` is accepted (and unused) so that both adapters are called the same way.
        return tuple(project(x) for x, project in zip(features, self.projections))


def build_adapter(config: Mask2FormerDinov3Config, backbone_channels: Sequence[int]) -> nn.Module:
    """The adapter that matches `config.backbone_config` (ViT or ConvNeXt)."""
    # CODEPATH: the backbone family decides the adapter; both give maps at strides 4, 8, 16 and 32.
    if config.backbone_config.model_type == VIT_TYPE:
        return Mask2FormerDinov3ViTAdapter(
            embed_dim=config.backbone_config.hidden_size,
            out_channels=config.adapter_output_channels,
            num_inputs=len(config.tapped_layers),
            norm=config.adapter_norm,
            spatial_prior_channels=config.adapter_spatial_prior_channels if config.adapter_spatial_prior else None,
        )
    return Mask2FormerDinov3ConvNextAdapter(
        in_channels=backbone_channels, out_channels=config.adapter_channels, norm=config.adapter_norm
    )


class Mask2FormerDinov3PixelDecoder(Mask2FormerPixelDecoder):
    """Upstream Mask2Former's pixel decoder, under this model's name (transformers' modular convention)."""


class Mask2FormerDinov3PixelLevelModuleOutput(Mask2FormerPixelLevelModuleOutput):
    """Upstream Mask2Former's pixel-level module output, under this model's name."""


class Mask2FormerDinov3TransformerModule(Mask2FormerTransformerModule):
    """Upstream Mask2Former's transformer module (queries, masked-attention decoder), under this model's name."""


class Mask2FormerDinov3PixelLevelModule(Mask2FormerPixelLevelModule):
    """Upstream's pixel-level module with a DINOv3 backbone (`encoder`) and an `adapter` in front of the decoder."""

    def __init__(self, config: Mask2FormerDinov3Config):
        # Not the parent's __init__: it would build a decoder for the backbone's raw (stride-16) channels.
        nn.Module.__init__(self)
        self.encoder = AutoBackbone.from_config(config.backbone_config)
        self.adapter = build_adapter(config, self.encoder.channels)
        self.decoder = Mask2FormerDinov3PixelDecoder(config, feature_channels=self.adapter.out_channels)
        self.freeze_backbone = config.freeze_backbone
        self.freeze_untrainable_parameters()

    def freeze_untrainable_parameters(self) -> None:
        """Turn off gradients for the backbone if `freeze_backbone`, and always for DINOv3's mask token.

        DINOv3's mask token only replaces patches under `bool_masked_pos` (masked-image pretraining), which
        segmentation never passes: it can never get a gradient, and a trainable parameter without one breaks DDP
        (without `find_unused_parameters=True`) and transformers' gradient-checkpointing checks. Called at init, by
        `unfreeze_backbone` and after `from_pretrained`, whose loader recreates loaded parameters trainable.
        """
        if self.freeze_backbone:
            self.encoder.requires_grad_(False)
        mask_token = getattr(getattr(self.encoder, "embeddings", None), "mask_token", None)
        if mask_token is not None:
            mask_token.requires_grad_(False)

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> Mask2FormerDinov3PixelLevelModuleOutput:
        # Mask2FormerModel passes `output_hidden_states` (transformers' model-structure rules keep output flags out of
        # forward signatures): the backbone maps are returned only when asked for.
        output_hidden_states = kwargs.get("output_hidden_states", False)
        check_input_size(*pixel_values.shape[-2:])
        # A frozen backbone keeps no activations for backward.
        with torch.no_grad() if self.freeze_backbone else contextlib.nullcontext():
            backbone_features = self.encoder(pixel_values).feature_maps
        pyramid = self.adapter(backbone_features, pixel_values)
        decoder_output = self.decoder(pyramid, output_hidden_states=output_hidden_states)
        return Mask2FormerDinov3PixelLevelModuleOutput(
            encoder_last_hidden_state=backbone_features[-1],
            encoder_hidden_states=tuple(backbone_features) if output_hidden_states else None,
            decoder_last_hidden_state=decoder_output.mask_features,
            decoder_hidden_states=decoder_output.multi_scale_features,
        )


def _select_units(module: nn.Module, config: Mask2FormerDinov3Config) -> None:
    # After construction, so that the modules and their random initialisation are exactly upstream's.
    if config.mask2former_units == "fast":
        use_fast_units(module)


class Mask2FormerDinov3PreTrainedModel(Mask2FormerPreTrainedModel):
    """Weight initialisation, freezing and capabilities shared by the Mask2FormerDinov3 models."""

    config: Mask2FormerDinov3Config
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
        "FastMask2FormerMaskedAttentionDecoderLayer",
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
        `Mask2FormerDinov3PixelLevelModule.freeze_untrainable_parameters`): transformers' loader recreates every loaded
        parameter with `requires_grad=True`, which would silently undo `freeze_backbone`."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.base_model.pixel_level_module.freeze_untrainable_parameters()
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

    def activation_checkpointing_enable(
        self, activation_checkpointing_kwargs=None, every_n_layers: int = 1, offload: bool = False
    ):
        """As upstream's (also reached through `gradient_checkpointing_enable`), always non-reentrant.

        Mask2Former's decoder hands every decoder layer the same multi-scale features inside a list. Reentrant
        checkpointing only detaches tensor arguments, so each layer's recomputation would backpropagate into the
        pixel decoder's graph again ("Trying to backward through the graph a second time").
        """
        kwargs = {**(activation_checkpointing_kwargs or {}), "use_reentrant": False}
        super().activation_checkpointing_enable(kwargs, every_n_layers=every_n_layers, offload=offload)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        if isinstance(module, (Mask2FormerDinov3ViTAdapter, Mask2FormerDinov3ConvNextAdapter)):
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


class Mask2FormerDinov3Model(Mask2FormerModel, Mask2FormerDinov3PreTrainedModel):
    """Mask2Former model (no task head) with a DINOv3 backbone; outputs as `Mask2FormerModel`."""

    config: Mask2FormerDinov3Config

    def __init__(self, config: Mask2FormerDinov3Config):
        # Upstream's, except for the pixel-level module.
        Mask2FormerDinov3PreTrainedModel.__init__(self, config)
        self.pixel_level_module = Mask2FormerDinov3PixelLevelModule(config)
        self.transformer_module = Mask2FormerDinov3TransformerModule(in_features=config.feature_size, config=config)
        _select_units(self, config)
        self.post_init()


class Mask2FormerDinov3ForUniversalSegmentation(FastMask2FormerForUniversalSegmentation, Mask2FormerDinov3PreTrainedModel):
    """Mask2Former with a DINOv3 backbone and heads for instance, semantic and panoptic segmentation."""

    config: Mask2FormerDinov3Config

    def __init__(self, config: Mask2FormerDinov3Config):
        # Upstream's, except for the base model class.
        Mask2FormerDinov3PreTrainedModel.__init__(self, config)
        self.model = Mask2FormerDinov3Model(config)
        self.weight_dict: dict[str, float] = {
            "loss_cross_entropy": config.class_weight,
            "loss_mask": config.mask_weight,
            "loss_dice": config.dice_weight,
        }
        self.class_predictor = nn.Linear(config.hidden_dim, config.num_labels + 1)
        self.criterion = Mask2FormerLoss(config=config, weight_dict=self.weight_dict)
        _select_units(self.criterion, config)
        self.post_init()

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`; the saved `auto_map` also names this class for
        `AutoModelForImageSegmentation`, through which `pipeline("image-segmentation", model=folder,
        trust_remote_code=True)` loads a folder in a process that never imported this package."""
        name = f"{type(self).__module__.rsplit('.', 1)[-1]}.{type(self).__name__}"
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), "AutoModelForImageSegmentation": name}
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_dinov3_pretrained(cls, backbone, head=None, **kwargs):
        """A model whose DINOv3 backbone (and optionally Mask2Former head) comes from pretrained checkpoints.

        Args:
            backbone: a hub id (`facebook/dinov3-vits16-pretrain-lvd1689m`), a preset name (`dinov3-vits16`), a
                folder in transformers' DINOv3ViT / DINOv3ConvNext format (`config.json` + safetensors), or Meta's
                original ViT `.pth` file. The backbone architecture is the checkpoint's (its `config.json`, or for a
                `.pth` inferred from its tensor shapes and checked against its file name), never guessed.
            head: optional hub id or folder of a Mask2Former checkpoint (upstream's, e.g.
                `facebook/mask2former-swin-small-coco-instance`, or a Mask2FormerDinov3 one). Its pixel decoder and
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
            **kwargs: any other `Mask2FormerDinov3Config` field (`num_labels`, `id2label`, `tapped_layers`,
                `adapter_channels`, ...).

        `config.backbone_checkpoint` records the backbone's name (hub id, folder name or file name; never a local
        path). A concise report of what was loaded, ignored and newly initialised is logged as a warning. Raises
        `DINOv3CheckpointError` naming the file when a checkpoint is not DINOv3 / Mask2Former, is unreadable or
        truncated, or does not match the requested architecture. Implemented in `mask2former_dinov3.loading`.
        """
        # Absolute, and inside try: a relative import would make save_pretrained copy the loading code next to every
        # checkpoint, and transformers' remote-code check requires every package a file imports outside try blocks.
        try:
            from mask2former_dinov3.loading import load_dinov3_pretrained
        except ImportError as error:
            raise ImportError(
                "from_dinov3_pretrained needs the mask2former-dinov3 package installed (pip install mask2former-dinov3)."
            ) from error

        return load_dinov3_pretrained(cls, backbone, head=head, **kwargs)


def _legacy_adapter_key_renamings() -> list[WeightRenaming]:
    """Renamings between the adapter's parameter names in 0.3.0 checkpoints and the modules of this version.

    Up to 0.3.0 the adapter was built from `nn.Sequential`s (`projections.K.0` / `.1`, `resample.0.0` / `.1` / `.3`,
    `spatial_prior.stem.0` ... `.7`, `spatial_prior.downsample.0` / `.1`); transformers' model-structure rules do not
    allow `nn.Sequential`, so the same layers now have names. transformers applies renamings one after the other (in
    reverse order when saving), so the order matters: a rule that produces `stem.K.` comes after the rule that reads
    `stem.K.`, so that no key is renamed twice.
    """
    pairs = []
    for level in range(4):
        pairs += [(f"adapter.projections.{level}.0.", f"adapter.projections.{level}.conv."),
                  (f"adapter.projections.{level}.1.", f"adapter.projections.{level}.norm.")]  # fmt: skip
    pairs += [
        ("adapter.resample.0.0.", "adapter.resample.0.conv1."),
        ("adapter.resample.0.1.", "adapter.resample.0.norm."),
        ("adapter.resample.0.3.", "adapter.resample.0.conv2."),
        ("adapter.spatial_prior.downsample.0.", "adapter.spatial_prior.downsample.conv."),
        ("adapter.spatial_prior.downsample.1.", "adapter.spatial_prior.downsample.norm."),
    ]
    for block in range(3):
        pairs += [(f"adapter.spatial_prior.stem.{3 * block}.", f"adapter.spatial_prior.stem.{block}.conv."),
                  (f"adapter.spatial_prior.stem.{3 * block + 1}.", f"adapter.spatial_prior.stem.{block}.norm.")]  # fmt: skip
    for level in range(2):
        pairs += [(f"adapter.spatial_prior.projections.{level}.0.", f"adapter.spatial_prior.projections.{level}.conv."),
                  (f"adapter.spatial_prior.projections.{level}.1.", f"adapter.spatial_prior.projections.{level}.norm.")]  # fmt: skip
    return [
        WeightRenaming(
            source_patterns=re.escape(f"pixel_level_module.{old}"),
            target_patterns=re.escape(f"pixel_level_module.{new}"),
        )
        for old, new in pairs
    ]


# transformers' own key-mapping mechanism: loading renames 0.3.0 keys to this version's modules, and saving renames
# them back (as it does for DINOv3's `layer.*` keys), so that checkpoints keep one layout across versions: 0.3.0 code
# (e.g. a `trust_remote_code` copy) loads checkpoints saved by this version, and this version loads 0.3.0's.
register_checkpoint_conversion_mapping(
    Mask2FormerDinov3Config.model_type, _legacy_adapter_key_renamings(), overwrite=True
)

# The names up to 0.3.0, kept importable (and `from_pretrained` of checkpoints saved under them works: the model type
# did not change).
Mask2FormerDINOv3ConvNextAdapter = Mask2FormerDinov3ConvNextAdapter
Mask2FormerDINOv3ForUniversalSegmentation = Mask2FormerDinov3ForUniversalSegmentation
Mask2FormerDINOv3Model = Mask2FormerDinov3Model
Mask2FormerDINOv3PixelLevelModule = Mask2FormerDinov3PixelLevelModule
Mask2FormerDINOv3PreTrainedModel = Mask2FormerDinov3PreTrainedModel
Mask2FormerDINOv3SpatialPrior = Mask2FormerDinov3SpatialPrior
Mask2FormerDINOv3ViTAdapter = Mask2FormerDinov3ViTAdapter

__all__ = [
    "Mask2FormerDINOv3ConvNextAdapter",
    "Mask2FormerDINOv3ForUniversalSegmentation",
    "Mask2FormerDINOv3Model",
    "Mask2FormerDINOv3PixelLevelModule",
    "Mask2FormerDINOv3PreTrainedModel",
    "Mask2FormerDINOv3SpatialPrior",
    "Mask2FormerDINOv3ViTAdapter",
    "Mask2FormerDinov3ConvNextAdapter",
    "Mask2FormerDinov3ConvNorm",
    "Mask2FormerDinov3ForUniversalSegmentation",
    "Mask2FormerDinov3Model",
    "Mask2FormerDinov3PixelDecoder",
    "Mask2FormerDinov3PixelLevelModule",
    "Mask2FormerDinov3PixelLevelModuleOutput",
    "Mask2FormerDinov3PreTrainedModel",
    "Mask2FormerDinov3SpatialPrior",
    "Mask2FormerDinov3TransformerModule",
    "Mask2FormerDinov3Upsample4x",
    "Mask2FormerDinov3ViTAdapter",
    "build_adapter",
    "build_adapter_norm",
]
