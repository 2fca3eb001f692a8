"""Model testers that run transformers' own `ModelTesterMixin` and `ConfigTester` against Mask2FormerDINOv3.

Modelled on how transformers tests Mask2Former (`tests/models/mask2former/test_modeling_mask2former.py`) and
EoMT-DINOv3 (`tests/models/eomt_dinov3/test_modeling_eomt_dinov3.py`): a `ModelTester` builds a tiny config and
inputs, and a test mixin holds the model-specific overrides and the skips. The test modules
`test_upstream_modeling_vit.py` and `test_upstream_modeling_convnext.py` combine them with `ModelTesterMixin` for
each backbone family.

Import this module only after `upstream_harness.prepare()` succeeded: it imports the sdist's `tests` package.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import unittest
from unittest import mock

import torch
from parameterized import parameterized
from transformers import DINOv3ConvNextConfig, DINOv3ViTConfig, PreTrainedConfig
from transformers.models.auto import modeling_auto
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
)
from transformers.testing_utils import torch_device
from transformers.utils import ModelOutput

from mask2former_dinov3 import (
    Mask2FormerDINOv3Config,
    Mask2FormerDINOv3ForUniversalSegmentation,
    Mask2FormerDINOv3Model,
)
from tests.test_configuration_common import ConfigTester
from tests.test_modeling_common import (
    TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION,
    _config_zero_init,
    _test_eager_matches_sdpa_inference,
    floats_tensor,
)
from tests.utils.test_configuration_utils import config_common_kwargs


# The registrations an upstream PR would add to transformers' auto mappings (see UPSTREAMING.md). Out-of-tree,
# `Auto*.register` fills the mappings' extra content but not these static name tables, which `ModelTesterMixin`
# reads to tell a base model (no loss, skipped by the training tests) from a model with a head.
UPSTREAM_MAPPING_NAMES = {
    "MODEL_MAPPING_NAMES": {"mask2former_dinov3": "Mask2FormerDinov3Model"},
    "MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES": {
        "mask2former_dinov3": "Mask2FormerDinov3ForUniversalSegmentation"
    },
}


@dataclasses.dataclass
class AttentionComparisonOutput(ModelOutput):
    """What `_test_eager_matches_sdpa_inference` reads: `hidden_states`, of which it compares the last entry."""

    hidden_states: tuple[torch.Tensor, ...] | None = None


def _attention_comparison_output(outputs) -> AttentionComparisonOutput:
    # Backbone maps (where SDPA vs eager acts), then the final mask logits, which every later stage feeds into
    # (the base model returns the mask logits of every decoder layer; the head model only the last layer's).
    masks = outputs.masks_queries_logits
    final_masks = masks[-1] if isinstance(masks, (tuple, list)) else masks
    return AttentionComparisonOutput(hidden_states=(*outputs.encoder_hidden_states, final_masks))


class Mask2FormerDINOv3ModelForAttentionComparison(Mask2FormerDINOv3Model):
    """`Mask2FormerDINOv3Model` whose outputs are exposed as `hidden_states` for upstream's eager-vs-SDPA test."""

    def forward(self, pixel_values, pixel_mask=None, output_hidden_states=None, output_attentions=None, **kwargs):
        """Run the model and return `AttentionComparisonOutput` (backbone maps, then mask logits)."""
        outputs = super().forward(
            pixel_values, pixel_mask=pixel_mask, output_hidden_states=True, output_attentions=output_attentions
        )
        return _attention_comparison_output(outputs)


class Mask2FormerDINOv3ForUniversalSegmentationForAttentionComparison(Mask2FormerDINOv3ForUniversalSegmentation):
    """`...ForUniversalSegmentation` whose outputs are exposed as `hidden_states` for upstream's eager-vs-SDPA test."""

    def forward(self, pixel_values, pixel_mask=None, output_hidden_states=None, output_attentions=None, **kwargs):
        """Run the model and return `AttentionComparisonOutput` (backbone maps, then mask logits)."""
        outputs = super().forward(
            pixel_values, pixel_mask=pixel_mask, output_hidden_states=True, output_attentions=output_attentions
        )
        return _attention_comparison_output(outputs)


ATTENTION_COMPARISON_CLASSES = {
    Mask2FormerDINOv3Model: Mask2FormerDINOv3ModelForAttentionComparison,
    Mask2FormerDINOv3ForUniversalSegmentation: Mask2FormerDINOv3ForUniversalSegmentationForAttentionComparison,
}


class Mask2FormerDINOv3ModelTester:
    """Tiny Mask2FormerDINOv3 configs and inputs for one backbone family (`"vit"` or `"convnext"`).

    Sizes follow the model's rules: inputs are multiples of 32 (64 x 64 gives a 2 x 2 map at stride 32), and
    `feature_size` is a multiple of 32 (the pixel decoder's GroupNorm). The ViT has 2 blocks (what
    `test_num_layers_is_small` allows), so it taps one block and builds all four levels from it (ViTDet's simple
    pyramid); the four-tap path is covered by `tests/upstream/test_upstream_export.py` and our own tests.
    """

    def __init__(
        self,
        parent,
        backbone="vit",
        batch_size=2,
        is_training=True,
        num_channels=3,
        image_size=64,
        num_queries=5,
        num_labels=4,
        hidden_dim=32,
        num_attention_heads=2,
        num_hidden_layers=2,
    ):
        if backbone not in ("vit", "convnext"):
            raise ValueError(f"backbone must be 'vit' or 'convnext', got {backbone!r}")
        self.parent = parent
        self.backbone = backbone
        self.batch_size = batch_size
        self.is_training = is_training
        self.num_channels = num_channels
        self.min_size = self.max_size = image_size
        self.num_queries = num_queries
        self.num_labels = num_labels
        self.hidden_dim = hidden_dim
        self.mask_feature_size = hidden_dim
        self.num_attention_heads = num_attention_heads
        # Mask2Former's config maps `num_hidden_layers` to `decoder_layers`; the ViT backbone has as many blocks.
        self.num_hidden_layers = num_hidden_layers

    def get_backbone_config(self):
        """A tiny DINOv3 ViT (patch 16, 2 blocks, 1 register token) or ConvNeXt (one block per stage)."""
        if self.backbone == "vit":
            return DINOv3ViTConfig(
                hidden_size=16,
                num_hidden_layers=self.num_hidden_layers,
                num_attention_heads=2,
                intermediate_size=32,
                num_register_tokens=1,
                num_channels=self.num_channels,
                image_size=self.min_size,
            )
        return DINOv3ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_channels=self.num_channels)

    def get_config(self):
        """The tiny Mask2FormerDINOv3Config the common tests run on."""
        return Mask2FormerDINOv3Config(
            backbone_config=self.get_backbone_config(),
            feature_size=32,
            mask_feature_size=self.mask_feature_size,
            hidden_dim=self.hidden_dim,
            encoder_feedforward_dim=32,
            dim_feedforward=32,
            encoder_layers=1,
            decoder_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_queries=self.num_queries,
            num_labels=self.num_labels,
            train_num_points=16,
        )

    def prepare_config_and_inputs(self):
        """Config, pixel values, pixel mask and random instance labels (binary masks + class ids)."""
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.min_size, self.max_size]).to(
            torch_device
        )
        pixel_mask = torch.ones([self.batch_size, self.min_size, self.max_size], device=torch_device)
        mask_labels, class_labels = self.prepare_labels()
        return self.get_config(), pixel_values, pixel_mask, mask_labels, class_labels

    def prepare_labels(self, batch_size=None):
        """One binary mask and one class id per label slot, for each image (what Mask2Former's loss takes).

        Drawn from a fixed seed: tests that prepare inputs twice and compare the two forwards must get equal labels.
        """
        batch_size = self.batch_size if batch_size is None else batch_size
        generator = torch.Generator().manual_seed(0)
        mask_labels = (
            torch.rand([batch_size, self.num_labels, self.min_size, self.max_size], generator=generator) > 0.5
        ).float()
        class_labels = torch.randint(0, self.num_labels, (batch_size, self.num_labels), generator=generator)
        return mask_labels.to(torch_device), class_labels.to(torch_device)

    def prepare_config_and_inputs_for_common(self):
        """Config and model inputs without labels (`_prepare_for_class` adds them where a test asks for labels)."""
        config, pixel_values, pixel_mask, _, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values, "pixel_mask": pixel_mask}

    def expected_num_encoder_hidden_states(self, config):
        """How many backbone maps the model hands on: ViT taps, or the four ConvNeXt stages."""
        if self.backbone == "vit":
            return len(config.tapped_layers)
        return 4

    def check_output_hidden_state(self, output, config):
        """Hidden states of the backbone, pixel decoder and transformer decoder have the documented counts/shapes."""
        self.parent.assertEqual(len(output.encoder_hidden_states), self.expected_num_encoder_hidden_states(config))
        # The pixel decoder's deformable encoder always works on 3 levels (strides 32, 16, 8).
        self.parent.assertEqual(len(output.pixel_decoder_hidden_states), 3)
        for level, stride in zip(output.pixel_decoder_hidden_states, (32, 16, 8)):
            self.parent.assertEqual(
                tuple(level.shape),
                (self.batch_size, config.feature_size, self.min_size // stride, self.max_size // stride),
            )
        # Mask2Former's decoder has `decoder_layers - 1` layers: one state before the first, then one per layer.
        self.parent.assertEqual(len(output.transformer_decoder_hidden_states), config.decoder_layers)

    def create_and_check_model(self, config, pixel_values, pixel_mask, output_hidden_states=False):
        """`Mask2FormerDINOv3Model` runs with and without a pixel mask and gives true stride-4 mask features."""
        model = Mask2FormerDINOv3Model(config=config).to(torch_device).eval()
        with torch.no_grad():
            output = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
            output = model(pixel_values, output_hidden_states=output_hidden_states)
        self.parent.assertEqual(
            tuple(output.transformer_decoder_last_hidden_state.shape),
            (self.batch_size, self.num_queries, self.hidden_dim),
        )
        # The point of the adapter: mask features at 1/4 of the input for both backbone families (not 1/16).
        self.parent.assertEqual(
            tuple(output.pixel_decoder_last_hidden_state.shape),
            (self.batch_size, config.mask_feature_size, self.min_size // 4, self.max_size // 4),
        )
        self.parent.assertIsNotNone(output.encoder_last_hidden_state)
        if output_hidden_states:
            self.check_output_hidden_state(output, config)
        else:
            self.parent.assertIsNone(output.encoder_hidden_states)

    def create_and_check_universal_segmentation_head_model(
        self, config, pixel_values, pixel_mask, mask_labels, class_labels
    ):
        """The head gives 1/4-resolution mask logits, `num_labels + 1` class logits, and a scalar loss with labels."""
        model = Mask2FormerDINOv3ForUniversalSegmentation(config=config).to(torch_device).eval()

        def check_logits(result):
            self.parent.assertIsNotNone(result.transformer_decoder_last_hidden_state)
            self.parent.assertIsNotNone(result.pixel_decoder_last_hidden_state)
            self.parent.assertIsNotNone(result.encoder_last_hidden_state)
            self.parent.assertEqual(
                tuple(result.masks_queries_logits.shape),
                (self.batch_size, self.num_queries, self.min_size // 4, self.max_size // 4),
            )
            # + 1 for the "no object" class.
            self.parent.assertEqual(
                tuple(result.class_queries_logits.shape), (self.batch_size, self.num_queries, self.num_labels + 1)
            )

        with torch.no_grad():
            check_logits(model(pixel_values=pixel_values, pixel_mask=pixel_mask))
            check_logits(model(pixel_values))
            result = model(
                pixel_values=pixel_values, pixel_mask=pixel_mask, mask_labels=mask_labels, class_labels=class_labels
            )
        check_logits(result)
        self.parent.assertIsNotNone(result.loss)
        self.parent.assertEqual(result.loss.shape, torch.Size([]))
        self.parent.assertTrue(torch.isfinite(result.loss))


class Mask2FormerDINOv3ModelTestMixin:
    """Model-specific overrides and skips for `ModelTesterMixin`; list it before `ModelTesterMixin` in the bases.

    The skips declared here are those upstream's Mask2FormerModelTest / EomtDinov3ForUniversalSegmentationTest make,
    with their reason; every other skip is the mixin's own, for a test that cannot apply (accelerator-only, text
    models, MoE, ...), and is listed with its reason at the end of the run. Unlike upstream Mask2Former, gradient
    checkpointing, SDPA dispatch and `torch.export` are supported and tested (the latter in
    test_upstream_export.py, as the `ExportTesterMixin` stand-in is empty).
    """

    backbone = "vit"
    all_model_classes = (Mask2FormerDINOv3Model, Mask2FormerDINOv3ForUniversalSegmentation)
    # PipelineTesterMixin is not used: its tests load `hf-internal-testing/tiny-random-<Architecture>` checkpoints
    # from the Hub and `tests/pipelines/*` test classes, neither of which exists for this out-of-tree model (the
    # sdist ships neither); test_upstream_pipeline.py runs the image-segmentation pipeline on the tiny models instead.
    is_encoder_decoder = False
    # Runs `test_can_init_all_missing_weights` (the mixin skips it for files without a 2023+ copyright header).
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        """Tester, ConfigTester, and the upstream auto-mapping entries for the duration of the test."""
        self.model_tester = Mask2FormerDINOv3ModelTester(self, backbone=self.backbone)
        self.config_tester = ConfigTester(self, config_class=Mask2FormerDINOv3Config, has_text_modality=False)
        for table, entries in UPSTREAM_MAPPING_NAMES.items():
            # Scoped to this test and undone after it, so other test modules see transformers' tables unchanged.
            patcher = mock.patch.dict(getattr(modeling_auto, table), entries)
            patcher.start()
            self.addCleanup(patcher.stop)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        """As upstream's, plus instance labels for the segmentation head when labels are asked for.

        `ModelTesterMixin` only knows the label formats of standard heads; Mask2Former's loss takes one binary mask
        and one class id per object (as DETR-style testers, we add them here).
        """
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is Mask2FormerDINOv3ForUniversalSegmentation:
            batch_size = inputs_dict["pixel_values"].shape[0]
            inputs_dict["mask_labels"], inputs_dict["class_labels"] = self.model_tester.prepare_labels(batch_size)
        return inputs_dict

    def test_model_outputs_equivalence(self):
        """Upstream's test, with each forward's random number generator seeded alike.

        With labels (see `_prepare_for_class`) Mask2Former's loss samples its mask points at random
        (`sample_points_using_uncertainty`), so the two forwards the test compares would compute the loss on different
        points; seeding each forward the same way makes them comparable and leaves everything else as upstream's.
        """
        unseeded_forward = Mask2FormerDINOv3ForUniversalSegmentation.forward

        def seeded_forward(model, *args, **kwargs):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                return unseeded_forward(model, *args, **kwargs)

        with mock.patch.object(Mask2FormerDINOv3ForUniversalSegmentation, "forward", seeded_forward):
            super().test_model_outputs_equivalence()

    @parameterized.expand(TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION)
    def test_eager_matches_sdpa_inference(
        self, name, dtype, padding_side, use_attention_mask, output_attentions, enable_kernels
    ):
        """Upstream's eager-vs-SDPA comparison (same parameters, dtypes and tolerances), on our outputs.

        Upstream's check compares `outputs["hidden_states"][-1]`, a key Mask2Former's outputs do not have, so it runs
        on thin subclasses that return the backbone maps and then the final mask logits under that key; loading
        with `attn_implementation="sdpa"` and switching to eager are upstream's. SDPA reaches the DINOv3 ViT's
        attention; the ConvNeXt has none, so there the two must simply agree.
        """
        comparison_classes = tuple(ATTENTION_COMPARISON_CLASSES[cls] for cls in self.all_model_classes)
        with mock.patch.object(self, "all_model_classes", comparison_classes):
            _test_eager_matches_sdpa_inference(
                self, name, dtype, padding_side, use_attention_mask, output_attentions, enable_kernels
            )

    def test_config(self):
        """transformers' ConfigTester on Mask2FormerDINOv3Config (serialisation, save/load, num_labels, ...)."""
        self.config_tester.run_common_tests()

    def test_config_common_kwargs(self):
        """The common PreTrainedConfig kwargs reach the config unchanged.

        `ConfigTester.check_config_arguments_init` returns early for configs with sub-configs ("composite models are
        not consistent in how they set general params"), so for our composite config it checks nothing; this runs
        the same check on it.
        """
        config = Mask2FormerDINOv3Config(**copy.deepcopy(config_common_kwargs))
        for key, value in config_common_kwargs.items():
            expected = torch.float16 if key == "dtype" else value
            self.assertEqual(getattr(config, key), expected, msg=f"`{key}` was not set from the kwargs")

    def test_config_common_kwargs_stand_in_is_complete(self):
        """The `config_common_kwargs` stand-in covers every user-settable PreTrainedConfig field, none at default."""
        defaults = PreTrainedConfig()
        fields = {f.name for f in dataclasses.fields(PreTrainedConfig) if not f.name.startswith("_")}
        fields -= {"transformers_version", "is_encoder_decoder", "model_type", "base_config_key"}
        fields = {name for name in fields if not callable(getattr(defaults, name, None))}
        missing = sorted(name for name in fields if name not in config_common_kwargs)
        self.assertEqual(missing, [], "config_common_kwargs stand-in lacks these PreTrainedConfig fields")
        at_default = [key for key, value in config_common_kwargs.items() if getattr(defaults, key) == value]
        self.assertEqual(at_default, [], "config_common_kwargs must use non-default values")

    def test_mask2former_dinov3_model(self):
        """The base model's output shapes (see `create_and_check_model`)."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        self.model_tester.create_and_check_model(config, **inputs, output_hidden_states=False)

    def test_mask2former_dinov3_universal_segmentation_head_model(self):
        """The segmentation head's logits and loss (see `create_and_check_universal_segmentation_head_model`)."""
        self.model_tester.create_and_check_universal_segmentation_head_model(
            *self.model_tester.prepare_config_and_inputs()
        )

    def test_input_size_must_be_multiple_of_32(self):
        """Inputs whose sides are not multiples of 32 raise the documented ValueError (for both model classes)."""
        config = self.model_tester.get_config()
        for model_class in self.all_model_classes:
            model = model_class(copy.deepcopy(config)).to(torch_device).eval()
            with self.assertRaisesRegex(ValueError, "multiples of 32"):
                model(floats_tensor([1, 3, 64 + 16, 64]).to(torch_device))

    @unittest.skip(reason="Mask2FormerDINOv3 does not use inputs_embeds (upstream Mask2Former and EoMT: same skip)")
    def test_inputs_embeds(self):
        """Skipped: the model takes pixel values only."""

    def test_model_get_set_embeddings(self):
        """Overridden as upstream's DINOv3ViT test does (upstream Mask2Former and EoMT skip it: "does not have a
        get_input_embeddings method"): the input embedding is the backbone's patch / stem convolution, not the
        `nn.Embedding` the generic test expects, and there are no output embeddings."""
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(copy.deepcopy(config))
            embeddings = model.get_input_embeddings()
            self.assertIsInstance(embeddings, torch.nn.Conv2d)
            # It is the backbone's first layer: it sees the raw pixels.
            self.assertEqual(embeddings.in_channels, self.model_tester.num_channels)
            self.assertIn(embeddings, list(model.base_model.pixel_level_module.encoder.modules()))
            self.assertIsNone(model.get_output_embeddings())

    def test_sdpa_reaches_dinov3_attention(self):
        """SDPA is what loading picks for the DINOv3 backbone, eager when asked, and the ViT's attention calls it.

        Complements upstream's dispatch tests, which only read config flags and module names: here the SDPA kernel
        is spied on, so a backbone that silently stayed eager (or ignored the request) fails.
        """
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = Mask2FormerDINOv3Model(copy.deepcopy(config))
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            sdpa_model = Mask2FormerDINOv3Model.from_pretrained(tmp).to(torch_device).eval()
            eager_model = Mask2FormerDINOv3Model.from_pretrained(tmp, attn_implementation="eager")
            eager_model = eager_model.to(torch_device).eval()
        # The ConvNeXt has no attention, so its backbone keeps "eager" (transformers' DINOv3ConvNext claims no SDPA).
        expected_backbone_attention = "sdpa" if self.backbone == "vit" else "eager"
        self.assertEqual(sdpa_model.config._attn_implementation, "sdpa")
        sdpa_backbone_config = sdpa_model.pixel_level_module.encoder.config
        self.assertEqual(sdpa_backbone_config._attn_implementation, expected_backbone_attention)
        self.assertEqual(eager_model.pixel_level_module.encoder.config._attn_implementation, "eager")

        spy = mock.Mock(side_effect=ALL_ATTENTION_FUNCTIONS["sdpa"])
        with mock.patch.dict(ALL_ATTENTION_FUNCTIONS._global_mapping, {"sdpa": spy}), torch.no_grad():
            sdpa_masks = sdpa_model(**inputs).masks_queries_logits[-1]
            sdpa_calls = spy.call_count
            eager_masks = eager_model(**inputs).masks_queries_logits[-1]
        expected_calls = config.backbone_config.num_hidden_layers if self.backbone == "vit" else 0
        self.assertEqual(sdpa_calls, expected_calls)
        self.assertEqual(spy.call_count, sdpa_calls, "the eager model called the SDPA kernel")
        torch.testing.assert_close(sdpa_masks, eager_masks, rtol=1e-4, atol=1e-4)

    def test_frozen_parameters_survive_from_pretrained(self):
        """`freeze_backbone` and the never-used DINOv3 mask token stay frozen after `from_pretrained`.

        transformers' loader recreates every loaded parameter with `requires_grad=True`; the model re-freezes them.
        """
        for freeze_backbone in (False, True):
            config = self.model_tester.get_config()
            config.freeze_backbone = freeze_backbone
            model = Mask2FormerDINOv3ForUniversalSegmentation(config)
            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(tmp)
                reloaded = Mask2FormerDINOv3ForUniversalSegmentation.from_pretrained(tmp)
            for candidate in (model, reloaded):
                encoder = candidate.model.pixel_level_module.encoder
                frozen = {name for name, p in encoder.named_parameters() if not p.requires_grad}
                if freeze_backbone:
                    self.assertEqual(frozen, {name for name, _ in encoder.named_parameters()})
                elif self.backbone == "vit":
                    self.assertEqual(frozen, {"embeddings.mask_token"})
                else:
                    self.assertEqual(frozen, set())
                # The head always trains.
                self.assertTrue(all(p.requires_grad for p in candidate.class_predictor.parameters()))

    def test_reverse_loading_mapping(self, *args, **kwargs):
        """Upstream's check of the package's renamings of 0.3.0 checkpoint keys (every renaming must match a key).

        The renamings concern the adapter's parameters; an identity ConvNeXt adapter (the ConvNeXt tester's) has
        none, so there the test cannot apply (the ViT tester's adapter has every renamed layer).
        """
        if not any(".adapter." in name for name, _ in Mask2FormerDINOv3Model(self.model_tester.get_config()).named_parameters()):
            self.skipTest("the identity ConvNeXt adapter has no parameters, so no 0.3.0 key renaming can apply")
        super().test_reverse_loading_mapping(*args, **kwargs)

    @unittest.skip(reason="Mask2FormerDINOv3 does not use token embeddings (upstream Mask2Former and EoMT: same skip)")
    def test_resize_tokens_embeddings(self):
        """Skipped: there is no token vocabulary to resize."""

    def test_model_with_labels(self):
        """A loss comes out for labels with more objects than queries' default and masks of any float values."""
        size = (self.model_tester.min_size,) * 2
        inputs = {
            "pixel_values": torch.randn((2, 3, *size), device=torch_device),
            "mask_labels": torch.randn((2, 10, *size), device=torch_device),
            "class_labels": torch.zeros(2, 10, device=torch_device).long(),
        }
        model = Mask2FormerDINOv3ForUniversalSegmentation(self.model_tester.get_config()).to(torch_device)
        outputs = model(**inputs)
        self.assertIsNotNone(outputs.loss)
        self.assertTrue(torch.isfinite(outputs.loss))

    def test_hidden_states_output(self):
        """Overridden as upstream Mask2Former does: its outputs have three groups of hidden states, not one."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        self.model_tester.create_and_check_model(config, **inputs, output_hidden_states=True)
        # The config flag works as the call argument does.
        config.output_hidden_states = True
        for model_class in self.all_model_classes:
            model = model_class(copy.deepcopy(config)).to(torch_device).eval()
            with torch.no_grad():
                outputs = model(**inputs)
            self.model_tester.check_output_hidden_state(outputs, config)

    def test_attention_outputs(self):
        """Overridden as upstream Mask2Former does: one masked-attention map per decoder layer, per query."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(copy.deepcopy(config)).to(torch_device).eval()
            with torch.no_grad():
                outputs = model(**inputs, output_attentions=True)
            self.assertIsNotNone(outputs.attentions)
            self.assertEqual(len(outputs.attentions), config.decoder_layers - 1)
            for attention in outputs.attentions:
                self.assertEqual(attention.shape[0], self.model_tester.batch_size)
                self.assertEqual(attention.shape[-2], config.num_queries)

    def test_retain_grad_hidden_states_attentions(self):
        """Gradients reach the backbone, pixel-decoder and transformer-decoder hidden states and the attentions."""
        model_class = Mask2FormerDINOv3ForUniversalSegmentation
        config, pixel_values, _, mask_labels, class_labels = self.model_tester.prepare_config_and_inputs()
        config.output_hidden_states = True
        config.output_attentions = True
        model = model_class(config).to(torch_device)
        model.train()
        outputs = model(pixel_values, mask_labels=mask_labels, class_labels=class_labels)
        retained = [
            outputs.encoder_hidden_states[0],
            outputs.pixel_decoder_hidden_states[0],
            outputs.transformer_decoder_hidden_states[0],
            outputs.attentions[0],
        ]
        for tensor in retained:
            tensor.retain_grad()
        outputs.loss.backward(retain_graph=True)
        for name, tensor in zip(("encoder", "pixel decoder", "transformer decoder", "attentions"), retained):
            self.assertIsNotNone(tensor.grad, f"no gradient reached the {name} output")

    def test_initialization(self):
        """Upstream Mask2Former's initialisation takes effect in our (out-of-tree) subclasses.

        Under `_config_zero_init` every std is ~0, so linears come out (near) zero, norms one/zero, and any value far
        from that points at an init that ignored the config; and Mask2Former's deformable attention must get its
        radial sampling-offset grid and xavier projections, which transformers skips for out-of-tree classes unless
        the model opts back in (see `Mask2FormerDINOv3PreTrainedModel.is_custom_code`).
        """
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        configs_no_init = _config_zero_init(config)
        for model_class in self.all_model_classes:
            model = model_class(config=copy.deepcopy(configs_no_init))
            for name, param in model.named_parameters():
                if param.requires_grad:
                    mean = ((param.data.mean() * 1e9).round() / 1e9).item()
                    self.assertTrue(-1.0 <= mean <= 1.0, msg=f"{name} of {model_class.__name__} is not initialised")
            deformable_class = Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention
            deformable = [m for m in model.modules() if isinstance(m, deformable_class)]
            self.assertTrue(deformable)
            for module in deformable:
                # Radial grid: the offsets' bias is far from constant, and the attention-weight projection starts at 0.
                self.assertGreater(module.sampling_offsets.bias.std().item(), 0.5)
                self.assertEqual(module.attention_weights.weight.abs().sum().item(), 0.0)
