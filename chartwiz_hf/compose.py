"""Joins a pretrained Pix2Struct / DePlot encoder and a pretrained causal LM into one ChartWiz checkpoint."""

import inspect
import os
from contextlib import contextmanager
from itertools import chain

import torch
from accelerate import init_empty_weights
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    Pix2StructConfig,
    Pix2StructVisionModel,
)
from transformers.image_processing_utils import BaseImageProcessor
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from chartwiz.checkpoints import describe_model_type, read_config_dict, reading_checkpoint
from chartwiz.errors import ChartWizValueError
from chartwiz.names import IMAGE_TOKEN

from .chat_templates import CHAT_TEMPLATES, load_chat_template
from .configuration_chartwiz import ChartWizConfig
from .image_processing_chartwiz import DEPLOT_HEADER_TEXT, ChartWizImageProcessor
from .modeling_chartwiz import ChartWizForConditionalGeneration
from .processing_chartwiz import ChartWizProcessor


def chartwiz_generation_config(text_config, tokenizer, image_token_id: int) -> GenerationConfig:
    """
    The generation settings of a composed or converted ChartWiz: the language model's, with the tokenizer's padding,
    and never the image placeholder, which is input only (an answer holding it would read as another chart).
    """
    generation_config = GenerationConfig.from_model_config(text_config)
    generation_config.pad_token_id = tokenizer.pad_token_id
    generation_config.suppress_tokens = [image_token_id]
    return generation_config


class _EncoderOfFullPix2Struct(Pix2StructVisionModel):
    # The decoder's weights of a full Pix2Struct checkpoint are left on disk on purpose: without this, transformers
    # lists each of them as unexpected. Missing weights, the ones that matter, are still checked.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\."]


def load_pix2struct_encoder(vision_name_or_path: str, **kwargs) -> Pix2StructVisionModel:
    """
    The encoder of a Pix2Struct checkpoint: a full Pix2Struct / DePlot model (`google/deplot`, `nuua/ko-deplot`), of
    which only the encoder's weights are read, or a vision-only one. The kind of checkpoint is read from its config's
    `model_type`; any other kind, and a checkpoint missing any of the encoder's weights, raise `ValueError`, so a
    randomly initialized encoder never passes for a pretrained one. `kwargs` go to `from_pretrained` (`dtype`...).
    """
    config_dict = read_config_dict(vision_name_or_path)
    model_type = config_dict.get("model_type")
    if model_type == "pix2struct":
        # A full model keeps its encoder under `encoder.`: read those weights and leave the decoder's on disk.
        loading = {"config": Pix2StructConfig.from_dict(config_dict).vision_config, "key_mapping": {r"^encoder\.": ""}}
        encoder_class = _EncoderOfFullPix2Struct
    elif model_type == "pix2struct_vision_model":
        loading = {}
        encoder_class = Pix2StructVisionModel
    else:
        raise ChartWizValueError(
            f"{vision_name_or_path} holds {describe_model_type(config_dict)}; the vision encoder must come from a "
            "Pix2Struct / DePlot checkpoint (model_type 'pix2struct', e.g. google/deplot)."
        )
    with reading_checkpoint(vision_name_or_path):
        encoder, loading_info = encoder_class.from_pretrained(
            vision_name_or_path, output_loading_info=True, **loading, **kwargs
        )
    missing = sorted(loading_info["missing_keys"])
    if missing:
        raise ChartWizValueError(
            f"{vision_name_or_path} has no weights for {len(missing)} of the encoder's {len(encoder.state_dict())} "
            f"tensors (e.g. {missing[0]}), so its encoder would be random."
        )
    return encoder


def load_causal_lm(text_name_or_path: str, trust_remote_code: bool = False, **kwargs):
    """The causal LM of `text_name_or_path`; raises `ValueError` if `AutoModelForCausalLM` cannot load its kind."""
    config_dict = read_config_dict(text_name_or_path)
    remote = trust_remote_code and "AutoModelForCausalLM" in (config_dict.get("auto_map") or {})
    if config_dict.get("model_type") not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not remote:
        raise ChartWizValueError(
            f"{text_name_or_path} holds {describe_model_type(config_dict)}, not a causal language model that "
            "AutoModelForCausalLM loads (llama, mistral, qwen2, gemma...; --trust-remote-code for the LM's own code)."
        )
    with reading_checkpoint(text_name_or_path):
        return AutoModelForCausalLM.from_pretrained(text_name_or_path, trust_remote_code=trust_remote_code, **kwargs)


def _vision_image_processor_kwargs(vision_name_or_path: str) -> dict:
    # The saved settings themselves: transformers 5's `Pix2StructImageProcessor` would need torchvision to read them.
    try:
        settings, _ = BaseImageProcessor.get_image_processor_dict(vision_name_or_path)
    except OSError:
        return {}
    return {key: settings[key] for key in ("is_vqa", "patch_size") if key in settings}


def add_special_token(tokenizer, token: str) -> None:
    """
    Adds `token` to `tokenizer` as one more unnamed special token, keeping the ones it has: transformers 5 calls these
    extra special tokens, 4.57 additional special tokens.
    """
    if "replace_extra_special_tokens" in inspect.signature(tokenizer.add_special_tokens).parameters:
        tokenizer.add_special_tokens({"extra_special_tokens": [token]}, replace_extra_special_tokens=False)
    else:
        tokenizer.add_special_tokens({"additional_special_tokens": [token]}, replace_additional_special_tokens=False)


def add_image_token(tokenizer, model) -> int:
    """
    Adds `<image>` to `tokenizer` as a special token (and makes its end-of-text token the pad token when it has
    none), grows the token embeddings of `model` when the tokenizer outgrew them, and returns the id of `<image>`.
    The new rows never matter as inputs: image positions take the projected patches instead.
    """
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        add_special_token(tokenizer, IMAGE_TOKEN)
    if tokenizer.pad_token is None:
        # Padding positions are masked out, so the end-of-text token serves without growing the vocabulary.
        tokenizer.pad_token = tokenizer.eos_token
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


@contextmanager
def seeded(seed: int | None):
    """Draws from torch's CPU generator seeded with `seed` (unchanged with None), restoring its state after."""
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        yield


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
    seed: int | None = 0,
) -> tuple[ChartWizForConditionalGeneration, ChartWizProcessor]:
    """
    Builds a ChartWiz model from pretrained parts: the Pix2Struct encoder of `vision_name_or_path`, the causal LM and
    tokenizer of `text_name_or_path` (with an `<image>` token added), a freshly initialized projector, and a chat
    template (`chat_template`: `synatra_mini`, `vicuna_v1`, or Jinja source). Saves model and processor to
    `output_dir` if given.

    The projector (and any embedding rows the tokenizer's new tokens add) is initialized from `seed` (None: from
    torch's global random state), so the same parts give the same checkpoint. The model takes the language model's
    dtype (`dtype="auto"`: the one it was saved in) and the parts' own tensors, built around them on the meta device,
    so composing needs about the memory of the composed weights once. Raises `ValueError` if `vision_name_or_path` is
    not a Pix2Struct checkpoint with all the encoder's
    weights, or if `text_name_or_path` is not a causal language model.
    """
    encoder = load_pix2struct_encoder(vision_name_or_path, dtype=dtype)
    language_model = load_causal_lm(text_name_or_path, trust_remote_code=trust_remote_code, dtype=dtype)
    with reading_checkpoint(text_name_or_path):
        tokenizer = AutoTokenizer.from_pretrained(text_name_or_path, trust_remote_code=trust_remote_code)

    with seeded(seed):
        # New embedding rows, when the tokenizer grows, are drawn at random too.
        image_token_id = add_image_token(tokenizer, language_model)
    text_config = language_model.config
    text_config.pad_token_id = tokenizer.pad_token_id
    if getattr(text_config, "max_position_embeddings", None):
        tokenizer.model_max_length = text_config.max_position_embeddings
    # One dtype for the model, the language model's: the encoder (a few hundred MB at most) is cast to it.
    dtype = language_model.dtype
    encoder.to(dtype)

    config = ChartWizConfig(
        vision_config=encoder.config.to_dict(),
        text_config=text_config.to_dict(),
        projector_type=projector_type,
        image_token_id=image_token_id,
        max_patches=max_patches,
        dtype=dtype,
    )
    with init_empty_weights():
        # Parameters on the meta device: the parts' own tensors are put in place below, so composing never holds a
        # second, random copy of the weights (buffers, such as rotary frequencies, are built for real).
        model = ChartWizForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(encoder.state_dict(), assign=True)
    base_model = getattr(language_model, language_model.base_model_prefix)
    model.model.language_model.load_state_dict(base_model.state_dict(), assign=True)
    model.lm_head.load_state_dict(language_model.get_output_embeddings().state_dict(), assign=True)
    model.tie_weights()
    # The projector is the one new part: initialized in float32 as any fresh model is, then cast.
    projector = model.model.multi_modal_projector.to_empty(device=model.lm_head.weight.device)
    with seeded(seed):
        for module in projector.modules():
            model._init_weights(module)
    projector.to(dtype)
    left_empty = [name for name, tensor in chain(model.named_parameters(), model.named_buffers()) if tensor.is_meta]
    if left_empty:
        raise RuntimeError(f"Composing left {len(left_empty)} tensors without weights, e.g. {left_empty[0]}.")
    del encoder, language_model, base_model
    model.generation_config = chartwiz_generation_config(text_config, tokenizer, model.config.image_token_id)
    # A language model saved by a training run often keeps its `use_cache=False` (gradient checkpointing); the
    # composed model generates with the key/value cache, without which every new token reruns the whole prompt.
    model.config.text_config.use_cache = True
    model.generation_config.use_cache = True
    model.eval()

    processor = build_processor(tokenizer, vision_name_or_path, max_patches, header_text, chat_template)
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    return model, processor


__all__ = [
    "add_image_token",
    "add_special_token",
    "build_processor",
    "chartwiz_generation_config",
    "compose_chartwiz",
    "load_causal_lm",
    "load_pix2struct_encoder",
]
