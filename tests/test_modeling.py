"""Mask2FormerDINOv3 models: mask resolution, the input-size rule, training, freezing, checkpointing, init."""

import math

import pytest
import torch
from torch import nn
from transformers import AutoModelForUniversalSegmentation, Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Trainer, TrainingArguments

from mask2former_dinov3 import (
    Mask2FormerDINOv3ConvNextAdapter,
    Mask2FormerDINOv3ForUniversalSegmentation,
    Mask2FormerDINOv3Model,
    Mask2FormerDINOv3SpatialPrior,
    Mask2FormerDINOv3ViTAdapter,
)
from tiny_configs import tiny_backbone_config, tiny_config


def make_labels(height, width, num_masks=2, num_labels=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    masks = (torch.rand(num_masks, height, width, generator=generator) > 0.5).float()
    classes = torch.randint(0, num_labels, (num_masks,), generator=generator)
    return masks, classes


def grad_norm(model, prefix):
    grads = [p.grad for name, p in model.named_parameters() if name.startswith(prefix) and p.grad is not None]
    return sum(float(g.abs().sum()) for g in grads), len(grads)


@pytest.mark.parametrize("backbone", ["vit", "convnext"])
def test_masks_at_quarter_resolution_for_non_square_input(backbone):
    torch.manual_seed(0)
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config(backbone)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 160))
    assert out.masks_queries_logits.shape == (1, 5, 32, 40)
    assert out.class_queries_logits.shape == (1, 5, 4)


@pytest.mark.parametrize("backbone", ["vit", "convnext"])
def test_training_step_reaches_backbone_adapter_and_decoder(backbone):
    torch.manual_seed(0)
    # A projecting ConvNeXt adapter has parameters of its own (the default one is the identity).
    overrides = {"adapter_channels": [32, 32, 64, 64]} if backbone == "convnext" else {}
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config(backbone, **overrides)).train()
    masks, classes = make_labels(128, 160)
    out = model(torch.randn(1, 3, 128, 160), mask_labels=[masks], class_labels=[classes])
    assert out.masks_queries_logits.shape[-2:] == (32, 40)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for prefix in (
        "model.pixel_level_module.encoder.",
        "model.pixel_level_module.adapter.",
        "model.pixel_level_module.decoder.",
        "model.transformer_module.decoder.",
        "class_predictor.",
    ) + (("model.pixel_level_module.adapter.spatial_prior.",) if backbone == "vit" else ()):
        total, count = grad_norm(model, prefix)
        assert count > 0 and total > 0, f"no gradient reached {prefix}"


def test_every_backbone_feature_map_is_at_the_true_stride():
    torch.manual_seed(0)
    model = Mask2FormerDINOv3Model(tiny_config("vit")).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96), output_hidden_states=True)
    # Pixel-decoder outputs: 1/32, 1/16, 1/8 (multi-scale) and the 1/4 mask features.
    shapes = [tuple(h.shape[-2:]) for h in out.pixel_decoder_hidden_states]
    assert shapes == [(2, 3), (4, 6), (8, 12)]
    assert tuple(out.pixel_decoder_last_hidden_state.shape[-2:]) == (16, 24)


@pytest.mark.parametrize("size", [(100, 128), (128, 100), (48, 64)])
def test_input_size_must_be_a_multiple_of_32(size):
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit")).eval()
    with pytest.raises(ValueError, match=r"multiples of 32.*got \d+x\d+"):
        model(torch.randn(1, 3, *size))


def test_single_tapped_layer_builds_a_vitdet_pyramid():
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit", tapped_layers=[3])).eval()
    assert model.model.pixel_level_module.encoder.out_features == ["stage4"]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).masks_queries_logits.shape[-2:] == (16, 16)


def test_freeze_backbone_leaves_backbone_without_gradients():
    torch.manual_seed(0)
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit", freeze_backbone=True)).train()
    encoder = model.model.pixel_level_module.encoder
    assert not any(p.requires_grad for p in encoder.parameters())
    masks, classes = make_labels(64, 64)
    model(torch.randn(1, 3, 64, 64), mask_labels=[masks], class_labels=[classes]).loss.backward()
    assert all(p.grad is None for p in encoder.parameters())
    assert grad_norm(model, "model.pixel_level_module.adapter.")[0] > 0


@pytest.mark.parametrize("backbone", ["vit", "convnext"])
def test_freeze_then_unfreeze_backbone_keeps_the_mask_token_frozen(backbone, tmp_path):
    """`freeze_backbone()` / `unfreeze_backbone()` switch the backbone (config included); DINOv3's mask token, which
    segmentation never gives a gradient, stays frozen, so that DDP without `find_unused_parameters` works."""
    torch.manual_seed(0)
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config(backbone)).train()
    encoder = model.model.pixel_level_module.encoder
    mask_token = getattr(getattr(encoder, "embeddings", None), "mask_token", None)
    model.freeze_backbone()
    assert model.config.freeze_backbone and not any(p.requires_grad for p in encoder.parameters())
    model.unfreeze_backbone()
    assert not model.config.freeze_backbone
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    assert trainable == {name for name, p in encoder.named_parameters() if p is not mask_token}
    masks, classes = make_labels(64, 64)
    model(torch.randn(1, 3, 64, 64), mask_labels=[masks], class_labels=[classes]).loss.backward()
    # Every trainable backbone parameter gets a gradient: nothing unused for DDP to trip over.
    assert all(p.grad is not None for name, p in encoder.named_parameters() if name in trainable)
    if backbone == "vit":
        assert not mask_token.requires_grad
    # And after a save / reload, as from_pretrained recreates parameters trainable.
    model.freeze_backbone()
    model.save_pretrained(tmp_path)
    reloaded = Mask2FormerDINOv3ForUniversalSegmentation.from_pretrained(tmp_path)
    assert not any(p.requires_grad for p in reloaded.model.pixel_level_module.encoder.parameters())
    reloaded.unfreeze_backbone()
    if backbone == "vit":
        assert not reloaded.model.pixel_level_module.encoder.embeddings.mask_token.requires_grad


class _TinySegmentationSet(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        torch.manual_seed(index)
        masks, classes = make_labels(64, 64, seed=index)
        return {"pixel_values": torch.randn(3, 64, 64), "mask_labels": masks, "class_labels": classes}


def _collate(examples):
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "mask_labels": [e["mask_labels"] for e in examples],
        "class_labels": [e["class_labels"] for e in examples],
    }


def test_gradient_checkpointing_in_a_trainer_step(tmp_path):
    torch.manual_seed(0)
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, gradient_checkpointing=True,
        remove_unused_columns=False, report_to=[], use_cpu=True, learning_rate=1e-3, save_strategy="no",
    )
    trainer = Trainer(model=model, args=args, train_dataset=_TinySegmentationSet(), data_collator=_collate)
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    checkpointed = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
    assert len(checkpointed) >= 4  # the DINOv3 blocks and the masked-attention decoder layers
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert any(n.startswith("model.pixel_level_module.encoder.") for n in changed)
    assert any(n.startswith("model.transformer_module.") for n in changed)


def test_gradient_checkpointing_gives_the_same_gradients():
    masks, classes = make_labels(64, 64)
    pixel_values = torch.randn(1, 3, 64, 64)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit")).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        torch.manual_seed(1)  # same point sampling in the loss
        model(pixel_values, mask_labels=[masks], class_labels=[classes]).loss.backward()
        grads.append(model.model.pixel_level_module.encoder.embeddings.patch_embeddings.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attn_implementation_reaches_the_dinov3_backbone(implementation, tmp_path):
    torch.manual_seed(0)
    model = AutoModelForUniversalSegmentation.from_config(tiny_config("vit"), attn_implementation=implementation)
    assert model.model.pixel_level_module.encoder.config._attn_implementation == implementation
    model.save_pretrained(tmp_path)
    other = "sdpa" if implementation == "eager" else "eager"
    reloaded = AutoModelForUniversalSegmentation.from_pretrained(tmp_path, attn_implementation=other)
    assert reloaded.model.pixel_level_module.encoder.config._attn_implementation == other


def test_eager_and_sdpa_agree():
    torch.manual_seed(0)
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit")).eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    outputs = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        assert model.model.pixel_level_module.encoder.config._attn_implementation == implementation
        with torch.no_grad():
            outputs[implementation] = model(pixel_values).masks_queries_logits
    torch.testing.assert_close(outputs["eager"], outputs["sdpa"], rtol=1e-4, atol=1e-4)


def test_adapters_are_usable_without_the_config():
    vit_adapter = Mask2FormerDINOv3ViTAdapter(embed_dim=32, out_channels=[8, 16, 24, 40], norm="layer_norm")
    maps = vit_adapter([torch.randn(2, 32, 4, 6) for _ in range(4)])
    assert [tuple(m.shape) for m in maps] == [(2, 8, 16, 24), (2, 16, 8, 12), (2, 24, 4, 6), (2, 40, 2, 3)]
    convnext_adapter = Mask2FormerDINOv3ConvNextAdapter(in_channels=[8, 16, 32, 64])
    stages = [torch.randn(1, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate([8, 16, 32, 64])]
    assert all(a is b for a, b in zip(convnext_adapter(stages), stages))  # identity by default
    with pytest.raises(TypeError):
        Mask2FormerDINOv3ViTAdapter(32, [8, 16, 24, 40])  # keyword-only


def test_spatial_prior_adds_pixel_detail_to_the_two_finest_levels():
    torch.manual_seed(0)
    prior = Mask2FormerDINOv3SpatialPrior(out_channels=[8, 16], width=16)
    pixels = torch.randn(2, 3, 64, 96)
    stride4, stride8 = prior(pixels)
    assert tuple(stride4.shape) == (2, 8, 16, 24) and tuple(stride8.shape) == (2, 16, 8, 12)

    plain = Mask2FormerDINOv3ViTAdapter(embed_dim=32, out_channels=[8, 16, 24, 40])
    with_prior = Mask2FormerDINOv3ViTAdapter(embed_dim=32, out_channels=[8, 16, 24, 40], spatial_prior_channels=16)
    missing, unexpected = with_prior.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("spatial_prior.") for k in missing)
    with_prior.spatial_prior.load_state_dict(prior.state_dict())
    features = [torch.randn(2, 32, 4, 6) for _ in range(4)]
    expected = plain(features)
    got = with_prior(features, pixels)
    torch.testing.assert_close(got[0], expected[0] + stride4)
    torch.testing.assert_close(got[1], expected[1] + stride8)
    torch.testing.assert_close(got[2], expected[2])
    torch.testing.assert_close(got[3], expected[3])
    with pytest.raises(ValueError, match="pass `pixel_values`"):
        with_prior(features)


@pytest.mark.parametrize("norm", ["group_norm", "none"])
def test_every_adapter_norm_trains_with_the_spatial_prior(norm):
    torch.manual_seed(0)
    vit = tiny_backbone_config("vit", hidden_size=64)  # group_norm needs hidden_size // 2 in groups of 32
    model = Mask2FormerDINOv3ForUniversalSegmentation(
        tiny_config("vit", backbone_config=vit, adapter_norm=norm)
    ).train()
    prior = model.model.pixel_level_module.adapter.spatial_prior
    norms = [m for m in prior.modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm))]
    convs = [m for m in prior.modules() if isinstance(m, nn.Conv2d)]
    # With no norm after them, the convolutions need their own bias; a norm would cancel it.
    assert (len(norms) == 0) == (norm == "none") and all((c.bias is not None) == (norm == "none") for c in convs)
    masks, classes = make_labels(64, 64)
    out = model(torch.randn(1, 3, 64, 64), mask_labels=[masks], class_labels=[classes])
    out.loss.backward()
    assert torch.isfinite(out.loss) and grad_norm(model, "model.pixel_level_module.adapter.spatial_prior.")[0] > 0


def test_spatial_prior_can_be_switched_off():
    on = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit"))
    off = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit", adapter_spatial_prior=False))
    assert isinstance(on.model.pixel_level_module.adapter.spatial_prior, Mask2FormerDINOv3SpatialPrior)
    assert off.model.pixel_level_module.adapter.spatial_prior is None
    assert not any(".spatial_prior." in name for name, _ in off.named_parameters())
    with torch.no_grad():
        assert off.eval()(torch.randn(1, 3, 64, 64)).masks_queries_logits.shape[-2:] == (16, 16)


# --- initialisation: what upstream Mask2Former gets, for the same decoder settings and seed -------------------------


def _upstream_twin(config):
    """Upstream Mask2Former with the same head settings (its backbone differs; only the head is compared)."""
    head = {k: getattr(config, k) for k in (
        "feature_size", "mask_feature_size", "hidden_dim", "encoder_feedforward_dim", "dim_feedforward",
        "encoder_layers", "decoder_layers", "num_attention_heads", "num_queries", "num_labels")}
    return Mask2FormerForUniversalSegmentation(Mask2FormerConfig(backbone_config=tiny_backbone_config("convnext",
                                               out_features=["stage1", "stage2", "stage3", "stage4"]), **head))


def radial_grid(n_heads, n_levels, n_points):
    """Deformable DETR's initial sampling offsets, written out independently of either implementation."""
    grid = torch.zeros(n_heads, n_levels, n_points, 2)
    for h in range(n_heads):
        theta = 2 * math.pi * h / n_heads
        direction = torch.tensor([math.cos(theta), math.sin(theta)])
        direction = direction / direction.abs().max()
        for p in range(n_points):
            grid[h, :, p] = direction * (p + 1)
    return grid.flatten()


def init_statistics(model):
    """Per-tensor std of the transformer decoder's weight matrices, keyed by name relative to the decoder."""
    decoder = model.model.transformer_module.decoder
    return {n: float(p.detach().std()) for n, p in decoder.named_parameters() if p.dim() > 1}


def check_upstream_initialisation(model, upstream):
    for ours, theirs in zip(model.model.pixel_level_module.decoder.encoder.layers,
                            upstream.model.pixel_level_module.decoder.encoder.layers):
        attention = ours.self_attn
        expected = radial_grid(attention.n_heads, attention.n_levels, attention.n_points)
        torch.testing.assert_close(attention.sampling_offsets.bias.detach(), expected)
        torch.testing.assert_close(attention.sampling_offsets.bias, theirs.self_attn.sampling_offsets.bias)
        assert float(attention.attention_weights.weight.detach().abs().sum()) == 0.0
        assert float(attention.attention_weights.bias.detach().abs().sum()) == 0.0
        assert float(attention.sampling_offsets.weight.detach().abs().sum()) == 0.0
    ours, theirs = init_statistics(model), init_statistics(upstream)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert abs(ours[name] - theirs[name]) <= 0.15 * theirs[name], (name, ours[name], theirs[name])


@pytest.mark.parametrize("backbone", ["vit", "convnext"])
def test_fresh_model_gets_upstream_mask2former_initialisation(backbone):
    config = tiny_config(backbone, hidden_dim=64, dim_feedforward=256, decoder_layers=3)
    torch.manual_seed(0)
    model = Mask2FormerDINOv3ForUniversalSegmentation(config)
    torch.manual_seed(0)
    upstream = _upstream_twin(config)
    check_upstream_initialisation(model, upstream)
    # Decoder linears are xavier-initialised upstream (std sqrt(2 / (fan_in + fan_out))), not normal(0, 0.02).
    fc1 = model.model.transformer_module.decoder.layers[0].fc1.weight
    assert abs(float(fc1.std()) - math.sqrt(2 / (64 + 256))) < 0.01


def test_adapter_initialisation_is_c2_xavier_fill():
    torch.manual_seed(0)
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit", hidden_dim=32))
    adapter = model.model.pixel_level_module.adapter
    convs = [m for m in adapter.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert convs
    for conv in convs:
        fan_in = nn.init._calculate_fan_in_and_fan_out(conv.weight)[0]
        # kaiming_uniform(a=1) draws from U(-sqrt(3 / fan_in), sqrt(3 / fan_in)): std 1 / sqrt(fan_in).
        assert float(conv.weight.abs().max()) <= math.sqrt(3 / fan_in) + 1e-6
        assert abs(float(conv.weight.std()) * math.sqrt(fan_in) - 1) < 0.25
        if conv.bias is not None:
            assert float(conv.bias.abs().sum()) == 0.0
    norms = [m for m in adapter.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(bool((n.weight == 1).all()) and bool((n.bias == 0).all()) for n in norms)
