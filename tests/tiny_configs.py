"""Tiny Mask2FormerDINOv3 configs shared by the test modules (random weights, CPU-fast)."""

from transformers import DINOv3ConvNextConfig, DINOv3ViTConfig

from mask2former_dinov3 import Mask2FormerDINOv3Config


def tiny_backbone_config(backbone: str = "vit", **overrides):
    """A DINOv3 ViT (4 blocks, width 32, 2 register tokens) or ConvNeXt (widths 16..128, one block per stage)."""
    if backbone == "vit":
        kwargs = dict(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, num_register_tokens=2
        )
        kwargs.update(overrides)
        return DINOv3ViTConfig(**kwargs)
    if backbone == "convnext":
        kwargs = dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])
        kwargs.update(overrides)
        return DINOv3ConvNextConfig(**kwargs)
    raise ValueError(f"backbone must be 'vit' or 'convnext', got {backbone!r}")


def tiny_config(backbone: str = "vit", **overrides) -> Mask2FormerDINOv3Config:
    """A Mask2FormerDINOv3Config small enough for a forward + backward in well under a second."""
    kwargs = dict(
        backbone_config=tiny_backbone_config(backbone),
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=64,
        dim_feedforward=64,
        encoder_layers=2,
        decoder_layers=2,
        num_attention_heads=2,
        num_queries=5,
        num_labels=3,
        train_num_points=64,
    )
    kwargs.update(overrides)
    return Mask2FormerDINOv3Config(**kwargs)
