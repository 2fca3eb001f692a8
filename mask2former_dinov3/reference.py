"""The unoptimised reference path: a Mask2FormerDINOv3 model running upstream Mask2Former's own decoder units.

`Mask2FormerDINOv3ForUniversalSegmentation` runs optimised subclasses of upstream's pixel decoder, transformer
module and loss (see the "Optimised Mask2Former units" section of `modeling_mask2former_dinov3`). They must give the
same results as upstream's classes. `build_unoptimised_reference` rebuilds a model with upstream's classes in their
place and the very same weights, for the equality tests (`tests/test_speed_equivalence.py`) and for the
before/after rows of `benchmarks/benchmark.py`. It is not meant for anything else.
"""

from __future__ import annotations

import copy
import types

from torch import nn
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerForUniversalSegmentation,
    Mask2FormerLoss,
    Mask2FormerModel,
    Mask2FormerPixelDecoder,
    Mask2FormerTransformerModule,
)


def _swap(parent: nn.Module, name: str, replacement: nn.Module) -> None:
    """Put `replacement` at `parent.name`, carrying over the current module's weights and train/eval mode."""
    current = getattr(parent, name)
    # strict: the optimised units keep upstream's state-dict keys exactly, so this doubles as a check of that.
    replacement.load_state_dict(current.state_dict(), strict=True)
    replacement.train(current.training)
    replacement.to(next(current.parameters()).device)
    setattr(parent, name, replacement)


def build_unoptimised_reference(model: nn.Module) -> nn.Module:
    """A copy of `model` (a `Mask2FormerDINOv3Model` or `...ForUniversalSegmentation`) on upstream's decoder units.

    The backbone and adapter are shared code (deep-copied); the pixel decoder, the transformer module and the loss are
    upstream `Mask2FormerPixelDecoder`, `Mask2FormerTransformerModule` and `Mask2FormerLoss` loaded with the same
    weights, and `forward` is upstream's `Mask2FormerModel.forward` / `Mask2FormerForUniversalSegmentation.forward`.
    """
    reference = copy.deepcopy(model)
    config = reference.config
    base = reference.model if hasattr(reference, "model") else reference
    pixel_level = base.pixel_level_module
    _swap(pixel_level, "decoder", Mask2FormerPixelDecoder(config, feature_channels=pixel_level.adapter.out_channels))
    _swap(base, "transformer_module", Mask2FormerTransformerModule(in_features=config.feature_size, config=config))
    base.forward = types.MethodType(Mask2FormerModel.forward, base)
    if base is not reference:
        reference.criterion = Mask2FormerLoss(config=config, weight_dict=reference.weight_dict).to(
            reference.criterion.empty_weight.device
        )
        reference.forward = types.MethodType(Mask2FormerForUniversalSegmentation.forward, reference)
    return reference


__all__ = ["build_unoptimised_reference"]
