"""Pretrained DINOv3 weights into a Mask2FormerDINOv3 model: `from_dinov3_pretrained`'s implementation.

* `load_dinov3_pretrained`: a DINOv3 backbone from the Hub, a local folder (transformers' DINOv3ViT / DINOv3ConvNext
  format) or a Meta `.pth` file (through `mask2former_dinov3.convert`), plus an optional Mask2Former head whose
  decoder tensors are transferred where they fit; a report of what was loaded, ignored and newly initialised.
* `architecture` / `ARCHITECTURE_FIELDS`: what makes two DINOv3 backbones the same architecture, so that a checkpoint
  that does not match the requested preset or config is refused with `DINOv3CheckpointError` (a `ValueError`).

Not imported by the model code, so it is not copied next to saved checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    DINOv3ConvNextBackbone,
    DINOv3ConvNextConfig,
    DINOv3ViTBackbone,
    DINOv3ViTConfig,
    Mask2FormerForUniversalSegmentation,
    PreTrainedConfig,
)

from .checkpoint_architecture import (
    ARCHITECTURE_FIELDS,
    DINOv3CheckpointError,
    architecture,
    architecture_differences,
    describe_architecture,
    expected_architecture,
    preset_config,
    quiet_loading_reports,
    really_missing,
)
from .presets import CONVNEXT_TYPE, PRESETS, VIT_TYPE, get_preset

logger = logging.getLogger(__name__)

_BACKBONE_CLASSES = {VIT_TYPE: DINOv3ViTBackbone, CONVNEXT_TYPE: DINOv3ConvNextBackbone}
_CONFIG_CLASSES = {VIT_TYPE: DINOv3ViTConfig, CONVNEXT_TYPE: DINOv3ConvNextConfig}
_HEAD_TYPES = ("mask2former", "mask2former_dinov3")

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


def looks_like_path(source: str) -> bool:
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
        diff = architecture_differences(found_fields, exp["fields"])
        if diff:
            raise DINOv3CheckpointError(
                f"Backbone checkpoint {source} does not match {exp['name']}: expected {describe_architecture(exp['fields'])}, "
                f"the checkpoint is {describe_architecture(found_fields)} ({'; '.join(diff)})."
            )


def _resolve_backbone(backbone, preset, backbone_config, hub_kwargs):
    """Where the backbone comes from and its architecture, before any weight is read (except a .pth's)."""
    source = os.fspath(backbone)
    if not os.path.exists(source):
        if looks_like_path(source):
            raise FileNotFoundError(
                f"Backbone {source!r} does not exist: expected a hub id (e.g. 'facebook/dinov3-vits16-pretrain-"
                f"lvd1689m'), a DINOv3 preset name, a folder saved with save_pretrained or a Meta .pth file."
            )
        with contextlib.suppress(ValueError):
            source = get_preset(source).hub_id  # "dinov3-vits16" -> its hub id; hub ids map to themselves
    expected = expected_architecture(preset, backbone_config)

    if os.path.isfile(source):
        if source.endswith((".safetensors", ".json")):
            raise DINOv3CheckpointError(
                f"Backbone {source} is a single file of a transformers checkpoint: pass its folder instead."
            )
        # Imported here: the conversion module builds on this one's architecture checks.
        from .convert import load_meta_checkpoint

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
         if p.backbone_type == model_type and not architecture_differences(architecture(config), architecture(preset_config(p)))),
        None,
    )  # fmt: skip
    return {"kind": "pretrained", "source": source, "config": config, "preset": matched}


def _load_backbone_weights(resolved, backbone_config, hub_kwargs):
    """Load the weights into a standalone DINOv3 backbone through transformers' own loading (and key mapping)."""
    backbone_class = _BACKBONE_CLASSES[backbone_config.model_type]
    source = resolved["source"]
    kwargs = {"config": copy.deepcopy(backbone_config), "output_loading_info": True, "ignore_mismatched_sizes": True}
    try:
        with quiet_loading_reports():
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
    missing = really_missing(model, info["missing_keys"])
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if problems:
        raise DINOv3CheckpointError(
            f"Backbone checkpoint {source} does not fit its own architecture "
            f"({describe_architecture(architecture(backbone_config))}): {'; '.join(problems)}. The checkpoint is incomplete or "
            f"its config.json does not describe it."
        )
    ignored = {k: "not part of the DINOv3 backbone" for k in sorted(info["unexpected_keys"])}
    if resolved["kind"] == "pth":
        ignored = {**resolved["meta"].ignored, **ignored}
    return model, ignored


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
        with quiet_loading_reports():
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


__all__ = [
    "ARCHITECTURE_FIELDS",
    "DINOv3CheckpointError",
    "HEAD_ARCHITECTURE_FIELDS",
    "architecture",
    "checkpoint_name",
    "looks_like_path",
    "load_dinov3_pretrained",
]
