"""Pretrained weights: DINOv3 backbones from hub-layout folders, Meta .pth files and the Hub cache; head transfer; CLI.

Every checkpoint is built here, offline, in its real on-disk layout: tiny DINOv3 models written by `save_pretrained`
(`layer.N.*` / `stages.K.*` keys), Meta-format `.pth` files written through an inverse key mapping defined in this file
(fused `qkv`, `blocks.N`, `ls1/ls2`, `storage_tokens`, `bias_mask`, `rope_embed.periods`), and a tiny upstream
Mask2Former (Swin) checkpoint.
"""

import json
import logging
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from tiny_configs import tiny_backbone_config, tiny_config
from transformers import (
    DINOv3ConvNextModel,
    DINOv3ViTModel,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    SwinConfig,
    SwinModel,
)

from mask2former_dinov3 import Mask2FormerDINOv3Config, Mask2FormerDINOv3ForUniversalSegmentation, get_preset
from mask2former_dinov3.convert import convert_meta_checkpoint, main
from mask2former_dinov3.loading import DINOv3CheckpointError, architecture, checkpoint_name


M2F = Mask2FormerDINOv3ForUniversalSegmentation
ENCODER = "model.pixel_level_module.encoder."
# The decoder sizes of the shared tiny config (labels are set per test).
_TINY = tiny_config()
DECODER_KWARGS = {
    k: getattr(_TINY, k)
    for k in ("feature_size", "mask_feature_size", "hidden_dim", "encoder_feedforward_dim", "dim_feedforward",
              "encoder_layers", "decoder_layers", "num_attention_heads", "num_queries", "train_num_points")
}  # fmt: skip
TINY_KWARGS = {**DECODER_KWARGS, "num_labels": 3}
HEAD_PREFIXES = ("model.pixel_level_module.decoder.", "model.transformer_module.", "class_predictor.")


def randomize_(model, seed):
    """Random values everywhere (biases, layer scales, norms, tokens too), so that no mapping error can hide behind
    a constant initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model.eval()


def image(seed=0, size=64):
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def vit_source_features(source, pixel_values, taps):
    """What the DINOv3 ViT source model gives for the tapped blocks: final-normed patch tokens as (B, C, H, W) maps."""
    with torch.no_grad():
        out = source(pixel_values, output_hidden_states=True)
        prefix = 1 + source.config.num_register_tokens
        side = pixel_values.shape[-1] // source.config.patch_size
        maps = []
        for t in taps:
            tokens = source.norm(out.hidden_states[t + 1])[:, prefix:]
            maps.append(tokens.reshape(1, side, side, -1).permute(0, 3, 1, 2))
    return maps


def encoder_features(model, pixel_values):
    with torch.no_grad():
        return list(model.get_submodule(ENCODER[:-1])(pixel_values).feature_maps)


def assert_backbone_equals(model, source):
    """Every tensor of the model's backbone equals the source model's tensor of the same (in-memory) name."""
    source_state = source.state_dict()
    encoder_state = model.get_submodule(ENCODER[:-1]).state_dict()
    assert encoder_state, "empty backbone"
    for key, tensor in encoder_state.items():
        assert torch.equal(tensor, source_state[key]), key


def safetensors_keys(folder):
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        return set(f.keys())


# --- Inverse key mapping: transformers (hub layout) -> Meta's original names. Test-only, on purpose. ----------------


def to_meta(state_dict, config, masked_key_bias=False):
    """Meta's original DINOv3 ViT state dict from a transformers one (`layer.N.*` or in-memory `model.layer.N.*`).

    q/k/v are fused into `qkv` with a `bias_mask` (ones, zeros, ones); the key-bias chunk is zero, or random when
    `masked_key_bias` (only the mask then keeps it out of the computation). A model with `key_bias=True` gets its
    real key bias and no mask. `rope_embed.periods` is added.
    """
    mlp = {"gate_proj": "w1", "up_proj": "w2", "down_proj": "w3"} if config.use_gated_mlp else {
        "up_proj": "fc1", "down_proj": "fc2"
    }
    out, qkv = {}, {}
    for key, tensor in state_dict.items():
        layer = re.match(r"^(?:model\.)?layer\.(\d+)\.(.+)$", key)
        if layer is None:
            name = {
                "embeddings.cls_token": "cls_token",
                "embeddings.mask_token": "mask_token",
                "embeddings.register_tokens": "storage_tokens",
            }.get(key, key.replace("embeddings.patch_embeddings.", "patch_embed.proj."))
            if name == "mask_token":
                tensor = tensor.squeeze(1)  # Meta stores (1, hidden)
            if name == "storage_tokens" and tensor.shape[1] == 0:
                continue  # no register tokens: Meta's model has no storage_tokens parameter then
            out[name] = tensor
            continue
        block, rest = layer.groups()
        attn = re.match(r"attention\.([qkv])_proj\.(weight|bias)$", rest)
        if attn is not None:
            qkv[(int(block), attn.group(1), attn.group(2))] = tensor
            continue
        rest = rest.replace("attention.o_proj.", "attn.proj.")
        rest = re.sub(r"^layer_scale([12])\.lambda1$", r"ls\1.gamma", rest)
        rest = re.sub(r"^mlp\.(\w+)\.", lambda m: f"mlp.{mlp[m.group(1)]}.", rest)
        out[f"blocks.{block}.{rest}"] = tensor
    for block in range(config.num_hidden_layers):
        q, k, v = (qkv[(block, p, "weight")] for p in "qkv")
        out[f"blocks.{block}.attn.qkv.weight"] = torch.cat([q, k, v])
        if (block, "q", "bias") in qkv:
            q_bias, v_bias = qkv[(block, "q", "bias")], qkv[(block, "v", "bias")]
            if config.key_bias:  # a plain nn.Linear qkv (no LinearKMaskedBias): the key bias is real, no mask
                out[f"blocks.{block}.attn.qkv.bias"] = torch.cat([q_bias, qkv[(block, "k", "bias")], v_bias])
                continue
            k_bias = torch.randn_like(q_bias) if masked_key_bias else torch.zeros_like(q_bias)
            out[f"blocks.{block}.attn.qkv.bias"] = torch.cat([q_bias, k_bias, v_bias])
            ones = torch.ones_like(q_bias)
            out[f"blocks.{block}.attn.qkv.bias_mask"] = torch.cat([ones, torch.zeros_like(q_bias), ones])
    head_dim = config.hidden_size // config.num_attention_heads
    out["rope_embed.periods"] = config.rope_theta ** (
        4 * torch.arange(head_dim // 4, dtype=torch.float32) / head_dim
    )
    return out


PTH_VARIANTS = {
    # name: (backbone config overrides, masked random key bias)
    "plain": ({}, True),
    "gated_theta1000": ({"use_gated_mlp": True, "hidden_act": "silu", "num_attention_heads": 4, "rope_theta": 1000.0,
                         "intermediate_size": 48}, False),  # fmt: skip
    "no_qv_bias_no_registers": ({"use_gated_mlp": True, "hidden_act": "silu", "query_bias": False,
                                 "value_bias": False, "num_register_tokens": 0}, False),  # fmt: skip
    "unmasked_key_bias": ({"key_bias": True}, False),
}


# --- Fixtures --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Every source checkpoint, built once: {name: (path, source model)}."""
    root = tmp_path_factory.mktemp("ckpts")
    built = {}

    vit = randomize_(DINOv3ViTModel(tiny_backbone_config("vit")), seed=1)
    vit.save_pretrained(root / "dinov3-vit-tiny")
    built["vit"] = (str(root / "dinov3-vit-tiny"), vit)

    convnext = randomize_(DINOv3ConvNextModel(tiny_backbone_config("convnext")), seed=2)
    convnext.save_pretrained(root / "dinov3-convnext-tiny")
    built["convnext"] = (str(root / "dinov3-convnext-tiny"), convnext)

    for i, (name, (overrides, masked)) in enumerate(PTH_VARIANTS.items()):
        source = randomize_(DINOv3ViTModel(tiny_backbone_config("vit", **overrides)), seed=10 + i)
        path = root / f"tiny_{name}.pth"
        torch.save(to_meta(source.state_dict(), source.config, masked_key_bias=masked), path)
        built[f"pth_{name}"] = (str(path), source)

    # Upstream Mask2Former + Swin whose stage widths (16..128) equal the tiny ConvNeXt's: with the ConvNeXt identity
    # adapter every decoder tensor fits, with the ViT adapter the input projections do not.
    swin = SwinConfig(
        embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 4], window_size=2, image_size=64,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    labels = {0: "cat", 1: "dog", 2: "car", 3: "tree"}
    head = Mask2FormerForUniversalSegmentation(
        Mask2FormerConfig(backbone_config=swin, id2label=labels, **{**DECODER_KWARGS, "num_queries": 7})
    )
    randomize_(head, seed=3)
    head.save_pretrained(root / "mask2former-swin-tiny")
    built["head"] = (str(root / "mask2former-swin-tiny"), head)

    swin_model = SwinModel(swin)
    swin_model.save_pretrained(root / "swin-tiny")
    built["swin"] = (str(root / "swin-tiny"), swin_model)
    return built


def load(source, **kwargs):
    """from_dinov3_pretrained with the tiny decoder, returning (model, info)."""
    return M2F.from_dinov3_pretrained(source, output_loading_info=True, **{**TINY_KWARGS, **kwargs})


# --- Backbones in each real layout -----------------------------------------------------------------------------------


def test_vit_hub_layout_folder(ckpts):
    folder, source = ckpts["vit"]
    # The fixture really is the hub layout: `layer.N.*`, no in-memory `model.` prefix.
    keys = safetensors_keys(folder)
    assert "layer.0.attention.q_proj.weight" in keys and not any(k.startswith("model.") for k in keys)

    torch.manual_seed(0)
    model, info = load(folder)
    assert_backbone_equals(model, source)
    taps = model.config.tapped_layers
    for ours, theirs in zip(encoder_features(model, image()), vit_source_features(source, image(), taps)):
        assert torch.equal(ours, theirs)

    encoder_keys = {ENCODER + k for k in model.get_submodule(ENCODER[:-1]).state_dict()}
    assert set(info["loaded"]) == encoder_keys
    assert not encoder_keys & set(info["initialized"])
    assert any(k.startswith("model.pixel_level_module.adapter.") for k in info["initialized"])
    assert any(k.startswith("class_predictor.") for k in info["initialized"])
    assert info["ignored"] == {} and info["skipped"] == {}
    # Name only, never the absolute path.
    assert model.config.backbone_checkpoint == "dinov3-vit-tiny"
    assert model.config.backbone_config.hidden_size == source.config.hidden_size
    assert not model.training


def test_convnext_hub_layout_folder(ckpts):
    folder, source = ckpts["convnext"]
    assert "stages.0.layers.0.depthwise_conv.weight" in safetensors_keys(folder)

    model, info = load(folder)
    assert_backbone_equals(model, source)
    with torch.no_grad():
        expected = source(image(), output_hidden_states=True).hidden_states[1:]  # [0] is the input
    for ours, theirs in zip(encoder_features(model, image()), expected, strict=True):
        assert torch.equal(ours, theirs)
    # DINOv3ConvNextModel's final norm is not part of the backbone: reported, not silently dropped.
    assert set(info["ignored"]) == {"layer_norm.weight", "layer_norm.bias"}
    assert model.config.backbone_config.model_type == "dinov3_convnext"
    assert model.config.backbone_checkpoint == "dinov3-convnext-tiny"


@pytest.mark.parametrize("variant", list(PTH_VARIANTS))
def test_meta_pth(ckpts, variant):
    path, source = ckpts[f"pth_{variant}"]
    raw = torch.load(path, weights_only=True)
    # The fixture has Meta's layout.
    assert "blocks.0.attn.qkv.weight" in raw and "blocks.0.ls1.gamma" in raw and "cls_token" in raw
    assert not any(k.startswith(("layer.", "embeddings.")) for k in raw)

    model, info = load(path)
    assert_backbone_equals(model, source)
    taps = model.config.tapped_layers
    for ours, theirs in zip(encoder_features(model, image()), vit_source_features(source, image(), taps)):
        assert torch.equal(ours, theirs)

    # Heads, theta, gating, biases and registers were inferred from the tensors (none is the tiny default here).
    inferred = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "use_gated_mlp",
                "hidden_act", "query_bias", "value_bias", "key_bias", "num_register_tokens", "rope_theta")  # fmt: skip
    for field in inferred:
        assert getattr(model.config.backbone_config, field) == getattr(source.config, field), field
    assert model.config.backbone_checkpoint == os.path.basename(path)
    assert info["backbone_preset"] is None
    assert "rope_embed.periods" in info["ignored"]
    if source.config.query_bias and not source.config.key_bias:
        assert "blocks.0.attn.qkv.bias_mask" in info["ignored"]
        assert "blocks.0.attn.qkv.bias[key part]" in info["ignored"]


def test_hub_id_through_the_hub_cache(ckpts, tmp_path):
    """A hub id goes through transformers' download machinery: served here from a local Hub cache, offline."""
    folder, source = ckpts["vit"]
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--acme--dinov3-vit-tiny"
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes(open(os.path.join(folder, name), "rb").read())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)

    hub_kwargs = {"cache_dir": str(tmp_path), "local_files_only": True}
    model, info = load("acme/dinov3-vit-tiny", hub_kwargs=hub_kwargs)
    assert_backbone_equals(model, source)
    assert model.config.backbone_checkpoint == "acme/dinov3-vit-tiny"
    # A snapshot folder passed as a path is named by its repo, not by the commit hash.
    assert checkpoint_name(str(snapshot)) == "acme/dinov3-vit-tiny"


def test_backbone_config_and_overrides(ckpts):
    folder, source = ckpts["vit"]
    # A matching backbone_config is accepted and used with its usage settings; overrides set non-architecture fields.
    matching = tiny_backbone_config("vit", drop_path_rate=0.1)
    model, _ = load(folder, backbone_config=matching, backbone_overrides={"attention_dropout": 0.05})
    assert model.config.backbone_config.drop_path_rate == 0.1
    assert model.config.backbone_config.attention_dropout == 0.05
    assert_backbone_equals(model, source)
    with pytest.raises(ValueError, match="architecture"):
        load(folder, backbone_overrides={"hidden_size": 64})
    # Loading copies into the built model's parameters, so freeze_backbone survives it.
    frozen, _ = load(folder, freeze_backbone=True)
    assert not any(p.requires_grad for p in frozen.get_submodule(ENCODER[:-1]).parameters())
    assert all(p.requires_grad for p in frozen.model.transformer_module.parameters())


def test_report_is_logged(ckpts, caplog):
    with caplog.at_level(logging.WARNING, logger="mask2former_dinov3.loading"):
        load(ckpts["convnext"][0])
    text = caplog.text
    assert "backbone dinov3-convnext-tiny" in text and "tensors loaded" in text
    assert "layer_norm.weight" in text and "newly initialised" in text


# --- Head transfer ---------------------------------------------------------------------------------------------------


def transferable(head):
    return {k: v for k, v in head.state_dict().items() if k.startswith(HEAD_PREFIXES)}


def test_head_transfer_all_tensors_fit(ckpts):
    """ConvNeXt stage widths == the Swin head's: every decoder tensor and (same labels) the class head are copied."""
    head_dir, head = ckpts["head"]
    # No labels and no decoder sizes given: both follow the head.
    model, info = M2F.from_dinov3_pretrained(ckpts["convnext"][0], head=head_dir, output_loading_info=True)
    assert model.config.num_queries == 7 and model.config.id2label == head.config.id2label
    state = model.state_dict()
    expected = transferable(head)
    assert len(expected) > 50
    for key, tensor in expected.items():
        assert torch.equal(state[key], tensor), key
    assert set(expected) <= set(info["loaded"])
    assert info["skipped"] == {}
    assert info["head_checkpoint"] == "mask2former-swin-tiny"
    # The head's own Swin backbone is reported as ignored, never copied.
    assert any(k.startswith("head:model.pixel_level_module.encoder.") for k in info["ignored"])
    assert_backbone_equals(model, ckpts["convnext"][1])


def test_head_transfer_reports_what_does_not_fit(ckpts):
    """ViT adapter channels != Swin widths and a different label set: those are skipped, the rest copied."""
    head_dir, head = ckpts["head"]
    model, info = load(ckpts["vit"][0], head=head_dir)  # num_labels=3 vs the head's 4 labels
    state = model.state_dict()
    skipped = info["skipped"]
    copied = 0
    for key, tensor in transferable(head).items():
        if key in state and state[key].shape == tensor.shape and not key.startswith("class_predictor."):
            assert torch.equal(state[key], tensor), key
            assert key in info["loaded"]
            copied += 1
        else:
            assert key in skipped, key
    assert copied > 50
    projections = [k for k in skipped if ".input_projections." in k]
    assert projections
    for key in projections:
        if key.endswith(".0.weight"):
            assert "in the head vs" in skipped[key] and str(tuple(head.state_dict()[key].shape)) in skipped[key]
    assert "label set differs" in skipped["class_predictor.weight"]
    assert not torch.equal(state["class_predictor.bias"][:4], head.state_dict()["class_predictor.bias"][:4])
    assert "class_predictor.weight" in info["initialized"]
    assert_backbone_equals(model, ckpts["vit"][1])


def test_head_from_a_mask2former_dinov3_checkpoint(ckpts, tmp_path):
    ours = randomize_(M2F(tiny_config("vit")), seed=4)
    ours.save_pretrained(tmp_path / "ours")
    model, info = load(ckpts["vit"][0], head=tmp_path / "ours", id2label=ours.config.id2label)
    state = model.state_dict()
    for key, tensor in transferable(ours).items():
        assert torch.equal(state[key], tensor), key
    assert info["skipped"] == {}
    # Its adapter and backbone are not taken: the backbone comes from `backbone`.
    assert any(k.startswith("head:model.pixel_level_module.adapter.") for k in info["ignored"])
    assert_backbone_equals(model, ckpts["vit"][1])


# --- Wrong files -----------------------------------------------------------------------------------------------------


def test_swin_checkpoints_are_refused(ckpts, tmp_path):
    with pytest.raises(DINOv3CheckpointError, match=r"swin-tiny is not a DINOv3 checkpoint.*'swin'.*dinov3_vit"):
        load(ckpts["swin"][0])
    swin_pth = tmp_path / "swin.pth"
    torch.save(ckpts["swin"][1].state_dict(), swin_pth)
    with pytest.raises(DINOv3CheckpointError, match=r"swin\.pth is not a Meta DINOv3 ViT checkpoint.*cls_token"):
        load(swin_pth)
    with pytest.raises(DINOv3CheckpointError, match="pass it as head="):
        load(ckpts["head"][0])
    with pytest.raises(DINOv3CheckpointError, match=r"dinov3-vit-tiny is not a Mask2Former checkpoint"):
        load(ckpts["convnext"][0], head=ckpts["vit"][0])


def test_truncated_files_are_refused(ckpts, tmp_path):
    data = open(ckpts["pth_plain"][0], "rb").read()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DINOv3CheckpointError, match=r"truncated\.pth.*truncated or corrupted"):
        load(truncated)

    folder = tmp_path / "vit-truncated"
    folder.mkdir()
    src = ckpts["vit"][0]
    (folder / "config.json").write_bytes(open(os.path.join(src, "config.json"), "rb").read())
    weights = open(os.path.join(src, "model.safetensors"), "rb").read()
    (folder / "model.safetensors").write_bytes(weights[: len(weights) * 2 // 3])
    with pytest.raises(DINOv3CheckpointError, match=r"vit-truncated.*truncated or corrupted"):
        load(folder)


def test_architecture_mismatch_is_refused(ckpts, tmp_path):
    # A ViT-B/16-shaped Meta file. Its tensors (all but the small RoPE periods) are stride-0 views of one zero, so the
    # file is a few kB: the architecture is read from shapes only, and the error comes before any weight is used.
    config = tiny_backbone_config("vit", **get_preset("dinov3-vitb16").backbone_kwargs)
    with torch.device("meta"):
        meta_model = DINOv3ViTModel(config)
    state = to_meta(meta_model.state_dict(), config)
    state = {k: v if k == "rope_embed.periods" else torch.zeros(()).expand(v.shape) for k, v in state.items()}
    vitb = tmp_path / "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth"
    torch.save(state, vitb)
    assert vitb.stat().st_size < 200_000

    with pytest.raises(DINOv3CheckpointError) as err:
        load(vitb, preset="dinov3-vits16")
    message = str(err.value)
    assert "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth" in message and "dinov3-vits16" in message
    assert "hidden_size: 768 in the checkpoint vs 384 expected" in message

    # The same tensors under ViT-S's file name: the name and the shapes disagree.
    renamed = tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    os.rename(vitb, renamed)
    with pytest.raises(DINOv3CheckpointError, match=r"named like Meta's dinov3_vits16.*hidden_size: 768"):
        load(renamed)

    # Folders are checked against the expectation too.
    with pytest.raises(DINOv3CheckpointError, match=r"dinov3-vit-tiny does not match preset 'dinov3-vits16'"):
        load(ckpts["vit"][0], preset="dinov3-vits16")
    with pytest.raises(DINOv3CheckpointError, match=r"does not match the backbone_config passed.*hidden_size"):
        load(ckpts["vit"][0], backbone_config=tiny_backbone_config("vit", hidden_size=64))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "missing.pth")


# --- Conversion CLI --------------------------------------------------------------------------------------------------


@pytest.mark.slow  # the conversion CLI in a new interpreter
def test_conversion_cli_round_trip(ckpts, tmp_path):
    pth, source = ckpts["pth_gated_theta1000"]
    out = tmp_path / "converted"
    result = subprocess.run(
        [sys.executable, "-m", "mask2former_dinov3.convert", pth, str(out)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Converted" in result.stdout

    keys = safetensors_keys(out)
    assert "layer.0.attention.q_proj.weight" in keys and "layer.0.mlp.gate_proj.weight" in keys
    assert not any(k.startswith(("blocks.", "model.")) for k in keys)
    assert json.load(open(out / "config.json"))["model_type"] == "dinov3_vit"
    # The folder is a plain transformers DINOv3 checkpoint: it reloads to the source model exactly.
    reloaded = DINOv3ViTModel.from_pretrained(out)
    for key, tensor in source.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor), key

    from_folder, _ = load(out)
    from_pth, _ = load(pth)
    assert_backbone_equals(from_folder, reloaded)
    assert architecture(from_folder.config.backbone_config) == architecture(from_pth.config.backbone_config)
    for a, b in zip(encoder_features(from_folder, image()), encoder_features(from_pth, image()), strict=True):
        assert torch.equal(a, b)
    assert from_folder.config.backbone_checkpoint == "converted"

    # A bfloat16 file stays bfloat16 in the folder, and both load to the same (exactly upcast) weights.
    bf16_pth = tmp_path / "tiny_bf16.pth"
    torch.save({k: v.to(torch.bfloat16) for k, v in torch.load(pth, weights_only=True).items()}, bf16_pth)
    convert_meta_checkpoint(bf16_pth, tmp_path / "bf16")
    with safe_open(tmp_path / "bf16" / "model.safetensors", "pt") as f:
        assert f.get_tensor("layer.0.attention.q_proj.weight").dtype == torch.bfloat16
    bf16_folder, _ = load(tmp_path / "bf16")
    bf16_file, _ = load(bf16_pth)
    assert_backbone_equals(bf16_folder, bf16_file.get_submodule(ENCODER[:-1]))

    # Refuses to overwrite, and reports a bad input, without a traceback.
    assert main([pth, str(out)]) == 1
    truncated = tmp_path / "bad.pth"
    truncated.write_bytes(b"not a checkpoint")
    assert main([str(truncated), str(tmp_path / "x")]) == 1


def test_preset_head_sizing_follows_the_matched_backbone(ckpts, tmp_path):
    """A ViT-S/16 checkpoint (matched to its preset by architecture) gets the preset's 3-layer pixel-decoder encoder,
    unless the caller sets the depth; a checkpoint matching no preset keeps Mask2Former's 6."""
    vits = DINOv3ViTModel(Mask2FormerDINOv3Config.from_preset("dinov3-vits16").backbone_config)
    vits.save_pretrained(tmp_path / "vits16")
    del vits
    small_head = {k: v for k, v in TINY_KWARGS.items() if k != "encoder_layers"}
    model, info = M2F.from_dinov3_pretrained(tmp_path / "vits16", output_loading_info=True, **small_head)
    assert info["backbone_preset"] == "dinov3-vits16"
    assert model.config.encoder_layers == get_preset("dinov3-vits16").head_kwargs["encoder_layers"] == 3
    assert len(model.model.pixel_level_module.decoder.encoder.layers) == 3
    model = M2F.from_dinov3_pretrained(tmp_path / "vits16", **{**small_head, "encoder_layers": 6})
    assert model.config.encoder_layers == 6

    model, info = M2F.from_dinov3_pretrained(ckpts["vit"][0], output_loading_info=True, **small_head)
    assert info["backbone_preset"] is None
    assert model.config.encoder_layers == Mask2FormerConfig().encoder_layers == 6
