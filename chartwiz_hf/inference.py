"""Answering questions about charts with a loaded ChartWiz model, one at a time or in left-padded batches."""

import os
from collections.abc import Sequence
from typing import Optional

import torch
from PIL import Image, UnidentifiedImageError
from transformers.feature_extraction_utils import BatchFeature


def load_chart_image(path: str | os.PathLike) -> Image.Image:
    """Opens and fully decodes an image file, with an error naming the file if it is missing, corrupt or truncated."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{path}: no such image file") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{path}: cannot decode the image ({error})") from error


def check_question(question: str) -> str:
    """The question without surrounding whitespace; raises `ValueError` if nothing is asked."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError("The question is empty: ask something about the chart, e.g. '가장 큰 값은?'.")
    return question.strip()


def chat_messages(question: str, history: Sequence[tuple[str, str]] = ()) -> list[dict]:
    """
    The conversation of a question about one chart: the earlier `(question, answer)` turns first, the chart in the
    first user turn (as the training data has it), and `question` last.
    """
    messages = []
    for asked, answered in [*history, (question, None)]:
        content = [{"type": "text", "text": check_question(asked)}]
        if not messages:
            content.insert(0, {"type": "image"})
        messages.append({"role": "user", "content": content})
        if answered is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answered}]})
    return messages


def build_prompt(processor, question: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """The chat-template prompt of a question about one chart (after `history`), ending with the assistant's turn."""
    return processor.apply_chat_template(chat_messages(question, history), add_generation_prompt=True)


def prepare_inputs(
    processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    histories: Optional[Sequence[Sequence[tuple[str, str]]]] = None,
) -> BatchFeature:
    """
    The model inputs of `questions[i]` about `images[i]` (after `histories[i]`) as one left-padded batch. CPU work
    only, so it can run ahead of the model in another thread.
    """
    if len(images) != len(questions):
        raise ValueError(f"Got {len(images)} images for {len(questions)} questions.")
    histories = histories if histories is not None else [()] * len(questions)
    if len(histories) != len(questions):
        raise ValueError(f"Got {len(histories)} histories for {len(questions)} questions.")
    prompts = [build_prompt(processor, question, history) for question, history in zip(questions, histories)]
    return processor(images=list(images), text=prompts, padding=True, padding_side="left", return_tensors="pt")


@torch.inference_mode()
def generate_answers(
    model, processor, inputs: BatchFeature, max_new_tokens: int = 256, streamer=None, **generate_kwargs
) -> list[str]:
    """Greedy (unless told otherwise) answers for a batch from `prepare_inputs`."""
    inputs = inputs.to(model.device)
    generate_kwargs.setdefault("do_sample", False)
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


def load_chartwiz(
    model_name_or_path: str, device: Optional[str] = None, dtype="auto", adapter: Optional[str] = None, **kwargs
):
    """
    Model and processor from a local directory or the Hub, through the Auto classes; with `adapter`, a PEFT (LoRA)
    adapter folder is applied on top without merging.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_name_or_path, dtype=dtype, **kwargs)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    if device is not None:
        model = model.to(device)
    # ChartWiz has one (numpy) image processor; saying so keeps AutoProcessor from suggesting a fast one.
    processor = AutoProcessor.from_pretrained(model_name_or_path, use_fast=False, **kwargs)
    return model.eval(), processor


__all__ = [
    "answer_questions",
    "build_prompt",
    "chat_messages",
    "check_question",
    "generate_answers",
    "load_chart_image",
    "load_chartwiz",
    "prepare_inputs",
]
