"""Named presets for the released DINOv3 backbones, and loading / conversion of their checkpoints.

Everything about *which* DINOv3 checkpoints exist and *how their tensors are named* lives in this file:

* ``PRESETS``: one row per released backbone (architecture, hub id, Meta's original file name, normalisation,
  the layers DINOv3's own segmentation code taps).
* ``get_preset``: look a preset up by short name (``dinov3-vitb16``) or full hub id.
* ``convert_meta_state_dict``: the one function that renames Meta's original DINOv3 ViT keys to transformers' names.
* ``load_dinov3_pretrained``: what ``Mask2FormerDINOv3ForUniversalSegmentation.from_dinov3_pretrained`` runs: a DINOv3
  backbone from the Hub, a local folder or a Meta ``.pth`` file, plus an optional Mask2Former head.
* ``convert_meta_checkpoint`` / ``main``: the ``mask2former-dinov3-convert`` CLI (``.pth`` -> transformers folder).

Only the standard library, torch, transformers, safetensors and huggingface_hub are imported at module level: this
file is copied next to saved checkpoints for ``trust_remote_code`` loading, and the configuration module imports it.

Sources: transformers' DINOv3 conversion script and DINOv3's segmentation code, as summarised in the project's
reference page. Values marked *unverified* below could not be checked against the real checkpoints offline.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    DINOv3ConvNextBackbone,
    DINOv3ConvNextConfig,
    DINOv3ViTBackbone,
    DINOv3ViTConfig,
    DINOv3ViTModel,
    Mask2FormerForUniversalSegmentation,
    PreTrainedConfig,
)


logger = logging.getLogger(__name__)


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
    # Mask2Former head fields sized for this backbone (applied by `from_preset` and `from_dinov3_pretrained` unless the
    # caller or a loaded head sets them); empty = Mask2Former's own defaults.
    head_kwargs: dict = field(default_factory=dict)


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
# Small ViTs: a 3-layer deformable encoder in the pixel decoder instead of Mask2Former's 6 keeps the head cheap next to
# the backbone; the training comparison behind it is in benchmarks/README.md ("Head defaults").
_SMALL_VIT_HEAD = {"encoder_layers": 3}

PRESETS: dict[str, DINOv3Preset] = {
    p.name: p
    for p in [
        _vit("dinov3-vits16", "facebook/dinov3-vits16-pretrain-lvd1689m",
             "dinov3_vits16_pretrain_lvd1689m-08c60483.pth", 384, 12, 6, 1536, False, (2, 5, 8, 11),
             head_kwargs=_SMALL_VIT_HEAD),
        _vit("dinov3-vits16plus", "facebook/dinov3-vits16plus-pretrain-lvd1689m",
             "dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth", 384, 12, 6, 1536, True, (2, 5, 8, 11),
             head_kwargs=_SMALL_VIT_HEAD),
        _vit("dinov3-vitb16", "facebook/dinov3-vitb16-pretrain-lvd1689m",
             "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth", 768, 12, 12, 3072, False, (2, 5, 8, 11),
             head_kwargs=_SMALL_VIT_HEAD),
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


# ---------------------------------------------------------------------------------------------------------------------
# Loading and conversion of DINOv3 checkpoints
# ---------------------------------------------------------------------------------------------------------------------

VIT_TYPE = "dinov3_vit"
CONVNEXT_TYPE = "dinov3_convnext"
_BACKBONE_CLASSES = {VIT_TYPE: DINOv3ViTBackbone, CONVNEXT_TYPE: DINOv3ConvNextBackbone}
_CONFIG_CLASSES = {VIT_TYPE: DINOv3ViTConfig, CONVNEXT_TYPE: DINOv3ConvNextConfig}
_HEAD_TYPES = ("mask2former", "mask2former_dinov3")

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

# Mask2Former fields that fix the shapes of the pixel decoder and transformer decoder: taken from a `head` checkpoint
# unless the caller sets them, so that its tensors fit.
HEAD_ARCHITECTURE_FIELDS = (
    "feature_size", "mask_feature_size", "hidden_dim", "encoder_feedforward_dim", "dim_feedforward", "encoder_layers",
    "decoder_layers", "num_attention_heads", "num_queries", "pre_norm", "enforce_input_projection", "common_stride",
    "activation_function",
)  # fmt: skip
# What `head=` transfers (module paths inside Mask2Former*ForUniversalSegmentation, upstream's and ours alike).
_HEAD_PREFIXES = ("model.pixel_level_module.decoder.", "model.transformer_module.", "class_predictor.")
_CLASS_HEAD_PREFIX = "class_predictor."
_ENCODER_SUFFIX = "pixel_level_module.encoder"


class DINOv3CheckpointError(ValueError):
    """A checkpoint is not a (readable, complete) DINOv3 / Mask2Former checkpoint, or not the architecture expected."""


# --- Meta's original key names -> transformers' (hub layout) ---------------------------------------------------------

# Applied in order, first match wins; as in transformers' DINOv3 conversion script (see the project's facts page).
_META_RENAMES = (
    (r"^cls_token$", "embeddings.cls_token"),
    (r"^mask_token$", "embeddings.mask_token"),
    (r"^storage_tokens$", "embeddings.register_tokens"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embeddings."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"layer.\1.attention.o_proj."),
    (r"^blocks\.(\d+)\.ls([12])\.gamma$", r"layer.\1.layer_scale\2.lambda1"),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"layer.\1.mlp.up_proj."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"layer.\1.mlp.down_proj."),
    (r"^blocks\.(\d+)\.mlp\.w1\.", r"layer.\1.mlp.gate_proj."),  # SwiGLU: w3(silu(w1 x) * w2 x)
    (r"^blocks\.(\d+)\.mlp\.w2\.", r"layer.\1.mlp.up_proj."),
    (r"^blocks\.(\d+)\.mlp\.w3\.", r"layer.\1.mlp.down_proj."),
    (r"^blocks\.(\d+)\.norm([12])\.", r"layer.\1.norm\2."),
    (r"^norm\.", "norm."),
)
_META_QKV = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
_META_DROPPED = (
    (re.compile(r"(^|\.)bias_mask$"), "mask applied to the qkv bias (it zeroes the key bias)"),
    (re.compile(r"^rope_embed\.periods$"), "RoPE periods: transformers recomputes them from rope_theta (checked)"),
    (re.compile(r"^local_cls_norm\."), "not used by the backbone (dropped by transformers' conversion too)"),
)


def convert_meta_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Rename a Meta original DINOv3 ViT state dict to transformers' DINOv3ViT (hub layout: ``layer.N.*``) names.

    Each ``attn.qkv`` is split into ``q_proj`` / ``k_proj`` / ``v_proj``. The qkv bias is multiplied by its
    ``bias_mask`` (what Meta's ``LinearKMaskedBias`` does in forward), after which the key bias is zero and dropped,
    since transformers' DINOv3 has no key bias (a non-zero unmasked key bias is kept: the caller then sets
    ``key_bias=True``). ``mask_token`` gets transformers' ``(1, 1, hidden)`` shape.

    Returns ``(converted, ignored)``: ``ignored`` maps each original key (or key part) left out to the reason. Keys
    that match no rule are passed on unrenamed, so that the loader reports them instead of silently losing them.
    """
    converted: dict[str, torch.Tensor] = {}
    ignored: dict[str, str] = {}
    zero_key_biases: dict[str, tuple[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        drop_reason = next((reason for pattern, reason in _META_DROPPED if pattern.search(key)), None)
        if drop_reason is not None:
            ignored[key] = drop_reason
            continue
        qkv = _META_QKV.match(key)
        if qkv is not None:
            block, kind = qkv.groups()
            if kind == "bias":
                mask = state_dict.get(f"blocks.{block}.attn.qkv.bias_mask")
                if mask is not None:
                    if not torch.isfinite(mask).all():
                        raise DINOv3CheckpointError(
                            f"{key}: its bias_mask holds non-finite values (an uninitialised mask?); cannot tell "
                            f"which parts of the qkv bias are used."
                        )
                    tensor = tensor * mask.to(tensor.dtype)  # x * 1 == x exactly: query/value biases stay bit-equal
            query, key_part, value = tensor.chunk(3, dim=0)
            prefix = f"layer.{block}.attention"
            converted[f"{prefix}.q_proj.{kind}"] = query
            converted[f"{prefix}.v_proj.{kind}"] = value
            if kind == "bias" and not key_part.any():
                ignored[f"{key}[key part]"] = "key bias is zero (masked): transformers' DINOv3 has none"
                zero_key_biases[f"{prefix}.k_proj.bias"] = (f"{key}[key part]", key_part)
            else:
                converted[f"{prefix}.k_proj.{kind}"] = key_part
            continue
        new_key = key
        for pattern, replacement in _META_RENAMES:
            new_key, count = re.subn(pattern, replacement, key, count=1)
            if count:
                break
        if new_key == "embeddings.mask_token" and tensor.dim() == 2:
            tensor = tensor.unsqueeze(1)
        converted[new_key] = tensor
    if any(k.endswith(".k_proj.bias") for k in converted):
        # Some block has a real key bias, so the model will have key_bias=True: every block then needs its own.
        for name, (ignored_key, tensor) in zero_key_biases.items():
            converted[name] = tensor
            del ignored[ignored_key]
    return converted, ignored


@dataclass
class MetaCheckpoint:
    """A Meta ``.pth`` DINOv3 ViT, converted: transformers-named tensors, the inferred config, what was left out."""

    path: str
    state_dict: dict
    config: DINOv3ViTConfig
    preset: str | None
    ignored: dict


def _read_pth(path: str) -> dict:
    """``torch.load(weights_only=True)``, memory-mapped when possible; any failure names the file."""
    errors = []
    # mmap avoids reading a multi-GB file into RAM; files in torch's legacy (non-zip) format cannot be mmapped.
    for mmap in (True, False):
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except Exception as err:  # noqa: BLE001 - torch raises many types for bad files; all are re-raised below
            errors.append(err)
    else:
        raise DINOv3CheckpointError(
            f"Could not read {path} as a DINOv3 checkpoint: expected a state dict of tensors saved with torch.save "
            f"(Meta's original .pth) and readable with torch.load(weights_only=True). The file may be truncated or "
            f"corrupted (re-download it). Error: {type(errors[-1]).__name__}: {errors[-1]}"
        ) from errors[-1]
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise DINOv3CheckpointError(
            f"{path} holds a {type(state_dict).__name__}, not a flat state dict of tensors as Meta's DINOv3 backbone "
            f"files do."
        )
    return state_dict


def _check_meta_vit_keys(path: str, state_dict: dict) -> None:
    keys = list(state_dict)
    required = ("cls_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight")
    if all(k in state_dict for k in required):
        return
    sample = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
    if any(k.startswith("downsample_layers.") or ".dwconv." in k for k in keys):
        hint = (
            " It looks like a DINOv3 ConvNeXt file: only Meta's ViT files can be converted; use the transformers-"
            "format ConvNeXt checkpoints on the Hub (facebook/dinov3-convnext-*-pretrain-lvd1689m)."
        )
    elif "embeddings.cls_token" in state_dict:
        hint = " It looks like transformers' DINOv3 naming: save it with save_pretrained and pass that folder."
    else:
        hint = ""
    raise DINOv3CheckpointError(
        f"{path} is not a Meta DINOv3 ViT checkpoint: expected the original keys {', '.join(required)} "
        f"(and blocks.N.*), found {len(keys)} keys: {sample}.{hint}"
    )


def _infer_vit_fields(path: str, converted: dict) -> dict:
    """The ViT architecture fields that tensor shapes fix (the attention heads and RoPE theta are handled apart)."""
    blocks = sorted({int(m.group(1)) for k in converted if (m := re.match(r"layer\.(\d+)\.", k))})
    if blocks != list(range(len(blocks))):
        missing = sorted(set(range(blocks[-1] + 1)) - set(blocks))
        raise DINOv3CheckpointError(f"{path}: blocks {missing} are missing (highest block is {blocks[-1]}).")
    gated = "layer.0.mlp.gate_proj.weight" in converted
    for key in ("layer.0.mlp.up_proj.weight", "layer.0.attention.q_proj.weight"):
        if key not in converted:
            raise DINOv3CheckpointError(f"{path}: no tensor for {key} after conversion; not a DINOv3 ViT checkpoint.")
    patch = converted["embeddings.patch_embeddings.weight"]
    registers = converted.get("embeddings.register_tokens")
    return {
        "hidden_size": converted["embeddings.cls_token"].shape[-1],
        "num_hidden_layers": len(blocks),
        "intermediate_size": converted["layer.0.mlp.up_proj.weight"].shape[0],
        "use_gated_mlp": gated,
        # All released DINOv3 ViTs pair SwiGLU with SiLU and the plain MLP with GELU (facts page); not in the tensors.
        "hidden_act": "silu" if gated else "gelu",
        "patch_size": patch.shape[-1],
        "num_channels": patch.shape[1],
        "num_register_tokens": registers.shape[1] if registers is not None else 0,
        "query_bias": "layer.0.attention.q_proj.bias" in converted,
        "key_bias": "layer.0.attention.k_proj.bias" in converted,
        "value_bias": "layer.0.attention.v_proj.bias" in converted,
        "proj_bias": "layer.0.attention.o_proj.bias" in converted,
        "mlp_bias": "layer.0.mlp.up_proj.bias" in converted,
    }


def _rope_from_periods(path: str, periods: torch.Tensor, hidden_size: int) -> tuple[int, float]:
    """(num_attention_heads, rope_theta) from DINOv3's RoPE periods: head_dim / 4 values theta ** (4 i / head_dim)."""
    periods = periods.double().flatten()
    head_dim = 4 * periods.numel()
    if hidden_size % head_dim:
        raise DINOv3CheckpointError(
            f"{path}: rope_embed.periods has {periods.numel()} entries (head_dim {head_dim}), which does not divide "
            f"hidden_size {hidden_size}."
        )
    theta = 100.0
    if periods.numel() > 1:
        theta = float(f"{periods[-1].item() ** (head_dim / (4 * (periods.numel() - 1))):.6g}")
    expected = theta ** (4 * torch.arange(periods.numel(), dtype=torch.float64) / head_dim)
    if not torch.allclose(periods, expected, rtol=1e-2):
        raise DINOv3CheckpointError(
            f"{path}: rope_embed.periods are not base ** (4 i / head_dim) for any base; this RoPE variant (min/max "
            f"periods?) is not supported by transformers' DINOv3."
        )
    return hidden_size // head_dim, theta


def _preset_config(preset: DINOv3Preset) -> PreTrainedConfig:
    return AutoConfig.for_model(preset.backbone_type, **preset.backbone_kwargs)


def architecture(config) -> dict:
    """The architecture fields (``ARCHITECTURE_FIELDS``) of a DINOv3 backbone config, plus its ``model_type``."""
    fields = {"model_type": config.model_type}
    for name in ARCHITECTURE_FIELDS.get(config.model_type, ()):
        value = getattr(config, name)
        fields[name] = list(value) if isinstance(value, tuple) else value
    return fields


def _differences(found: dict, expected: dict) -> list[str]:
    return [
        f"{name}: {found.get(name)!r} in the checkpoint vs {value!r} expected"
        for name, value in expected.items()
        if name in found and not _same(found[name], value)
    ]


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= 1e-6 * max(abs(float(a)), abs(float(b)), 1.0)
    return a == b


def _describe(fields: dict) -> str:
    shown = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "use_gated_mlp",
             "hidden_sizes", "depths")  # fmt: skip
    return f"{fields.get('model_type')}(" + ", ".join(f"{k}={fields[k]}" for k in shown if k in fields) + ")"


def _filename_preset(path: str) -> DINOv3Preset | None:
    """The preset whose original file this is by name (the ``-<hash>`` suffix and extension may differ)."""

    def stem(name: str) -> str:
        return Path(name).name.lower().rsplit(".", 1)[0].split("-")[0]

    name = stem(path)
    return next((p for p in PRESETS.values() if p.original_filename and stem(p.original_filename) == name), None)


def load_meta_checkpoint(path: str | os.PathLike, expected: dict | None = None) -> MetaCheckpoint:
    """Read a Meta original DINOv3 ViT ``.pth``, convert its keys and infer its architecture.

    The architecture comes from the tensors: hidden size (``cls_token``), depth (highest ``blocks.N``), gated MLP
    (``w1/w2/w3``), MLP width (``fc1``/``w1``), register tokens, patch size and which biases exist; the attention
    heads and RoPE theta from ``rope_embed.periods``. The result is matched against ``PRESETS`` (a preset supplies
    what tensors cannot tell, e.g. heads when the file has no periods). A file named like a preset's original file
    must have that preset's architecture.

    Args:
        path: the ``.pth`` file.
        expected: ``{"name": ..., "fields": {...}}``, an architecture the caller asked for (a preset or a
            ``backbone_config``): any disagreement raises `DINOv3CheckpointError`.
    """
    path = os.fspath(path)
    raw = _read_pth(path)
    _check_meta_vit_keys(path, raw)
    converted, ignored = convert_meta_state_dict(raw)
    found = {"model_type": VIT_TYPE, **_infer_vit_fields(path, converted)}
    periods = raw.get("rope_embed.periods")
    if periods is not None:
        found["num_attention_heads"], found["rope_theta"] = _rope_from_periods(path, periods, found["hidden_size"])

    named = _filename_preset(path)
    if named is not None:
        named_fields = architecture(_preset_config(named))
        diff = _differences(found, named_fields)
        if diff:
            raise DINOv3CheckpointError(
                f"{path} is named like Meta's {named.original_filename} ({named.name}, {_describe(named_fields)}) "
                f"but its tensors are {_describe(found)}: {'; '.join(diff)}. Was the file renamed or truncated?"
            )
    if expected is not None:
        diff = _differences(found, expected["fields"])
        if diff:
            raise DINOv3CheckpointError(
                f"{path} does not match the requested architecture {expected['name']}: expected "
                f"{_describe(expected['fields'])}, found {_describe(found)} ({'; '.join(diff)})."
            )

    # Fields the tensors cannot tell (layer_norm_eps; heads and theta without periods) come from a matching preset,
    # else from the expectation, else transformers' DINOv3ViTConfig defaults (those of every released ViT).
    matches = [named] if named else [
        p for p in PRESETS.values()
        if p.backbone_type == VIT_TYPE and not _differences(found, architecture(_preset_config(p)))
    ]  # fmt: skip
    base = dict(architecture(DINOv3ViTConfig()))
    if matches:
        base.update(architecture(_preset_config(matches[0])))
    elif expected is not None:
        base.update(expected["fields"])
    elif "num_attention_heads" not in found:
        raise DINOv3CheckpointError(
            f"Cannot tell the number of attention heads of {path}: it has no rope_embed.periods and its shapes "
            f"({_describe(found)}) match no preset. Pass preset=<name> or a backbone_config with num_attention_heads."
        )
    base.update(found)
    base.pop("model_type")
    config = DINOv3ViTConfig(**base)
    return MetaCheckpoint(path, converted, config, matches[0].name if matches else None, ignored)


# --- Locating a backbone / head checkpoint ---------------------------------------------------------------------------


def checkpoint_name(source: str | os.PathLike) -> str:
    """The name recorded in ``config.backbone_checkpoint``: never a local path, so configs stay shareable.

    Hub id -> the id; a folder of the Hub cache (``models--org--name/snapshots/<sha>``) -> ``org/name``; another
    folder -> its name; a file -> its file name.
    """
    source = os.fspath(source)
    if not os.path.exists(source):
        return source  # a hub id (or preset name, resolved by the caller)
    path = Path(source).resolve()
    if path.is_dir() and path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name[len("models--"):].replace("--", "/", 1)
    return path.name


def _looks_like_path(source: str) -> bool:
    """True for strings that can only be meant as local paths (hub ids are ``name`` or ``org/name``)."""
    return (
        source.startswith((".", "/", "~"))
        or "\\" in source
        or source.count("/") > 1
        or source.endswith((".pth", ".pt", ".safetensors", ".bin", ".json"))
    )


def _read_config_dict(source: str, hub_kwargs: dict, role: str) -> dict:
    """``config.json`` of a folder or hub repo, with a clear error for a local folder without one."""
    try:
        config_dict, _ = PreTrainedConfig.get_config_dict(source, **hub_kwargs)
    except OSError as err:
        if os.path.isdir(source):
            raise DINOv3CheckpointError(
                f"{role} folder {source} has no readable config.json: expected a checkpoint saved with "
                f"save_pretrained (config.json + *.safetensors). Error: {err}"
            ) from err
        raise
    except ValueError as err:  # a config.json that is not JSON
        raise DINOv3CheckpointError(f"{role} {source}: its config.json cannot be read ({err}).") from err
    return config_dict


class _DropLoadReports(logging.Filter):
    """Drops transformers' per-call LOAD REPORT: `load_dinov3_pretrained` reports the whole load itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


@contextlib.contextmanager
def _quiet_loading_reports():
    # A filter rather than a level change: transformers branches on this logger's level (tensor-parallel checks).
    transformers_logger = logging.getLogger("transformers.modeling_utils")
    report_filter = _DropLoadReports()
    transformers_logger.addFilter(report_filter)
    try:
        yield
    finally:
        transformers_logger.removeFilter(report_filter)


def _expected_architecture(preset: str | None, backbone_config) -> list[dict]:
    expected = []
    if preset is not None:
        p = get_preset(preset)
        fields = {"model_type": p.backbone_type, **architecture(_preset_config(p))}
        # Only what the preset specifies is compared (its other fields are transformers' defaults).
        keep = {"model_type", *p.backbone_kwargs}
        expected.append({"name": f"preset {p.name!r}", "fields": {k: v for k, v in fields.items() if k in keep}})
    if backbone_config is not None:
        expected.append({"name": "the backbone_config passed", "fields": architecture(backbone_config)})
    return expected


def _as_backbone_config(backbone_config):
    if backbone_config is None or isinstance(backbone_config, PreTrainedConfig):
        return backbone_config
    if isinstance(backbone_config, dict):
        values = dict(backbone_config)
        return AutoConfig.for_model(values.pop("model_type", VIT_TYPE), **values)
    raise TypeError(f"backbone_config must be a DINOv3 config or a dict, got {type(backbone_config).__name__}.")


def _apply_backbone_overrides(config, overrides: dict | None):
    if not overrides:
        return config
    arch = set(ARCHITECTURE_FIELDS.get(config.model_type, ())) | {"model_type"}
    bad = sorted(set(overrides) & arch)
    if bad:
        raise ValueError(
            f"backbone_overrides may not change the architecture ({', '.join(bad)}): it comes from the checkpoint. "
            f"Override only usage settings such as drop_path_rate."
        )
    unknown = sorted(k for k in overrides if not hasattr(config, k))
    if unknown:
        raise ValueError(f"backbone_overrides: {type(config).__name__} has no field(s) {', '.join(unknown)}.")
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def _check_against(source: str, found, expected: list[dict]) -> None:
    found_fields = architecture(found)
    for exp in expected:
        diff = _differences(found_fields, exp["fields"])
        if diff:
            raise DINOv3CheckpointError(
                f"Backbone checkpoint {source} does not match {exp['name']}: expected {_describe(exp['fields'])}, "
                f"the checkpoint is {_describe(found_fields)} ({'; '.join(diff)})."
            )


def _resolve_backbone(backbone, preset, backbone_config, hub_kwargs):
    """Where the backbone comes from and its architecture, before any weight is read (except a .pth's)."""
    source = os.fspath(backbone)
    if not os.path.exists(source):
        if _looks_like_path(source):
            raise FileNotFoundError(
                f"Backbone {source!r} does not exist: expected a hub id (e.g. 'facebook/dinov3-vits16-pretrain-"
                f"lvd1689m'), a DINOv3 preset name, a folder saved with save_pretrained or a Meta .pth file."
            )
        with contextlib.suppress(ValueError):
            source = get_preset(source).hub_id  # "dinov3-vits16" -> its hub id; hub ids map to themselves
    expected = _expected_architecture(preset, backbone_config)

    if os.path.isfile(source):
        if source.endswith((".safetensors", ".json")):
            raise DINOv3CheckpointError(
                f"Backbone {source} is a single file of a transformers checkpoint: pass its folder instead."
            )
        meta = load_meta_checkpoint(source, expected[0] if expected else None)
        _check_against(source, meta.config, expected)
        return {"kind": "pth", "source": source, "config": meta.config, "meta": meta, "preset": meta.preset}

    config_dict = _read_config_dict(source, hub_kwargs, "Backbone")
    model_type = config_dict.get("model_type")
    if model_type not in _CONFIG_CLASSES:
        hint = ""
        if model_type in _HEAD_TYPES:
            hint = " It is a Mask2Former checkpoint: pass it as head=..., or load it with from_pretrained."
        raise DINOv3CheckpointError(
            f"Backbone checkpoint {source} is not a DINOv3 checkpoint: its config.json has model_type "
            f"{model_type!r}, expected 'dinov3_vit' or 'dinov3_convnext' (transformers' DINOv3ViT / DINOv3ConvNext "
            f"format).{hint}"
        )
    config = _CONFIG_CLASSES[model_type].from_dict(config_dict)
    _check_against(source, config, expected)
    matched = next(
        (p.name for p in PRESETS.values()
         if p.backbone_type == model_type and not _differences(architecture(config), architecture(_preset_config(p)))),
        None,
    )  # fmt: skip
    return {"kind": "pretrained", "source": source, "config": config, "preset": matched}


def _load_backbone_weights(resolved, backbone_config, hub_kwargs):
    """Load the weights into a standalone DINOv3 backbone through transformers' own loading (and key mapping)."""
    backbone_class = _BACKBONE_CLASSES[backbone_config.model_type]
    source = resolved["source"]
    kwargs = {"config": copy.deepcopy(backbone_config), "output_loading_info": True, "ignore_mismatched_sizes": True}
    try:
        with _quiet_loading_reports():
            if resolved["kind"] == "pth":
                model, info = backbone_class.from_pretrained(None, state_dict=resolved["meta"].state_dict, **kwargs)
            else:
                model, info = backbone_class.from_pretrained(source, **kwargs, **hub_kwargs)
    except OSError as err:
        if os.path.isdir(source):
            raise DINOv3CheckpointError(
                f"Backbone folder {source} has no readable weights: expected *.safetensors saved by save_pretrained. "
                f"Error: {err}"
            ) from err
        raise  # hub errors (unknown repo, gated, offline) already name the repo
    except Exception as err:  # noqa: BLE001 - safetensors / torch raise many types for bad files
        raise DINOv3CheckpointError(
            f"Could not load the backbone weights of {source}: expected complete DINOv3 weights; the files may be "
            f"truncated or corrupted. Error: {type(err).__name__}: {err}"
        ) from err
    problems = []
    if info["mismatched_keys"]:
        problems.append(
            "shape mismatches: "
            + ", ".join(f"{k} {tuple(a)} in the file vs {tuple(b)} for the architecture"
                        for k, a, b in sorted(info["mismatched_keys"]))  # fmt: skip
        )
    missing = _really_missing(model, info["missing_keys"])
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if problems:
        raise DINOv3CheckpointError(
            f"Backbone checkpoint {source} does not fit its own architecture "
            f"({_describe(architecture(backbone_config))}): {'; '.join(problems)}. The checkpoint is incomplete or "
            f"its config.json does not describe it."
        )
    ignored = {k: "not part of the DINOv3 backbone" for k in sorted(info["unexpected_keys"])}
    if resolved["kind"] == "pth":
        ignored = {**resolved["meta"].ignored, **ignored}
    return model, ignored


def _really_missing(model, missing_keys) -> list[str]:
    # A zero-size tensor (register_tokens of a ViT without registers) is absent from Meta's files, not missing.
    return sorted(k for k in missing_keys if model.get_parameter_or_buffer(k).numel() > 0)


def _encoder_prefix(model) -> str:
    for name, _ in model.named_modules():
        if name == _ENCODER_SUFFIX or name.endswith("." + _ENCODER_SUFFIX):
            return name + "."
    raise TypeError(f"{type(model).__name__} has no {_ENCODER_SUFFIX} module; not a Mask2FormerDINOv3 model.")


def _labels(id2label) -> dict[int, str]:
    return {int(k): v for k, v in (id2label or {}).items()}


def _resolve_head(head, hub_kwargs) -> tuple[str, dict]:
    source = os.fspath(head)
    config_dict = _read_config_dict(source, hub_kwargs, "Head")
    if config_dict.get("model_type") not in _HEAD_TYPES:
        raise DINOv3CheckpointError(
            f"Head checkpoint {source} is not a Mask2Former checkpoint: its config.json has model_type "
            f"{config_dict.get('model_type')!r}, expected one of {', '.join(map(repr, _HEAD_TYPES))} (e.g. "
            f"facebook/mask2former-swin-small-coco-instance, or a Mask2FormerDINOv3 checkpoint)."
        )
    return source, config_dict


def _transfer_head(model, model_class, source, config_dict, hub_kwargs):
    """Copy the head checkpoint's decoder tensors that fit; returns (loaded keys, ignored, skipped)."""
    head_class = Mask2FormerForUniversalSegmentation if config_dict["model_type"] == "mask2former" else model_class
    try:
        with _quiet_loading_reports():
            head_model, head_info = head_class.from_pretrained(source, output_loading_info=True, **hub_kwargs)
    except OSError:
        raise  # a missing hub repo / file: transformers' message names it
    except Exception as err:  # noqa: BLE001 - safetensors / torch raise many types for bad files
        raise DINOv3CheckpointError(
            f"Could not load the head checkpoint {source}: expected a complete Mask2Former checkpoint. "
            f"Error: {type(err).__name__}: {err}"
        ) from err
    head_state = head_model.state_dict()
    target = model.state_dict()
    labels_match = _labels(head_model.config.id2label) == _labels(model.config.id2label)
    not_in_checkpoint = set(head_info["missing_keys"]) | {k for k, *_ in head_info["mismatched_keys"]}
    loaded, ignored, skipped = [], {}, {}
    with torch.no_grad():
        for key, tensor in head_state.items():
            if not key.startswith(_HEAD_PREFIXES):
                ignored[f"head:{key}"] = "not transferred (head= takes the pixel/transformer decoders, class head)"
            elif key in not_in_checkpoint:
                skipped[key] = "not in the head checkpoint (left as initialised)"
            elif key not in target:
                skipped[key] = "no such tensor in this model (its decoder is configured differently)"
            elif key.startswith(_CLASS_HEAD_PREFIX) and not labels_match:
                skipped[key] = (
                    f"label set differs: head has {head_model.config.num_labels} labels, this model "
                    f"{model.config.num_labels} (class head left as initialised)"
                )
            elif tensor.shape != target[key].shape:
                skipped[key] = f"shape {tuple(tensor.shape)} in the head vs {tuple(target[key].shape)} in this model"
            else:
                target[key].copy_(tensor)
                loaded.append(key)
    return loaded, ignored, skipped


def load_dinov3_pretrained(
    model_class,
    backbone: str | os.PathLike,
    head: str | os.PathLike | None = None,
    *,
    preset: str | None = None,
    backbone_overrides: dict | None = None,
    hub_kwargs: dict | None = None,
    output_loading_info: bool = False,
    **config_kwargs,
):
    """Build ``model_class`` with pretrained DINOv3 backbone weights and, optionally, a pretrained Mask2Former head.

    This is ``Mask2FormerDINOv3ForUniversalSegmentation.from_dinov3_pretrained``; see its docstring for the arguments.
    Returns the model in eval mode (as ``from_pretrained`` does), or ``(model, info)`` with ``output_loading_info``.
    """
    hub_kwargs = dict(hub_kwargs or {})
    backbone_config = _as_backbone_config(config_kwargs.pop("backbone_config", None))
    if "backbone" in config_kwargs:
        raise TypeError("Pass the backbone checkpoint as the first argument, not as backbone=.")
    resolved = _resolve_backbone(backbone, preset, backbone_config, hub_kwargs)
    # The architecture is the checkpoint's; a matching backbone_config from the caller is used as given (it may carry
    # usage settings such as drop_path_rate).
    final_backbone = copy.deepcopy(backbone_config if backbone_config is not None else resolved["config"])
    _apply_backbone_overrides(final_backbone, backbone_overrides)

    head_source = head_config = None
    # The preset's head sizing, unless a head checkpoint brings its own architecture or the caller sets it.
    kwargs = dict(PRESETS[resolved["preset"]].head_kwargs) if resolved["preset"] and head is None else {}
    if head is not None:
        head_source, head_config = _resolve_head(head, hub_kwargs)
        # Decoder shapes (and, unless the caller sets labels, the label set) follow the head, so that its tensors fit.
        kwargs.update({k: head_config[k] for k in HEAD_ARCHITECTURE_FIELDS if k in head_config})
        if not {"num_labels", "id2label", "label2id"} & set(config_kwargs) and "id2label" in head_config:
            kwargs["id2label"] = _labels(head_config["id2label"])
    kwargs.update(config_kwargs)
    name_source = backbone if resolved["kind"] == "pth" else resolved["source"]
    kwargs.setdefault("backbone_checkpoint", checkpoint_name(name_source))
    config = model_class.config_class(backbone_config=final_backbone, **kwargs)

    loaded_backbone, ignored = _load_backbone_weights(resolved, config.backbone_config, hub_kwargs)
    resolved.pop("meta", None)  # free the converted .pth tensors before the full model is built
    model = model_class(config)
    prefix = _encoder_prefix(model)
    backbone_state = loaded_backbone.state_dict()
    model.get_submodule(prefix[:-1]).load_state_dict(backbone_state, strict=True)
    loaded = [prefix + k for k in backbone_state]
    del loaded_backbone, backbone_state

    skipped = {}
    if head_source is not None:
        head_loaded, head_ignored, skipped = _transfer_head(model, model_class, head_source, head_config, hub_kwargs)
        loaded += head_loaded
        ignored.update(head_ignored)
    loaded_set = set(loaded)
    # The loss's class-weight buffer is derived from the config, not learned: not worth reporting.
    initialized = [k for k in model.state_dict() if k not in loaded_set and not k.startswith("criterion.")]
    model.eval()
    info = {
        "backbone_checkpoint": config.backbone_checkpoint,
        "backbone_preset": resolved["preset"],
        "head_checkpoint": checkpoint_name(head_source) if head_source is not None else None,
        "loaded": sorted(loaded),
        "initialized": sorted(initialized),
        "ignored": ignored,
        "skipped": skipped,
    }
    logger.warning(_report(info, prefix))
    return (model, info) if output_loading_info else model


def _report(info: dict, encoder_prefix: str) -> str:
    def groups(keys):
        # "model.pixel_level_module.decoder.encoder.layers.0.x" -> "model.pixel_level_module.decoder",
        # "model.transformer_module.decoder.layers.0.x" -> "model.transformer_module"
        counts = {}
        for key in keys:
            depth = 3 if key.startswith("model.pixel_level_module.") else 2 if key.startswith("model.") else 1
            group = ".".join(key.split(".")[:depth])
            counts[group] = counts.get(group, 0) + 1
        return ", ".join(f"{g} ({n})" for g, n in sorted(counts.items()))

    def sample(mapping, n=3):
        items = list(mapping.items())[:n]
        more = f", ... ({len(mapping) - n} more)" if len(mapping) > n else ""
        return "; ".join(f"{k}: {v}" for k, v in items) + more

    n_backbone = sum(k.startswith(encoder_prefix) for k in info["loaded"])
    preset = f" [{info['backbone_preset']}]" if info["backbone_preset"] else ""
    lines = [
        "from_dinov3_pretrained:",
        f"  backbone {info['backbone_checkpoint']}{preset}: {n_backbone} tensors loaded",
    ]
    if info["head_checkpoint"]:
        lines.append(f"  head {info['head_checkpoint']}: {len(info['loaded']) - n_backbone} tensors loaded")
    if info["skipped"]:
        lines.append(f"  skipped ({len(info['skipped'])}): {sample(info['skipped'])}")
    backbone_ignored = {k: v for k, v in info["ignored"].items() if not k.startswith("head:")}
    if backbone_ignored:
        lines.append(f"  ignored from the backbone checkpoint ({len(backbone_ignored)}): {sample(backbone_ignored)}")
    head_ignored = len(info["ignored"]) - len(backbone_ignored)
    if head_ignored:
        lines.append(f"  ignored from the head checkpoint: {head_ignored} tensors (its backbone, loss buffers, ...)")
    lines.append(
        f"  newly initialised ({len(info['initialized'])}, to be trained): {groups(info['initialized']) or 'none'}"
    )
    return "\n".join(lines)


# --- Conversion CLI --------------------------------------------------------------------------------------------------


def convert_meta_checkpoint(
    path: str | os.PathLike, output_dir: str | os.PathLike, *, preset: str | None = None, overwrite: bool = False
) -> dict:
    """Convert a Meta original DINOv3 ViT ``.pth`` into a transformers DINOv3ViT folder (config.json + safetensors).

    The folder is what ``DINOv3ViTModel.save_pretrained`` writes (hub layout, the source's dtype), so
    ``DINOv3ViTModel.from_pretrained(folder)`` and ``from_dinov3_pretrained(folder)`` load it. Returns a summary.
    """
    path, output_dir = os.fspath(path), os.fspath(output_dir)
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; pass --overwrite to replace its files.")
    expected = _expected_architecture(preset, None)
    meta = load_meta_checkpoint(path, expected[0] if expected else None)
    dtype = next((t.dtype for t in meta.state_dict.values() if t.is_floating_point()), torch.float32)
    with _quiet_loading_reports():
        model, info = DINOv3ViTModel.from_pretrained(
            None, config=meta.config, state_dict=meta.state_dict, dtype=dtype, output_loading_info=True,
            ignore_mismatched_sizes=True,
        )  # fmt: skip
    problems = _really_missing(model, info["missing_keys"]) + [k for k, *_ in sorted(info["mismatched_keys"])]
    unexpected = sorted(info["unexpected_keys"])
    if problems or unexpected:
        raise DINOv3CheckpointError(
            f"{path} does not convert cleanly: missing or mis-shaped {problems or 'none'}; unrecognised keys "
            f"{unexpected or 'none'}."
        )
    model.save_pretrained(output_dir)
    return {
        "source": path,
        "output_dir": output_dir,
        "preset": meta.preset,
        "architecture": _describe(architecture(meta.config)),
        "dtype": str(dtype).replace("torch.", ""),
        "tensors": len(model.state_dict()),
        "ignored": meta.ignored,
    }


def main(argv: list[str] | None = None) -> int:
    """``mask2former-dinov3-convert``: Meta's original DINOv3 ViT ``.pth`` -> transformers-format folder."""
    parser = argparse.ArgumentParser(
        prog="mask2former-dinov3-convert",
        description=(
            "Convert a Meta original DINOv3 ViT checkpoint (.pth, e.g. dinov3_vits16_pretrain_lvd1689m-08c60483.pth) "
            "into a transformers DINOv3ViT folder (config.json + model.safetensors) for "
            "DINOv3ViTModel.from_pretrained and Mask2FormerDINOv3ForUniversalSegmentation.from_dinov3_pretrained. "
            "The architecture is inferred from the tensors."
        ),
    )
    parser.add_argument("checkpoint", help="Meta .pth file")
    parser.add_argument("output_dir", help="folder to write (created if missing)")
    parser.add_argument(
        "--preset",
        help=f"fail unless the file has this architecture ({', '.join(p for p in PRESETS if 'vit' in p)})",
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output_dir")
    args = parser.parse_args(argv)
    try:
        summary = convert_meta_checkpoint(
            args.checkpoint, args.output_dir, preset=args.preset, overwrite=args.overwrite
        )
    except (DINOv3CheckpointError, FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"Converted {summary['source']} -> {summary['output_dir']}\n"
        f"  architecture: {summary['architecture']} (preset: {summary['preset'] or 'none matches'})\n"
        f"  {summary['tensors']} tensors written as {summary['dtype']}; "
        f"{len(summary['ignored'])} original entries left out (bias masks, RoPE periods, zero key biases)"
    )
    return 0


__all__ = [
    "ARCHITECTURE_FIELDS",
    "DINOv3CheckpointError",
    "DINOv3Preset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MetaCheckpoint",
    "PRESETS",
    "architecture",
    "checkpoint_name",
    "convert_meta_checkpoint",
    "convert_meta_state_dict",
    "get_preset",
    "load_dinov3_pretrained",
    "load_meta_checkpoint",
    "main",
]


if __name__ == "__main__":
    sys.exit(main())
