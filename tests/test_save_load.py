"""Saving and reloading: same process, fresh process (imported package and trust_remote_code), Auto classes,
image processor, pipeline and post-processing."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation, pipeline

from mask2former_dinov3 import Mask2FormerDINOv3ForUniversalSegmentation, Mask2FormerDINOv3ImageProcessor
from tiny_configs import tiny_config


@pytest.fixture(scope="module", params=["vit", "convnext"])
def saved(request, tmp_path_factory):
    """A tiny saved model + processor, with a reference input and output written beside it."""
    directory = tmp_path_factory.mktemp(f"saved_{request.param}")
    torch.manual_seed(0)
    config = tiny_config(request.param, id2label={0: "cat", 1: "dog", 2: "sky"}, label2id={"cat": 0, "dog": 1, "sky": 2})
    model = Mask2FormerDINOv3ForUniversalSegmentation(config).eval()
    model.save_pretrained(directory)
    Mask2FormerDINOv3ImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(directory)
    pixel_values = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        reference = model(pixel_values)
    torch.save({"pixel_values": pixel_values, "masks": reference.masks_queries_logits,
                "classes": reference.class_queries_logits}, directory / "reference.pt")
    return directory, model, pixel_values, reference


def test_saved_folder_is_safetensors_with_code_and_auto_map(saved):
    directory = saved[0]
    assert (directory / "model.safetensors").exists()
    assert not list(directory.glob("*.bin"))
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "mask2former_dinov3"
    assert config["auto_map"]["AutoModelForUniversalSegmentation"].endswith(
        "modeling_mask2former_dinov3.Mask2FormerDinov3ForUniversalSegmentation")
    assert config["auto_map"]["AutoConfig"].endswith("Mask2FormerDinov3Config")
    # Exactly the code the model needs to build and run: no CLI, no checkpoint conversion or loading code.
    model_code = {"modeling_mask2former_dinov3.py", "configuration_mask2former_dinov3.py", "presets.py",
                  "image_processing_mask2former_dinov3.py", "intensity.py", "post_processing.py", "fast_mask2former.py",
                  "private_api.py"}  # fmt: skip
    assert {p.name for p in directory.glob("*.py")} == model_code
    for path in directory.glob("*.py"):
        code = path.read_text()
        assert "argparse" not in code and "def main(" not in code and "convert_meta" not in code, path.name
    processor_config = json.loads((directory / "preprocessor_config.json").read_text())
    assert processor_config["auto_map"]["AutoImageProcessor"].endswith("Mask2FormerDINOv3ImageProcessor")


def test_same_process_round_trip_is_identical(saved):
    directory, _, pixel_values, reference = saved
    reloaded = AutoModelForUniversalSegmentation.from_pretrained(directory).eval()
    assert isinstance(reloaded, Mask2FormerDINOv3ForUniversalSegmentation)
    with torch.no_grad():
        out = reloaded(pixel_values)
    assert torch.equal(out.masks_queries_logits, reference.masks_queries_logits)
    assert torch.equal(out.class_queries_logits, reference.class_queries_logits)
    assert reloaded.config.id2label == {0: "cat", 1: "dog", 2: "sky"}


FRESH_PROCESS = textwrap.dedent(
    """
    import sys, torch
    IMPORT_PACKAGE = {import_package}
    if IMPORT_PACKAGE:
        import mask2former_dinov3
    from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation
    directory = {directory!r}
    kwargs = {{}} if IMPORT_PACKAGE else {{"trust_remote_code": True}}
    model = AutoModelForUniversalSegmentation.from_pretrained(directory, **kwargs).eval()
    processor = AutoImageProcessor.from_pretrained(directory, **kwargs)
    reference = torch.load(directory + "/reference.pt", weights_only=True)
    with torch.no_grad():
        out = model(reference["pixel_values"])
    assert torch.equal(out.masks_queries_logits, reference["masks"]), "masks differ"
    assert torch.equal(out.class_queries_logits, reference["classes"]), "classes differ"
    print("MODEL", type(model).__module__, type(model).__name__)
    print("PROCESSOR", type(processor).__name__)
    print("IMPORTED", "mask2former_dinov3" in sys.modules)
    """
)


def run_fresh(code):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_checkpoint_saved_before_the_spatial_prior_reloads_as_it_was(tmp_path):
    torch.manual_seed(0)
    model = Mask2FormerDINOv3ForUniversalSegmentation(tiny_config("vit", adapter_spatial_prior=False)).eval()
    model.save_pretrained(tmp_path)
    # What version 0.1 wrote: no `adapter_spatial_prior` key (its ViT adapter was the plain pyramid).
    config = json.loads((tmp_path / "config.json").read_text())
    del config["adapter_spatial_prior"], config["adapter_spatial_prior_channels"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    reloaded, info = AutoModelForUniversalSegmentation.from_pretrained(tmp_path, output_loading_info=True)
    assert reloaded.config.adapter_spatial_prior is False and not info["missing_keys"]
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(pixel_values).masks_queries_logits, model(pixel_values).masks_queries_logits)
    # Saving it again writes the field explicitly; a fresh (never serialised) config dict gets the ViT default.
    assert json.loads((tmp_path / "config.json").read_text()).get("adapter_spatial_prior") is None
    reloaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["adapter_spatial_prior"] is False
    assert type(reloaded.config).from_dict({"backbone_config": {"hidden_size": 32}}).adapter_spatial_prior is True


@pytest.mark.slow  # a new interpreter
def test_fresh_process_after_importing_the_package(saved):
    stdout = run_fresh(FRESH_PROCESS.format(import_package=True, directory=str(saved[0])))
    assert "MODEL mask2former_dinov3.modeling_mask2former_dinov3 Mask2FormerDinov3ForUniversalSegmentation" in stdout
    assert "PROCESSOR Mask2FormerDINOv3ImageProcessor" in stdout


@pytest.mark.slow  # a new interpreter
def test_fresh_process_with_trust_remote_code_and_no_import(saved):
    stdout = run_fresh(FRESH_PROCESS.format(import_package=False, directory=str(saved[0])))
    assert "MODEL transformers_modules." in stdout and "Mask2FormerDinov3ForUniversalSegmentation" in stdout
    assert "PROCESSOR Mask2FormerDINOv3ImageProcessor" in stdout
    assert "IMPORTED False" in stdout


@pytest.mark.slow  # a new interpreter
def test_trust_remote_code_from_a_config_alone_gets_upstream_initialisation(saved, tmp_path):
    """The out-of-tree initialisation pitfall, on the remote-code path: build from config, check the init."""
    code = textwrap.dedent(
        f"""
        import math, sys, torch
        from transformers import AutoConfig, AutoModelForUniversalSegmentation
        config = AutoConfig.from_pretrained({str(saved[0])!r}, trust_remote_code=True)
        torch.manual_seed(0)
        model = AutoModelForUniversalSegmentation.from_config(config, trust_remote_code=True)
        assert "mask2former_dinov3" not in sys.modules
        attention = model.model.pixel_level_module.decoder.encoder.layers[0].self_attn
        print("OFFSET_STD", float(attention.sampling_offsets.bias.detach().std()))
        print("ATTN_WEIGHTS_ABS", float(attention.attention_weights.weight.abs().sum()))
        fc1 = model.model.transformer_module.decoder.layers[0].fc1.weight
        print("FC1_STD", float(fc1.std()), "XAVIER", math.sqrt(2 / sum(fc1.shape)))
        """
    )
    values = dict(line.split(" ", 1) for line in run_fresh(code).splitlines() if line[:1].isupper())
    attention = saved[1].model.pixel_level_module.decoder.encoder.layers[0].self_attn
    assert abs(float(values["OFFSET_STD"]) - float(attention.sampling_offsets.bias.detach().std())) < 1e-6
    assert float(values["ATTN_WEIGHTS_ABS"]) == 0.0
    fc1_std, _, xavier = values["FC1_STD"].split()
    assert abs(float(fc1_std) - float(xavier)) < 0.15 * float(xavier)


def test_auto_image_processor_returns_ours(saved):
    processor = AutoImageProcessor.from_pretrained(saved[0])
    assert isinstance(processor, Mask2FormerDINOv3ImageProcessor)
    assert processor.size_divisor == 32
    assert list(processor.image_mean) == [0.485, 0.456, 0.406]


def _image(height=70, width=90, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def test_processor_pads_to_a_multiple_of_32_and_post_processing_works(saved):
    directory, model = saved[0], saved[1]
    processor = AutoImageProcessor.from_pretrained(directory)
    image = _image()
    inputs = processor(images=image, return_tensors="pt")
    height, width = inputs["pixel_values"].shape[-2:]
    assert height % 32 == 0 and width % 32 == 0
    with torch.no_grad():
        outputs = model(pixel_values=inputs["pixel_values"])
    target = [(image.height, image.width)]
    semantic = processor.post_process_semantic_segmentation(outputs, target_sizes=target)[0]
    assert tuple(semantic.shape) == (70, 90)
    assert set(semantic.unique().tolist()) <= {0, 1, 2}
    instance = processor.post_process_instance_segmentation(outputs, threshold=0.0, target_sizes=target)[0]
    assert tuple(instance["segmentation"].shape) == (70, 90)
    assert all(0 <= s["label_id"] < 3 for s in instance["segments_info"])
    panoptic = processor.post_process_panoptic_segmentation(outputs, threshold=0.0, target_sizes=target)[0]
    assert tuple(panoptic["segmentation"].shape) == (70, 90)


def test_image_processor_presets_use_the_presets_normalisation():
    satellite = Mask2FormerDINOv3ImageProcessor.from_preset("dinov3-vitl16-sat493m")
    assert list(satellite.image_mean) == [0.430, 0.411, 0.296]
    assert list(Mask2FormerDINOv3ImageProcessor.from_preset("dinov3-vits16").image_std) == [0.229, 0.224, 0.225]


def test_pipeline_from_a_saved_folder_returns_masks(saved):
    segmenter = pipeline("image-segmentation", model=str(saved[0]))
    results = segmenter(_image(), subtask="semantic")
    assert results, "the pipeline returned no segment"
    for result in results:
        assert result["label"] in {"cat", "dog", "sky"}
        assert result["mask"].size == (90, 70)
    instances = segmenter(_image(), subtask="instance", threshold=0.0)
    assert all(r["mask"].size == (90, 70) for r in instances)


def test_pipeline_says_why_it_returns_nothing(saved, tmp_path):
    # A random 3-class model: no query is 90 % sure, so the pipeline's default threshold keeps nothing. It says so,
    # once per processor; threshold 0 keeps segments and warns about nothing.
    from transformers.testing_utils import CaptureLogger

    from mask2former_dinov3 import image_processing_mask2former_dinov3 as module

    segmenter = pipeline("image-segmentation", model=str(saved[0]))
    with CaptureLogger(module.logger) as captured:
        assert segmenter(_image(), subtask="instance") == []
        assert segmenter(_image(seed=1), subtask="panoptic") == []
    assert captured.out.count("No segment passed threshold=0.9 in 1 of 1 image(s)") == 1, captured.out
    assert "best class probability" in captured.out and "a lower threshold shows more" in captured.out
    quiet = pipeline("image-segmentation", model=str(saved[0]))
    with CaptureLogger(module.logger) as captured:
        assert quiet(_image(), subtask="instance", threshold=0.0)
    assert captured.out == ""
    segmenter.image_processor.save_pretrained(tmp_path)  # the once-only flag is not a setting
    assert "warned" not in (tmp_path / "preprocessor_config.json").read_text()


@pytest.mark.slow  # a new interpreter per task
@pytest.mark.parametrize("task", ["instance", "semantic", "panoptic"])
def test_model_card_usage_snippets_run_verbatim_without_the_package(task, tmp_path):
    """The model card's code blocks, run as written from the folder's parent in a fresh process that never imports
    the package (pipeline and Auto classes through trust_remote_code, no interactive prompt: stdin is closed)."""
    import re

    from mask2former_dinov3.training import ModelCardDetails, model_card_sections

    folder = tmp_path / "my-model"
    torch.manual_seed(0)
    config = tiny_config("convnext", id2label={0: "cat", 1: "dog", 2: "sky"}, label2id={"cat": 0, "dog": 1, "sky": 2})
    model = Mask2FormerDINOv3ForUniversalSegmentation(config)
    with torch.no_grad():  # random weights mostly predict "no object", which panoptic post-processing drops
        model.class_predictor.bias[-1] = -10.0
    model.save_pretrained(folder)
    Mask2FormerDINOv3ImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    card = model_card_sections(config, ModelCardDetails(task=task, dataset_description="a test set"), folder.name)
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(blocks) == 2 and "pipeline(" in blocks[0]
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(tmp_path / "image.jpg")
    check = textwrap.dedent(
        """
        assert "mask2former_dinov3" not in sys.modules, "the package was imported"
        assert isinstance(segments, list)
        # A random model's scores are low: the pipeline's default thresholds drop its instance and panoptic
        # segments, so ask for every one; each must be a mask of the image's size.
        keep_all = {"threshold": 0.0, "mask_threshold": 0.0, "overlap_mask_area_threshold": 0.0}
        kept = segmenter("image.jpg", subtask=TASK, **({} if TASK == "semantic" else keep_all))
        assert kept and all(s["mask"].size == (80, 48) and s["label"] in {"cat", "dog", "sky"} for s in kept), kept
        print("RESULT", type(result).__name__, len(kept))
        """
    )
    code = f"import sys\nTASK = {task!r}\n" + blocks[0] + blocks[1] + check
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RESULT" in done.stdout


# Up to 0.3.0 the adapter was built from nn.Sequential, so its parameters were numbered; from 0.4.0 they have names.
_NAMED_TO_0_3_0 = (
    (r"(adapter\.resample\.0)\.conv1\.", r"\1.0."),
    (r"(adapter\.resample\.0)\.norm\.", r"\1.1."),
    (r"(adapter\.resample\.0)\.conv2\.", r"\1.3."),
    (r"(projections\.\d)\.conv\.", r"\1.0."),
    (r"(projections\.\d)\.norm\.", r"\1.1."),
    (r"(downsample)\.conv\.", r"\1.0."),
    (r"(downsample)\.norm\.", r"\1.1."),
)


def _key_in_0_3_0(key: str) -> str:
    import re

    stem = re.search(r"spatial_prior\.stem\.(\d)\.(conv|norm)\.", key)
    if stem:
        index = 3 * int(stem.group(1)) + (stem.group(2) == "norm")
        return key[: stem.start()] + f"spatial_prior.stem.{index}." + key[stem.end() :]
    for pattern, replacement in _NAMED_TO_0_3_0:
        key = re.sub(pattern, replacement, key)
    return key


@pytest.mark.parametrize("backbone", ["vit", "convnext"])
def test_checkpoint_written_by_0_3_0_loads_with_equal_outputs(tmp_path, backbone):
    """A checkpoint in 0.3.0's layout (numbered adapter keys, 0.3.0 class names in config.json) loads through
    transformers' key mapping into this version's named modules, with equal outputs, by the old and the new names and
    through the Auto class; and `save_pretrained` still writes that layout, so 0.3.0 code can load new checkpoints."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from mask2former_dinov3 import Mask2FormerDinov3ForUniversalSegmentation

    torch.manual_seed(0)
    overrides = {"adapter_channels": [32, 32, 32, 32]} if backbone == "convnext" else {}
    model = Mask2FormerDinov3ForUniversalSegmentation(tiny_config(backbone, **overrides)).eval()
    legacy_state = {_key_in_0_3_0(key): tensor.contiguous() for key, tensor in model.state_dict().items()}
    renamed = sorted(key for key in legacy_state if key not in model.state_dict())
    assert any(".projections.0.0.weight" in key for key in renamed)
    if backbone == "vit":
        assert "model.pixel_level_module.adapter.spatial_prior.stem.7.weight" in renamed
        assert "model.pixel_level_module.adapter.resample.0.3.weight" in renamed

    legacy_dir = tmp_path / "written_by_0_3_0"
    legacy_dir.mkdir()
    save_file(legacy_state, legacy_dir / "model.safetensors", metadata={"format": "pt"})
    config = model.config.to_dict()
    config["architectures"] = ["Mask2FormerDINOv3ForUniversalSegmentation"]
    config["auto_map"] = {
        "AutoConfig": "configuration_mask2former_dinov3.Mask2FormerDINOv3Config",
        "AutoModelForUniversalSegmentation": "modeling_mask2former_dinov3.Mask2FormerDINOv3ForUniversalSegmentation",
    }
    (legacy_dir / "config.json").write_text(json.dumps(config))

    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(pixel_values).masks_queries_logits
        for load in (Mask2FormerDINOv3ForUniversalSegmentation, AutoModelForUniversalSegmentation):
            loaded, info = load.from_pretrained(legacy_dir, output_loading_info=True)
            assert not info["missing_keys"] and not info["unexpected_keys"], info
            torch.testing.assert_close(loaded.eval()(pixel_values).masks_queries_logits, expected, rtol=0, atol=0)

    model.save_pretrained(tmp_path / "saved_now")
    with safe_open(tmp_path / "saved_now" / "model.safetensors", "pt") as saved:
        adapter_keys = {key for key in saved.keys() if ".adapter." in key}
    assert adapter_keys == {key for key in legacy_state if ".adapter." in key}
