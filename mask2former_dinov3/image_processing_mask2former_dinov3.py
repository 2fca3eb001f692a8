"""Image processor for Mask2FormerDINOv3: Mask2Former's processor with DINOv3's defaults."""

from __future__ import annotations

import weakref

from transformers.utils import logging
from transformers.models.mask2former.image_processing_pil_mask2former import (
    Mask2FormerImageProcessorKwargs,
    Mask2FormerImageProcessorPil,
)

from .configuration_mask2former_dinov3 import INPUT_SIZE_MULTIPLE
from .intensity import to_uint8
from .post_processing import (
    post_process_instance_segmentation,
    post_process_panoptic_segmentation,
    post_process_semantic_segmentation,
)
from .presets import IMAGENET_MEAN, IMAGENET_STD, get_preset


logger = logging.get_logger(__name__)
_WARNED_ABOUT_THRESHOLD = weakref.WeakSet()  # not an attribute: those are saved to preprocessor_config.json


class Mask2FormerDINOv3ImageProcessorKwargs(Mask2FormerImageProcessorKwargs, total=False):
    """Keyword arguments of `Mask2FormerDINOv3ImageProcessor`: Mask2Former's (`size_divisor`, `ignore_index`, ...)
    and `intensity_normalization` ("percentile", "minmax" or "fixed"; see `mask2former_dinov3.intensity`).
    """

    intensity_normalization: str


class Mask2FormerDINOv3ImageProcessor(Mask2FormerImageProcessorPil):
    """Mask2Former's image processor (PIL backend, so torchvision is not required) with DINOv3 defaults.

    Defaults: ImageNet mean/std (DINOv3's LVD-1689M backbones), padding to a multiple of 32 (`size_divisor`, which
    Mask2FormerDINOv3 requires). `post_process_instance_segmentation`, `post_process_semantic_segmentation` and
    `post_process_panoptic_segmentation` give upstream's results with one resize from the model's mask size to the
    target size (no 384x384 intermediate, transformers #44901) and in bounded memory (`post_processing`).

    Images that are not 8-bit (16-bit, 32-bit integer, float; PIL, numpy or torch) are first mapped to 8 bits as
    `intensity_normalization` says (default "percentile": each image's 1st / 99.8th percentiles to 0 / 255, as
    microscopy tools do; "minmax"; "fixed": 0..65535 to 0..255); 8-bit images are never changed.
    """

    valid_kwargs = Mask2FormerDINOv3ImageProcessorKwargs
    image_mean = list(IMAGENET_MEAN)
    image_std = list(IMAGENET_STD)
    size_divisor = INPUT_SIZE_MULTIPLE
    intensity_normalization = "percentile"

    def preprocess(self, images, segmentation_maps=None, instance_id_to_semantic_id=None, **kwargs):
        """Mask2Former's `preprocess` of `normalize_intensity(images)`; segmentation maps are ids, left as they are."""
        images = self.normalize_intensity(images, kwargs.get("intensity_normalization"))
        return super().preprocess(images, segmentation_maps, instance_id_to_semantic_id, **kwargs)

    def normalize_intensity(self, images, method: str | None = None):
        """`images` (one or a list) with non-8-bit ones mapped to uint8 by `method` (default: the processor's
        `intensity_normalization`); a grayscale `(H, W)` one becomes `(H, W, 3)`. 8-bit images come back as they are.
        """
        if isinstance(images, (list, tuple)):
            return [self.normalize_intensity(image, method) for image in images]
        return to_uint8(images, method or self.intensity_normalization)

    def post_process_instance_segmentation(self, outputs, threshold: float = 0.5, **kwargs) -> list[dict]:
        """Upstream's, resized once from the model's mask size to the target size and in query chunks (see
        `mask2former_dinov3.post_processing`; binary maps are bool), warning when an image gets no instance only
        because of `threshold`."""
        results = post_process_instance_segmentation(outputs, threshold=threshold, **kwargs)
        return self._warn_if_thresholded_away(outputs, results, threshold)

    def post_process_semantic_segmentation(self, outputs, target_sizes=None, return_segmentation_scores=False):
        """Upstream's, resized once from the model's mask size to the target size, in query chunks."""
        return post_process_semantic_segmentation(outputs, target_sizes, return_segmentation_scores)

    def post_process_panoptic_segmentation(self, outputs, threshold: float = 0.5, **kwargs) -> list[dict]:
        """Upstream's, resized once from the model's mask size to the target size, warning when an image gets no
        segment only because of `threshold`."""
        results = post_process_panoptic_segmentation(outputs, threshold=threshold, **kwargs)
        return self._warn_if_thresholded_away(outputs, results, threshold)

    def _warn_if_thresholded_away(self, outputs, results: list[dict], threshold: float) -> list[dict]:
        # `pipeline("image-segmentation")` thresholds at 0.9 and otherwise returns [] without saying why. Once per
        # processor, so that predicting a folder of empty images does not repeat it.
        empty = [i for i, result in enumerate(results) if not result["segments_info"]]
        if empty and threshold > 0 and self not in _WARNED_ABOUT_THRESHOLD:
            best = outputs.class_queries_logits[empty].softmax(-1)[..., :-1].max().item()
            logger.warning(
                f"No segment passed threshold={threshold} in {len(empty)} of {len(results)} image(s) (their best "
                f"class probability: {best:.3f}); a lower threshold shows more (`threshold=` of the pipeline or of "
                "post-processing, `--threshold` of mask2former-dinov3-predict)."
            )
            _WARNED_ABOUT_THRESHOLD.add(self)
        return results

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "Mask2FormerDINOv3ImageProcessor":
        """Processor normalised as the named DINOv3 preset's pretraining data (e.g. satellite presets)."""
        preset = get_preset(name)
        kwargs.setdefault("image_mean", list(preset.image_mean))
        kwargs.setdefault("image_std", list(preset.image_std))
        return cls(**kwargs)


__all__ = ["Mask2FormerDINOv3ImageProcessor", "Mask2FormerDINOv3ImageProcessorKwargs"]
