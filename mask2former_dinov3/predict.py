"""Batch prediction on image files: `mask2former-dinov3-predict MODEL INPUT... --output_dir DIR`.

Writes into `--output_dir`:

* `predictions.json`: COCO results, a list of `{"image_id", "category_id", "segmentation" (RLE), "score"}`
  (`--task semantic`: one entry per class present, without score, as COCO stuff results);
* `images.json`: the COCO `images` entries (`id`, `file_name`, `height`, `width`) of the processed images;
* `overlays/<name>.png`: the image with coloured masks and one label per object / region, drawn as training's
  overlays are (`mask2former_dinov3.overlays.draw_segments`: enlarged to at least 512 px on the short side, an
  empty prediction said so);
* `--task semantic`: `semantic/<name>.png`, the label-id map (8-bit, or 16-bit above 255 labels);
* `--task panoptic`: `panoptic/<name>.png`, segment ids in COCO panoptic's RGB encoding
  (`id = R + 256 G + 256^2 B`), and `panoptic.json`, COCO panoptic results (`{"annotations": [...]}`);
* `--label_images` (instance task): `label_images/<name>_masks.tif`, one integer label image per input as microscopy
  tools read them (0 background, instance k = k-th highest score; uint16, uint32 above 65,535 instances; where masks
  overlap the higher score wins), for CellProfiler, napari or StarDist's metrics.

`predictions.json` keeps every instance that reaches `--threshold` (no cap on the count per image).

Category ids: the model's label ids mapped through the model folder's `label_map.json` when it has one (key
`dataset_ids`, dataset id -> label id, as `LabelMap` keeps it, or `category_ids`, label id -> dataset id), else the
label ids themselves. Image ids: from `--annotations` (a COCO JSON, matched by file name) when given, else 1..N in
sorted input order.

Pre- and post-processing are the model's own image processor's (the same pixels as training and evaluation; images
that are not 8-bit, e.g. 16-bit TIFF, go through its intensity normalisation, and the overlays show them so); results
are at each image's original size. `--tile H W --overlap P` runs the model on overlapping windows at native
resolution instead (see `mask2former_dinov3.tiling`); a model folder with `tiling.json` (trained with
`run_instance_seg.py --crop_to_size`) is run by its tiles unless `--tile` says otherwise.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from .inference import forward_images
from .intensity import is_8_bit
from .overlays import draw_segments
from .tiling import TILING_FILE, default_overlap, load_tiling


__all__ = [
    "IMAGE_EXTENSIONS",
    "UsageError",
    "collect_inputs",
    "encode_mask",
    "forward_images",
    "label_image",
    "label_image_dtype",
    "load_category_ids",
    "main",
    "write_label_image",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class UsageError(Exception):
    """A user error (bad path, bad option value): reported as one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(message)


def _warn(message: str) -> None:
    print(f"mask2former-dinov3-predict: {message}", file=sys.stderr, flush=True)


def collect_inputs(inputs: Sequence[str]) -> list[Path]:
    """Image paths from files, folders (their images, not recursive) and glob patterns, sorted, without duplicates.

    A folder without images or a pattern matching nothing is reported on stderr and skipped; a named file is kept
    whatever its extension (reading it is what tells whether it is an image).
    """
    found: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
            if not images:
                _warn(f"skipping {item}: no images in this folder")
            found.update(images)
        elif path.is_file():
            found.add(path)
        else:
            matches = [Path(p) for p in glob.glob(item) if Path(p).is_file()]
            if not matches:
                _warn(f"skipping {item}: no such file, folder or matching pattern")
            found.update(matches)
    return sorted(found)


def load_category_ids(model_dir: str) -> dict[int, int] | None:
    """Label id -> dataset category id from `<model_dir>/label_map.json`, or None when there is none to read."""
    path = Path(model_dir) / "label_map.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("category_ids"):
        return {int(label): int(category) for label, category in data["category_ids"].items()}
    if data.get("dataset_ids"):
        return {int(label): int(category) for category, label in data["dataset_ids"].items()}
    return None


def _stuff_ids(model_dir: str) -> set[int]:
    path = Path(model_dir) / "label_map.json"
    if path.is_file():
        return {int(i) for i in json.loads(path.read_text()).get("stuff_ids", [])}
    return set()


def encode_mask(mask: np.ndarray) -> dict:
    """COCO RLE of a boolean `(H, W)` mask, `counts` as str (JSON-serialisable)."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


@dataclass
class _Item:
    path: Path
    image_id: int
    name: str


def label_image_dtype(count: int) -> type:
    """The label images' integer type for `count` instances: uint16, or uint32 above 65,535 (as microscopy tools
    store them)."""
    return np.uint16 if count <= np.iinfo(np.uint16).max else np.uint32


def label_image(size: tuple[int, int], instances: Sequence[tuple[np.ndarray, float]]) -> np.ndarray:
    """An integer label image of `(mask, score)` instances: 0 background, k for the k-th highest score (painted
    from the lowest score up, so where masks overlap the higher score wins); uint16, uint32 above 65,535."""
    labels = np.zeros(size, dtype=label_image_dtype(len(instances)))
    order = sorted(range(len(instances)), key=lambda k: -float(instances[k][1]))
    for rank in reversed(range(len(order))):
        labels[np.asarray(instances[order[rank]][0], dtype=bool)] = rank + 1
    return labels


def write_label_image(path: Path, size: tuple[int, int], instances: Sequence[tuple[np.ndarray, float]]) -> None:
    """Write `label_image(size, instances)` as a TIFF (zlib-compressed) with tifffile."""
    import tifffile

    tifffile.imwrite(path, label_image(size, instances), compression="zlib")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _Parser(
        prog="mask2former-dinov3-predict",
        description="Segment images with a Mask2FormerDINOv3 model; write COCO results, overlays and maps.",
    )
    parser.add_argument("model", help="model folder or Hub id (a training run's output folder works)")
    parser.add_argument("inputs", nargs="+", help="image files, folders of images, or glob patterns")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--task", choices=("instance", "semantic", "panoptic"), default="instance")
    parser.add_argument("--threshold", type=float, default=0.5, help="score threshold; 0 keeps every query (COCO AP)")
    parser.add_argument("--annotations", help="COCO JSON whose image ids to use (matched by file name)")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument(
        "--tile", type=int, nargs=2, metavar=("H", "W"),
        help="tiled prediction with H x W windows (default: the model folder's tiling.json, written by training with "
        "--crop_to_size; without one, whole images resized by the processor)",
    )  # fmt: skip
    parser.add_argument(
        "--overlap", type=int,
        help="overlap of neighbouring tiles, in pixels (default: tiling.json's, else a quarter of the shorter tile side)",
    )  # fmt: skip
    parser.add_argument("--no_overlays", action="store_true", help="do not write overlay PNGs")
    parser.add_argument(
        "--label_images", action="store_true",
        help="also write label_images/NAME_masks.tif per input: 0 background, 1..N instances by descending score "
        "(uint16, or uint32 above 65,535); instance task only",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.tile is not None:
        _check_tiling(args)
    if args.label_images and args.task != "instance":
        raise UsageError(f"--label_images writes instance label images; it needs --task instance, not {args.task}")
    if args.annotations and not Path(args.annotations).is_file():
        raise UsageError(f"--annotations {args.annotations}: no such file")
    return args


def _check_tiling(args: argparse.Namespace) -> None:
    if args.overlap is None:
        args.overlap = default_overlap(args.tile)
    if min(args.tile) < 32:
        raise UsageError(f"--tile sizes must be at least 32, got {args.tile}")
    if not 0 <= args.overlap < min(args.tile):
        raise UsageError(f"--overlap must be in [0, {min(args.tile)}), got {args.overlap}")
    if args.task == "panoptic":
        raise UsageError("--tile supports --task instance and semantic, not panoptic")


def _default_tiling(args: argparse.Namespace) -> None:
    """Without `--tile`, the tiles of a model trained on native-resolution crops (its folder's `tiling.json`)."""
    if args.tile is not None or not Path(args.model).is_dir():
        return
    saved = load_tiling(args.model)
    if saved is None:
        return
    if args.task == "panoptic":
        raise UsageError(
            f"{args.model} was trained on native-resolution crops ({TILING_FILE}): it is run by tiles, which support "
            f"--task instance and semantic, not panoptic"
        )
    args.tile, args.overlap = list(saved[0]), (saved[1] if args.overlap is None else args.overlap)
    _check_tiling(args)


def _load(model_name: str, device: str, dtype: torch.dtype):
    import transformers

    import mask2former_dinov3  # noqa: F401  (registers the model with the Auto classes)

    looks_local = os.path.sep in model_name or model_name.startswith(".") or os.path.exists(model_name)
    if looks_local and not Path(model_name).is_dir():
        raise UsageError(f"model folder {model_name} does not exist")
    transformers.utils.logging.set_verbosity_error()
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(model_name)
        model = transformers.AutoModelForUniversalSegmentation.from_pretrained(model_name)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"cannot load model {model_name}: {first}") from None
    try:
        model = model.to(device=device, dtype=dtype).eval()
    except (RuntimeError, AssertionError) as error:
        raise UsageError(f"--device {device}: {str(error).splitlines()[0]}") from None
    return model, processor


def _items(paths: Sequence[Path], annotations: str | None) -> list[_Item]:
    names_seen: set[str] = set()
    by_name = None
    if annotations:
        coco = json.loads(Path(annotations).read_text())
        by_name = {Path(img["file_name"]).name: int(img["id"]) for img in coco.get("images", [])}
    items = []
    for index, path in enumerate(paths, start=1):
        if by_name is not None:
            if path.name not in by_name:
                _warn(f"skipping {path}: file name not in {annotations}")
                continue
            image_id = by_name[path.name]
        else:
            image_id = index
        name = path.stem if path.stem not in names_seen else f"{path.stem}_{image_id}"
        names_seen.add(name)
        items.append(_Item(path, image_id, name))
    return items


def _read(item: _Item, processor) -> Image.Image | None:
    """The image as 8-bit RGB; one that is not 8-bit (16-bit, float) mapped by the processor's own intensity
    normalisation, so that the model, the tiles and the overlays all see the pixels training saw."""
    try:
        with Image.open(item.path) as image:
            image.load()
            if is_8_bit(image):
                return image.convert("RGB")
            if not hasattr(processor, "normalize_intensity"):
                _warn(f"skipping {item.path}: a {image.mode} image (not 8-bit), which the model's image processor "
                      f"({type(processor).__name__}) cannot normalise; convert it to 8 bit")  # fmt: skip
                return None
            return Image.fromarray(processor.normalize_intensity(image))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        _warn(f"skipping {item.path}: cannot read image ({type(error).__name__})")
        return None


def _batches(items: Sequence[_Item], size: int, processor) -> Iterator[list[tuple[_Item, Image.Image]]]:
    batch = []
    for item in items:
        image = _read(item, processor)
        if image is not None:
            batch.append((item, image))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Writer:
    """Accumulates the JSON outputs and writes the per-image PNGs."""

    def __init__(self, args, model, category_ids):
        self.args, self.out = args, Path(args.output_dir)
        self.names = {int(k): v for k, v in model.config.id2label.items()}
        self.category_ids = category_ids
        self.predictions, self.images, self.panoptic = [], [], []
        for sub in (["overlays"] if not args.no_overlays else []) + (
            [args.task] if args.task in ("semantic", "panoptic") else []
        ) + (["label_images"] if args.label_images else []):
            (self.out / sub).mkdir(parents=True, exist_ok=True)

    def category(self, label: int) -> int:
        return self.category_ids.get(label, label) if self.category_ids else label

    def overlay(self, item: _Item, image: Image.Image, masks, labels, scores) -> None:
        """Write `overlays/<name>.png` with training's own drawing (`overlays.draw_segments`): one label per object,
        small images enlarged, an empty prediction said so."""
        empty = "no prediction"
        if self.args.task != "semantic":
            empty += f" above threshold {self.args.threshold:g}"
        drawn = draw_segments(np.asarray(image.convert("RGB")), masks, labels, self.names, scores, empty_text=empty)
        drawn.save(self.out / "overlays" / f"{item.name}.png")

    def image(self, item: _Item, image: Image.Image) -> None:
        self.images.append(
            {"id": item.image_id, "file_name": item.path.name, "height": image.height, "width": image.width}
        )

    def instances(self, item, image, instances: Sequence[tuple[np.ndarray, int, float]]) -> None:
        for mask, label, score in instances:
            self.predictions.append(
                {
                    "image_id": item.image_id,
                    "category_id": self.category(label),
                    "segmentation": encode_mask(mask),
                    "score": round(float(score), 6),
                }
            )
        if self.args.label_images:
            write_label_image(self.out / "label_images" / f"{item.name}_masks.tif", (image.height, image.width),
                              [(mask, score) for mask, _, score in instances])  # fmt: skip
        if not self.args.no_overlays:
            threshold = max(self.args.threshold, 1e-9)
            above = [instance for instance in instances if instance[2] >= threshold]
            masks, labels, scores = ([instance[k] for instance in above] for k in range(3))
            self.overlay(item, image, masks, labels, scores)

    def semantic(self, item, image, label_map: np.ndarray) -> None:
        labels = [int(v) for v in np.unique(label_map)]
        masks = [label_map == v for v in labels]
        for label, mask in zip(labels, masks):
            self.predictions.append(
                {"image_id": item.image_id, "category_id": self.category(label), "segmentation": encode_mask(mask)}
            )
        dtype = np.uint8 if max(self.names, default=0) < 256 else np.uint16
        Image.fromarray(label_map.astype(dtype)).save(self.out / "semantic" / f"{item.name}.png")
        if not self.args.no_overlays:
            self.overlay(item, image, masks, labels, None)

    def panoptic_result(self, item, image, segmentation: np.ndarray, segments: list[dict]) -> None:
        # Upstream numbers segments from 1 and marks "no segment" 0 (or -1 when nothing is kept); COCO uses 0.
        ids = np.clip(segmentation.astype(np.int64), 0, None)
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(self.out / "panoptic" / f"{item.name}.png")
        infos = []
        masks, labels, scores = [], [], []
        for seg in segments:
            mask = segmentation == seg["id"]
            label = int(seg["label_id"])
            infos.append({"id": int(seg["id"]), "category_id": self.category(label), "score": float(seg["score"])})
            self.predictions.append(
                {
                    "image_id": item.image_id,
                    "category_id": self.category(label),
                    "segmentation": encode_mask(mask),
                    "score": round(float(seg["score"]), 6),
                }
            )
            masks.append(mask)
            labels.append(label)
            scores.append(float(seg["score"]))
        self.panoptic.append({"image_id": item.image_id, "file_name": f"{item.name}.png", "segments_info": infos})
        if not self.args.no_overlays:
            self.overlay(item, image, masks, labels, scores)

    def close(self) -> None:
        (self.out / "predictions.json").write_text(json.dumps(self.predictions))
        (self.out / "images.json").write_text(json.dumps(self.images, indent=1))
        if self.args.task == "panoptic":
            (self.out / "panoptic.json").write_text(json.dumps({"annotations": self.panoptic}, indent=1))


def _predict_batch(args, model, processor, batch, writer, dtype, stuff_ids) -> None:
    images = [image for _, image in batch]
    outputs = forward_images(model, processor, images, args.device, dtype)
    for (item, image), out in zip(batch, outputs):
        size = [(image.height, image.width)]
        if args.task == "instance":
            result = processor.post_process_instance_segmentation(
                out, threshold=args.threshold, target_sizes=size, return_binary_maps=True
            )[0]
            masks = np.asarray(result["segmentation"]).astype(bool) if result["segments_info"] else []
            writer.instances(
                item, image, [(m, int(s["label_id"]), float(s["score"])) for m, s in zip(masks, result["segments_info"])]
            )
        elif args.task == "semantic":
            label_map = processor.post_process_semantic_segmentation(out, target_sizes=size)[0]
            writer.semantic(item, image, np.asarray(label_map))
        else:
            result = processor.post_process_panoptic_segmentation(
                out, threshold=args.threshold, label_ids_to_fuse=stuff_ids, target_sizes=size
            )[0]
            writer.panoptic_result(item, image, np.asarray(result["segmentation"]), result["segments_info"])


def run(args: argparse.Namespace) -> int:
    """Predict as the parsed command line says; returns the exit status."""
    from tqdm.auto import tqdm

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    _default_tiling(args)
    if args.tile is None and args.overlap is not None:
        raise UsageError(f"--overlap goes with --tile (or a model folder with {TILING_FILE})")
    paths = collect_inputs(args.inputs)
    model, processor = _load(args.model, args.device, dtype)
    items = _items(paths, args.annotations)
    if not items:
        _warn("no images to process")
    writer = _Writer(args, model, load_category_ids(args.model) if Path(args.model).is_dir() else None)
    stuff_ids = _stuff_ids(args.model) if Path(args.model).is_dir() else set()
    progress = tqdm(total=len(items), unit="image", desc="predict", file=sys.stderr)
    if args.tile is not None:
        from .tiling import predict_tiled

        for batch in _batches(items, 1, processor):
            (item, image), = batch
            result = predict_tiled(
                model, processor, image, tuple(args.tile), args.overlap, task=args.task, threshold=args.threshold,
                batch_size=args.batch_size, device=args.device, dtype=dtype,
            )  # fmt: skip
            writer.image(item, image)
            if args.task == "instance":
                writer.instances(item, image, [(r.mask, r.label, r.score) for r in result])
            else:
                writer.semantic(item, image, np.asarray(result))
            progress.update(1)
    else:
        for batch in _batches(items, args.batch_size, processor):
            for item, image in batch:
                writer.image(item, image)
            _predict_batch(args, model, processor, batch, writer, dtype, stuff_ids)
            progress.update(len(batch))
    progress.close()
    writer.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; user errors print one line on stderr and return 2."""
    try:
        args = _parse_args(argv)
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        return run(args)
    except UsageError as error:
        print(f"mask2former-dinov3-predict: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
