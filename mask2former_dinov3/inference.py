"""The model's forward pass on PIL images, shared by the prediction CLI (`predict`) and tiled inference (`tiling`)."""

from __future__ import annotations

from types import SimpleNamespace

import torch


@torch.no_grad()
def forward_images(model, image_processor, images, device, dtype, **processor_kwargs) -> list[SimpleNamespace]:
    """Run the model on PIL images; per image, outputs in float32 with the padding cut off the mask logits.

    Each item has `class_queries_logits` (1, Q, L+1) and `masks_queries_logits` (1, Q, h, w), ready for the image
    processor's `post_process_*` methods. Upstream post-processing assumes the logits cover the resized image only;
    padding (to the batch's largest image and to the size multiple) is therefore removed first, using `pixel_mask`.
    """
    inputs = image_processor(images=list(images), return_tensors="pt", **processor_kwargs)
    pixel_values = inputs["pixel_values"].to(device=device, dtype=dtype)
    pixel_mask = inputs.get("pixel_mask")
    outputs = model(pixel_values=pixel_values, pixel_mask=None if pixel_mask is None else pixel_mask.to(device))
    classes = outputs.class_queries_logits.float().cpu()
    masks = outputs.masks_queries_logits.float().cpu()
    height, width = pixel_values.shape[-2:]
    mask_h, mask_w = masks.shape[-2:]
    results = []
    for i in range(len(classes)):
        valid_h, valid_w = height, width
        if pixel_mask is not None:
            valid_h = int(pixel_mask[i].any(dim=1).sum())
            valid_w = int(pixel_mask[i].any(dim=0).sum())
        crop_h = max(1, round(valid_h * mask_h / height))
        crop_w = max(1, round(valid_w * mask_w / width))
        results.append(
            SimpleNamespace(
                class_queries_logits=classes[i : i + 1], masks_queries_logits=masks[i : i + 1, :, :crop_h, :crop_w]
            )
        )
    return results


__all__ = ["forward_images"]
