# Copyright 2026 the HuggingFace Team. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Testing suite for the PyTorch Mask2FormerDinov3 model."""

import copy
import dataclasses
import unittest
from unittest import mock

from parameterized import parameterized

from transformers import DINOv3ConvNextConfig, DINOv3ViTConfig
from transformers.testing_utils import require_torch, torch_device
from transformers.utils import ModelOutput, is_torch_available

from ...test_configuration_common import ConfigTester
from ...test_modeling_common import (
    TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION,
    ModelTesterMixin,
    _config_zero_init,
    _test_eager_matches_sdpa_inference,
    floats_tensor,
)


if is_torch_available():
    import torch

    from transformers.models.mask2former_dinov3 import (
        Mask2FormerDinov3Config,
        Mask2FormerDinov3ForUniversalSegmentation,
        Mask2FormerDinov3Model,
    )

    @dataclasses.dataclass
    class AttentionComparisonOutput(ModelOutput):
        """What `_test_eager_matches_sdpa_inference` compares: the last entry of `hidden_states`."""

        hidden_states: tuple[torch.Tensor, ...] | None = None

    def _attention_comparison_forward(model_class):
        def forward(self, pixel_values, pixel_mask=None, output_hidden_states=None, output_attentions=None, **kwargs):
            outputs = model_class.forward(self, pixel_values, pixel_mask=pixel_mask, output_hidden_states=True)
            masks = outputs.masks_queries_logits
            final_masks = masks[-1] if isinstance(masks, (tuple, list)) else masks
            return AttentionComparisonOutput(hidden_states=(*outputs.encoder_hidden_states, final_masks))

        return forward

    # Mask2Former's outputs have no `hidden_states` key: these expose the backbone maps and the final masks under it.
    ATTENTION_COMPARISON_CLASSES = {
        model_class: type(f"{model_class.__name__}ForAttentionComparison", (model_class,), {
            "forward": _attention_comparison_forward(model_class)
        })
        for model_class in (Mask2FormerDinov3Model, Mask2FormerDinov3ForUniversalSegmentation)
    }  # fmt: skip


class Mask2FormerDinov3ModelTester:
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
        self.parent = parent
        self.backbone = backbone
        self.batch_size = batch_size
        self.is_training = is_training
        self.num_channels = num_channels
        self.image_size = image_size
        self.num_queries = num_queries
        self.num_labels = num_labels
        self.hidden_dim = hidden_dim
        self.num_attention_heads = num_attention_heads
        self.num_hidden_layers = num_hidden_layers

    def get_backbone_config(self):
        if self.backbone == "vit":
            return DINOv3ViTConfig(
                hidden_size=16,
                num_hidden_layers=self.num_hidden_layers,
                num_attention_heads=2,
                intermediate_size=32,
                num_register_tokens=1,
                num_channels=self.num_channels,
                image_size=self.image_size,
            )
        return DINOv3ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_channels=self.num_channels)

    def get_config(self):
        return Mask2FormerDinov3Config(
            backbone_config=self.get_backbone_config(),
            feature_size=32,
            mask_feature_size=self.hidden_dim,
            hidden_dim=self.hidden_dim,
            encoder_feedforward_dim=32,
            dim_feedforward=32,
            encoder_layers=1,
            decoder_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_queries=self.num_queries,
            num_labels=self.num_labels,
            train_num_points=16,
            adapter_spatial_prior_channels=8,
        )

    def prepare_labels(self, batch_size=None):
        # A fixed seed: tests that prepare inputs twice and compare two forwards need equal labels.
        batch_size = self.batch_size if batch_size is None else batch_size
        generator = torch.Generator().manual_seed(0)
        size = (batch_size, self.num_labels, self.image_size, self.image_size)
        mask_labels = (torch.rand(size, generator=generator) > 0.5).float()
        class_labels = torch.randint(0, self.num_labels, (batch_size, self.num_labels), generator=generator)
        return mask_labels.to(torch_device), class_labels.to(torch_device)

    def prepare_config_and_inputs(self):
        size = [self.batch_size, self.num_channels, self.image_size, self.image_size]
        pixel_values = floats_tensor(size).to(torch_device)
        pixel_mask = torch.ones([self.batch_size, self.image_size, self.image_size], device=torch_device)
        mask_labels, class_labels = self.prepare_labels()
        return self.get_config(), pixel_values, pixel_mask, mask_labels, class_labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, pixel_mask, _, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values, "pixel_mask": pixel_mask}

    def check_output_hidden_state(self, output, config):
        num_backbone_maps = len(config.tapped_layers) if self.backbone == "vit" else 4
        self.parent.assertEqual(len(output.encoder_hidden_states), num_backbone_maps)
        self.parent.assertEqual(len(output.pixel_decoder_hidden_states), 3)
        for level, stride in zip(output.pixel_decoder_hidden_states, (32, 16, 8)):
            size = self.image_size // stride
            self.parent.assertEqual(tuple(level.shape), (self.batch_size, config.feature_size, size, size))
        self.parent.assertEqual(len(output.transformer_decoder_hidden_states), config.decoder_layers)

    def create_and_check_model(self, config, pixel_values, pixel_mask, output_hidden_states=False):
        model = Mask2FormerDinov3Model(config=config).to(torch_device).eval()
        with torch.no_grad():
            model(pixel_values=pixel_values, pixel_mask=pixel_mask)
            output = model(pixel_values, output_hidden_states=output_hidden_states)
        self.parent.assertEqual(
            output.transformer_decoder_last_hidden_state.shape, (self.batch_size, self.num_queries, self.hidden_dim)
        )
        # Masks at a quarter of the input, for both backbone families.
        size = self.image_size // 4
        self.parent.assertEqual(
            output.pixel_decoder_last_hidden_state.shape, (self.batch_size, config.mask_feature_size, size, size)
        )
        if output_hidden_states:
            self.check_output_hidden_state(output, config)

    def create_and_check_universal_segmentation_head_model(
        self, config, pixel_values, pixel_mask, mask_labels, class_labels
    ):
        model = Mask2FormerDinov3ForUniversalSegmentation(config=config).to(torch_device).eval()
        with torch.no_grad():
            result = model(
                pixel_values=pixel_values, pixel_mask=pixel_mask, mask_labels=mask_labels, class_labels=class_labels
            )
        size = self.image_size // 4
        self.parent.assertEqual(result.masks_queries_logits.shape, (self.batch_size, self.num_queries, size, size))
        self.parent.assertEqual(
            result.class_queries_logits.shape, (self.batch_size, self.num_queries, self.num_labels + 1)
        )
        self.parent.assertEqual(result.loss.shape, torch.Size([]))


class Mask2FormerDinov3ModelTestMixin:
    backbone = "vit"
    all_model_classes = (
        (Mask2FormerDinov3Model, Mask2FormerDinov3ForUniversalSegmentation) if is_torch_available() else ()
    )
    is_encoder_decoder = False

    def setUp(self):
        self.model_tester = Mask2FormerDinov3ModelTester(self, backbone=self.backbone)
        self.config_tester = ConfigTester(self, config_class=Mask2FormerDinov3Config, has_text_modality=False)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is Mask2FormerDinov3ForUniversalSegmentation:
            batch_size = inputs_dict["pixel_values"].shape[0]
            inputs_dict["mask_labels"], inputs_dict["class_labels"] = self.model_tester.prepare_labels(batch_size)
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_mask2former_dinov3_model(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        self.model_tester.create_and_check_model(config, **inputs)

    def test_mask2former_dinov3_universal_segmentation_head_model(self):
        self.model_tester.create_and_check_universal_segmentation_head_model(
            *self.model_tester.prepare_config_and_inputs()
        )

    def test_input_size_must_be_multiple_of_32(self):
        model = Mask2FormerDinov3Model(self.model_tester.get_config()).to(torch_device).eval()
        with self.assertRaisesRegex(ValueError, "multiples of 32"):
            model(floats_tensor([1, 3, 80, 64]).to(torch_device))

    def test_model_outputs_equivalence(self):
        # Mask2Former's loss samples points at random: seed each forward alike so that the two runs compare.
        unseeded_forward = Mask2FormerDinov3ForUniversalSegmentation.forward

        def seeded_forward(model, *args, **kwargs):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                return unseeded_forward(model, *args, **kwargs)

        with mock.patch.object(Mask2FormerDinov3ForUniversalSegmentation, "forward", seeded_forward):
            super().test_model_outputs_equivalence()

    @parameterized.expand(TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION)
    def test_eager_matches_sdpa_inference(
        self, name, dtype, padding_side, use_attention_mask, output_attentions, enable_kernels
    ):
        comparison_classes = tuple(ATTENTION_COMPARISON_CLASSES[cls] for cls in self.all_model_classes)
        with mock.patch.object(self, "all_model_classes", comparison_classes):
            _test_eager_matches_sdpa_inference(
                self, name, dtype, padding_side, use_attention_mask, output_attentions, enable_kernels
            )

    @unittest.skip(reason="Mask2FormerDinov3 does not use inputs_embeds")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="Mask2FormerDinov3 does not use token embeddings")
    def test_resize_tokens_embeddings(self):
        pass

    def test_model_get_set_embeddings(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(copy.deepcopy(config))
            embeddings = model.get_input_embeddings()
            self.assertIsInstance(embeddings, torch.nn.Conv2d)
            self.assertEqual(embeddings.in_channels, self.model_tester.num_channels)
            self.assertIsNone(model.get_output_embeddings())

    def test_hidden_states_output(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        self.model_tester.create_and_check_model(config, **inputs, output_hidden_states=True)

    def test_attention_outputs(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(copy.deepcopy(config)).to(torch_device).eval()
            with torch.no_grad():
                outputs = model(**inputs, output_attentions=True)
            self.assertEqual(len(outputs.attentions), config.decoder_layers - 1)

    def test_retain_grad_hidden_states_attentions(self):
        config, pixel_values, _, mask_labels, class_labels = self.model_tester.prepare_config_and_inputs()
        config.output_hidden_states = True
        config.output_attentions = True
        model = Mask2FormerDinov3ForUniversalSegmentation(config).to(torch_device).train()
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
        for tensor in retained:
            self.assertIsNotNone(tensor.grad)

    def test_initialization(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        configs_no_init = _config_zero_init(config)
        for model_class in self.all_model_classes:
            model = model_class(config=copy.deepcopy(configs_no_init))
            for name, param in model.named_parameters():
                if param.requires_grad:
                    mean = ((param.data.mean() * 1e9).round() / 1e9).item()
                    self.assertTrue(-1.0 <= mean <= 1.0, msg=f"{name} of {model_class.__name__} is not initialized")


@require_torch
class Mask2FormerDinov3ViTModelTest(Mask2FormerDinov3ModelTestMixin, ModelTesterMixin, unittest.TestCase):
    backbone = "vit"


@require_torch
class Mask2FormerDinov3ConvNextModelTest(Mask2FormerDinov3ModelTestMixin, ModelTesterMixin, unittest.TestCase):
    backbone = "convnext"
