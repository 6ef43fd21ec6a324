"""Answering questions about charts with a loaded ChartWiz model, one at a time or in left-padded batches."""

from collections.abc import Sequence
from typing import Optional

import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature

from .prompts import fit_new_tokens, prepare_inputs


def suppressed_tokens(generation_config, image_token_id: int) -> list[int]:
    """
    The tokens an answer never holds: the generation config's `suppress_tokens` and the image placeholder, which
    checkpoints made before it was written there do not list.
    """
    suppressed = list(getattr(generation_config, "suppress_tokens", None) or [])
    return suppressed if image_token_id in suppressed else [*suppressed, image_token_id]


@torch.inference_mode()
def generate_answers(
    model, processor, inputs: BatchFeature, max_new_tokens: int = 256, streamer=None, **generate_kwargs
) -> list[str]:
    """
    Greedy (unless told otherwise) answers for a batch from `prepare_inputs`. Raises `ValueError` before generating
    if `max_new_tokens` do not fit in the context after the prompts (see `fit_new_tokens`).
    """
    fit_new_tokens(inputs, model.config, max_new_tokens)
    inputs = inputs.to(model.device)
    generate_kwargs.setdefault("do_sample", False)
    generate_kwargs.setdefault("suppress_tokens", suppressed_tokens(model.generation_config, processor.image_token_id))
    output_ids = model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=streamer, **generate_kwargs)
    new_tokens = output_ids[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def answer_questions(
    model,
    processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    histories: Optional[Sequence[Sequence[tuple[str, str]]]] = None,
    max_new_tokens: int = 256,
    streamer=None,
    **generate_kwargs,
) -> list[str]:
    """Greedy answers to `questions[i]` about `images[i]`, generated together as one left-padded batch."""
    inputs = prepare_inputs(processor, images, questions, histories)
    return generate_answers(model, processor, inputs, max_new_tokens, streamer=streamer, **generate_kwargs)


__all__ = [
    "answer_questions",
    "generate_answers",
    "suppressed_tokens",
]
