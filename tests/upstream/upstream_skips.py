"""Why each test that skips in tests/upstream/ is allowed to: the documented skips, printed at the end of the run.

A test may skip only where upstream skips the same test for Mask2Former or EoMT-DINOv3 (same reason), or where it
cannot apply here. The skip messages themselves come from the tests (ours or the mixins'); this table says why each
is legitimate. The conftest prints every skip with its message and this explanation, and lists any skip missing from
the table separately and fails the run, so that a new or unexpected skip (e.g. after a transformers upgrade) is
noticed. The table covers every transformers version the package supports (CI runs the oldest and the newest); an
entry for a test that a given version's mixins do not have is simply unused there.
"""

import re


_ACCELERATOR = "cannot apply: needs a CUDA/XPU accelerator (CI and this suite run on CPU)"
_FLASH = "cannot apply: needs the flash-attention / kernels packages and a GPU"
_KERNELS = (
    "cannot apply: needs a CUDA/XPU accelerator and Hub kernels fetched at run time (`model.use_kernels = True`); "
    "CI and this suite run on CPU without network access to the Hub"
)
_DEEPSPEED = "cannot apply: needs deepspeed (not a dependency), and resizes token embeddings the model does not have"
_TEXT = "cannot apply: checks a language-model feature (token ids, LM heads, sliding windows, RoPE scaling)"
_MOE = "cannot apply: checks mixture-of-experts routing; the model has no experts"
_COMPOSITE = (
    "cannot apply: for composite (vision-language) models with a language sub-model; the non-composite variants "
    "run and pass"
)
_SECOND_BACKEND = (
    "cannot apply: needs a second (torchvision) processor backend; torchvision does not install beside torch 2.13 CPU "
    "here, and the out-of-tree processor registers the PIL backend only (upstream would map both, see UPSTREAMING.md)"
)

DOCUMENTED_SKIPS = {
    # Skipped by upstream's Mask2FormerModelTest and EomtDinov3ForUniversalSegmentationTest with the same reason.
    "test_inputs_embeds": "upstream Mask2Former and EoMT-DINOv3 skip it: 'does not use inputs_embeds'",
    "test_resize_tokens_embeddings": "upstream Mask2Former and EoMT-DINOv3 skip it: 'does not use token embeddings'",
    # Accelerator-only tests.
    "test_can_load_with_device_context_manager": _ACCELERATOR,
    "test_can_load_with_global_device_set": _ACCELERATOR,
    "test_cpu_offload": _ACCELERATOR,
    "test_disk_offload_bin": _ACCELERATOR,
    "test_disk_offload_safetensors": _ACCELERATOR,
    "test_flex_attention_with_grads": _ACCELERATOR,
    "test_sdpa_can_compile_dynamic": _ACCELERATOR,
    "test_sdpa_can_dispatch_on_flash": _ACCELERATOR + "; upstream EoMT-DINOv3 also skips it ('Mask creation is forced')",
    "test_model_parallelism": "cannot apply: needs several accelerators",
    "test_torch_compile_for_training": (
        "cannot apply: @slow and accelerator-only upstream, and it builds causal-LM inputs (input_ids, labels)"
    ),
    # Flash attention / kernels.
    "test_flash_attn_2_can_compile_with_attention_mask_None_without_graph_break": _FLASH,
    "test_flash_attn_2_can_dispatch_composite_models": _FLASH,
    "test_flash_attn_2_fp32_ln": _FLASH,
    "test_flash_attn_2_from_config": _FLASH,
    "test_flash_attn_2_inference_equivalence": _FLASH,
    "test_flash_attn_2_inference_equivalence_right_padding": _FLASH,
    "test_flash_attn_3_can_dispatch_composite_models": _FLASH,
    "test_flash_attn_3_from_config": _FLASH,
    "test_flash_attn_3_inference_equivalence": _FLASH,
    "test_flash_attn_3_inference_equivalence_right_padding": _FLASH,
    "test_flash_attn_4_can_dispatch_composite_models": _FLASH,
    "test_flash_attn_4_from_config": _FLASH,
    "test_flash_attn_4_inference_equivalence": _FLASH,
    "test_flash_attn_4_inference_equivalence_right_padding": _FLASH,
    "test_flash_attn_kernels_inference_equivalence": _FLASH,
    "test_flash_attn_kernels_mps_inference_equivalence": "cannot apply: needs Apple MPS",
    "test_kernels_can_load_without_crashing": _FLASH,
    # New in transformers 5.25's mixins: `@require_torch_accelerator` and `@require_kernels`; they switch on
    # `model.use_kernels`, which swaps in Hub kernels (downloaded at run time) for the accelerator.
    "test_kernels_can_run_without_crashing_inference": _KERNELS,
    "test_kernels_can_run_without_crashing_training": _KERNELS,
    # DeepSpeed.
    "test_resize_embeddings_untied_with_deepspeed": _DEEPSPEED,
    "test_resize_embeddings_untied_with_deepspeed_multi_gpu": _DEEPSPEED,
    "test_resize_tokens_embeddings_with_deepspeed": _DEEPSPEED,
    "test_resize_tokens_embeddings_with_deepspeed_multi_gpu": _DEEPSPEED,
    # Language-model features.
    "test_causal_lm_loss_honors_shift_labels": _TEXT,
    "test_encoder_decoder_loss_no_double_shift": _TEXT,
    "test_inputs_embeds_matches_input_ids": _TEXT,
    "test_resize_position_vector_embeddings": _TEXT + " (DINOv3 has no learned position-embedding table to resize)",
    "test_sliding_window_mask": _TEXT,
    "test_model_rope_scaling_frequencies": _TEXT + " (DINOv3's patch RoPE takes no scaling)",
    "test_model_rope_scaling_from_config": _TEXT + " (DINOv3's patch RoPE takes no scaling)",
    "test_model_rope_with_partial_rotation": _TEXT,
    "test_vision_axial_rope": "cannot apply: DINOv3's RoPE is not transformers' axial-RoPE module the test inspects",
    # Mixture of experts.
    "test_moe_models_record_router_logits": _MOE,
    "test_output_router_logits_from_config": _MOE,
    "test_eager_matches_batched_and_grouped_inference": _MOE + " (grouped_mm expert kernels)",
    # Tensor parallelism.
    "test_tp_plan_matches_params": "cannot apply: no tensor-parallel plan (upstream Mask2Former has none either)",
    "test_tied_head_has_a_tp_plan_entry": "cannot apply: no tensor-parallel plan and no tied head",  # 5.23 only
    # Composite (vision-language) models.
    "test_attn_implementation_composite_models": _COMPOSITE,
    "test_can_set_attention_dynamically_composite_model": _COMPOSITE,
    "test_sdpa_can_dispatch_composite_models": _COMPOSITE + " (the mixin's message reads 'does not support SDPA')",
    # Specific to this model.
    "test_can_set_attention_dynamically": (
        "cannot apply to the ConvNeXt backbone only: it has no attention, and transformers' DINOv3ConvNextBackbone "
        "declares no SDPA support; the test runs and passes with the ViT backbone"
    ),
    "test_can_capture_specific_layers_hidden_states": (
        "cannot apply: it indexes `outputs.hidden_states`; Mask2Former's (upstream) output classes name them "
        "encoder_/pixel_decoder_/transformer_decoder_hidden_states"
    ),
    "test_keep_in_fp32_modules": "cannot apply: the model keeps no modules in fp32 (as upstream Mask2Former)",
    "test_keep_in_fp32_modules_exist": "cannot apply: the model keeps no modules in fp32 (as upstream Mask2Former)",
    # New in transformers 5.24's mixins.
    "test_keep_in_fp32_modules_strict_also_hardcode_fp32": (
        "cannot apply: the model keeps no modules in fp32 (as upstream Mask2Former), so `_keep_in_fp32_modules_strict` "
        "is empty"
    ),
    "test_bc_cache_name_forward": (
        "cannot apply: checks that a generative model's forward still accepts the deprecated cache argument names "
        "(`past_key_values` / `cache_params`); the model's forward takes no cache at all (as upstream Mask2Former)"
    ),
    # Image processor.
    "test_backends_equivalence": _SECOND_BACKEND,
    "test_backends_equivalence_batched": _SECOND_BACKEND,
    "test_save_load_backends": _SECOND_BACKEND,
    "test_save_load_backends_auto": _SECOND_BACKEND,
    "test_fast_image_processor_explicit_none_preserved": _SECOND_BACKEND,
    "test_can_compile_torchvision_backend": _SECOND_BACKEND + "; also @slow and accelerator-only upstream",
    "test_new_models_require_torchvision_backend": "cannot apply: see the skip message (keys on the test folder name)",
    "test_pil_can_run_without_torchvision": (
        "@slow upstream (not run in transformers' regular CI either); torchvision is not installed here at all, so "
        "every processor test already runs without it, and its subprocess loads the processor through "
        "AutoImageProcessor without trust_remote_code, which an out-of-tree processor cannot satisfy"
    ),
    "test_image_processor_preprocess_arguments": (
        "cannot apply: Mask2Former's processor validates arguments neither with `_valid_processor_keys` nor with "
        "`filter_out_non_signature_kwargs` (the same holds for upstream Mask2Former)"
    ),
    "test_override_instance_attributes_does_not_affect_other_instances": (
        "cannot apply: as in upstream Mask2Former, `size` is a SizeDict and `image_mean` a tuple, so there is no "
        "shared mutable dict / list to leak between instances"
    ),
}


# Skips of our own port checks (test_upstream_port_checks.py) where their inputs are missing; each says what to set.
DOCUMENTED_SKIPS["test_port_passes_transformers_repository_checks"] = (
    "needs a transformers source tree with the repository tools (see UPSTREAMING.md); the skip message says which "
    "variables to set"
)
DOCUMENTED_SKIPS["test_port_is_ruff_clean_with_transformers_settings"] = (
    "needs ruff (the `test` extra) and transformers' pyproject.toml from its sdist; the skip message says which is missing"
)

DOCUMENTED_SKIPS["test_reverse_loading_mapping"] = (
    "upstream's own skip when a model has no conversion mapping (the port; upstream Mask2Former); for the package's "
    "ConvNeXt tester, whose identity adapter has no parameters for the 0.3.0 key renamings to match (the ViT tester "
    "runs it)"
)

# Skips allowed only for the upstream port's test file (test_upstream_port.py), not for the package's own tests.
PORT_ONLY_SKIPS: dict[str, str] = {}  # none since upstream/mask2former_fixes/0003 (gradient checkpointing)


def explain_skip(nodeid: str) -> str | None:
    """The documented explanation for a skipped test's node id, or None if the skip is not documented.

    Parameterized variants (`test_x_0_fp16`) are documented under their base name (`test_x`).
    """
    name = nodeid.rsplit("::", 1)[-1]
    base = re.sub(r"_\d+(_\w*)?$", "", name)
    if "test_upstream_port.py::" in nodeid and name in PORT_ONLY_SKIPS:
        return PORT_ONLY_SKIPS[name]
    return DOCUMENTED_SKIPS.get(name, DOCUMENTED_SKIPS.get(base))
