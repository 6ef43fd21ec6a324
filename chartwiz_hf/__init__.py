"""ChartWiz: Korean chart question answering on the Hugging Face Auto classes.

Importing this package registers ChartWiz with `AutoConfig`, `AutoModel`, `AutoModelForImageTextToText` (and
`AutoModelForVision2Seq` where it exists: transformers 4 only), `AutoImageProcessor` and `AutoProcessor`, and marks its
classes so that `save_pretrained` writes their code beside the weights (loadable with `trust_remote_code=True` without
this package).
"""

import inspect

import transformers
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_chartwiz import ChartWizConfig
from .image_processing_chartwiz import ChartWizImageProcessor
from .modeling_chartwiz import (
    ChartWizForConditionalGeneration,
    ChartWizModel,
    ChartWizMultiModalProjector,
    ChartWizPreTrainedModel,
)
from .processing_chartwiz import ChartWizProcessor


__version__ = "0.1.0"

AutoConfig.register(ChartWizConfig.model_type, ChartWizConfig, exist_ok=True)
AutoModel.register(ChartWizConfig, ChartWizModel, exist_ok=True)
AutoModelForImageTextToText.register(ChartWizConfig, ChartWizForConditionalGeneration, exist_ok=True)
# transformers 5 removed AutoModelForVision2Seq (AutoModelForImageTextToText replaces it); 4.x users still call it.
if hasattr(transformers, "AutoModelForVision2Seq"):
    transformers.AutoModelForVision2Seq.register(ChartWizConfig, ChartWizForConditionalGeneration, exist_ok=True)
# ChartWiz has one image processor, on PIL and numpy; transformers 5 registers it as the "pil" backend.
if "image_processor_classes" in inspect.signature(AutoImageProcessor.register).parameters:
    AutoImageProcessor.register(ChartWizConfig, image_processor_classes={"pil": ChartWizImageProcessor}, exist_ok=True)
else:
    AutoImageProcessor.register(ChartWizConfig, slow_image_processor_class=ChartWizImageProcessor, exist_ok=True)
AutoProcessor.register(ChartWizConfig, ChartWizProcessor, exist_ok=True)

ChartWizConfig.register_for_auto_class()
ChartWizForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
ChartWizImageProcessor.register_for_auto_class("AutoImageProcessor")
ChartWizProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "ChartWizConfig",
    "ChartWizForConditionalGeneration",
    "ChartWizImageProcessor",
    "ChartWizModel",
    "ChartWizMultiModalProjector",
    "ChartWizPreTrainedModel",
    "ChartWizProcessor",
]
