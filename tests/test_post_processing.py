"""The processor's post-processing: upstream's results where no resize is involved, one resize otherwise
(transformers #44901), and memory bounded by a chunk of queries."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

from mask2former_dinov3 import Mask2FormerDINOv3ImageProcessor, post_processing


UPSTREAM_SIZE = 384  # upstream's hard-coded intermediate size


def random_outputs(queries=12, classes=3, size=UPSTREAM_SIZE, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(batch, queries, classes + 1, generator=generator) * 3
    # Smooth blobs, so that masks have sizeable foreground and overlap.
    coarse = torch.randn(batch, queries, 6, 6, generator=generator) * 4
    masks = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return SimpleNamespace(class_queries_logits=class_logits, masks_queries_logits=masks)


@pytest.fixture(scope="module")
def processors():
    return Mask2FormerDINOv3ImageProcessor(), Mask2FormerImageProcessorPil()


@pytest.mark.parametrize("target_sizes", [None, [(UPSTREAM_SIZE, UPSTREAM_SIZE)] * 2])
@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_instance_equals_upstream_without_resize(processors, target_sizes, threshold):
    ours, upstream = processors
    outputs = random_outputs()
    for kwargs in ({}, {"return_binary_maps": True}, {"return_coco_annotation": True}):
        a = ours.post_process_instance_segmentation(outputs, threshold=threshold, target_sizes=target_sizes, **kwargs)
        b = upstream.post_process_instance_segmentation(outputs, threshold, target_sizes=target_sizes, **kwargs)
        for x, y in zip(a, b):
            assert x["segments_info"] == y["segments_info"] and len(y["segments_info"]) > 0
            if kwargs.get("return_coco_annotation"):
                assert x["segmentation"] == y["segmentation"]
            else:
                assert torch.equal(torch.as_tensor(x["segmentation"]).float(), y["segmentation"].float())


def test_semantic_equals_upstream_without_resize(processors):
    ours, upstream = processors
    outputs = random_outputs()
    for target_sizes in (None, [(UPSTREAM_SIZE, UPSTREAM_SIZE)] * 2):
        a = ours.post_process_semantic_segmentation(outputs, target_sizes, return_segmentation_scores=True)
        b = upstream.post_process_semantic_segmentation(outputs, target_sizes, return_segmentation_scores=True)
        for x, y in zip(a, b):
            torch.testing.assert_close(x["segmentation_scores"], y["segmentation_scores"], atol=1e-5, rtol=1e-5)
            assert torch.equal(x["segmentation"], y["segmentation"])


def test_panoptic_equals_upstream_without_resize(processors):
    ours, upstream = processors
    outputs = random_outputs()
    for target_sizes in (None, [(UPSTREAM_SIZE, UPSTREAM_SIZE)] * 2):
        kwargs = dict(threshold=0.3, label_ids_to_fuse={1}, overlap_mask_area_threshold=0.1, target_sizes=target_sizes)
        a = ours.post_process_panoptic_segmentation(outputs, **kwargs)
        b = upstream.post_process_panoptic_segmentation(outputs, **kwargs)
        for x, y in zip(a, b):
            assert x["segments_info"] == y["segments_info"] and len(y["segments_info"]) > 0
            assert torch.equal(x["segmentation"].float(), y["segmentation"].float())


def thin_structure_outputs(image_size=2048, stride=4):
    """A grid of thin lines (8 px wide at `image_size`) and a model that predicts them perfectly at its own mask
    size (1/`stride` of the input: 512 px for 2048): logit +8 on the lines, -8 elsewhere, for one confident query
    of class 0."""
    truth = torch.zeros(image_size, image_size, dtype=torch.bool)
    for start in range(100, image_size - 100, 152):  # on the mask grid (multiples of 4), 2 mask pixels wide
        truth[start : start + 8, 48:-48] = True
        truth[48:-48, start + 40 : start + 48] = True
    mask_size = image_size // stride
    coarse = truth.view(mask_size, stride, mask_size, stride).float().mean((1, 3)) > 0.5
    masks = torch.where(coarse, 8.0, -8.0)[None, None].repeat(1, 2, 1, 1)
    masks[0, 1] = 0.0  # a second query, of class 1, at probability 0.5 everywhere: the semantic background
    classes = torch.tensor([[[6.0, -6.0, -6.0], [-6.0, 6.0, -6.0]]])
    return truth, SimpleNamespace(class_queries_logits=classes, masks_queries_logits=masks)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a & b).sum() / (a | b).sum()).item()


def test_thin_structures_survive_at_2048_px_where_upstream_loses_them(processors):
    ours, upstream = processors
    truth, outputs = thin_structure_outputs()
    size = [tuple(truth.shape)]
    a = ours.post_process_instance_segmentation(outputs, threshold=0.5, target_sizes=size, return_binary_maps=True)[0]
    b = upstream.post_process_instance_segmentation(outputs, 0.5, target_sizes=size, return_binary_maps=True)[0]
    ours_iou, upstream_iou = iou(a["segmentation"][0].bool(), truth), iou(b["segmentation"][0].bool(), truth)
    print(f"IoU with the 8-px lines at 2048 px: ours {ours_iou:.3f}, upstream {upstream_iou:.3f}")
    assert ours_iou > 0.95
    assert upstream_iou < ours_iou - 0.1
    # Semantic: the same structure as the class map.
    semantic = ours.post_process_semantic_segmentation(outputs, target_sizes=size)[0] == 0
    upstream_semantic = upstream.post_process_semantic_segmentation(outputs, target_sizes=size)[0] == 0
    assert iou(semantic, truth) > 0.95 and iou(upstream_semantic, truth) < iou(semantic, truth) - 0.1


def test_chunks_give_the_same_results(processors, monkeypatch):
    ours, _ = processors
    outputs = random_outputs(size=48)
    size = [(100, 130)] * 2
    whole = ours.post_process_instance_segmentation(outputs, threshold=0.1, target_sizes=size, return_binary_maps=True)
    semantic = ours.post_process_semantic_segmentation(outputs, size, return_segmentation_scores=True)
    monkeypatch.setattr(post_processing, "CHUNK_ELEMENTS", 100 * 130 * 2)  # two masks per chunk
    chunked = ours.post_process_instance_segmentation(outputs, threshold=0.1, target_sizes=size,
                                                      return_binary_maps=True)  # fmt: skip
    for x, y in zip(chunked, whole):
        assert x["segments_info"] == y["segments_info"] and torch.equal(x["segmentation"], y["segmentation"])
    for x, y in zip(ours.post_process_semantic_segmentation(outputs, size, return_segmentation_scores=True), semantic):
        torch.testing.assert_close(x["segmentation_scores"], y["segmentation_scores"])


def _peak_resident_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:"))


def _resident_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux's peak-RSS reset (clear_refs)")
def test_instance_post_processing_never_holds_every_query_at_full_size(processors):
    """600 queries at 1024x1024 would be 2.4 GB as upstream's `(queries, H, W)` floats; here at most a chunk."""
    ours, _ = processors
    queries, size = 600, (1024, 1024)
    generator = torch.Generator().manual_seed(0)
    outputs = SimpleNamespace(
        class_queries_logits=torch.randn(1, queries, 2, generator=generator),
        masks_queries_logits=torch.randn(1, queries, 64, 64, generator=generator) - 2.5,  # small sparse masks
    )
    before = _resident_mb()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    result = ours.post_process_instance_segmentation(outputs, threshold=0.0, target_sizes=[size])[0]
    grown = _peak_resident_mb() - before
    print(f"{len(result['segments_info'])} instances, peak memory growth {grown:.0f} MB")
    assert len(result["segments_info"]) > 100
    assert grown < 600


PATCH = Path(__file__).resolve().parents[1] / "upstream" / "mask2former_fixes" / "0004-post-processing-resize-once.patch"
PATCHED_FILES = ("image_processing_mask2former.py", "image_processing_pil_mask2former.py")


def _patched_upstream_processor(tmp_path):
    """Upstream's PIL processor class from the installed sources with the patch applied (None, reason if not
    possible)."""
    import importlib.util
    import shutil
    import subprocess

    import transformers

    if transformers.__version__ != "5.25.0":
        return None, f"the patch is made against transformers 5.25.0, installed is {transformers.__version__}"
    if shutil.which("git") is None:
        return None, "git is not installed (the patch is applied with git apply)"
    installed = Path(transformers.__file__).parent / "models" / "mask2former"
    folder = tmp_path / "src" / "transformers" / "models" / "mask2former"
    folder.mkdir(parents=True)
    for name in PATCHED_FILES:
        shutil.copy(installed / name, folder / name)
    done = subprocess.run(["git", "apply", str(PATCH)], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, f"the patch does not apply to transformers 5.25.0: {done.stderr}"
    name = "transformers.models.mask2former._patched_image_processing_pil_mask2former"
    spec = importlib.util.spec_from_file_location(name, folder / "image_processing_pil_mask2former.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Mask2FormerImageProcessorPil(), ""


def test_upstream_patch_gives_the_packages_post_processing(processors, tmp_path):
    ours, _ = processors
    patched, reason = _patched_upstream_processor(tmp_path)
    if patched is None:
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)
    outputs = random_outputs(size=40)
    sizes = [(150, 110), (64, 90)]
    a = ours.post_process_instance_segmentation(outputs, threshold=0.2, target_sizes=sizes, return_binary_maps=True)
    b = patched.post_process_instance_segmentation(outputs, 0.2, target_sizes=sizes, return_binary_maps=True)
    for x, y in zip(a, b):
        assert x["segments_info"] == y["segments_info"] and len(y["segments_info"]) > 0
        assert torch.equal(x["segmentation"].float(), y["segmentation"].float())
    a = ours.post_process_semantic_segmentation(outputs, sizes, return_segmentation_scores=True)
    b = patched.post_process_semantic_segmentation(outputs, sizes, return_segmentation_scores=True)
    for x, y in zip(a, b):
        torch.testing.assert_close(x["segmentation_scores"], y["segmentation_scores"], atol=1e-5, rtol=1e-5)
    kwargs = dict(threshold=0.3, overlap_mask_area_threshold=0.1, label_ids_to_fuse=set(), target_sizes=sizes)
    for x, y in zip(ours.post_process_panoptic_segmentation(outputs, **kwargs),
                    patched.post_process_panoptic_segmentation(outputs, **kwargs)):  # fmt: skip
        assert x["segments_info"] == y["segments_info"] and torch.equal(x["segmentation"], y["segmentation"])
    truth, thin = thin_structure_outputs()
    fixed = patched.post_process_instance_segmentation(thin, 0.5, target_sizes=[tuple(truth.shape)],
                                                       return_binary_maps=True)[0]  # fmt: skip
    assert iou(fixed["segmentation"][0].bool(), truth) > 0.95
