"""Answering questions about charts with a loaded ChartWiz: images and PDFs in, prompts through the processor, the
context checked, answers generated one at a time or in left-padded batches (and the engines that wrap this)."""

from .generation import answer_questions, generate_answers, suppressed_tokens
from .images import load_chart_image
from .loading import (
    check_checkpoint,
    check_device,
    load_adapter,
    load_chartwiz,
    load_processor,
    read_adapter_config,
)
from .prompts import (
    ContextLengthError,
    build_prompt,
    chat_messages,
    check_question,
    context_length,
    encode_prompt,
    fit_in_context,
    fit_new_tokens,
    prepare_inputs,
    prompt_length,
)


__all__ = [
    "ContextLengthError",
    "answer_questions",
    "build_prompt",
    "chat_messages",
    "check_checkpoint",
    "check_device",
    "check_question",
    "context_length",
    "encode_prompt",
    "fit_in_context",
    "fit_new_tokens",
    "generate_answers",
    "load_adapter",
    "load_chart_image",
    "load_chartwiz",
    "load_processor",
    "prepare_inputs",
    "prompt_length",
    "read_adapter_config",
    "suppressed_tokens",
]
