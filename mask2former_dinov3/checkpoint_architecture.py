"""What makes two DINOv3 backbones the same architecture: the checks that loading and conversion share.

* `ARCHITECTURE_FIELDS` / `architecture`: the config fields that fix a backbone's tensors (and the computation its
  weights were trained for); two checkpoints with equal fields are interchangeable.
* `architecture_differences`, `describe_architecture`, `expected_architecture`: compare and describe them, so
  that a checkpoint that does not match the requested preset or config is refused with `DINOv3CheckpointError`.
* `quiet_loading_reports`, `really_missing`: transformers' loading report silenced, and the keys that are missing
  for real (not zero-size tensors).
"""

from __future__ import annotations

import contextlib

from transformers import AutoConfig, PreTrainedConfig
from transformers.utils import logging as transformers_logging

from .presets import CONVNEXT_TYPE, VIT_TYPE, DINOv3Preset, get_preset

# Config fields that define a backbone's architecture (tensor shapes, or the computation its weights were trained
# for). Checkpoint and expectation must agree on these; every other field (drop_path_rate, out_indices, ...) is a
# usage setting that `backbone_overrides` may change.
ARCHITECTURE_FIELDS = {
    VIT_TYPE: (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "use_gated_mlp", "hidden_act",
        "patch_size", "num_channels", "num_register_tokens", "query_bias", "key_bias", "value_bias", "proj_bias",
        "mlp_bias", "layer_norm_eps", "rope_theta",
    ),
    CONVNEXT_TYPE: ("hidden_sizes", "depths", "num_channels", "hidden_act", "layer_norm_eps"),
}  # fmt: skip


class DINOv3CheckpointError(ValueError):
    """A checkpoint is not a (readable, complete) DINOv3 / Mask2Former checkpoint, or not the architecture expected."""


def preset_config(preset: DINOv3Preset) -> PreTrainedConfig:
    """The backbone config a preset describes."""
    return AutoConfig.for_model(preset.backbone_type, **preset.backbone_kwargs)


def architecture(config) -> dict:
    """The architecture fields (``ARCHITECTURE_FIELDS``) of a DINOv3 backbone config, plus its ``model_type``."""
    fields = {"model_type": config.model_type}
    for name in ARCHITECTURE_FIELDS.get(config.model_type, ()):
        value = getattr(config, name)
        fields[name] = list(value) if isinstance(value, tuple) else value
    return fields


def architecture_differences(found: dict, expected: dict) -> list[str]:
    """One line per field of `expected` that `found` has with another value."""
    return [
        f"{name}: {found.get(name)!r} in the checkpoint vs {value!r} expected"
        for name, value in expected.items()
        if name in found and not same_value(found[name], value)
    ]


def same_value(a, b) -> bool:
    """Equal, floats to a relative 1e-6 (configs written by different tools round differently)."""
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= 1e-6 * max(abs(float(a)), abs(float(b)), 1.0)
    return a == b


def describe_architecture(fields: dict) -> str:
    """A short `model_type(hidden_size=..., ...)` text of architecture fields, for error messages."""
    shown = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "use_gated_mlp",
             "hidden_sizes", "depths")  # fmt: skip
    return f"{fields.get('model_type')}(" + ", ".join(f"{k}={fields[k]}" for k in shown if k in fields) + ")"


@contextlib.contextmanager
def quiet_loading_reports():
    """transformers' own loading report off (errors still shown): the callers report the whole load themselves."""
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)


def expected_architecture(preset: str | None, backbone_config) -> list[dict]:
    """`[{"name", "fields"}]`: what a checkpoint must match, from a preset name and / or a backbone config."""
    expected = []
    if preset is not None:
        p = get_preset(preset)
        fields = {"model_type": p.backbone_type, **architecture(preset_config(p))}
        # Only what the preset specifies is compared (its other fields are transformers' defaults).
        keep = {"model_type", *p.backbone_kwargs}
        expected.append({"name": f"preset {p.name!r}", "fields": {k: v for k, v in fields.items() if k in keep}})
    if backbone_config is not None:
        expected.append({"name": "the backbone_config passed", "fields": architecture(backbone_config)})
    return expected


def really_missing(model, missing_keys) -> list[str]:
    """The missing keys that hold values (sorted).

    A zero-size tensor (register_tokens of a ViT without registers) is absent from Meta's files, not missing.
    """
    return sorted(k for k in missing_keys if model.get_parameter_or_buffer(k).numel() > 0)
