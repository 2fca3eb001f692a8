"""Image processor for Mask2FormerDINOv3: Mask2Former's processor with DINOv3's defaults."""

from __future__ import annotations

from transformers.models.mask2former.image_processing_pil_mask2former import (
    Mask2FormerImageProcessorKwargs,
    Mask2FormerImageProcessorPil,
)

from .configuration_mask2former_dinov3 import INPUT_SIZE_MULTIPLE
from .presets import IMAGENET_MEAN, IMAGENET_STD, get_preset


class Mask2FormerDINOv3ImageProcessorKwargs(Mask2FormerImageProcessorKwargs, total=False):
    """Keyword arguments of `Mask2FormerDINOv3ImageProcessor`: Mask2Former's (`size_divisor`, `ignore_index`, ...).

    Its own class, as transformers' convention expects `<Processor>Kwargs` next to each processor; no new keys.
    """


class Mask2FormerDINOv3ImageProcessor(Mask2FormerImageProcessorPil):
    """Mask2Former's image processor (PIL backend, so torchvision is not required) with DINOv3 defaults.

    Defaults: ImageNet mean/std (DINOv3's LVD-1689M backbones), padding to a multiple of 32 (`size_divisor`, which
    Mask2FormerDINOv3 requires). `post_process_instance_segmentation`, `post_process_semantic_segmentation` and
    `post_process_panoptic_segmentation` are upstream's and work on Mask2FormerDINOv3 outputs.
    """

    valid_kwargs = Mask2FormerDINOv3ImageProcessorKwargs
    image_mean = list(IMAGENET_MEAN)
    image_std = list(IMAGENET_STD)
    size_divisor = INPUT_SIZE_MULTIPLE

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "Mask2FormerDINOv3ImageProcessor":
        """Processor normalised as the named DINOv3 preset's pretraining data (e.g. satellite presets)."""
        preset = get_preset(name)
        kwargs.setdefault("image_mean", list(preset.image_mean))
        kwargs.setdefault("image_std", list(preset.image_std))
        return cls(**kwargs)


__all__ = ["Mask2FormerDINOv3ImageProcessor", "Mask2FormerDINOv3ImageProcessorKwargs"]
