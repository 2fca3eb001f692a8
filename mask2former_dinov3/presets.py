"""The released DINOv3 backbones as named presets, and the ViT layers a segmentation head taps.

One table (`PRESETS`), apart from the architecture code: each row is a released checkpoint's architecture, hub id,
Meta's original file name, input normalisation and the Mask2Former head sizing that suits it. `get_preset` looks a
row up by short name (`dinov3-vitb16`) or hub id. This is the only package module the configuration imports, so it
is what a saved checkpoint folder carries besides the model code.

Source: transformers' DINOv3 conversion script and DINOv3's segmentation code (see the project's facts page);
values marked *unverified* could not be checked against the real checkpoints offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field


VIT_TYPE = "dinov3_vit"
CONVNEXT_TYPE = "dinov3_convnext"

# 0-based blocks that DINOv3's own segmentation code taps ("four even intervals"); 32 blocks is *derived*.
_KNOWN_TAPS = {12: (2, 5, 8, 11), 24: (4, 11, 17, 23), 32: (7, 15, 23, 31), 40: (9, 19, 29, 39)}


def default_tapped_layers(num_hidden_layers: int) -> list[int]:
    """0-based ViT blocks a segmentation head taps by default: four even intervals, as DINOv3's own code does.

    Backbones with fewer than four blocks tap only the last one (a plain ViTDet simple pyramid).
    """
    if num_hidden_layers in _KNOWN_TAPS:
        return list(_KNOWN_TAPS[num_hidden_layers])
    if num_hidden_layers < 4:
        return [num_hidden_layers - 1]
    return [round(num_hidden_layers * (k + 1) / 4) - 1 for k in range(4)]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Satellite (SAT-493M) normalisation as used by DINOv3's satellite examples (*unverified* against the checkpoints).
SAT493M_MEAN = (0.430, 0.411, 0.296)
SAT493M_STD = (0.213, 0.156, 0.143)

# Shared by every released DINOv3 ViT: patch 16, 4 register tokens, RoPE theta 100, LayerNorm eps 1e-5, no key bias.
_VIT_COMMON = {
    "patch_size": 16,
    "num_register_tokens": 4,
    "rope_theta": 100.0,
    "layer_norm_eps": 1e-5,
    "key_bias": False,
    "query_bias": True,
    "value_bias": True,
}


@dataclass(frozen=True)
class DINOv3Preset:
    """One released DINOv3 backbone: its architecture, where its weights live and how to normalise its input."""

    name: str
    hub_id: str
    backbone_type: str  # VIT_TYPE or CONVNEXT_TYPE
    backbone_kwargs: dict = field(default_factory=dict)
    original_filename: str | None = None
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    # Mask2Former head fields sized for this backbone (applied by `from_preset` and `from_dinov3_pretrained` unless the
    # caller or a loaded head sets them); empty = Mask2Former's own defaults.
    head_kwargs: dict = field(default_factory=dict)


def _vit(name, hub_id, original_filename, hidden, layers, heads, intermediate, gated, **extra):
    """A ViT row; `extra` may hold `backbone_overrides` (config fields) and any `DINOv3Preset` field."""
    kwargs = dict(
        _VIT_COMMON,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        hidden_act="silu" if gated else "gelu",
        use_gated_mlp=gated,
    )
    kwargs.update(extra.pop("backbone_overrides", {}))
    return DINOv3Preset(
        name=name,
        hub_id=hub_id,
        backbone_type=VIT_TYPE,
        backbone_kwargs=kwargs,
        original_filename=original_filename,
        **extra,
    )


def _convnext(name, hub_id, hidden_sizes, depths):
    """A ConvNeXt row."""
    return DINOv3Preset(
        name=name,
        hub_id=hub_id,
        backbone_type=CONVNEXT_TYPE,
        backbone_kwargs={"hidden_sizes": list(hidden_sizes), "depths": list(depths)},
    )


_NO_QV_BIAS = {"query_bias": False, "value_bias": False}
# Small ViTs: a 3-layer deformable encoder in the pixel decoder instead of Mask2Former's 6 keeps the head cheap next to
# the backbone; the training comparison behind it is in benchmarks/README.md ("Head defaults").
_SMALL_VIT_HEAD = {"encoder_layers": 3}

PRESETS: dict[str, DINOv3Preset] = {
    p.name: p
    for p in [
        _vit("dinov3-vits16", "facebook/dinov3-vits16-pretrain-lvd1689m",
             "dinov3_vits16_pretrain_lvd1689m-08c60483.pth", 384, 12, 6, 1536, False,
             head_kwargs=_SMALL_VIT_HEAD),
        _vit("dinov3-vits16plus", "facebook/dinov3-vits16plus-pretrain-lvd1689m",
             "dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth", 384, 12, 6, 1536, True,
             head_kwargs=_SMALL_VIT_HEAD),
        _vit("dinov3-vitb16", "facebook/dinov3-vitb16-pretrain-lvd1689m",
             "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth", 768, 12, 12, 3072, False,
             head_kwargs=_SMALL_VIT_HEAD),
        _vit("dinov3-vitl16", "facebook/dinov3-vitl16-pretrain-lvd1689m",
             "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth", 1024, 24, 16, 4096, False),
        _vit("dinov3-vitl16-sat493m", "facebook/dinov3-vitl16-pretrain-sat493m",
             "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth", 1024, 24, 16, 4096, False,
             image_mean=SAT493M_MEAN, image_std=SAT493M_STD),
        _vit("dinov3-vith16plus", "facebook/dinov3-vith16plus-pretrain-lvd1689m",
             "dinov3_vith16plus_pretrain_lvd1689m-7c1da9a5.pth", 1280, 32, 20, 5120, True),
        _vit("dinov3-vit7b16", "facebook/dinov3-vit7b16-pretrain-lvd1689m",
             "dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth", 4096, 40, 32, 8192, True,
             backbone_overrides=_NO_QV_BIAS),
        _vit("dinov3-vit7b16-sat493m", "facebook/dinov3-vit7b16-pretrain-sat493m",
             "dinov3_vit7b16_pretrain_sat493m-a6675841.pth", 4096, 40, 32, 8192, True,
             backbone_overrides=_NO_QV_BIAS, image_mean=SAT493M_MEAN, image_std=SAT493M_STD),
        _convnext("dinov3-convnext-tiny", "facebook/dinov3-convnext-tiny-pretrain-lvd1689m",
                  (96, 192, 384, 768), (3, 3, 9, 3)),
        _convnext("dinov3-convnext-small", "facebook/dinov3-convnext-small-pretrain-lvd1689m",
                  (96, 192, 384, 768), (3, 3, 27, 3)),
        _convnext("dinov3-convnext-base", "facebook/dinov3-convnext-base-pretrain-lvd1689m",
                  (128, 256, 512, 1024), (3, 3, 27, 3)),
        _convnext("dinov3-convnext-large", "facebook/dinov3-convnext-large-pretrain-lvd1689m",
                  (192, 384, 768, 1536), (3, 3, 27, 3)),
    ]
}  # fmt: skip

_BY_HUB_ID = {p.hub_id: p for p in PRESETS.values()}


def get_preset(name: str) -> DINOv3Preset:
    """Return the preset for a short name (``dinov3-vitb16``) or a full hub id (``facebook/dinov3-vitb16-...``)."""
    if name in PRESETS:
        return PRESETS[name]
    if name in _BY_HUB_ID:
        return _BY_HUB_ID[name]
    known = ", ".join(PRESETS)
    raise ValueError(
        f"Unknown DINOv3 preset {name!r}. Known presets: {known} (the full hub ids, e.g. "
        f"'facebook/dinov3-vitb16-pretrain-lvd1689m', are accepted too)."
    )


__all__ = [
    "CONVNEXT_TYPE",
    "DINOv3Preset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRESETS",
    "VIT_TYPE",
    "default_tapped_layers",
    "get_preset",
]
