"""mask2former-dinov3: Meta's DINOv3 as a first-class Mask2Former backbone for Hugging Face Transformers.

Importing the package registers the config, models and image processor with transformers' Auto classes, and marks
them for `save_pretrained` to copy their code next to the weights (so `trust_remote_code=True` loads them in a
process that never imported this package).
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageSegmentation,
    AutoModelForUniversalSegmentation,
)

from .configuration_mask2former_dinov3 import Mask2FormerDINOv3Config, Mask2FormerDinov3Config
from .fast_mask2former import use_fast_units, use_upstream_units
from .image_processing_mask2former_dinov3 import Mask2FormerDINOv3ImageProcessor
from .loading import DINOv3CheckpointError
from .modeling_mask2former_dinov3 import (
    Mask2FormerDINOv3ConvNextAdapter,
    Mask2FormerDINOv3ForUniversalSegmentation,
    Mask2FormerDINOv3Model,
    Mask2FormerDINOv3PreTrainedModel,
    Mask2FormerDINOv3SpatialPrior,
    Mask2FormerDINOv3ViTAdapter,
    Mask2FormerDinov3ConvNextAdapter,
    Mask2FormerDinov3ForUniversalSegmentation,
    Mask2FormerDinov3Model,
    Mask2FormerDinov3PreTrainedModel,
    Mask2FormerDinov3SpatialPrior,
    Mask2FormerDinov3ViTAdapter,
)
from .presets import PRESETS, DINOv3Preset, default_tapped_layers, get_preset


__version__ = "0.3.0"

# Class names follow transformers' casing for combined models (`EomtDinov3`); the `Mask2FormerDINOv3*` names of 0.3.0
# are the same classes. The image processor keeps its 0.3.0 name (upstream maps the model to Mask2Former's processors).
Mask2FormerDinov3ImageProcessor = Mask2FormerDINOv3ImageProcessor


def _register() -> None:
    model_type = Mask2FormerDinov3Config.model_type
    AutoConfig.register(model_type, Mask2FormerDINOv3Config, exist_ok=True)
    AutoModel.register(Mask2FormerDINOv3Config, Mask2FormerDINOv3Model, exist_ok=True)
    AutoModelForUniversalSegmentation.register(
        Mask2FormerDINOv3Config, Mask2FormerDINOv3ForUniversalSegmentation, exist_ok=True
    )
    # Not where upstream Mask2Former is registered, but what pipeline("image-segmentation", model=path) loads with.
    AutoModelForImageSegmentation.register(
        Mask2FormerDINOv3Config, Mask2FormerDINOv3ForUniversalSegmentation, exist_ok=True
    )
    AutoImageProcessor.register(
        Mask2FormerDINOv3Config, image_processor_classes={"pil": Mask2FormerDINOv3ImageProcessor}, exist_ok=True
    )
    # save_pretrained then writes `auto_map` and copies the code next to the weights.
    Mask2FormerDINOv3Config.register_for_auto_class()
    Mask2FormerDINOv3Model.register_for_auto_class("AutoModel")
    Mask2FormerDINOv3ForUniversalSegmentation.register_for_auto_class("AutoModelForUniversalSegmentation")
    Mask2FormerDINOv3ImageProcessor.register_for_auto_class("AutoImageProcessor")


_register()

__all__ = [
    "DINOv3CheckpointError",
    "DINOv3Preset",
    "Mask2FormerDINOv3Config",
    "Mask2FormerDINOv3ConvNextAdapter",
    "Mask2FormerDINOv3ForUniversalSegmentation",
    "Mask2FormerDINOv3ImageProcessor",
    "Mask2FormerDINOv3Model",
    "Mask2FormerDINOv3PreTrainedModel",
    "Mask2FormerDINOv3SpatialPrior",
    "Mask2FormerDINOv3ViTAdapter",
    "Mask2FormerDinov3Config",
    "Mask2FormerDinov3ConvNextAdapter",
    "Mask2FormerDinov3ForUniversalSegmentation",
    "Mask2FormerDinov3ImageProcessor",
    "Mask2FormerDinov3Model",
    "Mask2FormerDinov3PreTrainedModel",
    "Mask2FormerDinov3SpatialPrior",
    "Mask2FormerDinov3ViTAdapter",
    "PRESETS",
    "default_tapped_layers",
    "get_preset",
    "use_fast_units",
    "use_upstream_units",
]
