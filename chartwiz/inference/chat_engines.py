"""
Models other than ChartWiz behind `chartwiz evaluate`: any checkpoint that loads with `AutoModelForImageTextToText`
and `AutoProcessor`, loaded with the transformers engine's defaults, and the transformers engine that asks it through
its own chat template and processor (`chat_inputs`). The vLLM engine for them is
`chartwiz.serving.chat_engine.VLLMChatEngine`.
"""

import os
from collections.abc import Callable
from typing import Optional

import torch

from chartwiz.checkpoints import describe_model_type, from_pretrained_complete, read_config_dict
from chartwiz.errors import ChartWizValueError
from chartwiz.names import DEFAULT_BATCH_SIZE

from .chat_inputs import chat_inputs, chat_template_sha256, prompt_token_ids
from .engines import TransformersEngine, serving_dtype
from .loading import check_device
from .prompts import context_length, fit_in_context


def is_chartwiz_checkpoint(model_name_or_path: str, **kwargs) -> bool:
    """Whether the checkpoint's config says ChartWiz; its `read_config_dict` errors for one that cannot be read."""
    return read_config_dict(os.fspath(model_name_or_path), **kwargs).get("model_type") == "chartwiz"


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def load_chat_processor(model_name_or_path: str, trust_remote_code: bool = False):
    """
    `AutoProcessor.from_pretrained`, with one-line errors for a processor that cannot be loaded here (one that needs
    torchvision, as the video processors of LLaVA-OneVision and Qwen2-VL do, or remote code) and for one without a
    chat template.
    """
    from transformers import AutoProcessor

    name = os.fspath(model_name_or_path)
    try:
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
    except ImportError as error:
        # transformers' message is a paragraph wrapped over lines; its first sentence names what is missing.
        reason = " ".join(str(error).split()).split(". ")[0]
        raise ChartWizValueError(f"{name}: its processor cannot be loaded here: {reason}") from None
    except ValueError as error:
        hint = "" if trust_remote_code else " (if it ships its own code, add --trust-remote-code)"
        raise ChartWizValueError(f"{name}: cannot load its processor{hint}: {_first_line(error)}") from None
    if not hasattr(processor, "image_processor") or not getattr(processor, "chat_template", None):
        raise ChartWizValueError(
            f"{name}: {type(processor).__name__} is not a processor of images with a chat template, which the "
            "questions are written in"
        )
    return processor


def load_chat_model(
    model_name_or_path: str, device: Optional[str] = None, dtype=None, trust_remote_code: bool = False
):
    """
    `(model, processor)` of any image-text-to-text checkpoint, loaded with `AutoModelForImageTextToText` and
    `AutoProcessor` as the transformers engine loads ChartWiz (`serving_dtype`), weights that do not fit the model
    refused (`from_pretrained_complete`); every error a one-line `ValueError` or `OSError`.
    """
    from transformers import AutoModelForImageTextToText

    name = os.fspath(model_name_or_path)
    device = check_device(device)
    config_dict = read_config_dict(name)
    processor = load_chat_processor(name, trust_remote_code)
    dtype, placement = serving_dtype(device, dtype)
    try:
        model = from_pretrained_complete(
            AutoModelForImageTextToText, name, dtype=dtype, trust_remote_code=trust_remote_code, **placement
        )
    except ValueError as error:
        if "the weights do not fit" in str(error):
            raise
        raise ChartWizValueError(
            f"{name} holds {describe_model_type(config_dict)}, which AutoModelForImageTextToText cannot load: "
            f"{_first_line(error)}"
        ) from None
    if device is not None:
        model = model.to(device)
    return model.eval(), processor


@torch.inference_mode()
def generate_chat_answers(model, processor, inputs, max_new_tokens: int, **generate_kwargs) -> list[str]:
    """Greedy (unless told otherwise) answers to a batch from `chat_inputs`, the new tokens decoded."""
    inputs = inputs.to(model.device, dtype=model.dtype)
    generate_kwargs.setdefault("do_sample", False)
    output_ids = model.generate(**inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
    new_tokens = output_ids[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]


class ChatPrompting:
    """
    The prompts of a model other than ChartWiz as `run_inference` sizes and fingerprints them: the chart's tokens
    depend on its size there (anyres tiles, dynamic resolution), so a prompt is measured before them, a lower bound
    that the engine completes once the chart is processed. `system`: a system turn put before every conversation.
    """

    system: Optional[str] = None

    def prompt_length(self, processor, question: str, history) -> int:
        return len(prompt_token_ids(processor, question, history, self.system))

    def image_tokens(self, processor) -> Optional[int]:
        return None

    def prompt_settings(self, processor) -> dict:
        return {"chat_template_sha256": chat_template_sha256(processor), "system": self.system}


class ChatModelEngine(ChatPrompting, TransformersEngine):
    """
    `TransformersEngine` for a model other than ChartWiz: each batch built by `chat_inputs` with the model's own
    processor, a question whose prompt (with its chart's tokens) leaves no room for the answer set aside as too long,
    and `generate` with the model's own generation config, greedy.

    Args:
        model, processor: from `load_chat_model`.
        batch_size (`int`, defaults to 8): questions per left-padded batch.
        system (`str`, *optional*): a system turn before every conversation (`--instructions`).
        background, prefetch: as for `TransformersEngine`.
    """

    def __init__(self, model, processor, batch_size: int = DEFAULT_BATCH_SIZE, system: Optional[str] = None, **kwargs):
        super().__init__(model, processor, batch_size, **kwargs)
        self.system = system

    @property
    def dtype(self):
        return self.model.dtype

    @property
    def device(self):
        return self.model.device

    def input_builder(self, max_new_tokens: int) -> Callable:
        system, context = self.system, context_length(self.config)

        def build(processor, images, questions, histories):
            inputs = chat_inputs(processor, images, questions, histories, system)
            # One prompt too long for the context makes the batch fail; `_prepare` then finds it alone.
            for length in inputs["attention_mask"].sum(dim=-1).tolist():
                fit_in_context(length, max_new_tokens, context)
            return inputs

        return build

    def generate(self, inputs, max_new_tokens: int, **generate_kwargs) -> list[str]:
        return generate_chat_answers(self.model, self.processor, inputs, max_new_tokens, **generate_kwargs)


__all__ = [
    "ChatModelEngine",
    "ChatPrompting",
    "generate_chat_answers",
    "is_chartwiz_checkpoint",
    "load_chat_model",
    "load_chat_processor",
]
