"""Joins a pretrained Pix2Struct / DePlot encoder and a pretrained causal LM into one ChartWiz checkpoint."""

import logging
import os

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    Pix2StructForConditionalGeneration,
    Pix2StructImageProcessor,
    Pix2StructVisionModel,
)

from .chat_templates import CHAT_TEMPLATES, load_chat_template
from .configuration_chartwiz import ChartWizConfig
from .image_processing_chartwiz import DEPLOT_HEADER_TEXT, ChartWizImageProcessor
from .modeling_chartwiz import ChartWizForConditionalGeneration
from .processing_chartwiz import ChartWizProcessor


logger = logging.getLogger(__name__)
IMAGE_TOKEN = "<image>"


def load_pix2struct_encoder(vision_name_or_path: str, **kwargs) -> Pix2StructVisionModel:
    """The encoder of a full Pix2Struct checkpoint (`google/deplot`, `nuua/ko-deplot`) or a vision-only one."""
    try:
        return Pix2StructForConditionalGeneration.from_pretrained(vision_name_or_path, **kwargs).encoder
    except (ValueError, KeyError, TypeError) as error:
        logger.info(
            "%s is not a full Pix2Struct checkpoint (%s); loading it as a vision model", vision_name_or_path, error
        )
        return Pix2StructVisionModel.from_pretrained(vision_name_or_path, **kwargs)


def _vision_image_processor_kwargs(vision_name_or_path: str) -> dict:
    try:
        reference = Pix2StructImageProcessor.from_pretrained(vision_name_or_path)
    except OSError:
        return {}
    return {"is_vqa": reference.is_vqa, "patch_size": reference.patch_size}


def add_image_token(tokenizer, model) -> int:
    """
    Adds `<image>` to `tokenizer` as a special token (and makes its end-of-text token the pad token when it has
    none), grows the token embeddings of `model` when the tokenizer outgrew them, and returns the id of `<image>`.
    The new rows never matter as inputs: image positions take the projected patches instead.
    """
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [IMAGE_TOKEN]}, replace_additional_special_tokens=False
        )
    if tokenizer.pad_token is None:
        # Padding positions are masked out, so the end-of-text token serves without growing the vocabulary.
        tokenizer.pad_token = tokenizer.eos_token
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def build_processor(
    tokenizer,
    vision_name_or_path: str,
    max_patches: int = 512,
    header_text: str = DEPLOT_HEADER_TEXT,
    chat_template: str = "synatra_mini",
) -> ChartWizProcessor:
    """
    The ChartWiz processor of a checkpoint: an image processor with the patch settings of the Pix2Struct checkpoint
    `vision_name_or_path` (`is_vqa`, `patch_size`), `tokenizer` (with `<image>`), and a chat template
    (`synatra_mini`, `vicuna_v1`, or Jinja source).
    """
    image_processor = ChartWizImageProcessor(
        max_patches=max_patches, header_text=header_text, **_vision_image_processor_kwargs(vision_name_or_path)
    )
    if chat_template in CHAT_TEMPLATES:
        chat_template = load_chat_template(chat_template)
    return ChartWizProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


def compose_chartwiz(
    vision_name_or_path: str,
    text_name_or_path: str,
    output_dir: str | None = None,
    projector_type: str = "mlp2x_gelu",
    max_patches: int = 512,
    header_text: str = DEPLOT_HEADER_TEXT,
    chat_template: str = "synatra_mini",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
) -> tuple[ChartWizForConditionalGeneration, ChartWizProcessor]:
    """
    Builds a ChartWiz model from pretrained parts: the Pix2Struct encoder of `vision_name_or_path`, the causal LM and
    tokenizer of `text_name_or_path` (with an `<image>` token added), a freshly initialized projector, and a chat
    template (`chat_template`: `synatra_mini`, `vicuna_v1`, or Jinja source). Saves model and processor to
    `output_dir` if given.
    """
    encoder = load_pix2struct_encoder(vision_name_or_path, dtype=dtype)
    language_model = AutoModelForCausalLM.from_pretrained(
        text_name_or_path, dtype=dtype, trust_remote_code=trust_remote_code
    )
    tokenizer = AutoTokenizer.from_pretrained(text_name_or_path, trust_remote_code=trust_remote_code)

    image_token_id = add_image_token(tokenizer, language_model)
    text_config = language_model.config
    text_config.pad_token_id = tokenizer.pad_token_id
    if getattr(text_config, "max_position_embeddings", None):
        tokenizer.model_max_length = text_config.max_position_embeddings

    config = ChartWizConfig(
        vision_config=encoder.config.to_dict(),
        text_config=text_config.to_dict(),
        projector_type=projector_type,
        image_token_id=image_token_id,
        max_patches=max_patches,
        torch_dtype=language_model.dtype,
    )
    model = ChartWizForConditionalGeneration(config).to(language_model.dtype)
    model.model.vision_tower.load_state_dict(encoder.state_dict())
    base_model = getattr(language_model, language_model.base_model_prefix)
    model.model.language_model.load_state_dict(base_model.state_dict())
    model.lm_head.load_state_dict(language_model.get_output_embeddings().state_dict())
    model.tie_weights()
    model.generation_config = GenerationConfig.from_model_config(text_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()

    processor = build_processor(tokenizer, vision_name_or_path, max_patches, header_text, chat_template)
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    return model, processor


__all__ = ["add_image_token", "build_processor", "compose_chartwiz", "load_pix2struct_encoder"]
