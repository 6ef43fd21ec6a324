"""Answering questions about charts with a loaded ChartWiz model, one at a time or in left-padded batches."""

import os
from typing import Optional

import torch
from PIL import Image, UnidentifiedImageError


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


def build_prompt(processor, question: str) -> str:
    """The chat-template prompt of one question about one chart, ending with the assistant's turn."""
    question = check_question(question)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


@torch.inference_mode()
def answer_questions(
    model,
    processor,
    images: list[Image.Image],
    questions: list[str],
    max_new_tokens: int = 256,
    streamer=None,
    **generate_kwargs,
) -> list[str]:
    """Greedy answers to `questions[i]` about `images[i]`, generated together as one left-padded batch."""
    if len(images) != len(questions):
        raise ValueError(f"Got {len(images)} images for {len(questions)} questions.")
    prompts = [build_prompt(processor, question) for question in questions]
    inputs = processor(images=images, text=prompts, padding=True, padding_side="left", return_tensors="pt")
    inputs = inputs.to(model.device)
    generate_kwargs.setdefault("do_sample", False)
    output_ids = model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=streamer, **generate_kwargs)
    new_tokens = output_ids[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def load_chartwiz(model_name_or_path: str, device: Optional[str] = None, dtype="auto", **kwargs):
    """Model and processor from a local directory or the Hub, through the Auto classes."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_name_or_path, dtype=dtype, **kwargs)
    if device is not None:
        model = model.to(device)
    # ChartWiz has one (numpy) image processor; saying so keeps AutoProcessor from suggesting a fast one.
    processor = AutoProcessor.from_pretrained(model_name_or_path, use_fast=False, **kwargs)
    return model.eval(), processor


__all__ = ["answer_questions", "build_prompt", "check_question", "load_chart_image", "load_chartwiz"]
