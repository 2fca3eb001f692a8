"""Deterministic, offline synthetic dataset for instance, semantic and panoptic segmentation.

Each image shows a textured background split by a wavy horizon into two *stuff* regions, "sky" (smooth vertical
gradient, above) and "ground" (blotchy texture, below), and 0 to `max_instances` *things*, drawn one after the
other so that later shapes occlude earlier ones:

    class id  name       kind    what tells it apart
    0         circle     thing   filled disc
    1         square     thing   filled square, randomly rotated
    2         triangle   thing   filled equilateral triangle, randomly rotated
    3         ring       thing   annulus (disc with a hole: its masks are never polygons)
    4         sky        stuff   region above the horizon, smooth gradient
    5         ground     stuff   region below the horizon, blotchy texture

Colours of every shape and of both stuff regions are random (each shape differs from the background under it), so
only shape and texture tell the classes apart. Instance ground truth uses the thing ids 0-3; semantic maps and
panoptic segments use 0-5. Sizes are drawn per instance from three buckets whose bounds are COCO's small / medium
/ large thresholds (32² and 96² pixels on a 640x480 image) scaled to the image area (`size_bucket`); occluded
masks lose the pixels later shapes cover, and shapes left with fewer than `min_visible_pixels` visible pixels are
dropped (and not drawn). About `empty_fraction` of the images have no instance at all.

Determinism: sample `index` of split `split` with seed `seed` is drawn from `numpy.random.default_rng([seed,
split code, index])` and drawn with PIL, so it is independent of the order samples are generated in, and
bit-identical across runs and machines for the same numpy and Pillow versions (no float transcendental is
evaluated on arrays, where SIMD paths may differ by machine).

`write_coco_dataset` writes the Roboflow layout: `<root>/train/_annotations.coco.json`,
`<root>/valid/_annotations.coco.json`, images beside each json.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

if TYPE_CHECKING:  # imported where used: `data` loads torch and transformers, which drawing shapes does not need
    from .data import InstanceCount, LabelMap, Sample


__all__ = [
    "CLASSES",
    "STUFF_CLASSES",
    "THING_CLASSES",
    "SyntheticConfig",
    "SyntheticSample",
    "SyntheticSegmentationSource",
    "generate_sample",
    "generate_samples",
    "panoptic_categories",
    "sample_to_coco_annotations",
    "size_bucket",
    "synthetic_label_map",
    "synthetic_to_sample",
    "write_coco_dataset",
]

THING_CLASSES = ("circle", "square", "triangle", "ring")
STUFF_CLASSES = ("sky", "ground")
CLASSES = THING_CLASSES + STUFF_CLASSES
SKY, GROUND = len(THING_CLASSES), len(THING_CLASSES) + 1
SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}

# COCO's absolute thresholds (32², 96² px) as fractions of a 640x480 image, so that "small" means the same
# fraction of the image at any resolution.
_COCO_REFERENCE_AREA = 640 * 480
SMALL_AREA_FRACTION = 32**2 / _COCO_REFERENCE_AREA
MEDIUM_AREA_FRACTION = 96**2 / _COCO_REFERENCE_AREA


def size_bucket(area: float, height: int, width: int) -> str:
    """'small', 'medium' or 'large': COCO's area thresholds scaled from a 640x480 image to `height` x `width`."""
    fraction = area / (height * width)
    if fraction < SMALL_AREA_FRACTION:
        return "small"
    return "medium" if fraction < MEDIUM_AREA_FRACTION else "large"


def size_bucket_area_ranges(height: int, width: int) -> dict[str, tuple[float, float]]:
    """The pixel areas of `size_bucket`'s small / medium / large at `height` x `width`, as
    `InstanceSegmentationEvaluator(area_ranges=...)` takes them, so that `map_small/medium/large` report these
    buckets rather than COCO's absolute ones (which at 128 px leave "large" empty)."""
    area = height * width
    small, medium = SMALL_AREA_FRACTION * area, MEDIUM_AREA_FRACTION * area
    return {"small": (0.0, small), "medium": (small, medium), "large": (medium, 1e10)}


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the generator (defaults: the benchmark's 128-px images).

    image_size: `int` (square) or `(height, width)`.
    max_instances: at most this many shapes per image (1..max_instances, uniformly, for non-empty images).
    empty_fraction: probability that an image has no shape at all.
    overlap_probability: probability that a shape is placed on top of an earlier one rather than anywhere.
    size_probabilities: probabilities of drawing a small / medium / large shape.
    min_area_fraction / max_area_fraction: the smallest and largest shape area, as fractions of the image.
    min_visible_pixels: shapes occluded down to fewer visible pixels are dropped.
    """

    image_size: int | tuple[int, int] = 128
    max_instances: int = 6
    empty_fraction: float = 0.1
    overlap_probability: float = 0.5
    size_probabilities: tuple[float, float, float] = (0.25, 0.45, 0.30)
    min_area_fraction: float = 0.0012
    max_area_fraction: float = 0.2
    min_visible_pixels: int = 6

    def __post_init__(self):
        height, width = self.size
        if height < 16 or width < 16:
            raise ValueError(f"image_size must be at least 16 px per side, got {self.image_size}.")
        if not 0.0 <= self.empty_fraction <= 1.0 or not 0.0 <= self.overlap_probability <= 1.0:
            raise ValueError("empty_fraction and overlap_probability must lie in [0, 1].")
        if self.max_instances < 0:
            raise ValueError(f"max_instances must be >= 0, got {self.max_instances}.")
        if len(self.size_probabilities) != 3 or abs(sum(self.size_probabilities) - 1.0) > 1e-6:
            raise ValueError(
                f"size_probabilities must be 3 probabilities summing to 1, got {self.size_probabilities}."
            )
        if not 0 < self.min_area_fraction < SMALL_AREA_FRACTION < MEDIUM_AREA_FRACTION < self.max_area_fraction <= 1:
            raise ValueError(
                f"Need 0 < min_area_fraction < {SMALL_AREA_FRACTION:.4f} (small) < {MEDIUM_AREA_FRACTION:.4f} "
                f"(medium) < max_area_fraction <= 1; got {self.min_area_fraction}, {self.max_area_fraction}."
            )

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        if isinstance(self.image_size, int):
            return (self.image_size, self.image_size)
        height, width = self.image_size
        return (int(height), int(width))


@dataclass
class SyntheticSample:
    """One generated image with its instance, semantic and panoptic ground truth.

    image: RGB PIL image. masks: bool `(N, H, W)` visible instance masks (in drawing order). labels: int64 `(N,)`
    thing ids 0-3. semantic_map: uint8 `(H, W)` class ids 0-5 (every pixel labelled). panoptic_map: int32 `(H, W)`
    segment ids (every pixel in a segment; 0 unused). segments_info: `[{"id", "category_id", "iscrowd", "isthing",
    "area", "bbox"}]` with category ids 0-5 and bbox `[x, y, w, h]`. index / split / seed: where it came from.
    """

    image: Image.Image
    masks: np.ndarray
    labels: np.ndarray
    semantic_map: np.ndarray
    panoptic_map: np.ndarray
    segments_info: list[dict] = field(default_factory=list)
    index: int = 0
    split: str | int = "train"
    seed: int = 0


def panoptic_categories() -> list[dict]:
    """`[{"id", "name", "isthing"}]` for the six classes (the input `PanopticQualityEvaluator` expects)."""
    return [{"id": i, "name": name, "isthing": int(i < len(THING_CLASSES))} for i, name in enumerate(CLASSES)]


def _split_code(split: str | int) -> int:
    if isinstance(split, int):
        return split
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(SPLIT_CODES)} (or an int stream id), got {split!r}.")
    return SPLIT_CODES[split]


def _rounded(value: float) -> float:
    # Shape vertices come from math.cos/sin; rounding makes a last-bit difference between libms irrelevant.
    return round(value, 4)


def _draw_shape(
    label: int, center: tuple[float, float], area: float, angle: float, hole: float, size: tuple[int, int]
) -> np.ndarray:
    height, width = size
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = center
    if label in (0, 3):  # circle and ring: radius from the target area
        effective = area / (1.0 - hole**2) if label == 3 else area
        radius = math.sqrt(effective / math.pi)
        draw.ellipse(
            [_rounded(cx - radius), _rounded(cy - radius), _rounded(cx + radius), _rounded(cy + radius)], fill=1
        )
        if label == 3:
            inner = radius * hole
            draw.ellipse(
                [_rounded(cx - inner), _rounded(cy - inner), _rounded(cx + inner), _rounded(cy + inner)], fill=0
            )
    else:
        if label == 1:  # square of side a: circumradius a / sqrt(2)
            corners, circumradius = 4, math.sqrt(area) / math.sqrt(2)
        else:  # equilateral triangle of side a, area sqrt(3)/4 a²: circumradius a / sqrt(3)
            corners, circumradius = 3, math.sqrt(4 * area / math.sqrt(3)) / math.sqrt(3)
        vertices = [
            (
                _rounded(cx + circumradius * math.cos(angle + 2 * math.pi * k / corners)),
                _rounded(cy + circumradius * math.sin(angle + 2 * math.pi * k / corners)),
            )
            for k in range(corners)
        ]
        draw.polygon(vertices, fill=1)
    return np.array(canvas, dtype=np.uint8) > 0


def _shape_extent(area: float) -> float:
    # Half-width of the shape's bounding circle, about: used for placement only.
    return math.sqrt(area / math.pi) * 1.3


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cell: int, amplitude: int) -> np.ndarray:
    """Integer noise on a coarse grid, bilinearly upsampled by PIL (deterministic), in [-amplitude, amplitude]."""
    height, width = size
    grid = rng.integers(0, 256, size=(max(height // cell, 1) + 1, max(width // cell, 1) + 1), dtype=np.uint8)
    upsampled = np.asarray(Image.fromarray(grid, mode="L").resize((width, height), Image.BILINEAR), dtype=np.int32)
    return (upsampled - 128) * amplitude // 128


def _background(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) int32 background and (H, W) bool sky mask."""
    height, width = size
    base = 0.3 + 0.4 * rng.random()
    amplitude = 0.08 * rng.random()
    cycles = 0.5 + 1.5 * rng.random()
    phase = rng.random()
    horizon = np.array(
        [
            int(round(height * (base + amplitude * math.sin(2 * math.pi * (cycles * x / width + phase)))))
            for x in range(width)
        ]
    )
    rows = np.arange(height)[:, None]
    sky = rows < horizon[None, :]

    top, bottom = rng.integers(0, 256, size=3), rng.integers(0, 256, size=3)
    # Integer gradient: (top * (H - 1 - y) + bottom * y) // (H - 1), exact in any arithmetic.
    gradient = (top[None, :] * (height - 1 - rows) + bottom[None, :] * rows) // max(height - 1, 1)
    sky_pixels = np.broadcast_to(gradient[:, None, :], (height, width, 3)) + rng.integers(
        -6, 7, size=(height, width, 3)
    )

    ground_colour = rng.integers(0, 256, size=3)
    blotches = _smooth_noise(rng, size, cell=max(min(height, width) // 12, 2), amplitude=45)
    grain = rng.integers(-20, 21, size=(height, width, 3))
    ground_pixels = ground_colour[None, None, :] + blotches[..., None] + grain

    background = np.where(sky[..., None], sky_pixels, ground_pixels)
    return background.astype(np.int32), sky


def _object_colour(rng: np.random.Generator, background_mean: np.ndarray) -> np.ndarray:
    # Random colour far enough from the background under the shape that the shape is visible.
    colour = rng.integers(0, 256, size=3)
    for _ in range(20):
        if np.abs(colour - background_mean).sum() >= 120:
            break
        colour = rng.integers(0, 256, size=3)
    return colour


def generate_sample(
    index: int, seed: int = 0, split: str | int = "train", config: SyntheticConfig | None = None
) -> SyntheticSample:
    """Sample `index` of `split` for `seed`: the same arguments always give the same bytes."""
    config = config or SyntheticConfig()
    height, width = config.size
    image_area = height * width
    rng = np.random.default_rng([int(seed), _split_code(split), int(index)])

    background, sky = _background(rng, (height, width))

    num_instances = 0 if rng.random() < config.empty_fraction else int(rng.integers(1, config.max_instances + 1))
    bucket_bounds = (
        (config.min_area_fraction, SMALL_AREA_FRACTION),
        (SMALL_AREA_FRACTION, MEDIUM_AREA_FRACTION),
        (MEDIUM_AREA_FRACTION, config.max_area_fraction),
    )
    shapes = []  # (label, full mask, centre, extent)
    for _ in range(num_instances):
        label = int(rng.integers(len(THING_CLASSES)))
        low, high = bucket_bounds[int(rng.choice(3, p=config.size_probabilities))]
        # Log-uniform area inside the bucket; the drawn area is then close to it (rasterisation rounds).
        area = image_area * low * (high / low) ** rng.random()
        angle = 2 * math.pi * rng.random()
        hole = 0.45 + 0.2 * rng.random()
        extent = _shape_extent(area)
        if shapes and rng.random() < config.overlap_probability:
            _, _, (ox, oy), other_extent = shapes[int(rng.integers(len(shapes)))]
            reach = 0.7 * (extent + other_extent)
            cx, cy = ox + reach * (2 * rng.random() - 1), oy + reach * (2 * rng.random() - 1)
        else:
            margin_x, margin_y = min(extent, width / 2), min(extent, height / 2)
            cx = margin_x + (width - 2 * margin_x) * rng.random()
            cy = margin_y + (height - 2 * margin_y) * rng.random()
        cx, cy = min(max(cx, 0.0), width - 1.0), min(max(cy, 0.0), height - 1.0)
        mask = _draw_shape(label, (cx, cy), area, angle, hole, (height, width))
        if mask.sum() >= config.min_visible_pixels:
            shapes.append((label, mask, (cx, cy), extent))

    # Occlusion: a shape loses the pixels of every later shape. Shapes left (almost) invisible are dropped and
    # never drawn, so the image shows exactly what the annotations say.
    kept = list(range(len(shapes)))
    while True:
        visible = _visible_masks([shapes[i][1] for i in kept])
        too_small = [i for i, m in zip(kept, visible) if m.sum() < config.min_visible_pixels]
        if not too_small:
            break
        kept = [i for i in kept if i not in too_small]

    image = background.copy()
    for i, mask in zip(kept, visible):
        full = shapes[i][1]
        colour = _object_colour(rng, background[full].mean(axis=0))
        shading = _smooth_noise(rng, (height, width), cell=max(min(height, width) // 6, 2), amplitude=25)
        grain = rng.integers(-10, 11, size=(height, width, 3))
        texture = colour[None, None, :] + shading[..., None] + grain
        # Painting the full shape in order gives the same pixels as painting the visible parts.
        image[full] = texture[full]
    image = np.clip(image, 0, 255).astype(np.uint8)

    labels = np.array([shapes[i][0] for i in kept], dtype=np.int64)
    masks = np.stack(visible) if visible else np.zeros((0, height, width), dtype=bool)
    semantic = np.where(sky, SKY, GROUND).astype(np.uint8)
    panoptic = np.zeros((height, width), dtype=np.int32)
    segments = []
    next_id = 1
    for category, region in ((SKY, sky & ~masks.any(axis=0)), (GROUND, ~sky & ~masks.any(axis=0))):
        if region.any():
            panoptic[region] = next_id
            segments.append(_segment_info(next_id, category, region))
            next_id += 1
    for label, mask in zip(labels, masks):
        semantic[mask] = label
        panoptic[mask] = next_id
        segments.append(_segment_info(next_id, int(label), mask))
        next_id += 1
    return SyntheticSample(
        image=Image.fromarray(image, mode="RGB"),
        masks=masks,
        labels=labels,
        semantic_map=semantic,
        panoptic_map=panoptic,
        segments_info=segments,
        index=int(index),
        split=split,
        seed=int(seed),
    )


def _visible_masks(full_masks: list[np.ndarray]) -> list[np.ndarray]:
    visible = []
    covered = np.zeros_like(full_masks[0]) if full_masks else None
    for mask in reversed(full_masks):  # later shapes are on top
        visible.append(mask & ~covered)
        covered = covered | mask
    return visible[::-1]


def _segment_info(segment_id: int, category: int, region: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(region.astype(np.uint8)))
    return {
        "id": segment_id,
        "category_id": category,
        "iscrowd": 0,
        "isthing": int(category < len(THING_CLASSES)),
        "area": int(region.sum()),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
    }


def generate_samples(
    num_samples: int, seed: int = 0, split: str | int = "train", config: SyntheticConfig | None = None, start: int = 0
) -> list[SyntheticSample]:
    """Samples `start .. start + num_samples - 1` of `split` (see `generate_sample`)."""
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}.")
    return [generate_sample(start + i, seed=seed, split=split, config=config) for i in range(num_samples)]


def _polygons(mask: np.ndarray) -> list[list[float]] | None:
    """COCO polygons that rasterise (pycocotools) back to `mask`, or `None` when the mask has holes.

    Contours are traced by OpenCV on the mask upsampled 2x, so vertices lie a quarter pixel inside the pixel
    edges; pycocotools fills a pixel whose centre lies inside, which reproduces the mask instead of eroding it by
    half a pixel (tracing pixel centres would lose ~10% of a 20-px shape).
    """
    import cv2

    upsampled = np.kron(mask.astype(np.uint8), np.ones((2, 2), dtype=np.uint8))
    contours, hierarchy = cv2.findContours(upsampled, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is not None and np.any(hierarchy[0][:, 3] >= 0):
        return None  # a hole: COCO polygons cannot express it
    polygons = []
    for contour in contours:
        points = (contour.reshape(-1, 2).astype(np.float64) + 0.5) / 2.0
        if len(points) < 3:
            points = np.concatenate([points] * 3)[:3]  # a 1-2 point contour (a single pixel): a degenerate triangle
        polygons.append([round(float(v), 2) for v in points.ravel()])
    return polygons


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def sample_to_coco_annotations(
    sample: SyntheticSample, image_id: int, first_annotation_id: int, rle_fraction: float = 0.2
) -> list[dict]:
    """COCO instance annotations (thing classes only, `category_id = label + 1`) for one sample.

    Masks become polygons when they have no hole and the polygons rasterise back to an IoU >= 0.98; otherwise, and
    for a seeded `rle_fraction` of the rest (so loaders meet both encodings), compressed RLE with `counts` as a
    string. `iscrowd` is always 0.
    """
    height, width = sample.masks.shape[1:]
    choice_rng = np.random.default_rng([sample.seed, _split_code(sample.split), sample.index, 7])
    annotations = []
    for k, (mask, label) in enumerate(zip(sample.masks, sample.labels)):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        use_rle = choice_rng.random() < rle_fraction
        polygons = None if use_rle else _polygons(mask)
        if polygons is not None:
            decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))) > 0
            if _mask_iou(decoded, mask) < 0.98:
                polygons = None
        segmentation = (
            polygons
            if polygons is not None
            else {"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")}
        )
        annotations.append(
            {
                "id": first_annotation_id + k,
                "image_id": image_id,
                "category_id": int(label) + 1,
                "segmentation": segmentation,
                "area": int(mask.sum()),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    return annotations


def write_coco_dataset(
    root: str | Path,
    num_train: int = 200,
    num_valid: int = 50,
    seed: int = 0,
    config: SyntheticConfig | None = None,
    rle_fraction: float = 0.2,
    roboflow_supercategory: bool = False,
) -> dict[str, Path]:
    """Write `num_train` / `num_valid` samples as COCO instance segmentation in the Roboflow layout.

    `<root>/train/_annotations.coco.json` and `<root>/valid/_annotations.coco.json`, PNG images beside each json
    (`file_name` relative to it). Categories: ids 1-4 = circle, square, triangle, ring (`label + 1`); with
    `roboflow_supercategory=True` an id-0 supercategory without annotations is added first, as Roboflow exports do.
    Image ids start at 0 (as Roboflow's), annotation ids at 1 (COCOeval treats id 0 as "unmatched").
    Returns `{"train": json path, "valid": json path}`. Same arguments -> byte-identical files.
    """
    config = config or SyntheticConfig()
    root = Path(root)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(THING_CLASSES)]
    if roboflow_supercategory:
        categories.insert(0, {"id": 0, "name": "shapes", "supercategory": "none"})
    paths = {}
    for split, count in (("train", num_train), ("valid", num_valid)):
        split_dir = root / split
        split_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            sample = generate_sample(index, seed=seed, split=split, config=config)
            file_name = f"synthetic_{split}_{index:05d}.png"
            # Fixed PNG settings: the file bytes depend only on the pixels.
            sample.image.save(split_dir / file_name, format="PNG", compress_level=6, optimize=False)
            height, width = config.size
            images.append({"id": index, "file_name": file_name, "height": height, "width": width})
            annotations += sample_to_coco_annotations(sample, index, len(annotations) + 1, rle_fraction=rle_fraction)
        dataset = {
            "info": {
                "description": "mask2former_dinov3 synthetic shapes",
                "seed": seed,
                "split": split,
                "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
            },
            "licenses": [],
            "categories": categories,
            "images": images,
            "annotations": annotations,
        }
        path = split_dir / "_annotations.coco.json"
        path.write_text(json.dumps(dataset, indent=None, separators=(",", ":")) + "\n", encoding="utf-8")
        paths[split] = path
    return paths


# --------------------------------------------------------------------------------------------------------------------
# The synthetic set as a fine-tuning data source (`mask2former_dinov3.data.Sample`). The generator above imports
# nothing of the package (it runs as a standalone file); the adapter imports `data` when used.
# --------------------------------------------------------------------------------------------------------------------


class SyntheticSegmentationSource:
    """Samples of the synthetic set (deterministic shapes on a sky/ground background), generated on first use and
    cached: the offline default dataset of the fine-tuning script.

    Args:
        split: "train", "valid" or "test" (independent streams of images).
        num_samples: number of images.
        seed: generator seed.
        image_size: side of the square images.
        with_stuff: include the stuff regions ("sky", "ground") as segments (semantic / panoptic tasks); without,
            the label map holds the four thing classes only (instance task).
        **config_kwargs: other `SyntheticConfig` fields (e.g. `size_probabilities`).
    """

    def __init__(
        self, split: str, num_samples: int, seed: int = 0, image_size: int = 128, with_stuff: bool = False,
        **config_kwargs,
    ):  # fmt: skip
        self.split = split
        self.num_samples = num_samples
        self.seed = seed
        self.config = SyntheticConfig(image_size=image_size, **config_kwargs)
        self.with_stuff = with_stuff
        self.label_map = synthetic_label_map(with_stuff)
        self._cache: dict[int, Sample] = {}

    @property
    def area_ranges(self) -> dict[str, tuple[float, float]]:
        """The generator's small / medium / large areas in pixels (see `size_bucket_area_ranges`)."""
        return size_bucket_area_ranges(*self.config.size)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        if index not in self._cache:
            item = generate_sample(index, seed=self.seed, split=self.split, config=self.config)
            self._cache[index] = synthetic_to_sample(item, self.with_stuff)
        return self._cache[index]

    def count_instances(self, task: str) -> InstanceCount:
        """The generator's `max_instances` (plus the stuff classes for the panoptic task): an upper bound."""
        from .data import InstanceCount

        stuff = len(self.label_map.stuff_ids) if task == "panoptic" else 0
        return InstanceCount(self.config.max_instances + stuff, f"synthetic {self.split}", len(self), exact=False)


def synthetic_label_map(with_stuff: bool) -> LabelMap:
    """Label map of the synthetic data: the thing classes, plus the stuff classes when `with_stuff`."""
    from .data import LabelMap

    names = CLASSES if with_stuff else THING_CLASSES
    return LabelMap(id2label=dict(enumerate(names)), thing_ids=frozenset(range(len(THING_CLASSES))))


def synthetic_to_sample(item: SyntheticSample, with_stuff: bool) -> Sample:
    """A `Sample` of a `SyntheticSample`: its visible instance masks, plus the stuff regions if asked; they never
    overlap, so they come as one id map."""
    from .data import Sample, id_map_of, to_rgb_array

    masks = list(item.masks)
    labels = [int(label) for label in item.labels]
    is_instance = [True] * len(labels)
    if with_stuff:
        for info in item.segments_info:
            if not info["isthing"]:
                masks.append(item.panoptic_map == info["id"])
                labels.append(int(info["category_id"]))
                is_instance.append(False)
    return Sample(
        image=to_rgb_array(item.image), masks=id_map_of(masks, item.panoptic_map.shape), labels=labels,
        iscrowd=[False] * len(labels), is_instance=is_instance, image_id=int(item.index),
        file_name=f"synthetic-{item.split}-{item.index:05d}",
    )  # fmt: skip
