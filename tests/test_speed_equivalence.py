"""The faster Mask2Former units give upstream Mask2Former's results: same weights, same inputs, same outputs.

Every unit of `mask2former_dinov3.fast_mask2former` is compared here with the upstream unit it speeds up, with
identical weights (`load_state_dict` from one into the other, or `use_upstream_units` on a copy), in eval
(outputs) and in training (losses and gradients). Point sampling draws random points (`torch.rand`); both paths draw
them in the same order, so each comparison seeds the generator identically before each path.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerForUniversalSegmentation,
    Mask2FormerLoss,
    Mask2FormerPixelDecoder,
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    Mask2FormerPixelDecoderEncoderOnly,
    Mask2FormerTransformerModule,
    multi_scale_deformable_attention,
)

from mask2former_dinov3 import Mask2FormerDINOv3ForUniversalSegmentation, Mask2FormerDINOv3Model
from mask2former_dinov3.fast_mask2former import (
    FastMask2FormerMaskedAttentionDecoderLayer,
    FastMask2FormerMaskPredictor,
    FastMask2FormerMultiscaleDeformableAttention,
    FastMask2FormerSinePositionEmbedding,
    HeadSharedAttentionMask,
    MaskLogitsFromEmbeddings,
    multi_scale_deformable_attention_gather,
    use_fast_units,
    use_upstream_units,
)
from tiny_configs import tiny_config


SHAPES = [(4, 6), (8, 12), (16, 24)]  # three levels, coarsest first, as the pixel decoder orders them
ATOL = 1e-5


def assert_close(actual, expected, atol=ATOL, rtol=1e-4, what=""):
    """`torch.testing.assert_close` with the tolerances of these float32 comparisons."""
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def assert_same_gradients(optimised: nn.Module, reference: nn.Module, rtol=1e-4):
    """Every parameter gradient equal, with an absolute tolerance scaled to the largest gradient.

    The absolute floor matters for gradients that are zero in exact arithmetic (a bias in front of a GroupNorm,
    self-attention key biases) and come out as rounding noise in both paths.
    """
    reference_parameters = dict(reference.named_parameters())
    scale = max(p.grad.abs().max().item() for p in reference_parameters.values() if p.grad is not None)
    checked = 0
    for name, parameter in optimised.named_parameters():
        expected = reference_parameters[name].grad
        assert (parameter.grad is None) == (expected is None), f"{name}: gradient present in one path only"
        if expected is not None:
            assert_close(parameter.grad, expected, atol=1e-5 * scale, rtol=rtol, what=f"gradient of {name}")
            checked += 1
    assert checked > 0


def random_projection_loss(tensors, seed=123):
    """A scalar that depends on every element of `tensors` with random weights (so gradients are non-trivial)."""
    generator = torch.Generator().manual_seed(seed)
    return sum((t * torch.randn(t.shape, generator=generator)).sum() for t in tensors)


def upstream_units_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with the same weights on upstream's own units (the unoptimised reference)."""
    return use_upstream_units(copy.deepcopy(model))


def tiny_model(backbone="vit", seed=0, **overrides):
    torch.manual_seed(seed)
    return Mask2FormerDINOv3ForUniversalSegmentation(tiny_config(backbone, **overrides))


def targets(batch=2, height=64, width=96, seed=0):
    generator = torch.Generator().manual_seed(seed)
    counts = [3, 2, 1, 4][:batch]
    masks = [(torch.rand(n, height, width, generator=generator) > 0.6).float() for n in counts]
    classes = [torch.randint(0, 3, (n,), generator=generator) for n in counts]
    return masks, classes


# --- multi-scale deformable attention -------------------------------------------------------------------------------


def deformable_inputs(dtype=torch.float32, batch=2, heads=2, head_dim=8, queries=50, points=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    sequence = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, sequence, heads, head_dim, generator=generator, dtype=dtype)
    # Some locations outside [0, 1]: those samples are partly or wholly zero padding.
    locations = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=generator, dtype=dtype) * 1.4 - 0.2
    weights = torch.randn(batch, queries, heads, len(SHAPES), points, generator=generator, dtype=dtype)
    weights = weights.flatten(-2).softmax(-1).view_as(weights)
    return value, locations, weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gather_core_equals_upstream_sampling_forward_and_backward(dtype):
    inputs = deformable_inputs(dtype)
    ours_inputs = [t.clone().requires_grad_() for t in inputs]
    upstream_inputs = [t.clone().requires_grad_() for t in inputs]
    ours = multi_scale_deformable_attention_gather(ours_inputs[0], SHAPES, *ours_inputs[1:])
    upstream = multi_scale_deformable_attention(upstream_inputs[0], SHAPES, *upstream_inputs[1:])
    atol = ATOL if dtype == torch.float32 else 1e-12
    assert_close(ours, upstream, atol=atol, what="output")
    random_projection_loss([ours]).backward()
    random_projection_loss([upstream]).backward()
    for name, a, b in zip(("value", "locations", "attention weights"), ours_inputs, upstream_inputs):
        assert_close(a.grad, b.grad, atol=atol * 10, rtol=1e-4, what=f"gradient w.r.t. {name}")


def _attention_pair(seed=0, embed_dim=32, heads=2):
    torch.manual_seed(seed)
    upstream = Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(embed_dim, heads, n_levels=3, n_points=4)
    ours = use_fast_units(copy.deepcopy(upstream))
    assert type(ours) is FastMask2FormerMultiscaleDeformableAttention
    return ours, upstream


@pytest.mark.parametrize("padding", [False, True])
def test_deformable_attention_module_equals_upstream(padding):
    ours, upstream = _attention_pair()
    batch, sequence = 2, sum(h * w for h, w in SHAPES)
    hidden = torch.randn(batch, sequence, 32)
    position = torch.randn(batch, sequence, 32)
    valid_ratios = torch.ones(batch, 3, 2)
    reference_points = Mask2FormerPixelDecoderEncoderOnly.get_reference_points(SHAPES, valid_ratios, "cpu")
    mask = torch.zeros(batch, sequence, dtype=torch.bool)
    if padding:
        mask[1, -40:] = True
    outputs = []
    for module in (ours, upstream):
        module.zero_grad()
        out, weights = module(
            hidden_states=hidden,
            attention_mask=mask if padding else None,
            encoder_hidden_states=hidden,
            position_embeddings=position,
            reference_points=reference_points,
            spatial_shapes_list=SHAPES,
        )
        random_projection_loss([out]).backward()
        outputs.append((out, weights))
    assert_close(outputs[0][0], outputs[1][0], what="output")
    assert_close(outputs[0][1], outputs[1][1], what="attention weights")
    assert_same_gradients(ours, upstream)


# --- pixel decoder ---------------------------------------------------------------------------------------------------


def _pixel_decoder_pair(backbone="vit"):
    model = tiny_model(backbone)
    ours = model.model.pixel_level_module.decoder
    channels = model.model.pixel_level_module.adapter.out_channels
    upstream = Mask2FormerPixelDecoder(model.config, feature_channels=channels)
    upstream.load_state_dict(ours.state_dict())
    assert isinstance(ours.position_embedding, FastMask2FormerSinePositionEmbedding)
    assert all(isinstance(layer.self_attn, FastMask2FormerMultiscaleDeformableAttention) for layer in ours.encoder.layers)
    pixel_values = torch.randn(2, 3, 64, 96)
    features = model.model.pixel_level_module.adapter(
        model.model.pixel_level_module.encoder(pixel_values).feature_maps, pixel_values
    )
    return ours, upstream, [f.detach() for f in features]


@pytest.mark.parametrize("backbone", ["vit", "convnext"])
def test_pixel_decoder_equals_upstream_in_eval(backbone):
    ours, upstream, features = _pixel_decoder_pair(backbone)
    ours.eval(), upstream.eval()
    with torch.no_grad():
        a = ours(features, output_hidden_states=True, output_attentions=True)
        b = upstream(features, output_hidden_states=True, output_attentions=True)
        again = ours(features)  # second call: cached position embeddings and reference points
    assert_close(a.mask_features, b.mask_features, what="mask features")
    assert_close(again.mask_features, b.mask_features, what="mask features, cached constants")
    assert len(a.multi_scale_features) == len(b.multi_scale_features) == 3
    for x, y in zip(a.multi_scale_features, b.multi_scale_features):
        assert_close(x, y, what="multi-scale features")
    for x, y in zip(a.attentions, b.attentions):
        assert_close(x, y, what="deformable attention weights")


def test_pixel_decoder_equals_upstream_in_training():
    ours, upstream, features = _pixel_decoder_pair("vit")
    ours.train(), upstream.train()
    for module in (ours, upstream):
        out = module(features)
        random_projection_loss([out.mask_features, *out.multi_scale_features]).backward()
    assert_same_gradients(ours, upstream)


# --- transformer decoder ---------------------------------------------------------------------------------------------


def test_masks_from_resized_features_equal_resized_masks():
    """The identity behind predicting attention masks at their own resolution: resizing is linear."""
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(2, 10, 32, generator=generator)
    features = torch.randn(2, 32, 32, 48, generator=generator)
    full = torch.einsum("bqc,bchw->bqhw", embeddings, features)
    for size in [(4, 6), (8, 12), (16, 24), (32, 48)]:
        resize = dict(size=size, mode="bilinear", align_corners=False)
        resized_masks = nn.functional.interpolate(full, **resize)
        resized_features = nn.functional.interpolate(features, **resize)
        from_resized_features = torch.einsum("bqc,bchw->bqhw", embeddings, resized_features)
        assert_close(from_resized_features, resized_masks, what=f"size {size}")


def _transformer_pair(seed=0, **overrides):
    # 4 decoder layers: all three attention levels, then the first again.
    model = tiny_model(seed=seed, decoder_layers=5, **overrides)
    ours = model.model.transformer_module
    upstream = Mask2FormerTransformerModule(in_features=model.config.feature_size, config=model.config)
    upstream.load_state_dict(ours.state_dict())
    assert isinstance(ours.position_embedder, FastMask2FormerSinePositionEmbedding)
    assert isinstance(ours.decoder.mask_predictor, FastMask2FormerMaskPredictor)
    assert all(isinstance(layer, FastMask2FormerMaskedAttentionDecoderLayer) for layer in ours.decoder.layers)
    pixel_out = model.model.pixel_level_module(torch.randn(2, 3, 64, 96))
    features = [f.detach() for f in pixel_out.decoder_hidden_states]
    return ours, upstream, features, pixel_out.decoder_last_hidden_state.detach()


def _capture_attention_masks(module):
    """The attention masks the decoder layers receive, as full `(batch * heads, queries, keys)` tensors (ours come
    as `HeadSharedAttentionMask`)."""
    captured = []

    def capture(_module, _args, kwargs):
        mask = kwargs["encoder_attention_mask"]
        captured.append(mask.materialize() if isinstance(mask, HeadSharedAttentionMask) else mask.clone())

    for layer in module.decoder.layers:
        layer.register_forward_pre_hook(capture, with_kwargs=True)
    return captured


def test_transformer_module_equals_upstream_in_eval():
    ours, upstream, features, mask_features = _transformer_pair()
    ours.eval(), upstream.eval()
    ours_masks, upstream_masks = _capture_attention_masks(ours), _capture_attention_masks(upstream)
    with torch.no_grad():
        a = ours(features, mask_features, output_hidden_states=True)  # fused attention
        b = upstream(features, mask_features, output_hidden_states=True)
        with_weights = ours(features, mask_features, output_attentions=True)  # upstream's attention code
        upstream_weights = upstream(features, mask_features, output_attentions=True)
    ours_masks, upstream_masks = ours_masks[:4], upstream_masks[:4]
    for x, y in zip(ours_masks, upstream_masks):
        assert x.dtype == y.dtype == torch.bool and torch.equal(x, y), "attention masks differ"
    assert len(a.masks_queries_logits) == len(b.masks_queries_logits) == len(ours.decoder.layers) + 1
    for x, y in zip(a.masks_queries_logits, b.masks_queries_logits):
        assert_close(x, y, what="masks")
    for x, y in zip(a.intermediate_hidden_states, b.intermediate_hidden_states):
        assert_close(x, y, what="intermediate hidden states")
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert_close(x, y, what="hidden states")
    assert_close(a.last_hidden_state, b.last_hidden_state, what="last hidden state")
    assert len(with_weights.attentions) == len(upstream_weights.attentions) == 4
    for x, y in zip(with_weights.attentions, upstream_weights.attentions):
        assert_close(x, y, what="attentions")
    assert_close(with_weights.masks_queries_logits[-1], b.masks_queries_logits[-1], what="masks, output_attentions")
    # The lazy path: masks built only where read, and then equal to upstream's.
    ours.decoder.mask_predictor.lazy_masks = True
    with torch.no_grad():
        lazy = ours(features, mask_features, output_hidden_states=True)
    ours.decoder.mask_predictor.lazy_masks = False
    assert all(isinstance(m, MaskLogitsFromEmbeddings) for m in lazy.masks_queries_logits)
    for masks, expected in zip(lazy.masks_queries_logits, b.masks_queries_logits):
        assert masks.shape == expected.shape
        assert_close(masks.materialize(), expected, what="lazy masks")
        rows, queries = torch.tensor([1, 0, 1, 0]), torch.tensor([3, 2, 0, 4])  # any order, as the loss may index
        assert_close(masks[rows, queries], expected[rows, queries], what="indexed lazy masks")


@pytest.mark.parametrize("pre_norm", [False, True])
def test_transformer_module_equals_upstream_in_training(pre_norm):
    ours, upstream, features, mask_features = _transformer_pair(seed=1, pre_norm=pre_norm)
    ours.train(), upstream.train()
    for module in (ours, upstream):
        out = module(features, mask_features, output_hidden_states=True)
        random_projection_loss([*out.masks_queries_logits, *out.intermediate_hidden_states]).backward()
    assert_same_gradients(ours, upstream)


# --- loss ------------------------------------------------------------------------------------------------------------


def test_loss_from_mask_embeddings_equals_upstream_loss_on_full_masks():
    config = tiny_config(train_num_points=200)
    weight_dict = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    upstream = Mask2FormerLoss(config, weight_dict)
    ours = use_fast_units(copy.deepcopy(upstream))
    generator = torch.Generator().manual_seed(0)
    batch, queries, channels, layers = 2, 5, 16, 3
    embeddings = torch.randn(layers, batch, queries, channels, generator=generator)
    features = torch.randn(batch, channels, 16, 24, generator=generator)
    classes = torch.randn(layers, batch, queries, config.num_labels + 1, generator=generator)
    mask_labels, class_labels = targets(batch, 64, 96)

    def run(loss, from_embeddings):
        e, f, c = (t.clone().requires_grad_() for t in (embeddings, features, classes))
        torch.manual_seed(7)
        if from_embeddings:
            masks = [MaskLogitsFromEmbeddings(e[i], f) for i in range(layers)]
            aux = [{"masks_queries_logits": masks[i], "class_queries_logits": c[i]} for i in range(layers - 1)]
            losses = loss(masks[-1], c[-1], mask_labels, class_labels, aux)
        else:
            masks = torch.einsum("lbqc,bchw->lbqhw", e, f)
            aux = [{"masks_queries_logits": masks[i], "class_queries_logits": c[i]} for i in range(layers - 1)]
            losses = loss(masks[-1], c[-1], mask_labels, class_labels, aux)
        sum(losses.values()).backward()
        return losses, (e.grad, f.grad, c.grad)

    ours_losses, ours_grads = run(ours, True)
    upstream_losses, upstream_grads = run(upstream, False)
    assert set(ours_losses) == set(upstream_losses) and len(ours_losses) == 3 * layers
    for key, value in upstream_losses.items():
        assert_close(ours_losses[key], value, what=key)
    for name, a, b in zip(("embeddings", "features", "class logits"), ours_grads, upstream_grads):
        assert_close(a, b, atol=1e-5 * b.abs().max().item(), what=f"gradient w.r.t. {name}")


def test_matcher_from_embeddings_matches_like_upstream():
    config = tiny_config(train_num_points=300)
    ours = use_fast_units(Mask2FormerLoss(config, {"loss_cross_entropy": 1.0})).matcher
    upstream = Mask2FormerLoss(config, {"loss_cross_entropy": 1.0}).matcher
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(2, 5, 16, generator=generator)
    features = torch.randn(2, 16, 16, 24, generator=generator)
    classes = torch.randn(2, 5, config.num_labels + 1, generator=generator)
    mask_labels, class_labels = targets(2, 64, 96, seed=1)
    torch.manual_seed(3)
    a = ours(MaskLogitsFromEmbeddings(embeddings, features), classes, mask_labels, class_labels)
    torch.manual_seed(3)
    b = upstream(torch.einsum("bqc,bchw->bqhw", embeddings, features), classes, mask_labels, class_labels)
    for (rows_a, cols_a), (rows_b, cols_b) in zip(a, b):
        assert torch.equal(rows_a, rows_b) and torch.equal(cols_a, cols_b)


# --- whole model -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["vit", "convnext"])
def test_model_equals_upstream_path_in_eval(backbone):
    model = tiny_model(backbone).eval()
    reference = upstream_units_copy(model).eval()
    pixel_values = torch.randn(2, 3, 64, 96)
    kwargs = dict(output_hidden_states=True, output_auxiliary_logits=True)
    with torch.no_grad():
        a, b = model(pixel_values, **kwargs), reference(pixel_values, **kwargs)
        plain = model(pixel_values)
    for key in ("class_queries_logits", "masks_queries_logits", "pixel_decoder_last_hidden_state",
                "transformer_decoder_last_hidden_state", "encoder_last_hidden_state"):  # fmt: skip
        assert_close(a[key], b[key], what=key)
    assert len(a.auxiliary_logits) == len(b.auxiliary_logits) == model.config.decoder_layers - 1
    for x, y in zip(a.auxiliary_logits, b.auxiliary_logits):
        assert_close(x["masks_queries_logits"], y["masks_queries_logits"], what="auxiliary masks")
        assert_close(x["class_queries_logits"], y["class_queries_logits"], what="auxiliary classes")
    for key in ("pixel_decoder_hidden_states", "transformer_decoder_hidden_states", "encoder_hidden_states"):
        for x, y in zip(a[key], b[key], strict=True):
            assert_close(x, y, what=key)
    # No auxiliary outputs unless asked for.
    assert plain.auxiliary_logits is None and plain.transformer_decoder_hidden_states is None
    assert_close(plain.masks_queries_logits, b.masks_queries_logits, what="masks without auxiliary outputs")


@pytest.mark.parametrize("backbone", ["vit", "convnext"])
def test_model_equals_upstream_path_in_training(backbone):
    model = tiny_model(backbone, seed=2).train()
    reference = upstream_units_copy(model).train()
    pixel_values = torch.randn(2, 3, 64, 96)
    mask_labels, class_labels = targets()
    losses = []
    for m in (model, reference):
        torch.manual_seed(11)
        out = m(pixel_values, mask_labels=mask_labels, class_labels=class_labels)
        out.loss.backward()
        losses.append(out.loss)
    assert_close(losses[0], losses[1], what="loss")
    assert_same_gradients(model, reference)


def test_gradient_checkpointing_keeps_the_optimised_gradients():
    model = tiny_model(seed=3).train()
    checkpointed = copy.deepcopy(model)
    checkpointed.activation_checkpointing_enable()
    pixel_values = torch.randn(2, 3, 64, 96)
    mask_labels, class_labels = targets()
    for m in (model, checkpointed):
        torch.manual_seed(5)
        m(pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss.backward()
    assert_same_gradients(checkpointed, model)


def test_base_model_outputs_equal_upstream():
    torch.manual_seed(0)
    model = Mask2FormerDINOv3Model(tiny_config()).eval()
    reference = upstream_units_copy(model).eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = model(pixel_values, output_hidden_states=True), reference(pixel_values, output_hidden_states=True)
    assert set(a.keys()) == set(b.keys())  # upstream's fields only, by default
    assert len(a.masks_queries_logits) == len(b.masks_queries_logits) == model.config.decoder_layers
    for x, y in zip(a.masks_queries_logits, b.masks_queries_logits):
        assert_close(x, y, what="masks of every layer")
    for x, y in zip(a.transformer_decoder_intermediate_states, b.transformer_decoder_intermediate_states):
        assert_close(x, y, what="intermediate states")


HEAD_FIELDS = ("feature_size", "mask_feature_size", "hidden_dim", "encoder_feedforward_dim", "dim_feedforward",
               "encoder_layers", "decoder_layers", "num_attention_heads", "num_queries", "num_labels")  # fmt: skip


def test_convnext_model_is_upstream_mask2former_in_keys_and_outputs():
    """With a ConvNeXt (identity adapter) the model is stock Mask2Former: same state dict, same outputs.

    So upstream checkpoints load key for key, and the optimised units reproduce upstream's complete model.
    """
    model = tiny_model("convnext").eval()
    config = model.config
    upstream_config = Mask2FormerConfig(
        backbone_config=copy.deepcopy(config.backbone_config), **{k: getattr(config, k) for k in HEAD_FIELDS}
    )
    upstream = Mask2FormerForUniversalSegmentation(upstream_config).eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in upstream.state_dict().items()}
    upstream.load_state_dict(model.state_dict(), strict=True)
    pixel_values = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a, b = model(pixel_values), upstream(pixel_values)
    assert_close(a.masks_queries_logits, b.masks_queries_logits, what="masks")
    assert_close(a.class_queries_logits, b.class_queries_logits, what="classes")
    reference = upstream_units_copy(model)
    assert reference.state_dict().keys() == model.state_dict().keys()


def test_same_seed_same_start_as_upstream_mask2former():
    """For one seed, a fresh ConvNeXt model (identity adapter) equals a fresh upstream Mask2Former tensor for tensor.

    The fast units are swapped in after upstream's modules are built, so they draw no extra random numbers: training
    comparisons against upstream start from the same weights (paired by seed).
    """
    config = tiny_config("convnext")
    upstream_config = Mask2FormerConfig(
        backbone_config=copy.deepcopy(config.backbone_config), **{k: getattr(config, k) for k in HEAD_FIELDS}
    )
    for seed in (0, 1):
        torch.manual_seed(seed)
        ours = Mask2FormerDINOv3ForUniversalSegmentation(config).state_dict()
        torch.manual_seed(seed)
        upstream = Mask2FormerForUniversalSegmentation(upstream_config).state_dict()
        assert ours.keys() == upstream.keys()
        different = [k for k in upstream if not torch.equal(ours[k], upstream[k])]
        assert not different, f"seed {seed}: {len(different)} tensors differ, e.g. {different[:3]}"


def test_upstream_units_config_builds_the_same_model_on_upstream_classes():
    """`mask2former_units="upstream"` gives the same weights for the same seed, on upstream's classes, same outputs."""
    fast, upstream = tiny_model("convnext").eval(), tiny_model("convnext", mask2former_units="upstream").eval()
    assert not any(type(m).__name__.startswith("Fast") for m in upstream.modules())
    assert type(fast.criterion).__name__ == "FastMask2FormerLoss"
    for key, value in upstream.state_dict().items():
        assert torch.equal(fast.state_dict()[key], value), key
    pixel_values = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert_close(fast(pixel_values).masks_queries_logits, upstream(pixel_values).masks_queries_logits)


def test_upstream_initialisation_is_kept():
    """The subclasses still get Mask2Former's own inits (radial sampling grid, zeroed attention weights, xavier)."""
    model = tiny_model()
    attention = model.model.pixel_level_module.decoder.encoder.layers[0].self_attn
    assert isinstance(attention, FastMask2FormerMultiscaleDeformableAttention)
    grid = attention.sampling_offsets.bias.view(attention.n_heads, attention.n_levels, attention.n_points, 2)
    # Point p of every head sits (p + 1) steps along the head's direction.
    assert torch.equal(grid[:, :, 1], 2 * grid[:, :, 0]) and grid.abs().max() == attention.n_points
    assert attention.attention_weights.weight.abs().max() == 0
    fc1 = model.model.transformer_module.decoder.layers[0].fc1.weight
    xavier_std = math.sqrt(2.0 / sum(fc1.shape))
    assert abs(fc1.std().item() - xavier_std) < 0.25 * xavier_std


def test_training_after_inference_mode_forward():
    """Constants cached during an inference-mode forward are ordinary tensors: training afterwards works."""
    model = tiny_model()
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        model.eval()(pixel_values)
    mask_labels, class_labels = targets(1, 64, 64)
    out = model.train()(pixel_values, mask_labels=mask_labels, class_labels=class_labels)
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_new_input_size_after_cached_one_matches_upstream():
    model = tiny_model().eval()
    reference = upstream_units_copy(model).eval()
    with torch.no_grad():
        for size in [(64, 64), (96, 64), (64, 64)]:
            pixel_values = torch.randn(1, 3, *size)
            assert_close(model(pixel_values).masks_queries_logits, reference(pixel_values).masks_queries_logits)


def test_bf16_autocast_forward_and_training_step():
    model = tiny_model()
    reference = upstream_units_copy(model).eval()
    pixel_values = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        fp32 = model.eval()(pixel_values).masks_queries_logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(pixel_values).masks_queries_logits
            upstream_bf16 = reference(pixel_values).masks_queries_logits
    assert bf16.dtype == torch.bfloat16 and torch.isfinite(bf16.float()).all()

    def relative_error(x):
        return ((x.float() - fp32).pow(2).mean().sqrt() / fp32.pow(2).mean().sqrt()).item()

    # bf16 keeps ~3 significant digits and a random tiny model amplifies rounding: the optimised path must lose no
    # more precision than upstream's own path under the same autocast.
    assert relative_error(bf16) < 0.3
    assert relative_error(bf16) <= 1.25 * relative_error(upstream_bf16) + 0.01
    mask_labels, class_labels = targets()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.train()(pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("num_targets", [3, 12])  # fewer and more targets than the 5 queries
def test_point_losses_equal_upstream_for_dense_and_differently_sized_targets(num_targets):
    """The fast point losses sample targets in place: same losses and gradients as upstream's padded copies, also
    when images of a batch differ in size (upstream pads) and when not every target is matched."""
    config = tiny_config(train_num_points=300)
    weight_dict = {"loss_cross_entropy": 1.0, "loss_mask": 5.0, "loss_dice": 5.0}
    upstream = Mask2FormerLoss(config, weight_dict)
    ours = use_fast_units(copy.deepcopy(upstream))
    generator = torch.Generator().manual_seed(4)
    masks = torch.randn(2, 5, 16, 24, generator=generator)
    classes = torch.randn(2, 5, config.num_labels + 1, generator=generator)
    mask_labels = [(torch.rand(num_targets, 64, 96, generator=generator) > 0.7).float(),
                   (torch.rand(num_targets - 1, 48, 80, generator=generator) > 0.7).float()]  # fmt: skip
    class_labels = [torch.randint(0, 3, (len(m),), generator=generator) for m in mask_labels]
    results = []
    for loss in (ours, upstream):
        logits = masks.clone().requires_grad_()
        torch.manual_seed(9)
        losses = loss(logits, classes, mask_labels, class_labels)
        sum(losses.values()).backward()
        results.append((losses, logits.grad))
    for key, value in results[1][0].items():
        assert_close(results[0][0][key], value, what=key)
    assert_close(results[0][1], results[1][1], atol=1e-5 * results[1][1].abs().max().item(), what="gradient")
