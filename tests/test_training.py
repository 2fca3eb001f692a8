"""Fine-tuning: optimizer groups, the run_instance_seg.py pipeline on COCO / HF-format / synthetic data (instance,
semantic, panoptic), outputs (model, processor, card, overlays), output-folder protection and resuming, and two-process
runs (loss normalisation across processes, evaluation metrics equal to a single process's)."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_configs import tiny_config

import mask2former_dinov3  # noqa: F401  (registers the Auto classes)
from mask2former_dinov3 import Mask2FormerDINOv3ForUniversalSegmentation, Mask2FormerDINOv3ImageProcessor
from mask2former_dinov3.arguments import OFFLINE_DEFAULT, parse_args
from mask2former_dinov3.finetune import main, parse_config_overrides, resolve_checkpoint
from mask2former_dinov3.synthetic import CLASSES, SyntheticConfig, generate_sample, write_coco_dataset
from mask2former_dinov3.training import build_param_groups, flatten_metrics, vit_layer_id


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
SMALL = ["--image_height", "64", "--image_width", "64", "--per_device_train_batch_size", "2",
         "--per_device_eval_batch_size", "2", "--report_to", "none", "--logging_steps", "1",
         "--dataloader_num_workers", "0", "--seed", "0"]  # fmt: skip
NUM_VALID = 7  # 6 synthetic + 1 added empty image: odd, so two processes get a padded (repeated) image
# One image per forward in both the two-process and the one-process evaluation, so that each image's logits do not
# depend on which other images share its batch (BLAS kernels may round differently for other batch shapes).
ONE_IMAGE_BATCHES = ["--per_device_eval_batch_size", "1"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([TESTS, REPO, os.environ.get("PYTHONPATH", "")]))
    env.pop("RANK", None)
    return env


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read(path):
    with open(path) as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A saved random-init tiny model with 3 labels (the data has 4: its head must be resized)."""
    path = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(0)
    Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit", num_labels=3)).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    """Roboflow layout with polygons, compressed and uncompressed RLE, 4 classes and empty images."""
    root = tmp_path_factory.mktemp("coco")
    paths = write_coco_dataset(root, num_train=10, num_valid=6, config=SyntheticConfig(image_size=64),
                               roboflow_supercategory=True)  # fmt: skip
    from pycocotools import mask as mask_utils

    for split, path in paths.items():
        coco = _read(path)
        # One annotation as uncompressed RLE (counts list), which the writer never produces.
        ann = coco["annotations"][0]
        image = next(i for i in coco["images"] if i["id"] == ann["image_id"])
        if isinstance(ann["segmentation"], dict):
            binary = mask_utils.decode(ann["segmentation"])
        else:
            binary = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 64, 64)))
        flat = binary.T.reshape(-1)  # COCO RLE runs go down the columns
        ann["segmentation"] = {"size": [image["height"], image["width"]], "counts": _uncompressed(flat)}
        # An image without any annotation.
        Image.new("RGB", (64, 64), (30, 90, 60)).save(path.parent / "blank.png")
        coco["images"].append({"id": 1000, "file_name": "blank.png", "height": 64, "width": 64})
        path.write_text(json.dumps(coco))
    return str(root)


def _uncompressed(flat):
    """COCO's uncompressed RLE counts of a flat 0/1 array: alternating run lengths, starting with zeros."""
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    counts.append(run)
    return [int(c) for c in counts]


def _check_reloads_and_post_processes(output_dir, task, num_labels, size=64):
    from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

    model = AutoModelForUniversalSegmentation.from_pretrained(output_dir)
    assert isinstance(model, Mask2FormerDINOv3ForUniversalSegmentation)
    assert model.class_predictor.out_features == num_labels + 1
    # The resized head keeps Mask2Former's "no object" weighting in the loss.
    assert model.criterion.empty_weight.tolist() == pytest.approx([1.0] * num_labels + [model.config.no_object_weight])
    processor = AutoImageProcessor.from_pretrained(output_dir)
    assert type(processor) is Mask2FormerDINOv3ImageProcessor
    assert (processor.size.height, processor.size.width) == (size, size)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    inputs = processor(images=image, return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape[-2:]) == (size, size)
    with torch.no_grad():
        outputs = model(**inputs)
    post = getattr(processor, f"post_process_{task}_segmentation")
    result = post(outputs, target_sizes=[(50, 70)])[0]
    segmentation = result if task == "semantic" else result["segmentation"]
    assert tuple(segmentation.shape[-2:]) == (50, 70)


# ---------------------------------------------------------------------------------------------------------------------
# Optimizer groups
# ---------------------------------------------------------------------------------------------------------------------


def test_backbone_lr_multiplier_and_vit_layer_decay():
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit"))  # 4 ViT blocks
    groups = build_param_groups(model, 1e-3, 0.05, backbone_lr_multiplier=0.1, layer_decay=0.5)
    lr_of = {name: (g["lr"], g["weight_decay"]) for g in groups for name in g["param_names"]}
    prefix = "model.pixel_level_module.encoder."
    # layer id: embeddings 0, block i -> i + 1, head 5; backbone LR = 1e-3 * 0.1 * 0.5 ** (5 - id)
    assert lr_of[prefix + "embeddings.patch_embeddings.weight"] == pytest.approx((1e-3 * 0.1 * 0.5**5, 0.05))
    assert lr_of[prefix + "model.layer.0.attention.q_proj.weight"] == pytest.approx((1e-3 * 0.1 * 0.5**4, 0.05))
    assert lr_of[prefix + "model.layer.3.mlp.up_proj.weight"] == pytest.approx((1e-3 * 0.1 * 0.5**1, 0.05))
    assert lr_of["class_predictor.weight"] == pytest.approx((1e-3, 0.05))
    assert lr_of["model.pixel_level_module.adapter.projections.0.conv.weight"][0] == pytest.approx(1e-3)
    # No weight decay on biases, norms, tokens, layer scales, query and level embeddings.
    for name in [prefix + "embeddings.cls_token", prefix + "embeddings.register_tokens",
                 prefix + "model.layer.0.norm1.weight", prefix + "model.layer.0.layer_scale1.lambda1",
                 "class_predictor.bias", "model.transformer_module.queries_embedder.weight",
                 "model.pixel_level_module.decoder.level_embed"]:  # fmt: skip
        assert lr_of[name][1] == 0.0, name
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
    assert vit_layer_id("class_predictor.weight", 4) is None


def test_frozen_backbone_and_convnext_groups():
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("convnext"))
    groups = build_param_groups(model, 1e-3, 0.0, backbone_lr_multiplier=0.1, layer_decay=0.5)
    backbone_lrs = {g["lr"] for g in groups for n in g["param_names"] if n.startswith("model.pixel_level_module.encoder.")}
    assert len(backbone_lrs) == 1 and backbone_lrs.pop() == pytest.approx(1e-4)  # layer decay is ViT-only
    model.freeze_backbone()
    assert model.config.freeze_backbone and model.model.pixel_level_module.freeze_backbone
    names = [n for g in build_param_groups(model, 1e-3, 0.0) for n in g["param_names"]]
    assert names and not any(n.startswith("model.pixel_level_module.encoder.") for n in names)
    model.unfreeze_backbone()
    names = [n for g in build_param_groups(model, 1e-3, 0.0) for n in g["param_names"]]
    assert any(n.startswith("model.pixel_level_module.encoder.") for n in names)


def test_argument_defaults_and_overrides():
    # No data and no model flag: the offline default's settings are the defaults, and the user's flags win.
    _, data_args, training_args = parse_args(["--output_dir", "x"])
    assert training_args.do_train and training_args.do_eval and training_args.max_steps == OFFLINE_DEFAULT["max_steps"]
    assert data_args.image_height == 128 and training_args.lr_scheduler_type == "cosine"
    _, data_args, training_args = parse_args(["--output_dir", "x", "--data_dir", "d", "--do_eval"])
    assert training_args.max_steps == -1 and not training_args.do_train and data_args.image_height == 512
    _, _, training_args = parse_args(["--output_dir", "x", "--data-dir=d", "--do-train"])  # dashed spellings too
    assert training_args.do_train and not training_args.do_eval and training_args.max_steps == -1
    model_args, data_args, training_args = parse_args(["--output_dir", "x", "--max_steps", "7", "--task", "semantic"])
    assert training_args.max_steps == 7 and training_args.do_train and training_args.do_eval
    assert training_args.metric_for_best_model == "mean_iou" and training_args.greater_is_better
    assert training_args.remove_unused_columns is False
    assert parse_config_overrides("num_queries=50,tapped_layers=[1, 3],adapter_norm=group_norm,x=True") == {
        "num_queries": 50, "tapped_layers": [1, 3], "adapter_norm": "group_norm", "x": True
    }  # fmt: skip


def test_output_dir_with_another_run_is_not_overwritten(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_text("another run")
    _, _, args = parse_args(["--output_dir", str(out), "--data_dir", "d", "--do_train"])
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        resolve_checkpoint(args)
    _, _, args = parse_args(["--output_dir", str(out), "--data_dir", "d", "--do_train", "--overwrite_output_dir"])
    assert resolve_checkpoint(args) is None
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-12").mkdir()
    _, _, args = parse_args(["--output_dir", str(out), "--data_dir", "d", "--do_train"])
    assert resolve_checkpoint(args) == str(out / "checkpoint-12")  # Trainer's convention: resume
    _, _, args = parse_args(["--output_dir", str(out), "--data_dir", "d", "--do_eval"])
    assert resolve_checkpoint(args) is None  # evaluation only never trains over anything


def test_pretrained_backbone_run_loads_it_and_names_it_in_the_card(tmp_path, coco_root):
    from safetensors.torch import load_file
    from tiny_configs import tiny_backbone_config
    from transformers import DINOv3ViTModel

    torch.manual_seed(1)
    backbone_dir = tmp_path / "my-dinov3-backbone"
    DINOv3ViTModel(tiny_backbone_config("vit")).save_pretrained(backbone_dir)
    saved = load_file(str(backbone_dir / "model.safetensors"))
    out = str(tmp_path / "out")
    overrides = ("feature_size=32,mask_feature_size=32,hidden_dim=32,encoder_feedforward_dim=64,dim_feedforward=64,"
                 "encoder_layers=1,decoder_layers=2,num_attention_heads=2,num_queries=5,train_num_points=64")
    main(["--backbone_name_or_path", str(backbone_dir), "--config_overrides", overrides, "--data_dir", coco_root,
          "--output_dir", out, "--do_train", "--max_steps", "1", "--learning_rate", "0", "--num_overlay_images", "0",
          "--save_strategy", "no", *SMALL])  # fmt: skip
    model = Mask2FormerDINOv3ForUniversalSegmentation.from_pretrained(out)
    assert model.config.backbone_checkpoint == "my-dinov3-backbone"
    weight = model.model.pixel_level_module.encoder.embeddings.patch_embeddings.weight
    torch.testing.assert_close(weight, saved["embeddings.patch_embeddings.weight"])  # lr 0: still the loaded tensor
    card = open(os.path.join(out, "README.md")).read()
    assert "Backbone weights: `my-dinov3-backbone`" in card and "backbone LR multiplier | 0.1 |" in card
    assert "adapter with spatial prior" in card
    assert "### Training hyperparameters" in card and "learning_rate: 0" in card  # Trainer's own card, completed
    _assert_names_no_local_folder(card, tmp_path, Path(coco_root).parent)


def _assert_names_no_local_folder(card, *temporary_folders):
    """The card names local files and folders by their last component only: no part of the temporary folders that
    hold the run's data, models and output appears in it."""
    for folder in temporary_folders:
        for part in Path(folder).resolve().parts[1:]:
            assert part not in card, (part, folder)


# ---------------------------------------------------------------------------------------------------------------------
# End-to-end runs
# ---------------------------------------------------------------------------------------------------------------------


def test_coco_folder_instance_run_outputs_and_resume(tmp_path, tiny_model_dir, coco_root):
    out = str(tmp_path / "out")
    common = ["--model_name_or_path", tiny_model_dir, "--data_dir", coco_root, "--output_dir", out,
              "--do_train", "--do_eval", "--num_overlay_images", "2", "--save_strategy", "steps", "--save_steps", "2",
              *SMALL]  # fmt: skip
    metrics = main([*common, "--max_steps", "2"])

    results = _read(os.path.join(out, "eval_results.json"))
    for key in ["eval_map", "eval_map_50", "eval_map_75", "eval_map_small", "eval_map_medium", "eval_map_large",
                "eval_mar_100", "eval_loss", "eval_map_circle", "eval_map_square", "eval_map_triangle", "eval_map_ring"]:
        assert key in results, key  # fmt: skip
    assert results["eval_num_images"] == NUM_VALID
    assert results["eval_max_detections"] == 100  # a model with at most 100 queries: COCO's cap
    assert 0.0 <= results["eval_map"] <= 1.0 and np.isfinite(results["eval_loss"])
    assert metrics["eval_map"] == pytest.approx(results["eval_map"])
    config = _read(os.path.join(out, "config.json"))
    assert config["id2label"] == {"0": "circle", "1": "square", "2": "triangle", "3": "ring"}
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    overlays = sorted(os.listdir(os.path.join(out, "predictions")))
    assert len(overlays) == 2 and all(f.endswith(".png") for f in overlays)
    with Image.open(os.path.join(out, "predictions", overlays[0])) as overlay:
        # Two 64-px panels, each enlarged to 512 px so that labels can be read, under a header line.
        assert overlay.size[0] == 2 * 512 + 4 and 512 < overlay.size[1] < 560
    card = open(os.path.join(out, "README.md")).read()
    assert "\n- Map: " in card and "map: " in card and "| circle |" in card and "backbone LR multiplier | 0.1 |" in card
    assert "(AP with up to 100 detections per image)" in card
    assert "random initialisation" in card  # no config.backbone_checkpoint on this model
    assert f"fine-tuned from `{os.path.basename(tiny_model_dir)}`" in card and "COCO-format data (`coco" in card
    _assert_names_no_local_folder(card, tmp_path, Path(tiny_model_dir).parent, Path(coco_root).parent)
    _check_reloads_and_post_processes(out, "instance", num_labels=4)

    # Same output_dir again, longer: resumes from its last checkpoint instead of starting over.
    main([*common, "--max_steps", "3", "--num_overlay_images", "0"])
    state = _read(os.path.join(out, "trainer_state.json"))
    assert state["global_step"] == 3
    steps_logged = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps_logged == [1, 2, 3]


def _weights(path):
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "model.safetensors"))


def test_resumed_and_best_models_get_their_checkpoints_weights(tmp_path, tiny_model_dir, coco_root):
    # save_pretrained writes DINOv3's and the 0.3.0 adapter's original key names, which Trainer's own checkpoint
    # load (load_state_dict, strict=False) skips: without ConvertedCheckpointWeights the backbone and adapter of a
    # resumed run would keep the starting model's values.
    from transformers import TrainerControl, TrainerState

    from mask2former_dinov3.training import ConvertedCheckpointWeights  # noqa

    first, resumed = str(tmp_path / "first"), str(tmp_path / "resumed")
    common = ["--model_name_or_path", tiny_model_dir, "--data_dir", coco_root, "--do_train", "--num_overlay_images",
              "0", "--save_strategy", "steps", "--save_steps", "1", "--learning_rate", "1e-2", *SMALL]  # fmt: skip
    main([*common, "--output_dir", first, "--max_steps", "2"])
    checkpoint = os.path.join(first, "checkpoint-2")
    saved = _weights(checkpoint)
    model = Mask2FormerDINOv3ForUniversalSegmentation.from_pretrained(tiny_model_dir, num_labels=4,
                                                                   ignore_mismatched_sizes=True)
    assert set(saved) != set(model.state_dict())  # the checkpoint's layout is not the modules' names
    # Resumed at its last step: no step runs, so the saved model is the checkpoint's weights.
    main([*common, "--output_dir", resumed, "--max_steps", "2", "--resume_from_checkpoint", checkpoint])
    after = _weights(resumed)
    assert set(after) == set(saved) and all(torch.equal(after[k], saved[k]) for k in saved)

    # load_best_model_at_end: Trainer loads the best checkpoint the same way; the callback reloads it at train end.
    trainer = type("T", (), {"is_deepspeed_enabled": False, "is_fsdp_enabled": False})()
    state = TrainerState(best_model_checkpoint=checkpoint)
    args = parse_args(["--output_dir", first, "--data_dir", coco_root, "--load_best_model_at_end",
                       "--eval_strategy", "steps", "--save_strategy", "steps"])[2]  # fmt: skip
    ConvertedCheckpointWeights(trainer).on_train_end(args, state, TrainerControl(), model=model)
    expected = Mask2FormerDINOv3ForUniversalSegmentation.from_pretrained(checkpoint).state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())


def test_semantic_run_reports_miou(tmp_path, tiny_model_dir, coco_root):
    out = str(tmp_path / "out")
    # Also: gradient (activation) checkpointing through TrainingArguments (upstream Mask2Former refuses it).
    main(["--model_name_or_path", tiny_model_dir, "--data_dir", coco_root, "--output_dir", out, "--task", "semantic",
          "--max_steps", "2", "--num_overlay_images", "1", "--save_strategy", "no", "--activation_checkpointing",
          *SMALL])  # fmt: skip
    results = _read(os.path.join(out, "eval_results.json"))
    for key in ["eval_mean_iou", "eval_pixel_accuracy", "eval_iou_circle", "eval_iou_ring"]:
        assert key in results, key
    assert 0.0 <= results["eval_mean_iou"] <= 1.0
    assert len(os.listdir(os.path.join(out, "predictions"))) == 1
    assert "| gradient checkpointing | True |" in open(os.path.join(out, "README.md")).read()


def _hf_panoptic_dataset(root):
    """transformers' example format (channel 0 semantic id, channel 1 instance id) from synthetic samples with stuff."""
    import datasets

    def rows(split, count):
        images, annotations = [], []
        for index in range(count):
            sample = generate_sample(index, seed=1, split=split, config=SyntheticConfig(image_size=64))
            instance = np.zeros(sample.semantic_map.shape, np.uint8)
            for k, mask in enumerate(sample.masks):
                instance[mask] = k + 1
            annotation = np.stack([sample.semantic_map, instance, np.zeros_like(instance)], axis=-1)
            images.append(sample.image)
            annotations.append(Image.fromarray(annotation))
        mapping = {name: i for i, name in enumerate(CLASSES)}
        features = datasets.Features({
            "image": datasets.Image(), "annotation": datasets.Image(),
            "semantic_class_to_id": {name: datasets.Value("int64") for name in CLASSES},
        })  # fmt: skip
        return datasets.Dataset.from_dict(
            {"image": images, "annotation": annotations, "semantic_class_to_id": [mapping] * count}, features=features
        )

    datasets.DatasetDict({"train": rows("train", 8), "validation": rows("valid", 5)}).save_to_disk(root)
    return root


@pytest.mark.slow  # a training run with bf16 autocast on CPU
def test_panoptic_run_on_hf_format_reports_pq(tmp_path, tiny_model_dir):
    data = _hf_panoptic_dataset(str(tmp_path / "hf"))
    out = str(tmp_path / "out")
    # Also: bf16 autocast on CPU (post-processing must cope with bf16 logits).
    main(["--model_name_or_path", tiny_model_dir, "--dataset_name", data, "--output_dir", out, "--task", "panoptic",
          "--max_steps", "2", "--num_overlay_images", "1", "--save_strategy", "no", "--bf16", "--use_cpu",
          *SMALL])  # fmt: skip
    results = _read(os.path.join(out, "eval_results.json"))
    for key in ["eval_pq", "eval_sq", "eval_rq", "eval_pq_things", "eval_pq_stuff", "eval_pq_sky", "eval_pq_circle"]:
        assert key in results, key
    assert results["eval_num_images"] == 5
    label_map = _read(os.path.join(out, "label_map.json"))
    assert label_map["stuff_ids"] == [4, 5] and label_map["thing_ids"] == [0, 1, 2, 3]
    _check_reloads_and_post_processes(out, "panoptic", num_labels=6)


def test_offline_default_smoke(tmp_path):
    # The offline default path (no data, no model argument), shortened: the full run is measured in docs/finetuning.md.
    out = str(tmp_path / "out")
    main(["--output_dir", out, "--max_steps", "2", "--synthetic_train_samples", "8", "--synthetic_eval_samples", "4",
          "--synthetic_image_size", "64", "--num_overlay_images", "1", *SMALL])  # fmt: skip
    results = _read(os.path.join(out, "eval_results.json"))
    assert "eval_map" in results and results["eval_num_images"] == 4
    # The size buckets are the generator's (COCO's absolute ones would leave "large" empty at 64 px); these 4
    # images (seed 0) hold shapes of all three.
    assert all(np.isfinite(results[f"eval_map_{size}"]) for size in ("small", "medium", "large")), results
    config = _read(os.path.join(out, "config.json"))
    assert config["backbone_config"]["model_type"] == "dinov3_convnext"
    assert "backbone LR multiplier | 1 |" in open(os.path.join(out, "README.md")).read()  # random-init backbone
    _check_reloads_and_post_processes(out, "instance", num_labels=4)
    with pytest.raises(ValueError, match="already exists"):  # a finished run without checkpoints is protected
        main(["--output_dir", out, "--max_steps", "2", *SMALL])


# ---------------------------------------------------------------------------------------------------------------------
# Two processes (DDP over gloo)
# ---------------------------------------------------------------------------------------------------------------------


LOSS_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from tiny_configs import tiny_config
    from mask2former_dinov3 import Mask2FormerDINOv3ForUniversalSegmentation

    def inputs(rank):
        generator = torch.Generator().manual_seed(100 + rank)
        num_masks = [1, 4][rank]  # different numbers of target masks per process
        pixel_values = torch.randn(2, 3, 64, 64, generator=generator)
        mask_labels = [(torch.rand(n, 64, 64, generator=generator) > 0.5).float() for n in (num_masks, 1)]
        class_labels = [torch.randint(0, 3, (n,), generator=generator) for n in (num_masks, 1)]
        return pixel_values, mask_labels, class_labels

    def loss_dict(model, rank):
        pixel_values, mask_labels, class_labels = inputs(rank)
        with torch.no_grad():
            outputs = model(pixel_values=pixel_values, output_auxiliary_logits=True)
            torch.manual_seed(1234)  # the loss samples points at random
            losses = model.get_loss_dict(outputs.masks_queries_logits, outputs.class_queries_logits, mask_labels,
                                         class_labels, outputs.auxiliary_logits)
            num_masks = model.criterion.get_num_masks(class_labels, torch.device("cpu"))
        return {"losses": {k: float(v) for k, v in losses.items()}, "local_masks": sum(len(c) for c in class_labels),
                "num_masks": float(num_masks)}

    torch.manual_seed(0)
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit", num_labels=3)).eval()
    if "RANK" in os.environ:
        torch.distributed.init_process_group("gloo")
        rank = torch.distributed.get_rank()
        result = {rank: loss_dict(model, rank)}
        with open(sys.argv[1] + f".{rank}", "w") as handle:
            json.dump(result, handle)
        # Leave together: a rank that exits while gloo still talks to the other one aborts it.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    else:  # single process, once per rank's inputs
        with open(sys.argv[1], "w") as handle:
            json.dump({rank: loss_dict(model, rank) for rank in (0, 1)}, handle)
    """
)


@pytest.mark.slow  # torchrun: two processes
def test_two_process_loss_is_normalised_by_the_global_number_of_masks(tmp_path):
    script = tmp_path / "loss_worker.py"
    script.write_text(LOSS_WORKER)
    single, distributed = tmp_path / "single.json", tmp_path / "dist.json"
    subprocess.run([sys.executable, str(script), str(single)], check=True, env=_env(), cwd=REPO)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    str(_free_port()), str(script), str(distributed)], check=True, env=_env(), cwd=REPO)  # fmt: skip
    reference = _read(single)
    per_rank = {**_read(f"{distributed}.0"), **_read(f"{distributed}.1")}
    local = [reference[str(r)]["local_masks"] for r in (0, 1)]
    assert local[0] != local[1]
    mean = sum(local) / 2
    for rank in (0, 1):
        ref, dist = reference[str(rank)], per_rank[str(rank)]
        assert ref["num_masks"] == local[rank] and dist["num_masks"] == pytest.approx(mean)
        for name, value in dist["losses"].items():
            # Mask and dice losses are sums over masks divided by num_masks; the class loss does not depend on it.
            factor = 1.0 if "cross_entropy" in name else local[rank] / mean
            assert value == pytest.approx(ref["losses"][name] * factor, rel=1e-5, abs=1e-7), name


@pytest.mark.slow  # torchrun: two processes
def test_two_process_training_and_evaluation_match_a_single_process(tmp_path, tiny_model_dir, coco_root):
    ddp_out, single_out = str(tmp_path / "ddp"), str(tmp_path / "single")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), os.path.join(REPO, "run_instance_seg.py"), "--use_cpu",
               "--model_name_or_path", tiny_model_dir, "--data_dir", coco_root, "--output_dir", ddp_out,
               "--do_train", "--do_eval", "--max_steps", "2", "--save_strategy", "no", "--num_overlay_images", "1",
               *SMALL, *ONE_IMAGE_BATCHES]  # fmt: skip
    completed = subprocess.run(command, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    ddp = _read(os.path.join(ddp_out, "eval_results.json"))
    state = _read(os.path.join(ddp_out, "trainer_state.json"))
    assert state["global_step"] == 2 and all(np.isfinite(h["loss"]) for h in state["log_history"] if "loss" in h)
    # 7 images over 2 processes: one image is evaluated twice (sampler padding) but counted once.
    assert ddp["eval_num_images"] == NUM_VALID

    # The checkpoint the two processes trained, evaluated by one process.
    main(["--model_name_or_path", ddp_out, "--data_dir", coco_root, "--output_dir", single_out, "--do_eval",
          "--num_overlay_images", "0", *SMALL, *ONE_IMAGE_BATCHES])  # fmt: skip
    single = _read(os.path.join(single_out, "eval_results.json"))
    metric_keys = [k for k in single if k.startswith("eval_map") or k == "eval_mar_100"]
    assert len(metric_keys) >= 10
    for key in metric_keys:
        assert ddp[key] == pytest.approx(single[key], abs=1e-12, nan_ok=True), (key, ddp, single)


def test_flatten_metrics_names_per_class_entries():
    flat = flatten_metrics({"map": 0.5, "map_per_class": {"traffic light": 0.25}, "per_class": {"a": {"tp": 1}},
                            "pq_per_class": {"sky": float("nan")}, "num_categories": {"all": 2}})  # fmt: skip
    assert flat["map"] == 0.5 and flat["map_traffic_light"] == 0.25 and np.isnan(flat["pq_sky"])
    assert "per_class" not in flat and "num_categories_all" in flat


def test_prediction_step_hands_trainer_only_the_logits_and_dataset_indices(tmp_path):
    # What Trainer gathers across processes: the class and mask logits (no hidden states, no auxiliary outputs) and,
    # as labels, the dataset indices by which the metrics find each image's ground truth.
    from transformers import TrainingArguments

    from mask2former_dinov3.data import SegmentationCollator, SegmentationDataset
    from mask2former_dinov3.synthetic import SyntheticSegmentationSource
    from mask2former_dinov3.training import Mask2FormerTrainer

    processor = Mask2FormerDINOv3ImageProcessor(size={"height": 64, "width": 64})
    source = SyntheticSegmentationSource("valid", 3, image_size=64)
    dataset = SegmentationDataset(source, "instance", processor, for_evaluation=True)
    torch.manual_seed(0)
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit", num_labels=4))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to="none", use_cpu=True)
    trainer = Mask2FormerTrainer(model=model, args=args, eval_dataset=dataset, data_collator=SegmentationCollator(),
                                 task="instance", label_map=source.label_map, image_processor=processor)  # fmt: skip
    assert trainer.args.batch_eval_metrics and not trainer.args.eval_do_concat_batches
    output = trainer.predict(dataset)
    batches = output.predictions  # one entry per batch (eval_do_concat_batches=False)
    assert [len(b) for b in batches] == [2, 2]  # (class_queries_logits, masks_queries_logits) only
    num_queries = model.config.num_queries
    assert [tuple(b[0].shape) for b in batches] == [(2, num_queries, 5), (1, num_queries, 5)]
    assert all(b[1].shape[:2] == (b[0].shape[0], num_queries) for b in batches)
    assert [i for labels in output.label_ids for i in np.asarray(labels).tolist()] == [0, 1, 2]
    assert output.metrics["test_num_images"] == 3 and "test_map" in output.metrics

    # An evaluation dataset without indices cannot be scored: the error says how to build one.
    plain = SegmentationDataset(source, "instance", processor)
    with pytest.raises(ValueError, match="for_evaluation=True"):
        trainer.evaluate(plain)


def _dense_cells(count: int, pitch: int = 3) -> np.ndarray:
    """`count` disjoint 2x2-pixel cells on a square grid, as `(count, H, W)` uint8 masks."""
    side = int(np.ceil(np.sqrt(count)))
    masks = np.zeros((count, side * pitch, side * pitch), np.uint8)
    for k in range(count):
        row, col = divmod(k, side)
        masks[k, row * pitch : row * pitch + 2, col * pitch : col * pitch + 2] = 1
    return masks


def test_perfect_predictions_of_2000_instances_score_ap_one_through_the_training_evaluation(tmp_path):
    # Issue 24: the evaluation used to keep COCO's 100 detections per image, so a model sized to find every cell of
    # a dense frame scored about 100 / 2,000 even when it found them all.
    from transformers import EvalPrediction, TrainingArguments

    from mask2former_dinov3.data import LabelMap, Sample, SegmentationCollator, SegmentationDataset
    from mask2former_dinov3.training import Mask2FormerTrainer

    masks = _dense_cells(2000)
    count, size = len(masks), masks.shape[1]
    sample = Sample(image=np.zeros((size, size, 3), np.uint8), masks=masks, labels=np.zeros(count, np.int64),
                    iscrowd=np.zeros(count, bool), is_instance=np.ones(count, bool), image_id=0, file_name="dense.png")  # fmt: skip
    processor = Mask2FormerDINOv3ImageProcessor(size={"height": 64, "width": 64})
    dataset = SegmentationDataset([sample], "instance", processor, for_evaluation=True)
    num_queries = 2500
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit", num_labels=1, num_queries=num_queries))
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = Mask2FormerTrainer(model=model, args=args, eval_dataset=dataset, data_collator=SegmentationCollator(),
                                 task="instance", label_map=LabelMap({0: "cell"}), image_processor=processor)  # fmt: skip
    assert trainer.max_detections == num_queries
    # Logits whose post-processed masks are the ground truth: query k is certain of class 0 and its mask logit is
    # positive on cell k only; the other queries say "no object" and have empty masks. The masks are at the image's
    # size, so that post-processing does not resize them.
    class_logits = torch.full((1, num_queries, 2), -20.0)
    class_logits[0, :count, 0] = class_logits[0, count:, 1] = 20.0
    mask_logits = torch.full((1, num_queries, size, size), -20.0)
    mask_logits[0, :count][torch.from_numpy(masks).bool()] = 20.0
    batch = EvalPrediction(predictions=(class_logits, mask_logits), label_ids=torch.tensor([0]))
    metrics = trainer.segmentation_metrics
    metrics.start(dataset, trainer.max_detections)  # what trainer.evaluate() starts the metrics with
    found = metrics(batch, compute_result=True)
    assert found["num_images"] == 1 and found["max_detections"] == num_queries
    assert found["map"] == pytest.approx(1.0, abs=1e-9) and found[f"mar_{num_queries}"] == pytest.approx(1.0)
    # The old cap, COCO's 100 detections per image, throws 1,900 found cells away.
    metrics.start(dataset, 100)
    capped = metrics(batch, compute_result=True)
    assert capped["max_detections"] == 100 and capped["map"] < 0.1 and capped["mar_100"] == pytest.approx(0.05)


# ---------------------------------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------------------------------


def _card(tmp_path, name, config, description, base_model=None):
    from mask2former_dinov3.training import ModelCardDetails, model_card_sections

    details = ModelCardDetails(task="instance", dataset_description=description, settings={"steps": 3},
                               metrics={"eval_map": 0.25}, base_model=base_model)  # fmt: skip
    return model_card_sections(config, details, name)


def test_model_card_says_how_the_backbone_started_and_its_limits(tmp_path):
    scratch = _card(tmp_path, "scratch", tiny_config("vit", num_labels=4, num_queries=7), "the package's synthetic shapes")
    assert "trained from scratch (random initialisation" in scratch and "fine-tuned" not in scratch
    assert "## Intended use" in scratch and "## Limitations" in scratch
    intended = scratch.split("## Intended use")[1].split("## Limitations")[0]
    assert "not meant for real images" in intended
    limits = scratch.split("## Limitations")[1].split("## Usage")[0]
    assert "at most 7 segments per image" in limits and "synthetic shapes only" in limits
    assert "random weights" in limits and "normalisation" in limits and "validation split" in limits

    config = tiny_config("vit", num_labels=4, num_queries=9, backbone_checkpoint="facebook/dinov3-vits16-pretrain-lvd1689m")
    pretrained = _card(tmp_path, "pretrained", config, "COCO-format data (train: `x.json`)", base_model="dir")
    assert "initialised from the pretrained DINOv3 checkpoint `facebook/dinov3-vits16-pretrain-lvd1689m`" in pretrained
    assert "from scratch" not in pretrained and "random weights" not in pretrained
    assert "not meant for real images" not in pretrained and "at most 9 segments per image" in pretrained
    # The usage section is unchanged (its snippets are run verbatim elsewhere) and stays last.
    assert pretrained.index("## Limitations") < pretrained.index("## Usage")
    assert 'pipeline("image-segmentation", model="pretrained", trust_remote_code=True)' in pretrained

    # The evaluation section says how many detections per image mask AP kept (a dense model keeps its query count).
    from mask2former_dinov3.training import ModelCardDetails, model_card_sections

    metrics = {"eval_map": 0.9, "eval_max_detections": 2500.0, "eval_num_images": 3.0}
    dense = model_card_sections(tiny_config("vit", num_labels=1, num_queries=2500),
                                ModelCardDetails(task="instance", dataset_description="cells", metrics=metrics), "dense")  # fmt: skip
    evaluation = dense.split("### Evaluation")[1].split("### Training settings")[0]
    assert "map: 0.9000 on 3 images (AP with up to 2500 detections per image)." in evaluation
    assert "with up to 2500 detections per image." in evaluation.split("Metrics:")[1]
