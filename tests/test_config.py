"""Mask2FormerDINOv3Config: validation errors, tapped layers, presets against the reference table."""

import pytest
from transformers import DINOv3ConvNextConfig, DINOv3ViTConfig, Mask2FormerConfig, ResNetConfig, SwinConfig
from transformers import Dinov2Config

from mask2former_dinov3 import PRESETS, Mask2FormerDINOv3Config, default_tapped_layers, get_preset
from tiny_configs import tiny_backbone_config, tiny_config


@pytest.mark.parametrize("other", [SwinConfig(), ResNetConfig(), Dinov2Config()], ids=["swin", "resnet", "dinov2"])
def test_unsupported_backbone_type_names_the_supported_ones(other):
    with pytest.raises(ValueError) as err:
        Mask2FormerDINOv3Config(backbone_config=other)
    message = str(err.value)
    assert other.model_type in message
    assert "dinov3_vit" in message and "dinov3_convnext" in message


def test_unsupported_backbone_as_dict_is_rejected_too():
    with pytest.raises(ValueError, match="supported types are dinov3_vit, dinov3_convnext"):
        Mask2FormerDINOv3Config(backbone_config={"model_type": "swin"})


@pytest.mark.parametrize("backbone", ["vit", "convnext"])
def test_contradictory_feature_strides_say_what_to_change(backbone):
    with pytest.raises(ValueError) as err:
        tiny_config(backbone, feature_strides=[16, 16, 16, 16])
    message = str(err.value)
    assert "[16, 16, 16, 16]" in message and "[4, 8, 16, 32]" in message
    assert "Remove the `feature_strides` argument" in message


def test_true_feature_strides_are_accepted():
    assert list(tiny_config(feature_strides=[4, 8, 16, 32]).feature_strides) == [4, 8, 16, 32]


def test_default_backbone_is_vits16_architecture():
    config = Mask2FormerDINOv3Config()
    vit = config.backbone_config
    assert vit.model_type == "dinov3_vit"
    assert (vit.hidden_size, vit.num_hidden_layers, vit.num_attention_heads, vit.intermediate_size) == (
        384, 12, 6, 1536,
    )
    assert vit.num_register_tokens == 4 and vit.patch_size == 16 and vit.layer_norm_eps == 1e-5
    assert config.tapped_layers == [2, 5, 8, 11]
    assert vit.out_features == ["stage3", "stage6", "stage9", "stage12"]


@pytest.mark.parametrize(
    "num_layers, expected", [(12, [2, 5, 8, 11]), (24, [4, 11, 17, 23]), (32, [7, 15, 23, 31]), (40, [9, 19, 29, 39]),
                             (8, [1, 3, 5, 7]), (2, [1])],
)
def test_default_tapped_layers(num_layers, expected):
    assert default_tapped_layers(num_layers) == expected


def test_tapped_layers_are_user_settable_and_reach_the_backbone():
    config = tiny_config(tapped_layers=[0, 1, 2, 3])
    assert config.backbone_config.out_indices == [1, 2, 3, 4]
    single = tiny_config(tapped_layers=[3])
    assert single.backbone_config.out_features == ["stage4"]


def test_four_out_indices_on_the_backbone_config_are_honoured():
    config = Mask2FormerDINOv3Config(backbone_config=tiny_backbone_config("vit", out_indices=[1, 2, 3, 4]))
    assert config.tapped_layers == [0, 1, 2, 3]


@pytest.mark.parametrize("taps", [[0, 1], [3, 2, 1, 0], [0, 1, 2, 9]])
def test_invalid_tapped_layers_raise(taps):
    with pytest.raises(ValueError, match="tapped_layers"):
        tiny_config(tapped_layers=taps)


def test_callers_backbone_config_is_not_mutated():
    backbone = tiny_backbone_config("vit")
    before = backbone.to_dict()
    tiny_config(backbone_config=backbone)
    assert backbone.to_dict() == before


def test_convnext_taps_all_four_stages_even_if_its_config_says_otherwise():
    config = Mask2FormerDINOv3Config(backbone_config=DINOv3ConvNextConfig())  # upstream default taps only stage4
    assert config.backbone_config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    assert config.adapter_output_channels == [96, 192, 384, 768]


def test_non_patch16_vit_is_rejected():
    with pytest.raises(ValueError, match="patch_size"):
        Mask2FormerDINOv3Config(backbone_config=DINOv3ViTConfig(patch_size=14))


def test_feature_size_must_suit_groupnorm():
    with pytest.raises(ValueError, match="multiple of 32"):
        tiny_config(feature_size=48)


def test_bad_adapter_settings():
    with pytest.raises(ValueError, match="adapter_norm"):
        tiny_config(adapter_norm="batch_norm")
    with pytest.raises(ValueError, match="4 channel counts"):
        tiny_config(adapter_channels=[32, 32])


def test_spatial_prior_is_on_for_vit_off_for_convnext_and_validated():
    assert tiny_config("vit").adapter_spatial_prior is True
    assert tiny_config("vit", adapter_spatial_prior=False).adapter_spatial_prior is False
    assert tiny_config("convnext").adapter_spatial_prior is False
    with pytest.raises(ValueError, match="adapter_spatial_prior=True is for ViT backbones.*Remove"):
        tiny_config("convnext", adapter_spatial_prior=True)
    with pytest.raises(ValueError, match="adapter_spatial_prior_channels=0 must be a positive multiple of 2"):
        tiny_config("vit", adapter_spatial_prior_channels=0)
    with pytest.raises(ValueError, match="adapter_spatial_prior_channels=96 must be a positive multiple of 64"):
        tiny_config(
            "vit",
            backbone_config=tiny_backbone_config("vit", hidden_size=64),
            adapter_norm="group_norm",
            adapter_spatial_prior_channels=96,
        )
    with pytest.raises(ValueError, match="group_norm' needs a ViT hidden_size divisible by 64.*got 32"):
        tiny_config("vit", adapter_norm="group_norm")
    # Without a spatial prior its width is never used, so it is not checked.
    assert tiny_config("vit", adapter_spatial_prior=False, adapter_spatial_prior_channels=3).adapter_spatial_prior is False


def test_round_trip_through_dict_and_disk(tmp_path):
    config = tiny_config(tapped_layers=[0, 1, 2, 3], adapter_channels=[32, 64, 64, 32], freeze_backbone=True)
    config.save_pretrained(tmp_path)
    loaded = Mask2FormerDINOv3Config.from_pretrained(tmp_path)
    assert loaded.tapped_layers == [0, 1, 2, 3]
    assert loaded.adapter_channels == [32, 64, 64, 32]
    assert loaded.freeze_backbone is True
    assert loaded.backbone_config.to_dict() == config.backbone_config.to_dict()


# The released architectures, transcribed from the reference page (../shared/dinov3_facts.md).
FACTS_VIT = {
    "dinov3-vits16": (384, 12, 6, "gelu", False, 1536, [2, 5, 8, 11]),
    "dinov3-vits16plus": (384, 12, 6, "silu", True, 1536, [2, 5, 8, 11]),
    "dinov3-vitb16": (768, 12, 12, "gelu", False, 3072, [2, 5, 8, 11]),
    "dinov3-vitl16": (1024, 24, 16, "gelu", False, 4096, [4, 11, 17, 23]),
    "dinov3-vitl16-sat493m": (1024, 24, 16, "gelu", False, 4096, [4, 11, 17, 23]),
    "dinov3-vith16plus": (1280, 32, 20, "silu", True, 5120, [7, 15, 23, 31]),
    "dinov3-vit7b16": (4096, 40, 32, "silu", True, 8192, [9, 19, 29, 39]),
    "dinov3-vit7b16-sat493m": (4096, 40, 32, "silu", True, 8192, [9, 19, 29, 39]),
}
FACTS_CONVNEXT = {
    "dinov3-convnext-tiny": ([96, 192, 384, 768], [3, 3, 9, 3]),
    "dinov3-convnext-small": ([96, 192, 384, 768], [3, 3, 27, 3]),
    "dinov3-convnext-base": ([128, 256, 512, 1024], [3, 3, 27, 3]),
    "dinov3-convnext-large": ([192, 384, 768, 1536], [3, 3, 27, 3]),
}


def test_every_named_preset_is_covered():
    assert set(PRESETS) == set(FACTS_VIT) | set(FACTS_CONVNEXT)


@pytest.mark.parametrize("name", sorted(FACTS_VIT))
def test_vit_presets_match_the_released_architectures(name):
    hidden, layers, heads, act, gated, intermediate, taps = FACTS_VIT[name]
    config = Mask2FormerDINOv3Config.from_preset(name)
    vit = config.backbone_config
    assert (vit.hidden_size, vit.num_hidden_layers, vit.num_attention_heads) == (hidden, layers, heads)
    assert (vit.hidden_act, vit.use_gated_mlp, vit.intermediate_size) == (act, gated, intermediate)
    assert (vit.patch_size, vit.num_register_tokens, vit.rope_theta, vit.layer_norm_eps) == (16, 4, 100.0, 1e-5)
    assert vit.key_bias is False
    assert vit.query_bias is vit.value_bias is (not name.startswith("dinov3-vit7b16"))
    assert config.tapped_layers == taps


@pytest.mark.parametrize("name", sorted(FACTS_CONVNEXT))
def test_convnext_presets_match_the_released_architectures(name):
    sizes, depths = FACTS_CONVNEXT[name]
    convnext = Mask2FormerDINOv3Config.from_preset(name).backbone_config
    assert (convnext.hidden_sizes, convnext.depths) == (sizes, depths)


def test_small_vit_presets_size_the_head_and_the_rest_keep_mask2formers():
    """ViT-S, ViT-S+ and ViT-B get a 3-layer pixel-decoder encoder (benchmarks/README.md, "Head defaults"); larger
    backbones keep Mask2Former's 6; an override wins."""
    stock = Mask2FormerConfig().encoder_layers
    for name in PRESETS:
        expected = 3 if name in ("dinov3-vits16", "dinov3-vits16plus", "dinov3-vitb16") else stock
        assert Mask2FormerDINOv3Config.from_preset(name).encoder_layers == expected, name
    assert Mask2FormerDINOv3Config.from_preset("dinov3-vits16", encoder_layers=6).encoder_layers == 6


def test_presets_accept_hub_ids_and_overrides():
    config = Mask2FormerDINOv3Config.from_preset(
        "facebook/dinov3-vitb16-pretrain-lvd1689m", num_labels=7, tapped_layers=[11]
    )
    assert config.backbone_config.hidden_size == 768
    assert config.num_labels == 7 and config.tapped_layers == [11]
    assert get_preset("facebook/dinov3-convnext-large-pretrain-lvd1689m").name == "dinov3-convnext-large"


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        Mask2FormerDINOv3Config.from_preset("dinov3-vitg14")
    assert "dinov3-vitg14" in str(err.value)
    for name in PRESETS:
        assert name in str(err.value)


def test_backbone_kwarg_with_a_dinov3_hub_id_resolves_offline():
    config = Mask2FormerDINOv3Config(backbone="facebook/dinov3-convnext-large-pretrain-lvd1689m")
    assert config.backbone_config.hidden_sizes == [192, 384, 768, 1536]
