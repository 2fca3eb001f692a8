"""One source: the package's model and the upstream port (`upstream/transformers/`) must not drift apart.

For the same architecture fields, both build the same state-dict keys, and with the same weights they give the same
outputs (eval) and the same loss (training, same random seed), for a DINOv3 ViT (with the spatial prior) and a DINOv3
ConvNeXt (with projections). The package runs upstream Mask2Former's units here (`mask2former_units="upstream"`), so
the comparison is exact up to float rounding; its fast units are compared with upstream's in test_speed_equivalence.py.
"""

import port_mount
import pytest
import torch

from mask2former_dinov3 import Mask2FormerDinov3Config, Mask2FormerDinov3ForUniversalSegmentation
from transformers import DINOv3ConvNextConfig, DINOv3ViTConfig


port_mount.mount_model()
from transformers.models import mask2former_dinov3 as port  # noqa: E402


def _architecture(backbone: str) -> dict:
    if backbone == "vit":
        backbone_config = DINOv3ViTConfig(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, num_register_tokens=2
        )
        extra = {"adapter_spatial_prior_channels": 8}
    else:
        backbone_config = DINOv3ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1])
        extra = {"adapter_channels": [32, 32, 32, 32]}
    return dict(
        backbone_config=backbone_config, feature_size=32, mask_feature_size=32, hidden_dim=32,
        encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=3, num_attention_heads=2,
        num_queries=5, num_labels=3, train_num_points=64, **extra,
    )  # fmt: skip


def _pair(backbone: str):
    package_model = Mask2FormerDinov3ForUniversalSegmentation(
        Mask2FormerDinov3Config(**_architecture(backbone), mask2former_units="upstream")
    )
    port_model = port.Mask2FormerDinov3ForUniversalSegmentation(port.Mask2FormerDinov3Config(**_architecture(backbone)))
    return package_model, port_model


@pytest.mark.parametrize("backbone", ["vit", "convnext"])
def test_port_and_package_have_the_same_parameters(backbone):
    """Same state-dict keys and shapes, and the same resolved architecture fields."""
    package_model, port_model = _pair(backbone)
    package_state, port_state = package_model.state_dict(), port_model.state_dict()
    assert sorted(package_state) == sorted(port_state)
    assert {k: v.shape for k, v in package_state.items()} == {k: v.shape for k, v in port_state.items()}
    for field in ("tapped_layers", "adapter_spatial_prior", "adapter_channels", "feature_strides"):
        assert getattr(package_model.config, field) == getattr(port_model.config, field), field


@pytest.mark.parametrize("backbone", ["vit", "convnext"])
def test_port_and_package_give_the_same_outputs(backbone):
    """With the package's weights loaded into the port: equal logits in eval and an equal loss in training."""
    torch.manual_seed(0)
    package_model, port_model = _pair(backbone)
    port_model.load_state_dict(package_model.state_dict())
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = package_model.eval()(pixel_values, output_hidden_states=True)
        actual = port_model.eval()(pixel_values, output_hidden_states=True)
    for name in ("class_queries_logits", "masks_queries_logits", "pixel_decoder_last_hidden_state"):
        torch.testing.assert_close(getattr(actual, name), getattr(expected, name), rtol=1e-5, atol=1e-5, msg=name)
    for expected_map, actual_map in zip(expected.encoder_hidden_states, actual.encoder_hidden_states):
        torch.testing.assert_close(actual_map, expected_map, rtol=1e-5, atol=1e-5)

    mask_labels = [(torch.rand(2, 64, 64) > 0.5).float() for _ in range(2)]
    class_labels = [torch.tensor([0, 2]) for _ in range(2)]
    losses = []
    for model in (package_model.train(), port_model.train()):
        torch.manual_seed(1)  # the loss samples its points at random
        losses.append(model(pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_layers", [2, 6, 12, 24, 32, 40])
def test_port_and_package_tap_the_same_default_layers(num_layers):
    """Without `tapped_layers`, both configs tap the same ViT blocks (DINOv3's choices for the released depths)."""
    vit = dict(hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=2, intermediate_size=64)
    package_config = Mask2FormerDinov3Config(backbone_config=DINOv3ViTConfig(**vit))
    port_config = port.Mask2FormerDinov3Config(backbone_config=DINOv3ViTConfig(**vit))
    assert port_config.tapped_layers == package_config.tapped_layers
    assert port_config.backbone_config.out_indices == package_config.backbone_config.out_indices
