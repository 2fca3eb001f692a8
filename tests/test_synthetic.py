"""Tests for the deterministic synthetic segmentation dataset (mask2former_dinov3.synthetic)."""

import hashlib
import inspect
import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from mask2former_dinov3 import synthetic
from mask2former_dinov3.synthetic import (
    CLASSES,
    THING_CLASSES,
    SyntheticConfig,
    generate_sample,
    generate_samples,
    size_bucket,
    size_bucket_area_ranges,
    write_coco_dataset,
)


pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside pycocotools


def digest(samples):
    """SHA-256 over every byte a sample holds (pixels, masks, labels, maps, segments)."""
    h = hashlib.sha256()
    for s in samples:
        for array in (np.asarray(s.image), s.masks, s.labels, s.semantic_map, s.panoptic_map):
            h.update(str(array.shape).encode() + str(array.dtype).encode())
            h.update(np.ascontiguousarray(array).tobytes())
        h.update(json.dumps(s.segments_info, sort_keys=True).encode())
    return h.hexdigest()


@pytest.fixture(scope="module")
def samples():
    return generate_samples(80, seed=0)


@pytest.mark.slow  # a new interpreter
def test_same_seed_same_bytes_in_process_and_in_a_fresh_interpreter():
    first = generate_samples(6, seed=4)
    assert digest(first) == digest(generate_samples(6, seed=4))
    assert digest(first) != digest(generate_samples(6, seed=5))
    assert digest(first) != digest(generate_samples(6, seed=4, split="valid"))
    # Random access: a sample does not depend on which samples were generated before it.
    assert digest([generate_sample(5, seed=4)]) == digest(first[5:6])
    # The module file alone (not the package, which imports transformers): numpy, PIL and pycocotools only.
    code = "\n".join(
        [
            "import hashlib, importlib.util, json, sys",
            "import numpy as np",
            f"spec = importlib.util.spec_from_file_location('synthetic', {synthetic.__file__!r})",
            "synthetic = sys.modules['synthetic'] = importlib.util.module_from_spec(spec)",
            "spec.loader.exec_module(synthetic)",
            inspect.getsource(digest),
            "print(digest(synthetic.generate_samples(6, seed=4)))",
        ]
    )
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert fresh.stdout.strip() == digest(first)


def test_classes_overlaps_empty_images_and_sizes_are_present(samples):
    height, width = SyntheticConfig().size
    classes, buckets, instances = Counter(), Counter(), Counter()
    touching = 0
    for s in samples:
        instances[len(s.labels)] += 1
        classes.update(THING_CLASSES[i] for i in s.labels)
        buckets.update(size_bucket(m.sum(), height, width) for m in s.masks)
        # Occlusion updates the earlier masks: visible masks never share a pixel ...
        assert (s.masks.sum(axis=0) <= 1).all() if len(s.masks) else True
        # ... and a shape drawn over another leaves the two masks edge to edge.
        for i in range(len(s.masks)):
            grown = s.masks[i].copy()
            grown[1:] |= s.masks[i][:-1]
            grown[:-1] |= s.masks[i][1:]
            grown[:, 1:] |= s.masks[i][:, :-1]
            grown[:, :-1] |= s.masks[i][:, 1:]
            touching += any((grown & s.masks[j]).any() for j in range(i + 1, len(s.masks)))
    assert set(classes) == set(THING_CLASSES)
    assert min(classes.values()) >= 20
    assert instances[0] >= 2, "some images must have no instance"
    assert max(instances) >= 5
    assert touching >= 20, f"only {touching} occluded instances"
    assert set(buckets) == {"small", "medium", "large"} and min(buckets.values()) >= 20, buckets


def test_reported_area_ranges_are_the_generators_buckets(samples):
    # map_small/medium/large of the offline default are computed with these ranges: each shape must fall in the
    # range of the bucket the generator gives it (COCOeval's ranges are inclusive at both ends).
    height, width = SyntheticConfig().size
    ranges = size_bucket_area_ranges(height, width)
    for s in samples:
        for mask in s.masks:
            area = int(mask.sum())
            low, high = ranges[size_bucket(area, height, width)]
            assert low <= area <= high
            others = [b for b, (lo, hi) in ranges.items() if lo < area < hi]
            assert others == [size_bucket(area, height, width)]


def test_semantic_and_panoptic_agree_with_instances(samples):
    for s in samples[:20]:
        height, width = s.semantic_map.shape
        assert s.image.mode == "RGB" and s.image.size == (width, height)
        for mask, label in zip(s.masks, s.labels):
            assert (s.semantic_map[mask] == label).all()
        stuff = ~s.masks.any(axis=0)
        assert np.isin(s.semantic_map[stuff], [CLASSES.index("sky"), CLASSES.index("ground")]).all()
        # Every pixel is in exactly one listed segment, with the listed area and category.
        ids = {seg["id"]: seg for seg in s.segments_info}
        assert set(np.unique(s.panoptic_map).tolist()) == set(ids)
        for segment_id, seg in ids.items():
            region = s.panoptic_map == segment_id
            assert region.sum() == seg["area"]
            assert (s.semantic_map[region] == seg["category_id"]).all()
            assert seg["isthing"] == (seg["category_id"] < len(THING_CLASSES))
        assert sum(seg["isthing"] for seg in s.segments_info) == len(s.labels)


def test_coco_round_trip_through_pycocotools(tmp_path):
    config = SyntheticConfig(image_size=(96, 112))  # non-square: catches height/width mix-ups
    paths = write_coco_dataset(tmp_path / "a", num_train=16, num_valid=6, seed=3, config=config, rle_fraction=0.25)
    assert paths["train"] == tmp_path / "a" / "train" / "_annotations.coco.json"
    kinds = Counter()
    for split, count in (("train", 16), ("valid", 6)):
        coco = COCO(str(paths[split]))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(THING_CLASSES)
        assert len(coco.getImgIds()) == count
        for image_id in coco.getImgIds():
            sample = generate_sample(image_id, seed=3, split=split, config=config)
            info = coco.loadImgs(image_id)[0]
            assert (info["height"], info["width"]) == (96, 112)
            on_disk = np.asarray(Image.open(paths[split].parent / info["file_name"]).convert("RGB"))
            assert (on_disk == np.asarray(sample.image)).all()
            annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
            assert len(annotations) == len(sample.labels)
            for ann, mask, label in zip(annotations, sample.masks, sample.labels):
                assert ann["category_id"] == label + 1 and ann["iscrowd"] == 0 and ann["area"] == mask.sum()
                decoded = coco.annToMask(ann).astype(bool)
                if isinstance(ann["segmentation"], list):
                    kinds["polygon"] += 1
                    iou = (decoded & mask).sum() / (decoded | mask).sum()
                    assert iou > 0.95, (split, image_id, iou)
                else:
                    kinds["rle"] += 1
                    assert (decoded == mask).all()
    assert kinds["polygon"] >= 20 and kinds["rle"] >= 5, kinds


def test_writer_is_byte_identical(tmp_path):
    config = SyntheticConfig(image_size=64)
    write_coco_dataset(tmp_path / "a", num_train=5, num_valid=3, seed=1, config=config)
    write_coco_dataset(tmp_path / "b", num_train=5, num_valid=3, seed=1, config=config)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 5 + 3 + 2
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_masks_with_holes_are_rle_and_the_rest_polygons():
    # COCO polygons cannot express a hole (an intact ring, or a shape with a smaller one on top of its inside), so
    # those masks must be RLE even at rle_fraction=0; plain shapes must be polygons.
    from mask2former_dinov3.synthetic import sample_to_coco_annotations

    kinds = Counter()
    for index in range(40):
        sample = generate_sample(index, seed=0)
        for ann, label in zip(sample_to_coco_annotations(sample, 0, 1, rle_fraction=0.0), sample.labels):
            kind = "rle" if isinstance(ann["segmentation"], dict) else "polygon"
            kinds[(THING_CLASSES[label] == "ring", kind)] += 1
    assert kinds[(True, "rle")] >= 5, kinds
    assert kinds[(False, "polygon")] >= 0.9 * (kinds[(False, "polygon")] + kinds[(False, "rle")]), kinds


def test_bad_config_raises():
    with pytest.raises(ValueError, match="size_probabilities"):
        SyntheticConfig(size_probabilities=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="at least 16"):
        SyntheticConfig(image_size=8)
    with pytest.raises(ValueError, match="split"):
        generate_sample(0, split="validation")
