"""Meta's original DINOv3 ViT `.pth` files: key remapping, reading, conversion to a transformers folder, and the CLI.

* `convert_meta_state_dict`: the one function that renames Meta's original DINOv3 ViT keys to transformers' names.
* `load_meta_checkpoint`: read a `.pth` (`torch.load(weights_only=True)`), convert it and infer its architecture.
* `convert_meta_checkpoint` / `main`: the `mask2former-dinov3-convert` CLI (`.pth` -> transformers DINOv3ViT
  folder); also `python -m mask2former_dinov3.convert`.

Not imported by the model code, so it is not copied next to saved checkpoints.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from .checkpoint_architecture import (
    DINOv3CheckpointError,
    architecture,
    architecture_differences,
    describe_architecture,
    expected_architecture,
    preset_config,
    quiet_loading_reports,
    really_missing,
)
from .presets import PRESETS, VIT_TYPE, DINOv3Preset

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
        named_fields = architecture(preset_config(named))
        diff = architecture_differences(found, named_fields)
        if diff:
            raise DINOv3CheckpointError(
                f"{path} is named like Meta's {named.original_filename} ({named.name}, {describe_architecture(named_fields)}) "
                f"but its tensors are {describe_architecture(found)}: {'; '.join(diff)}. Was the file renamed or truncated?"
            )
    if expected is not None:
        diff = architecture_differences(found, expected["fields"])
        if diff:
            raise DINOv3CheckpointError(
                f"{path} does not match the requested architecture {expected['name']}: expected "
                f"{describe_architecture(expected['fields'])}, found {describe_architecture(found)} ({'; '.join(diff)})."
            )

    # Fields the tensors cannot tell (layer_norm_eps; heads and theta without periods) come from a matching preset,
    # else from the expectation, else transformers' DINOv3ViTConfig defaults (those of every released ViT).
    matches = [named] if named else [
        p for p in PRESETS.values()
        if p.backbone_type == VIT_TYPE and not architecture_differences(found, architecture(preset_config(p)))
    ]  # fmt: skip
    base = dict(architecture(DINOv3ViTConfig()))
    if matches:
        base.update(architecture(preset_config(matches[0])))
    elif expected is not None:
        base.update(expected["fields"])
    elif "num_attention_heads" not in found:
        raise DINOv3CheckpointError(
            f"Cannot tell the number of attention heads of {path}: it has no rope_embed.periods and its shapes "
            f"({describe_architecture(found)}) match no preset. Pass preset=<name> or a backbone_config with num_attention_heads."
        )
    base.update(found)
    base.pop("model_type")
    config = DINOv3ViTConfig(**base)
    return MetaCheckpoint(path, converted, config, matches[0].name if matches else None, ignored)


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
    expected = expected_architecture(preset, None)
    meta = load_meta_checkpoint(path, expected[0] if expected else None)
    dtype = next((t.dtype for t in meta.state_dict.values() if t.is_floating_point()), torch.float32)
    with quiet_loading_reports():
        model, info = DINOv3ViTModel.from_pretrained(
            None, config=meta.config, state_dict=meta.state_dict, dtype=dtype, output_loading_info=True,
            ignore_mismatched_sizes=True,
        )  # fmt: skip
    problems = really_missing(model, info["missing_keys"]) + [k for k, *_ in sorted(info["mismatched_keys"])]
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
        "architecture": describe_architecture(architecture(meta.config)),
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


__all__ = ["MetaCheckpoint", "convert_meta_checkpoint", "convert_meta_state_dict", "load_meta_checkpoint", "main"]


if __name__ == "__main__":
    sys.exit(main())
