"""Named presets for the released DINOv3 backbones, and loading / conversion of their checkpoints.

Everything about *which* DINOv3 checkpoints exist and *how their tensors are named* lives in this file:

* ``PRESETS``: one row per released backbone (architecture, hub id, Meta's original file name, normalisation,
  the layers DINOv3's own segmentation code taps).
* ``get_preset``: look a preset up by short name (``dinov3-vitb16``) or full hub id.

Sources: transformers' DINOv3 conversion script and DINOv3's segmentation code, as summarised in the project's
reference page. Values marked *unverified* below could not be checked against the real checkpoints offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    backbone_type: str  # "dinov3_vit" or "dinov3_convnext"
    backbone_kwargs: dict = field(default_factory=dict)
    original_filename: str | None = None
    tapped_layers: tuple[int, ...] | None = None  # 0-based ViT blocks; None for ConvNeXt
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD


def _vit(name, hub_id, original_filename, hidden, layers, heads, intermediate, gated, tapped, **extra):
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
        backbone_type="dinov3_vit",
        backbone_kwargs=kwargs,
        original_filename=original_filename,
        tapped_layers=tuple(tapped),
        **extra,
    )


def _convnext(name, hub_id, hidden_sizes, depths):
    return DINOv3Preset(
        name=name,
        hub_id=hub_id,
        backbone_type="dinov3_convnext",
        backbone_kwargs={"hidden_sizes": list(hidden_sizes), "depths": list(depths)},
    )


_NO_QV_BIAS = {"query_bias": False, "value_bias": False}

PRESETS: dict[str, DINOv3Preset] = {
    p.name: p
    for p in [
        _vit("dinov3-vits16", "facebook/dinov3-vits16-pretrain-lvd1689m",
             "dinov3_vits16_pretrain_lvd1689m-08c60483.pth", 384, 12, 6, 1536, False, (2, 5, 8, 11)),
        _vit("dinov3-vits16plus", "facebook/dinov3-vits16plus-pretrain-lvd1689m",
             "dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth", 384, 12, 6, 1536, True, (2, 5, 8, 11)),
        _vit("dinov3-vitb16", "facebook/dinov3-vitb16-pretrain-lvd1689m",
             "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth", 768, 12, 12, 3072, False, (2, 5, 8, 11)),
        _vit("dinov3-vitl16", "facebook/dinov3-vitl16-pretrain-lvd1689m",
             "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth", 1024, 24, 16, 4096, False, (4, 11, 17, 23)),
        _vit("dinov3-vitl16-sat493m", "facebook/dinov3-vitl16-pretrain-sat493m",
             "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth", 1024, 24, 16, 4096, False, (4, 11, 17, 23),
             image_mean=SAT493M_MEAN, image_std=SAT493M_STD),
        # 32 blocks -> [7, 15, 23, 31] is *derived* from the "four even intervals" rule, not read from DINOv3's code.
        _vit("dinov3-vith16plus", "facebook/dinov3-vith16plus-pretrain-lvd1689m",
             "dinov3_vith16plus_pretrain_lvd1689m-7c1da9a5.pth", 1280, 32, 20, 5120, True, (7, 15, 23, 31)),
        _vit("dinov3-vit7b16", "facebook/dinov3-vit7b16-pretrain-lvd1689m",
             "dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth", 4096, 40, 32, 8192, True, (9, 19, 29, 39),
             backbone_overrides=_NO_QV_BIAS),
        _vit("dinov3-vit7b16-sat493m", "facebook/dinov3-vit7b16-pretrain-sat493m",
             "dinov3_vit7b16_pretrain_sat493m-a6675841.pth", 4096, 40, 32, 8192, True, (9, 19, 29, 39),
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


__all__ = ["DINOv3Preset", "PRESETS", "get_preset", "IMAGENET_MEAN", "IMAGENET_STD"]
