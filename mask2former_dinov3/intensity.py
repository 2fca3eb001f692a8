"""Intensity normalisation of images that are not 8-bit (16-bit PNG / TIFF, 32-bit integer, float).

DINOv3 was pretrained on 8-bit photographs. Microscopy and other scientific images are often 16-bit with the signal
in a narrow band (e.g. 33,000-37,000 of 0..65535): scaled by the full 16-bit range they look flat grey. Microscopy
tools (stardist, csbdeep, cellpose) therefore normalise each image by its own percentiles before a network sees it.
`to_uint8` does that (or a min-max / fixed scaling) and returns 8-bit pixels, which the image processor then treats
as any photograph. 8-bit images are returned unchanged, so results on them never depend on this setting.

This module travels with saved checkpoints (the image processor imports it relatively).
"""

from __future__ import annotations

import numpy as np


INTENSITY_NORMALIZATIONS = ("percentile", "minmax", "fixed")
# csbdeep / stardist defaults: the 1st percentile maps to 0, the 99.8th to 1 (clipped).
PERCENTILES = (1.0, 99.8)
# PIL modes holding more than 8 bits per pixel (16-bit, 32-bit integer, 32-bit float).
DEEP_PIL_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def check_intensity_normalization(value: str) -> str:
    """`value` if it is a known setting; a `ValueError` naming the choices otherwise."""
    if value not in INTENSITY_NORMALIZATIONS:
        raise ValueError(
            f"intensity_normalization must be one of {', '.join(INTENSITY_NORMALIZATIONS)}, got {value!r}."
        )
    return value


def is_8_bit(image) -> bool:
    """Whether `image` (PIL image, numpy array or torch tensor) holds 8-bit (or 1-bit) pixels; True for anything
    else (e.g. a URL), which is then left alone.

    Unsigned 16/32/64-bit and float arrays are never 8-bit. Signed integer arrays (numpy's and torch's default
    integer type, e.g. `torch.randint(0, 256, ...)`) count as 8-bit when all values lie in 0..255, as upstream's
    processors read them, so such input keeps its results.
    """
    mode = getattr(image, "mode", None)
    if isinstance(mode, str):
        return mode not in DEEP_PIL_MODES
    dtype = str(getattr(image, "dtype", "uint8")).replace("torch.", "")
    if dtype in ("int16", "int32", "int64"):
        return bool(image.min() >= 0 and image.max() <= 255)
    return dtype in ("uint8", "int8", "bool")


def to_uint8(image, method: str = "percentile"):
    """`image` with its intensities mapped to 0..255 (uint8) as `method` says; 8-bit images unchanged.

    Methods, per image and over all channels together: `"percentile"` maps the 1st and 99.8th percentiles to 0 and
    255 (clipped); `"minmax"` maps the minimum and maximum; `"fixed"` maps 0..65535 to 0..255 for integer images
    (the scaling used before normalisation existed) and 0..1 for float images (clipped).

    A 4-D array is a batch (each image normalised on its own). Non-8-bit input comes back as a numpy array of the
    same layout, except that a grayscale `(H, W)` image becomes `(H, W, 3)` (the model takes three channels).
    Anything else (8-bit PIL / numpy / torch, a URL) is returned as is.
    """
    check_intensity_normalization(method)
    if is_8_bit(image):
        return image
    if hasattr(image, "detach"):  # torch
        image = image.detach().cpu().numpy()
    if np.ndim(image) == 4:  # a batch: each image on its own
        return np.stack([to_uint8(item, method) for item in image])
    array = np.asarray(image, dtype=np.float64)
    floating = np.issubdtype(np.asarray(image).dtype, np.floating)
    array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    if method == "fixed":
        if not floating and (array.min() < 0 or array.max() > 65535):
            raise ValueError(
                f"Image values span {array.min():g}..{array.max():g}, outside the 0..65535 that "
                f"intensity_normalization='fixed' scales; use 'percentile' or 'minmax', or convert it to 16 bit."
            )
        scaled = array if floating else array / 65535.0
    else:
        low, high = np.percentile(array, PERCENTILES) if method == "percentile" else (array.min(), array.max())
        # A (nearly) flat image: everything above the low value is signal, as csbdeep's tiny epsilon gives.
        scaled = (array - low) / (high - low) if high > low else (array > low).astype(np.float64)
    out = np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=-1) if out.ndim == 2 else out


__all__ = [
    "DEEP_PIL_MODES",
    "INTENSITY_NORMALIZATIONS",
    "PERCENTILES",
    "check_intensity_normalization",
    "is_8_bit",
    "to_uint8",
]
